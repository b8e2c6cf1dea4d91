//! S6 across an etcd crash: mid-rollout (some hosts done, some updating) etcd is killed with
//! SIGKILL and started again about a second later on the same ports and data dir. The rollout
//! finishes, no done host loses its state, and the observer never sees more than the budget
//! down. A coordinator that exits because it lost its lease is restarted by the harness's
//! supervisor (as systemd would); the test prints whether that happened.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{Fleet, FleetOpts};

#[test]
fn etcd_killed_and_restarted_mid_rollout_loses_nothing() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 6,
        start_delay_ms: 200,
        ..FleetOpts::default()
    })?;
    let (observer, id, before) = fleet.mid_rollout(
        "max_unavailable = 2\nmin_healthy_time = \"1500ms\"\nhealthy_deadline = \"30s\"",
        "some hosts done and some updating",
        |s| s.done >= 1 && s.hosts.iter().any(|h| h.state() == HostState::Updating),
    )?;
    let done_before: BTreeSet<String> = before
        .hosts
        .iter()
        .filter(|h| h.state() == HostState::Done)
        .map(|h| h.host_id.clone())
        .collect();
    let t0 = Instant::now();
    fleet.restart_etcd(Duration::from_secs(1))?;
    println!(
        "etcd killed and back (healthy) after {:?}; done before: {done_before:?}",
        t0.elapsed()
    );
    fleet.wait_coordinator()?;
    let after = fleet.status(&id)?;
    for h in &after.hosts {
        if done_before.contains(&h.host_id) {
            assert_eq!(
                h.state(),
                HostState::Done,
                "{} lost its progress over the etcd restart: {after:?}",
                h.host_id
            );
        }
    }

    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(2, None);
    let restarts = fleet.coordinator_restarts();
    if restarts.is_empty() {
        println!("the coordinator survived the etcd restart (no supervisor restart)");
    } else {
        println!(
            "the coordinator exited and was restarted by the supervisor {} time(s): {restarts:?}",
            restarts.len()
        );
    }
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(s.done, 6, "{s:?}");
    assert!(
        seen.max_unavailable <= 2,
        "budget broken: the observer saw {} down (budget 2): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
