//! Picking grants within the budgets, explaining a stall, and the progress deadline (L1).

use std::collections::{BTreeMap, BTreeSet};

use super::budget::{in_flight, BudgetUse};
use super::report::{Blocker, Holder, Verdict};
use super::{last_progress, Observed, Progress, Progresses};

/// The hosts picked for a slot, and what kept the others out.
#[derive(Debug, Clone, Default)]
pub(super) struct Picked {
    /// Hosts to grant a slot to now, in order.
    pub hosts: Vec<String>,
    /// A host did not fit in the rollout's budget.
    pub budget_full: bool,
    /// Groups whose budget a host did not fit in.
    pub groups_full: BTreeSet<String>,
    /// Pending hosts with no live session.
    pub offline: Vec<String>,
}

/// Step 6, picking grants: the open wave's pending (or interrupted) hosts, in order, while the budget (and each
/// group's) has room. Granting a host that is already unavailable does not add to the count.
pub(super) fn pick(
    o: &Observed<'_>,
    progress: &Progresses<'_>,
    budget: &BudgetUse,
    open: &[String],
) -> Picked {
    let r = o.rollout;
    let mut counted: BTreeSet<&String> = budget.unavailable.iter().map(|(h, _)| h).collect();
    let mut group_used: BTreeMap<String, usize> = BTreeMap::new();
    let mut picked = Picked::default();
    for h in open.iter().filter(|h| progress[*h].wants_grant()) {
        if o.fleet.hosts.get(h).is_some_and(|x| x.fenced)
            || o.fleet.slot(&r.spec.service, h).is_some()
            || in_flight(o, h) != 0
        {
            // Fenced, or still busy with an order of an earlier rollout (it counts as
            // unavailable until it reports).
            continue;
        }
        if !o.fleet.is_connected(h) {
            picked.offline.push(h.clone());
            continue;
        }
        let adds = !counted.contains(h);
        if counted.len() + usize::from(adds) > r.max_unavailable as usize {
            picked.budget_full = true;
            continue;
        }
        if let Some(ledger) = &budget.groups {
            if let Err(g) = ledger.take(h, adds, &mut group_used) {
                picked.groups_full.insert(g);
                continue;
            }
        }
        counted.insert(h);
        picked.hosts.push(h.clone());
    }
    picked
}

/// Step 7, explaining a stall: which budgets are full and who holds them, who is offline or
/// lost, and (when nothing else is known) who is still updating.
pub(super) fn explain_stall(
    o: &Observed<'_>,
    progress: &Progresses<'_>,
    budget: &BudgetUse,
    picked: &Picked,
    blockers: &mut Vec<Blocker>,
) {
    let r = o.rollout;
    let holders = |group: Option<&String>| -> Vec<Holder> {
        let at = |h: &String| budget.groups.as_ref().and_then(|l| l.group_at.get(h));
        budget
            .unavailable
            .iter()
            .filter(|(h, _)| group.is_none() || at(h) == group)
            .map(|(h, w)| Holder {
                host: h.clone(),
                why: *w,
                target: r.targets.contains(h),
            })
            .collect()
    };
    if picked.budget_full {
        let budget = r.max_unavailable;
        blockers.push(Blocker::BudgetFull {
            budget,
            holders: holders(None),
        });
    }
    if let Some(ledger) = &budget.groups {
        for g in &picked.groups_full {
            blockers.push(Blocker::GroupBudgetFull {
                label: ledger.label.clone(),
                group: g.clone(),
                budget: ledger.use_of.get(g).map_or(0, |u| u.max_unavailable),
                holders: holders(Some(g)),
            });
        }
    }
    if !picked.offline.is_empty() {
        blockers.push(Blocker::Offline(picked.offline.clone()));
    }
    let with = |p: Progress| -> Vec<String> {
        let hosts = r.targets.iter().filter(|h| progress[*h] == p);
        hosts.cloned().collect()
    };
    let lost = with(Progress::Lost);
    if !lost.is_empty() {
        blockers.push(Blocker::Lost(lost));
    }
    let updating = with(Progress::Updating);
    if blockers.is_empty() && !updating.is_empty() {
        blockers.push(Blocker::Updating(updating));
    }
}

/// What the progress deadline says about a stall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Deadline {
    /// Nothing moved for progress_deadline: the rollout fails.
    Passed(Verdict),
    /// It passes at this time unless something moves.
    At(i64),
}

/// Step 8, the progress deadline (L1): a stall turns into a failure after progress_deadline.
pub(super) fn progress_deadline(o: &Observed<'_>, blockers: &[Blocker]) -> Deadline {
    let deadline = o.rollout.spec.strategy.progress_deadline;
    let since = o.progress_seen_ms.unwrap_or_else(|| last_progress(o));
    let at = since + deadline.as_millis() as i64;
    if o.now_ms < at {
        return Deadline::At(at);
    }
    Deadline::Passed(Verdict::Stalled {
        deadline,
        stuck: blockers.to_vec(),
    })
}
