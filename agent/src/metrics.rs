//! The agent's Prometheus metrics (`[metrics] listen` in its config; served by
//! `rollgate_proto::metrics`). One agent per process, so one registry for the process.
//! Labels: services (from the config), health, outcome, step and probe kind, all closed or
//! operator-defined sets; versions only in the info metric.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use rollgate_proto::pb;

/// A service and one health value (1 on the one it has now).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HealthLabels {
    service: String,
    health: HealthValue,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum HealthValue {
    unknown,
    healthy,
    unhealthy,
    stopped,
}

const HEALTHS: [HealthValue; 4] = [
    HealthValue::unknown,
    HealthValue::healthy,
    HealthValue::unhealthy,
    HealthValue::stopped,
];

impl From<pb::Health> for HealthValue {
    fn from(h: pb::Health) -> Self {
        match h {
            pb::Health::Unknown => HealthValue::unknown,
            pb::Health::Healthy => HealthValue::healthy,
            pb::Health::Unhealthy => HealthValue::unhealthy,
            pb::Health::Stopped => HealthValue::stopped,
        }
    }
}

/// A service and the version it runs (`rollgate_agent_release_info`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReleaseLabels {
    service: String,
    version: String,
}

/// A service and how an order ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    service: String,
    outcome: String,
}

/// A step of an update (`pb::Step` words, snake_case).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepLabels {
    step: String,
}

/// A service's probe of one kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProbeLabels {
    service: String,
    kind: &'static str,
}

/// Every metric the agent exports.
pub(crate) struct AgentMetrics {
    pub(crate) registry: Arc<Registry>,
    health: Family<HealthLabels, Gauge>,
    release: Family<ReleaseLabels, Gauge>,
    updates: Family<OutcomeLabels, Counter>,
    step_seconds: Family<StepLabels, Histogram>,
    probe_seconds: Family<ProbeLabels, Histogram>,
    probe_failures: Family<ProbeLabels, Counter>,
    fetched_bytes: Counter,
    fetch_retries: Counter,
    reconnects: Counter,
    /// Per service: the version in the info metric, and the step in flight since when.
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    version: Option<String>,
    step: Option<(pb::Step, Instant)>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

/// Step and probe durations: 1 ms to ~130 s.
fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);

/// The process's metrics.
pub(crate) fn get() -> &'static AgentMetrics {
    &METRICS
}

impl AgentMetrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("rollgate_agent");
        let m = AgentMetrics {
            registry: Arc::new(Registry::default()),
            health: Family::default(),
            release: Family::default(),
            updates: Family::default(),
            step_seconds: Family::new_with_constructor(buckets),
            probe_seconds: Family::new_with_constructor(buckets),
            probe_failures: Family::default(),
            fetched_bytes: Counter::default(),
            fetch_retries: Counter::default(),
            reconnects: Counter::default(),
            seen: Mutex::default(),
        };
        r.register(
            "service_health",
            "1 on the health each service has now",
            m.health.clone(),
        );
        r.register(
            "release_info",
            "The version each service runs (value 1)",
            m.release.clone(),
        );
        r.register(
            "updates",
            "Orders carried out, by service and outcome",
            m.updates.clone(),
        );
        r.register_with_unit(
            "update_step",
            "Time spent in each step of an update",
            Unit::Seconds,
            m.step_seconds.clone(),
        );
        r.register_with_unit(
            "probe",
            "Health probe latency",
            Unit::Seconds,
            m.probe_seconds.clone(),
        );
        r.register(
            "probe_failures",
            "Health probe runs that failed",
            m.probe_failures.clone(),
        );
        r.register_with_unit(
            "fetched",
            "Release bytes downloaded",
            Unit::Bytes,
            m.fetched_bytes.clone(),
        );
        r.register(
            "fetch_retries",
            "Downloads tried again (resuming from the bytes on disk)",
            m.fetch_retries.clone(),
        );
        r.register(
            "reconnects",
            "Coordinator sessions lost and dialed again",
            m.reconnects.clone(),
        );
        AgentMetrics {
            registry: Arc::new(r),
            ..m
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A service's latest status: its health and the version it runs.
    pub(crate) fn status(&self, s: &pb::ServiceStatus) {
        let now = HealthValue::from(s.health());
        for h in HEALTHS {
            let labels = HealthLabels {
                service: s.service.clone(),
                health: h,
            };
            self.health.get_or_create(&labels).set(i64::from(h == now));
        }
        let mut seen = self.seen();
        let entry = seen.entry(s.service.clone()).or_default();
        let version = (!s.version.is_empty()).then(|| s.version.clone());
        if entry.version != version {
            if let Some(old) = entry.version.take() {
                self.release.remove(&ReleaseLabels {
                    service: s.service.clone(),
                    version: old,
                });
            }
            if let Some(new) = &version {
                let labels = ReleaseLabels {
                    service: s.service.clone(),
                    version: new.clone(),
                };
                self.release.get_or_create(&labels).set(1);
            }
            entry.version = version;
        }
    }

    /// An order moved to `step` (the time in the previous step is recorded).
    pub(crate) fn step(&self, service: &str, step: pb::Step) {
        let mut seen = self.seen();
        let entry = seen.entry(service.to_string()).or_default();
        if entry.step.is_some_and(|(s, _)| s == step) {
            return;
        }
        self.close_step(entry);
        entry.step = Some((step, Instant::now()));
    }

    /// An order ended with `outcome` (the time in its last step is recorded).
    pub(crate) fn finished(&self, service: &str, outcome: pb::Outcome) {
        let labels = OutcomeLabels {
            service: service.to_string(),
            outcome: outcome.word().replace(' ', "_"),
        };
        self.updates.get_or_create(&labels).inc();
        let mut seen = self.seen();
        if let Some(entry) = seen.get_mut(service) {
            self.close_step(entry);
        }
    }

    fn close_step(&self, entry: &mut Seen) {
        if let Some((step, since)) = entry.step.take() {
            let labels = StepLabels {
                step: step.word().replace(' ', "_"),
            };
            self.step_seconds
                .get_or_create(&labels)
                .observe(since.elapsed().as_secs_f64());
        }
    }

    /// One probe run: how long it took and whether it passed.
    pub(crate) fn probe(
        &self,
        service: &str,
        kind: &'static str,
        took: std::time::Duration,
        ok: bool,
    ) {
        let labels = ProbeLabels {
            service: service.to_string(),
            kind,
        };
        self.probe_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.probe_failures.get_or_create(&labels).inc();
        }
    }

    /// Bytes of a release written to disk.
    pub(crate) fn fetched(&self, bytes: u64) {
        self.fetched_bytes.inc_by(bytes);
    }

    /// A download tried again.
    pub(crate) fn fetch_retry(&self) {
        self.fetch_retries.inc();
    }

    /// A coordinator session lost.
    pub(crate) fn reconnect(&self) {
        self.reconnects.inc();
    }
}
