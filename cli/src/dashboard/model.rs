//! The dashboard's views as JSON: pure functions from the coordinator's wire messages to what
//! the page shows (words, counts, percentages, notes), so the page only lays them out.

use std::collections::BTreeMap;

use rollgate_proto::pb::{
    GateKind, Health, HistoryEntry, HostInfo, HostProgress, HostState, Phase, RolloutStatus,
};
use serde_json::{json, Value};

use crate::render;

/// The label that names a host's site (the fleet view counts hosts per site).
pub const SITE_LABEL: &str = "site";

/// What a host in the fleet view needs someone to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Connected and every service healthy (or not installed yet).
    None,
    /// Its agent is not connected to the coordinator.
    Offline,
    /// A service on it fails its health checks, is stopped, or regressed.
    Unhealthy,
}

impl Attention {
    /// The word the page shows and styles by.
    pub fn word(self) -> &'static str {
        match self {
            Attention::None => "ok",
            Attention::Offline => "offline",
            Attention::Unhealthy => "unhealthy",
        }
    }
}

/// Whether a host needs attention: offline first, then an unhealthy service.
pub fn attention(h: &HostInfo) -> Attention {
    if !h.connected {
        return Attention::Offline;
    }
    // A service in the middle of an update is down on purpose (the rollout view shows it).
    let sick = h.services.iter().any(|s| {
        s.regressed
            || (s.in_flight_token == 0
                && (s.health() == Health::Unhealthy
                    || (s.health() == Health::Stopped && !s.version.is_empty())))
    });
    if sick {
        Attention::Unhealthy
    } else {
        Attention::None
    }
}

/// The fleet view: every host (sorted by id), counts per service version and per site.
pub fn fleet(hosts: &[HostInfo]) -> Value {
    let mut sorted: Vec<&HostInfo> = hosts.iter().collect();
    sorted.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    let rows: Vec<Value> = sorted.iter().map(|h| host_row(h)).collect();
    let mut versions: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut sites: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut labels: BTreeMap<String, ()> = BTreeMap::new();
    for h in &sorted {
        for s in &h.services {
            let version = if s.version.is_empty() {
                "none".to_string()
            } else {
                s.version.clone()
            };
            *versions.entry((s.service.clone(), version)).or_default() += 1;
        }
        let site = sites.entry(site_of(h)).or_default();
        site.0 += 1;
        site.1 += u32::from(h.connected);
        labels.extend(h.labels.iter().map(|(k, v)| (format!("{k}={v}"), ())));
    }
    let count = |a: Attention| sorted.iter().filter(|h| attention(h) == a).count();
    json!({
        "hosts": rows,
        "total": sorted.len(),
        "offline": count(Attention::Offline),
        "unhealthy": count(Attention::Unhealthy),
        "versions": versions.into_iter().map(|((service, version), hosts)| json!({
            "service": service, "version": version, "hosts": hosts,
        })).collect::<Vec<_>>(),
        "sites": sites.into_iter().map(|(site, (hosts, connected))| json!({
            "site": site, "hosts": hosts, "connected": connected,
        })).collect::<Vec<_>>(),
        // What the label filter suggests.
        "labels": labels.into_keys().collect::<Vec<_>>(),
    })
}

/// A host's site label, or "-".
fn site_of(h: &HostInfo) -> String {
    h.labels
        .get(SITE_LABEL)
        .cloned()
        .unwrap_or_else(|| "-".to_string())
}

fn host_row(h: &HostInfo) -> Value {
    let labels: BTreeMap<&String, &String> = h.labels.iter().collect();
    let services: Vec<Value> = h
        .services
        .iter()
        .map(|s| {
            json!({
                "service": s.service,
                "version": s.version,
                "health": s.health().word(),
                "detail": s.detail,
                "regressed": s.regressed,
                "updating_for": s.in_flight_rollout,
            })
        })
        .collect();
    json!({
        "id": h.host_id,
        "site": site_of(h),
        "labels": labels,
        "connected": h.connected,
        "agent_version": h.agent_version,
        "last_seen_ms": h.last_seen_ms,
        "pinned": h.pinned,
        "services": services,
        "attention": attention(h).word(),
    })
}

/// An operator's lever on a rollout (a button on the rollout view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop granting new slots.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Open the gate the rollout waits at.
    Promote,
    /// End the rollout for good.
    Abort,
    /// Roll its hosts back to the previous release (a new rollout).
    Rollback,
}

impl Action {
    /// Every action, in the order the buttons are shown.
    pub const ALL: [Action; 5] = [
        Action::Pause,
        Action::Resume,
        Action::Promote,
        Action::Abort,
        Action::Rollback,
    ];

    /// The word in the URL (`POST /api/rollouts/ID/pause`) and on the button.
    pub fn word(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
        }
    }

    /// The action a URL word names.
    pub fn from_word(word: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.word() == word)
    }

    /// What the confirmation dialog says the action will do.
    pub fn consequence(self) -> &'static str {
        match self {
            Action::Pause => {
                "No new hosts are started; hosts in the middle of an update finish it."
            }
            Action::Resume => "New hosts are started again as the budget allows.",
            Action::Promote => "The gate opens and the next wave starts.",
            Action::Abort => {
                "The rollout ends for good; hosts in the middle of an update finish or roll back."
            }
            Action::Rollback => {
                "A new rollout takes this rollout's hosts back to the previous release, under the \
                 same budget."
            }
        }
    }
}

/// The actions that make sense for a rollout now (the coordinator has the last word).
pub fn actions(s: &RolloutStatus) -> Vec<Action> {
    let at_gate = matches!(s.gate_kind(), GateKind::ManualPromote | GateKind::Bake);
    match s.phase() {
        Phase::Rolling if at_gate => vec![Action::Pause, Action::Promote, Action::Abort],
        Phase::Rolling => vec![Action::Pause, Action::Abort],
        Phase::Paused => vec![Action::Resume, Action::Abort, Action::Rollback],
        Phase::Succeeded | Phase::Failed | Phase::Aborted => vec![Action::Rollback],
        Phase::RollingBack | Phase::RolledBack | Phase::Unspecified => vec![],
    }
}

/// Per cent of `part` in `whole` (0 for an empty whole), rounded down.
pub fn percent(part: u32, whole: u32) -> u32 {
    part.saturating_mul(100).checked_div(whole).unwrap_or(0)
}

/// Whether a host's work in a rollout is over (done, or failed for good).
fn finished(h: &HostProgress) -> bool {
    matches!(
        h.state(),
        HostState::Done | HostState::Failed | HostState::RolledBack
    )
}

/// One row per wave: its name, hosts, done and failed counts, per cent finished.
fn waves(s: &RolloutStatus) -> Vec<Value> {
    let count = s.waves.max(1);
    (0..count)
        .map(|w| {
            let hosts: Vec<&HostProgress> = s
                .hosts
                .iter()
                .filter(|h| h.wave == w || count == 1)
                .collect();
            let total = u32::try_from(hosts.len()).unwrap_or(u32::MAX);
            let done = hosts
                .iter()
                .filter(|h| h.state() == HostState::Done)
                .count();
            let failed = hosts.iter().filter(|h| finished(h)).count() - done;
            let ended = u32::try_from(done + failed).unwrap_or(u32::MAX);
            json!({
                "name": format!("wave {}", w + 1),
                "current": w == s.wave && !s.phase().has_ended(),
                "total": total,
                "done": done,
                "failed": failed,
                "percent": percent(ended, total),
            })
        })
        .collect()
}

fn host_progress(h: &HostProgress) -> Value {
    json!({
        "id": h.host_id,
        "group": h.group,
        "wave": h.wave + 1,
        "state": h.state().word(),
        "progress": render::step_message(h),
        "version": h.running_version,
        "health": h.health().word(),
        "connected": h.connected,
        "holds_slot": h.holds_slot,
        "note": render::host_note(h),
    })
}

/// The rollout view: where it is, what it waits for and why, its budget, and every host.
pub fn rollout(s: &RolloutStatus) -> Value {
    let mut hosts: Vec<&HostProgress> = s.hosts.iter().collect();
    hosts.sort_by(|a, b| (a.wave, &a.host_id).cmp(&(b.wave, &b.host_id)));
    let mut groups = s.groups.clone();
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    let finished_hosts = s.done.saturating_add(s.failed);
    json!({
        "id": s.id,
        "service": s.service,
        "version": s.version,
        "phase": s.phase().word(),
        "ended": s.phase().has_ended(),
        "created_by": s.created_by,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
        "wave": s.wave + 1,
        "waves": s.waves.max(1),
        "gate": render::gate_line(s).map(|l| l.trim_start_matches("gate: ").to_string()),
        "waiting": non_empty(&s.blocked_by),
        // A pause's reason is also what it waits for: said once.
        "reason": non_empty(&s.reason).filter(|r| *r != s.blocked_by),
        "unavailable": s.unavailable,
        "max_unavailable": s.max_unavailable,
        "group_by": s.group_by,
        "groups": groups.iter().map(|g| json!({
            "group": g.group, "hosts": g.hosts,
            "unavailable": g.unavailable, "max_unavailable": g.max_unavailable,
        })).collect::<Vec<_>>(),
        "done": s.done,
        "failed": s.failed,
        "max_failures": s.max_failures,
        "total": s.total,
        "staged": s.staged,
        "percent": percent(finished_hosts, s.total),
        "wave_progress": waves(s),
        "hosts": hosts.iter().map(|h| host_progress(h)).collect::<Vec<_>>(),
        "actions": actions(s).iter().map(|a| json!({
            "action": a.word(), "consequence": a.consequence(),
        })).collect::<Vec<_>>(),
        "rollback_of": non_empty(&s.rollback_of),
        "rolled_back_by": non_empty(&s.rolled_back_by),
    })
}

/// The list of rollouts, newest first, one summary each.
pub fn rollouts(list: &[RolloutStatus]) -> Value {
    let mut sorted: Vec<&RolloutStatus> = list.iter().collect();
    sorted.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
    let rows: Vec<Value> = sorted
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "service": s.service,
                "version": s.version,
                "phase": s.phase().word(),
                "ended": s.phase().has_ended(),
                "done": s.done,
                "failed": s.failed,
                "total": s.total,
                "percent": percent(s.done.saturating_add(s.failed), s.total),
                "created_by": s.created_by,
                "created_at_ms": s.created_at_ms,
                "waiting": non_empty(&s.blocked_by),
                "unreadable": non_empty(&s.unreadable),
            })
        })
        .collect();
    json!({ "rollouts": rows })
}

/// A service's release history, newest first (as the coordinator sends it).
pub fn history(service: &str, entries: &[HistoryEntry]) -> Value {
    let rows: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "version": e.version,
                "sha256": e.sha256.chars().take(12).collect::<String>(),
                "size": render::human_size(e.size),
                "source": e.source,
                "rollout_id": e.rollout_id,
                "at_ms": e.at_ms,
            })
        })
        .collect();
    json!({ "service": service, "entries": rows })
}

/// `Some(text)`, or `None` for the empty string (JSON null: nothing to show).
fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests;
