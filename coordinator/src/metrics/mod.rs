//! The coordinator's Prometheus metrics (`[metrics] listen`; served by
//! `rollgate_proto::metrics`). Names follow the Prometheus conventions: `rollgate_` prefix,
//! base units (`_seconds`), `_total` on counters. Labels are bounded sets: services (operators
//! define a handful), groups (their `group_by` label values), phases, host states and reason
//! classes; never a host id or a rollout id.
//!
//! Who sets what: the session code sets the agent and session metrics on every replica; the
//! leader's driver sets the rollout gauges each round and counts grants, hand-overs and halts.
//! A replica that is not the leader reports `rollgate_leader 0` and no rollout gauges.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

mod etcd;
mod rollouts;

pub use etcd::{EtcdMethod, EtcdMetrics, MeteredChannel};
pub use rollouts::RolloutGauges;

use crate::store::{HostState, Phase};

/// A service's label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// Service name.
    pub service: String,
}

/// A rollout phase, as a label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PhaseValue {
    rolling,
    paused,
    succeeded,
    failed,
    aborted,
    rolling_back,
    rolled_back,
}

impl From<Phase> for PhaseValue {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Rolling => PhaseValue::rolling,
            Phase::Paused => PhaseValue::paused,
            Phase::Succeeded => PhaseValue::succeeded,
            Phase::Failed => PhaseValue::failed,
            Phase::Aborted => PhaseValue::aborted,
            Phase::RollingBack => PhaseValue::rolling_back,
            Phase::RolledBack => PhaseValue::rolled_back,
        }
    }
}

/// Active rollouts by service and phase.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Service name.
    pub service: String,
    /// Its phase.
    pub phase: PhaseValue,
}

/// A host's state in a rollout, as a label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HostStateValue {
    pending,
    updating,
    done,
    rolled_back,
    failed,
    /// Offline past its grace period while updating (the planner's view).
    lost,
    /// Interrupted by an agent restart; waits to be granted again.
    interrupted,
}

impl From<crate::planner::Progress> for HostStateValue {
    fn from(p: crate::planner::Progress) -> Self {
        use crate::planner::Progress;
        match p {
            Progress::Pending => HostStateValue::pending,
            Progress::Updating => HostStateValue::updating,
            Progress::Lost => HostStateValue::lost,
            Progress::Done => HostStateValue::done,
            Progress::RolledBack => HostStateValue::rolled_back,
            Progress::Failed => HostStateValue::failed,
            Progress::Interrupted => HostStateValue::interrupted,
        }
    }
}

impl From<HostState> for HostStateValue {
    fn from(s: HostState) -> Self {
        match s {
            HostState::Pending => HostStateValue::pending,
            HostState::Updating => HostStateValue::updating,
            HostState::Done => HostStateValue::done,
            HostState::RolledBack => HostStateValue::rolled_back,
            HostState::Failed => HostStateValue::failed,
            HostState::Interrupted => HostStateValue::interrupted,
        }
    }
}

/// Hosts of the active rollout of a service, by state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostStateLabels {
    /// Service name.
    pub service: String,
    /// Host state in the rollout.
    pub state: HostStateValue,
}

/// A group of a service's rollout (`group_by`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Service name.
    pub service: String,
    /// Value of the rollout's `group_by` label.
    pub group: String,
}

/// Why a rollout stopped rolling forward, as a label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HaltReason {
    /// More hosts failed than `max_failures` allows.
    failures,
    /// No host finished within `progress_deadline`.
    progress_deadline,
    /// An operator aborted it.
    aborted,
}

/// Halts by service and reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HaltLabels {
    /// Service name.
    pub service: String,
    /// Why.
    pub reason: HaltReason,
}

/// Every metric the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    /// What `/metrics` renders.
    pub registry: Arc<Registry>,
    /// Agents with a session on this replica.
    pub agents_connected: Gauge,
    /// Agent sessions this replica opened / that ended.
    pub sessions_opened: Counter,
    /// See `sessions_opened`.
    pub sessions_closed: Counter,
    /// Agent sessions refused because every opening turn stayed taken (a reconnect storm).
    pub sessions_busy: Counter,
    /// 1 while this replica is the leader.
    pub leader: Gauge,
    /// Times this replica won the election.
    pub elections: Counter,
    /// Rollouts that are not final, by service and phase (leader).
    pub rollouts: Family<PhaseLabels, Gauge>,
    /// Hosts of each active rollout by state (leader).
    pub rollout_hosts: Family<HostStateLabels, Gauge>,
    /// Hosts of the service counted out of service now, and the budget (leader).
    pub unavailable: Family<ServiceLabel, Gauge>,
    /// See `unavailable`.
    pub max_unavailable: Family<ServiceLabel, Gauge>,
    /// The same per group (`group_by`).
    pub group_unavailable: Family<GroupLabels, Gauge>,
    /// See `group_unavailable`.
    pub group_max_unavailable: Family<GroupLabels, Gauge>,
    /// Failed hosts of the active rollout, and what it allows.
    pub failures: Family<ServiceLabel, Gauge>,
    /// See `failures`.
    pub max_failures: Family<ServiceLabel, Gauge>,
    /// The wave now allowed to run (0 = canary when there is one).
    pub wave: Family<ServiceLabel, Gauge>,
    /// Slots granted.
    pub grants: Family<ServiceLabel, Counter>,
    /// From a host's result to the next grant of the same rollout: how fast a freed share of
    /// the budget is handed over.
    pub handover: Histogram,
    /// How long the leader's planning rounds take (read the fleet and the active rollouts,
    /// plan, grant): at 10,000 hosts the round is what bounds the grant rate.
    pub planning_round: Histogram,
    /// Rollouts that stopped rolling forward.
    pub halts: Family<HaltLabels, Counter>,
    /// etcd request latency and errors, fed by the channel the etcd client uses.
    pub etcd: EtcdMetrics,
}

/// Buckets of the planning round time: 1 ms to ~16 s.
fn round_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// Buckets of the hand-over latency: 5 ms to ~40 s.
fn handover_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 14)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under `rollgate_`.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("rollgate");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            agents_connected: Gauge::default(),
            sessions_opened: Counter::default(),
            sessions_closed: Counter::default(),
            sessions_busy: Counter::default(),
            leader: Gauge::default(),
            elections: Counter::default(),
            rollouts: Family::default(),
            rollout_hosts: Family::default(),
            unavailable: Family::default(),
            max_unavailable: Family::default(),
            group_unavailable: Family::default(),
            group_max_unavailable: Family::default(),
            failures: Family::default(),
            max_failures: Family::default(),
            wave: Family::default(),
            grants: Family::default(),
            handover: Histogram::new(handover_buckets()),
            planning_round: Histogram::new(round_buckets()),
            halts: Family::default(),
            etcd: EtcdMetrics::default(),
        };
        m.register(&mut r);
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    fn register(&self, r: &mut Registry) {
        let c = |x: &Counter| x.clone();
        let g = |x: &Gauge| x.clone();
        r.register(
            "agents_connected",
            "Agents with a session on this replica",
            g(&self.agents_connected),
        );
        r.register(
            "agent_sessions_opened",
            "Agent sessions this replica opened",
            c(&self.sessions_opened),
        );
        r.register(
            "agent_sessions_closed",
            "Agent sessions on this replica that ended",
            c(&self.sessions_closed),
        );
        r.register(
            "agent_sessions_busy",
            "Agent sessions refused because this replica was busy opening others (they retry)",
            c(&self.sessions_busy),
        );
        r.register(
            "leader",
            "1 while this replica is the leader that plans and grants",
            g(&self.leader),
        );
        r.register(
            "leader_elections",
            "Times this replica won the leader election",
            c(&self.elections),
        );
        r.register(
            "rollouts",
            "Rollouts that have not ended, by service and phase",
            self.rollouts.clone(),
        );
        r.register(
            "rollout_hosts",
            "Hosts of the active rollout of a service, by state",
            self.rollout_hosts.clone(),
        );
        r.register(
            "unavailable_hosts",
            "Hosts of the service counted out of service now",
            self.unavailable.clone(),
        );
        r.register(
            "max_unavailable_hosts",
            "The active rollout's budget (max_unavailable)",
            self.max_unavailable.clone(),
        );
        r.register(
            "group_unavailable_hosts",
            "Hosts of a group (group_by) counted out of service now",
            self.group_unavailable.clone(),
        );
        r.register(
            "group_max_unavailable_hosts",
            "The group's budget",
            self.group_max_unavailable.clone(),
        );
        r.register(
            "rollout_failed_hosts",
            "Hosts of the active rollout that failed",
            self.failures.clone(),
        );
        r.register(
            "rollout_max_failures",
            "Failures the active rollout tolerates (max_failures)",
            self.max_failures.clone(),
        );
        r.register(
            "rollout_wave",
            "The wave allowed to run (0 = canary when there is one)",
            self.wave.clone(),
        );
        r.register(
            "slot_grants",
            "Slots granted (a host allowed to go out of service)",
            self.grants.clone(),
        );
        r.register_with_unit(
            "handover",
            "From a host's result to the next grant of the same rollout",
            Unit::Seconds,
            self.handover.clone(),
        );
        r.register_with_unit(
            "planning_round",
            "The leader's planning rounds (read fleet and rollouts, plan, grant)",
            Unit::Seconds,
            self.planning_round.clone(),
        );
        r.register(
            "rollout_halts",
            "Rollouts that stopped rolling forward, by reason",
            self.halts.clone(),
        );
        self.etcd.register(r);
    }

    /// Agents with a session here now.
    pub fn set_connected(&self, n: usize) {
        self.agents_connected.set(n as i64);
    }
}
