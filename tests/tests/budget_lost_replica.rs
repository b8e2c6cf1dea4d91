//! S1/S2 when a replica dies under a host that is rolling back (issue 9, item 2), the run that
//! broke it: two replicas, two hosts, `max_unavailable = 1`, `on_failure = "rollback"`. The new
//! release fails on host-2, whose old release takes seconds to start again; while host-2 rolls
//! back, the replica holding its stream (and its slot's lease) is killed and restarted. host-2
//! reconnects elsewhere; its slot went with the lease. The automatic rollback must still count
//! host-2 as out of service (its agent reports the order in flight) and leave host-1 alone until
//! host-2 reports. Before the fix it took host-1 down too: 2 down with a budget of 1.

use std::time::Duration;

use rollgate_tests::pb::{Phase, Step};
use rollgate_tests::{brief, Fleet, FleetOpts};

#[test]
fn a_lost_replica_frees_no_budget() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        coordinators: 2,
        start_delay_ms: 5000,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    // host-2 streams to coord-2 first (agent i starts with replica i % 2).
    let serving = 1;

    let observer = fleet.observe();
    let v2 = fleet.release_failing_on("2.0.0", &["host-2"])?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\non_failure = \"rollback\"\nmin_healthy_time = \"300ms\"\n\
         healthy_deadline = \"8s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_status(&id, "host-2 to roll back", Duration::from_secs(60), |s| {
        s.hosts
            .iter()
            .any(|h| h.host_id == "host-2" && h.step() == Step::RollingBack)
            || s.phase() == Phase::RollingBack
    })?;
    println!("host-2 rolling back: {}", brief(&s));
    let holder = fleet.etcd_get_prefix("/rollgate/sessions/host-2")?;
    println!("host-2's session: {holder:?}");
    let replica = &fleet.coordinators[serving];
    anyhow::ensure!(
        holder.iter().any(|(_, v)| v.contains(&replica.id)),
        "host-2 is not on {}: {holder:?}",
        replica.id
    );
    replica.kill9();
    println!("killed {} (holding host-2's stream and slot)", replica.id);
    std::thread::sleep(Duration::from_millis(500));
    replica.restart()?;

    let parent = fleet.wait_status(
        &id,
        "the automatic rollback",
        Duration::from_secs(30),
        |s| !s.rolled_back_by.is_empty(),
    )?;
    let rb = fleet.wait_settled(&parent.rolled_back_by, Duration::from_secs(90))?;
    println!("rollback: {}", brief(&rb));
    assert_eq!(rb.phase(), Phase::Succeeded, "{rb:?}");
    fleet.wait_all_serving("1.0.0")?;
    let seen = observer.finish();
    seen.print(1, None);
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} hosts down at once with a budget of 1: {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
