//! S1 on a real fleet: 10 agents, `max_unavailable = 3`. An independent observer polls every
//! host's service directly and must never see more than 3 down at once.

use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts, Mode};

#[test]
fn ten_hosts_roll_with_at_most_three_unavailable() -> anyhow::Result<()> {
    // Each start takes 300 ms before the service binds, so every restart is a real outage the
    // observer can see overlap with others.
    let fleet = Fleet::start(FleetOpts {
        agents: 10,
        start_delay_ms: 300,
        ..FleetOpts::default()
    })?;
    fleet.install(
        "1.0.0",
        "max_unavailable = 10\nmin_healthy_time = \"200ms\"",
    )?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 3\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let status = fleet.wait_settled(&id, Duration::from_secs(120))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();

    println!(
        "observer: worst {} hosts unavailable at once (budget 3): {:?}",
        seen.max_unavailable, seen.worst_set
    );
    assert_eq!(status.phase(), Phase::Succeeded, "{status:?}");
    assert_eq!(status.done, 10, "{status:?}");
    assert!(
        seen.max_unavailable <= 3,
        "budget broken: the observer saw {} hosts down at once: {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    assert!(
        seen.max_unavailable >= 1,
        "the observer never saw a host restart, so it observed nothing"
    );
    for (host, versions) in &seen.versions {
        assert_eq!(
            versions,
            &["1.0.0".to_string(), "2.0.0".to_string()],
            "{host} served something other than old then new"
        );
    }
    Ok(())
}
