//! HTTPS on the `/metrics` listener: `[metrics] tls_cert` and `tls_key` (PEM) turn it on,
//! `client_ca` (PEM) makes every scraper present a certificate that CA signed. The files are
//! read and checked once, at start; a bad one stops the daemon with an error naming it.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsConfig;

/// How long a scraper may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 32;
/// Finished handshakes waiting for the HTTP server to take them.
const ACCEPTED_QUEUE: usize = 16;
/// Pause after a failed `accept` (out of file descriptors, ...).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A problem with the `[metrics]` TLS settings or files, written for the operator.
#[derive(Debug, thiserror::Error)]
pub enum MetricsTlsError {
    /// One of `tls_cert` and `tls_key` without the other.
    #[error(
        "[metrics] {set} is set but {missing} is not; set both tls_cert and tls_key (PEM files) \
         to serve https, or neither to serve plain http"
    )]
    Incomplete {
        /// The one that is set.
        set: &'static str,
        /// The one that is not.
        missing: &'static str,
    },
    /// `client_ca` without a server certificate.
    #[error(
        "[metrics] client_ca needs tls_cert and tls_key: client certificates are only asked \
         for over https; set both, or remove client_ca"
    )]
    ClientCaWithoutTls,
    /// A file is missing, unreadable or holds no PEM of the expected kind.
    #[error(
        "cannot use [metrics] {field} {path}: {why}; point {field} at a readable PEM file \
         (or remove tls_cert, tls_key and client_ca to serve plain http)"
    )]
    File {
        /// `tls_cert`, `tls_key` or `client_ca`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, and what it should hold.
        why: String,
    },
    /// The key is not the certificate's.
    #[error(
        "[metrics] tls_key {key} is not the private key of tls_cert {cert}; point tls_key at \
         the key the certificate was issued for"
    )]
    KeyMismatch {
        /// `tls_cert`.
        cert: PathBuf,
        /// `tls_key`.
        key: PathBuf,
    },
    /// rustls refused the files for another reason.
    #[error("cannot set up TLS for [metrics] with tls_cert {cert}: {why}")]
    Rejected {
        /// `tls_cert`.
        cert: PathBuf,
        /// rustls' reason.
        why: String,
    },
}

/// The TLS acceptor `[metrics]` asks for: `None` for plain http.
pub fn acceptor(config: &MetricsConfig) -> Result<Option<TlsAcceptor>, MetricsTlsError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) if config.client_ca.is_some() => {
            return Err(MetricsTlsError::ClientCaWithoutTls)
        }
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(incomplete("tls_cert", "tls_key")),
        (None, Some(_)) => return Err(incomplete("tls_key", "tls_cert")),
        (Some(cert), Some(key)) => (cert, key),
    };
    let server = server_config(cert, key, config.client_ca.as_deref())?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

fn incomplete(set: &'static str, missing: &'static str) -> MetricsTlsError {
    MetricsTlsError::Incomplete { set, missing }
}

/// The rustls server config: our chain and key, and the client verifier of `client_ca`.
fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, MetricsTlsError> {
    let chain = read_certs(cert, "tls_cert")?;
    let key_der = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rejected = |e: rustls::Error| MetricsTlsError::Rejected {
        cert: cert.to_path_buf(),
        why: e.to_string(),
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    builder
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => MetricsTlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            other => rejected(other),
        })
}

/// Accepts only clients with a certificate signed by a CA in `path`.
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, MetricsTlsError> {
    let bad = |why: String| MetricsTlsError::File {
        field: "client_ca",
        path: path.to_path_buf(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(path, "client_ca")? {
        roots
            .add(ca)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| bad(e.to_string()))
}

fn read_certs(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MetricsTlsError> {
    let bad = |why: String| MetricsTlsError::File {
        field,
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, MetricsTlsError> {
    let bad = |why: String| MetricsTlsError::File {
        field: "tls_key",
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        bad(format!(
            "no PEM private key in it ({e}; expected -----BEGIN PRIVATE KEY-----)"
        ))
    })
}

/// A listener that hands the HTTP server finished TLS connections. Handshakes run in their
/// own tasks (at most [`MAX_HANDSHAKES`], each within [`HANDSHAKE_TIMEOUT`]), so a slow or
/// refused scraper does not hold up the others.
#[derive(Debug)]
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until `cancel` fires.
    pub fn spawn(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        cancel: CancellationToken,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(listener, acceptor, tx, cancel));
        Ok(TlsListener { accepted, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("the metrics endpoint cannot accept a connection: {e}; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::info!(%peer, "refused a scraper of /metrics: TLS handshake failed: {e}")
                }
                Err(_) => {
                    tracing::info!(%peer, "a scraper of /metrics did not finish its TLS handshake in {HANDSHAKE_TIMEOUT:?}; closed")
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): the server stops through its own signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> MetricsConfig {
        MetricsConfig {
            listen: None,
            tls_cert: cert.map(Path::to_path_buf),
            tls_key: key.map(Path::to_path_buf),
            client_ca: ca.map(Path::to_path_buf),
        }
    }

    /// A self-signed certificate and its key, written as `NAME.pem` and `NAME.key`.
    fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).expect("write cert");
        std::fs::write(&key, c.key_pair.serialize_pem()).expect("write key");
        (cert, key)
    }

    fn error(config: &MetricsConfig) -> String {
        acceptor(config).err().expect("refused").to_string()
    }

    #[test]
    fn plain_http_unless_both_files_are_set() {
        assert!(acceptor(&config(None, None, None))
            .expect("plain")
            .is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = issue(dir.path(), "server");
        let err = error(&config(Some(&cert), None, None));
        assert!(err.contains("tls_cert is set but tls_key is not"), "{err}");
        let err = error(&config(None, Some(&key), None));
        assert!(err.contains("tls_key is set but tls_cert is not"), "{err}");
        let err = error(&config(None, None, Some(&cert)));
        assert!(
            err.contains("client_ca needs tls_cert and tls_key"),
            "{err}"
        );
        assert!(acceptor(&config(Some(&cert), Some(&key), None))
            .expect("https")
            .is_some());
        assert!(acceptor(&config(Some(&cert), Some(&key), Some(&cert)))
            .expect("https with client certificates")
            .is_some());
    }

    #[test]
    fn bad_files_are_named_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = issue(dir.path(), "server");
        let (_, other_key) = issue(dir.path(), "other");
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").expect("write");
        let cases = [
            (
                config(Some(&missing), Some(&key), None),
                "cannot use [metrics] tls_cert",
            ),
            (config(Some(&junk), Some(&key), None), "no PEM certificate"),
            (config(Some(&cert), Some(&junk), None), "no PEM private key"),
            (config(Some(&cert), Some(&cert), None), "[metrics] tls_key"),
            (
                config(Some(&cert), Some(&other_key), None),
                "is not the private key of tls_cert",
            ),
            (
                config(Some(&cert), Some(&key), Some(&junk)),
                "cannot use [metrics] client_ca",
            ),
        ];
        for (cfg, want) in cases {
            let err = error(&cfg);
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        let err = error(&config(Some(&missing), Some(&key), None));
        assert!(err.contains("missing.pem"), "{err}");
    }
}
