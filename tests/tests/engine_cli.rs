//! The rollout engine through the operator's CLI on a real fleet with two coordinator
//! replicas: a dry-run plan, `stage_first` (every target stages before the first host goes
//! down), release history, and an operator's rollback to the previous release. Artifacts are
//! pushed to one replica and fetched by agents streaming to either.

use std::time::Duration;

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
            let started = s.hosts.iter().filter(|h| h.state != "pending").count();
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
    assert_eq!(s.phase, "succeeded", "{s:?}");
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
    assert_eq!(s.phase, "rolled_back", "{s:?}");
    assert!(!s.rolled_back_by.is_empty());
    let rb = fleet.status(&s.rolled_back_by)?;
    assert_eq!(rb.rollback_of, id);
    assert_eq!(rb.phase, "succeeded", "{rb:?}");
    assert_eq!(rb.version, "1.0.0");
    Ok(())
}
