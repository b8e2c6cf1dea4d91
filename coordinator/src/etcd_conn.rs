//! How the coordinator reaches etcd: connect options from `[etcd]` (TLS with the server's CA and
//! an optional client certificate, user and password), a first request that proves etcd lets
//! this coordinator in, and errors that say what etcd refused and what to fix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp, WatchOptions, WatchResponse, WatchStream,
};

use crate::config::{EtcdConfig, EtcdTlsConfig};
use crate::metrics::{EtcdMetrics, MeteredChannel};

/// How long connecting to etcd may take before the coordinator gives up at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one etcd request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive ping interval on the etcd connection: a dead etcd is noticed within
/// this plus [`HTTP2_KEEP_ALIVE_TIMEOUT`] even while only streams are open. Above etcd's
/// `--grpc-keepalive-min-time` (5 s by default): etcd closes a connection that pings more often
/// with nothing else on it (GOAWAY "too_many_pings"), which a follower's connection, idle but
/// for its watches since the lease keep-alive has a connection of its own, would be.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(6);
/// How long a keep-alive ping may go unanswered before the connection counts as dead.
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Permission bits for "other users": a password file with any of them set is refused.
const OTHERS_MASK: u32 = 0o007;
/// How etcd words a refused (expired, unknown) auth token.
const INVALID_TOKEN: &str = "invalid auth token";

/// Why the coordinator cannot use etcd, written for the operator: what happened, what to fix.
#[derive(Debug, thiserror::Error)]
pub enum EtcdAccessError {
    /// A `[etcd.tls]` file is missing or not PEM.
    #[error("cannot use [etcd.tls] {field} {path}: {why}")]
    TlsFile {
        /// `ca`, `cert` or `key`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The password file cannot be read or is empty.
    #[error("cannot use [etcd.auth] password_file {path}: {why}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The password file is open to other users.
    #[error(
        "[etcd.auth] password_file {path} is accessible by other users (mode {mode:03o}); \
         run `chmod 600 {path}` so only the coordinator's user can read it"
    )]
    PasswordFileOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// etcd rejected the user name or password.
    #[error(
        "etcd at {endpoints} refused user '{user}': authentication failed; check [etcd.auth] \
         username and the password in password_file {password_file}"
    )]
    AuthFailed {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The user.
        user: String,
        /// Where the password came from.
        password_file: PathBuf,
    },
    /// etcd has auth enabled and the config names no user.
    #[error(
        "etcd at {endpoints} requires a user (its auth is enabled) and none is configured: \
         {why}; set [etcd.auth] username and password_file"
    )]
    AuthRequired {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// What etcd said.
        why: String,
    },
    /// A user is configured but etcd does not have auth enabled.
    #[error(
        "etcd at {endpoints} does not have authentication enabled, but [etcd.auth] is set; \
         enable it in etcd (`etcdctl auth enable`) or remove [etcd.auth]"
    )]
    AuthNotEnabled {
        /// The endpoints, comma-separated.
        endpoints: String,
    },
    /// The user lacks permission on the prefix.
    #[error(
        "etcd at {endpoints} denied {who} access to the key prefix {prefix}: permission denied; \
         {fix}grant {whom} a role with readwrite on the prefix (`etcdctl role grant-permission \
         ROLE --prefix=true readwrite {prefix}`, `etcdctl user grant-role USER ROLE`)"
    )]
    PermissionDenied {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// Who etcd took the coordinator for.
        who: String,
        /// Who needs the role.
        whom: String,
        /// `etcd.prefix`.
        prefix: String,
        /// What else may be wrong, ending in "or " (or empty).
        fix: String,
    },
    /// etcd's server certificate does not check out against `[etcd.tls] ca`.
    #[error(
        "cannot verify the TLS certificate of etcd at {endpoints}: {why}; check that \
         [etcd.tls] ca {ca} is the CA that signed etcd's --cert-file and that the certificate \
         names the endpoint's host or IP address"
    )]
    ServerCertUntrusted {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The configured CA file.
        ca: PathBuf,
        /// The TLS error.
        why: String,
    },
    /// etcd ended the handshake: it wants a (valid) client certificate.
    #[error("etcd at {endpoints} refused the TLS handshake ({why}); {fix}")]
    ClientCertRejected {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The TLS error.
        why: String,
        /// What to change.
        fix: String,
    },
    /// An https:// endpoint that does not speak TLS.
    #[error(
        "etcd at {endpoints} does not speak TLS: {why}; use http:// endpoints without \
         [etcd.tls], or start etcd with --cert-file and --key-file"
    )]
    NotTls {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The TLS error.
        why: String,
    },
    /// Anything else: etcd is down, unreachable, or answered something unexpected.
    #[error("cannot reach etcd at {endpoints}: {why}; {fix}")]
    Unreachable {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The error, with its causes.
        why: String,
        /// What to check.
        fix: String,
    },
}

/// A password read from `[etcd.auth] password_file`; never printed.
struct Password(String);

/// Connects to `endpoints` as `[etcd]` says and checks, with one request that writes nothing,
/// that etcd accepts this coordinator's TLS identity and user and lets it read and write under
/// `etcd.prefix`. Every request of the client is timed and counted in `metrics`.
pub async fn connect(
    cfg: &EtcdConfig,
    endpoints: &[String],
    metrics: &EtcdMetrics,
) -> Result<Client, EtcdAccessError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(HTTP2_KEEP_ALIVE, HTTP2_KEEP_ALIVE_TIMEOUT);
    if let Some(tls) = &cfg.tls {
        options = options.with_tls(tls_options(tls)?);
    }
    if let Some(auth) = &cfg.auth {
        let Password(password) = read_password(&auth.password_file)?;
        if cfg.tls.is_none() {
            tracing::warn!(
                user = %auth.username,
                "the etcd password goes over plain http; use https:// endpoints and [etcd.tls]"
            );
        }
        // etcd's tokens expire (`--auth-token-ttl`, 5 min by default, counted from the last
        // use): a request refused for an expired token re-authenticates and is retried once.
        options = options
            .with_user(auth.username.clone(), password)
            .with_auto_token_refresh(true);
    }
    let explain = |e: etcd_client::Error| explain(cfg, endpoints, &e);
    // With a user, `connect` authenticates at once; without, the probe is the first request.
    let channel = MeteredChannel {
        metrics: metrics.clone(),
    };
    let mut client = Client::connect_with_balanced_channel(endpoints, Some(options), channel)
        .await
        .map_err(explain)?;
    probe(&mut client, &cfg.prefix).await.map_err(explain)?;
    Ok(client)
}

/// A watch that reports etcd cancelling it as an error instead of going silent.
#[derive(Debug)]
pub struct Watch {
    stream: WatchStream,
}

impl Watch {
    /// The next response; `Err` when the stream breaks or etcd cancels the watch (a compacted
    /// revision, a revoked permission), so the caller re-opens it.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, etcd_client::Error> {
        match self.stream.message().await? {
            Some(r) if r.canceled() => Err(etcd_client::Error::WatchError(format!(
                "etcd cancelled the watch: {}",
                r.cancel_reason()
            ))),
            other => Ok(other),
        }
    }

    /// Takes every response already received without waiting, and returns whether any of
    /// them `matters` (`Ok(None)`: the stream ended).
    pub fn drain_ready_where(
        &mut self,
        matters: impl Fn(&etcd_client::WatchResponse) -> bool,
    ) -> Result<Option<bool>, etcd_client::Error> {
        use futures::FutureExt as _;
        let mut any = false;
        loop {
            match self.message().now_or_never() {
                None => return Ok(Some(any)),
                Some(Ok(Some(r))) => any |= matters(&r),
                Some(Ok(None)) => return Ok(None),
                Some(Err(e)) => return Err(e),
            }
        }
    }

    /// Takes every response already received without waiting, and returns how many there
    /// were (`Ok(None)`: the stream ended). For a caller that re-reads the state after changes
    /// rather than applying each: a burst of changes (thousands of agents reconnecting after a
    /// restart) then costs one re-read, not one per response queued behind it.
    pub fn drain_ready(&mut self) -> Result<Option<usize>, etcd_client::Error> {
        use futures::FutureExt as _;
        let mut taken = 0;
        loop {
            // Cancel-safe: a response not yet complete stays in the stream.
            match self.message().now_or_never() {
                None => return Ok(Some(taken)),
                Some(Ok(Some(_))) => taken += 1,
                Some(Ok(None)) => return Ok(None),
                Some(Err(e)) => return Err(e),
            }
        }
    }
}

/// Opens a watch and waits for etcd to confirm it (that first, event-less response is not
/// passed on). etcd checks the auth token when it creates the watch, not when the stream opens,
/// so an expired token (idle for `--auth-token-ttl`, or etcd restarted) shows up as a watch
/// cancelled at once, which the client's own token refresh never sees: refresh it and retry
/// once.
pub async fn watch(
    client: &mut Client,
    key: impl Into<Vec<u8>>,
    options: Option<WatchOptions>,
) -> Result<Watch, etcd_client::Error> {
    let key = key.into();
    let mut refreshed = false;
    loop {
        let mut watch = Watch {
            stream: client.watch(key.clone(), options.clone()).await?,
        };
        match watch.message().await {
            Ok(Some(_)) => return Ok(watch),
            Ok(None) => {
                return Err(etcd_client::Error::WatchError(
                    "etcd closed the watch before confirming it".into(),
                ))
            }
            Err(etcd_client::Error::WatchError(why))
                if !refreshed && why.contains(INVALID_TOKEN) =>
            {
                refreshed = true;
                tracing::info!(
                    "etcd refused the watch's auth token (expired, or etcd restarted); \
                     authenticating again"
                );
                client.refresh_token().await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Builds the TLS options from `[etcd.tls]`.
fn tls_options(tls: &EtcdTlsConfig) -> Result<TlsOptions, EtcdAccessError> {
    let mut options = TlsOptions::new();
    if let Some(ca) = &tls.ca {
        let pem = read_pem(ca, "ca", "CERTIFICATE")?;
        options = options.ca_certificate(Certificate::from_pem(pem));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let cert_pem = read_pem(cert, "cert", "CERTIFICATE")?;
        let key_pem = read_pem(key, "key", "PRIVATE KEY")?;
        options = options.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(options)
}

fn read_pem(path: &Path, field: &'static str, kind: &str) -> Result<Vec<u8>, EtcdAccessError> {
    let pem = std::fs::read(path).map_err(|e| EtcdAccessError::TlsFile {
        field,
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&pem);
    if !(text.contains("-----BEGIN ") && text.contains(&format!("{kind}-----"))) {
        return Err(EtcdAccessError::TlsFile {
            field,
            path: path.to_path_buf(),
            why: format!("no PEM {kind} in it (expected -----BEGIN ...{kind}-----)"),
        });
    }
    Ok(pem)
}

/// Reads the password, refusing a file other users may read.
fn read_password(path: &Path) -> Result<Password, EtcdAccessError> {
    let bad = |why: String| EtcdAccessError::PasswordFile {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & OTHERS_MASK != 0 {
        return Err(EtcdAccessError::PasswordFileOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(bad(
            "it is empty; write the etcd user's password in it".into()
        ));
    }
    Ok(Password(password.to_string()))
}

/// One transaction whose compare never holds: etcd checks the permissions of every operation in
/// it (the put under the prefix needs write, the get read) but carries out only the get.
async fn probe(client: &mut Client, prefix: &str) -> Result<(), etcd_client::Error> {
    let key = format!("{prefix}replicas/");
    let txn = Txn::new()
        .when([Compare::version(key.clone(), CompareOp::Less, 0)])
        .and_then([TxnOp::put(key.clone(), "", None)])
        .or_else([TxnOp::get(
            key,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )]);
    client.txn(txn).await.map(|_| ())
}

/// Turns an etcd client error at start into what the operator should know and do.
fn explain(cfg: &EtcdConfig, endpoints: &[String], err: &etcd_client::Error) -> EtcdAccessError {
    let endpoints = endpoints.join(", ");
    let why = chain(err);
    let lower = why.to_lowercase();
    let user = cfg.auth.as_ref().map(|a| a.username.clone());
    let tls = cfg.tls.clone().unwrap_or_default();
    let has_cert = tls.cert.is_some();
    if lower.contains("authentication failed") {
        if let Some(auth) = &cfg.auth {
            return EtcdAccessError::AuthFailed {
                endpoints,
                user: auth.username.clone(),
                password_file: auth.password_file.clone(),
            };
        }
    }
    if lower.contains("authentication is not enabled") {
        return EtcdAccessError::AuthNotEnabled { endpoints };
    }
    if user.is_none()
        && (lower.contains("user name is empty")
            || lower.contains(INVALID_TOKEN)
            || lower.contains("user name not found"))
    {
        return EtcdAccessError::AuthRequired { endpoints, why };
    }
    if lower.contains("permission denied") {
        let (who, whom, fix) = match user {
            Some(u) => (format!("user '{u}'"), "it".to_string(), String::new()),
            // Without a token etcd takes the client certificate's CN for the user name.
            None if has_cert => (
                "the user named by the client certificate's CN (no [etcd.auth] is set)".into(),
                "that user".into(),
                "set [etcd.auth] username and password_file, or ".into(),
            ),
            None => (
                "this coordinator (no [etcd.auth] is set)".into(),
                "a user".into(),
                "set [etcd.auth] username and password_file and ".into(),
            ),
        };
        return EtcdAccessError::PermissionDenied {
            endpoints,
            who,
            whom,
            prefix: cfg.prefix.clone(),
            fix,
        };
    }
    if let Some(ca) = tls.ca.clone() {
        if lower.contains("invalid peer certificate")
            || lower.contains("unknownissuer")
            || lower.contains("notvalidforname")
            || lower.contains("certificate is not valid for")
        {
            return EtcdAccessError::ServerCertUntrusted { endpoints, ca, why };
        }
        if lower.contains("certificaterequired")
            || lower.contains("certificate required")
            || lower.contains("handshakefailure")
            || lower.contains("handshake failure")
            || lower.contains("badcertificate")
            || lower.contains("bad certificate")
            || lower.contains("unknownca")
            || lower.contains("unknown ca")
            || lower.contains("certificateexpired")
            // With TLS 1.3 the client's side of the handshake is over before etcd checks the
            // client certificate, so its refusal arrives as a closed connection.
            || lower.contains("connection closed")
            || lower.contains("connection reset")
            || lower.contains("broken pipe")
            || lower.contains("unexpected eof")
        {
            let fix = match &tls.cert {
                None => "etcd most likely requires a client certificate (--client-cert-auth): \
                         set [etcd.tls] cert and key"
                    .to_string(),
                Some(cert) => format!(
                    "etcd most likely did not accept the client certificate [etcd.tls] cert \
                     {}: check that it is signed by the CA etcd trusts (--trusted-ca-file), has \
                     not expired, and matches key",
                    cert.display()
                ),
            };
            return EtcdAccessError::ClientCertRejected {
                endpoints,
                why,
                fix,
            };
        }
        if lower.contains("invalidcontenttype")
            || lower.contains("corrupt message")
            || lower.contains("invalid content type")
        {
            return EtcdAccessError::NotTls { endpoints, why };
        }
    }
    let fix = if cfg.tls.is_none() {
        "check etcd.endpoints and that etcd is running; if etcd serves TLS, use https:// \
         endpoints and set [etcd.tls]"
    } else {
        "check etcd.endpoints and that etcd is running"
    };
    EtcdAccessError::Unreachable {
        endpoints,
        why,
        fix: fix.to_string(),
    }
}

/// The error and all its causes, `: `-separated (etcd-client's errors hide their sources).
fn chain(err: &etcd_client::Error) -> String {
    use std::error::Error as _;
    // A status prints its source's Debug form; its message and the sources' text read better.
    let (mut text, mut source): (String, Option<&(dyn std::error::Error + 'static)>) = match err {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), s.source()),
        etcd_client::Error::TransportError(e) => (e.to_string(), e.source()),
        e => (e.to_string(), None),
    };
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EtcdAuthConfig;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn password_file_is_trimmed_and_must_be_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = write(dir.path(), "ok", "s3cret\n", 0o600);
        assert_eq!(read_password(&ok).expect("readable").0, "s3cret");
        let crlf = write(dir.path(), "crlf", "s3cret\r\n", 0o400);
        assert_eq!(read_password(&crlf).expect("readable").0, "s3cret");
        // Only one trailing newline is the file's; spaces are the password's.
        let spaced = write(dir.path(), "spaced", " pw \n\n", 0o640);
        assert_eq!(read_password(&spaced).expect("readable").0, " pw \n");

        let open = write(dir.path(), "open", "s3cret\n", 0o644);
        let err = read_password(&open)
            .err()
            .expect("world-readable")
            .to_string();
        assert!(err.contains("chmod 600") && err.contains("open"), "{err}");
        assert!(err.contains("644"), "{err}");

        let empty = write(dir.path(), "empty", "\n", 0o600);
        let err = read_password(&empty).err().expect("empty").to_string();
        assert!(err.contains("empty"), "{err}");
        let err = read_password(&dir.path().join("missing"))
            .err()
            .expect("missing")
            .to_string();
        assert!(err.contains("password_file"), "{err}");
    }

    #[test]
    fn tls_files_must_be_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = write(dir.path(), "ca.pem", "not a certificate", 0o644);
        let tls = EtcdTlsConfig {
            ca: Some(junk),
            cert: None,
            key: None,
        };
        let err = tls_options(&tls).expect_err("junk").to_string();
        assert!(
            err.contains("[etcd.tls] ca") && err.contains("CERTIFICATE"),
            "{err}"
        );
        let tls = EtcdTlsConfig {
            ca: Some(dir.path().join("missing.pem")),
            cert: None,
            key: None,
        };
        let err = tls_options(&tls).expect_err("missing").to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn refusals_name_the_setting_to_fix() {
        let cfg = EtcdConfig {
            endpoints: vec!["https://etcd:2379".into()],
            tls: Some(EtcdTlsConfig {
                ca: Some("/etc/ca.pem".into()),
                cert: None,
                key: None,
            }),
            auth: Some(EtcdAuthConfig {
                username: "rollgate".into(),
                password_file: "/etc/pw".into(),
            }),
            ..EtcdConfig::default()
        };
        let status = |code, msg: &str| {
            etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg.to_string()))
        };
        let eps = cfg.endpoints.clone();
        let cases = [
            (
                status(
                    tonic::Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                "refused user 'rollgate': authentication failed; check [etcd.auth]",
            ),
            (
                status(
                    tonic::Code::PermissionDenied,
                    "etcdserver: permission denied",
                ),
                "denied user 'rollgate' access to the key prefix /rollgate/",
            ),
            (
                status(tonic::Code::Unavailable, "connection refused"),
                "cannot reach etcd at https://etcd:2379",
            ),
        ];
        for (err, want) in cases {
            let got = explain(&cfg, &eps, &err).to_string();
            assert!(got.contains(want), "{got}");
        }
    }
}
