//! The event log and audit trail (issue 13, item 2), on a real fleet: a rollout with a pause, a
//! resume, a promote and a bad release tells its story in order with the operator's identity;
//! `rollgate events --follow` across a leader kill -9 (and the restart of the replica it was
//! reading from) loses and repeats nothing; retention trims by count and by age.

use std::time::Duration;

use anyhow::{bail, Context};
use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts, Mode};
use serde_json::Value;

const OPERATOR: &str = "spiffe://test/operator/tester";

/// `rollgate -o json events ARGS`, parsed.
fn events(fleet: &Fleet, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut all = vec!["-o", "json", "events"];
    all.extend_from_slice(args);
    fleet
        .cli_ok(&all)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or_default()
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["id"].as_u64()).collect()
}

/// Whether `want` appears in `have` in this order (other kinds may come between).
fn in_order(have: &[&str], want: &[&str]) -> bool {
    let mut it = have.iter();
    want.iter().all(|w| it.any(|h| h == w))
}

#[test]
fn a_rollout_tells_its_story_with_who_did_what() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\ncanary = 1\ncanary_gate = \"manual\"\nmin_healthy_time = \"200ms\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    fleet.wait("the canary gate", Duration::from_secs(30), || {
        Ok((!fleet.status(&id)?.gate.is_empty()).then_some(()))
    })?;
    fleet.cli_ok(&["rollout", "pause", &id])?;
    fleet.cli_ok(&["rollout", "resume", &id])?;
    fleet.promote(&id)?;
    let end = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(end.phase(), Phase::Succeeded);

    let story = events(&fleet, &["--rollout", &id])?;
    let kinds: Vec<&str> = story.iter().map(kind).collect();
    println!("{id}: {kinds:?}");
    let want = [
        "rollout_created",
        "host_granted",
        "host_done",
        "rollout_paused",
        "rollout_resumed",
        "wave_opened",
        "host_granted",
        "host_done",
        "rollout_succeeded",
    ];
    if !in_order(&kinds, &want) || kinds.last() != Some(&"rollout_succeeded") {
        bail!("the story of {id} is {kinds:?}; expected {want:?} in that order");
    }
    let ids = ids(&story);
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        bail!("event ids not increasing: {ids:?}");
    }
    for e in &story {
        let operator_did_it = matches!(
            kind(e),
            "rollout_created" | "rollout_paused" | "rollout_resumed" | "wave_opened"
        );
        let by = e["by"].as_str().unwrap_or_default();
        if operator_did_it && by != OPERATOR {
            bail!("{} is not attributed to {OPERATOR}: {e}", kind(e));
        }
        if !operator_did_it && !by.is_empty() {
            bail!(
                "{} is attributed to {by} though no operator did it: {e}",
                kind(e)
            );
        }
    }
    let status = fleet.cli_ok(&["rollout", "status", &id])?;
    if !status.contains(&format!("started by {OPERATOR}")) {
        bail!("`rollout status` does not say who started {id}:\n{status}");
    }
    let created = &story[0];
    let spec: Value = serde_json::from_str(created["spec_json"].as_str().unwrap_or_default())?;
    assert_eq!(spec["release"]["version"], "2.0.0", "{created}");

    // A bad release: its host fails and the rollout halts, with the reason.
    let v3 = fleet.release_failing_on("3.0.0", &["host-1", "host-2", "host-3"])?;
    let bad = fleet.start_rollout(&fleet.spec(
        &v3,
        "max_unavailable = 1\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"3s\"",
    )?)?;
    let end = fleet.wait_settled(&bad, Duration::from_secs(60))?;
    assert_eq!(end.phase(), Phase::Failed);
    let story = events(&fleet, &["--rollout", &bad])?;
    let kinds: Vec<&str> = story.iter().map(kind).collect();
    println!("{bad}: {kinds:?}");
    let halted = story.iter().find(|e| kind(e) == "rollout_halted");
    match halted {
        Some(h) if !h["reason"].as_str().unwrap_or_default().is_empty() => {
            println!("halted: {}", h["reason"]);
        }
        _ => bail!("no rollout_halted event with a reason for {bad}: {kinds:?}"),
    }
    // The halt comes as soon as the host reports it is rolling back; its result follows.
    let want = ["rollout_created", "host_granted", "rollout_halted"];
    if !in_order(&kinds, &want) || !kinds.contains(&"host_rolled_back") {
        bail!("the story of {bad} is {kinds:?}");
    }
    // The same log, for people: the halt, and who started it.
    let text = fleet.cli_ok(&["events", "--rollout", &bad])?;
    println!("{text}");
    if !text.contains("rollout_halted") || !text.contains(&format!("by {OPERATOR}")) {
        bail!("the text log misses the halt or the operator:\n{text}");
    }
    Ok(())
}

#[test]
fn follow_across_a_leader_kill_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        coordinators: 2,
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(4)?;
    let leader = fleet.wait_leader(Duration::from_secs(10))?;
    // The follower reads from the leader, which is killed: it must resume after the restart.
    let (mut child, rx) = fleet.cli_background(leader, &["-o", "json", "events", "--follow"])?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id =
        fleet.start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"1s\"")?)?;
    fleet.wait("the first host done", Duration::from_secs(30), || {
        let s = fleet.status(&id)?;
        Ok((s.done >= 1).then_some(()))
    })?;
    fleet.coordinators[leader].kill9();
    println!("killed the leader coord-{}", leader + 1);
    fleet.wait_leader_change(leader, Duration::from_secs(15))?;
    std::thread::sleep(Duration::from_secs(1));
    fleet.coordinators[leader].restart()?;
    let end = fleet.wait_settled(&id, Duration::from_secs(90))?;
    assert_eq!(end.phase(), Phase::Succeeded);

    let full = events(&fleet, &[])?;
    let want = ids(&full);
    let last = *want.last().context("no events at all")?;
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let line = rx
            .recv_timeout(Duration::from_secs(40))
            .with_context(|| format!("the follower stopped at {:?} of {last}", got.last()))?;
        let e: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
        got.extend(e["id"].as_u64());
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "followed {} events, the log has {} (ids 1..={last})",
        got.len(),
        want.len()
    );
    let contiguous: Vec<u64> = (1..=last).collect();
    if want != contiguous {
        bail!("the log's ids have gaps or repeats: {want:?}");
    }
    if got != want {
        bail!("the follower saw {got:?}\nthe log is {want:?}");
    }
    Ok(())
}

#[test]
fn retention_trims_by_count_and_by_age() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        coordinator_extra: Some("[events]\nmax_count = 5\nmax_age = \"3s\"".into()),
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let kept = events(&fleet, &[])?;
    let ids_kept = ids(&kept);
    println!("after the install: ids {ids_kept:?}");
    let last = *ids_kept.last().context("no events")?;
    if last <= 5 || ids_kept != (last - 4..=last).collect::<Vec<_>>() {
        bail!("max_count = 5 kept {ids_kept:?} of {last}");
    }
    std::thread::sleep(Duration::from_secs(4));
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet
        .start_rollout(&fleet.spec(&v2, "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?)?;
    fleet.wait_settled(&id, Duration::from_secs(30))?;
    let after = events(&fleet, &[])?;
    let ids_after = ids(&after);
    println!("4 s later, after another rollout: ids {ids_after:?}");
    if ids_after.iter().any(|i| *i <= last) {
        bail!("events older than max_age = 3s were kept: {ids_after:?} (the install's ended at {last})");
    }
    Ok(())
}
