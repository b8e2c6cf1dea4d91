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

/// The counter goes back while host-1's session stays open (no hello to raise it): the grant
/// reaches host-1 below its highest token. host-1 refuses it as a stale token and says which
/// token it acted on; the coordinator raises the counter above it and grants host-1 again. The
/// rollout succeeds without an operator. Before the typed refusal the host was failed ("stale
/// order") and the rollout with it.
#[test]
fn a_grant_below_the_hosts_highest_token_is_granted_again_above_it() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"200ms\"";
    for version in ["2.0.0", "2.0.1"] {
        let rel = fleet.release(version, Mode::Healthy)?;
        let id = fleet.start_rollout(&fleet.spec_for_hosts(&rel, strategy, &["host-1"])?)?;
        let s = fleet.wait_settled(&id, Duration::from_secs(30))?;
        assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
        fleet.wait_service_free("web")?;
    }
    let highest = fleet
        .highest_token("host-1")?
        .expect("host-1 acted on orders");
    println!(
        "host-1's highest token: {highest}; putting the counter back to 1 under the live sessions"
    );
    fleet.etcd_put("/rollgate/token", "1")?;
    let observer = fleet.observe();
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let id = fleet.start_rollout(&fleet.spec_for_hosts(&v3, strategy, &["host-1"])?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(30))?;
    println!("after the counter went back: {}", brief(&s));
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    let token = s.hosts[0].token;
    assert!(
        token > highest,
        "granted token {token}, not above host-1's {highest}"
    );
    assert_eq!(fleet.serving("host-1").as_deref(), Some("3.0.0"));
    let log = std::fs::read_to_string(fleet.coordinator().log())?;
    let raised = log
        .lines()
        .find(|l| {
            l.contains(&format!(
                "acted on token {highest}, above the token counter"
            ))
        })
        .unwrap_or_default();
    println!("coordinator: {raised}");
    assert!(
        raised.contains("raised the counter"),
        "not logged: {raised:?}"
    );
    let agent_log = std::fs::read_to_string(&fleet.host("host-1").proc.log)?;
    let refused = agent_log
        .lines()
        .find(|l| l.contains("refused: stale order"))
        .unwrap_or_default();
    println!("host-1: {refused}");
    assert!(
        refused.contains("so it can grant again above it"),
        "host-1 did not refuse the low grant as a stale token: {refused:?}"
    );
    let seen = observer.finish();
    seen.print(1, None);
    assert!(seen.max_unavailable <= 1, "{:?}", seen.worst_set);
    Ok(())
}
