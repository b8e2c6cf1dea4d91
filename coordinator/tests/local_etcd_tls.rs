//! The local etcd over raw HTTP(S), in-process: both its client port and its peer port (whose
//! HTTP side serves `/members` and raft, and whose gRPC side etcd's whole API) answer only TLS
//! clients presenting a certificate from the local CA. Plain http, TLS without a certificate and
//! TLS with another CA's certificate get no answer. Needs the `etcd` binary (`ETCD_BIN`).
//!
//! Each negative would get a `200 OK` from an etcd without `--client-cert-auth` /
//! `--peer-client-cert-auth` (or on plain http, as the local etcd was before), as the positive
//! checks on the same paths show.

mod common;
use common::free_port_pair;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rollgate_coordinator::config::EtcdConfig;
use rollgate_coordinator::local_etcd::pki::LocalPki;
use rollgate_coordinator::local_etcd::LocalEtcd;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A client trusting `ca`, presenting `identity` (cert, key) if given.
fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).expect("cert")],
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// `GET path` on 127.0.0.1:`port`, over TLS when `tls` is given: the response, or what failed.
async fn get(port: u16, path: &str, tls: Option<&TlsConnector>) -> Result<String, String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let exchange = async {
        let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match tls {
            Some(tls) => {
                let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
                let mut s = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                s.write_all(request.as_bytes())
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                response(&mut s).await
            }
            None => {
                tcp.write_all(request.as_bytes())
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                response(&mut tcp).await
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Reads one HTTP response: up to its `Content-Length`, or to the end (the peer port keeps
/// even an HTTP/1.0 connection open).
async fn response(s: &mut (impl AsyncReadExt + Unpin)) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end].lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            });
            if length.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn answered(r: &Result<String, String>) -> bool {
    r.as_ref().is_ok_and(|t| t.starts_with("HTTP/1.0 200"))
}

#[tokio::test]
async fn both_ports_answer_only_the_local_ca() {
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port_pair();
    let cfg = EtcdConfig {
        binary: std::env::var_os("ETCD_BIN")
            .map(Into::into)
            .unwrap_or_else(|| "etcd".into()),
        local_port: port,
        ..EtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let etcd = LocalEtcd::start(&cfg, state.path(), cancel.clone())
        .await
        .expect("local etcd starts (is etcd-server installed?)");
    assert_eq!(etcd.endpoint, format!("https://127.0.0.1:{port}"));
    let pki = &etcd.pki;
    // A client certificate of another CA (as a fleet certificate would be), for a server this
    // client does trust: only etcd's refusal can stop it.
    let other = tempfile::tempdir().expect("tempdir");
    let foreign = LocalPki::ensure(other.path()).expect("another CA");

    for (port, path, expect) in [
        (port, "/health", "\"health\":\"true\""),
        (port + 1, "/members", "peerURLs"),
    ] {
        let own = client(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
        let no_cert = client(&pki.ca, None);
        let foreign_cert = client(&pki.ca, Some((&foreign.client_cert, &foreign.client_key)));
        let ok = get(port, path, Some(&own)).await;
        assert!(
            answered(&ok),
            "{port}{path} with the coordinator's certificate: {ok:?}"
        );
        assert!(ok.as_ref().is_ok_and(|t| t.contains(expect)), "{ok:?}");

        for (what, r) in [
            ("plain http", get(port, path, None).await),
            (
                "TLS without a certificate",
                get(port, path, Some(&no_cert)).await,
            ),
            (
                "TLS with another CA's certificate",
                get(port, path, Some(&foreign_cert)).await,
            ),
        ] {
            assert!(!answered(&r), "{port}{path} answered {what}: {r:?}");
            println!("{port}{path} {what}: {r:?}");
        }
    }
    // The peer URL etcd records for itself is https too.
    let own = client(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let members = get(port + 1, "/members", Some(&own))
        .await
        .expect("members");
    assert!(
        members.contains(&format!("https://127.0.0.1:{}", port + 1)),
        "{members}"
    );

    cancel.cancel();
    etcd.stopped().await;
}
