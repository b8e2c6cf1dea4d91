//! Timing the gate between two waves: waits for the first wave's end, then for the next
//! wave to open, checking what the status says meanwhile (for wave_gates.rs and
//! clock_deadlines.rs).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use rollgate_tests::pb::{HostState, RolloutStatus};
use rollgate_tests::{brief, Fleet};

/// The wave's end is seen by polling the status, so the measured wait can come out short by
/// the polling gap.
pub const POLL_SLACK: Duration = Duration::from_secs(1);
/// How late a gate may open on a loaded machine.
pub const MARGIN: Duration = Duration::from_secs(6);

/// Hosts that have left `pending`.
pub fn started(s: &RolloutStatus) -> BTreeSet<String> {
    s.hosts
        .iter()
        .filter(|h| h.state() != HostState::Pending)
        .map(|h| h.host_id.clone())
        .collect()
}

/// Waits until the hosts of the first wave (`first` of them) are all done, checking that no
/// other host starts meanwhile; returns them and the status that showed them done.
pub fn first_wave_done(
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
pub fn wait_next_wave(
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

pub fn check_window(what: &str, opened: Duration, wait: Duration) {
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
