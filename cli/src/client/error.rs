//! What goes wrong talking to a coordinator, in words an operator can act on: gRPC statuses,
//! broken connections, and a TLS session the coordinator ended over this client's certificate.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::AlertDescription;

use rollgate_proto::MAX_MESSAGE_BYTES;
use thiserror::Error;
use tonic::{Code, Status};

use crate::args::DEFAULT_COORDINATOR;

/// Why a request to the coordinator did not succeed, worded for the operator.
#[derive(Debug, Error)]
pub enum ControlError {
    /// `--coordinator` is not something rollgate can dial.
    #[error(
        "{url:?} is not a coordinator URL: {problem}. Use e.g. --coordinator {DEFAULT_COORDINATOR}"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No connection could be made.
    #[error(
        "cannot reach the coordinator at {url}: {cause}. Is rollgate-coordinator running? \
         Set --coordinator or ROLLGATE_COORDINATOR."
    )]
    Unreachable {
        /// The coordinator's URL.
        url: String,
        /// The lowest-level reason, e.g. "connection refused".
        cause: String,
    },
    /// The coordinator ended the TLS session with an alert about this client's certificate
    /// (another CA, expired, revoked, or no certificate): the refusal arrives as the alert,
    /// during the handshake (TLS 1.2) or on the first request (TLS 1.3).
    #[error(
        "the coordinator at {url} refused this certificate{}: it ended the TLS session with the \
         alert {alert:?}. It takes only certificates signed by the fleet CA that are current and \
         not revoked; see who signed yours and until when with `rollgate certs show {}`, and get \
         one signed by the fleet CA with `rollgate certs issue operator NAME --dir \
         FLEET_CA_DIR` (pass it with --cert and --key, or ROLLGATE_CERT and ROLLGATE_KEY)",
        named(cert.as_deref()),
        cert.as_deref().map_or("FILE".into(), |c| c.display().to_string())
    )]
    CertificateRefused {
        /// The coordinator's URL.
        url: String,
        /// The TLS alert it sent.
        alert: AlertDescription,
        /// The certificate it refused (`--cert`), when the caller knows it.
        cert: Option<PathBuf>,
    },
    /// The operator's certificate settings are missing or unusable.
    #[error(
        "cannot talk to the coordinator over mTLS: {problem}. Pass --ca, --cert and --key (or \
         ROLLGATE_CA, ROLLGATE_CERT, ROLLGATE_KEY): the fleet CA and your certificate from \
         `rollgate certs issue operator NAME`"
    )]
    Tls {
        /// What is wrong.
        problem: String,
    },
    /// The coordinator did not answer in time.
    #[error(
        "cannot {action}: the coordinator at {url} did not answer within {} s; it may be \
         overloaded or waiting for etcd. Try again.",
        deadline.as_secs()
    )]
    Timeout {
        /// What the CLI tried to do ("pause rollout r-1").
        action: String,
        /// The coordinator's URL.
        url: String,
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The coordinator answered with an error status.
    #[error("cannot {action}: {detail}")]
    Refused {
        /// What the CLI tried to do ("create the rollout").
        action: String,
        /// The gRPC status code.
        code: Code,
        /// The coordinator's message with a hint on what to do.
        detail: String,
    },
}

/// What a request is about, so a "not found" answer can say where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A rollout spec (create, plan): what it names may not exist.
    Spec,
    /// A rollout id.
    Rollout,
    /// A host id.
    Host,
    /// A service name.
    Service,
    /// An artifact in the store.
    Artifact,
}

impl Subject {
    /// Where the operator can see what does exist.
    fn where_to_look(self) -> &'static str {
        match self {
            Subject::Spec => {
                "Check the spec's targets and release; `rollgate hosts` shows the known hosts."
            }
            Subject::Rollout => "`rollgate rollout list` shows the rollouts the coordinator knows.",
            Subject::Host => "`rollgate hosts` shows the hosts the coordinator knows.",
            Subject::Service => "`rollgate hosts` shows the services each host runs.",
            Subject::Artifact => "`rollgate artifact push FILE` puts a file in the store.",
        }
    }
}

impl ControlError {
    /// Turns a gRPC status from the coordinator at `url` into an operator-facing error.
    /// `subject` is what the request was about (for the hint on "not found").
    pub fn from_status(
        action: &str,
        subject: Subject,
        url: &str,
        deadline: Duration,
        status: &Status,
    ) -> Self {
        if let Some(alert) = refused_certificate(status) {
            return ControlError::CertificateRefused {
                url: url.to_string(),
                alert,
                cert: None,
            };
        }
        // A transport failure (the connection broke or could not be re-established) carries the
        // io error as its source: say so plainly rather than echo hyper's wording.
        if matches!(status.code(), Code::Unavailable | Code::Unknown) {
            if let Some(cause) = io_cause(status) {
                return ControlError::Unreachable {
                    url: url.to_string(),
                    cause,
                };
            }
        }
        if status.code() == Code::DeadlineExceeded {
            return ControlError::Timeout {
                action: action.to_string(),
                url: url.to_string(),
                deadline,
            };
        }
        ControlError::Refused {
            action: action.to_string(),
            code: status.code(),
            detail: explain(status.code(), status.message(), subject, url),
        }
    }

    /// Whether trying again later can help (used to keep a watch going across a coordinator
    /// restart or failover).
    pub fn is_transient(&self) -> bool {
        match self {
            ControlError::BadUrl { .. }
            | ControlError::Tls { .. }
            | ControlError::CertificateRefused { .. } => false,
            ControlError::Unreachable { .. } | ControlError::Timeout { .. } => true,
            ControlError::Refused { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
                    | Code::Aborted
            ),
        }
    }
}

/// The operator-facing detail for a status `code` with the coordinator's `message` about
/// `subject`.
fn explain(code: Code, message: &str, subject: Subject, url: &str) -> String {
    let msg = one_line(message);
    let msg = if msg.is_empty() {
        code.description().to_string()
    } else {
        msg
    };
    match code {
        // The coordinator's message names the spec field and the fix; pass it through.
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => msg,
        // The coordinator usually says where to look already; add a hint only when it did not.
        Code::NotFound if msg.contains("`rollgate ") => msg,
        Code::NotFound => format!("{msg}. {}", subject.where_to_look()),
        Code::Unavailable => format!(
            "the coordinator at {url} is unavailable: {msg}. Is rollgate-coordinator running, and \
             can it reach etcd? Set --coordinator or ROLLGATE_COORDINATOR if it runs elsewhere."
        ),
        Code::Unauthenticated | Code::PermissionDenied => format!(
            "the coordinator at {url} refused this client: {msg}. Operator commands need an \
             operator identity."
        ),
        Code::Unimplemented => format!(
            "the coordinator at {url} does not offer this call ({msg}); is it an older rollgate \
             than this CLI?"
        ),
        Code::ResourceExhausted => format!(
            "the coordinator is out of capacity: {msg}. Messages may be at most {MAX_MESSAGE_BYTES} \
             bytes; see the coordinator's log."
        ),
        Code::Unknown if msg == "transport error" => format!(
            "the connection to {url} broke before the coordinator answered. If this repeats, \
             the coordinator is refusing your certificate (expired, from another CA, or not an \
             operator's): check it with `rollgate certs show FILE`; the coordinator's log names \
             the reason"
        ),
        Code::Internal | Code::Unknown | Code::DataLoss => format!(
            "the coordinator failed: {msg}. Its log says more; try again."
        ),
        _ => format!("{msg} ({})", code.description()),
    }
}

/// " (FILE)" for a known certificate file.
fn named(cert: Option<&Path>) -> String {
    cert.map_or(String::new(), |c| format!(" ({})", c.display()))
}

/// The alert the coordinator ended the TLS session with, anywhere in `err`'s source chain,
/// when it is about this client's certificate.
pub(crate) fn refused_certificate(err: &(dyn StdError + 'static)) -> Option<AlertDescription> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        // tokio-rustls wraps its error in an io::Error, whose `source()` skips it.
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            if about_the_certificate(*alert) {
                return Some(*alert);
            }
        }
        cur = e.source();
    }
    None
}

/// Alerts a TLS server sends when it does not accept the client's certificate (DecryptError:
/// the certificate's signature or the handshake signature made with its key does not check out).
fn about_the_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
            | AlertDescription::CertificateRequired
    )
}

/// Collapses a possibly multi-line message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The io error at the bottom of `err`'s source chain, in plain words.
fn io_cause(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(describe_io(io));
        }
        cur = e.source();
    }
    None
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::TimedOut => "connection timed out".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

/// The deepest message in `err`'s source chain (or an io error's plain words).
pub(crate) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    if let Some(io) = io_cause(err) {
        return io;
    }
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RPC_DEADLINE;

    const URL: &str = "http://127.0.0.1:7443";

    #[test]
    fn statuses_become_actionable_messages() {
        let table = [
            (
                Code::InvalidArgument,
                "rollout spec field `strategy.max_unavailable`: must be at least 1",
                "cannot create the rollout: rollout spec field `strategy.max_unavailable`: must be at least 1",
            ),
            (
                Code::NotFound,
                "no rollout r-9",
                "cannot create the rollout: no rollout r-9. `rollgate rollout list`",
            ),
            (
                Code::NotFound,
                "no rollout r-9; `rollgate rollout list` shows the rollouts",
                "cannot create the rollout: no rollout r-9; `rollgate rollout list` shows the rollouts",
            ),
            (
                Code::FailedPrecondition,
                "rollout r-1 is running for service demo",
                "cannot create the rollout: rollout r-1 is running for service demo",
            ),
            (
                Code::Unavailable,
                "not the leader",
                "the coordinator at http://127.0.0.1:7443 is unavailable: not the leader. Is rollgate-coordinator running",
            ),
            (
                Code::DeadlineExceeded,
                "",
                "cannot create the rollout: the coordinator at http://127.0.0.1:7443 did not answer within 10 s",
            ),
            (
                Code::Unimplemented,
                "",
                "does not offer this call",
            ),
            (
                Code::Internal,
                "etcd said\nno",
                "the coordinator failed: etcd said no. Its log says more",
            ),
            (
                Code::PermissionDenied,
                "host certificate",
                "refused this client: host certificate",
            ),
        ];
        for (code, msg, want) in table {
            let err = ControlError::from_status(
                "create the rollout",
                Subject::Rollout,
                URL,
                RPC_DEADLINE,
                &Status::new(code, msg),
            )
            .to_string();
            assert!(
                err.contains(want),
                "{code:?}: {err:?} should contain {want:?}"
            );
            assert!(!err.contains('\n'), "{code:?}: {err:?} should be one line");
        }
    }

    #[test]
    fn not_found_points_at_the_listing_for_its_subject() {
        let table = [
            (
                Subject::Host,
                "fence host h9",
                "no host h9",
                "cannot fence host h9: no host h9. `rollgate hosts` shows the hosts",
            ),
            (
                Subject::Service,
                "get the history of service nope",
                "no service nope",
                "cannot get the history of service nope: no service nope. `rollgate hosts` shows the services",
            ),
            (
                Subject::Rollout,
                "promote rollout r-9",
                "no rollout r-9",
                "cannot promote rollout r-9: no rollout r-9. `rollgate rollout list`",
            ),
            (
                Subject::Spec,
                "plan the rollout",
                "no host h9 among the known hosts",
                "cannot plan the rollout: no host h9 among the known hosts. Check the spec's targets",
            ),
        ];
        for (subject, action, msg, want) in table {
            let err = ControlError::from_status(
                action,
                subject,
                URL,
                RPC_DEADLINE,
                &Status::new(Code::NotFound, msg),
            )
            .to_string();
            assert!(
                err.starts_with(want),
                "{subject:?}: {err:?} should start with {want:?}"
            );
        }
        // Refusals to promote, roll back, fence or forget are the coordinator's own words.
        for code in [Code::FailedPrecondition, Code::InvalidArgument] {
            let err = ControlError::from_status(
                "promote rollout r-1",
                Subject::Rollout,
                URL,
                RPC_DEADLINE,
                &Status::new(code, "rollout r-1 is not waiting at a gate (it is rolling)"),
            );
            assert_eq!(
                err.to_string(),
                "cannot promote rollout r-1: rollout r-1 is not waiting at a gate (it is rolling)"
            );
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn transport_failures_say_unreachable() {
        // What tonic makes of a failed (re)connect during a call.
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )))));
        assert_eq!(status.code(), Code::Unavailable);
        let err =
            ControlError::from_status("list hosts", Subject::Host, URL, RPC_DEADLINE, &status);
        assert_eq!(
            err.to_string(),
            "cannot reach the coordinator at http://127.0.0.1:7443: connection refused. \
             Is rollgate-coordinator running? Set --coordinator or ROLLGATE_COORDINATOR."
        );
        assert!(err.is_transient());
    }

    #[test]
    fn a_certificate_alert_says_the_coordinator_refused_it() {
        let alert = |a| {
            Status::from_error(Box::new(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(a),
            )))
        };
        for a in [
            AlertDescription::DecryptError,
            AlertDescription::BadCertificate,
            AlertDescription::UnknownCA,
            AlertDescription::CertificateRequired,
        ] {
            let err = ControlError::from_status(
                "list hosts",
                Subject::Host,
                URL,
                RPC_DEADLINE,
                &alert(a),
            );
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "the coordinator at {URL} refused this certificate: it ended the TLS \
                     session with the alert {a:?}."
                )),
                "{text}"
            );
            assert!(text.contains("rollgate certs issue operator"), "{text}");
            assert!(!text.contains("running"), "{text}");
            assert!(!err.is_transient());
        }
        // Any other alert is not about the certificate.
        let err = ControlError::from_status(
            "list hosts",
            Subject::Host,
            URL,
            RPC_DEADLINE,
            &alert(AlertDescription::ProtocolVersion),
        );
        assert!(!err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn transient_or_not() {
        let refused = |code| ControlError::Refused {
            action: String::new(),
            code,
            detail: String::new(),
        };
        assert!(refused(Code::Unavailable).is_transient());
        assert!(!refused(Code::NotFound).is_transient());
        assert!(!refused(Code::InvalidArgument).is_transient());
    }
}
