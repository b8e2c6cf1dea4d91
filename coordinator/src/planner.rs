//! The planner: a pure function from a rollout's state and the observed fleet (and the time,
//! an input) to the next [`Decision`], with a [`Report`] that explains it. The driver carries
//! the decision out; the status API renders the report ([`explain`]), so what the operator
//! reads is what the leader decides on.
//!
//! Layout: [`plan`] runs named steps, each in the room that owns it: `budget` (who is out of
//! service, each group's share), `verdict` (failures, the failure policy, completion), `waves`
//! (staging, wave bounds, gates), `grants` (picking hosts, explaining a stall, the progress
//! deadline). `report` holds the structured why, `explain` its words.

use std::collections::BTreeMap;

use crate::store::{
    FleetView, HostState, HostStep, Phase, RolloutRecord, RolloutView, StageRecord, WaveGate,
};

mod budget;
pub mod explain;
mod grants;
mod report;
mod verdict;
mod waves;

pub use budget::{
    counted_hosts, group_budgets, group_in, group_of, in_flight, GroupUse, Unavailable,
};
pub use report::{
    Blocker, FailureCause, GateWait, Holder, Report, Response, StageRefusal, Staging,
    TooManyFailures, Verdict,
};
pub use waves::wave_bounds;

use grants::Deadline;
use waves::GateStep;

/// What the planner sees.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The rollout.
    pub rollout: &'a RolloutRecord,
    /// Each target's step (absent: pending).
    pub steps: &'a BTreeMap<String, HostStep>,
    /// Staging reports (stage_first).
    pub staged: &'a BTreeMap<String, StageRecord>,
    /// Hosts, sessions and live slots.
    pub fleet: &'a FleetView,
    /// The time now, by the caller's clock: the planner reads none (it stays pure).
    pub now_ms: i64,
    /// When the leader first saw the rollout's latest progress ([`progress_mark`] changing),
    /// on its own clock. The progress deadline counts from it, so a replica whose clock is off
    /// (it stamped the steps) neither cuts the deadline short nor puts it off. `None` (a
    /// status read, not a decision): from the stamps themselves ([`last_progress`]).
    pub progress_seen_ms: Option<i64>,
}

/// Where a target is, as the planner derives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// Not started.
    Pending,
    /// Holds a live slot, and its agent is connected.
    Updating,
    /// Granted, but its slot's holder (a coordinator replica) or its own agent went away, and
    /// it has not reported since.
    Lost,
    /// Its update was interrupted by an agent restart and undone: granted again like a
    /// pending host, not counted as a failure.
    Interrupted,
    /// On the new release, healthy.
    Done,
    /// Failed and back on the old release.
    RolledBack,
    /// Failed (and not back), refused, or fenced.
    Failed,
}

impl Progress {
    /// Lowercase word for the status API.
    pub fn word(self) -> &'static str {
        match self {
            Progress::Pending => "pending",
            Progress::Updating => "updating",
            Progress::Lost => "lost",
            Progress::Interrupted => "interrupted",
            Progress::Done => "done",
            Progress::RolledBack => "rolled_back",
            Progress::Failed => "failed",
        }
    }
    /// Waits for a grant: not started, or interrupted by an agent restart and undone.
    fn wants_grant(self) -> bool {
        matches!(self, Progress::Pending | Progress::Interrupted)
    }
    fn is_final(self) -> bool {
        matches!(
            self,
            Progress::Done | Progress::RolledBack | Progress::Failed
        )
    }
}

/// A target's progress: its durable step, and for `updating` whether its live slot still exists
/// and its agent is still there (an agent that died mid-update and never returns is lost, not
/// "updating" for ever).
pub fn progress(o: &Observed<'_>, host: &str) -> Progress {
    let Some(step) = o.steps.get(host) else {
        return Progress::Pending;
    };
    match step.state {
        HostState::Pending => Progress::Pending,
        HostState::Done => Progress::Done,
        HostState::RolledBack => Progress::RolledBack,
        HostState::Failed => Progress::Failed,
        HostState::Interrupted => Progress::Interrupted,
        HostState::Updating => match o.fleet.slot(&o.rollout.spec.service, host) {
            Some(slot) if slot.token == step.token && o.fleet.is_connected(host) => {
                Progress::Updating
            }
            _ => Progress::Lost,
        },
    }
}

/// Each target's progress, as derived from its step and the live slots.
type Progresses<'a> = BTreeMap<&'a String, Progress>;

/// What the driver does next for one rollout. One action per round: each writes to etcd, and
/// the write (through the watch) brings the next round, planned on what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do until something changes.
    Wait,
    /// Nothing to do until something changes, or this time at the latest (a gate opens, the
    /// progress deadline passes).
    WaitUntil(i64),
    /// Grant a slot to each host, in order.
    Grant {
        /// The hosts, in order.
        hosts: Vec<String>,
        /// When to plan again if nothing changes.
        recheck_at_ms: Option<i64>,
    },
    /// The open wave finished and its gate has no stamp yet: the leader stamps it with its own
    /// clock (so a timed wait is measured on one clock, whichever replica wrote the steps) and
    /// the gate's kind (a manual one is announced once, as `gate_waiting`, from the stamp).
    StampWave(WaveStamp),
    /// The gate passed: open this wave.
    OpenWave(u32),
    /// Move the rollout to a phase, for this reason.
    SetPhase(Phase, Verdict),
    /// The failure policy asks for a rollback, for this reason.
    StartRollback(Verdict),
}

/// The stamp the leader writes when a wave finishes (it adds its clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaveStamp {
    /// The wave that finished, counted from 0.
    pub wave: u32,
    /// What opens the gate after it.
    pub gate: WaveGate,
}

/// The planner's answer: what to do, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What the driver does.
    pub decision: Decision,
    /// Why, and the numbers the status API shows.
    pub report: Report,
}

/// Plans one rollout as read from etcd against the fleet read at the same revision;
/// `progress_seen_ms` as in [`Observed`].
pub fn plan_view(
    view: &RolloutView,
    fleet: &FleetView,
    now_ms: i64,
    progress_seen_ms: Option<i64>,
) -> Plan {
    plan(Observed {
        rollout: &view.rollout,
        steps: &view.steps,
        staged: &view.staged,
        fleet,
        now_ms,
        progress_seen_ms,
    })
}

/// Decides what happens next for one rollout.
pub fn plan(o: Observed<'_>) -> Plan {
    let r = o.rollout;
    let progress: Progresses<'_> = r.targets.iter().map(|h| (h, progress(&o, h))).collect();
    let budget = budget::budget_use(&o, &progress);
    let mut report = budget.report(&o);
    let answer = |decision, report| Plan { decision, report };
    // Counted on an ended rollout too, so its status counts the failures its reason names (a
    // done host that regressed after its commit is one).
    let failures = verdict::failures(&o, &progress);
    report.failures = failures.hosts.clone();
    if r.phase.is_terminal() {
        return answer(Decision::Wait, report);
    }
    if let Some(decision) = verdict::failure_verdict(&o, &failures) {
        return answer(decision, report);
    }
    if let Some(why) = verdict::completion(&o, &progress, &failures.hosts) {
        return answer(Decision::SetPhase(Phase::Succeeded, why), report);
    }
    let mut wake = Wake(None);
    wake.at(verdict::next_lost_failure(&o, &progress));
    if r.phase == Phase::Paused {
        let reason = Some(r.reason.clone()).filter(|s| !s.is_empty());
        report.blockers.push(Blocker::Paused { reason });
        return answer(wake.decision(), report);
    }
    report.blockers.extend(waves::staging(&o, &progress));
    let mut stamp = None;
    if report.blockers.is_empty() {
        match waves::wave_gate(&o, &progress, &report.waves) {
            GateStep::NotAtGate => {}
            GateStep::Pass(wave) => return answer(Decision::OpenWave(wave), report),
            GateStep::Held(held) => {
                stamp = held.stamp;
                wake.at(held.opens_at_ms);
                report.blockers.push(Blocker::Gate(held.wait));
            }
        }
    }
    let mut picked = grants::Picked::default();
    if report.blockers.is_empty() {
        let (_, open) = waves::open_wave(&o, &report.waves);
        picked = grants::pick(&o, &progress, &budget, open);
    }
    if !picked.hosts.is_empty() {
        return answer(wake.grant(picked.hosts), report);
    }
    grants::explain_stall(&o, &progress, &budget, &picked, &mut report.blockers);
    // L1 never fires at a manual gate: an operator decides there.
    if !matches!(report.gate(), Some(GateWait::Promote { .. })) {
        match grants::progress_deadline(&o, &report.blockers) {
            Deadline::Passed(why) => return answer(Decision::SetPhase(Phase::Failed, why), report),
            Deadline::At(at) => wake.at(Some(at)),
        }
    }
    match stamp {
        Some(stamp) => answer(Decision::StampWave(stamp), report),
        None => answer(wake.decision(), report),
    }
}

/// The earliest time the planner wants to run again without any event.
struct Wake(Option<i64>);

impl Wake {
    fn at(&mut self, at: Option<i64>) {
        if let Some(at) = at {
            self.0 = Some(self.0.map_or(at, |w| w.min(at)));
        }
    }
    /// Grant these hosts; plan again at the wake time if nothing changes before.
    fn grant(&self, hosts: Vec<String>) -> Decision {
        let recheck_at_ms = self.0;
        Decision::Grant {
            hosts,
            recheck_at_ms,
        }
    }
    /// Wait for an event, or until the wake time if there is one.
    fn decision(&self) -> Decision {
        self.0.map_or(Decision::Wait, Decision::WaitUntil)
    }
}

/// The last time anything moved: creation, a phase change, a host step, a staging report.
pub fn last_progress(o: &Observed<'_>) -> i64 {
    let r = o.rollout;
    let steps = o.steps.values().map(|s| s.updated_at_ms).max().unwrap_or(0);
    let staged = o.staged.values().map(|s| s.at_ms).max().unwrap_or(0);
    r.created_at_ms.max(r.updated_at_ms).max(steps).max(staged)
}

/// A fingerprint of every progress stamp (creation, phase changes, each host's step, each
/// staging report): it changes whenever anything moves, whichever replica's clock stamped it
/// (the newest stamp alone would miss a step stamped by a slower clock than an earlier one).
pub fn progress_mark(view: &RolloutView) -> u64 {
    use std::hash::{Hash, Hasher};
    let r = &view.rollout;
    let mut h = std::hash::DefaultHasher::new();
    (r.created_at_ms, r.updated_at_ms).hash(&mut h);
    for (host, s) in &view.steps {
        (host, s.updated_at_ms).hash(&mut h);
    }
    for (host, s) in &view.staged {
        (host, s.at_ms).hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests;
