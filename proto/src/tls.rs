//! Identities and mTLS material shared by every part (S7: a host speaks only for itself).
//!
//! Every certificate of a fleet carries exactly one URI SAN naming who holds it:
//!
//! | holder        | URI SAN                               | extended key usage     |
//! |---------------|---------------------------------------|------------------------|
//! | coordinator   | `spiffe://FLEET/coordinator/REPLICA`  | serverAuth, clientAuth |
//! | agent (host)  | `spiffe://FLEET/host/HOST_ID`         | clientAuth             |
//! | operator      | `spiffe://FLEET/operator/NAME`        | clientAuth             |
//! | viewer        | `spiffe://FLEET/viewer/NAME`          | clientAuth             |
//! | deployer      | `spiffe://FLEET/deployer/NAME` and `urn:rollgate:services:A,B` | clientAuth |
//!
//! Operators come in three roles, named in the certificate (so a role cannot be changed
//! without the CA, and the coordinator needs no table of people): `operator` may do everything,
//! `viewer` only reads, `deployer` creates and steers rollouts of the services its certificate
//! lists in a second URI SAN (`urn:rollgate:services:web,api`). Which RPC needs what is decided
//! in the coordinator's `roles` module.
//!
//! The coordinator takes a peer's identity only from the certificate it presented in the TLS
//! handshake (verified against the fleet CA), never from a message field. A fleet with its own
//! PKI issues certificates of this shape; `rollgate certs` makes them for fleets without one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::names;

/// URI scheme of rollgate identities (SPIFFE-shaped, so fleets with a SPIFFE PKI can use theirs).
pub const SCHEME: &str = "spiffe://";
/// Prefix of the URI SAN that lists a deployer's services, comma-separated.
pub const SERVICES_URN: &str = "urn:rollgate:services:";

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A coordinator replica: serves agents and operators, and fetches artifacts from peers.
    Coordinator,
    /// An agent, for exactly one host id.
    Host,
    /// A person or tool driving rollouts through the control API: everything, including
    /// fencing and forgetting hosts.
    Operator,
    /// An operator who only reads (rollouts, hosts, history, plans).
    Viewer,
    /// An operator who may create and steer rollouts of the services its certificate lists,
    /// and push artifacts; reads like a viewer.
    Deployer,
}

impl Role {
    /// The path segment of the URI SAN.
    pub fn word(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Host => "host",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
        }
    }

    /// Whether this is one of the operator roles (may use the control API at all).
    pub fn is_operator(self) -> bool {
        matches!(self, Role::Operator | Role::Viewer | Role::Deployer)
    }

    fn from_word(s: &str) -> Option<Role> {
        match s {
            "coordinator" => Some(Role::Coordinator),
            "host" => Some(Role::Host),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            "deployer" => Some(Role::Deployer),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Who is on the other end of a connection, read from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The fleet (SPIFFE trust domain).
    pub fleet: String,
    /// Its role.
    pub role: Role,
    /// Host id, replica id or operator name.
    pub name: String,
    /// A deployer's services (from its `urn:rollgate:services:` URI SAN); empty otherwise.
    pub services: Vec<String>,
}

impl Identity {
    /// A new identity; checks the fleet and name.
    pub fn new(fleet: &str, role: Role, name: &str) -> Result<Self, IdentityError> {
        check_fleet(fleet)?;
        names::check("name", name).map_err(|e| IdentityError::BadName {
            name: name.to_string(),
            why: e.to_string(),
        })?;
        Ok(Identity {
            fleet: fleet.to_string(),
            role,
            name: name.to_string(),
            services: Vec::new(),
        })
    }

    /// `spiffe://FLEET/ROLE/NAME`.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.fleet, self.role.word(), self.name)
    }

    /// Parses `spiffe://FLEET/ROLE/NAME`.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = |why: &str| IdentityError::BadUri {
            uri: uri.to_string(),
            why: why.to_string(),
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with spiffe://"))?;
        let mut parts = rest.split('/');
        let (Some(fleet), Some(role), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected spiffe://FLEET/ROLE/NAME"));
        };
        let role = Role::from_word(role).ok_or_else(|| {
            bad("the role must be coordinator, host, operator, viewer or deployer")
        })?;
        Identity::new(fleet, role, name)
    }

    /// The identity in a DER certificate: its one `spiffe://` URI SAN.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
        let mut found = Vec::new();
        let mut services = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(u) = name {
                    if u.starts_with(SCHEME) {
                        found.push(u.to_string());
                    } else if let Some(list) = u.strip_prefix(SERVICES_URN) {
                        services.extend(list.split(',').map(str::to_string));
                    }
                }
            }
        }
        let mut id = match found.as_slice() {
            [one] => Identity::parse_uri(one)?,
            [] => return Err(IdentityError::NoIdentity),
            _ => return Err(IdentityError::Ambiguous(found)),
        };
        if id.role == Role::Deployer {
            for s in &services {
                names::check("service", s).map_err(|e| IdentityError::BadName {
                    name: s.clone(),
                    why: e.to_string(),
                })?;
            }
            id.services = services;
        }
        Ok(id)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// Why a certificate names no usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No `spiffe://` URI SAN.
    #[error("the certificate has no spiffe:// URI SAN naming its holder; issue it with `rollgate certs issue`, or add the URI SAN (see the README, section Certificates)")]
    NoIdentity,
    /// More than one.
    #[error("the certificate names several identities ({0:?}); a rollgate certificate names exactly one")]
    Ambiguous(Vec<String>),
    /// Malformed URI.
    #[error("the certificate's identity {uri:?} is malformed: {why}")]
    BadUri {
        /// The URI.
        uri: String,
        /// What is wrong.
        why: String,
    },
    /// Name fails validation.
    #[error("the identity name {name:?} is not valid: {why}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// Fleet fails validation.
    #[error("the fleet name {0:?} is not valid: use lowercase letters, digits, '-' and '.', at most 63 characters")]
    BadFleet(String),
    /// Not X.509.
    #[error("cannot read the certificate: {0}")]
    Unreadable(String),
}

/// Checks a fleet name (the SPIFFE trust domain): lowercase letters, digits, `-`, `.`.
pub fn check_fleet(fleet: &str) -> Result<(), IdentityError> {
    let ok = !fleet.is_empty()
        && fleet.len() <= 63
        && fleet
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !fleet.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadFleet(fleet.to_string()))
    }
}

/// The `[tls]` section of the coordinator's and the agent's config, and the CLI's options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA certificate(s), PEM: peers must present a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This part's certificate chain, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// This part's private key, PEM (PKCS#8, SEC1 or PKCS#1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Development only: no TLS at all, no identities, every peer may do everything.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

/// The three files, loaded.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificates, DER.
    pub ca: Vec<CertificateDer<'static>>,
    /// CA certificates, PEM as read.
    pub ca_pem: Vec<u8>,
    /// Own chain, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// Own chain, PEM as read.
    pub cert_pem: Vec<u8>,
    /// Own key, PEM as read.
    pub key_pem: Vec<u8>,
    /// The identity named by our own certificate.
    pub identity: Identity,
}

impl TlsFiles {
    /// Own private key, DER.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::File {
            what: "private key",
            path: PathBuf::new(),
            why: e.to_string(),
        })
    }
}

/// A problem with the TLS settings or files, written for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Neither TLS files nor the insecure switch.
    #[error("no TLS settings: set `ca`, `cert` and `key` in [tls] ({hint}), or, on a development machine only, `insecure_plaintext = true`")]
    Missing {
        /// Where/how to get them.
        hint: String,
    },
    /// One of the three is missing.
    #[error("[tls] needs all of `ca`, `cert` and `key`; `{0}` is missing")]
    Incomplete(&'static str),
    /// Cannot read or parse a file.
    #[error("cannot use the {what} {path}: {why}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// Own certificate has no usable identity.
    #[error("our own certificate {path} is unusable: {source}")]
    OwnIdentity {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: IdentityError,
    },
    /// Own certificate is for another role.
    #[error("the certificate {path} is for {found}, but it is used for a{n} {expected}; issue one with `rollgate certs issue {expected_word} NAME`", n = if matches!(expected, Role::Operator) { "n" } else { "" })]
    WrongRole {
        /// Its path.
        path: PathBuf,
        /// What it says.
        found: Identity,
        /// The role this process has.
        expected: Role,
        /// Same, as the command word.
        expected_word: &'static str,
    },
}

impl TlsConfig {
    /// Whether plaintext was asked for.
    pub fn insecure(&self) -> bool {
        self.insecure_plaintext
    }

    /// Loads the files; `Ok(None)` in insecure mode. `role` is what this process is (its own
    /// certificate must say so).
    pub fn load(&self, role: Role, hint: &str) -> Result<Option<TlsFiles>, TlsError> {
        if self.insecure_plaintext {
            return Ok(None);
        }
        let (ca, cert, key) = match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => {
                return Err(TlsError::Missing {
                    hint: hint.to_string(),
                })
            }
            (None, _, _) => return Err(TlsError::Incomplete("ca")),
            (_, None, _) => return Err(TlsError::Incomplete("cert")),
            (_, _, None) => return Err(TlsError::Incomplete("key")),
            (Some(a), Some(b), Some(c)) => (a, b, c),
        };
        let ca_pem = read(ca, "CA certificate")?;
        let ca_der = certs(&ca_pem, ca, "CA certificate")?;
        let cert_pem = read(cert, "certificate")?;
        let chain = certs(&cert_pem, cert, "certificate")?;
        let key_pem = read(key, "private key")?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
            what: "private key",
            path: key.clone(),
            why: format!("{e}; expected a PEM private key (PKCS#8, SEC1 or PKCS#1)"),
        })?;
        let identity =
            Identity::from_cert_der(&chain[0]).map_err(|source| TlsError::OwnIdentity {
                path: cert.clone(),
                source,
            })?;
        let fits = identity.role == role || (role == Role::Operator && identity.role.is_operator());
        if !fits {
            return Err(TlsError::WrongRole {
                path: cert.clone(),
                found: identity,
                expected: role,
                expected_word: role.word(),
            });
        }
        Ok(Some(TlsFiles {
            ca: ca_der,
            ca_pem,
            chain,
            cert_pem,
            key_pem,
            identity,
        }))
    }

    /// The files this config names (for change detection).
    pub fn paths(&self) -> Vec<&Path> {
        [&self.ca, &self.cert, &self.key]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

fn certs(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    if v.is_empty() {
        return Err(TlsError::File {
            what,
            path: path.to_path_buf(),
            why: "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(v)
}

/// Longest TLS handshake a client waits for. A peer that accepts TCP but never answers (a
/// SIGSTOPped or wedged coordinator: the kernel still accepts connections for it) must not
/// hold a client forever; the agent then moves on to the next replica.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// tonic client settings for dialing a coordinator with `files`: trust only the fleet CA,
/// present our own certificate, give up on a handshake after [`HANDSHAKE_TIMEOUT`]. This checks
/// only the CA chain and the DNS name; [`dial`] also checks the server's rollgate identity and
/// is what every rollgate client uses.
pub fn client_config(files: &TlsFiles) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .timeout(HANDSHAKE_TIMEOUT)
        .ca_certificate(tonic::transport::Certificate::from_pem(&files.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &files.cert_pem,
            &files.key_pem,
        ))
}

/// Why a server certificate is not a coordinator of our fleet (the chain itself was fine).
#[derive(Debug, thiserror::Error)]
#[error("the server at {server} presented {got}, not a coordinator of fleet {fleet:?} (spiffe://{fleet}/coordinator/REPLICA): it is not a rollgate coordinator of this fleet. Check the URL, or issue the server a certificate with `rollgate certs issue coordinator REPLICA_ID`")]
pub struct NotOurCoordinator {
    /// The name we dialed.
    pub server: String,
    /// What its certificate says (its identity URI, or why it has none).
    pub got: String,
    /// Our fleet.
    pub fleet: String,
}

/// rustls's WebPKI check (chain to the fleet CA, validity, serverAuth, DNS/IP name) and then
/// the identity: `spiffe://FLEET/coordinator/*` of our own fleet (S7: a host or operator
/// certificate from the same CA must not be able to play coordinator).
#[derive(Debug)]
struct CoordinatorVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    fleet: String,
}

impl rustls::client::danger::ServerCertVerifier for CoordinatorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let got = match Identity::from_cert_der(end_entity) {
            Ok(id) if id.role == Role::Coordinator && id.fleet == self.fleet => return Ok(ok),
            Ok(id) => id.uri(),
            Err(e) => format!("no rollgate identity ({e})"),
        };
        let e = NotOurCoordinator {
            server: server_name.to_str().into_owned(),
            got,
            fleet: self.fleet.clone(),
        };
        // `General` keeps our text (rustls shows `Other` errors by their Debug form).
        Err(rustls::Error::General(e.to_string()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client config for dialing a coordinator of our fleet with `files`.
pub fn coordinator_client(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let bad = |why: String| TlsError::File {
        what: "CA certificate",
        path: PathBuf::new(),
        why,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in &files.ca {
        roots.add(ca.clone()).map_err(|e| bad(e.to_string()))?;
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(e.to_string()))?;
    let verifier = Arc::new(CoordinatorVerifier {
        inner,
        fleet: files.identity.fleet.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(files.chain.clone(), files.key()?)
        .map_err(|e| TlsError::File {
            what: "private key",
            path: PathBuf::new(),
            why: format!("it does not belong to the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects `endpoint` (an `https://` URL, with the caller's timeouts) to a coordinator over
/// mTLS with `files`, accepting only a server whose certificate names a coordinator of our
/// fleet ([`NotOurCoordinator`] otherwise). The TLS is ours (tonic's own cannot check the
/// identity), so tonic is handed the URL as plain `http://` over the finished TLS stream.
pub async fn dial(
    url: &str,
    endpoint: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    files: &TlsFiles,
) -> Result<tonic::transport::Channel, DialFailure> {
    dial_from(url, endpoint, files, None).await
}

/// [`dial`] from the local address `local` (any port), when it is set: the swarm benchmark
/// gives each simulated host its own loopback address, as each real host has its own.
pub async fn dial_from(
    url: &str,
    endpoint: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    files: &TlsFiles,
    local: Option<std::net::IpAddr>,
) -> Result<tonic::transport::Channel, DialFailure> {
    let plain = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    };
    let ep = endpoint(tonic::transport::Endpoint::from_shared(plain)?);
    let config = coordinator_client(files)?;
    let connector = CoordinatorConnector {
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        local,
    };
    Ok(ep.connect_with_connector(connector).await?)
}

/// Why [`dial`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    /// Our own TLS files cannot make a client config.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The URL, the connection or the handshake (the source chain says which).
    #[error(transparent)]
    Connect(#[from] tonic::transport::Error),
}

/// tonic connector: TCP, then our TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]).
#[derive(Clone)]
struct CoordinatorConnector {
    tls: tokio_rustls::TlsConnector,
    /// The local address to connect from (the system picks when `None`).
    local: Option<std::net::IpAddr>,
}

type Dialed = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type DialError = Box<dyn std::error::Error + Send + Sync>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for CoordinatorConnector {
    type Response = Dialed;
    type Error = DialError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Dialed, DialError>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), DialError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let (tls, local) = (self.tls.clone(), self.local);
        Box::pin(async move {
            let host = uri.host().ok_or("the coordinator URL has no host")?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host:?} is not a DNS name or IP address: {e}"))?;
            let tcp = match local {
                None => tokio::net::TcpStream::connect((host.as_str(), port)).await?,
                Some(ip) => connect_from(ip, &host, port).await?,
            };
            let _ = tcp.set_nodelay(true);
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| {
                    format!(
                        "no TLS handshake within {:?} (the server accepts TCP but does not answer)",
                        HANDSHAKE_TIMEOUT
                    )
                })??;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// TCP to `host:port` from the local address `ip`.
async fn connect_from(
    ip: std::net::IpAddr,
    host: &str,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let to = tokio::net::lookup_host((host, port))
        .await?
        .find(|a| a.is_ipv4() == ip.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address like {ip}")))?;
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(ip, 0))?;
    socket.connect(to).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_say_why() {
        let id = Identity::new("prod", Role::Host, "web-1").expect("valid");
        assert_eq!(id.uri(), "spiffe://prod/host/web-1");
        assert_eq!(Identity::parse_uri(&id.uri()).expect("parses"), id);
        for (uri, why) in [
            ("https://prod/host/a", "spiffe://"),
            ("spiffe://prod/host", "FLEET/ROLE/NAME"),
            ("spiffe://prod/host/a/b", "FLEET/ROLE/NAME"),
            ("spiffe://prod/admin/a", "coordinator, host, operator"),
            ("spiffe://Prod/host/a", "fleet name"),
            ("spiffe://prod/host/.hidden", "not valid"),
        ] {
            let e = Identity::parse_uri(uri).expect_err(uri).to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
    }

    #[test]
    fn missing_settings_name_the_fix() {
        let e = TlsConfig::default()
            .load(Role::Host, "rollgate certs issue agent HOST")
            .expect_err("nothing set");
        assert!(e.to_string().contains("insecure_plaintext"), "{e}");
        let e = TlsConfig {
            ca: Some("/x".into()),
            ..Default::default()
        }
        .load(Role::Host, "")
        .expect_err("incomplete");
        assert!(e.to_string().contains("`cert` is missing"), "{e}");
        let insecure = TlsConfig {
            insecure_plaintext: true,
            ..Default::default()
        };
        assert!(insecure.load(Role::Host, "").expect("ok").is_none());
    }
}
