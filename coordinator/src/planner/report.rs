//! The planner's report: why it decided what it did, as data. `explain` turns it into words.

use std::time::Duration;

use rollgate_proto::spec::FailureBudget;

use super::budget::{GroupUse, Unavailable};

/// What the planner saw and why it decided as it did; the status API renders it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Hosts of the service out of service right now, with why (they count against the budget).
    pub unavailable: Vec<(String, Unavailable)>,
    /// Per-group use of the budget (with group_by).
    pub groups: Vec<GroupUse>,
    /// Cumulative end of each wave in the target list.
    pub waves: Vec<usize>,
    /// Hosts whose failure counts against max_failures.
    pub failures: Vec<String>,
    /// Why no (more) slots are granted, in the order the operator reads them; empty when the
    /// rollout is moving or over.
    pub blockers: Vec<Blocker>,
}

impl Report {
    /// The gate the rollout waits at, if it does.
    pub fn gate(&self) -> Option<&GateWait> {
        self.blockers.iter().find_map(|b| match b {
            Blocker::Gate(g) => Some(g),
            _ => None,
        })
    }
}

/// One reason no (more) slots are granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// Paused, by an operator or by the failure policy (its stored reason, if any).
    Paused {
        /// The reason stored with the pause; `None` when it has none.
        reason: Option<String>,
    },
    /// stage_first: not every target has staged the release yet.
    Staging(Staging),
    /// The open wave is done and its gate holds the next one.
    Gate(GateWait),
    /// The rollout's budget is used up by these hosts.
    BudgetFull {
        /// max_unavailable.
        budget: u32,
        /// Every host out of service now.
        holders: Vec<Holder>,
    },
    /// A group's budget is used up by these hosts.
    GroupBudgetFull {
        /// The group_by label.
        label: String,
        /// The label's value.
        group: String,
        /// The group's budget.
        budget: u32,
        /// The group's hosts out of service now.
        holders: Vec<Holder>,
    },
    /// Pending targets of the open wave that have no live session.
    Offline(Vec<String>),
    /// Targets lost mid-update (S2): they keep their share of the budget until they report.
    Lost(Vec<String>),
    /// Nothing else holds the rollout: these targets are still updating.
    Updating(Vec<String>),
}

/// How far staging has come (stage_first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staging {
    /// Targets that staged the release.
    pub staged: usize,
    /// All targets.
    pub targets: usize,
    /// The release being staged.
    pub version: String,
    /// Targets that reported they cannot stage.
    pub cannot: Vec<StageRefusal>,
    /// Targets with no report that are offline.
    pub offline: Vec<String>,
}

/// A target that reported it cannot stage the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRefusal {
    /// The target.
    pub host: String,
    /// Its agent's reason.
    pub reason: String,
}

/// What the gate after the open wave waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateWait {
    /// The canary is done; an operator checks it and promotes.
    Promote {
        /// The canary's hosts.
        canary: Vec<String>,
        /// The rollout to promote.
        rollout: String,
    },
    /// Wave `wave` (counted from 0) finished; the leader stamps its end before the wait starts.
    Starting {
        /// The wave that finished, counted from 0.
        wave: u32,
    },
    /// The canary bakes; wave `opens` opens after `left`.
    Bake {
        /// The wave that opens next, counted from 0.
        opens: u32,
        /// Time left.
        left: Duration,
    },
    /// The pause between waves; wave `opens` opens after `left`.
    Pause {
        /// The wave that opens next, counted from 0.
        opens: u32,
        /// Time left.
        left: Duration,
    },
}

/// A host out of service, as a budget blocker names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The host.
    pub host: String,
    /// Why it is out of service.
    pub why: Unavailable,
    /// Whether it is one of the rollout's targets (or another host of the service).
    pub target: bool,
}

/// Why a rollout moves to another phase (or rolls back): stored as its reason, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// More hosts failed than max_failures allows.
    TooManyFailures(TooManyFailures),
    /// Every target is final.
    Completed {
        /// Targets on the new release.
        done: usize,
        /// All targets.
        total: usize,
        /// The release.
        version: String,
        /// Failures within max_failures.
        failed: usize,
        /// The failure budget.
        max_failures: FailureBudget,
    },
    /// L1: nothing moved for progress_deadline; what held it.
    Stalled {
        /// progress_deadline.
        deadline: Duration,
        /// What held the rollout (none known when empty).
        stuck: Vec<Blocker>,
    },
}

/// The failure verdict: how many failed, the first one, and what the policy does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyFailures {
    /// Hosts that failed.
    pub failed: usize,
    /// The failure budget.
    pub max_failures: FailureBudget,
    /// The first target that failed.
    pub first: String,
    /// Why it failed.
    pub cause: FailureCause,
    /// What the failure policy does about it.
    pub response: Response,
}

/// Why the first failed host counts as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    /// The agent's own words: the result's reason, or while rolling back its progress message.
    Reported(String),
    /// Lost mid-update (its agent or its replica gone) and silent past `healthy_deadline` and
    /// `lost_grace` ([`super::verdict::lost_failure_at`]).
    Lost {
        /// Its `healthy_deadline`.
        deadline: std::time::Duration,
        /// Its `lost_grace`.
        grace: std::time::Duration,
    },
}

/// What on_failure does with a failure verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Halt: no more hosts start.
    Halt,
    /// Pause for an operator.
    Pause,
    /// Start a rollback.
    RollBack,
    /// on_failure = rollback, but this is already a rollback: halt.
    AlreadyRollingBack,
}
