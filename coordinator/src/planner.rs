//! The planner: a pure function from a rollout's state and the observed fleet to the next
//! decisions. The driver carries decisions out; the status API shows the same numbers.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::{
    FleetView, Health, HostRecord, HostState, HostStep, Phase, RolloutRecord, RolloutView, Slot,
};

/// What the planner sees.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The rollout.
    pub rollout: &'a RolloutRecord,
    /// Each target's step.
    pub steps: &'a BTreeMap<String, HostStep>,
    /// Slots held, by host.
    pub slots: &'a BTreeMap<String, Slot>,
    /// Durable host records.
    pub hosts: &'a BTreeMap<String, HostRecord>,
    /// Hosts with a live session.
    pub connected: &'a BTreeSet<String>,
}

/// Why a target is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Holds a slot: being upgraded, or failed and not yet healthy again.
    HoldsSlot,
    /// No live session.
    Offline,
    /// Reports its service unhealthy or stopped (while it has a release installed).
    Unhealthy,
}

impl Unavailable {
    fn word(self) -> &'static str {
        match self {
            Unavailable::HoldsSlot => "holds a slot",
            Unavailable::Offline => "offline",
            Unavailable::Unhealthy => "unhealthy",
        }
    }
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Hosts to grant a slot to now, in order.
    pub grants: Vec<String>,
    /// A phase change, with its reason.
    pub phase: Option<(Phase, String)>,
    /// Targets unavailable right now, with why.
    pub unavailable: Vec<(String, Unavailable)>,
    /// Why no (more) slots are granted; empty when the rollout is moving or over.
    pub blocked_by: String,
}

/// Plans one rollout as read from etcd against the fleet read at the same revision.
pub fn plan_view(view: &RolloutView, fleet: &FleetView) -> Plan {
    plan(Observed {
        rollout: &view.rollout,
        steps: &view.steps,
        slots: &view.slots,
        hosts: &fleet.hosts,
        connected: &fleet.connected,
    })
}

/// Decides what happens next for one rollout.
pub fn plan(o: Observed<'_>) -> Plan {
    let r = o.rollout;
    let service = &r.spec.service;
    let budget = r.max_unavailable as usize;

    let unavailable: Vec<(String, Unavailable)> = r
        .targets
        .iter()
        .filter_map(|h| why_unavailable(h, service, &o).map(|w| (h.clone(), w)))
        .collect();
    let mut plan = Plan {
        unavailable,
        ..Plan::default()
    };
    if r.phase.is_terminal() {
        return plan;
    }

    let state_of = |h: &String| {
        o.steps
            .get(h)
            .map(|s| s.state)
            .unwrap_or(HostState::Pending)
    };
    let failures: Vec<&String> = r
        .targets
        .iter()
        .filter(|h| state_of(h).is_failure())
        .collect();
    if failures.len() > r.spec.strategy.max_failures as usize {
        let first = failures[0];
        let why = o
            .steps
            .get(first)
            .map(|s| s.reason.clone())
            .unwrap_or_default();
        plan.phase = Some((
            Phase::Failed,
            format!(
                "{} host(s) failed, more than max_failures = {}; first: {first}: {why}. \
                 No more hosts will be started",
                failures.len(),
                r.spec.strategy.max_failures
            ),
        ));
        return plan;
    }
    if r.targets.iter().all(|h| state_of(h).is_final()) && o.slots.is_empty() {
        let reason = if failures.is_empty() {
            format!(
                "all {} hosts run {}",
                r.targets.len(),
                r.spec.release.version
            )
        } else {
            format!(
                "{} hosts run {}; {} failed within max_failures = {}",
                r.targets.len() - failures.len(),
                r.spec.release.version,
                failures.len(),
                r.spec.strategy.max_failures
            )
        };
        plan.phase = Some((Phase::Succeeded, reason));
        return plan;
    }
    if r.phase == Phase::Paused {
        plan.blocked_by = format!("paused by an operator{}", suffix(&r.reason));
        return plan;
    }

    let pending: Vec<&String> = r
        .targets
        .iter()
        .filter(|h| state_of(h) == HostState::Pending && !o.slots.contains_key(*h))
        .collect();
    let mut counted: BTreeSet<&String> = plan.unavailable.iter().map(|(h, _)| h).collect();
    let mut offline_pending = Vec::new();
    let mut budget_blocked = false;
    for h in pending {
        if !o.connected.contains(h) {
            offline_pending.push(h.as_str());
            continue;
        }
        // Granting a host that is already unavailable does not add to the count.
        let after = counted.len() + usize::from(!counted.contains(h));
        if after > budget {
            budget_blocked = true;
            continue;
        }
        counted.insert(h);
        plan.grants.push(h.clone());
    }

    if plan.grants.is_empty() {
        let mut why = Vec::new();
        if budget_blocked {
            let holders: Vec<String> = plan
                .unavailable
                .iter()
                .map(|(h, w)| format!("{h} {}", w.word()))
                .collect();
            why.push(format!(
                "budget full: {}/{} unavailable ({})",
                plan.unavailable.len(),
                budget,
                holders.join(", ")
            ));
        }
        if !offline_pending.is_empty() {
            why.push(format!(
                "waiting for offline host(s) to reconnect: {}",
                offline_pending.join(", ")
            ));
        }
        if why.is_empty() && !o.slots.is_empty() {
            let updating: Vec<&str> = o.slots.keys().map(String::as_str).collect();
            why.push(format!("waiting for {} to finish", updating.join(", ")));
        }
        plan.blocked_by = why.join("; ");
    }
    plan
}

fn why_unavailable(host: &str, service: &str, o: &Observed<'_>) -> Option<Unavailable> {
    if o.slots.contains_key(host) {
        return Some(Unavailable::HoldsSlot);
    }
    if !o.connected.contains(host) {
        return Some(Unavailable::Offline);
    }
    let state = o.hosts.get(host).and_then(|h| h.services.get(service));
    match state {
        // A host that has never run the service was not serving it: installing there takes a
        // slot, but its absence is not an outage.
        Some(s) if s.version.is_empty() => None,
        Some(s) if s.health != Health::Healthy => Some(Unavailable::Unhealthy),
        Some(_) => None,
        None => Some(Unavailable::Unhealthy),
    }
}

fn suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ServiceState, SlotRecord};
    use rollgate_proto::spec::{Budget, ReleaseSpec, RolloutSpec, Strategy, TargetSpec};

    struct World {
        rollout: RolloutRecord,
        steps: BTreeMap<String, HostStep>,
        slots: BTreeMap<String, Slot>,
        hosts: BTreeMap<String, HostRecord>,
        connected: BTreeSet<String>,
    }

    fn world(n: usize, budget: Budget, max_failures: u32) -> World {
        let targets: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
        let spec = RolloutSpec {
            service: "svc".into(),
            release: ReleaseSpec {
                version: "2".into(),
                source: "store:".into(),
                sha256: "a".repeat(64),
                size: 1,
                file: None,
            },
            targets: TargetSpec::default(),
            strategy: Strategy {
                max_unavailable: budget,
                max_failures,
                ..Strategy::default()
            },
        };
        let hosts = targets
            .iter()
            .map(|h| {
                let mut rec = HostRecord {
                    host_id: h.clone(),
                    ..HostRecord::default()
                };
                rec.services.insert(
                    "svc".into(),
                    ServiceState {
                        version: "1".into(),
                        health: Health::Healthy,
                        ..ServiceState::default()
                    },
                );
                (h.clone(), rec)
            })
            .collect();
        World {
            rollout: RolloutRecord {
                id: "r".into(),
                max_unavailable: budget.resolve(n),
                spec,
                targets: targets.clone(),
                phase: Phase::Rolling,
                reason: String::new(),
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            steps: targets
                .iter()
                .map(|h| (h.clone(), HostStep::pending()))
                .collect(),
            slots: BTreeMap::new(),
            hosts,
            connected: targets.iter().cloned().collect(),
        }
    }

    impl World {
        fn plan(&self) -> Plan {
            plan(Observed {
                rollout: &self.rollout,
                steps: &self.steps,
                slots: &self.slots,
                hosts: &self.hosts,
                connected: &self.connected,
            })
        }
        fn set(&mut self, h: &str, state: HostState) {
            self.steps.get_mut(h).expect("target").state = state;
        }
        fn hold(&mut self, h: &str) {
            self.set(h, HostState::Updating);
            self.slots.insert(
                h.into(),
                Slot {
                    token: 1,
                    record: SlotRecord {
                        rollout_id: "r".into(),
                        host_id: h.into(),
                        service: "svc".into(),
                        version: "2".into(),
                        source: "store:".into(),
                        sha256: String::new(),
                        size: 1,
                        min_healthy_time_ms: 0,
                        healthy_deadline_ms: 1,
                        granted_by: "x".into(),
                        granted_at_ms: 0,
                    },
                },
            );
        }
        fn health(&mut self, h: &str, health: Health) {
            self.hosts
                .get_mut(h)
                .and_then(|r| r.services.get_mut("svc"))
                .expect("host")
                .health = health;
        }
    }

    #[test]
    fn grants_up_to_the_budget() {
        let cases = [
            (10, Budget::Count(3), 3),
            (10, Budget::Percent(39), 3),
            (1, Budget::Percent(10), 1),
            (4, Budget::Count(10), 4),
        ];
        for (n, b, want) in cases {
            let w = world(n, b, 0);
            assert_eq!(w.plan().grants.len(), want, "{n} targets at {b}");
        }
    }

    #[test]
    fn slots_held_and_outages_count_against_the_budget() {
        let mut w = world(10, Budget::Count(3), 0);
        w.hold("h1");
        w.connected.remove("h5");
        w.health("h7", Health::Unhealthy);
        let p = w.plan();
        assert_eq!(p.unavailable.len(), 3);
        // h7 is already unavailable: upgrading it keeps the count at 3; nothing else fits.
        assert_eq!(p.grants, vec!["h7".to_string()]);
    }

    #[test]
    fn offline_host_blocks_everyone_at_budget_one() {
        let mut w = world(5, Budget::Count(1), 0);
        w.connected.remove("h3");
        let p = w.plan();
        assert!(p.grants.is_empty(), "{p:?}");
        assert!(
            p.blocked_by.contains("budget full: 1/1"),
            "{}",
            p.blocked_by
        );
        assert!(p.blocked_by.contains("h3 offline"), "{}", p.blocked_by);
    }

    #[test]
    fn first_failure_halts_by_default() {
        let mut w = world(10, Budget::Count(3), 0);
        w.hold("h1");
        w.set("h2", HostState::RolledBack);
        let p = w.plan();
        assert!(p.grants.is_empty());
        assert_eq!(p.phase.map(|(ph, _)| ph), Some(Phase::Failed));
    }

    #[test]
    fn failures_within_max_failures_continue() {
        let mut w = world(4, Budget::Count(1), 1);
        w.set("h1", HostState::RolledBack);
        assert_eq!(w.plan().grants, vec!["h2".to_string()]);
        for h in ["h2", "h3", "h4"] {
            w.set(h, HostState::Done);
        }
        assert_eq!(w.plan().phase.map(|(ph, _)| ph), Some(Phase::Succeeded));
    }

    #[test]
    fn done_when_every_target_is_done_and_no_slot_is_held() {
        let mut w = world(2, Budget::Count(1), 0);
        w.set("h1", HostState::Done);
        w.set("h2", HostState::Done);
        assert_eq!(w.plan().phase.map(|(ph, _)| ph), Some(Phase::Succeeded));
        w.hold("h2");
        w.set("h2", HostState::Done);
        assert_eq!(w.plan().phase, None, "a slot still held keeps it open");
    }

    #[test]
    fn paused_grants_nothing_and_says_so() {
        let mut w = world(3, Budget::Count(3), 0);
        w.rollout.phase = Phase::Paused;
        let p = w.plan();
        assert!(p.grants.is_empty());
        assert!(p.blocked_by.starts_with("paused"), "{}", p.blocked_by);
    }

    #[test]
    fn fresh_hosts_are_not_outages() {
        let mut w = world(4, Budget::Count(2), 0);
        for h in ["h1", "h2", "h3", "h4"] {
            let s = w
                .hosts
                .get_mut(h)
                .and_then(|r| r.services.get_mut("svc"))
                .expect("svc");
            s.version.clear();
            s.health = Health::Stopped;
        }
        let p = w.plan();
        assert!(p.unavailable.is_empty());
        assert_eq!(p.grants.len(), 2);
    }
}
