//! Issue 14 items 4.3 and 4.7, timed gates on one clock (no skew; `clock_skew.rs` has the
//! canary bake with a late replica): the next wave opens no earlier than `pause_between_waves`
//! after the previous wave ended, and after a timed canary gate no earlier than the bake time
//! after the canary was done, and not much later either (a gate that never opens fails too).
//! While held, the status names the gate and the time left. Measured times are printed.

use std::time::{Duration, Instant};

use gate_timing::{check_window, first_wave_done, wait_next_wave};
use rollgate_tests::pb::Phase;
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

mod gate_timing;

#[test]
fn the_next_wave_waits_out_the_pause_between_waves() -> anyhow::Result<()> {
    const PAUSE: Duration = Duration::from_secs(6);
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    // The budget allows all 4 at once: only the waves hold hosts back.
    let spec = fleet.spec(
        &v2,
        &format!(
            "max_unavailable = 4\nwaves = [\"50%\"]\npause_between_waves = \"{}s\"\n\
             min_healthy_time = \"500ms\"",
            PAUSE.as_secs()
        ),
    )?;
    let id = fleet.start_rollout(&spec)?;
    let (wave, s) = first_wave_done(&fleet, &id, 2)?;
    let ended = Instant::now();
    println!("wave 1 {wave:?} done: {}", brief(&s));
    let opened = wait_next_wave(&fleet, &id, &wave, "pause between waves", ended, PAUSE)?;
    check_window("pause_between_waves", opened, PAUSE);
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    Ok(())
}

#[test]
fn a_timed_canary_gate_bakes_before_wave_one() -> anyhow::Result<()> {
    const BAKE: Duration = Duration::from_secs(6);
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        &format!(
            "max_unavailable = 3\ncanary = 1\ncanary_gate = \"{}s\"\nmin_healthy_time = \"500ms\"",
            BAKE.as_secs()
        ),
    )?;
    let id = fleet.start_rollout(&spec)?;
    let (canary, s) = first_wave_done(&fleet, &id, 1)?;
    let done = Instant::now();
    println!("canary {canary:?} done: {}", brief(&s));
    let opened = wait_next_wave(&fleet, &id, &canary, "canary bake", done, BAKE)?;
    check_window("canary bake", opened, BAKE);
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    Ok(())
}
