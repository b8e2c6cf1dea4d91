//! Issue 14 items 4.3 and 4.7, timed gates on one clock (no skew; `clock_skew.rs` has the
//! canary bake with a late replica): the next wave opens no earlier than `pause_between_waves`
//! after the previous wave ended, and after a timed canary gate no earlier than the bake time
//! after the canary was done, and not much later either (a gate that never opens fails too).
//! While held, the status names the gate and the time left. Measured times are printed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use rollgate_tests::pb::{HostState, Phase, RolloutStatus};
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

/// The wave's end is seen by polling the status, so the measured wait can come out short by
/// the polling gap.
const POLL_SLACK: Duration = Duration::from_secs(1);
/// How late a gate may open on a loaded machine.
const MARGIN: Duration = Duration::from_secs(6);

/// Hosts that have left `pending`.
fn started(s: &RolloutStatus) -> BTreeSet<String> {
    s.hosts
        .iter()
        .filter(|h| h.state() != HostState::Pending)
        .map(|h| h.host_id.clone())
        .collect()
}

/// Waits until the hosts of the first wave (`first` of them) are all done, checking that no
/// other host starts meanwhile; returns them and the status that showed them done.
fn first_wave_done(
    fleet: &Fleet,
    id: &str,
    first: usize,
) -> anyhow::Result<(BTreeSet<String>, RolloutStatus)> {
    let s = fleet.wait_status(id, "the first wave done", Duration::from_secs(60), |s| {
        let done = s
            .hosts
            .iter()
            .filter(|h| h.state() == HostState::Done)
            .count();
        done >= first || started(s).len() > first
    })?;
    let now = started(&s);
    if now.len() > first {
        bail!(
            "more than {first} hosts started in the first wave: {}",
            brief(&s)
        );
    }
    Ok((now, s))
}

/// Waits until a host outside `wave` starts; returns how long that took since `since`. While
/// held, the status must have named the gate (`gate_word`) in `gate` and said why in
/// `blocked_by`.
fn wait_next_wave(
    fleet: &Fleet,
    id: &str,
    wave: &BTreeSet<String>,
    gate_word: &str,
    since: Instant,
    wait: Duration,
) -> anyhow::Result<Duration> {
    let mut gates = BTreeSet::new();
    let mut held: Option<RolloutStatus> = None;
    fleet.wait("the next wave to open", wait + MARGIN * 2, || {
        let s = fleet.status(id)?;
        if started(&s).iter().any(|h| !wave.contains(h)) {
            return Ok(Some(()));
        }
        gates.insert(s.gate.clone());
        // Between the gate opening and the first grant the status names no gate.
        if s.gate.contains(gate_word) {
            held = Some(s);
        }
        Ok(None)
    })?;
    let opened = since.elapsed();
    println!("gates seen while held: {gates:?}");
    let Some(held) = held else {
        bail!(
            "no status named the {gate_word} before the next wave opened {opened:?} after the \
             previous one ended (configured {wait:?}); gates seen: {gates:?}"
        );
    };
    println!(
        "last held at the gate: gate {:?} blocked_by {:?}",
        held.gate, held.blocked_by
    );
    assert!(
        held.blocked_by.contains("opens in"),
        "blocked_by does not say when the next wave opens: {:?}",
        held.blocked_by
    );
    Ok(opened)
}

fn check_window(what: &str, opened: Duration, wait: Duration) {
    println!("{what}: the next wave opened {opened:.2?} after the previous one ended (configured {wait:?})");
    assert!(
        opened + POLL_SLACK >= wait,
        "{what} cut short: the next wave opened {opened:?} after the previous one ended, \
         configured {wait:?}"
    );
    assert!(
        opened <= wait + MARGIN,
        "{what} held too long: {opened:?}, configured {wait:?} (+{MARGIN:?} margin)"
    );
}

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
