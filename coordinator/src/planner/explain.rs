//! The planner's report in the words the operator reads (`blocked_by`, `gate`, a phase's
//! reason). Tests (unit, CLI and end-to-end) match some of these words: change them with care.

use std::time::Duration;

use rollgate_proto::spec::human;

use super::budget::Unavailable;
use super::report::{
    Blocker, FailureCause, GateWait, Holder, Report, Response, Staging, TooManyFailures, Verdict,
};

/// Why no (more) slots are granted; empty when the rollout is moving or over.
pub fn blocked_by(report: &Report) -> String {
    blockers(&report.blockers)
}

/// What the gate after the current wave waits for; empty when not at a gate.
pub fn gate(report: &Report) -> String {
    match report.gate() {
        None => String::new(),
        Some(GateWait::Promote { .. }) => "manual promote".to_string(),
        Some(GateWait::Starting { .. }) => "gate starting".to_string(),
        Some(GateWait::Bake { left, .. }) => format!("canary bake, {} left", seconds(*left)),
        Some(GateWait::Pause { left, .. }) => {
            format!("pause between waves, {} left", seconds(*left))
        }
    }
}

/// The reason stored with a phase change (or a rollback).
pub fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::TooManyFailures(f) => failures(f),
        Verdict::Completed {
            done,
            total,
            version,
            failed,
            max_failures,
        } => {
            if *failed == 0 {
                format!("all {total} hosts run {version}")
            } else {
                format!(
                    "{done} hosts run {version}; {failed} failed within max_failures = \
                     {max_failures}"
                )
            }
        }
        Verdict::Stalled { deadline, stuck } => {
            let stuck = blockers(stuck);
            format!(
                "no progress for {} (progress_deadline); it was stuck: {}",
                human(*deadline),
                if stuck.is_empty() {
                    "no reason known"
                } else {
                    &stuck
                }
            )
        }
    }
}

/// A reason a host is out of service, as `blocked_by` says it.
pub fn unavailable(w: Unavailable) -> &'static str {
    match w {
        Unavailable::Updating => "updating",
        Unavailable::Lost => "lost mid-update",
        Unavailable::Offline => "offline",
        Unavailable::Unhealthy => "unhealthy",
    }
}

fn blockers(list: &[Blocker]) -> String {
    list.iter().map(blocker).collect::<Vec<_>>().join("; ")
}

fn blocker(b: &Blocker) -> String {
    match b {
        Blocker::Paused { reason: Some(r) } => r.clone(),
        Blocker::Paused { reason: None } => {
            "paused by an operator; `rollgate rollout resume` goes on".to_string()
        }
        Blocker::Staging(s) => staging(s),
        Blocker::Gate(g) => gate_wait(g),
        Blocker::BudgetFull { budget, holders } => format!(
            "budget full: {}/{budget} unavailable ({})",
            holders.len(),
            holder_list(holders)
        ),
        Blocker::GroupBudgetFull {
            label,
            group,
            budget,
            holders,
        } => format!(
            "{label} {group} budget full: {}/{budget} unavailable ({})",
            holders.len(),
            holder_list(holders)
        ),
        Blocker::Offline(hosts) => format!(
            "waiting for offline host(s) to reconnect: {}",
            hosts.join(", ")
        ),
        Blocker::Lost(hosts) => format!(
            "lost mid-update (its agent or its coordinator replica went away; it keeps its share of the \
             budget until it reports or `rollgate host fence` it): {}",
            hosts.join(", ")
        ),
        Blocker::Updating(hosts) => format!("waiting for {} to finish", hosts.join(", ")),
    }
}

fn staging(s: &Staging) -> String {
    let mut w = format!(
        "staging first: {}/{} targets have staged {}",
        s.staged, s.targets, s.version
    );
    if !s.cannot.is_empty() {
        let cannot: Vec<String> = s
            .cannot
            .iter()
            .map(|c| format!("{}: {}", c.host, c.reason))
            .collect();
        w.push_str(&format!("; cannot stage: {}", cannot.join("; ")));
    }
    if !s.offline.is_empty() {
        w.push_str(&format!(
            "; offline, cannot stage yet: {}",
            s.offline.join(", ")
        ));
    }
    w
}

/// What a gate waits for, and for a manual gate what the operator runs (also the reason of the
/// `gate_waiting` event).
pub fn gate_wait(g: &GateWait) -> String {
    match g {
        GateWait::Promote { canary, rollout } => format!(
            "waiting at the canary gate: the canary ({}) is done; check it, then run \
             `rollgate rollout promote {rollout}`",
            canary.join(", ")
        ),
        GateWait::Starting { wave } => format!("wave {} finished; starting its gate", wave + 1),
        GateWait::Bake { opens, left } => {
            format!(
                "baking the canary: wave {opens} opens in {}",
                seconds(*left)
            )
        }
        GateWait::Pause { opens, left } => {
            format!(
                "pausing between waves: wave {opens} opens in {}",
                seconds(*left)
            )
        }
    }
}

/// "host-3 offline", or "host-9 unhealthy (not a target)" for a host of the service outside
/// the rollout's targets.
fn holder_list(holders: &[Holder]) -> String {
    let words: Vec<String> = holders
        .iter()
        .map(|h| {
            let why = unavailable(h.why);
            if h.target {
                format!("{} {why}", h.host)
            } else {
                format!("{} {why} (not a target)", h.host)
            }
        })
        .collect();
    words.join(", ")
}

fn failures(f: &TooManyFailures) -> String {
    let why = match &f.cause {
        FailureCause::Reported(why) => why.clone(),
        FailureCause::Lost { deadline, grace } => format!(
            "lost mid-update: no report through any replica within its healthy_deadline ({}) \
             and lost_grace ({}) more; it keeps its share of the budget until it reports \
             healthy or `rollgate host fence` vouches it is gone",
            seconds(*deadline),
            seconds(*grace)
        ),
    };
    let what = format!(
        "{} host(s) failed, more than max_failures = {}; first: {}: {why}",
        f.failed, f.max_failures, f.first
    );
    match f.response {
        Response::Halt => format!("{what}. No more hosts will be started"),
        Response::Pause => format!(
            "{what}. Paused by the failure policy: `rollgate rollout resume` to go on, or \
             `rollgate rollout rollback` to go back"
        ),
        Response::RollBack => format!("{what}. Rolling back (on_failure = rollback)"),
        Response::AlreadyRollingBack => {
            format!("{what}. This is already a rollback; stopping here")
        }
    }
}

/// Whole seconds, rounded up: "3s left", not "2s 989ms left".
fn seconds(left: Duration) -> String {
    human(Duration::from_secs(left.as_millis().div_ceil(1000) as u64))
}
