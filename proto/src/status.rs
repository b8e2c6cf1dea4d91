//! The closed sets on the wire (phase, host state, step, health, outcome, failure policy):
//! the word a person reads for each value, and the rules that decide on them. Every part asks
//! these questions here, never by comparing words.

use crate::pb::{self, HostState, Phase, RolloutStatus};

/// How many times a host's update may be interrupted by agent restarts in one rollout before
/// the host counts as failed ("interrupted 3 times (agent restarts or stale tokens)"): a host whose agent
/// dies on every attempt has a problem of its own that retrying does not fix. Interrupted
/// attempts before that are retried and never count against `max_failures`.
pub const MAX_INTERRUPTIONS: u32 = 3;

impl Phase {
    /// The rollout has ended: it grants no more slots, ever, and an operator can no longer
    /// pause, resume, promote or abort it. Its phase may still move when it is rolled back
    /// (`failed` → `rolling_back` → `rolled_back`), but by its rollback, not by itself.
    pub fn has_ended(self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::Failed
                | Phase::Aborted
                | Phase::RollingBack
                | Phase::RolledBack
        )
    }

    /// The phase stays as it is unless an operator rolls the rollout back: it has ended and
    /// is not waiting for its rollback (`rolling_back` moves on when the rollback finishes).
    pub fn is_final(self) -> bool {
        self.has_ended() && self != Phase::RollingBack
    }

    /// The word operators read (also its JSON name): "rolling_back"; "unreadable" for the
    /// unspecified phase of a list entry that cannot be read.
    pub fn word(self) -> &'static str {
        match self {
            Phase::Unspecified => "unreadable",
            Phase::Rolling => "rolling",
            Phase::Paused => "paused",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
        }
    }
}

impl HostState {
    /// The word operators read (also its JSON name): "rolled_back"; "" when not set.
    pub fn word(self) -> &'static str {
        match self {
            HostState::Unspecified => "",
            HostState::Pending => "pending",
            HostState::Updating => "updating",
            HostState::Done => "done",
            HostState::RolledBack => "rolled_back",
            HostState::Failed => "failed",
            HostState::Lost => "lost",
            HostState::Interrupted => "interrupted",
        }
    }
}

impl pb::OnFailure {
    /// The word operators read, as in the spec: "halt", "pause", "rollback"; "" when not set.
    pub fn word(self) -> &'static str {
        match self {
            pb::OnFailure::Unspecified => "",
            pb::OnFailure::Halt => "halt",
            pb::OnFailure::Pause => "pause",
            pb::OnFailure::Rollback => "rollback",
        }
    }
}

impl From<crate::spec::OnFailure> for pb::OnFailure {
    fn from(p: crate::spec::OnFailure) -> Self {
        match p {
            crate::spec::OnFailure::Halt => pb::OnFailure::Halt,
            crate::spec::OnFailure::Pause => pb::OnFailure::Pause,
            crate::spec::OnFailure::Rollback => pb::OnFailure::Rollback,
        }
    }
}

impl pb::Health {
    /// Short lowercase word for CLI output and logs.
    pub fn word(self) -> &'static str {
        match self {
            pb::Health::Unknown => "unknown",
            pb::Health::Healthy => "healthy",
            pb::Health::Unhealthy => "unhealthy",
            pb::Health::Stopped => "stopped",
        }
    }
}

impl pb::Step {
    /// Short lowercase word for CLI output and logs ("rolling back"; "" for none).
    pub fn word(self) -> &'static str {
        match self {
            pb::Step::Unspecified => "",
            pb::Step::Accepted => "accepted",
            pb::Step::Fetching => "fetching",
            pb::Step::Staged => "staged",
            pb::Step::Swapping => "swapping",
            pb::Step::Starting => "starting",
            pb::Step::Verifying => "verifying",
            pb::Step::RollingBack => "rolling back",
        }
    }
}

impl pb::Outcome {
    /// Short lowercase word for CLI output and logs.
    pub fn word(self) -> &'static str {
        match self {
            pb::Outcome::Unspecified => "unspecified",
            pb::Outcome::Succeeded => "succeeded",
            pb::Outcome::RolledBack => "rolled back",
            pb::Outcome::Failed => "failed",
            pb::Outcome::Refused => "refused",
            pb::Outcome::Interrupted => "interrupted",
            pb::Outcome::StaleToken => "refused a stale token",
        }
    }
}

impl RolloutStatus {
    /// Some host is still in the middle of its update (holds a live slot). A halted rollout's
    /// in-flight hosts finish or roll back after its phase changes.
    pub fn has_host_in_flight(&self) -> bool {
        self.hosts.iter().any(|h| h.state() == HostState::Updating)
    }

    /// Nothing will change any more: the phase is final and no host is in the middle of its
    /// update. What `rollgate rollout watch` and the test harness wait for.
    pub fn is_settled(&self) -> bool {
        self.phase().is_final() && !self.has_host_in_flight()
    }

    /// The rollout will do nothing more itself: it has ended (a `rolling_back` one handed its
    /// hosts to the rollback named in `rolled_back_by`, which a watcher follows instead) and
    /// no host is in the middle of its update. A `WatchRollout` stream ends here.
    pub fn ends_watch(&self) -> bool {
        self.phase().has_ended() && !self.has_host_in_flight()
    }

    /// The rollout that is rolling (or rolled) this one back, which a watcher follows next.
    pub fn rollback_to_follow(&self) -> Option<&str> {
        (!self.rolled_back_by.is_empty() && self.rolled_back_by != self.id)
            .then_some(self.rolled_back_by.as_str())
    }

    /// A settled rollout did what it was for: it succeeded, or it is a rollback rollout that
    /// brought its hosts back (it reports `rolled_back` rather than `succeeded`) and was not
    /// itself rolled back.
    pub fn did_its_job(&self) -> bool {
        match self.phase() {
            Phase::Succeeded => true,
            Phase::RolledBack => !self.rollback_of.is_empty() && self.rolled_back_by.is_empty(),
            _ => false,
        }
    }
}

impl pb::EventKind {
    /// The word operators read (also its JSON name): "rollout_created", "host_granted".
    pub fn word(self) -> &'static str {
        use pb::EventKind as K;
        match self {
            K::Unspecified => "",
            K::RolloutCreated => "rollout_created",
            K::RolloutPaused => "rollout_paused",
            K::RolloutResumed => "rollout_resumed",
            K::WaveOpened => "wave_opened",
            K::GateWaiting => "gate_waiting",
            K::RolloutHalted => "rollout_halted",
            K::RolloutSucceeded => "rollout_succeeded",
            K::RolloutAborted => "rollout_aborted",
            K::RolloutRollingBack => "rollout_rolling_back",
            K::RolloutRolledBack => "rollout_rolled_back",
            K::HostGranted => "host_granted",
            K::HostStep => "host_step",
            K::HostDone => "host_done",
            K::HostRolledBack => "host_rolled_back",
            K::HostFailed => "host_failed",
            K::HostFenced => "host_fenced",
            K::HostForgotten => "host_forgotten",
            K::HostInterrupted => "host_interrupted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::HostProgress;

    const ALL: [Phase; 8] = [
        Phase::Unspecified,
        Phase::Rolling,
        Phase::Paused,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Aborted,
        Phase::RollingBack,
        Phase::RolledBack,
    ];

    #[test]
    fn ended_and_final_phases() {
        // (phase, has_ended, is_final)
        let table = [
            (Phase::Unspecified, false, false),
            (Phase::Rolling, false, false),
            (Phase::Paused, false, false),
            (Phase::Succeeded, true, true),
            (Phase::Failed, true, true),
            (Phase::Aborted, true, true),
            (Phase::RollingBack, true, false),
            (Phase::RolledBack, true, true),
        ];
        assert_eq!(table.len(), ALL.len());
        for (phase, ended, fin) in table {
            assert_eq!(phase.has_ended(), ended, "{phase:?}");
            assert_eq!(phase.is_final(), fin, "{phase:?}");
        }
    }

    #[test]
    fn words_are_the_proto_names() {
        for p in ALL.into_iter().skip(1) {
            let proto = p.as_str_name().strip_prefix("PHASE_").expect("prefix");
            assert_eq!(p.word(), proto.to_lowercase(), "{p:?}");
        }
    }

    fn status(phase: Phase, hosts: &[HostState]) -> RolloutStatus {
        let mut s = RolloutStatus {
            id: "r-1".into(),
            hosts: hosts
                .iter()
                .map(|&h| {
                    let mut p = HostProgress::default();
                    p.set_state(h);
                    p
                })
                .collect(),
            ..Default::default()
        };
        s.set_phase(phase);
        s
    }

    #[test]
    fn settled_and_watch_end() {
        use HostState::*;
        // (phase, hosts, is_settled, ends_watch)
        let table = [
            (Phase::Rolling, vec![Done], false, false),
            (Phase::Failed, vec![Updating, Done], false, false),
            (Phase::Failed, vec![RolledBack, Lost], true, true),
            (Phase::RollingBack, vec![Done], false, true),
            (Phase::RollingBack, vec![Updating], false, false),
            (Phase::Succeeded, vec![Done, Done], true, true),
            (Phase::Unspecified, vec![], false, false),
        ];
        for (phase, hosts, settled, ends) in table {
            let s = status(phase, &hosts);
            assert_eq!(s.is_settled(), settled, "{phase:?} {hosts:?}");
            assert_eq!(s.ends_watch(), ends, "{phase:?} {hosts:?}");
        }
    }

    #[test]
    fn what_did_its_job() {
        let mut s = status(Phase::Succeeded, &[]);
        assert!(s.did_its_job());
        s.set_phase(Phase::RolledBack);
        assert!(!s.did_its_job(), "an ordinary rollout that was rolled back");
        s.rollback_of = "r-0".into();
        assert!(
            s.did_its_job(),
            "a rollback rollout that brought its hosts back"
        );
        s.rolled_back_by = "r-2".into();
        assert!(!s.did_its_job());
        assert_eq!(s.rollback_to_follow(), Some("r-2"));
        s.rolled_back_by = "r-1".into();
        assert_eq!(s.rollback_to_follow(), None, "never itself");
        s.set_phase(Phase::Failed);
        assert!(!s.did_its_job());
    }
}
