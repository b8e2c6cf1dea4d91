//! Webhooks (issue 13, item 3): a test-owned HTTP receiver gets the events it asked for with a
//! valid HMAC-SHA256 signature; while it answers 503 the leader retries; the leader is killed
//! mid-retry and the next one delivers; each event id is taken exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context};
use rollgate_tests::pb::Phase;
use rollgate_tests::webhook::Receiver;
use rollgate_tests::{Fleet, FleetOpts};

const SECRET: &str = "a shared secret for the test";

#[test]
fn halted_reaches_the_webhook_once_across_an_outage_and_a_leader_kill() -> anyhow::Result<()> {
    let receiver = Receiver::start(SECRET)?;
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
/// Starts a coordinator on the config `text` and expects it to refuse to start, saying `want`.
fn refused_at_start(dir: &std::path::Path, text: &str, want: &str) -> anyhow::Result<()> {
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, text)?;
    let out = std::process::Command::new(rollgate_tests::bin("rollgate-coordinator"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .context("cannot run rollgate-coordinator")?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{}", err.trim());
    if out.status.success() || !err.contains(want) {
        bail!(
            "expected a refusal saying {want:?}, got {}: {err}",
            out.status
        );
    }
    Ok(())
}

#[test]
fn a_wrong_kind_or_a_missing_secret_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let head = "[tls]\ninsecure_plaintext = true\n[[notify]]\nname = \"chat\"\nurl = \"http://127.0.0.1:1/\"\n";
    refused_at_start(
        dir.path(),
        &format!("{head}events = [\"rollout_halt\"]\n"),
        "unknown event kind \"rollout_halt\"",
    )?;
    // A secret_file that is not there: refused at start, naming the file and the fix.
    refused_at_start(
        dir.path(),
        &format!("{head}secret_file = \"/nonexistent/chat.secret\"\n"),
        "cannot read secret_file /nonexistent/chat.secret",
    )
}
