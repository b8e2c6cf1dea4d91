//! The connection to a coordinator's `ControlService`: one channel, a deadline on every call
//! but watch streams, and errors an operator can act on.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rollgate_proto::pb::control_service_client::ControlServiceClient;
use rollgate_proto::pb::{
    CreateRolloutRequest, HistoryRequest, HistoryResponse, HostActionResponse, HostRef,
    ListHostsRequest, ListHostsResponse, ListRolloutsRequest, ListRolloutsResponse,
    PushArtifactChunk, PushArtifactResponse, RolloutPlan, RolloutRef, RolloutStatus,
};
use rollgate_proto::tls::{DialFailure, Role, TlsConfig, TlsFiles};
use rollgate_proto::MAX_MESSAGE_BYTES;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

mod error;
mod probe;

use error::{refused_certificate, root_cause};
pub use error::{ControlError, Subject};

/// How long to wait for a TCP + HTTP/2 connection to the coordinator.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of every unary call (and of opening a watch stream).
pub const RPC_DEADLINE: Duration = Duration::from_secs(10);
/// Slowest upload rate an artifact push is given time for, on top of [`RPC_DEADLINE`].
pub const PUSH_MIN_BYTES_PER_SEC: u64 = 1024 * 1024;
/// HTTP/2 ping interval, so a watch notices a coordinator that vanished without closing.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a ping may go unanswered before the connection counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks and completes a `--coordinator` value: a bare `host:port` means https (plain http
/// with `insecure`).
pub fn normalize_url(raw: &str, insecure: bool) -> Result<String, ControlError> {
    let url = raw.trim();
    let bad = |problem: &str| ControlError::BadUrl {
        url: raw.to_string(),
        problem: problem.to_string(),
    };
    if url.is_empty() {
        return Err(bad("it is empty"));
    }
    let url = if url.contains("://") {
        url.to_string()
    } else if insecure {
        format!("http://{url}")
    } else {
        format!("https://{url}")
    };
    match (url.split_once("://").map(|(s, _)| s), insecure) {
        (Some("https"), false) | (Some("http"), true) => Ok(url),
        (Some("http"), false) => Err(bad(
            "plain http is for development only: use https:// (mTLS), or pass --insecure to a coordinator started with insecure_plaintext = true",
        )),
        (Some("https"), true) => Err(bad(
            "--insecure talks plain http; use an http:// URL, or drop --insecure",
        )),
        _ => Err(bad("only https:// URLs are supported")),
    }
}

/// Where and how to reach a coordinator: its URL and the operator's TLS files.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--coordinator`.
    pub url: String,
    /// `--ca`, `--cert`, `--key`, `--insecure`.
    pub tls: TlsConfig,
}

impl Target {
    /// The URL checked, and the operator's TLS files unless insecure.
    fn prepare(&self) -> Result<(String, Option<TlsFiles>), ControlError> {
        let url = normalize_url(&self.url, self.tls.insecure_plaintext)?;
        Endpoint::from_shared(url.clone()).map_err(|e| ControlError::BadUrl {
            url: url.clone(),
            problem: root_cause(&e),
        })?;
        if self.tls.insecure_plaintext {
            return Ok((url, None));
        }
        if self.tls.ca.is_none() && self.tls.cert.is_none() && self.tls.key.is_none() {
            return Err(ControlError::Tls {
                problem: "no operator certificate given".into(),
            });
        }
        let files = self
            .tls
            .load(Role::Operator, "")
            .map_err(|e| ControlError::Tls {
                problem: e.to_string().replace("[tls] needs", "mTLS needs"),
            })?
            .ok_or_else(|| ControlError::Tls {
                problem: "no operator certificate given".into(),
            })?;
        Ok((url, Some(files)))
    }
}

/// "rollout <id>", or "the most recent rollout" for an empty id.
pub fn rollout_name(id: &str) -> String {
    if id.is_empty() {
        "the most recent rollout".to_string()
    } else {
        format!("rollout {id}")
    }
}

/// How long an artifact push of `size` bytes may take.
pub fn push_deadline(size: u64) -> Duration {
    RPC_DEADLINE + Duration::from_secs(size / PUSH_MIN_BYTES_PER_SEC)
}

fn request<T>(msg: T, deadline: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    // Tells the coordinator when to give up too; the client enforces it on its own below.
    req.set_timeout(deadline);
    req
}

/// A connected coordinator.
#[derive(Debug, Clone)]
pub struct Coordinator {
    /// The coordinator's URL, named in every error.
    url: String,
    /// The operator's certificate (`--cert`), named when the coordinator refuses it.
    cert: Option<PathBuf>,
    /// The operator's TLS files, to ask the coordinator why it hung up (`None`: insecure).
    files: Option<Arc<TlsFiles>>,
    client: ControlServiceClient<Channel>,
}

impl Coordinator {
    /// Connects to the coordinator at `url` (waits at most [`CONNECT_TIMEOUT`]).
    pub async fn connect(target: &Target) -> Result<Self, ControlError> {
        let (url, files) = target.prepare()?;
        let settings = |e: Endpoint| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        };
        let connect = async {
            match &files {
                // The server must be a coordinator of our fleet (its certificate says so).
                Some(files) => rollgate_proto::tls::dial(&url, settings, files).await,
                None => {
                    let e = Endpoint::from_shared(url.clone()).map_err(DialFailure::from)?;
                    Ok(settings(e).connect().await?)
                }
            }
        };
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                if let Some(alert) = refused_certificate(&e) {
                    return Err(ControlError::CertificateRefused {
                        url,
                        alert,
                        cert: target.tls.cert.clone(),
                    });
                }
                let cause = root_cause(&e);
                if let Some(at) = cause.find("the server at ") {
                    return Err(ControlError::Tls {
                        problem: format!("refused to talk to {url}: {}", &cause[at..]),
                    });
                }
                if ["certificate", "alert", "handshake"]
                    .iter()
                    .any(|w| cause.contains(w))
                {
                    return Err(ControlError::Tls {
                        problem: format!(
                            "the TLS handshake with {url} failed ({cause}); --ca must be the \
                             fleet CA that signed the coordinator's certificate, and your \
                             certificate must be current and from the same CA"
                        ),
                    });
                }
                return Err(ControlError::Unreachable { url, cause });
            }
            Err(_) => {
                return Err(ControlError::Unreachable {
                    url,
                    cause: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                })
            }
        };
        let client = ControlServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Coordinator {
            url,
            cert: target.tls.cert.clone(),
            files: files.map(Arc::new),
            client,
        })
    }

    /// The URL this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Awaits `call` (about `subject`) for at most `deadline` and maps its failure.
    async fn finish<T>(
        &self,
        action: &str,
        subject: Subject,
        deadline: Duration,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, ControlError> {
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(self.diagnose(action, subject, deadline, &status).await),
            Err(_) => Err(ControlError::Timeout {
                action: action.to_string(),
                url: self.url.clone(),
                deadline,
            }),
        }
    }

    /// Creates a rollout from a fully resolved spec.
    pub async fn create_rollout(&self, spec_toml: String) -> Result<RolloutStatus, ControlError> {
        let mut c = self.client.clone();
        let req = request(CreateRolloutRequest { spec_toml }, RPC_DEADLINE);
        self.finish(
            "create the rollout",
            Subject::Spec,
            RPC_DEADLINE,
            c.create_rollout(req),
        )
        .await
    }

    /// Dry run of a fully resolved spec: what it would do and what would block it now.
    pub async fn plan_rollout(&self, spec_toml: String) -> Result<RolloutPlan, ControlError> {
        let mut c = self.client.clone();
        let req = request(CreateRolloutRequest { spec_toml }, RPC_DEADLINE);
        self.finish(
            "plan the rollout",
            Subject::Spec,
            RPC_DEADLINE,
            c.plan_rollout(req),
        )
        .await
    }

    /// One rollout's status; an empty id means the most recent rollout.
    pub async fn get_rollout(&self, id: &str) -> Result<RolloutStatus, ControlError> {
        let mut c = self.client.clone();
        let req = request(RolloutRef { id: id.into() }, RPC_DEADLINE);
        let action = format!("get {}", rollout_name(id));
        self.finish(&action, Subject::Rollout, RPC_DEADLINE, c.get_rollout(req))
            .await
    }

    /// All rollouts the coordinator knows.
    pub async fn list_rollouts(&self) -> Result<ListRolloutsResponse, ControlError> {
        let mut c = self.client.clone();
        let req = request(ListRolloutsRequest {}, RPC_DEADLINE);
        self.finish(
            "list rollouts",
            Subject::Rollout,
            RPC_DEADLINE,
            c.list_rollouts(req),
        )
        .await
    }

    /// Pauses a rollout.
    pub async fn pause_rollout(&self, id: &str) -> Result<RolloutStatus, ControlError> {
        let mut c = self.client.clone();
        let req = request(RolloutRef { id: id.into() }, RPC_DEADLINE);
        let action = format!("pause {}", rollout_name(id));
        self.finish(
            &action,
            Subject::Rollout,
            RPC_DEADLINE,
            c.pause_rollout(req),
        )
        .await
    }

    /// Resumes a paused rollout.
    pub async fn resume_rollout(&self, id: &str) -> Result<RolloutStatus, ControlError> {
        let mut c = self.client.clone();
        let req = request(RolloutRef { id: id.into() }, RPC_DEADLINE);
        let action = format!("resume {}", rollout_name(id));
        self.finish(
            &action,
            Subject::Rollout,
            RPC_DEADLINE,
            c.resume_rollout(req),
        )
        .await
    }

    /// Aborts a rollout.
    pub async fn abort_rollout(&self, id: &str) -> Result<RolloutStatus, ControlError> {
        let mut c = self.client.clone();
        let req = request(RolloutRef { id: id.into() }, RPC_DEADLINE);
        let action = format!("abort {}", rollout_name(id));
        self.finish(
            &action,
            Subject::Rollout,
            RPC_DEADLINE,
            c.abort_rollout(req),
        )
        .await
    }

    /// Opens the gate a rollout waits at.
    pub async fn promote_rollout(&self, id: &str) -> Result<RolloutStatus, ControlError> {
        let mut c = self.client.clone();
        let req = request(RolloutRef { id: id.into() }, RPC_DEADLINE);
        let action = format!("promote {}", rollout_name(id));
        self.finish(
            &action,
            Subject::Rollout,
            RPC_DEADLINE,
            c.promote_rollout(req),
        )
        .await
    }

    /// Starts rolling a rollout's hosts back; returns the status of the new rollback rollout.
    pub async fn rollback_rollout(&self, id: &str) -> Result<RolloutStatus, ControlError> {
        let mut c = self.client.clone();
        let req = request(RolloutRef { id: id.into() }, RPC_DEADLINE);
        let action = format!("roll back {}", rollout_name(id));
        self.finish(
            &action,
            Subject::Rollout,
            RPC_DEADLINE,
            c.rollback_rollout(req),
        )
        .await
    }

    /// The releases `service` has run, newest first.
    pub async fn get_history(&self, service: &str) -> Result<HistoryResponse, ControlError> {
        let mut c = self.client.clone();
        let req = request(
            HistoryRequest {
                service: service.into(),
            },
            RPC_DEADLINE,
        );
        let action = format!("get the history of service {service}");
        self.finish(&action, Subject::Service, RPC_DEADLINE, c.get_history(req))
            .await
    }

    /// Fences a host: its outstanding orders are void, it stops counting against budgets.
    pub async fn fence_host(&self, host_id: &str) -> Result<HostActionResponse, ControlError> {
        let mut c = self.client.clone();
        let req = request(
            HostRef {
                host_id: host_id.into(),
            },
            RPC_DEADLINE,
        );
        let action = format!("fence host {host_id}");
        self.finish(&action, Subject::Host, RPC_DEADLINE, c.fence_host(req))
            .await
    }

    /// Pins (or unpins) what rollouts see of a host.
    pub async fn pin_host(
        &self,
        req: rollgate_proto::pb::PinHostRequest,
    ) -> Result<HostActionResponse, ControlError> {
        let mut c = self.client.clone();
        let action = format!("pin host {}", req.host_id);
        let req = request(req, RPC_DEADLINE);
        self.finish(&action, Subject::Host, RPC_DEADLINE, c.pin_host(req))
            .await
    }

    /// Fences a host and deletes its record.
    pub async fn forget_host(&self, host_id: &str) -> Result<HostActionResponse, ControlError> {
        let mut c = self.client.clone();
        let req = request(
            HostRef {
                host_id: host_id.into(),
            },
            RPC_DEADLINE,
        );
        let action = format!("forget host {host_id}");
        self.finish(&action, Subject::Host, RPC_DEADLINE, c.forget_host(req))
            .await
    }

    /// Every host the coordinator knows.
    pub async fn list_hosts(&self) -> Result<ListHostsResponse, ControlError> {
        let mut c = self.client.clone();
        let req = request(ListHostsRequest {}, RPC_DEADLINE);
        self.finish("list hosts", Subject::Host, RPC_DEADLINE, c.list_hosts(req))
            .await
    }

    /// Opens a watch on a rollout (empty id: the most recent). Only opening has a deadline;
    /// the stream itself lasts until the rollout ends.
    pub async fn watch_rollout(&self, id: &str) -> Result<Streaming<RolloutStatus>, ControlError> {
        let mut c = self.client.clone();
        let action = format!("watch {}", rollout_name(id));
        let req = Request::new(RolloutRef { id: id.into() });
        self.finish(
            &action,
            Subject::Rollout,
            RPC_DEADLINE,
            c.watch_rollout(req),
        )
        .await
    }

    /// Opens the event stream. Only opening has a deadline.
    pub async fn events(
        &self,
        req: rollgate_proto::pb::EventsRequest,
    ) -> Result<Streaming<rollgate_proto::pb::Event>, ControlError> {
        let mut c = self.client.clone();
        self.finish(
            "read the event log",
            Subject::Rollout,
            RPC_DEADLINE,
            c.events(Request::new(req)),
        )
        .await
    }

    /// Maps an error from a stream's message (`action`: "read the event log").
    pub fn stream_error(&self, action: &str, status: &Status) -> ControlError {
        self.failure(action, Subject::Rollout, RPC_DEADLINE, status)
    }

    /// Maps an error from a watch stream's message.
    pub fn watch_error(&self, id: &str, status: &Status) -> ControlError {
        let action = format!("watch {}", rollout_name(id));
        self.failure(&action, Subject::Rollout, RPC_DEADLINE, status)
    }

    /// [`Coordinator::failure`]; when the connection broke without a word, a second
    /// handshake asks whether the coordinator refused this client's certificate.
    async fn diagnose(
        &self,
        action: &str,
        subject: Subject,
        deadline: Duration,
        status: &Status,
    ) -> ControlError {
        let err = self.failure(action, subject, deadline, status);
        let broke = match &err {
            ControlError::Unreachable { .. } => true,
            // What hyper makes of a connection closed under a request it was sending.
            ControlError::Refused { code, .. } => {
                matches!(code, tonic::Code::Unknown | tonic::Code::Cancelled)
            }
            _ => false,
        };
        if let (true, Some(files)) = (broke, &self.files) {
            if let Some(alert) = probe::refusal(&self.url, files).await {
                return ControlError::CertificateRefused {
                    url: self.url.clone(),
                    alert,
                    cert: self.cert.clone(),
                };
            }
        }
        err
    }

    /// [`ControlError::from_status`], naming this client's certificate if it was refused.
    fn failure(
        &self,
        action: &str,
        subject: Subject,
        deadline: Duration,
        status: &Status,
    ) -> ControlError {
        match ControlError::from_status(action, subject, &self.url, deadline, status) {
            ControlError::CertificateRefused { url, alert, .. } => {
                ControlError::CertificateRefused {
                    url,
                    alert,
                    cert: self.cert.clone(),
                }
            }
            other => other,
        }
    }

    /// Streams `chunks` (of an artifact of `size` bytes) into the coordinator's store.
    pub async fn push_artifact(
        &self,
        chunks: impl Stream<Item = PushArtifactChunk> + Send + 'static,
        size: u64,
    ) -> Result<PushArtifactResponse, ControlError> {
        let mut c = self.client.clone();
        let deadline = push_deadline(size);
        let req = request(chunks, deadline);
        self.finish(
            "push the artifact",
            Subject::Artifact,
            deadline,
            c.push_artifact(req),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let table = [
            ("https://c:7443", false, Ok("https://c:7443")),
            ("  10.0.0.1:7443 ", false, Ok("https://10.0.0.1:7443")),
            ("10.0.0.1:7443", true, Ok("http://10.0.0.1:7443")),
            ("http://c:7443", true, Ok("http://c:7443")),
            ("http://c:7443", false, Err("--insecure")),
            ("https://c:7443", true, Err("drop --insecure")),
            ("grpc://c:7443", false, Err("only https://")),
            ("", false, Err("empty")),
        ];
        for (raw, insecure, want) in table {
            match (normalize_url(raw, insecure), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{raw}: {e}"),
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn push_deadline_grows_with_size() {
        assert_eq!(push_deadline(0), RPC_DEADLINE);
        assert_eq!(
            push_deadline(100 * PUSH_MIN_BYTES_PER_SEC),
            RPC_DEADLINE + Duration::from_secs(100)
        );
    }

    #[tokio::test]
    async fn unreachable_coordinator_is_named() {
        // Bind and drop a listener to get a port that nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let target = Target {
            url: url.clone(),
            tls: TlsConfig {
                insecure_plaintext: true,
                ..TlsConfig::default()
            },
        };
        let err = Coordinator::connect(&target)
            .await
            .expect_err("nothing listens");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the coordinator at {url}: connection refused. Is \
                 rollgate-coordinator running? Set --coordinator or ROLLGATE_COORDINATOR."
            )
        );
    }
}
