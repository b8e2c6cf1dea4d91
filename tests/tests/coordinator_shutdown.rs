//! A replica stops in order (issue 11, item 6). On SIGTERM it stops taking work, cancels its
//! agent sessions and watches, and waits for each to end — a session finishes the etcd write it
//! is in, clears its session key and records when the host was last seen — before it revokes
//! its lease and exits. Nothing is cut mid-transaction, and the shutdown stays within its grace
//! period. Fault: etcd is frozen (SIGSTOP) for 1 s across the SIGTERM, so every session's
//! closing write is slow; a replica that exits without waiting for its sessions loses them.

use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use rollgate_tests::{Fleet, FleetOpts, Mode};

const AGENTS: usize = 3;
/// How long etcd is frozen across the SIGTERM: under the 5 s shutdown grace, and under what is
/// left of the replica's 2 s lease (kept alive every 2/3 s), so its sessions stay valid.
const ETCD_FROZEN: Duration = Duration::from_millis(1000);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[test]
fn sigterm_waits_for_every_session_and_watch() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: AGENTS,
        // Its restart would open new sessions and muddle what the old ones wrote.
        supervise: false,
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(AGENTS)?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    // A rollout held at a manual gate, so a watch stays open.
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\ncanary = 1\ncanary_gate = \"manual\"\nmin_healthy_time = \"200ms\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    fleet.wait("the canary gate", Duration::from_secs(30), || {
        Ok((!fleet.status(&id)?.gate.is_empty()).then_some(()))
    })?;

    // `rollout status --watch`: a WatchRollout stream open on the replica.
    let (mut watch, rx) = fleet.cli_background(0, &["rollout", "status", &id, "--watch"])?;
    rx.recv_timeout(Duration::from_secs(10))
        .context("the watch printed nothing in 10 s")?;

    let sigterm_at_ms = now_ms();
    fleet.etcd.proc.signal(Signal::SIGSTOP);
    fleet.coordinator().signal(Signal::SIGTERM);
    std::thread::sleep(ETCD_FROZEN);
    fleet.etcd.proc.signal(Signal::SIGCONT);
    fleet.wait("the replica to stop", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(fleet.coordinator().log())?;
        Ok(log.contains("shutdown complete").then_some(()))
    })?;
    let _ = watch.kill();
    let _ = watch.wait();

    // Each session's closing write landed: the host record says when the host was last seen,
    // after the SIGTERM.
    let records = fleet.etcd_get_prefix(&format!("{}hosts/", rollgate_tests::ETCD_PREFIX))?;
    let mut unclosed = Vec::new();
    for (key, value) in &records {
        let record: serde_json::Value = serde_json::from_str(value)?;
        let seen = record["last_seen_ms"].as_i64().unwrap_or_default();
        println!(
            "{key}: last seen {} ms after the SIGTERM",
            seen - sigterm_at_ms
        );
        if seen < sigterm_at_ms {
            unclosed.push(key.clone());
        }
    }
    if records.len() != AGENTS || !unclosed.is_empty() {
        bail!(
            "sessions cut at shutdown (no closing write): {unclosed:?} of {} host records\n{}",
            records.len(),
            fleet.coordinator().tail(30)
        );
    }

    let log = std::fs::read_to_string(fleet.coordinator().log())?;
    let from = log
        .find("shutting down: waiting for")
        .context("no 'waiting for the sessions' line")?;
    let to = log
        .find("shutdown complete")
        .context("no 'complete' line")?;
    let stopping = &log[from..to];
    let first = stopping.lines().next().unwrap_or_default();
    println!("{first}");
    let open: usize = first
        .split("open=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no open= count")?;
    let ended = stopping.matches("agent session ended").count();
    println!(
        "tracked at shutdown: {open}; agent sessions that ended before 'complete': {ended}/{AGENTS}"
    );
    if open < AGENTS + 1 {
        bail!("{open} tasks tracked at shutdown; expected the {AGENTS} sessions and the watch");
    }
    if ended != AGENTS {
        bail!("only {ended} of {AGENTS} sessions ended before the replica said it was done:\n{stopping}");
    }
    if log.contains("exiting anyway") {
        bail!(
            "the shutdown ran out of its grace period:\n{}",
            fleet.coordinator().tail(40)
        );
    }
    Ok(())
}
