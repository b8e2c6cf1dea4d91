//! The rollout engine through the operator's CLI on a real fleet with two coordinator
//! replicas: a dry-run plan, `stage_first` (every target stages before the first host goes
//! down), release history, and an operator's rollback to the previous release. Artifacts are
//! pushed to one replica and fetched by agents streaming to either.

use std::time::Duration;

use rollgate_tests::pb::{HostState, Phase, Step};
use rollgate_tests::{wait_for, Fleet, FleetOpts, Mode};

#[test]
fn plan_stage_first_history_and_operator_rollback() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        coordinators: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    // Dry run: targets, budget, waves and gates, nothing started.
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 2\nmin_healthy_time = \"300ms\"\ncanary = 1\ncanary_gate = \"5s\"\n\
         stage_first = true",
    )?;
    let plan = fleet.cli_ok(&["rollout", "plan", &spec.display().to_string()])?;
    println!("{plan}");
    for want in ["host-1", "host-4", "canary", "5s", "would start now"] {
        assert!(plan.contains(want), "plan does not show {want:?}:\n{plan}");
    }
    let json: serde_json::Value = serde_json::from_str(&fleet.cli_ok(&[
        "--output",
        "json",
        "rollout",
        "plan",
        &spec.display().to_string(),
    ])?)?;
    assert_eq!(json["targets"].as_array().map(Vec::len), Some(4), "{json}");
    assert_eq!(json["waves"].as_array().map(Vec::len), Some(2), "{json}");
    let listed = fleet.cli_ok(&["rollout", "list"])?;
    assert_eq!(
        listed.matches("r-").count(),
        1,
        "plan must not create a rollout:\n{listed}"
    );

    // stage_first: every target reports the release staged before any host holds a slot.
    let id = fleet.start_rollout(&spec)?;
    let staged = wait_for(
        "every target to stage 2.0.0",
        Duration::from_secs(30),
        || {
            let s = fleet.status(&id)?;
            let started = s
                .hosts
                .iter()
                .filter(|h| h.state() != HostState::Pending)
                .count();
            if s.staged < 4 {
                anyhow::ensure!(
                    started == 0,
                    "a host started before every target staged: {s:?}"
                );
                anyhow::bail!("staged {}/4; waiting: {}", s.staged, s.blocked_by);
            }
            Ok(Some(s))
        },
    )?;
    println!(
        "staged on all 4 before the first slot; then: {}",
        staged.blocked_by
    );
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    fleet.wait_all_serving("2.0.0")?;

    // History lists both releases, newest first.
    let history = fleet.cli_ok(&["history", "web"])?;
    println!("{history}");
    let (p2, p1) = (history.find("2.0.0"), history.find("1.0.0"));
    assert!(p2.is_some() && p1.is_some() && p2 < p1, "{history}");

    // The operator rolls the finished rollout back: 1.0.0 everywhere again.
    let out = fleet.cli_ok(&["rollout", "rollback", &id, "--watch"])?;
    println!("{out}");
    fleet.wait_all_serving("1.0.0")?;
    let s = fleet.status(&id)?;
    assert_eq!(s.phase(), Phase::RolledBack, "{s:?}");
    assert!(!s.rolled_back_by.is_empty());
    let rb = fleet.status(&s.rolled_back_by)?;
    assert_eq!(rb.rollback_of, id);
    assert_eq!(rb.phase(), Phase::Succeeded, "{rb:?}");
    assert_eq!(rb.version, "1.0.0");
    Ok(())
}

/// `rollgate host fence`: a host that froze while holding the budget keeps it (S2) until an
/// operator vouches for it; then its grant is void, the next host goes, and the frozen agent's
/// late result changes nothing.
#[test]
fn fencing_a_frozen_host_frees_its_share_and_voids_its_grant() -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    let mut fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmax_failures = 1\nmin_healthy_time = \"3s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_status(&id, "host-1 verifying", Duration::from_secs(30), |s| {
        s.hosts
            .iter()
            .any(|h| h.host_id == "host-1" && h.step() == Step::Verifying)
    })?;
    let token = s.hosts[0].token;
    fleet.agent("host-1").proc.signal(Signal::SIGSTOP);
    fleet.hold_for(&id, Duration::from_secs(2), |s| {
        let moved = s
            .hosts
            .iter()
            .filter(|h| h.host_id != "host-1" && h.state() != HostState::Pending)
            .count();
        anyhow::ensure!(
            moved == 0,
            "another host started while host-1 held the budget"
        );
        Ok(())
    })?;

    let out = fleet.cli_ok(&["host", "fence", "host-1"])?;
    println!("{out}");
    assert!(out.contains("fenced") && out.contains(&id), "{out}");
    let s = fleet.wait_status(
        &id,
        "host-2 to start after the fence",
        Duration::from_secs(15),
        |s| {
            s.hosts
                .iter()
                .any(|h| h.host_id == "host-2" && h.state() != HostState::Pending)
        },
    )?;
    let h1 = s
        .hosts
        .iter()
        .find(|h| h.host_id == "host-1")
        .expect("host-1");
    assert_eq!(h1.state(), HostState::Failed, "{s:?}");
    assert!(h1.reason.contains("fenced"), "{:?}", h1.reason);

    // The frozen agent wakes up, finishes its now-void update and reports: nothing changes.
    fleet.agent("host-1").proc.signal(Signal::SIGCONT);
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    let h1 = s
        .hosts
        .iter()
        .find(|h| h.host_id == "host-1")
        .expect("host-1");
    println!(
        "after the late report: host-1 {} ({}), token {token}",
        h1.state().word(),
        h1.reason
    );
    assert_eq!(
        h1.state(),
        HostState::Failed,
        "the void grant's late result must not count: {s:?}"
    );
    assert_eq!(
        s.phase(),
        Phase::Succeeded,
        "1 failure is within max_failures = 1: {s:?}"
    );
    assert_eq!(s.done, 2);
    Ok(())
}
