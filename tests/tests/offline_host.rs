//! A host that is disconnected when a rollout starts counts against the budget: with
//! `max_unavailable = 1`, no other host starts while it is away.

use std::time::Duration;

use nix::sys::signal::Signal;
use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{wait_for, Fleet, FleetOpts, Mode};

#[test]
fn offline_host_holds_the_budget_until_it_returns() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 4,
        start_delay_ms: 0,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    // Freeze host-3's agent: its service keeps running, but the coordinator loses it.
    fleet.agent("host-3").proc.signal(Signal::SIGSTOP);
    wait_for(
        "host-3 to count as offline",
        Duration::from_secs(10),
        || {
            let hosts = fleet.hosts()?;
            Ok(hosts
                .iter()
                .find(|h| h.host_id == "host-3" && !h.connected)
                .map(|_| ()))
        },
    )?;

    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"300ms\"")?;
    let id = fleet.start_rollout(&spec)?;

    // For a while nothing may start: the one unit of budget is taken by the offline host.
    let window = std::time::Instant::now() + Duration::from_secs(3);
    let mut last = None;
    while std::time::Instant::now() < window {
        let s = fleet.status(&id)?;
        let started: Vec<_> = s
            .hosts
            .iter()
            .filter(|h| h.state() != HostState::Pending)
            .collect();
        assert!(
            started.is_empty(),
            "a host started while host-3 was offline: {s:?}"
        );
        last = Some(s);
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = last.expect("polled at least once");
    println!(
        "while host-3 was away: unavailable {}/{}; blocked_by: {}",
        s.unavailable, s.max_unavailable, s.blocked_by
    );
    assert!(
        s.blocked_by.contains("host-3"),
        "blocked_by does not name host-3: {:?}",
        s.blocked_by
    );
    assert_eq!(s.unavailable, 1);

    fleet.agent("host-3").proc.signal(Signal::SIGCONT);
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    fleet.wait_all_serving("2.0.0")?;
    Ok(())
}
