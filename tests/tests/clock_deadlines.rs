//! Issue 14 item 4.1, deadlines on skewed clocks: two replicas, coord-2's wall clock off
//! (libfaketime): 3 hours ahead, or 9 minutes behind (the most a fleet's certificates allow:
//! `rollgate certs` backdates them by 10 minutes, and a replica further behind sees every
//! certificate as not yet valid and cannot speak TLS at all); coord-1 leads. The rollout is created through coord-2, so its own times are
//! stamped by the skewed clock; an offline host holds the only unit of budget, so nothing
//! moves and `progress_deadline` (L1) must end it. The leader measures that deadline on its
//! own clock: the rollout fails no earlier than the deadline after it was created (not at
//! once when coord-2 is behind) and not much later (not hours later when coord-2 is ahead).
//! Measured times are printed. Likewise `pause_between_waves`: with the rollout created
//! through coord-2, the next wave opens no earlier than the pause after the leader saw the
//! wave end, and not much later. The canary bake on a late replica is `clock_skew.rs`; the
//! agent measures `healthy_deadline` itself on its monotonic clock (the coordinator only
//! passes it the duration).

use std::process::Command;
use std::time::{Duration, Instant};

use gate_timing::{check_window, first_wave_done, wait_next_wave};
use nix::sys::signal::Signal;
use rollgate_tests::pb::Phase;
use rollgate_tests::{bin, brief, Fleet, FleetOpts, Mode};

mod gate_timing;

const PROGRESS_DEADLINE: Duration = Duration::from_secs(10);
/// How late the failure may come on a loaded machine.
const MARGIN: Duration = Duration::from_secs(8);
/// Three hours, in seconds.
const HOURS: i64 = 3 * 3600;
/// Nine minutes, in seconds.
const MINUTES: i64 = 9 * 60;

/// Starts two replicas with coord-2's clock `offset` seconds off and `agents` agents, and
/// makes coord-1 the leader.
fn skewed_fleet(offset: i64, agents: usize) -> anyhow::Result<Fleet> {
    let fleet = Fleet::start(FleetOpts {
        agents,
        coordinators: 2,
        clock_offset: Some((2, offset)),
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let mut leader = fleet.wait_leader(Duration::from_secs(10))?;
    if leader == 1 {
        // The skewed replica must not be the one comparing: hand leadership to coord-1.
        fleet.coordinators[1].restart()?;
        leader = fleet.wait_leader_change(1, Duration::from_secs(15))?;
    }
    anyhow::ensure!(leader == 0, "coord-1 does not lead");
    Ok(fleet)
}

/// Starts a rollout through coord-2 (the skewed replica); returns its id and when the CLI
/// started and returned.
fn start_through_coord_2(
    fleet: &Fleet,
    spec: &std::path::Path,
) -> anyhow::Result<(String, Instant, Instant)> {
    let before = Instant::now();
    let out = Command::new(bin("rollgate"))
        .arg("--coordinator")
        .arg(fleet.coordinators[1].url())
        .args(fleet.operator.cli_args())
        .args(["--output", "json", "rollout", "start"])
        .arg(spec)
        .output()?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let created = Instant::now();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["id"].as_str().expect("id").to_string();
    Ok((id, before, created))
}

/// Stalls a rollout created through the skewed replica; checks when it fails and why.
fn stalled_rollout_fails(offset: i64) -> anyhow::Result<()> {
    let mut fleet = skewed_fleet(offset, 3)?;
    fleet.agent("host-3").proc.signal(Signal::SIGSTOP);
    fleet.wait("host-3 offline", Duration::from_secs(15), || {
        let hosts = fleet.hosts()?;
        Ok(hosts
            .iter()
            .find(|h| h.host_id == "host-3" && !h.connected)
            .map(|_| ()))
    })?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        &format!(
            "max_unavailable = 1\nhealthy_deadline = \"5s\"\nprogress_deadline = \"{}s\"",
            PROGRESS_DEADLINE.as_secs()
        ),
    )?;
    let (id, before, created) = start_through_coord_2(&fleet, &spec)?;
    let s = fleet.wait_status(
        &id,
        "the stalled rollout to fail",
        PROGRESS_DEADLINE + MARGIN * 2,
        |s| s.phase() != Phase::Rolling,
    );
    let took = created.elapsed();
    // The rollout cannot have been created before the CLI was started.
    let since_start = before.elapsed();
    fleet.agent("host-3").proc.signal(Signal::SIGCONT);
    let s = s?;
    println!(
        "coord-2's clock {:+}s: created through it, failed {took:.1?} after (progress_deadline \
         {PROGRESS_DEADLINE:?}, margin {MARGIN:?}): {}",
        offset, s.reason
    );
    assert_eq!(s.phase(), Phase::Failed, "{}", brief(&s));
    assert!(
        s.reason.contains("progress_deadline") && s.reason.contains("host-3"),
        "the reason does not say the deadline passed or what blocked it: {:?}",
        s.reason
    );
    assert!(
        since_start >= PROGRESS_DEADLINE,
        "the progress deadline fired early: {took:?} after the rollout was created"
    );
    assert!(
        took <= PROGRESS_DEADLINE + MARGIN,
        "the progress deadline fired late: {took:?}"
    );
    Ok(())
}

#[test]
fn progress_deadline_is_not_cut_short_by_a_replica_clock_behind() -> anyhow::Result<()> {
    stalled_rollout_fails(-MINUTES)
}

#[test]
fn progress_deadline_is_not_put_off_by_a_replica_clock_hours_ahead() -> anyhow::Result<()> {
    stalled_rollout_fails(HOURS)
}

/// The pause between waves, with the rollout created through a replica whose clock is
/// `offset` seconds off.
fn pause_between_waves_on_the_leaders_clock(offset: i64) -> anyhow::Result<()> {
    const PAUSE: Duration = Duration::from_secs(6);
    let fleet = skewed_fleet(offset, 4)?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        &format!(
            "max_unavailable = 4\nwaves = [\"50%\"]\npause_between_waves = \"{}s\"\n\
             min_healthy_time = \"500ms\"",
            PAUSE.as_secs()
        ),
    )?;
    let (id, _, _) = start_through_coord_2(&fleet, &spec)?;
    let (wave, s) = first_wave_done(&fleet, &id, 2)?;
    let ended = Instant::now();
    let sessions = fleet.etcd_get_prefix("/rollgate/sessions/")?;
    let on_coord_2: Vec<&String> = sessions
        .iter()
        .filter(|(_, v)| v.contains("coord-2"))
        .map(|(k, _)| k)
        .collect();
    println!(
        "wave 1 {wave:?} done (sessions on coord-2: {on_coord_2:?}): {}",
        brief(&s)
    );
    let opened = wait_next_wave(&fleet, &id, &wave, "pause between waves", ended, PAUSE)?;
    check_window(
        &format!("pause_between_waves, coord-2's clock {offset:+}s"),
        opened,
        PAUSE,
    );
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    Ok(())
}

#[test]
fn pause_between_waves_holds_with_a_replica_clock_behind() -> anyhow::Result<()> {
    pause_between_waves_on_the_leaders_clock(-MINUTES)
}

#[test]
fn pause_between_waves_ends_with_a_replica_clock_hours_ahead() -> anyhow::Result<()> {
    pause_between_waves_on_the_leaders_clock(HOURS)
}
