//! Issue 14 item 4.5, an `https://` release source: a test-owned HTTPS server on loopback with
//! a certificate from a test CA (not a public root). The agents allow the URL prefix
//! (`allowed_sources`) and trust that CA (`source_ca_file`): the rollout succeeds, every host
//! on 2.0.0. Then a server presents a certificate from another CA (of the same name, so
//! rustls says BadSignature rather than UnknownIssuer): every host refuses the release with a
//! message naming the URL and rustls' reason, nothing is swapped, and the server never sees a
//! request. Before, the agent could not trust a private CA for sources at all, and a TLS
//! refusal read only "cannot connect" (and was retried). (`hostile_release_sources.rs` covers http
//! sources, redirects and prefixes that are not allowed.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::scrape_tls::{CertFiles, ScrapePki};
use rollgate_tests::{brief, Fleet, FleetOpts, Mode, Release};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

const STRATEGY: &str = "max_unavailable = 2\nmin_healthy_time = \"200ms\"";

/// Serves `body` for every GET over TLS with `cert`; returns the port and a count of the
/// requests that got through the handshake.
fn serve_https(cert: &CertFiles, body: Vec<u8>) -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let chain = CertificateDer::pem_file_iter(&cert.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&cert.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let (config, body, seen) = (config.clone(), body.clone(), seen.clone());
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::Relaxed);
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(&body);
                let _ = tls.write_all(&answer);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    Ok((port, requests))
}

/// Starts a rollout of `release` fetched from `url`; returns how it ended.
fn roll_from(
    fleet: &Fleet,
    release: &Release,
    url: &str,
) -> anyhow::Result<rollgate_tests::pb::RolloutStatus> {
    let bytes = std::fs::read(&release.path)?;
    let text = format!(
        "service = \"web\"\n[release]\nversion = \"{}\"\nsource = \"{url}\"\nsha256 = \"{}\"\n\
         size = {}\n[strategy]\n{STRATEGY}\n",
        release.version,
        hex::encode(Sha256::digest(&bytes)),
        bytes.len()
    );
    let path = fleet
        .dir
        .join(format!("rollout-https-{}.toml", release.version));
    std::fs::write(&path, text)?;
    let id = fleet.start_rollout(&path)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    println!("{url}: {}", brief(&s));
    for h in &s.hosts {
        println!("  {}: {}", h.host_id, h.reason);
    }
    Ok(s)
}

/// Adds top-level `lines` to every agent's config and restarts the agents.
fn reconfigure_agents(fleet: &mut Fleet, lines: &str) -> anyhow::Result<()> {
    let ids: Vec<String> = fleet.agents.iter().map(|a| a.id.clone()).collect();
    for id in &ids {
        let cfg = fleet.dir.join(id).join("agent.toml");
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, format!("{lines}\n{text}"))?;
        fleet.agent(id).proc.restart()?;
    }
    fleet.wait_connected(ids.len())
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[test]
fn an_https_source_with_a_private_ca_installs_and_a_wrong_ca_is_refused() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", STRATEGY)?;
    let pki = ScrapePki::new(&fleet.dir.join("artifacts-pki"))?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let (good, _) = serve_https(&pki.server, std::fs::read(&v2.path)?)?;
    // A server certificate for 127.0.0.1 from another CA, which the agents do not trust.
    let other = ScrapePki::new(&fleet.dir.join("other-pki"))?;
    let (bad, bad_requests) = serve_https(&other.server, std::fs::read(&v3.path)?)?;
    reconfigure_agents(
        &mut fleet,
        &format!(
            "allowed_sources = [\"store:\", \"https://127.0.0.1:{good}/rel/\", \
             \"https://127.0.0.1:{bad}/rel/\"]\nsource_ca_file = {}",
            toml_path(&pki.ca)
        ),
    )?;

    let s = roll_from(
        &fleet,
        &v2,
        &format!("https://127.0.0.1:{good}/rel/web-2.0.0"),
    )?;
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    fleet.wait_all_serving("2.0.0")?;

    let url = format!("https://127.0.0.1:{bad}/rel/web-3.0.0");
    let s = roll_from(&fleet, &v3, &url)?;
    assert_eq!(s.phase(), Phase::Failed, "{}", brief(&s));
    let failed = s.hosts.iter().filter(|h| !h.reason.is_empty()).count();
    assert!(failed >= 1, "no host says why: {}", brief(&s));
    for h in s.hosts.iter().filter(|h| !h.reason.is_empty()) {
        for word in [
            url.as_str(),
            "TLS refused",
            "invalid peer certificate",
            "source_ca_file",
        ] {
            assert!(
                h.reason.contains(word),
                "{}'s refusal does not say {word:?}: {:?}",
                h.host_id,
                h.reason
            );
        }
    }
    assert_eq!(
        bad_requests.load(Ordering::Relaxed),
        0,
        "a request went through to the untrusted server"
    );
    fleet.wait_all_serving("2.0.0")?;
    Ok(())
}
