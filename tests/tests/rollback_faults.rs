//! Faults in the middle of a rollback (issue 14, item 4 C).
//!
//! 1. An agent killed (kill -9) while it rolls a failed update back: the restarted agent
//!    finishes going back, the host serves the OLD release healthy, and the failed
//!    verification still counts as the release's verdict (the rollout halts on it; the host
//!    is not handed the bad release again as if it had merely been interrupted).
//! 2. The leader killed (kill -9) while an operator's rollback rollout is under way: the other
//!    replica finishes it, the observer never sees more than the budget down, and every host
//!    ends on the old release.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::bail;
use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{Fleet, FleetOpts, Mode};

#[test]
fn agent_killed_while_rolling_back_ends_on_the_old_release_and_keeps_the_verdict(
) -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        // The old release takes a while to come back: the kill lands inside the rollback.
        start_delay_ms: 1500,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"100ms\"")?;
    let bad = fleet.release("2.0.0", Mode::Unhealthy)?;
    let spec = fleet.spec_for_hosts(
        &bad,
        "max_unavailable = 1\nmin_healthy_time = \"300ms\"\nhealthy_deadline = \"4s\"",
        &["host-1"],
    )?;
    let observer = fleet.observe();
    let id = fleet.start_rollout(&spec)?;
    let log = fleet.host("host-1").proc.log.clone();
    // The moment the journal says `rolling back` (the verdict is on disk; a kill before it is
    // an interrupted update, which other tests cover).
    let journal = fleet.host("host-1").state_dir.join("agent-state.json");
    let rolling_back = fleet.wait(
        "host-1's journal to say rolling back",
        Duration::from_secs(60),
        || {
            let text = fs::read_to_string(&journal)?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let step = v["in_flight"]["web"]["step"].as_str().unwrap_or_default();
            Ok((step == "STEP_ROLLING_BACK").then(|| step.to_string()))
        },
    )?;
    fleet.agent("host-1").proc.kill9();
    let killed = Instant::now();
    println!("killed host-1's agent mid-rollback, its journal at {rolling_back}");
    // What the dead agent left: which release `current` names, and what answers.
    let current = fs::read_link(fleet.host("host-1").state_dir.join("services/web/current"))?;
    println!(
        "at the kill: current -> {}, service answers {:?}",
        current.display(),
        fleet.serving("host-1")
    );
    fleet.agent("host-1").proc.restart()?;

    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    fleet.wait(
        "host-1 to serve 1.0.0 healthy",
        Duration::from_secs(30),
        || Ok((fleet.serving("host-1").as_deref() == Some("1.0.0")).then_some(())),
    )?;
    println!(
        "host-1 serves 1.0.0 {:?} after the kill; rollout {}: {}",
        killed.elapsed(),
        s.phase().word(),
        s.reason
    );
    let h = s
        .hosts
        .iter()
        .find(|h| h.host_id == "host-1")
        .expect("host-1 is a target");
    println!("host-1: {} ({})", h.state().word(), h.reason);
    let seen = observer.finish();
    seen.print(1, None);

    assert_eq!(s.phase(), Phase::Failed, "the bad release must halt: {s:?}");
    assert!(
        matches!(h.state(), HostState::RolledBack | HostState::Failed),
        "host-1 ends {} instead of rolled back: {h:?}",
        h.state().word()
    );
    assert!(
        h.reason.contains("2.0.0") && h.reason.contains("rolling back"),
        "host-1's reason does not say the agent restarted while rolling back 2.0.0: {}",
        h.reason
    );
    // The verdict survived the kill: 2.0.0 was granted to host-1 once, not again as if the
    // update had only been interrupted.
    let text = fs::read_to_string(&log)?;
    let accepted = text
        .lines()
        .filter(|l| l.contains("accepted order to install web 2.0.0"))
        .count();
    assert_eq!(
        accepted, 1,
        "host-1 was handed the bad 2.0.0 {accepted} times; a failed verification is a verdict"
    );
    assert_eq!(
        seen.versions
            .iter()
            .find(|(h, _)| h == "host-1")
            .map(|(_, v)| v.clone()),
        Some(vec!["1.0.0".to_string()]),
        "host-1 served something other than 1.0.0 healthy"
    );
    Ok(())
}

#[test]
fn leader_killed_mid_rollback_rollout_the_other_replica_finishes_it() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 6,
        coordinators: 2,
        start_delay_ms: 200,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 6\nmin_healthy_time = \"100ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet.start_rollout(&fleet.spec(
        &v2,
        "max_unavailable = 2\nmin_healthy_time = \"1500ms\"\nhealthy_deadline = \"30s\"",
    )?)?;
    let done = fleet.wait_settled(&id, Duration::from_secs(90))?;
    assert_eq!(done.phase(), Phase::Succeeded, "{done:?}");
    fleet.wait_all_serving("2.0.0")?;

    let observer = fleet.observe();
    let rb = fleet.rollback(&id)?;
    let mid = fleet.wait_status(
        &rb.id,
        "the rollback with some hosts back and some going back",
        Duration::from_secs(60),
        |s| s.done >= 1 && s.hosts.iter().any(|h| h.state() == HostState::Updating),
    )?;
    let old = fleet.wait_leader(Duration::from_secs(10))?;
    fleet.coordinators[old].kill9();
    let killed = Instant::now();
    println!(
        "killed the leader {} during rollback {} (done {}, updating {:?})",
        fleet.coordinators[old].id,
        rb.id,
        mid.done,
        mid.hosts
            .iter()
            .filter(|h| h.state() == HostState::Updating)
            .map(|h| &h.host_id)
            .collect::<Vec<_>>()
    );
    let new = fleet.wait_leader_change(old, Duration::from_secs(15))?;
    println!(
        "{} leads {:?} after the kill",
        fleet.coordinators[new].id,
        killed.elapsed()
    );
    let s = fleet.wait_settled(&rb.id, Duration::from_secs(90))?;
    fleet.wait_all_serving("1.0.0")?;
    let seen = observer.finish();
    seen.print(2, None);
    println!(
        "rollback {} {} {:?} after the kill: {}",
        rb.id,
        s.phase().word(),
        killed.elapsed(),
        s.reason
    );
    if s.phase() != Phase::Succeeded || s.done != 6 {
        bail!("the rollback did not finish on every host under the new leader: {s:?}");
    }
    let parent = fleet.status(&id)?;
    println!(
        "parent {id}: {} (rolled back by {})",
        parent.phase().word(),
        parent.rolled_back_by
    );
    assert_eq!(parent.rolled_back_by, rb.id, "{parent:?}");
    assert!(
        seen.max_unavailable <= 2,
        "budget broken: the observer saw {} down (budget 2): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
