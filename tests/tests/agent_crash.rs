//! kill -9 of an agent in the middle of an update of a bad release, against the real
//! coordinator: on restart the agent undoes the interrupted swap and reports it interrupted (not
//! a failure of the release), the coordinator grants the host again, and the release's own
//! verdict (never healthy) halts the rollout; every host ends on exactly the old release,
//! healthy. The interruption alone must not be the verdict (issue 12).

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
        "max_unavailable = 1\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"15s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let (victim, first_token) =
        wait_for("a host to be verifying", Duration::from_secs(30), || {
            let s = fleet.status(&id)?;
            Ok(s.hosts
                .iter()
                .find(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
                .map(|h| (h.host_id.clone(), h.token)))
        })?;
    let port = fleet.agent(&victim).service_port;
    fleet.agent(&victim).proc.kill9();
    println!("killed {victim}'s agent while it was verifying 2.0.0");
    fleet.agent(&victim).proc.restart()?;

    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    let h = s
        .hosts
        .iter()
        .find(|h| h.host_id == victim)
        .expect("victim");
    println!(
        "{victim}: {} token {} — {}",
        h.state().word(),
        h.token,
        h.reason
    );
    println!("rollout: {} — {}", s.phase().word(), s.reason);
    assert_eq!(s.phase(), Phase::Failed, "{s:?}");
    assert!(
        !s.reason.contains("agent restarted"),
        "the halt is the release's verdict, not the restart: {:?}",
        s.reason
    );
    assert!(
        s.hosts.iter().any(|h| h.state() == HostState::RolledBack),
        "a host rolled the bad release back on its own verdict: {s:?}"
    );
    assert!(
        matches!(h.state(), HostState::RolledBack | HostState::Interrupted),
        "{s:?}"
    );
    if h.state() == HostState::RolledBack {
        assert!(
            h.token > first_token,
            "granted again after the interruption: {h:?}"
        );
    }
    assert!(!h.holds_slot);
    assert_eq!(
        service_version(port).as_deref(),
        Some("1.0.0"),
        "{victim} must serve the old release after the undo"
    );
    fleet.wait_all_serving("1.0.0")?;
    Ok(())
}
