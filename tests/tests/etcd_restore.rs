//! After an etcd restore (issue 9, item 9). An etcd backup restored under a running fleet puts
//! the grant counter back in time, below tokens the agents have acted on since. The agents
//! report their highest token in every hello; the coordinator must raise its counter above it
//! before the host's session exists, so the next grant is accepted, without an operator. Before
//! the fix the counter stayed behind (only logged) and every grant to such a host was refused as
//! stale until an operator intervened.

use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

/// A fleet of 2 on 1.0.0 whose etcd was backed up, then rolled forward once per entry of
/// `forward` (each a one-host rollout), then restored from the backup. Returns the fleet and
/// host-1's highest token.
fn fleet_restored_after(forward: &[(&str, &str)]) -> anyhow::Result<(Fleet, u64)> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    let backup = fleet.etcd_backup("etcd-backup")?;
    fleet.wait_coordinator()?;
    fleet.wait_connected(2)?;
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"200ms\"";
    for (version, host) in forward {
        let rel = fleet.release(version, Mode::Healthy)?;
        let id = fleet.start_rollout(&fleet.spec_for_hosts(&rel, strategy, &[host])?)?;
        let s = fleet.wait_settled(&id, Duration::from_secs(30))?;
        assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
        fleet.wait_service_free("web")?;
        println!("{version} on {host}: token {}", s.hosts[0].token);
    }
    let highest = fleet
        .highest_token("host-1")?
        .expect("host-1 acted on orders");
    println!("host-1's highest token: {highest}; restoring the etcd backup taken before");
    fleet.etcd_restore(&backup)?;
    fleet.wait_connected(2)?;
    Ok((fleet, highest))
}

/// Orders 3.0.0 to host-1 on the restored fleet: the grant is above host-1's highest token, it
/// installs, the coordinator's log says why the counter moved, nothing else is disrupted.
fn restored_fleet_grants_above_the_highest(fleet: &Fleet, highest: u64) -> anyhow::Result<()> {
    let observer = fleet.observe();
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"200ms\"";
    let id = fleet.start_rollout(&fleet.spec_for_hosts(&v3, strategy, &["host-1"])?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(30))?;
    println!("after the restore: {}", brief(&s));
    let token = s.hosts[0].token;
    assert!(
        token > highest,
        "the restored coordinator handed out token {token}, not above host-1's {highest}"
    );
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(fleet.serving("host-1").as_deref(), Some("3.0.0"));
    let log = std::fs::read_to_string(fleet.coordinator().log())?;
    let raised = log
        .lines()
        .find(|l| l.contains("above the token counter"))
        .unwrap_or_default();
    println!("coordinator: {raised}");
    assert!(
        raised.contains("raised the counter"),
        "not logged: {raised:?}"
    );
    let seen = observer.finish();
    seen.print(1, None);
    assert!(seen.max_unavailable <= 1, "{:?}", seen.worst_set);
    // Ids of rollouts created after a restore never meet an old one: 64 random bits.
    assert!(
        id.len() == 18 && id.starts_with("r-") && id[2..].chars().all(|c| c.is_ascii_hexdigit()),
        "rollout id {id:?} is not r- and 16 hex digits"
    );
    Ok(())
}

/// The token host-1 would have been granted is one it never saw (host-2 got it before the
/// restore).
#[test]
fn a_restore_below_the_agents_highest_token_grants_above_it() -> anyhow::Result<()> {
    let (fleet, highest) = fleet_restored_after(&[
        ("1.0.1", "host-2"),
        ("2.0.0", "host-1"),
        ("2.0.1", "host-1"),
    ])?;
    restored_fleet_grants_above_the_highest(&fleet, highest)
}

/// The token host-1 would have been granted is one it did act on, for another rollout.
#[test]
fn a_restore_never_reuses_a_token_the_host_acted_on() -> anyhow::Result<()> {
    let (fleet, highest) = fleet_restored_after(&[("2.0.0", "host-1"), ("2.0.1", "host-1")])?;
    restored_fleet_grants_above_the_highest(&fleet, highest)
}
