//! Issue 12 item 2, the lost session: host-2's link is cut while it verifies a good release and
//! the coordinator replica holding its stream (and its slot's lease) is killed, so the host is
//! *lost*; it stays away longer than its `healthy_deadline` plus 30 s (the old grace after which
//! silence counted as a failure), with `max_failures = 0`. Being lost is no verdict on the
//! release: the rollout neither halts nor moves on without it (it keeps its share of the
//! budget, S2), and once the link heals the host reports its real result and the rollout
//! succeeds, every host on the new release, the observer never seeing more than the budget down.

use std::time::Duration;

use anyhow::bail;
use rollgate_tests::pb::{HostState, Phase, Step};
use rollgate_tests::{Fleet, FleetOpts, Mode};

/// Longer than the healthy deadline (5 s) plus the old 30 s grace.
const CUT_FOR: Duration = Duration::from_secs(40);

#[test]
fn a_host_lost_past_its_deadline_does_not_halt_a_good_rollout() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        coordinators: 2,
        netns: true,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmax_failures = 0\nmin_healthy_time = \"2s\"\n\
         healthy_deadline = \"5s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    // host-2 streams to coord-2 first (agent i starts with replica i % 2); budget 1, so it
    // verifies after host-1 is done.
    let x = "host-2".to_string();
    fleet.wait_status(&id, "host-2 verifying", Duration::from_secs(60), |s| {
        s.hosts.iter().any(|h| {
            h.host_id == "host-2" && h.state() == HostState::Updating && h.step() == Step::Verifying
        })
    })?;
    let holder = fleet.etcd_get_prefix("/rollgate/sessions/host-2")?;
    let replica = &fleet.coordinators[1];
    anyhow::ensure!(
        holder.iter().any(|(_, v)| v.contains(&replica.id)),
        "host-2 is not on {}: {holder:?}",
        replica.id
    );
    fleet.cut(&x)?;
    replica.kill9();
    println!("cut {x}'s link while it verifies 2.0.0 and killed {} (its stream and slot); keeping it cut for {CUT_FOR:?}", replica.id);
    replica.restart()?;
    let last = fleet.hold_for(&id, CUT_FOR, |s| {
        if s.phase() != Phase::Rolling || s.failed != 0 {
            bail!(
                "{x} being lost was taken as a failure: {} {}",
                s.phase().word(),
                s.reason
            );
        }
        Ok(())
    })?;
    let hx = last.hosts.iter().find(|h| h.host_id == x).expect("x");
    println!(
        "after {CUT_FOR:?}: {x} {}; {}",
        hx.state().word(),
        last.blocked_by
    );
    fleet.heal(&x)?;

    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    let seen = observer.finish();
    seen.print(1, None);
    for h in &s.hosts {
        println!("{}: {} — {}", h.host_id, h.state().word(), h.reason);
    }
    assert_eq!(
        s.phase(),
        Phase::Succeeded,
        "{}: {}",
        s.phase().word(),
        s.reason
    );
    for h in &s.hosts {
        assert_eq!(h.state(), HostState::Done, "{h:?}");
    }
    fleet.wait_all_serving("2.0.0")?;
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
