//! The container backend: each release is an image archive (`docker save`) run as its own
//! container through the Docker Engine API (HTTP/1.1 over a unix socket; Podman's
//! Docker-compatible socket serves the same calls).
//!
//! A restart, after the executor swapped `current`:
//!
//! 1. finds the container of the release `current` names (label `rollgate.release`); if there
//!    is none, loads `current/<binary>` (`POST /images/load`) and creates one from the
//!    service's settings, named `<container_name>-<release dir>`;
//! 2. stops the containers of this service that run (gracefully, `stop_timeout`), because the
//!    published ports are taken by one container at a time; they are kept, not removed (ones
//!    that were already down, such as a failed release's, are removed);
//! 3. starts the new container and waits until the engine says it runs.
//!
//! A rollback is the same restart with `current` pointing back: the old container is found
//! and started again. Once a release is settled (committed, or rolled back to),
//! [`Backend::settled`] removes this service's other containers.
//!
//! Afterwards the container's state is read every [`STATE_POLL_INTERVAL`]: it is down once it
//! no longer runs, is gone, or the engine restarted it (`RestartCount` grew).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, Exit};
use crate::config::{Backend as BackendKind, ContainerSettings, ServiceConfig};
use crate::release::releases::ServiceDir;

/// Label naming the service a container belongs to.
pub const SERVICE_LABEL: &str = "rollgate.service";
/// Label naming the release dir a container runs.
pub const RELEASE_LABEL: &str = "rollgate.release";
/// How long one ordinary API call may take.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long loading an image archive may take.
pub const IMAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a running container's state is read.
pub const STATE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Added to `stop_timeout` for the engine to answer a stop (it kills after `stop_timeout`).
const STOP_MARGIN: Duration = Duration::from_secs(10);
/// How long the agent, when it starts, waits for the installed release's container to run.
pub const ADOPT_START_WAIT: Duration = Duration::from_secs(120);

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
type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A Docker Engine API client over a unix socket: one connection per request.
#[derive(Debug, Clone)]
struct Engine {
    socket: PathBuf,
}

impl Engine {
    /// Sends one request and returns the status and body (errors for 4xx/5xx, except the
    /// statuses in `ok_also`).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Body, &str)>,
        limit: Duration,
        ok_also: &[StatusCode],
    ) -> Result<(StatusCode, Bytes), ContainerError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let exchange = async {
            let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
                ContainerError::Connect {
                    socket: self.socket.clone(),
                    source,
                }
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
                .method(method.clone())
                .uri(format!("http://engine{path}"))
                .header(hyper::header::HOST, "engine");
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
            let resp = sender.send_request(req).await.map_err(http)?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
            Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(limit, exchange).await.map_err(|_| {
            ContainerError::Timeout {
                what: what.clone(),
                limit,
            }
        })??;
        if (status.is_client_error() || status.is_server_error()) && !ok_also.contains(&status) {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
            return Err(ContainerError::Api {
                what,
                status,
                message,
            });
        }
        Ok((status, bytes))
    }

    async fn json(&self, method: Method, path: &str) -> Result<Value, ContainerError> {
        let (_, bytes) = self.call(method, path, None, API_CALL_TIMEOUT, &[]).await?;
        serde_json::from_slice(&bytes).map_err(|e| ContainerError::Api {
            what: path.to_owned(),
            status: StatusCode::OK,
            message: format!("unreadable answer: {e}"),
        })
    }

    /// Loads an image archive; returns the image reference it holds (its first tag, or its id).
    async fn load(&self, path: &Path) -> Result<String, ContainerError> {
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

    async fn list(&self, service: &str) -> Result<Vec<Listed>, ContainerError> {
        let filters = json!({ "label": [format!("{SERVICE_LABEL}={service}")] }).to_string();
        let v = self
            .json(
                Method::GET,
                &format!("/containers/json?all=1&filters={}", encode(&filters)),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some(Listed {
                    id: c["Id"].as_str()?.to_owned(),
                    name: c["Names"][0]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned(),
                    release: c["Labels"][RELEASE_LABEL].as_str()?.to_owned(),
                    image: c["ImageID"].as_str().unwrap_or_default().to_owned(),
                    running: c["State"].as_str() == Some("running"),
                })
            })
            .collect())
    }

    /// The container's state; `None` if it is gone.
    async fn inspect(&self, id: &str) -> Result<Option<State>, ContainerError> {
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
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ContainerError::Api {
            what: format!("GET /containers/{id}/json"),
            status,
            message: format!("unreadable answer: {e}"),
        })?;
        Ok(Some(State {
            running: v["State"]["Running"].as_bool().unwrap_or(false),
            restarting: v["State"]["Restarting"].as_bool().unwrap_or(false),
            status: v["State"]["Status"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            exit_code: v["State"]["ExitCode"].as_i64().unwrap_or(0),
            error: v["State"]["Error"].as_str().unwrap_or("").to_owned(),
            restart_count: v["RestartCount"].as_u64().unwrap_or(0),
        }))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), ContainerError> {
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

    async fn start(&self, id: &str) -> Result<(), ContainerError> {
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
    async fn remove_image(&self, id: &str) -> Result<(), ContainerError> {
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

    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
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
struct Listed {
    id: String,
    /// The image id it runs.
    image: String,
    name: String,
    release: String,
    running: bool,
}

/// A container's state, as inspected.
#[derive(Debug, Clone)]
struct State {
    running: bool,
    restarting: bool,
    status: String,
    exit_code: i64,
    error: String,
    restart_count: u64,
}

impl State {
    fn describe(&self) -> String {
        let mut s = format!("is {} (exit code {})", self.status, self.exit_code);
        if !self.error.is_empty() {
            s.push_str(&format!(": {}", self.error));
        }
        s
    }
}

/// The image reference in a `POST /images/load` answer (a stream of JSON messages):
/// `Loaded image: name:tag` preferred over `Loaded image ID: sha256:...`.
fn loaded_image(answer: &[u8]) -> Result<String, String> {
    let mut id = None;
    let mut tag = None;
    let stream = serde_json::Deserializer::from_slice(answer).into_iter::<Value>();
    for msg in stream {
        let msg = msg.map_err(|e| format!("unreadable answer from the engine: {e}"))?;
        if let Some(err) = msg["error"].as_str() {
            return Err(err.to_owned());
        }
        let text = msg["stream"].as_str().unwrap_or_default();
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

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
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

/// The `POST /containers/create` body for a release.
fn create_body(
    cfg: &ServiceConfig,
    settings: &ContainerSettings,
    release: &str,
    image: &str,
) -> Value {
    let env: Vec<String> = cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut exposed = serde_json::Map::new();
    let mut bindings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in &settings.ports {
        let key = format!("{}/tcp", p.container);
        exposed.insert(key.clone(), json!({}));
        bindings
            .entry(key)
            .or_default()
            .push(json!({ "HostPort": p.host.to_string() }));
    }
    let mut body = json!({
        "Image": image,
        "Env": env,
        "Labels": { SERVICE_LABEL: cfg.name, RELEASE_LABEL: release },
        "ExposedPorts": exposed,
        "StopTimeout": cfg.stop_timeout.as_secs().max(1),
        "HostConfig": {
            "PortBindings": bindings,
            "Binds": settings.mounts,
            "RestartPolicy": { "Name": settings.restart_policy.word() },
        },
    });
    if let Some(cmd) = &settings.command {
        body["Cmd"] = json!(cmd);
    }
    body
}

/// The container backend of one service.
#[derive(Debug)]
pub struct ContainerBackend {
    dir: ServiceDir,
    cfg: Arc<ServiceConfig>,
    settings: ContainerSettings,
    engine: Engine,
    /// The container started last (or adopted), while it is believed to run: what
    /// [`Backend::exited`] watches and [`Backend::stop`] stops.
    running: Option<Running>,
    /// When [`Backend::exited`] reads the state next: it is called afresh (and cancelled)
    /// every round of the verify loop, so the pace is kept here rather than in the call.
    next_check: Instant,
}

#[derive(Debug, Clone)]
struct Running {
    id: String,
    name: String,
    release: String,
    /// `RestartCount` when it was started: a larger one means the engine restarted it.
    restarts: u64,
}

impl ContainerBackend {
    /// The backend for `cfg` (whose backend must be `container`).
    pub fn new(dir: ServiceDir, cfg: Arc<ServiceConfig>) -> ContainerBackend {
        let settings = match &cfg.backend {
            BackendKind::Container(s) => s.clone(),
            other => unreachable!("container backend for a {other:?} service"),
        };
        ContainerBackend {
            dir,
            engine: Engine {
                socket: settings.socket.clone(),
            },
            settings,
            cfg,
            running: None,
            next_check: Instant::now(),
        }
    }

    fn container_name(&self, release: &str) -> String {
        format!("{}-{release}", self.settings.container_name)
    }

    /// The container of `release`: found, or created from its image archive.
    async fn container_for(
        &self,
        release: &str,
        listed: &[Listed],
    ) -> Result<(String, String), BackendError> {
        if let Some(c) = listed.iter().find(|c| c.release == release) {
            return Ok((c.id.clone(), c.name.clone()));
        }
        let archive = self.dir.release_path(release).join(self.dir.binary());
        let image = self.engine.load(&archive).await?;
        let name = self.container_name(release);
        let body = create_body(&self.cfg, &self.settings, release, &image);
        let (_, answer) = self
            .engine
            .call(
                Method::POST,
                &format!("/containers/create?name={}", encode(&name)),
                Some((full(Bytes::from(body.to_string())), "application/json")),
                API_CALL_TIMEOUT,
                &[],
            )
            .await?;
        let id = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v["Id"].as_str().map(str::to_owned))
            .ok_or_else(|| ContainerError::Api {
                what: "POST /containers/create".into(),
                status: StatusCode::OK,
                message: "no container id in the answer".into(),
            })?;
        tracing::info!(container = %name, %image, "created container");
        Ok((id, name))
    }

    /// Removes a container and its image (unless `keep_image`, or another container, uses
    /// it); the release dir keeps the archive, should the release be wanted again.
    async fn discard(&self, c: &Listed, keep_image: Option<&str>) -> Result<(), ContainerError> {
        self.engine.remove(&c.id).await?;
        tracing::info!(container = %c.name, "removed container");
        if !c.image.is_empty() && Some(c.image.as_str()) != keep_image {
            if let Err(e) = self.engine.remove_image(&c.image).await {
                tracing::warn!(image = %c.image, "cannot remove: {e}");
            }
        }
        Ok(())
    }

    /// Stops every running container of this service except `keep`.
    async fn stop_others(&self, listed: &[Listed], keep: &str) -> Result<(), ContainerError> {
        for c in listed.iter().filter(|c| c.running && c.id != keep) {
            tracing::info!(container = %c.name, "stopping container");
            self.engine.stop(&c.id, self.cfg.stop_timeout).await?;
        }
        Ok(())
    }

    /// Starts container `id` and waits until the engine says it runs.
    async fn start_and_wait(
        &mut self,
        id: String,
        name: String,
        release: String,
        deadline: Instant,
    ) -> Result<(), BackendError> {
        // The engine may reset `RestartCount` on a deliberate start: the baseline is the lowest
        // count seen, and a count above it means the engine restarted the container.
        let mut base = self
            .engine
            .inspect(&id)
            .await?
            .map(|s| s.restart_count)
            .unwrap_or(0);
        self.engine.start(&id).await?;
        loop {
            let state = self.engine.inspect(&id).await?;
            if let Some(s) = &state {
                base = base.min(s.restart_count);
            }
            match state {
                Some(s) if s.running && !s.restarting => {
                    self.running = Some(Running {
                        id,
                        name,
                        release,
                        restarts: base,
                    });
                    return Ok(());
                }
                Some(s) if s.restart_count > base => {
                    return Err(ContainerError::NotRunning {
                        name,
                        why: format!(
                            "exited and was restarted by the engine; it {}",
                            s.describe()
                        ),
                    }
                    .into())
                }
                Some(s) if s.restarting || s.status == "created" => {}
                Some(s) => {
                    return Err(ContainerError::NotRunning {
                        name,
                        why: format!("did not stay up: it {}", s.describe()),
                    }
                    .into())
                }
                None => {
                    return Err(ContainerError::NotRunning {
                        name,
                        why: "is gone".into(),
                    }
                    .into())
                }
            }
            if Instant::now() >= deadline {
                return Err(ContainerError::NotRunning {
                    name,
                    why: "did not come up in time".into(),
                }
                .into());
            }
            tokio::time::sleep(STATE_POLL_INTERVAL).await;
        }
    }

    async fn restart_inner(&mut self, deadline: Duration) -> Result<Instant, BackendError> {
        let began = Instant::now();
        let Some(release) = self.dir.current_dir().map_err(|e| ContainerError::Load {
            path: self.dir.current_link(),
            why: e.to_string(),
        })?
        else {
            return Err(BackendError::NotInstalled(self.dir.current_link()));
        };
        let listed = self.engine.list(&self.cfg.name).await?;
        let (id, name) = self.container_for(&release, &listed).await?;
        self.running = None;
        self.stop_others(&listed, &id).await?;
        // Ones that were already down (a release that failed, now being rolled back from)
        // are not worth keeping, and removing them first lets the engine finish tearing
        // down their network (Podman cleans up a crashed container's ports asynchronously,
        // racing the start below for the same ports).
        let keep_image = listed.iter().find(|c| c.id == id).map(|c| c.image.as_str());
        for c in listed.iter().filter(|c| !c.running && c.id != id) {
            self.discard(c, keep_image).await?;
        }
        let started = Instant::now();
        tracing::info!(container = %name, "starting container");
        self.start_and_wait(id, name, release, began + deadline)
            .await?;
        Ok(started)
    }
}

impl Backend for ContainerBackend {
    fn is_up(&self) -> bool {
        self.running.is_some()
    }

    fn agent_restarts(&self) -> bool {
        // The engine's restart policy decides.
        false
    }

    fn adopt(&mut self) -> BoxFuture<'_, (Option<String>, Result<(), BackendError>)> {
        async move {
            let Ok(Some(release)) = self.dir.current_dir() else {
                return (
                    None,
                    Err(BackendError::NotInstalled(self.dir.current_link())),
                );
            };
            let listed = match self.engine.list(&self.cfg.name).await {
                Ok(l) => l,
                Err(e) => return (None, Err(e.into())),
            };
            if let Some(c) = listed.iter().find(|c| c.release == release && c.running) {
                let restarts = match self.engine.inspect(&c.id).await {
                    Ok(Some(s)) => s.restart_count,
                    Ok(None) => 0,
                    Err(e) => return (None, Err(e.into())),
                };
                self.running = Some(Running {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    release,
                    restarts,
                });
                let others = listed.len() - 1;
                let note = (others > 0).then(|| {
                    format!(
                        "{others} other container(s) of this service kept until the next commit"
                    )
                });
                return (note, Ok(()));
            }
            let note = Some(format!(
                "container of {release} was not running; starting it"
            ));
            (note, self.restart_inner(ADOPT_START_WAIT).await.map(drop))
        }
        .boxed()
    }

    fn preflight(&mut self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            self.engine
                .call(Method::GET, "/_ping", None, API_CALL_TIMEOUT, &[])
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn restart(&mut self, deadline: Duration) -> BoxFuture<'_, Result<Instant, BackendError>> {
        self.restart_inner(deadline).boxed()
    }

    fn stop(&mut self) -> BoxFuture<'_, Option<String>> {
        async move {
            let r = self.running.take()?;
            Some(match self.engine.stop(&r.id, self.cfg.stop_timeout).await {
                Ok(()) => format!("stopped container {}", r.name),
                Err(e) => format!("could not stop container {}: {e}", r.name),
            })
        }
        .boxed()
    }

    fn exited(&mut self) -> BoxFuture<'_, Exit> {
        async move {
            let Some(r) = self.running.clone() else {
                return futures::future::pending().await;
            };
            loop {
                tokio::time::sleep_until(self.next_check).await;
                self.next_check = Instant::now() + STATE_POLL_INTERVAL;
                let why = match self.engine.inspect(&r.id).await {
                    Ok(Some(s)) if s.restart_count > r.restarts => Some(format!(
                        "was restarted by the engine ({} restarts); it {}",
                        s.restart_count,
                        s.describe()
                    )),
                    Ok(Some(s)) if !s.running => Some(s.describe()),
                    Ok(Some(_)) => None,
                    Ok(None) => Some("is gone".into()),
                    // The engine not answering says nothing about the container.
                    Err(e) => {
                        tracing::warn!(container = %r.name, "cannot read container state: {e}");
                        None
                    }
                };
                if let Some(why) = why {
                    self.running = None;
                    return Exit {
                        release: r.release,
                        description: format!("container {} {why}", r.name),
                    };
                }
            }
        }
        .boxed()
    }

    fn settled(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let Some(keep) = self.running.as_ref().map(|r| r.id.clone()) else {
                return;
            };
            let listed = match self.engine.list(&self.cfg.name).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("cannot list containers to remove the old ones: {e}");
                    return;
                }
            };
            let keep_image = listed
                .iter()
                .find(|c| c.id == keep)
                .map(|c| c.image.as_str());
            for c in listed.iter().filter(|c| c.id != keep) {
                if let Err(e) = self.discard(c, keep_image).await {
                    tracing::warn!(container = %c.name, "cannot remove: {e}");
                }
            }
        }
        .boxed()
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        // The container outlives the agent.
        async {}.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_image_table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            (r#"{"stream":"Loaded image: demo:a\n"}"#, Ok("demo:a")),
            (
                r#"{"stream":"Loaded image ID: sha256:abc\n"}"#,
                Ok("sha256:abc"),
            ),
            (
                r#"{"stream":"Loaded image ID: sha256:abc\n"}{"stream":"Loaded image: demo:b\n"}"#,
                Ok("demo:b"),
            ),
            (
                r#"{"error":"invalid tar header"}"#,
                Err("invalid tar header"),
            ),
            ("", Err("loaded no image")),
            ("not json", Err("unreadable")),
        ];
        for (answer, want) in cases {
            let got = loaded_image(answer.as_bytes());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{answer}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{answer}: {g}"),
                _ => panic!("{answer}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn encode_escapes_json() {
        assert_eq!(
            encode(r#"{"label":["a=b"]}"#),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
    }
}
