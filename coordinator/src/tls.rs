//! mTLS on the coordinator's listener, certificate reload, and who may call what (S7).
//!
//! Every connection must present a certificate from the fleet CA (rustls's WebPKI client
//! verifier: chain, validity period, clientAuth usage). The peer's identity is read from that
//! certificate's `spiffe://FLEET/ROLE/NAME` URI SAN, never from a message: agents may open only
//! their own host's session, the control API takes only operators, artifacts go to hosts,
//! operators and other replicas.
//!
//! Reload: before each handshake the listener compares the files' modification times with the
//! loaded ones and rebuilds its rustls config when they changed (SIGHUP forces it). A renewed
//! certificate or CA takes effect for the next connection, without a restart; a broken file
//! is reported and the last good config stays in use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rollgate_proto::text::printable;
use rollgate_proto::tls::{Identity, Role, TlsConfig, TlsFiles};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{Acceptor, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use crate::accept::{Admitted, Gate, Limits};
use crate::roles::DenyList;
use tracing::{debug, error, info, warn};

/// A TLS handshake must finish within this (a peer on a slow link needs well under a second;
/// a stalled one holds its place no longer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (EMFILE and friends) instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The listener's TLS state: the files, the current rustls config, our own identity, and the
/// deny list.
#[derive(Debug)]
pub struct ServerTls {
    settings: TlsConfig,
    current: Mutex<Loaded>,
    /// Identities and certificates refused even though the CA signed them.
    pub deny: DenyList,
    /// Times the TLS files were read again (see [`ServerTls::generation`]).
    reloads: AtomicU64,
    /// When [`ServerTls::generation`] last looked at the files.
    polled: Mutex<Option<Instant>>,
}

/// How often [`ServerTls::generation`] looks at the TLS files and the deny list (one stat
/// each, for every open stream together): well within [`crate::roles::RECHECK_INTERVAL`].
const CHANGE_POLL: Duration = Duration::from_millis(500);

struct Loaded {
    acceptor: TlsAcceptor,
    /// The client verifier of `acceptor`, to re-check peers of open connections against the
    /// CA bundle in use now.
    verifier: Arc<dyn ClientCertVerifier>,
    files: Arc<TlsFiles>,
    stamps: Vec<Option<SystemTime>>,
}

impl ServerTls {
    /// Loads `[tls]` and the deny list; `Ok(None)` in insecure mode (logged loudly).
    pub fn load(
        settings: &TlsConfig,
        deny_list: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        if settings.insecure() {
            warn!(
                "INSECURE: [tls] insecure_plaintext = true: agents and operators talk plain \
                 http, nothing is encrypted and nobody is authenticated; any process that can \
                 reach this port can run releases on every host. Development only."
            );
            return Ok(None);
        }
        let loaded = Self::build(settings)?;
        info!(
            identity = %loaded.files.identity.uri(),
            "mTLS on: peers must present a certificate from the fleet CA"
        );
        Ok(Some(Arc::new(ServerTls {
            settings: settings.clone(),
            current: Mutex::new(loaded),
            deny: DenyList::load(deny_list).context("[access] deny_list")?,
            reloads: AtomicU64::new(0),
            polled: Mutex::new(None),
        })))
    }

    fn build(settings: &TlsConfig) -> anyhow::Result<Loaded> {
        let stamps = stamps(settings);
        let files = settings
            .load(
                Role::Coordinator,
                "make them with `rollgate certs issue coordinator REPLICA_ID`",
            )?
            .context("TLS settings vanished")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in &files.ca {
            roots
                .add(ca.clone())
                .context("the fleet CA certificate in [tls] ca is not a usable CA")?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("cannot build the client certificate verifier from [tls] ca")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(files.chain.clone(), files.key()?)
            .context("[tls] cert and key do not belong together")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            verifier,
            files: Arc::new(files),
            stamps,
        })
    }

    /// Our fleet (from our own certificate).
    pub fn fleet(&self) -> String {
        self.files().identity.fleet.clone()
    }

    /// The files currently in use (for dialing other replicas with our certificate).
    pub fn files(&self) -> Arc<TlsFiles> {
        lock(&self.current).files.clone()
    }

    /// Whether `who`, presenting `chain`, may still be served: not denied, and the chain still
    /// verifies (validity period, CA bundle in use now). For requests on long-lived HTTP/2
    /// connections and for open streams.
    pub fn recheck(&self, who: &Identity, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err("no client certificate".into());
        };
        if let Some(why) = self.deny.denies(who, leaf) {
            return Err(why);
        }
        let verifier = {
            // Picks up a renewed CA bundle (and the deny list) before judging.
            self.acceptor(false);
            lock(&self.current).verifier.clone()
        };
        verifier
            .verify_client_cert(leaf, rest, rustls::pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "its certificate no longer verifies ({e}): expired, or not signed by the \
                     fleet CA in use now"
                )
            })
    }

    /// A number that changes whenever the TLS files or the deny list are read again (changed
    /// on disk, or SIGHUP), looked at no more than every [`CHANGE_POLL`]. An open stream's
    /// verdict ([`ServerTls::recheck`]) can change only with it or with the clock passing the
    /// end of its certificate's validity, so the guards of 10,000 sessions re-verify a
    /// signature only then, not every second each.
    pub fn generation(&self) -> u64 {
        let due = {
            let mut polled = lock(&self.polled);
            let due = polled.is_none_or(|t| t.elapsed() >= CHANGE_POLL);
            if due {
                *polled = Some(Instant::now());
            }
            due
        };
        if due {
            self.acceptor(false);
            self.deny.refresh(false);
        }
        self.reloads.load(Ordering::SeqCst) + self.deny.reloads()
    }

    /// The acceptor to use now, reloading first when a file changed (or `force`).
    fn acceptor(&self, force: bool) -> TlsAcceptor {
        let mut cur = lock(&self.current);
        let now = stamps(&self.settings);
        if force || now != cur.stamps {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            match Self::build(&self.settings) {
                Ok(fresh) => {
                    info!(
                        identity = %fresh.files.identity.uri(),
                        "TLS certificates reloaded; new connections use them"
                    );
                    *cur = fresh;
                }
                Err(e) => {
                    error!(
                        "cannot reload the TLS files ({e:#}); still using the ones loaded before. \
                         Fix the files named in [tls]; they are read again on the next connection"
                    );
                    // Do not retry on every connection until they change again.
                    cur.stamps = now;
                }
            }
        }
        cur.acceptor.clone()
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("identity", &self.files.identity)
            .finish_non_exhaustive()
    }
}

fn stamps(settings: &TlsConfig) -> Vec<Option<SystemTime>> {
    settings
        .paths()
        .into_iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Accepts TCP connections and hands out the ones whose TLS handshake (client certificate
/// included) succeeded. Every connection is accepted at once; [`Gate`] bounds the handshakes in
/// progress by shedding the oldest unauthenticated ones. Refused handshakes are logged with the
/// peer's address and why (rate-limited per source).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    cancel: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let gate = Gate::new(Limits::default());
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let (tcp, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hangup => {
                    info!("SIGHUP: reloading the TLS files and the deny list");
                    tls.acceptor(true);
                    tls.deny.refresh(true);
                    continue;
                }
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off a little instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                },
            };
            let admitted = gate.admit(peer);
            let acceptor = tls.acceptor(false);
            tokio::spawn(handshake(
                tcp,
                peer,
                (acceptor, tls.clone()),
                admitted,
                gate.clone(),
                tx.clone(),
            ));
        }
    });
    ReceiverStream::new(rx)
}

/// One connection's TLS handshake, until it succeeds (handed to the server), fails (logged),
/// times out, or is shed by a newer connection.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    (acceptor, tls): (TlsAcceptor, Arc<ServerTls>),
    admitted: Admitted,
    gate: Arc<Gate>,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let _ = tcp.set_nodelay(true);
    let config = acceptor.config().clone();
    let attempt = async {
        // The ClientHello first, so that a connection stalled before it is known as such (and
        // shed before others).
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
        admitted.hello();
        start.into_stream(config).await
    };
    let outcome = tokio::select! {
        // Logged by the gate, once per source per interval.
        _ = admitted.shed.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt) => r,
    };
    // Authenticated (or over): it no longer counts against the handshake bounds.
    drop(admitted);
    match outcome {
        Ok(Ok(stream)) => {
            if let Err(why) = denied(&tls, &stream) {
                warn!(%peer, "refused a connection: {why}");
                return;
            }
            let _ = tx.send(Ok(stream)).await;
        }
        // Port probes and abandoned sockets: not worth a line each.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            debug!(%peer, "connection closed before the TLS handshake finished")
        }
        Ok(Err(e)) => {
            if gate.log_refusal(peer) {
                warn!(
                    %peer,
                    "refused a connection: TLS handshake failed: {}. A peer needs a \
                     certificate from this fleet's CA (rollgate certs issue ...)",
                    printable(&e.to_string())
                );
            }
        }
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

/// Whether the deny list refuses the client certificate of a finished handshake.
fn denied(tls: &ServerTls, stream: &TlsStream<TcpStream>) -> Result<(), String> {
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return Ok(());
    };
    match Identity::from_cert_der(leaf) {
        Ok(id) => match tls.deny.denies(&id, leaf) {
            Some(why) => Err(why),
            None => Ok(()),
        },
        // Refused with the reason at its first request.
        Err(_) => Ok(()),
    }
}

/// The caller's identity, checked again now (deny list, expiry, current CA bundle): every
/// request on a long-lived connection is judged by today's rules. `Ok(None)` without TLS.
pub fn admitted<T>(req: &Request<T>, tls: Option<&ServerTls>) -> Result<Option<Identity>, Status> {
    let Some(tls) = tls else { return Ok(None) };
    let Some(id) = peer(req, Some(&tls.fleet()))? else {
        return Ok(None);
    };
    let chain: Vec<CertificateDer<'static>> = req
        .peer_certs()
        .map(|c| c.iter().cloned().collect())
        .unwrap_or_default();
    if let Err(why) = tls.recheck(&id, &chain) {
        warn!(peer = %id.uri(), "refused a request: {why}");
        return Err(Status::permission_denied(format!(
            "refused: {why}. Ask the fleet's admin for a new certificate"
        )));
    }
    Ok(Some(id))
}

/// The client certificate chain of a request (empty without TLS).
pub fn peer_chain<T>(req: &Request<T>) -> Vec<CertificateDer<'static>> {
    req.peer_certs()
        .map(|c| c.iter().cloned().collect())
        .unwrap_or_default()
}

/// Who is calling, from the verified client certificate of the connection. `Ok(None)` when
/// the coordinator runs without TLS (insecure development mode).
pub fn peer<T>(req: &Request<T>, fleet: Option<&str>) -> Result<Option<Identity>, Status> {
    let Some(fleet) = fleet else {
        return Ok(None);
    };
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("no client certificate on this connection; connect with mTLS")
    })?;
    let first = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))?;
    let id = Identity::from_cert_der(first).map_err(|e| {
        warn!(
            "refused a request: the client certificate names no usable identity: {}",
            printable(&e.to_string())
        );
        Status::unauthenticated(format!("your certificate is not usable here: {e}"))
    })?;
    if id.fleet != fleet {
        warn!(identity = %id.uri(), "refused a request from another fleet's identity");
        return Err(Status::permission_denied(format!(
            "your certificate is for fleet {:?}, this coordinator serves fleet {fleet:?}",
            id.fleet
        )));
    }
    Ok(Some(id))
}

/// Requires one of `roles` (and passes [`admitted`]); `what` names the call in the refusal.
pub fn require<T>(
    req: &Request<T>,
    tls: Option<&ServerTls>,
    roles: &[Role],
    what: &str,
) -> Result<Option<Identity>, Status> {
    let id = admitted(req, tls)?;
    if let Some(id) = &id {
        if !roles.contains(&id.role) {
            let allowed: Vec<_> = roles.iter().map(|r| r.word()).collect();
            warn!(identity = %id.uri(), "refused {what}: not allowed for a {}", id.role);
            return Err(Status::permission_denied(format!(
                "{what} is for {} certificates; yours is {} ({}). Use a certificate from \
                 `rollgate certs issue {} NAME`",
                allowed.join(" or "),
                id,
                id.uri(),
                allowed[0]
            )));
        }
    }
    Ok(id)
}

/// `e` and its sources, each said once (for log lines and statuses).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    printable(&s).into_owned()
}
