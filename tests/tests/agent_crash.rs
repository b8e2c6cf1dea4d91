//! kill -9 of an agent in the middle of an update, against the real coordinator: on restart the
//! agent undoes the interrupted swap, the host ends on exactly the old release, healthy, and the
//! coordinator learns the outcome (the rollout halts, naming the host and why).

use std::time::Duration;

use rollgate_tests::pb::{HostState, Phase, Step};
use rollgate_tests::{service_version, wait_for, Fleet, FleetOpts, Mode};

#[test]
fn agent_killed_while_verifying_ends_on_the_old_release() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        start_delay_ms: 0,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;

    // A release that is never healthy, with a long deadline: the agent sits in `verifying`.
    let bad = fleet.release("2.0.0", Mode::Unhealthy)?;
    let spec = fleet.spec(
        &bad,
        "max_unavailable = 1\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"60s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let victim = wait_for("a host to be verifying", Duration::from_secs(30), || {
        let s = fleet.status(&id)?;
        Ok(s.hosts
            .iter()
            .find(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
            .map(|h| h.host_id.clone()))
    })?;
    let port = fleet.agent(&victim).service_port;
    fleet.agent(&victim).proc.kill9();
    println!("killed {victim}'s agent while it was verifying 2.0.0");
    fleet.agent(&victim).proc.restart()?;

    let s = fleet.wait_settled(&id, Duration::from_secs(30))?;
    let h = s
        .hosts
        .iter()
        .find(|h| h.host_id == victim)
        .expect("victim");
    println!("{victim}: {} — {}", h.state().word(), h.reason);
    assert_eq!(s.phase(), Phase::Failed, "{s:?}");
    assert_eq!(h.state(), HostState::RolledBack, "{s:?}");
    assert!(
        h.reason.contains("agent restarted during the update"),
        "{:?}",
        h.reason
    );
    assert!(!h.holds_slot);
    assert_eq!(
        service_version(port).as_deref(),
        Some("1.0.0"),
        "{victim} must serve the old release after the undo"
    );
    fleet.wait_all_serving("1.0.0")?;
    Ok(())
}
