//! kill -9 of the coordinator mid-rollout, then a restart: the rollout continues where it was,
//! nothing is lost, and the budget holds throughout (S1, S6).

use std::time::Duration;

use rollgate_tests::{wait_for, Fleet, FleetOpts, Mode};

#[test]
fn coordinator_killed_mid_rollout_continues_after_restart() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 6,
        start_delay_ms: 200,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 6\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 2\nmin_healthy_time = \"1500ms\"\nhealthy_deadline = \"30s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let before = wait_for(
        "some hosts done and some updating",
        Duration::from_secs(60),
        || {
            let s = fleet.status(&id)?;
            let updating = s.hosts.iter().filter(|h| h.state == "updating").count();
            Ok((s.done >= 1 && updating >= 1).then_some(s))
        },
    )?;
    fleet.coordinator().kill9();
    println!(
        "killed the coordinator with {} done, {} updating",
        before.done,
        before
            .hosts
            .iter()
            .filter(|h| h.state == "updating")
            .count()
    );
    std::thread::sleep(Duration::from_millis(500));
    fleet.coordinator().restart()?;
    fleet.wait_coordinator()?;

    let after = fleet.status(&id)?;
    assert_eq!(after.id, id);
    for h in before.hosts.iter().filter(|h| h.state == "done") {
        let now = after
            .hosts
            .iter()
            .find(|x| x.host_id == h.host_id)
            .expect("host");
        assert_eq!(
            now.state, "done",
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
    assert_eq!(s.phase, "succeeded", "{s:?}");
    assert_eq!(s.done, 6);
    assert!(
        seen.max_unavailable <= 2,
        "observer saw {} down (budget 2): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
