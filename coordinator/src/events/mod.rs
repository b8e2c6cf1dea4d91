//! The event log and audit trail (issue 13, item 2): every state change of a rollout, of a
//! host's part in one, and every fence or forget, as a numbered event in etcd.
//!
//! - [`derive`]: what happened, from one record's value before and after a change (pure).
//! - [`api`]: the `Events` stream of the control API (filters, backlog, follow).
//! - [`recorder`]: the leader's task that watches etcd, derives events and stores them with
//!   sequential ids, resuming after a leader change from the revision it stored last.
//!
//! Keys (under the prefix): `events/<id, 20 digits>` ([`EventRecord`]) and `events-cursor`
//! ([`Cursor`]: the last id handed out and the last etcd revision turned into events).

pub mod api;
pub mod derive;
pub mod recorder;
#[cfg(test)]
mod tests;

use rollgate_proto::spec::RolloutSpec;
use serde::{Deserialize, Serialize};

use crate::store::{now_ms, AgentStep, Phase};

/// What kind of thing happened (a closed set: stored as a serde enum, never display text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An operator (or the failure policy, for a rollback) created a rollout.
    RolloutCreated,
    /// Paused by an operator or by the failure policy.
    RolloutPaused,
    /// Back to rolling.
    RolloutResumed,
    /// The next wave opened (a gate passed, or an operator promoted).
    WaveOpened,
    /// A wave finished and the next one waits at a manual gate for `rollgate rollout promote`
    /// (once per gate: derived from the leader's durable stamp of the wave's end).
    GateWaiting,
    /// Halted by the failure policy (`phase = failed`).
    RolloutHalted,
    /// Every target runs the release.
    RolloutSucceeded,
    /// Aborted by an operator.
    RolloutAborted,
    /// A rollback rollout started for it.
    RolloutRollingBack,
    /// Its rollback finished.
    RolloutRolledBack,
    /// A host was granted a slot (with its fencing token).
    HostGranted,
    /// A host reported a step of its update.
    HostStep,
    /// A host runs the new release, healthy.
    HostDone,
    /// A host's update failed and it is back on its previous release.
    HostRolledBack,
    /// A host's update failed and it could not be brought back (or it refused the order).
    HostFailed,
    /// An agent restart interrupted a host's update; it is back on its previous release and
    /// will be granted again (not a failure of the release).
    HostInterrupted,
    /// An operator fenced a host (its grants are void).
    HostFenced,
    /// An operator removed a host's record.
    HostForgotten,
}

/// An event before it has an id (what [`derive`] makes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What happened (`None` only in `Default`).
    pub kind: Option<EventKind>,
    /// The rollout it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// The service of that rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The host it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The operator identity (certificate URI) that caused it, when an operator did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The rollout's new phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The wave that opened (`wave_opened`), or that finished (`gate_waiting`); counted from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// The grant's fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The step a host reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<AgentStep>,
    /// Why, or what (free text from the record).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The full spec, on `rollout_created`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<RolloutSpec>,
}

impl NewEvent {
    fn rollout(kind: EventKind, rollout: &str, service: &str) -> Self {
        NewEvent {
            kind: Some(kind),
            rollout: Some(rollout.to_string()),
            service: Some(service.to_string()),
            ..NewEvent::default()
        }
    }

    fn host(kind: EventKind, rollout: &str, host: &str) -> Self {
        NewEvent {
            kind: Some(kind),
            rollout: Some(rollout.to_string()),
            host: Some(host.to_string()),
            ..NewEvent::default()
        }
    }

    fn fleet(kind: EventKind, host: &str) -> Self {
        NewEvent {
            kind: Some(kind),
            host: Some(host.to_string()),
            ..NewEvent::default()
        }
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Its id: 1, 2, 3, ... across leaders (no gaps, no repeats).
    pub id: u64,
    /// When the leader recorded it (ms since the epoch).
    pub at_ms: i64,
    /// The etcd revision of the change it was derived from.
    pub revision: i64,
    /// What happened.
    #[serde(flatten)]
    pub event: NewEvent,
}

impl EventRecord {
    /// Numbers an event.
    pub fn new(id: u64, revision: i64, event: NewEvent) -> Self {
        EventRecord {
            id,
            at_ms: now_ms(),
            revision,
            event,
        }
    }
}

/// Where the recorder is: the last id it handed out, the last revision it turned into events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Last event id (0: none yet).
    pub id: u64,
    /// Last etcd revision whose changes are recorded.
    pub revision: i64,
}

/// The key of event `id` below `prefix` (ids sort as text).
pub fn event_key(prefix: &str, id: u64) -> String {
    format!("{prefix}events/{id:020}")
}

/// The recorder's cursor key.
pub fn cursor_key(prefix: &str) -> String {
    format!("{prefix}events-cursor")
}
