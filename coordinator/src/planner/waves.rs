//! Staging and waves: stage_first, the waves' bounds, and the gate after each wave.

use std::time::Duration;

use rollgate_proto::spec::{Gate, Strategy};

use super::report::{Blocker, GateWait, StageRefusal, Staging};
use super::{Observed, Progress, Progresses, WaveStamp};
use crate::store::{RolloutRecord, WaveGate};

/// Cumulative ends of the waves: the canary, then `waves`, then the rest. Rollbacks have one
/// wave.
pub fn wave_bounds(strategy: &Strategy, targets: usize, rollback: bool) -> Vec<usize> {
    let mut bounds = Vec::new();
    if !rollback {
        if let Some(c) = strategy.canary {
            bounds.push((c.resolve(targets) as usize).min(targets));
        }
        for w in &strategy.waves {
            let b = (w.resolve(targets) as usize).min(targets);
            if b > bounds.last().copied().unwrap_or(0) {
                bounds.push(b);
            }
        }
    }
    if bounds.last().copied() != Some(targets) {
        bounds.push(targets);
    }
    bounds
}

/// The open wave (counted from 0) and the targets up to its end.
pub(super) fn open_wave<'a>(o: &Observed<'a>, bounds: &[usize]) -> (usize, &'a [String]) {
    let wave = (o.rollout.wave as usize).min(bounds.len() - 1);
    (wave, &o.rollout.targets[..bounds[wave]])
}

/// Step 4, staging (stage_first): every target staged before the first slot.
pub(super) fn staging(o: &Observed<'_>, progress: &Progresses<'_>) -> Option<Blocker> {
    let r = o.rollout;
    let staged_ok = |h: &String| o.staged.get(h).is_some_and(|s| s.ok);
    let done = r
        .targets
        .iter()
        .all(|h| staged_ok(h) || progress[h] != Progress::Pending);
    if !r.spec.strategy.stage_first || done {
        return None;
    }
    let cannot = r
        .targets
        .iter()
        .filter_map(|h| {
            let s = o.staged.get(h).filter(|s| !s.ok)?;
            let (host, reason) = (h.clone(), s.reason.clone());
            Some(StageRefusal { host, reason })
        })
        .collect();
    let offline = r
        .targets
        .iter()
        .filter(|h| !o.staged.contains_key(*h) && !o.fleet.is_connected(h))
        .cloned()
        .collect();
    Some(Blocker::Staging(Staging {
        staged: r.targets.iter().filter(|h| staged_ok(h)).count(),
        targets: r.targets.len(),
        version: r.spec.release.version.clone(),
        cannot,
        offline,
    }))
}

/// Where the rollout stands at the gate after the open wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GateStep {
    /// The open wave is still running, or it is the last one.
    NotAtGate,
    /// The gate has passed: open this wave.
    Pass(u32),
    /// Held at the gate.
    Held(Held),
}

/// Held at a gate: what for, and what the leader does meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    /// What it waits for.
    pub wait: GateWait,
    /// The wave's end is not stamped yet: the leader stamps it with its own clock.
    pub stamp: Option<WaveStamp>,
    /// When a timed gate opens.
    pub opens_at_ms: Option<i64>,
}

/// Step 5, the wave gate: once the open wave is final, a manual promote, a canary bake or the
/// pause between waves holds the next one.
pub(super) fn wave_gate(o: &Observed<'_>, progress: &Progresses<'_>, bounds: &[usize]) -> GateStep {
    let r = o.rollout;
    let st = &r.spec.strategy;
    let (wave, open) = open_wave(o, bounds);
    if wave + 1 >= bounds.len() || !open.iter().all(|h| progress[h].is_final()) {
        return GateStep::NotAtGate;
    }
    let held = |wait, stamp, opens_at_ms| {
        GateStep::Held(Held {
            wait,
            stamp,
            opens_at_ms,
        })
    };
    let canary_gate = wave == 0 && st.canary.is_some() && r.rollback_of.is_none();
    let wave = wave as u32;
    let wait = match st.canary_gate {
        Gate::Manual if canary_gate => {
            let canary = open.to_vec();
            let rollout = r.id.clone();
            // Stamped once, so the event log announces the wait once (`gate_waiting`).
            let stamp = unstamped(r, wave).then_some(WaveStamp {
                wave,
                gate: WaveGate::Manual,
            });
            return held(GateWait::Promote { canary, rollout }, stamp, None);
        }
        Gate::Bake(d) if canary_gate => d,
        _ => st.pause_between_waves,
    };
    if unstamped(r, wave) {
        // Clocks: the steps' times come from whichever replica served each host. The wait
        // starts when the leader stamps the wave's end with its own clock.
        let stamp = WaveStamp {
            wave,
            gate: WaveGate::Timed,
        };
        return held(GateWait::Starting { wave }, Some(stamp), None);
    }
    let done_at = r.wave_done.map_or(r.updated_at_ms, |w| w.at_ms);
    let opens_at = done_at + wait.as_millis() as i64;
    if o.now_ms >= opens_at {
        return GateStep::Pass(wave + 1);
    }
    let left = Duration::from_millis((opens_at - o.now_ms) as u64);
    let opens = wave + 1;
    let wait = if canary_gate {
        GateWait::Bake { opens, left }
    } else {
        GateWait::Pause { opens, left }
    };
    held(wait, None, Some(opens_at))
}

/// Whether the leader has not stamped the end of `wave` yet (the stamp is durable: a new leader
/// sees it and does not stamp, or announce, the same gate again).
fn unstamped(r: &RolloutRecord, wave: u32) -> bool {
    r.wave_done.is_none_or(|w| w.wave != wave)
}
