//! What an order's outcome makes of a host's step: a pure rule, with its table test.
//!
//! The rule for interrupted updates (issue 12): an agent restart in the middle of an update is
//! a fault of the host, not a verdict on the release. The restarted agent undoes the update and
//! reports `OUTCOME_INTERRUPTED`; the host's step becomes `interrupted` (neither done nor
//! failed, not counted against `max_failures`) and the planner grants it again with a new
//! token. After [`MAX_INTERRUPTIONS`] interrupted grants in one rollout the host is failed,
//! "interrupted N times by agent restarts".
//!
//! A stale token (`OUTCOME_STALE_TOKEN`: the host has acted on a token at or above the one it
//! was granted, so the counter went back, e.g. an etcd restore) is the same kind of fault: the
//! session raises the counter above the host's highest token and the host is granted again, in
//! the same bounded way.

use rollgate_proto::pb::Outcome;

use crate::store::{HostState, MAX_INTERRUPTIONS};

/// The host's state after an order ended with `outcome`, and its count of interrupted grants
/// (`before`: the count its step had).
pub fn host_state_after(outcome: Outcome, before: u32) -> (HostState, u32) {
    match outcome {
        Outcome::Succeeded => (HostState::Done, before),
        Outcome::RolledBack => (HostState::RolledBack, before),
        Outcome::Interrupted | Outcome::StaleToken if before + 1 >= MAX_INTERRUPTIONS => {
            (HostState::Failed, before + 1)
        }
        Outcome::Interrupted | Outcome::StaleToken => (HostState::Interrupted, before + 1),
        Outcome::Refused | Outcome::Failed | Outcome::Unspecified => (HostState::Failed, before),
    }
}

/// The reason the step records: the agent's, prefixed with the count when interruptions made
/// the host fail.
pub fn result_reason(state: HostState, interruptions: u32, agent_reason: &str) -> String {
    if state == HostState::Failed && interruptions >= MAX_INTERRUPTIONS {
        format!(
            "interrupted {interruptions} times (agent restarts or stale tokens); the host is \
             failed rather than granted again (last: {agent_reason})"
        )
    } else {
        agent_reason.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_make_states() {
        use HostState::*;
        // (outcome, interruptions before, state, interruptions after)
        let table = [
            (Outcome::Succeeded, 0, Done, 0),
            (Outcome::Succeeded, 2, Done, 2),
            (Outcome::RolledBack, 1, RolledBack, 1),
            (Outcome::Failed, 0, Failed, 0),
            (Outcome::Refused, 0, Failed, 0),
            (Outcome::Unspecified, 0, Failed, 0),
            (Outcome::Interrupted, 0, Interrupted, 1),
            (Outcome::Interrupted, 1, Interrupted, 2),
            (Outcome::Interrupted, 2, Failed, 3),
            (Outcome::Interrupted, 7, Failed, 8),
            (Outcome::StaleToken, 0, Interrupted, 1),
            (Outcome::StaleToken, 2, Failed, 3),
        ];
        for (outcome, before, state, after) in table {
            assert_eq!(
                host_state_after(outcome, before),
                (state, after),
                "{outcome:?} after {before}"
            );
        }
    }

    #[test]
    fn the_bound_names_the_count() {
        let r = result_reason(HostState::Failed, 3, "agent restarted");
        assert!(
            r.starts_with("interrupted 3 times (agent restarts or stale tokens)"),
            "{r}"
        );
        assert!(r.contains("agent restarted"), "{r}");
        assert_eq!(result_reason(HostState::Interrupted, 1, "x"), "x");
        assert_eq!(result_reason(HostState::Failed, 0, "bad"), "bad");
    }
}
