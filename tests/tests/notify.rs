//! Webhooks (issue 13, item 3): a test-owned HTTP receiver gets the events it asked for with a
//! valid HMAC-SHA256 signature; while it answers 503 the leader retries; the leader is killed
//! mid-retry and the next one delivers; each event id is taken exactly once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts};
use serde_json::Value;

const SECRET: &str = "a shared secret for the test";

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Delivery {
    event_id: u64,
    kind: String,
    signature_ok: bool,
    taken: bool,
}

/// An HTTP receiver on 127.0.0.1 that answers 200 while `up`, 503 otherwise.
struct Receiver {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (u, s) = (up.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let _ = serve(conn, &u, &s);
            }
        });
        Ok(Receiver { addr, up, seen })
    }

    fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn serve(mut conn: TcpStream, up: &AtomicBool, seen: &Mutex<Vec<Delivery>>) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    reader.read_line(&mut line)?; // request line
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let json: Value = serde_json::from_slice(&body)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let want = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, &body).as_ref())
    );
    let taken = up.load(Ordering::SeqCst);
    let d = Delivery {
        event_id: json["id"].as_u64().unwrap_or_default(),
        kind: json["kind"].as_str().unwrap_or_default().to_string(),
        signature_ok: headers.get("x-rollgate-signature") == Some(&want)
            && headers.get("x-rollgate-event-id").map(String::as_str)
                == Some(&json["id"].to_string()),
        taken,
    };
    if let Ok(mut s) = seen.lock() {
        s.push(d);
    }
    let status = if taken {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    Ok(())
}

#[test]
fn halted_reaches_the_webhook_once_across_an_outage_and_a_leader_kill() -> anyhow::Result<()> {
    let receiver = Receiver::start()?;
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("notify.secret");
    std::fs::write(&secret, format!("{SECRET}\n"))?;
    let extra = format!(
        "[[notify]]\nname = \"test\"\nurl = \"http://{}/hook\"\nevents = [\"rollout_halted\", \
         \"rollout_succeeded\"]\nsecret_file = \"{}\"\ntimeout = \"2s\"\n",
        receiver.addr,
        secret.display()
    );
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        coordinators: 2,
        coordinator_extra: Some(extra),
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(3)?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    fleet.wait(
        "the install's success at the webhook",
        Duration::from_secs(20),
        || {
            Ok(receiver
                .seen()
                .iter()
                .any(|d| d.kind == "rollout_succeeded" && d.taken)
                .then_some(()))
        },
    )?;

    receiver.up.store(false, Ordering::SeqCst);
    let v2 = fleet.release_failing_on("2.0.0", &["host-1", "host-2", "host-3"])?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmin_healthy_time = \"200ms\"\nhealthy_deadline = \"2s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    assert_eq!(
        fleet.wait_settled(&id, Duration::from_secs(60))?.phase(),
        Phase::Failed
    );
    let refused = |r: &Receiver| {
        r.seen()
            .iter()
            .filter(|d| d.kind == "rollout_halted" && !d.taken)
            .count()
    };
    fleet.wait(
        "two refused deliveries of the halt",
        Duration::from_secs(20),
        || Ok((refused(&receiver) >= 2).then_some(())),
    )?;
    let leader = fleet.wait_leader(Duration::from_secs(10))?;
    fleet.coordinators[leader].kill9();
    let next = fleet.wait_leader_change(leader, Duration::from_secs(15))?;
    let before = refused(&receiver);
    fleet.wait("the new leader to retry", Duration::from_secs(20), || {
        Ok((refused(&receiver) > before).then_some(()))
    })?;
    receiver.up.store(true, Ordering::SeqCst);
    fleet.wait("the halt taken", Duration::from_secs(40), || {
        Ok(receiver
            .seen()
            .iter()
            .any(|d| d.kind == "rollout_halted" && d.taken)
            .then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(2)); // room for a duplicate to show up

    let seen = receiver.seen();
    let mut taken: BTreeMap<u64, usize> = BTreeMap::new();
    for d in seen.iter().filter(|d| d.taken) {
        *taken.entry(d.event_id).or_default() += 1;
    }
    println!(
        "leader coord-{} killed mid-retry, coord-{} delivered; {} requests, {} refused while down, taken per id: {taken:?}",
        leader + 1,
        next + 1,
        seen.len(),
        seen.iter().filter(|d| !d.taken).count()
    );
    if let Some(bad) = seen.iter().find(|d| !d.signature_ok) {
        bail!("a delivery without a valid signature: {bad:?}");
    }
    if taken.values().any(|n| *n != 1) {
        bail!("an event was taken more than once: {taken:?}");
    }
    if seen
        .iter()
        .any(|d| !["rollout_halted", "rollout_succeeded"].contains(&d.kind.as_str()))
    {
        bail!("a kind the webhook did not ask for was sent: {seen:?}");
    }
    Ok(())
}

/// A typo in a `[[notify]]` table or a missing secret file stops the coordinator at start with
/// the reason.
#[test]
fn a_wrong_kind_or_a_missing_secret_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[tls]\ninsecure_plaintext = true\n[[notify]]\nname = \"chat\"\nurl = \"http://127.0.0.1:1/\"\nevents = [\"rollout_halt\"]\n",
    )?;
    let out = std::process::Command::new(rollgate_tests::bin("rollgate-coordinator"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .context("cannot run rollgate-coordinator")?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{}", err.trim());
    if out.status.success() || !err.contains("unknown event kind \"rollout_halt\"") {
        bail!(
            "expected a refusal naming the kind, got {}: {err}",
            out.status
        );
    }
    // A secret_file that is not there: refused at start, naming the file and the fix.
    std::fs::write(
        &cfg,
        "[tls]\ninsecure_plaintext = true\n[[notify]]\nname = \"chat\"\nurl = \"http://127.0.0.1:1/\"\nsecret_file = \"/nonexistent/chat.secret\"\n",
    )?;
    let out = std::process::Command::new(rollgate_tests::bin("rollgate-coordinator"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .context("cannot run rollgate-coordinator")?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{}", err.trim());
    if out.status.success() || !err.contains("cannot read secret_file /nonexistent/chat.secret") {
        bail!(
            "expected a refusal naming the secret file, got {}: {err}",
            out.status
        );
    }
    Ok(())
}
