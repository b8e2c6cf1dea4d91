//! S6 with two coordinator replicas: kill -9 of the LEADER mid-rollout (some hosts done, some
//! updating). The other replica takes over, the agents that were on the dead replica reconnect
//! to the live one, the rollout finishes, done hosts stay done, and the observer never sees
//! more than the budget (2) down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{Fleet, FleetOpts};

#[test]
fn leader_killed_mid_rollout_the_other_replica_finishes_it() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 6,
        start_delay_ms: 200,
        coordinators: 2,
        ..FleetOpts::default()
    })?;
    let (observer, id, before) = fleet.mid_rollout(
        "max_unavailable = 2\nmin_healthy_time = \"1500ms\"\nhealthy_deadline = \"30s\"",
        "some hosts done and some updating",
        |s| s.done >= 1 && s.hosts.iter().any(|h| h.state() == HostState::Updating),
    )?;
    let old = fleet.wait_leader(Duration::from_secs(10))?;
    fleet.coordinators[old].kill9();
    let killed = Instant::now();
    let done_before: BTreeSet<String> = before
        .hosts
        .iter()
        .filter(|h| h.state() == HostState::Done)
        .map(|h| h.host_id.clone())
        .collect();
    println!(
        "killed the leader {} with done {done_before:?}, updating {:?}",
        fleet.coordinators[old].id,
        before
            .hosts
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
    let after = fleet.status(&id)?;
    for h in &after.hosts {
        if done_before.contains(&h.host_id) {
            assert_eq!(
                h.state(),
                HostState::Done,
                "{} lost its progress over the failover: {after:?}",
                h.host_id
            );
        }
    }
    // Agents that were on the dead replica come over to the live one.
    fleet.wait_connected(6)?;
    println!(
        "all 6 agents connected {:?} after the kill",
        killed.elapsed()
    );

    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(2, None);
    println!("supervisor: {:?}", fleet.coordinator_restarts());
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(s.done, 6, "{s:?}");
    for h in &s.hosts {
        assert_eq!(h.state(), HostState::Done, "{s:?}");
    }
    assert!(
        seen.max_unavailable <= 2,
        "budget broken: the observer saw {} down (budget 2): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
