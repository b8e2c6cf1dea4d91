//! S1/S2 with a real network cut: every host runs in its own network namespace; while host X
//! updates, its link is taken down (agent <-> coordinator and observer <-> service, both ways).
//! For a few seconds nothing else may start: X holds the budget of 1 (the observer sees X down,
//! and never two). After the link heals the rollout finishes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use rollgate_tests::pb::{HostState, Step};
use rollgate_tests::{session_timeout, Fleet, FleetOpts, Mode};

#[test]
fn cut_host_holds_the_budget_until_its_link_heals() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        netns: true,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmin_healthy_time = \"2s\"\nhealthy_deadline = \"30s\"\nmax_failures = 1",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let before = fleet.wait_status(&id, "a host verifying", Duration::from_secs(30), |s| {
        s.hosts
            .iter()
            .any(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
    })?;
    let x = before
        .hosts
        .iter()
        .find(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
        .map(|h| h.host_id.clone())
        .expect("found above");
    let states_before: BTreeMap<String, HostState> = before
        .hosts
        .iter()
        .map(|h| (h.host_id.clone(), h.state()))
        .collect();
    fleet.cut(&x)?;
    let window = Duration::from_secs(3).max(session_timeout() + Duration::from_secs(1));
    println!("cut {x}'s link while it was verifying; watching for {window:?}");
    let last = fleet.hold_for(&id, window, |s| {
        for h in s.hosts.iter().filter(|h| h.host_id != x) {
            if Some(&h.state()) != states_before.get(&h.host_id) {
                bail!(
                    "{} went from {:?} to {} while {x} was cut off",
                    h.host_id,
                    states_before.get(&h.host_id),
                    h.state().word()
                );
            }
        }
        Ok(())
    })?;
    let hx = last.hosts.iter().find(|h| h.host_id == x).expect("x");
    println!(
        "while cut: {x} {} connected={} blocked_by {:?}; observer worst so far {}",
        hx.state().word(),
        hx.connected,
        last.blocked_by,
        observer.max_so_far()
    );
    assert!(
        fleet.serving(&x).is_none(),
        "the observer still reaches {x}'s service: the cut did not cut"
    );
    assert!(
        observer.max_so_far() >= 1,
        "the observer never saw {x} down"
    );
    assert!(
        matches!(hx.state(), HostState::Updating | HostState::Lost),
        "{x} is {} while cut off",
        hx.state().word()
    );

    fleet.heal(&x)?;
    let healed = Instant::now();
    fleet.wait(
        &format!("{x} to reconnect after the heal"),
        Duration::from_secs(60),
        || {
            Ok(fleet
                .hosts()?
                .iter()
                .any(|h| h.host_id == x && h.connected)
                .then_some(()))
        },
    )?;
    println!("{x} reconnected {:?} after the heal", healed.elapsed());
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(1, None);
    for h in s.hosts.iter().filter(|h| h.host_id != x) {
        assert_eq!(
            h.state(),
            HostState::Done,
            "{} did not finish: {s:?}",
            h.host_id
        );
    }
    let hx = s.hosts.iter().find(|h| h.host_id == x).expect("x");
    println!(
        "{x} ended {} ({:?}); phase {}",
        hx.state().word(),
        hx.reason,
        s.phase().word()
    );
    assert!(
        hx.state() == HostState::Done || !hx.reason.is_empty(),
        "{x} ended {} without a reason",
        hx.state().word()
    );
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
