//! A bad release halts at the first failure (the default policy) with no more than the budget
//! having tried it; those hosts are back on the old release, healthy; status says who and why.

use std::time::{Duration, Instant};

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{service_version, Fleet, FleetOpts, Mode};

#[test]
fn unhealthy_release_halts_and_rolls_back_within_the_budget() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 6,
        start_delay_ms: 0,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 6\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let bad = fleet.release("2.0.0", Mode::Unhealthy)?;
    let spec = fleet.spec(
        &bad,
        "max_unavailable = 2\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"3s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let status = fleet.wait_settled(&id, Duration::from_secs(60))?;
    let seen = observer.finish();
    println!(
        "observer: worst {} hosts unavailable at once (budget 2)",
        seen.max_unavailable
    );

    assert_eq!(status.phase(), Phase::Failed, "{status:?}");
    let tried: Vec<_> = status
        .hosts
        .iter()
        .filter(|h| h.state() != HostState::Pending)
        .collect();
    let rolled_back: Vec<_> = tried
        .iter()
        .filter(|h| h.state() == HostState::RolledBack)
        .collect();
    assert!(
        !tried.is_empty() && tried.len() <= 2,
        "{} hosts tried the bad release (budget 2): {status:?}",
        tried.len()
    );
    assert_eq!(
        rolled_back.len(),
        tried.len(),
        "every host that tried it rolled back: {status:?}"
    );
    for h in &status.hosts {
        assert!(
            !h.holds_slot,
            "{} still holds a slot after rolling back",
            h.host_id
        );
    }
    assert!(
        seen.max_unavailable <= 2,
        "observer saw {} down (budget 2)",
        seen.max_unavailable
    );
    // Every host serves the old release, healthy — checked on the service itself.
    fleet.wait_all_serving("1.0.0")?;
    for (host, versions) in &seen.versions {
        assert!(
            versions.iter().all(|v| v == "1.0.0"),
            "{host} served {versions:?}; the bad release is never healthy"
        );
    }

    // The operator's view names the failed hosts and the reason.
    let text = fleet.cli_ok(&["rollout", "status", &id])?;
    println!("{text}");
    assert!(text.contains("failed"), "{text}");
    for h in &rolled_back {
        assert!(
            text.contains(&h.host_id),
            "status does not name {}: {text}",
            h.host_id
        );
        assert!(
            h.reason.contains("2.0.0"),
            "reason does not name the release: {:?}",
            h.reason
        );
    }

    // A release that crashes at start fails at once (not after the 30 s deadline) and rolls
    // back too; the service was freed when the first rollout settled.
    let crash = fleet.release("2.0.1", Mode::Crash)?;
    let spec = fleet.spec(
        &crash,
        "max_unavailable = 1\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"30s\"",
    )?;
    let started = Instant::now();
    let id = fleet.start_rollout(&spec)?;
    let status = fleet.wait_settled(&id, Duration::from_secs(25))?;
    println!("crashing release halted after {:?}", started.elapsed());
    assert_eq!(status.phase(), Phase::Failed, "{status:?}");
    let tried: Vec<_> = status
        .hosts
        .iter()
        .filter(|h| h.state() != HostState::Pending)
        .collect();
    assert_eq!(tried.len(), 1, "{status:?}");
    assert_eq!(tried[0].state(), HostState::RolledBack, "{status:?}");
    let port = fleet
        .agents
        .iter()
        .find(|a| a.id == tried[0].host_id)
        .map(|a| a.service_port)
        .expect("agent");
    assert_eq!(service_version(port).as_deref(), Some("1.0.0"));
    Ok(())
}
