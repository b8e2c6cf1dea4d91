//! Budget use: which hosts of the service are out of service and why, and each group's share.

use std::collections::{BTreeMap, BTreeSet};

use rollgate_proto::spec::Budget;

use super::{Observed, Progress};
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

impl Unavailable {
    pub(super) fn word(self) -> &'static str {
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
pub(super) fn why_unavailable(host: &str, p: Progress, o: &Observed<'_>) -> Option<Unavailable> {
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
