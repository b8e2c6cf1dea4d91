//! etcd key schema, the records stored under it, and typed reads of a rollout's whole state.
//!
//! Layout under the prefix (default `/rollgate/`):
//!
//! | key | lifetime | holds |
//! |---|---|---|
//! | `leader` (election) | leader's lease | which replica plans and grants |
//! | `hosts/<id>` | durable | [`HostRecord`] |
//! | `sessions/<id>` | lease of the replica holding the stream | [`SessionRecord`] |
//! | `rollouts/<rid>` | durable | [`RolloutRecord`] |
//! | `rollouts/<rid>/hosts/<id>` | durable | [`HostStep`]: the budget holder while `updating` |
//! | `rollouts/<rid>/staged/<id>` | durable | [`StageRecord`] (stage_first) |
//! | `slots/<service>/<id>` | lease of the replica holding the host's stream | [`SlotRecord`]: the live grant; one per host and service |
//! | `token` | durable | the last fencing token handed out (grows with every grant) |
//! | `services/<name>/active` | until the rollout ends | id of the one active rollout |
//! | `services/<name>/history/<at>` | durable | [`HistoryRecord`]: releases that completed |
//! | `artifacts/<sha256>` | durable | [`ArtifactRecord`] |
//! | `replicas/<id>` | that replica's lease | its advertised URL (to copy artifacts from it) |
//!
//! A slot key vanishes when the replica holding the host's stream loses its lease. That never
//! frees budget (S2): the durable step stays `updating`, and the planner sees the host as lost
//! until it reports (through any replica) or an operator fences it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::KeyValue;
use rollgate_proto::spec::{ReleaseSpec, RolloutSpec, SignatureSpec};
use rollgate_proto::{names, pb};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

mod read;

pub use read::{
    active_rollouts, history, list_rollouts, read_fleet, read_rollout, read_round, FleetView,
    RolloutList, RolloutView, RoundView,
};

/// A failure talking to etcd or reading what is stored there.
#[derive(Debug, Error)]
pub enum StoreError {
    /// etcd did not answer or refused the request.
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A stored value is not what this version of rollgate can read.
    #[error("etcd key {key} holds a value rollgate cannot read ({err}); it was written by another version or by hand")]
    Corrupt {
        /// The key.
        key: String,
        /// The decode error.
        err: String,
    },
    /// A session's write found the host's session key no longer its own (a newer session of the
    /// host took over, or this replica's lease expired): the write was not applied.
    #[error("this session of host {host} was replaced (a newer session, or this replica lost its etcd lease); the agent re-sends on its next session")]
    Superseded {
        /// The host.
        host: String,
    },
    /// A host's result lost the race for its step or slot to other writers every time it was
    /// tried (each try reads again): not recorded; the agent re-sends it on its next session.
    #[error("the result of host {host} could not be recorded: its step or slot changed {tries} times while it was written; the agent re-sends it on its next session")]
    Contended {
        /// The host.
        host: String,
        /// How many times it was tried.
        tries: u32,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (which starts and ends with '/').
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// The whole prefix.
    pub fn all(&self) -> String {
        self.prefix.clone()
    }
    /// Election name for the leader.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    /// Prefix of all host records.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }
    /// One host's durable record.
    pub fn host(&self, id: &str) -> String {
        format!("{}hosts/{}", self.prefix, seg(id))
    }
    /// Prefix of all live sessions.
    pub fn sessions(&self) -> String {
        format!("{}sessions/", self.prefix)
    }
    /// One host's liveness key.
    pub fn session(&self, id: &str) -> String {
        format!("{}sessions/{}", self.prefix, seg(id))
    }
    /// Prefix of all rollouts (records, host steps and slots).
    pub fn rollouts(&self) -> String {
        format!("{}rollouts/", self.prefix)
    }
    /// A rollout's record.
    pub fn rollout(&self, rid: &str) -> String {
        format!("{}rollouts/{}", self.prefix, seg(rid))
    }
    /// Prefix of a rollout's host steps.
    pub fn steps(&self, rid: &str) -> String {
        format!("{}rollouts/{}/hosts/", self.prefix, seg(rid))
    }
    /// One host's step in a rollout.
    pub fn step(&self, rid: &str, host: &str) -> String {
        format!("{}rollouts/{}/hosts/{}", self.prefix, seg(rid), seg(host))
    }
    /// A host's staging report in a rollout.
    pub fn staged(&self, rid: &str, host: &str) -> String {
        format!("{}rollouts/{}/staged/{}", self.prefix, seg(rid), seg(host))
    }
    /// Prefix of all slots.
    pub fn all_slots(&self) -> String {
        format!("{}slots/", self.prefix)
    }
    /// Prefix of a service's slots.
    pub fn slots(&self, service: &str) -> String {
        format!("{}slots/{}/", self.prefix, seg(service))
    }
    /// One host's slot for a service.
    pub fn slot(&self, service: &str, host: &str) -> String {
        format!("{}slots/{}/{}", self.prefix, seg(service), seg(host))
    }
    /// The fencing-token counter.
    pub fn token(&self) -> String {
        format!("{}token", self.prefix)
    }
    /// Prefix of a service's release history.
    pub fn history(&self, service: &str) -> String {
        format!("{}services/{}/history/", self.prefix, seg(service))
    }
    /// One history entry (keys sort by time).
    pub fn history_entry(&self, service: &str, at_ms: i64, rid: &str) -> String {
        format!(
            "{}services/{}/history/{at_ms:015}-{}",
            self.prefix,
            seg(service),
            seg(rid)
        )
    }
    /// Prefix of the active-rollout markers.
    pub fn services(&self) -> String {
        format!("{}services/", self.prefix)
    }
    /// The one active rollout of a service.
    pub fn active(&self, service: &str) -> String {
        format!("{}services/{}/active", self.prefix, seg(service))
    }
    /// A live replica's address (bound to its lease).
    pub fn replica(&self, id: &str) -> String {
        format!("{}replicas/{}", self.prefix, seg(id))
    }
    /// An artifact's metadata.
    pub fn artifact(&self, sha256: &str) -> String {
        format!("{}artifacts/{}", self.prefix, seg(sha256))
    }
    /// Prefix of the operators' pins (outside `hosts/`, which holds only host records).
    pub fn pins(&self) -> String {
        format!("{}pins/", self.prefix)
    }
    /// What an operator pinned for a host (`rollgate host label`).
    pub fn pin(&self, host: &str) -> String {
        format!("{}pins/{}", self.prefix, seg(host))
    }

    /// Splits a key under `rollouts/` into (rollout id, kind, host): kind is "" for the rollout
    /// record, "hosts" or "staged". A host part that is not a host id (a key rollgate never
    /// writes, e.g. `hosts/h/staged/h` written by an older version for a hostile host) is
    /// `None`: never read as a step.
    pub fn parse_rollout_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("rollouts/")?;
        let mut parts = rest.splitn(3, '/');
        let rid = parts.next()?;
        match (parts.next(), parts.next()) {
            (None, _) => Some((rid, "", "")),
            (Some(kind), Some(host)) if names::check("host id", host).is_ok() => {
                Some((rid, kind, host))
            }
            _ => None,
        }
    }
}

/// One key segment: ids are validated before they get here (S9); escaping '/' (and '%') as
/// well means even an id that slipped through can never add a level to the key schema.
fn seg(id: &str) -> std::borrow::Cow<'_, str> {
    if id.contains(['/', '%']) {
        id.replace('%', "%25").replace('/', "%2F").into()
    } else {
        id.into()
    }
}

/// What an operator granted a host (`rollgate host label`): rollouts see these labels (and,
/// when `services` is set, only these services) whatever the host's agent claims (S9).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The host's labels, as rollouts see them.
    pub labels: BTreeMap<String, String>,
    /// The services the host may be targeted for; `None`: whatever it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<std::collections::BTreeSet<String>>,
    /// Who pinned it (the operator's identity), for the record.
    pub by: String,
    /// When.
    pub at_ms: i64,
}

impl PinRecord {
    /// Applies the pin to a host record as read: labels replaced, services outside the pin
    /// dropped. Returns what the host claimed that the pin overrides, for the operator.
    pub fn apply(&self, rec: &mut HostRecord) -> Vec<String> {
        let mut overridden = Vec::new();
        if rec.labels != self.labels {
            overridden.push(format!("labels {:?}", rec.labels));
            rec.labels = self.labels.clone();
        }
        if let Some(allowed) = &self.services {
            let extra: Vec<String> = rec
                .services
                .keys()
                .filter(|s| !allowed.contains(*s))
                .cloned()
                .collect();
            if !extra.is_empty() {
                overridden.push(format!("services {extra:?}"));
                rec.services.retain(|s, _| allowed.contains(s));
            }
        }
        overridden
    }
}

/// What the coordinator knows of a host (durable; written on hello and on status changes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Host id (from the agent's hello).
    pub host_id: String,
    /// Labels from the agent's config.
    pub labels: BTreeMap<String, String>,
    /// The agent's version.
    pub agent_version: String,
    /// Each service's last reported state.
    pub services: BTreeMap<String, ServiceState>,
    /// When the host last connected or reported.
    pub last_seen_ms: i64,
    /// An operator fenced the host (`rollgate host fence`): it counts against no budget and
    /// gets no orders until it reconnects.
    #[serde(default)]
    pub fenced: bool,
    /// Who fenced it (the operator's certificate identity), for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
}

/// A service's last reported release and health on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Version running ("" when nothing is installed).
    pub version: String,
    /// Its sha256.
    pub sha256: String,
    /// Health as reported by the agent.
    pub health: Health,
    /// The agent's explanation.
    pub detail: String,
    /// The order the agent reports carrying out on this service (0: none). Evidence that the
    /// host is out of service whichever rollout granted it (S1, S2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub in_flight_token: u64,
    /// The rollout of that order.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub in_flight_rollout: String,
    /// When the agent observed this state (its clock); older reports never overwrite newer.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_at_ms: i64,
    /// The agent reports `version` regressed after its commit (within `watch_after_commit`):
    /// a verdict on that release.
    #[serde(default, skip_serializing_if = "is_false")]
    pub regressed: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

impl ServiceState {
    /// Whether the host never ran the service: nothing installed and nothing wrong. A host
    /// whose release cannot be read reports an empty version with `unhealthy`: an outage.
    pub fn never_ran(&self) -> bool {
        self.version.is_empty()
            && self.in_flight_token == 0
            && matches!(self.health, Health::Stopped | Health::Unknown)
    }
    /// Whether `newer` may replace this state: never an older observation over a newer one
    /// (0 means "not stamped": an agent from before the stamps, always applied).
    pub fn superseded_by(&self, newer_observed_at_ms: i64) -> bool {
        self.observed_at_ms == 0
            || newer_observed_at_ms == 0
            || newer_observed_at_ms >= self.observed_at_ms
    }
}

/// Health as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not reported yet.
    #[default]
    Unknown,
    /// Passing its probes.
    Healthy,
    /// Failing its probes.
    Unhealthy,
    /// Not running (nothing installed, or down).
    Stopped,
}

impl From<pb::Health> for Health {
    fn from(h: pb::Health) -> Self {
        match h {
            pb::Health::Unknown => Health::Unknown,
            pb::Health::Healthy => Health::Healthy,
            pb::Health::Unhealthy => Health::Unhealthy,
            pb::Health::Stopped => Health::Stopped,
        }
    }
}

impl From<Health> for pb::Health {
    fn from(h: Health) -> Self {
        match h {
            Health::Unknown => pb::Health::Unknown,
            Health::Healthy => pb::Health::Healthy,
            Health::Unhealthy => pb::Health::Unhealthy,
            Health::Stopped => pb::Health::Stopped,
        }
    }
}

impl From<&pb::ServiceStatus> for ServiceState {
    fn from(s: &pb::ServiceStatus) -> Self {
        ServiceState {
            version: s.version.clone(),
            sha256: s.sha256.clone(),
            health: s.health().into(),
            detail: s.detail.clone(),
            in_flight_token: s.in_flight_token,
            in_flight_rollout: s.in_flight_rollout.clone(),
            observed_at_ms: s.observed_at_ms,
            regressed: s.regressed,
        }
    }
}

/// Liveness of an agent's stream (bound to the serving replica's lease).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Replica holding the stream.
    pub replica_id: String,
    /// Unique id of this connection, so a replica deletes only its own session key.
    pub conn_id: String,
    /// When the stream opened.
    pub connected_at_ms: i64,
}

/// Phase of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Granting slots as the budget allows.
    Rolling,
    /// Stopped by an operator: no new slots; hosts in flight finish.
    Paused,
    /// Every target is on the new release (failures, if any, were within `max_failures`).
    Succeeded,
    /// Halted by the failure policy: no new slots; hosts in flight finish or roll back.
    Failed,
    /// Stopped for good by an operator.
    Aborted,
    /// The failure policy or an operator started a rollback rollout for it.
    RollingBack,
    /// Its rollback rollout finished.
    RolledBack,
}

impl Phase {
    /// The rollout has ended: it grants no more slots (rules: [`pb::Phase::has_ended`]).
    pub fn is_terminal(self) -> bool {
        pb::Phase::from(self).has_ended()
    }
}

impl From<Phase> for pb::Phase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Rolling => pb::Phase::Rolling,
            Phase::Paused => pb::Phase::Paused,
            Phase::Succeeded => pb::Phase::Succeeded,
            Phase::Failed => pb::Phase::Failed,
            Phase::Aborted => pb::Phase::Aborted,
            Phase::RollingBack => pb::Phase::RollingBack,
            Phase::RolledBack => pb::Phase::RolledBack,
        }
    }
}

/// The wire phase has one value no record holds: unspecified (an unreadable list entry).
impl TryFrom<pb::Phase> for Phase {
    type Error = pb::Phase;
    fn try_from(p: pb::Phase) -> Result<Self, Self::Error> {
        Ok(match p {
            pb::Phase::Unspecified => return Err(p),
            pb::Phase::Rolling => Phase::Rolling,
            pb::Phase::Paused => Phase::Paused,
            pb::Phase::Succeeded => Phase::Succeeded,
            pb::Phase::Failed => Phase::Failed,
            pb::Phase::Aborted => Phase::Aborted,
            pb::Phase::RollingBack => Phase::RollingBack,
            pb::Phase::RolledBack => Phase::RolledBack,
        })
    }
}

/// For logs and messages: the wire word ("rolling_back").
impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(pb::Phase::from(*self).word())
    }
}

/// A rollout (durable; the spec and targets never change after creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Rollout id.
    pub id: String,
    /// The validated spec, with the release fully resolved.
    pub spec: RolloutSpec,
    /// Target host ids, in the order they are upgraded.
    pub targets: Vec<String>,
    /// `max_unavailable` resolved against the number of targets.
    pub max_unavailable: u32,
    /// Current phase.
    pub phase: Phase,
    /// Why the rollout ended the way it did, or who paused it.
    pub reason: String,
    /// Creation time.
    pub created_at_ms: i64,
    /// Last phase change (also: resume, promote, wave opened).
    pub updated_at_ms: i64,
    /// Index of the wave now open (0 = canary when there is one).
    #[serde(default)]
    pub wave: u32,
    /// Failures an operator accepted by resuming after the failure policy paused the rollout.
    #[serde(default)]
    pub tolerated_failures: u32,
    /// The release the service ran before (what a rollback goes back to).
    #[serde(default)]
    pub previous: Option<ReleaseSpec>,
    /// This rollout rolls back that one.
    #[serde(default)]
    pub rollback_of: Option<String>,
    /// The rollout that rolls this one back.
    #[serde(default)]
    pub rolled_back_by: Option<String>,
    /// With `group_by`: each host's group, fixed when the rollout was created (the service's
    /// hosts then, targets or not); a label changed later moves nothing (S1). A rollback
    /// inherits its parent's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, String>,
    /// With `group_by`: each group's budget, fixed at creation (a rollback inherits them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_budgets: BTreeMap<String, u32>,
    /// When the leader saw the open wave finish (its own clock, so a gate's wait is measured
    /// on one clock); `None` until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_done: Option<WaveDone>,
    /// Who created it: the operator's certificate identity (`None`: the failure policy, or no
    /// TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The last operator action on it (pause, resume, promote, abort, rollback), for the audit
    /// trail: the event log attributes the change it made to this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<OperatorStamp>,
}

/// Who did what to a rollout, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorStamp {
    /// The operator's certificate identity (`spiffe://FLEET/operator/NAME`).
    pub by: String,
    /// When (the replica's clock).
    pub at_ms: i64,
}

/// The leader's stamp of a finished wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveDone {
    /// The wave (index into the wave bounds).
    pub wave: u32,
    /// The leader's clock when it saw every host of the wave final.
    pub at_ms: i64,
    /// What opens the gate after it. Stamps written before this field were all timed (a manual
    /// gate was not stamped then).
    #[serde(default)]
    pub gate: WaveGate,
}

/// What opens the gate after a finished wave (stored in its stamp, so the event log can tell a
/// gate that waits for an operator from one that opens by itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveGate {
    /// A bake or a pause: it opens by itself when its time is up.
    #[default]
    Timed,
    /// It waits for an operator's `rollgate rollout promote`.
    Manual,
}

/// A host's answer to a stage order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Staged and verified.
    pub ok: bool,
    /// Why not.
    pub reason: String,
    /// When.
    pub at_ms: i64,
}

/// A release a service completed a rollout to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The release.
    pub release: ReleaseSpec,
    /// The rollout that installed it.
    pub rollout_id: String,
    /// When it completed.
    pub at_ms: i64,
}

/// Where one host is in one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Not started.
    Pending,
    /// Holds a slot; the agent is fetching, swapping or verifying.
    Updating,
    /// Runs the new release, healthy for `min_healthy_time`.
    Done,
    /// The new release failed; the host is back on its previous release.
    RolledBack,
    /// The new release failed and the host could not be brought back (or refused the order).
    Failed,
    /// An agent restart interrupted its update and the agent undid it: not a verdict on the
    /// release. It waits to be granted again (see [`MAX_INTERRUPTIONS`]).
    Interrupted,
}

pub use rollgate_proto::status::MAX_INTERRUPTIONS;

impl HostState {
    /// The host's part of the rollout is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            HostState::Done | HostState::RolledBack | HostState::Failed
        )
    }
    /// The host counts as a failure of the rollout.
    pub fn is_failure(self) -> bool {
        matches!(self, HostState::RolledBack | HostState::Failed)
    }
}

impl From<HostState> for pb::HostState {
    fn from(h: HostState) -> Self {
        match h {
            HostState::Pending => pb::HostState::Pending,
            HostState::Updating => pb::HostState::Updating,
            HostState::Done => pb::HostState::Done,
            HostState::RolledBack => pb::HostState::RolledBack,
            HostState::Failed => pb::HostState::Failed,
            HostState::Interrupted => pb::HostState::Interrupted,
        }
    }
}

/// For logs and messages: the wire word ("rolled_back").
impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(pb::HostState::from(*self).word())
    }
}

/// The step of an order an agent last reported, as stored: a serde enum, never display text
/// (the planner halts on `RollingBack`; rewording a message must not change that). Records
/// written before stored the display words ("rolling back"), which still read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStep {
    /// Nothing reported (granted, or finished).
    #[default]
    #[serde(alias = "")]
    None,
    /// Order accepted.
    Accepted,
    /// Downloading.
    Fetching,
    /// Downloaded and verified.
    Staged,
    /// Switching `current`.
    Swapping,
    /// Starting the new release.
    Starting,
    /// Watching its health.
    Verifying,
    /// Going back to the previous release (the agent's failure verdict).
    #[serde(alias = "rolling back")]
    RollingBack,
}

impl From<pb::Step> for AgentStep {
    fn from(s: pb::Step) -> Self {
        match s {
            pb::Step::Unspecified => AgentStep::None,
            pb::Step::Accepted => AgentStep::Accepted,
            pb::Step::Fetching => AgentStep::Fetching,
            pb::Step::Staged => AgentStep::Staged,
            pb::Step::Swapping => AgentStep::Swapping,
            pb::Step::Starting => AgentStep::Starting,
            pb::Step::Verifying => AgentStep::Verifying,
            pb::Step::RollingBack => AgentStep::RollingBack,
        }
    }
}

impl From<AgentStep> for pb::Step {
    fn from(s: AgentStep) -> Self {
        match s {
            AgentStep::None => pb::Step::Unspecified,
            AgentStep::Accepted => pb::Step::Accepted,
            AgentStep::Fetching => pb::Step::Fetching,
            AgentStep::Staged => pb::Step::Staged,
            AgentStep::Swapping => pb::Step::Swapping,
            AgentStep::Starting => pb::Step::Starting,
            AgentStep::Verifying => pb::Step::Verifying,
            AgentStep::RollingBack => pb::Step::RollingBack,
        }
    }
}

impl AgentStep {
    /// The word operators see ("rolling back").
    pub fn word(self) -> &'static str {
        pb::Step::from(self).word()
    }
}

/// One host's step in one rollout (durable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStep {
    /// Where the host is.
    pub state: HostState,
    /// Fencing token of its grant (0 before a grant).
    pub token: u64,
    /// When the slot was granted.
    #[serde(default)]
    pub granted_at_ms: i64,
    /// Last step the agent reported (a closed set: the planner decides on it).
    #[serde(default)]
    pub step: AgentStep,
    /// Last progress message.
    pub message: String,
    /// Why it failed or rolled back.
    pub reason: String,
    /// Version running after the order finished.
    pub running_version: String,
    /// Last change.
    pub updated_at_ms: i64,
    /// How many of its grants in this rollout an agent restart interrupted (records written
    /// before this field read as 0; 0 is not written, so such records keep their text).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub interruptions: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl HostStep {
    /// A host not started yet.
    pub fn pending() -> Self {
        HostStep {
            state: HostState::Pending,
            token: 0,
            granted_at_ms: 0,
            step: AgentStep::None,
            message: String::new(),
            reason: String::new(),
            running_version: String::new(),
            updated_at_ms: now_ms(),
            interruptions: 0,
        }
    }
}

/// A grant: permission for one host to take its service down. Everything the order needs is in
/// here so any replica can send it without another read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Rollout id.
    pub rollout_id: String,
    /// Fencing token of this grant.
    pub token: u64,
    /// Host id.
    pub host_id: String,
    /// Service to update.
    pub service: String,
    /// Release version.
    pub version: String,
    /// Where the bytes come from.
    pub source: String,
    /// sha256 of the artifact.
    pub sha256: String,
    /// Size of the artifact.
    pub size: u64,
    /// The publisher's signature, passed on to the agent (absent in slots written before
    /// releases were signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureSpec>,
    /// The grant belongs to a rollback rollout: the agent may go back to an older release it
    /// has run before.
    #[serde(default)]
    pub rollback: bool,
    /// How long the host must stay healthy.
    pub min_healthy_time_ms: u64,
    /// How long it may take.
    pub healthy_deadline_ms: u64,
    /// Replica that granted it.
    pub granted_by: String,
    /// When.
    pub granted_at_ms: i64,
}

impl SlotRecord {
    /// The order an agent receives for this slot, fenced by its token.
    pub fn order(&self) -> pb::UpdateOrder {
        pb::UpdateOrder {
            rollout_id: self.rollout_id.clone(),
            token: self.token,
            service: self.service.clone(),
            release: Some(pb::Release {
                version: self.version.clone(),
                source: self.source.clone(),
                sha256: self.sha256.clone(),
                size: self.size,
                signature: self.signature.as_ref().and_then(|s| s.to_pb().ok()),
            }),
            min_healthy_time_ms: self.min_healthy_time_ms,
            healthy_deadline_ms: self.healthy_deadline_ms,
            rollback: self.rollback,
        }
    }
}

/// A stored artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// sha256 (hex).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Replica whose state dir holds the bytes.
    pub stored_by: String,
    /// When it was pushed.
    pub pushed_at_ms: i64,
}

/// Decodes a stored JSON value, naming the key on failure.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        err: e.to_string(),
    })
}

/// Encodes a record as JSON.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialize")
}

#[cfg(test)]
mod record_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_written_as_words_still_read() {
        for (old, want) in [
            ("rolling back", AgentStep::RollingBack),
            ("rolling_back", AgentStep::RollingBack),
            ("verifying", AgentStep::Verifying),
            ("", AgentStep::None),
        ] {
            let json = format!(
                r#"{{"state":"updating","token":3,"step":"{old}","message":"m","reason":"","running_version":"","updated_at_ms":1}}"#
            );
            let s: HostStep = serde_json::from_str(&json).expect(old);
            assert_eq!(s.step, want, "{old:?}");
        }
        // New records store the enum's name, never the display text.
        let mut s = HostStep::pending();
        s.step = AgentStep::RollingBack;
        let text = String::from_utf8(encode(&s)).expect("utf-8");
        assert!(text.contains(r#""step":"rolling_back""#), "{text}");
        assert_eq!(AgentStep::RollingBack.word(), "rolling back");
    }

    #[test]
    fn rollout_keys_parse() {
        let k = Keys::new("/rollgate/");
        assert_eq!(
            k.parse_rollout_key("/rollgate/rollouts/r1"),
            Some(("r1", "", ""))
        );
        assert_eq!(
            k.parse_rollout_key("/rollgate/rollouts/r1/staged/web-1"),
            Some(("r1", "staged", "web-1"))
        );
        assert_eq!(
            k.parse_rollout_key("/rollgate/rollouts/r1/hosts/web-1"),
            Some(("r1", "hosts", "web-1"))
        );
        assert_eq!(k.parse_rollout_key("/rollgate/hosts/web-1"), None);
        assert_eq!(
            k.parse_rollout_key("/rollgate/rollouts/r1/hosts/h/staged/h"),
            None
        );
        assert_eq!(k.parse_rollout_key("/rollgate/rollouts/r1/staged"), None);
    }

    #[test]
    fn ids_never_add_a_key_level() {
        let k = Keys::new("/rollgate/");
        let rid = "r-0123456789abcdef/hosts/web-1";
        assert_eq!(
            k.staged(rid, "web-1"),
            "/rollgate/rollouts/r-0123456789abcdef%2Fhosts%2Fweb-1/staged/web-1"
        );
        assert_eq!(k.host("a/b%c"), "/rollgate/hosts/a%2Fb%25c");
        assert_eq!(
            k.step("r-a1b2c3", "web-1"),
            "/rollgate/rollouts/r-a1b2c3/hosts/web-1"
        );
    }
}
