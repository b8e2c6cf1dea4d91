//! TLS for scraping `/metrics`: a throwaway CA with a server certificate for 127.0.0.1 and a
//! scraper's client certificate, a stranger's certificate from another CA, and a plain rustls
//! client that reports exactly why a server refused it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long the test client waits on the server.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// The files of a metrics endpoint served over https with client certificates.
#[derive(Debug, Clone)]
pub struct ScrapePki {
    /// The CA that signs the server's and the scraper's certificates (`client_ca`).
    pub ca: PathBuf,
    /// The server's certificate (names 127.0.0.1 and localhost).
    pub server: CertFiles,
    /// The scraper's client certificate, signed by `ca`.
    pub scraper: CertFiles,
    /// A client certificate signed by another CA.
    pub stranger: CertFiles,
}

impl ScrapePki {
    /// Makes the CAs and certificates in `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (ca_cert, ca_key) = ca("metrics CA")?;
        let (other_cert, other_key) = ca("another CA")?;
        let ca = dir.join("metrics-ca.pem");
        std::fs::write(&ca, ca_cert.pem())?;
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let server = leaf(dir, "server", Some(localhost), (&ca_cert, &ca_key))?;
        let scraper = leaf(dir, "prometheus", None, (&ca_cert, &ca_key))?;
        let stranger = leaf(dir, "stranger", None, (&other_cert, &other_key))?;
        Ok(ScrapePki {
            ca,
            server,
            scraper,
            stranger,
        })
    }

    /// The `[metrics]` lines that serve https with client certificates from `ca`.
    pub fn metrics_toml(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n",
            self.server.cert.display(),
            self.server.key.display(),
            self.ca.display()
        )
    }
}

pub(crate) fn ca(name: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok((params.self_signed(&key)?, key))
}

/// A certificate signed by `issuer`: a server's (for `ip` and localhost) or a client's.
/// Written to `dir/NAME.pem` and `dir/NAME.key`.
pub(crate) fn leaf(
    dir: &Path,
    name: &str,
    ip: Option<IpAddr>,
    issuer: (&rcgen::Certificate, &KeyPair),
) -> anyhow::Result<CertFiles> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    match ip {
        Some(ip) => {
            params.subject_alt_names = vec![
                SanType::IpAddress(ip),
                SanType::DnsName("localhost".try_into()?),
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        None => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    let cert = params.signed_by(&key, issuer.0, issuer.1)?;
    let files = CertFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

/// How an https GET ended.
#[derive(Debug)]
pub enum HttpsOutcome {
    /// The server answered: the status line and the body.
    Answered(String),
    /// TLS failed, with rustls' reason (an alert the server sent, ...).
    Tls(rustls::Error),
    /// The connection failed otherwise.
    Io(std::io::Error),
}

/// `GET path` over TLS to `addr` (trusting `ca`, presenting `client` if given), with a plain
/// rustls client, so a refusal comes back as the TLS alert the server sent.
pub fn https_get(
    addr: SocketAddr,
    path: &str,
    ca: &Path,
    client: Option<&CertFiles>,
) -> anyhow::Result<HttpsOutcome> {
    let config = Arc::new(client_config(ca, client)?);
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(config, name)?;
    let tcp = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
    tcp.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut page = String::new();
    let result = tls
        .write_all(request.as_bytes())
        .and_then(|()| tls.read_to_string(&mut page));
    Ok(match result {
        Ok(_) => HttpsOutcome::Answered(page),
        Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls_error) => HttpsOutcome::Tls(tls_error.clone()),
            None => HttpsOutcome::Io(e),
        },
    })
}

fn client_config(ca: &Path, client: Option<&CertFiles>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.cert)?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}", files.cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&files.key)?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}
