//! Issue 14 item 4.8, `rollgate host forget`. Refused while the host's agent is connected
//! (it may be carrying an order out), with the reason and what to do; an offline host is
//! forgotten: gone from `rollgate hosts`, from the next rollout's targets and from its budget.
//! A host lost mid-update (its agent and service kill -9'd while it holds the only slot) may be
//! forgotten too, as the design allows (S2: an operator vouching frees the slot): its update
//! is marked failed ("fenced by an operator"), which counts against `max_failures`, and the
//! rollout goes on without it.

use std::process::Output;
use std::time::Duration;

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{brief, Fleet, FleetOpts, Mode, Observer};

/// `rollgate host forget HOST --yes`.
fn forget(fleet: &Fleet, host: &str) -> anyhow::Result<Output> {
    fleet.cli(&["host", "forget", host, "--yes"])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until `rollgate hosts` shows `host` offline.
fn wait_offline(fleet: &Fleet, host: &str) -> anyhow::Result<()> {
    fleet.wait(
        &format!("{host} to count as offline"),
        Duration::from_secs(15),
        || {
            let hosts = fleet.hosts()?;
            Ok(hosts
                .iter()
                .find(|h| h.host_id == host && !h.connected)
                .map(|_| ()))
        },
    )
}

/// An observer over every host but `gone` (whose service is dead for good).
fn observe_all_but(fleet: &Fleet, gone: &str) -> Observer {
    Observer::start(
        fleet
            .agents
            .iter()
            .filter(|a| a.id != gone)
            .map(|a| (a.id.clone(), a.service_addr))
            .collect(),
    )
}

#[test]
fn forget_refuses_a_connected_host_and_drops_an_offline_one() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 4,
        start_delay_ms: 1000,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    let out = forget(&fleet, "host-2")?;
    let said = text(&out);
    println!("forget host-2 (connected): {}: {}", out.status, said.trim());
    assert!(
        !out.status.success(),
        "a connected host was forgotten: {said}"
    );
    for word in ["host-2 is connected", "stop its agent", "offline"] {
        assert!(
            said.contains(word),
            "the refusal does not say {word:?}: {said}"
        );
    }
    assert!(
        fleet.hosts()?.iter().any(|h| h.host_id == "host-2"),
        "host-2's record is gone after a refused forget"
    );

    fleet.kill_host("host-4");
    wait_offline(&fleet, "host-4")?;
    let said = fleet.cli_ok(&["host", "forget", "host-4", "--yes"])?;
    println!("forget host-4 (offline): {}", said.trim());
    assert!(
        said.contains("host-4 forgotten") && said.contains("counts against no budget"),
        "{said}"
    );
    let hosts = fleet.hosts()?;
    assert!(
        hosts.iter().all(|h| h.host_id != "host-4"),
        "host-4 is still listed: {:?}",
        hosts.iter().map(|h| &h.host_id).collect::<Vec<_>>()
    );

    // Before the forget, offline host-4 would hold the only unit of budget and nothing could
    // start (offline_host.rs); now it is neither a target nor an outage.
    let observer = observe_all_but(&fleet, "host-4");
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet
        .start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"300ms\"")?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    let seen = observer.finish();
    seen.print(1, None);
    println!("{}: {}", brief(&s), s.reason);
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    assert_eq!(s.total, 3, "host-4 is still a target: {}", brief(&s));
    assert!(
        s.hosts.iter().all(|h| h.host_id != "host-4"),
        "{}",
        brief(&s)
    );
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}

#[test]
fn forgetting_a_host_lost_mid_update_frees_its_slot_and_fails_it() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmax_failures = 1\nmin_healthy_time = \"3s\"\nhealthy_deadline = \"10s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let (_, x) = fleet.wait_verifying(&id)?;
    fleet.kill_host(&x);
    println!("kill -9 of {x}'s agent and service while it verifies and holds the only slot");
    let observer = observe_all_but(&fleet, &x);
    let held = fleet.wait_status(&id, &format!("{x} lost"), Duration::from_secs(15), |s| {
        s.hosts
            .iter()
            .any(|h| h.host_id == x && h.state() == HostState::Lost)
    })?;
    println!("before the forget: {}", held.blocked_by);

    let said = fleet.cli_ok(&["host", "forget", &x, "--yes"])?;
    println!("forget {x}: {}", said.trim());
    assert!(
        said.contains(&format!("{x} forgotten")) && said.contains(&format!("update in {id}")),
        "the answer does not say {x}'s update in {id} ended: {said}"
    );
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    let seen = observer.finish();
    seen.print(1, None);
    println!("{}: {}", brief(&s), s.reason);
    let hx = s.hosts.iter().find(|h| h.host_id == x).expect("x");
    println!("{x}: {} — {}", hx.state().word(), hx.reason);
    assert_eq!(hx.state(), HostState::Failed, "{}", brief(&s));
    assert!(
        hx.reason.contains("fenced by an operator"),
        "{:?}",
        hx.reason
    );
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    assert!(
        s.reason.contains("1 failed within max_failures = 1"),
        "{:?}",
        s.reason
    );
    for h in s.hosts.iter().filter(|h| h.host_id != x) {
        assert_eq!(h.state(), HostState::Done, "{}", brief(&s));
    }
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
