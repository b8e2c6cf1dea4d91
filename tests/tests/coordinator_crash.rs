//! kill -9 of the coordinator mid-rollout, then a restart: the rollout continues where it was,
//! nothing is lost, and the budget holds throughout (S1, S6).

use std::time::Duration;

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{Fleet, FleetOpts};

#[test]
fn coordinator_killed_mid_rollout_continues_after_restart() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 6,
        start_delay_ms: 200,
        ..FleetOpts::default()
    })?;
    let (observer, id, before) = fleet.mid_rollout(
        "max_unavailable = 2\nmin_healthy_time = \"1500ms\"\nhealthy_deadline = \"30s\"",
        "some hosts done and some updating",
        |s| s.done >= 1 && s.hosts.iter().any(|h| h.state() == HostState::Updating),
    )?;
    fleet.coordinator().kill9();
    println!(
        "killed the coordinator with {} done, {} updating",
        before.done,
        before
            .hosts
            .iter()
            .filter(|h| h.state() == HostState::Updating)
            .count()
    );
    std::thread::sleep(Duration::from_millis(500));
    fleet.coordinator().restart()?;
    fleet.wait_coordinator()?;

    let after = fleet.status(&id)?;
    assert_eq!(after.id, id);
    for h in before.hosts.iter().filter(|h| h.state() == HostState::Done) {
        let now = after
            .hosts
            .iter()
            .find(|x| x.host_id == h.host_id)
            .expect("host");
        assert_eq!(
            now.state(),
            HostState::Done,
            "{} lost its progress over the restart",
            h.host_id
        );
    }
    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    println!(
        "observer: worst {} hosts unavailable at once (budget 2)",
        seen.max_unavailable
    );
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(s.done, 6);
    assert!(
        seen.max_unavailable <= 2,
        "observer saw {} down (budget 2): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
