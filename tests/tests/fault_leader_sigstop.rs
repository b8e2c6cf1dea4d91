//! S3 with two replicas: the leader is SIGSTOPped past its lease TTL, the other replica takes
//! over, then the old leader is continued (it still believes it leads until it looks). No host
//! may be granted twice: the final status carries one distinct token per host, and every
//! agent's journal shows exactly one order acted on for this rollout. The observer never sees
//! more than the budget down, and the rollout finishes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{brief, Expected, Fleet, FleetOpts, LEASE_TTL_SECS};

#[test]
fn deposed_leader_grants_nothing_after_it_wakes_up() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 6,
        start_delay_ms: 200,
        coordinators: 2,
        ..FleetOpts::default()
    })?;
    fleet.expect_exits(
        "coordinators",
        Expected::Exit,
        "a leader stopped past its lease TTL ends when it wakes (its lease is gone)",
    );
    let (observer, id, at_stop) = fleet.mid_rollout(
        "max_unavailable = 2\nmin_healthy_time = \"1500ms\"\nhealthy_deadline = \"30s\"\nmax_failures = 6",
        "some hosts updating",
        |s| { s.hosts.iter().any(|h| h.state() == HostState::Updating) },
    )?;
    let old = fleet.wait_leader(Duration::from_secs(10))?;
    let old_id = fleet.coordinators[old].id.clone();
    fleet.coordinators[old].signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    println!("SIGSTOPped the leader {old_id}: {}", brief(&at_stop));
    let new = fleet.wait_leader_change(old, Duration::from_secs(15))?;
    println!(
        "{} leads {:?} after the stop",
        fleet.coordinators[new].id,
        stopped.elapsed()
    );
    // Let the new leader change something (grant or finish a host) before the old one wakes
    // up with its stale view; if it cannot within a while, wake the old one anyway.
    let snapshot = |s: &rollgate_tests::pb::RolloutStatus| -> Vec<(String, HostState)> {
        s.hosts
            .iter()
            .map(|h| (h.host_id.clone(), h.state()))
            .collect()
    };
    let states_at_stop = snapshot(&at_stop);
    let moved = fleet
        .wait_status(
            &id,
            "the new leader to move a host",
            Duration::from_secs(10),
            |s| snapshot(s) != states_at_stop,
        )
        .map(|s| brief(&s));
    println!("before SIGCONT: {moved:?}");
    // Keep it stopped past its lease TTL whatever happened above.
    let past_ttl = Duration::from_secs(LEASE_TTL_SECS) + Duration::from_secs(1);
    if let Some(rest) = past_ttl.checked_sub(stopped.elapsed()) {
        std::thread::sleep(rest);
    }
    fleet.coordinators[old].signal(Signal::SIGCONT);
    println!("SIGCONT {old_id} after {:?}", stopped.elapsed());

    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    let seen = observer.finish();
    seen.print(2, None);
    println!("supervisor: {:?}", fleet.coordinator_restarts());
    println!(
        "leader now: {:?}",
        fleet.leader()?.map(|i| &fleet.coordinators[i].id)
    );

    // One distinct token per host in the final status.
    let tokens: BTreeMap<&str, u64> = s
        .hosts
        .iter()
        .map(|h| (h.host_id.as_str(), h.token))
        .collect();
    println!("tokens: {tokens:?}");
    let distinct: BTreeSet<u64> = tokens.values().copied().collect();
    assert!(
        tokens.values().all(|t| *t > 0),
        "a host has no token: {s:?}"
    );
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "two hosts share a token: {tokens:?}"
    );
    // Each agent acted on exactly one order of this rollout (its journal's results); stale
    // orders it refused (S4) show in its log.
    for a in &fleet.agents {
        let path = a.state_dir.join("agent-state.json");
        let journal: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let acted: BTreeSet<u64> = journal["recent_results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["rollout_id"] == id.as_str() && r["outcome"] != "OUTCOME_REFUSED")
            .filter_map(|r| r["token"].as_u64())
            .collect();
        let refused = std::fs::read_to_string(&a.proc.log)?
            .lines()
            .filter(|l| l.contains("stale order"))
            .count();
        println!(
            "{}: acted on tokens {acted:?} for {id}; refused {refused} stale order(s)",
            a.id
        );
        assert_eq!(
            acted.len(),
            1,
            "{} acted on {} orders of {id} (granted twice?): {acted:?}",
            a.id,
            acted.len()
        );
        assert_eq!(
            acted.iter().next().copied(),
            tokens.get(a.id.as_str()).copied(),
            "{}: the token it acted on is not the one in the status",
            a.id
        );
    }
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    fleet.wait_all_serving("2.0.0")?;
    assert!(
        seen.max_unavailable <= 2,
        "budget broken: the observer saw {} down (budget 2): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
