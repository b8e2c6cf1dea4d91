//! Clocks (issue 9, item 8): a canary bake is measured on one clock. Two replicas; coord-2's
//! wall clock runs 2 minutes behind (libfaketime). The rollout is created through coord-2 and
//! its canary (host-2) streams to coord-2, so every time stamped on the rollout and the canary's
//! steps comes from the late clock; coord-1 leads and compares. With a 15 s bake, wave 1 must not
//! open for 15 s after the canary is done. Before the fix the leader compared its own clock with
//! coord-2's stamps, saw the canary "done 2 minutes ago" and skipped the bake.

use std::process::Command;
use std::time::{Duration, Instant};

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{bin, brief, Fleet, FleetOpts, Mode};

const BAKE: Duration = Duration::from_secs(15);

#[test]
fn a_late_replica_clock_does_not_skip_a_bake() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 3,
        coordinators: 2,
        clock_offset: Some((2, -120)),
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let mut leader = fleet.wait_leader(Duration::from_secs(10))?;
    if leader == 1 {
        // The late replica must not be the one comparing: hand leadership to coord-1, then
        // bring host-2 (which lists coord-2 first) back to coord-2.
        fleet.coordinators[1].restart()?;
        leader = fleet.wait_leader_change(1, Duration::from_secs(15))?;
        fleet.agent("host-2").proc.restart()?;
        fleet.wait("host-2 back on coord-2", Duration::from_secs(20), || {
            let s = fleet.etcd_get_prefix("/rollgate/sessions/host-2")?;
            Ok(s.iter().any(|(_, v)| v.contains("coord-2")).then_some(()))
        })?;
        fleet.wait_all_serving("1.0.0")?;
    }
    assert_eq!(leader, 0, "coord-1 leads");
    let sessions = fleet.etcd_get_prefix("/rollgate/sessions/host-2")?;
    assert!(
        sessions.iter().any(|(_, v)| v.contains("coord-2")),
        "host-2 must stream to the late replica: {sessions:?}"
    );

    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec_for_hosts(
        &v2,
        &format!(
            "max_unavailable = 1\ncanary = 1\ncanary_gate = \"{}s\"\nmin_healthy_time = \"200ms\"",
            BAKE.as_secs()
        ),
        &["host-2", "host-1", "host-3"],
    )?;
    // Created through the late replica, so the rollout's own times are late too.
    let out = Command::new(bin("rollgate"))
        .arg("--coordinator")
        .arg(fleet.coordinators[1].url())
        .args(fleet.operator.cli_args())
        .args(["--output", "json", "rollout", "start"])
        .arg(&spec)
        .output()?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["id"].as_str().expect("id").to_string();

    let s = fleet.wait_status(&id, "the canary done", Duration::from_secs(30), |s| {
        s.hosts
            .iter()
            .any(|h| h.host_id == "host-2" && h.state() == HostState::Done)
    })?;
    let done_at = Instant::now();
    println!("canary done: {} (gate: {})", brief(&s), s.gate);
    let opened = fleet.wait_status(&id, "wave 1 to open", BAKE * 3, |s| {
        s.hosts
            .iter()
            .any(|h| h.host_id != "host-2" && h.state() != HostState::Pending)
    })?;
    let baked = done_at.elapsed();
    println!(
        "wave 1 opened {baked:.1?} after the canary was done (bake {BAKE:?}): {}",
        brief(&opened)
    );
    // The canary's "done" is seen by polling, so the measured bake can only come out short by
    // the polling gap; allow one second for it.
    assert!(
        baked + Duration::from_secs(1) >= BAKE,
        "the bake was cut short: wave 1 opened {baked:?} after the canary was done, bake {BAKE:?}"
    );
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    Ok(())
}
