//! Budget use: which hosts of the service are out of service and why, and each group's share.

use std::collections::{BTreeMap, BTreeSet};

use rollgate_proto::spec::Budget;

use super::report::Report;
use super::waves::wave_bounds;
use super::{Observed, Progress, Progresses};
use crate::store::{FleetView, Health};

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

/// How much of the budget is in use: the rollout's, and with group_by each group's.
#[derive(Debug, Clone)]
pub(super) struct BudgetUse {
    /// Hosts of the service out of service now, with why.
    pub unavailable: Vec<(String, Unavailable)>,
    /// The groups' budgets (group_by with max_unavailable_per_group).
    pub groups: Option<GroupLedger>,
}

impl BudgetUse {
    /// The report's first part: the budget's use and the waves.
    pub fn report(&self, o: &Observed<'_>) -> Report {
        let r = o.rollout;
        let groups = self.groups.iter();
        Report {
            unavailable: self.unavailable.clone(),
            groups: groups.flat_map(|g| g.use_of.values().cloned()).collect(),
            waves: wave_bounds(&r.spec.strategy, r.targets.len(), r.rollback_of.is_some()),
            ..Report::default()
        }
    }
}

/// Each group's budget, its members, and its use now.
#[derive(Debug, Clone)]
pub(super) struct GroupLedger {
    /// The group_by label.
    pub label: String,
    /// Group -> its share: targets in it, its budget, unavailable now.
    pub use_of: BTreeMap<String, GroupUse>,
    /// Host -> the group it counts in.
    pub group_at: BTreeMap<String, String>,
}

impl GroupLedger {
    /// Takes a unit of `host`'s group budget (none when `adds` is false: the host is already
    /// out of service), counting in `used`; the group's name when it is full.
    pub fn take(
        &self,
        host: &str,
        adds: bool,
        used: &mut BTreeMap<String, usize>,
    ) -> Result<(), String> {
        let g = self.group_at.get(host).cloned().unwrap_or_default();
        let Some(share) = self.use_of.get(&g) else {
            return Ok(());
        };
        let now = used.entry(g.clone()).or_insert(share.unavailable as usize);
        if *now + usize::from(adds) > share.max_unavailable as usize {
            return Err(g);
        }
        *now += usize::from(adds);
        Ok(())
    }
}

/// Step 1, budget use: every host of the service out of service now, and each group's share.
pub(super) fn budget_use(o: &Observed<'_>, progress: &Progresses<'_>) -> BudgetUse {
    let unavailable: Vec<(String, Unavailable)> = counted_hosts(o)
        .into_iter()
        .filter_map(|h| {
            let p = progress.get(h).copied().unwrap_or(Progress::Pending);
            why_unavailable(h, p, o).map(|w| (h.clone(), w))
        })
        .collect();
    let groups = group_ledger(o, &unavailable);
    BudgetUse {
        unavailable,
        groups,
    }
}

/// The group budgets, as fixed when the rollout was created, with their use now.
fn group_ledger(o: &Observed<'_>, unavailable: &[(String, Unavailable)]) -> Option<GroupLedger> {
    let st = &o.rollout.spec.strategy;
    let (Some(label), Some(per)) = (&st.group_by, st.max_unavailable_per_group) else {
        return None;
    };
    let budgets = group_budgets(o, label, per);
    let group_at: BTreeMap<String, String> = counted_hosts(o)
        .into_iter()
        .filter_map(|h| group_in(o, &budgets, label, h).map(|g| (h.clone(), g)))
        .collect();
    let mut use_of: BTreeMap<String, GroupUse> = budgets
        .iter()
        .map(|(g, b)| {
            let share = GroupUse {
                group: g.clone(),
                hosts: 0,
                max_unavailable: *b,
                unavailable: 0,
            };
            (g.clone(), share)
        })
        .collect();
    for h in &o.rollout.targets {
        if let Some(share) = group_at.get(h).and_then(|g| use_of.get_mut(g)) {
            share.hosts += 1;
        }
    }
    for (h, _) in unavailable {
        if let Some(share) = group_at.get(h).and_then(|g| use_of.get_mut(g)) {
            share.unavailable += 1;
        }
    }
    Some(GroupLedger {
        label: label.clone(),
        use_of,
        group_at,
    })
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
