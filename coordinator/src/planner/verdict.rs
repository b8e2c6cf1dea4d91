//! Failures and completion: which targets count as failed, what the failure policy decides,
//! and when a rollout is over.

use rollgate_proto::spec::OnFailure;

use super::report::{FailureCause, Response, TooManyFailures, Verdict};
use super::{Decision, Observed, Progress, Progresses};
use crate::store::{AgentStep, Phase, ServiceState};

/// The targets that count as failed.
#[derive(Debug, Clone, Default)]
pub(super) struct Failures {
    /// Failed targets, in target order.
    pub hosts: Vec<String>,
}

/// Step 2a, failures: failed, refused or fenced targets, a target whose agent is rolling back
/// (its verdict; lost since or not), and a done target whose release regressed after its
/// commit. Neither an interrupted target (its agent restarted mid-update and undid it) nor a
/// lost one (its agent or its replica went away mid-update) is otherwise a failure: both are
/// faults of the host or the network, not verdicts on the release. A lost target keeps its
/// share of the budget until it reports (S2); if it never does, the progress deadline (L1)
/// ends the rollout as stalled, naming it, or an operator fences it (which fails it).
pub(super) fn failures(o: &Observed<'_>, progress: &Progresses<'_>) -> Failures {
    let mut out = Failures::default();
    for h in &o.rollout.targets {
        let step = o.steps.get(h);
        let failed = match progress[h] {
            Progress::RolledBack | Progress::Failed => true,
            // The agent's failure verdict: it is rolling back. Halting now rather than when
            // the rollback has finished keeps "a bad release halts within one probe interval
            // of its verdict", also when the host is lost after saying so.
            Progress::Updating | Progress::Lost => {
                step.is_some_and(|s| s.step == AgentStep::RollingBack)
            }
            // Passed its checks and committed, then regressed within the agent's
            // watch_after_commit: a verdict on the release all the same.
            Progress::Done => regression(o, h).is_some(),
            _ => false,
        };
        if failed {
            out.hosts.push(h.clone());
        }
    }
    out
}

/// The host's report that this rollout's release regressed there after its commit
/// (`watch_after_commit`), if it made one and has not been healthy since.
fn regression<'a>(o: &Observed<'a>, host: &str) -> Option<&'a ServiceState> {
    let r = o.rollout;
    o.fleet
        .hosts
        .get(host)
        .and_then(|h| h.services.get(&r.spec.service))
        .filter(|s| s.regressed && s.version == r.spec.release.version)
}

/// Step 2b, the failure verdict: more failures than max_failures (or than an operator
/// accepted) while rolling, and what on_failure does about it.
pub(super) fn failure_verdict(o: &Observed<'_>, failed: &[String]) -> Option<Decision> {
    let r = o.rollout;
    let st = &r.spec.strategy;
    let allowed = st
        .max_failures
        .resolve(r.targets.len())
        .max(r.tolerated_failures) as usize;
    if failed.len() <= allowed || r.phase != Phase::Rolling {
        return None;
    }
    let first = &failed[0];
    // The result's reason; halted at the agent's "rolling back" step (the result is still to
    // come), its progress message says why it is rolling back.
    // A regression's words are the agent's (its status); otherwise the result's reason, or
    // while the host rolls back, its progress message.
    let cause = FailureCause::Reported(match regression(o, first) {
        Some(state) => state.detail.clone(),
        None => o
            .steps
            .get(first)
            .map(|s| {
                if s.reason.is_empty() {
                    s.message.clone()
                } else {
                    s.reason.clone()
                }
            })
            .unwrap_or_default(),
    });
    let verdict = |response| {
        Verdict::TooManyFailures(TooManyFailures {
            failed: failed.len(),
            max_failures: st.max_failures,
            first: first.clone(),
            cause: cause.clone(),
            response,
        })
    };
    Some(match st.on_failure {
        OnFailure::Halt => Decision::SetPhase(Phase::Failed, verdict(Response::Halt)),
        OnFailure::Pause => Decision::SetPhase(Phase::Paused, verdict(Response::Pause)),
        OnFailure::Rollback if r.rollback_of.is_none() => {
            Decision::StartRollback(verdict(Response::RollBack))
        }
        OnFailure::Rollback => {
            Decision::SetPhase(Phase::Failed, verdict(Response::AlreadyRollingBack))
        }
    })
}

/// Step 3, completion: every target is final (done, rolled back or failed within the budget).
pub(super) fn completion(
    o: &Observed<'_>,
    progress: &Progresses<'_>,
    failed: &[String],
) -> Option<Verdict> {
    let r = o.rollout;
    if !r.targets.iter().all(|h| progress[h].is_final()) {
        return None;
    }
    let done = r
        .targets
        .iter()
        .filter(|h| progress[*h] == Progress::Done && !failed.contains(*h))
        .count();
    Some(Verdict::Completed {
        done,
        total: r.targets.len(),
        version: r.spec.release.version.clone(),
        failed: failed.len(),
        max_failures: r.spec.strategy.max_failures,
    })
}
