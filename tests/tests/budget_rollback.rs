//! S1 for rollbacks (issue 9, item 1), the run that broke it: 10 hosts, `max_unavailable = 2`,
//! a canary of 2 behind a manual gate. After the canary finished, two other hosts of the
//! service die whole (agent and service); then an operator rolls the rollout back. The
//! rollback inherits the budget of 2 and must count the two dead hosts: it may not take a
//! canary host down until one of them is back. An independent observer polls every service.
//! Before the fix the rollback took both canary hosts down at once: 4 down with a budget of 2.

use std::time::Duration;

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{Fleet, FleetOpts, Mode};

#[test]
fn a_rollback_counts_the_parents_hosts_that_are_down() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 10,
        start_delay_ms: 1500,
        ..FleetOpts::default()
    })?;
    fleet.install(
        "1.0.0",
        "max_unavailable = 10\nmin_healthy_time = \"200ms\"",
    )?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 2\ncanary = 2\ncanary_gate = \"manual\"\nmin_healthy_time = \"300ms\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let at_gate = fleet.wait_status(&id, "the canary gate", Duration::from_secs(60), |s| {
        s.gate == "manual promote"
    })?;
    let canary: Vec<String> = at_gate
        .hosts
        .iter()
        .filter(|h| h.state() == HostState::Done)
        .map(|h| h.host_id.clone())
        .collect();
    assert_eq!(canary.len(), 2, "{at_gate:?}");
    let dead: Vec<String> = at_gate
        .hosts
        .iter()
        .filter(|h| h.state() == HostState::Pending)
        .take(2)
        .map(|h| h.host_id.clone())
        .collect();
    println!("canary {canary:?} on 2.0.0; killing {dead:?} (agent and service)");

    let observer = fleet.observe();
    for h in &dead {
        fleet.kill_host(h);
    }
    fleet.wait(
        "the dead hosts to count as offline",
        Duration::from_secs(20),
        || {
            let hosts = fleet.hosts()?;
            Ok(dead
                .iter()
                .all(|d| hosts.iter().any(|h| &h.host_id == d && !h.connected))
                .then_some(()))
        },
    )?;

    let rb = fleet.rollback(&id)?;
    println!("rollback {} targets {} hosts", rb.id, rb.total);
    // Both units of the budget are taken by the dead hosts: nothing may start.
    let held = fleet.hold_for(&rb.id, Duration::from_secs(4), |s| {
        anyhow::ensure!(
            s.hosts.iter().all(|h| h.state() == HostState::Pending),
            "the rollback started a host while 2 of the service's hosts were down"
        );
        Ok(())
    })?;
    println!(
        "while both were dead: unavailable {}/{}; blocked_by: {}",
        held.unavailable, held.max_unavailable, held.blocked_by
    );
    assert_eq!(held.max_unavailable, 2, "the rollback inherits the budget");
    assert_eq!(held.unavailable, 2, "{held:?}");
    for d in &dead {
        assert!(
            held.blocked_by
                .contains(&format!("{d} offline (not a target)")),
            "blocked_by does not name {d}: {}",
            held.blocked_by
        );
    }

    // One comes back: the rollback may take one canary host down at a time.
    fleet.agent(&dead[0]).proc.restart()?;
    let s = fleet.wait_status(
        &rb.id,
        "one rollback host to finish",
        Duration::from_secs(60),
        |s| s.done >= 1,
    )?;
    println!("with one dead host back: {}", rollgate_tests::brief(&s));
    fleet.agent(&dead[1]).proc.restart()?;
    let s = fleet.wait_settled(&rb.id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    fleet.wait_all_serving("1.0.0")?;
    let seen = observer.finish();
    seen.print(2, None);
    assert!(
        seen.max_unavailable <= 2,
        "budget broken: the observer saw {} hosts down at once with a budget of 2: {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    assert!(
        seen.max_unavailable == 2,
        "the observer never saw the two dead hosts down: it observed nothing"
    );
    let parent = fleet.status(&id)?;
    assert_eq!(parent.phase(), Phase::RolledBack, "{parent:?}");
    Ok(())
}
