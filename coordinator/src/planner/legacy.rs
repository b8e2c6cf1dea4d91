#![allow(dead_code, clippy::all)]
//! TEMPORARY: the planner as of 44d0a77, verbatim, for an equivalence check (removed in the next commit).
//! The planner: a pure function from a rollout's state and the observed fleet to the next
//! decisions. The driver carries decisions out; the status API shows the same numbers.

use std::collections::{BTreeMap, BTreeSet};

use rollgate_proto::spec::{Budget, Gate, OnFailure, Strategy};

use crate::store::{
    AgentStep, FleetView, Health, HostState, HostStep, Phase, RolloutRecord, RolloutView,
    StageRecord,
};

/// How long past its `healthy_deadline` a lost host (its slot's holder went away and it has not
/// reported since) may stay silent before it counts as a failure. It stays unavailable either
/// way until it reports or an operator fences it (S2).
pub const LOST_GRACE_MS: i64 = 30_000;

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
    /// The clock.
    pub now_ms: i64,
}

/// Where a target is, as the planner derives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// Not started.
    Pending,
    /// Holds a live slot.
    Updating,
    /// Granted, but its slot's holder went away and it has not reported since.
    Lost,
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
            Progress::Done => "done",
            Progress::RolledBack => "rolled_back",
            Progress::Failed => "failed",
        }
    }
    fn is_final(self) -> bool {
        matches!(
            self,
            Progress::Done | Progress::RolledBack | Progress::Failed
        )
    }
}

/// A target's progress: its durable step, and for `updating` whether its live slot still exists.
pub fn progress(o: &Observed<'_>, host: &str) -> Progress {
    let Some(step) = o.steps.get(host) else {
        return Progress::Pending;
    };
    match step.state {
        HostState::Pending => Progress::Pending,
        HostState::Done => Progress::Done,
        HostState::RolledBack => Progress::RolledBack,
        HostState::Failed => Progress::Failed,
        HostState::Updating => match o.fleet.slot(&o.rollout.spec.service, host) {
            Some(slot) if slot.token == step.token => Progress::Updating,
            _ => Progress::Lost,
        },
    }
}

/// Why a target is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Being upgraded (holds a slot, in this or another rollout of the service).
    Updating,
    /// Granted, then lost with its slot's holder; counts until it reports (S2).
    Lost,
    /// No live session.
    Offline,
    /// Reports its service unhealthy or stopped (while it has a release installed).
    Unhealthy,
}

impl Unavailable {
    fn word(self) -> &'static str {
        match self {
            Unavailable::Updating => "updating",
            Unavailable::Lost => "lost mid-update",
            Unavailable::Offline => "offline",
            Unavailable::Unhealthy => "unhealthy",
        }
    }
}

/// A group's share of the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupUse {
    /// Label value.
    pub group: String,
    /// Targets in the group.
    pub hosts: u32,
    /// Its budget.
    pub max_unavailable: u32,
    /// Unavailable now.
    pub unavailable: u32,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Hosts to grant a slot to now, in order.
    pub grants: Vec<String>,
    /// A phase change, with its reason.
    pub phase: Option<(Phase, String)>,
    /// Open the next wave.
    pub advance_wave: Option<u32>,
    /// The failure policy asks for a rollback (the reason).
    pub rollback: Option<String>,
    /// Targets unavailable right now, with why.
    pub unavailable: Vec<(String, Unavailable)>,
    /// Per-group use of the budget (with group_by).
    pub groups: Vec<GroupUse>,
    /// Why no (more) slots are granted; empty when the rollout is moving or over.
    pub blocked_by: String,
    /// What the gate after the current wave waits for; empty when not at a gate.
    pub gate: String,
    /// When the planner wants to run again without any event (gate, deadline, lost grace).
    pub wake_at_ms: Option<i64>,
    /// Cumulative end of each wave in the target list.
    pub waves: Vec<usize>,
    /// Hosts whose failure counts against max_failures.
    pub failures: Vec<String>,
    /// The open wave finished and its timed gate has no start yet: the leader stamps it with
    /// its own clock (so the wait is measured on one clock, whichever replica wrote the steps).
    pub stamp_wave: Option<u32>,
}

impl Plan {
    fn wake(&mut self, at: i64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at, |w| w.min(at)));
    }
}

/// Plans one rollout as read from etcd against the fleet read at the same revision.
pub fn plan_view(view: &RolloutView, fleet: &FleetView, now_ms: i64) -> Plan {
    plan(Observed {
        rollout: &view.rollout,
        steps: &view.steps,
        staged: &view.staged,
        fleet,
        now_ms,
    })
}

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

/// The group a host belongs to under `group_by` ("" without a label), by its labels now.
pub fn group_of(fleet: &FleetView, label: &str, host: &str) -> String {
    fleet
        .hosts
        .get(host)
        .and_then(|h| h.labels.get(label))
        .cloned()
        .unwrap_or_default()
}

/// The hosts whose outages count against a rollout's budget: its targets, then every other
/// host known to run the service, then the hosts frozen into its groups at creation (S1:
/// whatever rollout is active for a service, all of the service's hosts that are out of service
/// count, e.g. a rollback counts its parent's hosts that are down).
pub fn counted_hosts<'a>(o: &Observed<'a>) -> Vec<&'a String> {
    let r = o.rollout;
    let svc = &r.spec.service;
    let mut seen: BTreeSet<&String> = r.targets.iter().collect();
    let mut out: Vec<&String> = r.targets.iter().collect();
    let runs_it = o
        .fleet
        .hosts
        .iter()
        .filter(|(_, rec)| rec.services.contains_key(svc))
        .map(|(h, _)| h);
    for h in runs_it.chain(r.groups.keys()) {
        if seen.insert(h) {
            out.push(h);
        }
    }
    out
}

/// Each group's budget: the ones fixed at creation, or (a rollout stored before groups were
/// frozen) computed from its targets' labels now.
pub fn group_budgets(o: &Observed<'_>, label: &str, per: Budget) -> BTreeMap<String, u32> {
    let r = o.rollout;
    if !r.group_budgets.is_empty() {
        return r.group_budgets.clone();
    }
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for h in &r.targets {
        *sizes.entry(group_of(o.fleet, label, h)).or_default() += 1;
    }
    sizes
        .into_iter()
        .map(|(g, n)| (g, per.resolve(n)))
        .collect()
}

/// The group a host counts in: the one fixed at creation; a host the rollout did not know then
/// counts in the group its label names now, if that group has a budget (a host that lost its
/// label forms no group of its own).
pub fn group_in(
    o: &Observed<'_>,
    budgets: &BTreeMap<String, u32>,
    label: &str,
    host: &str,
) -> Option<String> {
    if let Some(g) = o.rollout.groups.get(host) {
        return Some(g.clone());
    }
    let g = group_of(o.fleet, label, host);
    budgets.contains_key(&g).then_some(g)
}

/// The service's order in flight on a host, as its agent reports it (0: none).
pub fn in_flight(o: &Observed<'_>, host: &str) -> u64 {
    o.fleet
        .hosts
        .get(host)
        .and_then(|h| h.services.get(&o.rollout.spec.service))
        .map_or(0, |s| s.in_flight_token)
}

/// Decides what happens next for one rollout.
pub fn plan(o: Observed<'_>) -> Plan {
    let r = o.rollout;
    let st = &r.spec.strategy;
    let budget = r.max_unavailable as usize;
    let n = r.targets.len();
    let progress_of: BTreeMap<&String, Progress> =
        r.targets.iter().map(|h| (h, progress(&o, h))).collect();

    let unavailable: Vec<(String, Unavailable)> = counted_hosts(&o)
        .into_iter()
        .filter_map(|h| {
            let p = progress_of.get(h).copied().unwrap_or(Progress::Pending);
            why_unavailable(h, p, &o).map(|w| (h.clone(), w))
        })
        .collect();
    let mut plan = Plan {
        unavailable,
        waves: wave_bounds(st, n, r.rollback_of.is_some()),
        ..Plan::default()
    };

    // Group budgets, as fixed when the rollout was created.
    let mut group_budget: BTreeMap<String, (u32, u32)> = BTreeMap::new(); // group -> (hosts, budget)
    let mut group_unavail: BTreeMap<String, usize> = BTreeMap::new();
    let mut group_at: BTreeMap<String, String> = BTreeMap::new(); // host -> group
    if let (Some(label), Some(per)) = (&st.group_by, st.max_unavailable_per_group) {
        let budgets = group_budgets(&o, label, per);
        for (g, b) in &budgets {
            group_budget.insert(g.clone(), (0, *b));
        }
        for h in counted_hosts(&o) {
            if let Some(g) = group_in(&o, &budgets, label, h) {
                group_at.insert(h.clone(), g);
            }
        }
        for h in &r.targets {
            if let Some((n, _)) = group_at.get(h).and_then(|g| group_budget.get_mut(g)) {
                *n += 1;
            }
        }
        for (h, _) in &plan.unavailable {
            if let Some(g) = group_at.get(h) {
                *group_unavail.entry(g.clone()).or_default() += 1;
            }
        }
        plan.groups = group_budget
            .iter()
            .map(|(g, (hosts, b))| GroupUse {
                group: g.clone(),
                hosts: *hosts,
                max_unavailable: *b,
                unavailable: group_unavail.get(g).copied().unwrap_or(0) as u32,
            })
            .collect();
    }
    if r.phase.is_terminal() {
        return plan;
    }

    // Failures, and the failure policy.
    for h in &r.targets {
        let failed = match progress_of[h] {
            Progress::RolledBack | Progress::Failed => true,
            // The agent's failure verdict: it is rolling back. Halting now rather than when
            // the rollback has finished keeps "a bad release halts within one probe interval
            // of its verdict".
            Progress::Updating => o
                .steps
                .get(h)
                .is_some_and(|s| s.step == AgentStep::RollingBack),
            Progress::Lost => o.steps.get(h).is_some_and(|s| {
                o.now_ms > s.granted_at_ms + st.healthy_deadline.as_millis() as i64 + LOST_GRACE_MS
            }),
            _ => false,
        };
        if failed {
            plan.failures.push(h.clone());
        } else if progress_of[h] == Progress::Lost {
            if let Some(s) = o.steps.get(h) {
                plan.wake(
                    s.granted_at_ms + st.healthy_deadline.as_millis() as i64 + LOST_GRACE_MS + 1,
                );
            }
        }
    }
    let allowed = st.max_failures.resolve(n).max(r.tolerated_failures) as usize;
    if plan.failures.len() > allowed && r.phase == Phase::Rolling {
        let first = &plan.failures[0];
        let why = match progress_of[first] {
            Progress::Lost => "lost mid-update and silent past its deadline".to_string(),
            // Halted at the agent's "rolling back" step: the result (and its reason) is still
            // to come, the progress message says why it is rolling back.
            _ => o
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
        };
        let what = format!(
            "{} host(s) failed, more than max_failures = {}; first: {first}: {why}",
            plan.failures.len(),
            st.max_failures
        );
        match st.on_failure {
            OnFailure::Halt => {
                plan.phase = Some((
                    Phase::Failed,
                    format!("{what}. No more hosts will be started"),
                ))
            }
            OnFailure::Pause => {
                plan.phase = Some((
                    Phase::Paused,
                    format!(
                        "{what}. Paused by the failure policy: `rollgate rollout resume` to go \
                         on, or `rollgate rollout rollback` to go back"
                    ),
                ))
            }
            OnFailure::Rollback if r.rollback_of.is_none() => plan.rollback = Some(what),
            OnFailure::Rollback => {
                plan.phase = Some((
                    Phase::Failed,
                    format!("{what}. This is already a rollback; stopping here"),
                ))
            }
        }
        return plan;
    }

    let all_final = r.targets.iter().all(|h| progress_of[h].is_final());
    if all_final {
        let done = r
            .targets
            .iter()
            .filter(|h| progress_of[*h] == Progress::Done)
            .count();
        let reason = if plan.failures.is_empty() {
            format!("all {n} hosts run {}", r.spec.release.version)
        } else {
            format!(
                "{done} hosts run {}; {} failed within max_failures = {}",
                r.spec.release.version,
                plan.failures.len(),
                st.max_failures
            )
        };
        plan.phase = Some((Phase::Succeeded, reason));
        return plan;
    }
    if r.phase == Phase::Paused {
        plan.blocked_by = if r.reason.is_empty() {
            "paused by an operator; `rollgate rollout resume` goes on".to_string()
        } else {
            r.reason.clone()
        };
        return plan;
    }

    let mut why: Vec<String> = Vec::new();
    let mut at_manual_gate = false;

    // stage_first: every target staged before the first slot.
    let staging_done = !st.stage_first
        || r.targets
            .iter()
            .all(|h| o.staged.get(h).is_some_and(|s| s.ok) || progress_of[h] != Progress::Pending);
    if !staging_done {
        let ok = r
            .targets
            .iter()
            .filter(|h| o.staged.get(*h).is_some_and(|s| s.ok))
            .count();
        let failed: Vec<String> = r
            .targets
            .iter()
            .filter_map(|h| {
                o.staged
                    .get(h)
                    .filter(|s| !s.ok)
                    .map(|s| format!("{h}: {}", s.reason))
            })
            .collect();
        let offline: Vec<&str> = r
            .targets
            .iter()
            .filter(|h| !o.staged.contains_key(*h) && !o.fleet.is_connected(h))
            .map(String::as_str)
            .collect();
        let mut w = format!(
            "staging first: {ok}/{n} targets have staged {}",
            r.spec.release.version
        );
        if !failed.is_empty() {
            w.push_str(&format!("; cannot stage: {}", failed.join("; ")));
        }
        if !offline.is_empty() {
            w.push_str(&format!(
                "; offline, cannot stage yet: {}",
                offline.join(", ")
            ));
        }
        why.push(w);
    }

    // Waves and gates.
    let wave = (r.wave as usize).min(plan.waves.len() - 1);
    let open_end = plan.waves[wave];
    let open = &r.targets[..open_end];
    let wave_final = open.iter().all(|h| progress_of[h].is_final());
    if staging_done && wave_final && wave + 1 < plan.waves.len() {
        let canary_gate = wave == 0 && st.canary.is_some() && r.rollback_of.is_none();
        let wait = if canary_gate {
            match st.canary_gate {
                Gate::Manual => None,
                Gate::Bake(d) => Some(d),
            }
        } else {
            Some(st.pause_between_waves)
        };
        match wait {
            None => {
                at_manual_gate = true;
                plan.gate = "manual promote".to_string();
                why.push(format!(
                    "waiting at the canary gate: the canary ({}) is done; check it, then run \
                     `rollgate rollout promote {}`",
                    open.join(", "),
                    r.id
                ));
            }
            Some(_) if r.wave_done.is_none_or(|w| w.wave != wave as u32) => {
                // Clocks: the steps' times come from whichever replica served each host. The
                // wait starts when the leader stamps the wave's end with its own clock.
                plan.stamp_wave = Some(wave as u32);
                plan.gate = "gate starting".to_string();
                why.push(format!("wave {} finished; starting its gate", wave + 1));
            }
            Some(d) => {
                let done_at = r.wave_done.map_or(r.updated_at_ms, |w| w.at_ms);
                let opens_at = done_at + d.as_millis() as i64;
                if o.now_ms >= opens_at {
                    plan.advance_wave = Some(wave as u32 + 1);
                    return plan;
                }
                plan.wake(opens_at);
                // Whole seconds, rounded up: "3s left", not "2s 989ms left".
                let left = rollgate_proto::spec::human(std::time::Duration::from_secs(
                    ((opens_at - o.now_ms) as u64).div_ceil(1000),
                ));
                plan.gate = if canary_gate {
                    format!("canary bake, {left} left")
                } else {
                    format!("pause between waves, {left} left")
                };
                why.push(format!(
                    "{}: wave {} opens in {left}",
                    if canary_gate {
                        "baking the canary"
                    } else {
                        "pausing between waves"
                    },
                    wave + 1
                ));
            }
        }
    }

    // Grants.
    let mut counted: BTreeSet<&String> = plan.unavailable.iter().map(|(h, _)| h).collect();
    let mut offline_pending = Vec::new();
    let mut budget_blocked = false;
    let mut group_blocked: BTreeSet<String> = BTreeSet::new();
    if why.is_empty() {
        for h in open.iter().filter(|h| progress_of[*h] == Progress::Pending) {
            let host = o.fleet.hosts.get(h);
            if host.is_some_and(|x| x.fenced)
                || o.fleet.slot(&r.spec.service, h).is_some()
                || in_flight(&o, h) != 0
            {
                // Fenced, or still busy with an order of an earlier rollout (it counts as
                // unavailable until it reports).
                continue;
            }
            if !o.fleet.is_connected(h) {
                offline_pending.push(h.as_str());
                continue;
            }
            // Granting a host that is already unavailable does not add to the count.
            let adds = !counted.contains(h);
            if counted.len() + usize::from(adds) > budget {
                budget_blocked = true;
                continue;
            }
            if st.group_by.is_some() {
                let g = group_at.get(h).cloned().unwrap_or_default();
                if let Some((_, gb)) = group_budget.get(&g) {
                    let used = group_unavail.get(&g).copied().unwrap_or(0);
                    if used + usize::from(adds) > *gb as usize {
                        group_blocked.insert(g);
                        continue;
                    }
                    *group_unavail.entry(g).or_default() += usize::from(adds);
                }
            }
            counted.insert(h);
            plan.grants.push(h.clone());
        }
    }

    if plan.grants.is_empty() {
        if budget_blocked {
            let holders: Vec<String> = plan
                .unavailable
                .iter()
                .map(|(h, w)| holder(r, h, *w))
                .collect();
            why.push(format!(
                "budget full: {}/{} unavailable ({})",
                plan.unavailable.len(),
                budget,
                holders.join(", ")
            ));
        }
        for g in &group_blocked {
            let label = st.group_by.as_deref().unwrap_or("group");
            let holders: Vec<String> = plan
                .unavailable
                .iter()
                .filter(|(h, _)| group_at.get(h) == Some(g))
                .map(|(h, w)| holder(r, h, *w))
                .collect();
            let gb = group_budget.get(g).map(|x| x.1).unwrap_or(0);
            why.push(format!(
                "{label} {g} budget full: {}/{gb} unavailable ({})",
                holders.len(),
                holders.join(", ")
            ));
        }
        if !offline_pending.is_empty() {
            why.push(format!(
                "waiting for offline host(s) to reconnect: {}",
                offline_pending.join(", ")
            ));
        }
        let lost: Vec<&str> = r
            .targets
            .iter()
            .filter(|h| progress_of[*h] == Progress::Lost)
            .map(String::as_str)
            .collect();
        if !lost.is_empty() {
            why.push(format!(
                "lost mid-update (its coordinator replica went away; it keeps its share of the \
                 budget until it reports or `rollgate host fence` it): {}",
                lost.join(", ")
            ));
        }
        if why.is_empty() {
            let updating: Vec<&str> = r
                .targets
                .iter()
                .filter(|h| progress_of[*h] == Progress::Updating)
                .map(String::as_str)
                .collect();
            if !updating.is_empty() {
                why.push(format!("waiting for {} to finish", updating.join(", ")));
            }
        }
        plan.blocked_by = why.join("; ");

        // L1: a stall turns into a failure after progress_deadline (never at a manual gate).
        if !at_manual_gate {
            let last = last_progress(&o);
            let deadline = last + st.progress_deadline.as_millis() as i64;
            if o.now_ms >= deadline {
                plan.phase = Some((
                    Phase::Failed,
                    format!(
                        "no progress for {} (progress_deadline); it was stuck: {}",
                        rollgate_proto::spec::human(st.progress_deadline),
                        if plan.blocked_by.is_empty() {
                            "no reason known"
                        } else {
                            &plan.blocked_by
                        }
                    ),
                ));
            } else {
                plan.wake(deadline);
            }
        }
    } else {
        plan.blocked_by = why.join("; ");
    }
    plan
}

/// The last time anything moved: creation, a phase change, a host step, a staging report.
pub fn last_progress(o: &Observed<'_>) -> i64 {
    let r = o.rollout;
    let steps = o.steps.values().map(|s| s.updated_at_ms).max().unwrap_or(0);
    let staged = o.staged.values().map(|s| s.at_ms).max().unwrap_or(0);
    r.created_at_ms.max(r.updated_at_ms).max(steps).max(staged)
}

/// "host-3 offline", or "host-9 unhealthy (not a target)" for a host of the service outside
/// the rollout's targets.
fn holder(r: &RolloutRecord, host: &str, w: Unavailable) -> String {
    if r.targets.iter().any(|t| t == host) {
        format!("{host} {}", w.word())
    } else {
        format!("{host} {} (not a target)", w.word())
    }
}

/// Why a host of the service is out of service right now, if it is. Evidence of an update
/// (a live slot, a grant, an order the agent reports in flight) counts before anything else,
/// even on a fenced host that is in fact connected.
fn why_unavailable(host: &str, p: Progress, o: &Observed<'_>) -> Option<Unavailable> {
    let svc = &o.rollout.spec.service;
    let record = o.fleet.hosts.get(host);
    let connected = o.fleet.is_connected(host);
    if record.is_some_and(|h| h.fenced) && !connected {
        // The operator vouched it is gone (`rollgate host fence`).
        return None;
    }
    match p {
        Progress::Updating => return Some(Unavailable::Updating),
        Progress::Lost => return Some(Unavailable::Lost),
        _ => {}
    }
    if o.fleet.slot(svc, host).is_some() {
        return Some(Unavailable::Updating);
    }
    // No record: an operator forgot the host (`rollgate host forget`); it counts again when
    // its agent re-registers.
    let record = record?;
    if !connected {
        return Some(Unavailable::Offline);
    }
    match record.services.get(svc) {
        Some(s) if s.in_flight_token != 0 => Some(Unavailable::Updating),
        // A host that has never run the service was not serving it: installing there takes a
        // slot, but its absence is not an outage.
        Some(s) if s.never_ran() => None,
        Some(s) if s.health != Health::Healthy => Some(Unavailable::Unhealthy),
        Some(_) => None,
        None => Some(Unavailable::Unhealthy),
    }
}
