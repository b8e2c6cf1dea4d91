//! Staging and waves: stage_first, the waves' bounds, and the gate after each wave.

use rollgate_proto::spec::Strategy;

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
