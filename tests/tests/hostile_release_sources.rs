//! Issue 10 item 8: a release's `source` is not covered by its signature, and every host
//! fetches it, so an operator (or whoever writes a spec) could make the whole fleet probe an
//! internal URL or read a local file. On real processes (etcd, a coordinator, two agents) and a
//! test-owned HTTP server on loopback that records every connection and request:
//!
//! - a rollout whose source is `https://127.0.0.1:PORT/...` (not in the agents'
//!   `allowed_sources`) is refused by every agent before any byte reaches the server;
//! - a rollout whose source is `file:///etc/passwd` (no `file_source_dirs`) is refused too;
//! - with `http://127.0.0.1:PORT/ok/` allowed, a release under it installs, and a source
//!   under it that answers with a redirect to `/internal/...` is refused naming the status,
//!   never followed (the old agent followed it and installed what it found there).
//!
//! Hosts stay on 1.0.0 through every refusal, and each refusal names the host in the rollout's
//! status and in the agent's log.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{Ending, Fleet, FleetOpts, Mode, Release};
use sha2::{Digest, Sha256};

const STRATEGY: &str = "max_unavailable = 2\nmin_healthy_time = \"200ms\"";
const SETTLE: Duration = Duration::from_secs(60);

/// What the test server saw: one entry per connection, the request path or "" if none came.
type Hits = Arc<Mutex<Vec<String>>>;

/// A plain HTTP/1.1 server on loopback: `routes` maps a path to a full response.
fn serve(routes: Vec<(String, Vec<u8>)>) -> anyhow::Result<(u16, Hits)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let hits: Hits = Arc::default();
    let seen = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut reader = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(path.clone());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let not_found =
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let answer = routes
                .iter()
                .find(|(p, _)| *p == path)
                .map_or(&not_found[..], |(_, r)| r.as_slice());
            let _ = conn.write_all(answer);
        }
    });
    Ok((port, hits))
}

fn ok_response(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn redirect_to(location: &str) -> Vec<u8> {
    format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// A spec for `release` fetched by every host from `source`.
fn spec_from(fleet: &Fleet, release: &Release, source: &str, name: &str) -> anyhow::Result<String> {
    let bytes = std::fs::read(&release.path)?;
    let text = format!(
        "service = \"web\"\n[release]\nversion = \"{}\"\nsource = \"{source}\"\nsha256 = \"{}\"\nsize = {}\n[strategy]\n{STRATEGY}\n",
        release.version,
        hex::encode(Sha256::digest(&bytes)),
        bytes.len()
    );
    let path = fleet.dir.join(format!("rollout-{name}.toml"));
    std::fs::write(&path, text)?;
    let id = fleet.start_rollout(&path)?;
    Ok(id)
}

/// Rolls out `release` from `source`; returns how it ended.
fn roll(fleet: &Fleet, release: &Release, source: &str, name: &str) -> anyhow::Result<Ending> {
    let id = spec_from(fleet, release, source, name)?;
    let s = fleet.wait_settled(&id, SETTLE)?;
    let reasons: Vec<String> = s
        .hosts
        .iter()
        .map(|h| format!("{}: {}", h.host_id, h.reason))
        .collect();
    fleet.wait_service_free("web")?;
    let r = Ending {
        phase: s.phase(),
        reasons: reasons.join(" | "),
    };
    println!("{name} ({source}): {r}");
    Ok(r)
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

fn agent_logs(fleet: &Fleet) -> anyhow::Result<String> {
    let mut all = String::new();
    for a in &fleet.agents {
        all.push_str(&std::fs::read_to_string(&a.proc.log)?);
    }
    Ok(all)
}

#[test]
fn release_sources_outside_the_allowed_prefixes_are_never_fetched() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", STRATEGY)?;
    fleet.wait_all_serving("1.0.0")?;

    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let (port, hits) = serve(vec![
        (
            "/ok/web-2.0.0".into(),
            ok_response(&std::fs::read(&v2.path)?),
        ),
        ("/ok/moved".into(), redirect_to("/internal/web-3.0.0")),
        (
            "/internal/web-3.0.0".into(),
            ok_response(&std::fs::read(&v3.path)?),
        ),
    ])?;
    let seen = || hits.lock().unwrap_or_else(|p| p.into_inner()).clone();

    // 1. Default rules (store: only): an https URL on loopback is refused by every host.
    let r = roll(
        &fleet,
        &v2,
        &format!("https://127.0.0.1:{port}/ok/web-2.0.0"),
        "https",
    )?;
    assert_eq!(seen(), Vec::<String>::new(), "the server was reached");
    assert_eq!(r.phase, Phase::Failed, "https: {r}");
    for h in ["host-1", "host-2"] {
        assert!(
            r.reasons.contains(&format!("host {h} refuses web 2.0.0")),
            "https: {r}"
        );
    }
    assert!(
        r.reasons.contains("its source (https) is not allowed here"),
        "https: {r}"
    );
    assert!(
        !r.reasons.contains("127.0.0.1"),
        "the refusal names the scheme, not the address: {r}"
    );
    fleet.wait_all_serving("1.0.0")?;

    // 2. A local file outside file_source_dirs (there are none).
    let r = roll(&fleet, &v2, "file:///etc/passwd", "file")?;
    assert_eq!(r.phase, Phase::Failed, "file: {r}");
    assert!(
        r.reasons.contains("its source (file) is not allowed here"),
        "file: {r}"
    );
    assert!(r.reasons.contains("file_source_dirs"), "file: {r}");
    fleet.wait_all_serving("1.0.0")?;
    let logs = agent_logs(&fleet)?;
    for h in ["host-1", "host-2"] {
        assert!(
            logs.contains(&format!("host {h} refuses web 2.0.0 (sha256")),
            "the agent log names the refusal of {h}"
        );
    }

    // 3. With the loopback prefix allowed, a release under it installs...
    let allowed = format!("allowed_sources = [\"store:\", \"http://127.0.0.1:{port}/ok/\"]");
    reconfigure_agents(&mut fleet, &allowed)?;
    let r = roll(
        &fleet,
        &v2,
        &format!("http://127.0.0.1:{port}/ok/web-2.0.0"),
        "allowed",
    )?;
    assert_eq!(r.phase, Phase::Succeeded, "allowed: {r}");
    fleet.wait_all_serving("2.0.0")?;
    println!("server saw after the allowed rollout: {:?}", seen());
    assert!(seen().iter().all(|p| p == "/ok/web-2.0.0"), "{:?}", seen());
    assert_eq!(seen().len(), 2, "one GET per host: {:?}", seen());

    // 4. ... but a redirect under it is refused, naming the status, and never followed.
    let r = roll(
        &fleet,
        &v3,
        &format!("http://127.0.0.1:{port}/ok/moved"),
        "redirect",
    )?;
    println!("server saw after the redirect: {:?}", seen());
    assert_eq!(r.phase, Phase::Failed, "redirect: {r}");
    assert!(
        r.reasons.contains("302 Found") && r.reasons.contains("does not follow"),
        "redirect: {r}"
    );
    assert!(
        !seen().iter().any(|p| p.starts_with("/internal/")),
        "the redirect was followed: {:?}",
        seen()
    );
    fleet.wait_all_serving("2.0.0")?;
    Ok(())
}
