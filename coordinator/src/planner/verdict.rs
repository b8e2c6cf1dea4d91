//! Failures and completion: which targets count as failed, what the failure policy decides,
//! and when a rollout is over.

use rollgate_proto::spec::OnFailure;

use super::report::{FailureCause, Response, TooManyFailures, Verdict};
use super::{Decision, Observed, Progress, Progresses};
use crate::store::{AgentStep, HostStep, Phase, ServiceState};

/// The targets that count as failed.
#[derive(Debug, Clone, Default)]
pub(super) struct Failures {
    /// Failed targets, in target order.
    pub hosts: Vec<String>,
    /// Those of them that failed by staying lost ([`lost_failure_at`]).
    pub lost: Vec<String>,
}

/// When a lost target (its agent or its replica went away mid-update, and it has not
/// reported since) becomes a failure: `healthy_deadline` after its grant, its own verdict was
/// due; `lost_grace` more covers an agent restart, a reconnect through another replica or a
/// network blip, after which it would have reported (issue 12: a host that comes back within
/// it is no failure). It keeps its share of the budget all the same (S2).
pub(super) fn lost_failure_at(o: &Observed<'_>, step: &HostStep) -> i64 {
    let st = &o.rollout.spec.strategy;
    let silent = st.healthy_deadline.saturating_add(st.lost_grace);
    step.granted_at_ms
        .saturating_add(i64::try_from(silent.as_millis()).unwrap_or(i64::MAX))
}

/// The next time a lost target becomes a failure, for the planner's wake-up.
pub(super) fn next_lost_failure(o: &Observed<'_>, progress: &Progresses<'_>) -> Option<i64> {
    o.rollout
        .targets
        .iter()
        .filter(|h| progress[*h] == Progress::Lost)
        .filter_map(|h| o.steps.get(h))
        .map(|s| lost_failure_at(o, s))
        .filter(|at| *at > o.now_ms)
        .min()
}

/// Step 2a, failures: failed, refused or fenced targets, a target whose agent is rolling back
/// (its verdict; lost since or not), and a done target whose release regressed after its
/// commit. An interrupted target (its agent restarted mid-update and undid it) is no failure,
/// and neither is a lost one (its agent or its replica went away mid-update) while it may
/// still report: both are faults of the host or the network. A lost target silent past
/// [`lost_failure_at`] counts as failed (S2); it keeps its share of the budget until it
/// reports, or an operator fences it.
pub(super) fn failures(o: &Observed<'_>, progress: &Progresses<'_>) -> Failures {
    let mut out = Failures::default();
    for h in &o.rollout.targets {
        let step = o.steps.get(h);
        let failed = match progress[h] {
            Progress::RolledBack | Progress::Failed => true,
            // The agent's failure verdict: it is rolling back. Halting now rather than when
            // the rollback has finished keeps "a bad release halts within one probe interval
            // of its verdict", also when the host is lost after saying so.
            Progress::Updating => step.is_some_and(|s| s.step == AgentStep::RollingBack),
            Progress::Lost => step.is_some_and(|s| {
                let silent = o.now_ms >= lost_failure_at(o, s);
                if silent && s.step != AgentStep::RollingBack {
                    out.lost.push(h.clone());
                }
                s.step == AgentStep::RollingBack || silent
            }),
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
pub(super) fn failure_verdict(o: &Observed<'_>, failures: &Failures) -> Option<Decision> {
    let failed = &failures.hosts;
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
    let cause = if failures.lost.contains(first) {
        FailureCause::Lost {
            deadline: st.healthy_deadline,
            grace: st.lost_grace,
        }
    } else {
        reported_cause(o, first)
    };
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

/// The failed host's own words: a regression's status detail, the result's reason, or while it
/// rolls back its progress message.
fn reported_cause(o: &Observed<'_>, first: &str) -> FailureCause {
    FailureCause::Reported(match regression(o, first) {
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
