//! An old result must not overwrite fresher health (issue 9, item 3). host-1's update finishes
//! healthy while the coordinator is down; then its service hangs (SIGSTOP: it stays up but
//! answers nothing, so its probes fail). When the coordinator is back, host-1's hello says
//! "unhealthy" and replays the older "succeeded, healthy" result. The coordinator must show
//! host-1 unhealthy and count it: a rollout with `max_unavailable = 1` may then start no other
//! host. Before the fix the replayed result overwrote the hello: host-1 showed healthy.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use rollgate_tests::pb::{HostState, Step};
use rollgate_tests::{service_pids, Fleet, FleetOpts, Mode};

#[test]
fn a_replayed_result_never_overwrites_the_hellos_health() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        supervise: false,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"2s\"";
    let id = fleet.start_rollout(&fleet.spec_for_hosts(&v2, strategy, &["host-1"])?)?;
    fleet.wait_status(&id, "host-1 verifying", Duration::from_secs(30), |s| {
        s.hosts[0].step() == Step::Verifying
    })?;
    fleet.coordinator().kill9();
    println!("coordinator killed while host-1 verifies 2.0.0");

    let journal = fleet.host("host-1").state_dir.join("agent-state.json");
    fleet.wait(
        "host-1 to finish 2.0.0 on its own",
        Duration::from_secs(30),
        || {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&journal)?)?;
            Ok(succeeded(&v, &id).then_some(()))
        },
    )?;
    let log = fleet.host("host-1").proc.log.clone();
    let before = std::fs::read_to_string(&log)?.len();
    let pids = service_pids(fleet.host("host-1"));
    anyhow::ensure!(!pids.is_empty(), "host-1's service is not running");
    for pid in &pids {
        kill(*pid, Signal::SIGSTOP)?;
    }
    fleet.wait(
        "host-1's agent to see its service unhealthy",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&log)?;
            Ok(text[before..].contains("web is unhealthy").then_some(()))
        },
    )?;
    fleet.coordinator().restart()?;
    fleet.wait_coordinator()?;
    fleet.wait_connected(3)?;

    // The hello's "unhealthy" stands; the older "succeeded, healthy" result only ends the step.
    let shown = fleet.wait(
        "host-1's record after its hello",
        Duration::from_secs(10),
        || {
            let hosts = fleet.hosts()?;
            let h = hosts.iter().find(|h| h.host_id == "host-1").cloned();
            Ok(h.filter(|h| h.connected))
        },
    )?;
    let health = shown.services.first().map(|s| s.health());
    println!("host-1 after the reconnect: {:?}", shown.services);
    let s = fleet.wait_settled(&id, Duration::from_secs(20))?;
    assert_eq!(
        s.hosts[0].state(),
        HostState::Done,
        "the result still ends the step: {s:?}"
    );
    assert_eq!(
        health,
        Some(rollgate_proto::pb::Health::Unhealthy),
        "the replayed result overwrote the hello's current health"
    );

    // And it counts: a rollout over the other two with a budget of 1 starts none of them.
    fleet.wait_service_free("web")?;
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let id3 =
        fleet.start_rollout(&fleet.spec_for_hosts(&v3, strategy, &["host-2", "host-3"])?)?;
    let held = fleet.hold_for(&id3, Duration::from_secs(2), |s| {
        let started: Vec<_> = s
            .hosts
            .iter()
            .filter(|h| h.state() != HostState::Pending)
            .collect();
        anyhow::ensure!(started.is_empty(), "started {started:?} while host-1 hangs");
        Ok(())
    })?;
    println!("blocked_by: {}", held.blocked_by);
    assert!(held.blocked_by.contains("host-1"), "{}", held.blocked_by);
    for pid in &pids {
        kill(*pid, Signal::SIGCONT)?;
    }
    Ok(())
}

/// Whether the journal holds a "succeeded" result of rollout `id`.
fn succeeded(v: &serde_json::Value, id: &str) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            (m.get("rollout_id").and_then(|r| r.as_str()) == Some(id)
                && m.get("outcome").and_then(|o| o.as_str()) == Some("OUTCOME_SUCCEEDED"))
                || m.values().any(|x| succeeded(x, id))
        }
        serde_json::Value::Array(a) => a.iter().any(|x| succeeded(x, id)),
        _ => false,
    }
}
