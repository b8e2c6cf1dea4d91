//! The progress deadline on the leader's clock.
use super::*;

/// Stamps hours off (a replica with a skewed clock wrote them) do not move the deadline when
/// the leader says when it saw the progress: it passes `progress_deadline` after that, not at
/// once (stamps behind) and not hours later (stamps ahead).
#[test]
fn progress_deadline_counts_from_when_the_leader_saw_the_progress() {
    const HOURS: i64 = 3 * 3600 * 1000;
    let deadline = Duration::from_secs(600).as_millis() as i64;
    for skew in [-HOURS, HOURS] {
        let mut w = world(3, strategy(Budget::Count(1)));
        w.fleet.connected.remove("h1"); // offline: holds the only unit of budget
        w.rollout.created_at_ms = NOW + skew;
        w.rollout.updated_at_ms = NOW + skew;
        w.progress_seen = Some(NOW);
        let p = w.plan();
        assert!(p.phase.is_none(), "skew {skew}: {p:?}");
        assert_eq!(p.wake_at_ms, Some(NOW + deadline), "skew {skew}");
        w.now = NOW + deadline - 1;
        assert!(w.plan().phase.is_none(), "skew {skew}: fired early");
        w.now = NOW + deadline;
        let (phase, why) = w.plan().phase.expect("stalled");
        assert_eq!(phase, Phase::Failed, "skew {skew}");
        assert!(
            why.contains("progress_deadline") && why.contains("h1"),
            "{why}"
        );
    }
}
