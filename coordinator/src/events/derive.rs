//! What happened, derived from one change of a record in etcd (pure: the record before and
//! after). Every state change of a rollout or a host's part in it is a change of its record,
//! whoever made it (the leader, a session, an operator), so deriving events here sees them all
//! and no code path can forget to write one.

use serde::de::DeserializeOwned;

use super::{EventKind, NewEvent};
use crate::planner::{explain, wave_bounds, GateWait};
use crate::store::{AgentStep, HostRecord, HostState, HostStep, Phase, RolloutRecord, WaveGate};

/// Which record a key holds (see `store.rs` for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `rollouts/<rid>`.
    Rollout(String),
    /// `rollouts/<rid>/hosts/<host>`.
    Step { rollout: String, host: String },
    /// `hosts/<host>`.
    Host(String),
}

impl Subject {
    /// The subject of a key below the prefix, if it is one events are derived from.
    pub fn of(key: &str) -> Option<Subject> {
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            ["rollouts", rid] => Some(Subject::Rollout(rid.to_string())),
            ["rollouts", rid, "hosts", host] => Some(Subject::Step {
                rollout: rid.to_string(),
                host: host.to_string(),
            }),
            ["hosts", host] => Some(Subject::Host(host.to_string())),
            _ => None,
        }
    }
}

/// The events one change makes. `before`/`after` are the record's bytes (`None`: absent).
/// A record that does not decode makes no event (the planner and the CLI report it).
pub fn derive(subject: &Subject, before: Option<&[u8]>, after: Option<&[u8]>) -> Vec<NewEvent> {
    match subject {
        Subject::Rollout(rid) => rollout(rid, read(before), read(after)),
        Subject::Step { rollout, host } => step(rollout, host, read(before), read(after)),
        Subject::Host(host) => host_record(host, read(before), read(after), after.is_none()),
    }
}

fn read<T: DeserializeOwned>(bytes: Option<&[u8]>) -> Option<T> {
    bytes.and_then(|b| serde_json::from_slice(b).ok())
}

fn rollout(
    rid: &str,
    before: Option<RolloutRecord>,
    after: Option<RolloutRecord>,
) -> Vec<NewEvent> {
    let Some(now) = after else {
        return Vec::new();
    };
    let base = |kind| NewEvent::rollout(kind, rid, &now.spec.service);
    let Some(was) = before else {
        let mut created = base(EventKind::RolloutCreated);
        created.by = now.created_by.clone();
        created.reason = format!(
            "{} {} to {} hosts, max_unavailable {}",
            if now.rollback_of.is_some() {
                "rollback to"
            } else {
                "release"
            },
            now.spec.release.version,
            now.targets.len(),
            now.max_unavailable
        );
        created.spec = Some(now.spec.clone());
        return vec![created];
    };
    let mut out = Vec::new();
    if now.phase != was.phase {
        let mut e = base(phase_kind(was.phase, now.phase));
        e.phase = Some(now.phase);
        e.reason = now.reason.clone();
        out.push(e);
    }
    if now.wave > was.wave && now.phase == was.phase {
        let mut e = base(EventKind::WaveOpened);
        e.wave = Some(now.wave);
        out.push(e);
    }
    out.extend(gate_waiting(rid, &was, &now));
    // Who asked, when an operator did (the control API stamps the record).
    if let Some(op) = now
        .operator
        .as_ref()
        .filter(|op| Some(*op) != was.operator.as_ref())
    {
        for e in out.iter_mut() {
            e.by = Some(op.by.clone());
        }
    }
    out
}

/// A manual gate, announced when the leader's stamp of the finished wave appears: once per
/// gate, whichever leader wrote it (later writes keep the stamp; a new leader does not stamp
/// a stamped wave again).
fn gate_waiting(rid: &str, was: &RolloutRecord, now: &RolloutRecord) -> Option<NewEvent> {
    let done = now
        .wave_done
        .filter(|d| d.gate == WaveGate::Manual && was.wave_done != now.wave_done)?;
    let bounds = wave_bounds(
        &now.spec.strategy,
        now.targets.len(),
        now.rollback_of.is_some(),
    );
    let wave = done.wave as usize;
    let end = bounds
        .get(wave)
        .copied()
        .unwrap_or(0)
        .min(now.targets.len());
    let start = wave
        .checked_sub(1)
        .and_then(|w| bounds.get(w).copied())
        .unwrap_or(0)
        .min(end);
    let wait = GateWait::Promote {
        canary: now.targets[start..end].to_vec(),
        rollout: rid.to_string(),
    };
    let mut e = NewEvent::rollout(EventKind::GateWaiting, rid, &now.spec.service);
    e.wave = Some(done.wave);
    e.reason = explain::gate_wait(&wait);
    Some(e)
}

/// The event of a phase change.
fn phase_kind(was: Phase, now: Phase) -> EventKind {
    match (was, now) {
        (_, Phase::Paused) => EventKind::RolloutPaused,
        (Phase::Paused, Phase::Rolling) => EventKind::RolloutResumed,
        (_, Phase::Succeeded) => EventKind::RolloutSucceeded,
        (_, Phase::Failed) => EventKind::RolloutHalted,
        (_, Phase::Aborted) => EventKind::RolloutAborted,
        (_, Phase::RollingBack) => EventKind::RolloutRollingBack,
        (_, Phase::RolledBack) => EventKind::RolloutRolledBack,
        (_, Phase::Rolling) => EventKind::RolloutResumed,
    }
}

fn step(rid: &str, host: &str, before: Option<HostStep>, after: Option<HostStep>) -> Vec<NewEvent> {
    let Some(now) = after else {
        return Vec::new();
    };
    let was_state = before.as_ref().map(|b| b.state);
    let was_step = before.as_ref().map(|b| b.step);
    let base = |kind| NewEvent::host(kind, rid, host);
    let mut out = Vec::new();
    if now.state != was_state.unwrap_or(HostState::Pending) || was_state.is_none() {
        let kind = match now.state {
            HostState::Pending => None,
            HostState::Updating => Some(EventKind::HostGranted),
            HostState::Done => Some(EventKind::HostDone),
            HostState::RolledBack => Some(EventKind::HostRolledBack),
            HostState::Failed => Some(EventKind::HostFailed),
            // No event kind of its own yet (issue 12 item 2): the regrant shows as HostGranted.
            HostState::Interrupted => Some(EventKind::HostInterrupted),
        };
        if let Some(kind) = kind {
            let mut e = base(kind);
            e.token = Some(now.token);
            e.reason = now.reason.clone();
            if kind == EventKind::HostDone {
                e.reason = format!("runs {}", now.running_version);
            }
            out.push(e);
        }
    }
    if now.state == HostState::Updating && now.step != AgentStep::None && Some(now.step) != was_step
    {
        let mut e = base(EventKind::HostStep);
        e.token = Some(now.token);
        e.step = Some(now.step);
        e.reason = now.message.clone();
        out.push(e);
    }
    out
}

fn host_record(
    host: &str,
    before: Option<HostRecord>,
    after: Option<HostRecord>,
    deleted: bool,
) -> Vec<NewEvent> {
    let was_fenced = before.as_ref().is_some_and(|b| b.fenced);
    match after {
        Some(now) if now.fenced && !was_fenced => {
            let mut e = NewEvent::fleet(EventKind::HostFenced, host);
            e.by = now.fenced_by.clone();
            vec![e]
        }
        None if deleted && before.is_some() => {
            vec![NewEvent::fleet(EventKind::HostForgotten, host)]
        }
        _ => Vec::new(),
    }
}
