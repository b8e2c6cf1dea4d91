//! A Docker Engine API client over a unix socket (Podman's Docker-compatible socket serves
//! the same calls): one connection per request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use thiserror::Error;
use tokio::net::UnixStream;

use super::api::{decode, ContainerInspect, ContainerSummary, ErrorAnswer, LoadMessage};

/// Label naming the service a container belongs to.
pub const SERVICE_LABEL: &str = "rollgate.service";
/// Label naming the release dir a container runs.
pub const RELEASE_LABEL: &str = "rollgate.release";
/// How long one ordinary API call may take.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long loading an image archive may take.
pub const IMAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Added to `stop_timeout` for the engine to answer a stop (it kills after `stop_timeout`).
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// A container engine that refused or failed a request.
#[derive(Debug, Error)]
pub enum ContainerError {
    /// The socket could not be reached.
    #[error("cannot reach the container engine at {}: {source} (is dockerd or podman's API service running, and is `socket` right?)", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("container engine request {what} failed: {source}")]
    Http {
        /// The request.
        what: String,
        /// Why.
        source: hyper::Error,
    },
    /// The engine answered with an error.
    #[error("container engine refused {what}: {status} {message}")]
    Api {
        /// The request.
        what: String,
        /// HTTP status.
        status: StatusCode,
        /// The engine's message.
        message: String,
    },
    /// The engine answered in a shape the agent does not know (API drift): the error names
    /// the answer and the field.
    #[error("Docker API: {0}")]
    Answer(String),
    /// The engine did not answer in time.
    #[error("container engine did not answer {what} within {limit:?}")]
    Timeout {
        /// The request.
        what: String,
        /// The time it had.
        limit: Duration,
    },
    /// The image archive could not be read or loaded.
    #[error("cannot load image archive {}: {why}", path.display())]
    Load {
        /// The archive.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A release's image could not be pulled from its registry.
    #[error("cannot pull image {image}: {message}; {hint}")]
    Pull {
        /// The pinned reference.
        image: String,
        /// The engine's message.
        message: String,
        /// What the operator can do.
        hint: String,
    },
    /// The service's `registry_auth` file cannot be used.
    #[error(transparent)]
    Credentials(#[from] rollgate_proto::registry_auth::AuthFileError),
    /// The container did not run.
    #[error("container {name} {why}")]
    NotRunning {
        /// The container's name.
        name: String,
        /// What it did instead.
        why: String,
    },
}

/// A request body: JSON in memory, or an image archive streamed from disk.
pub(super) type Body = BoxBody<Bytes, std::io::Error>;

pub(super) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A Docker Engine API client over a unix socket: one connection per request.
#[derive(Debug, Clone)]
pub(super) struct Engine {
    pub(super) socket: PathBuf,
}

impl Engine {
    /// Sends one request and returns the status and body (errors for 4xx/5xx, except the
    /// statuses in `ok_also`).
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Body, &str)>,
        limit: Duration,
        ok_also: &[StatusCode],
    ) -> Result<(StatusCode, Bytes), ContainerError> {
        let what = what(&method, path);
        let exchange = async {
            let resp = self.request(method.clone(), path, body, &[]).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|source| ContainerError::Http {
                    what: what.clone(),
                    source,
                })?
                .to_bytes();
            Ok::<_, ContainerError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(limit, exchange).await.map_err(|_| {
            ContainerError::Timeout {
                what: what.clone(),
                limit,
            }
        })??;
        if (status.is_client_error() || status.is_server_error()) && !ok_also.contains(&status) {
            return Err(api_error(what, status, &bytes));
        }
        Ok((status, bytes))
    }

    /// Sends one request with extra `headers` and returns the answer with its body unread
    /// (for streamed answers such as a pull's progress). No time limit: the caller sets one.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(Body, &str)>,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ContainerError> {
        let what = what(&method, path);
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ContainerError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let http = |source| ContainerError::Http {
            what: what.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // The connection task ends when the exchange does (the sender is dropped).
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://engine{path}"))
            .header(hyper::header::HOST, "engine");
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let body = match body {
            Some((bytes, content_type)) => {
                req = req.header(hyper::header::CONTENT_TYPE, content_type);
                bytes
            }
            None => full(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| ContainerError::Api {
            what: what.clone(),
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
        })?;
        sender.send_request(req).await.map_err(http)
    }

    /// Loads an image archive; returns the image reference it holds (its first tag, or its id).
    pub(super) async fn load(&self, path: &Path) -> Result<String, ContainerError> {
        let load_err = |why: String| ContainerError::Load {
            path: path.to_owned(),
            why,
        };
        // Streamed: an image archive may be far larger than the agent should hold in memory.
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| load_err(e.to_string()))?;
        let frames = tokio_util::io::ReaderStream::new(file).map_ok(Frame::data);
        let (_, answer) = self
            .call(
                Method::POST,
                "/images/load?quiet=1",
                Some((StreamBody::new(frames).boxed(), "application/x-tar")),
                IMAGE_LOAD_TIMEOUT,
                &[],
            )
            .await?;
        loaded_image(&answer).map_err(load_err)
    }

    pub(super) async fn list(&self, service: &str) -> Result<Vec<Listed>, ContainerError> {
        let filters = json!({ "label": [format!("{SERVICE_LABEL}={service}")] }).to_string();
        let path = format!("/containers/json?all=1&filters={}", encode(&filters));
        let (_, bytes) = self
            .call(Method::GET, &path, None, API_CALL_TIMEOUT, &[])
            .await?;
        let listed: Vec<ContainerSummary> =
            decode("container list", &bytes).map_err(ContainerError::Answer)?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                // Not one of the agent's if it lacks the release label.
                let release = c.labels?.remove(RELEASE_LABEL)?;
                let name = c.names.first().map_or("", |n| n.trim_start_matches('/'));
                Some(Listed {
                    name: name.to_owned(),
                    running: c.state == "running",
                    id: c.id,
                    release,
                    image: c.image_id,
                })
            })
            .collect())
    }

    /// The container's state; `None` if it is gone.
    pub(super) async fn inspect(&self, id: &str) -> Result<Option<State>, ContainerError> {
        let (status, bytes) = self
            .call(
                Method::GET,
                &format!("/containers/{id}/json"),
                None,
                API_CALL_TIMEOUT,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let c: ContainerInspect =
            decode("container inspect", &bytes).map_err(ContainerError::Answer)?;
        Ok(Some(State {
            running: c.state.running,
            restarting: c.state.restarting,
            status: c.state.status,
            exit_code: c.state.exit_code,
            error: c.state.error,
            restart_count: c.restart_count,
        }))
    }

    pub(super) async fn stop(&self, id: &str, grace: Duration) -> Result<(), ContainerError> {
        let secs = grace.as_secs().max(1);
        self.call(
            Method::POST,
            &format!("/containers/{id}/stop?t={secs}"),
            None,
            grace + STOP_MARGIN,
            // 304: it was not running.
            &[StatusCode::NOT_MODIFIED, StatusCode::NOT_FOUND],
        )
        .await
        .map(drop)
    }

    pub(super) async fn start(&self, id: &str) -> Result<(), ContainerError> {
        self.call(
            Method::POST,
            &format!("/containers/{id}/start"),
            None,
            API_CALL_TIMEOUT,
            &[StatusCode::NOT_MODIFIED],
        )
        .await
        .map(drop)
    }

    /// Removes an image no container uses any more (one still in use is kept).
    pub(super) async fn remove_image(&self, id: &str) -> Result<(), ContainerError> {
        self.call(
            Method::DELETE,
            &format!("/images/{}", encode(id)),
            None,
            API_CALL_TIMEOUT,
            &[StatusCode::NOT_FOUND, StatusCode::CONFLICT],
        )
        .await
        .map(drop)
    }

    pub(super) async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        self.call(
            Method::DELETE,
            &format!("/containers/{id}?force=1"),
            None,
            API_CALL_TIMEOUT,
            &[StatusCode::NOT_FOUND],
        )
        .await
        .map(drop)
    }
}

/// A container of this service, as listed.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub(super) id: String,
    /// The image id it runs.
    pub(super) image: String,
    pub(super) name: String,
    pub(super) release: String,
    pub(super) running: bool,
}

/// A container's state, as inspected.
#[derive(Debug, Clone)]
pub(super) struct State {
    pub(super) running: bool,
    pub(super) restarting: bool,
    pub(super) status: String,
    pub(super) exit_code: i64,
    pub(super) error: String,
    pub(super) restart_count: u64,
}

impl State {
    pub(super) fn describe(&self) -> String {
        let mut s = format!("is {} (exit code {})", self.status, self.exit_code);
        if !self.error.is_empty() {
            s.push_str(&format!(": {}", self.error));
        }
        s
    }
}

/// The image reference in a `POST /images/load` answer (a stream of JSON messages):
/// `Loaded image: name:tag` preferred over `Loaded image ID: sha256:...`.
pub(super) fn loaded_image(answer: &[u8]) -> Result<String, String> {
    let mut id = None;
    let mut tag = None;
    let stream = serde_json::Deserializer::from_slice(answer).into_iter::<LoadMessage>();
    for msg in stream {
        let msg = msg.map_err(|e| format!("unreadable answer from the engine: {e}"))?;
        if let Some(err) = msg.error {
            return Err(err);
        }
        let text = msg.stream.unwrap_or_default();
        for line in text.lines() {
            if let Some(i) = line.strip_prefix("Loaded image ID: ") {
                id.get_or_insert_with(|| i.trim().to_owned());
            } else if let Some(t) = line.strip_prefix("Loaded image: ") {
                tag.get_or_insert_with(|| t.trim().to_owned());
            }
        }
    }
    tag.or(id)
        .ok_or_else(|| "the engine loaded no image from it (is it a `docker save` archive?)".into())
}

/// A request as errors name it: method and path without the query.
pub(super) fn what(method: &Method, path: &str) -> String {
    format!("{method} {}", path.split('?').next().unwrap_or(path))
}

/// The error for a 4xx/5xx answer. Not every error comes from the engine itself (a proxy in
/// front may answer in plain text): the body as text then.
pub(super) fn api_error(what: String, status: StatusCode, body: &[u8]) -> ContainerError {
    let message = decode::<ErrorAnswer>("error", body)
        .map(|a| a.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned());
    ContainerError::Api {
        what,
        status,
        message,
    }
}

/// Percent-encodes a query value.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
