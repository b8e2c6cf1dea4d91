//! The rollout gauges, set by the leader each planning round from what the planner saw.

use std::collections::BTreeMap;

use super::{GroupLabels, HostStateLabels, HostStateValue, Metrics, PhaseLabels, ServiceLabel};
use crate::planner::{self, Observed, Report};
use crate::store::{FleetView, RolloutView};

/// One active rollout's numbers, as the planner saw them this round.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutGauges {
    service: String,
    phase: super::PhaseValue,
    hosts: BTreeMap<HostStateValue, i64>,
    unavailable: i64,
    max_unavailable: i64,
    groups: Vec<(String, i64, i64)>,
    failures: i64,
    max_failures: i64,
    wave: i64,
}

impl RolloutGauges {
    /// The numbers of `view` (planned with `report` at `now_ms`).
    pub fn of(view: &RolloutView, fleet: &FleetView, report: &Report, now_ms: i64) -> Self {
        let r = &view.rollout;
        let observed = Observed {
            rollout: r,
            steps: &view.steps,
            staged: &view.staged,
            fleet,
            now_ms,
            progress_seen_ms: None,
        };
        let mut hosts = BTreeMap::new();
        for h in &r.targets {
            *hosts
                .entry(HostStateValue::from(planner::progress(&observed, h)))
                .or_default() += 1;
        }
        RolloutGauges {
            service: r.spec.service.clone(),
            phase: r.phase.into(),
            hosts,
            unavailable: report.unavailable.len() as i64,
            max_unavailable: i64::from(r.max_unavailable),
            groups: report
                .groups
                .iter()
                .map(|g| {
                    (
                        g.group.clone(),
                        i64::from(g.unavailable),
                        i64::from(g.max_unavailable),
                    )
                })
                .collect(),
            failures: report.failures.len() as i64,
            max_failures: i64::from(r.spec.strategy.max_failures.resolve(r.targets.len())),
            wave: i64::from(r.wave),
        }
    }
}

impl Metrics {
    /// Replaces the rollout gauges with this round's (rollouts that ended drop out).
    pub fn set_rollouts(&self, rounds: &[RolloutGauges]) {
        self.rollouts.clear();
        self.rollout_hosts.clear();
        for f in [
            &self.unavailable,
            &self.max_unavailable,
            &self.failures,
            &self.max_failures,
            &self.wave,
        ] {
            f.clear();
        }
        self.group_unavailable.clear();
        self.group_max_unavailable.clear();
        for g in rounds {
            let service = ServiceLabel {
                service: g.service.clone(),
            };
            self.rollouts
                .get_or_create(&PhaseLabels {
                    service: g.service.clone(),
                    phase: g.phase,
                })
                .inc();
            for (state, n) in &g.hosts {
                let labels = HostStateLabels {
                    service: g.service.clone(),
                    state: *state,
                };
                self.rollout_hosts.get_or_create(&labels).set(*n);
            }
            self.unavailable.get_or_create(&service).set(g.unavailable);
            self.max_unavailable
                .get_or_create(&service)
                .set(g.max_unavailable);
            self.failures.get_or_create(&service).set(g.failures);
            self.max_failures
                .get_or_create(&service)
                .set(g.max_failures);
            self.wave.get_or_create(&service).set(g.wave);
            for (group, unavailable, budget) in &g.groups {
                let labels = GroupLabels {
                    service: g.service.clone(),
                    group: group.clone(),
                };
                self.group_unavailable
                    .get_or_create(&labels)
                    .set(*unavailable);
                self.group_max_unavailable
                    .get_or_create(&labels)
                    .set(*budget);
            }
        }
    }
}
