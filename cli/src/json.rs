//! `--output json`: the wire messages as JSON objects. Field names are the proto field names
//! (snake_case), enums are lowercase words ("healthy"), 64-bit numbers are JSON numbers.

use rollgate_proto::pb::{
    GroupBudget, HistoryEntry, HistoryResponse, HostActionResponse, HostInfo, HostProgress,
    ListHostsResponse, ListRolloutsResponse, RolloutPlan, RolloutStatus, ServiceStatus, WavePlan,
};
use serde_json::{json, Map, Value};

use crate::render::health_word;

/// A `RolloutStatus`.
pub fn rollout_status(s: &RolloutStatus) -> Value {
    json!({
        "id": s.id,
        "service": s.service,
        "version": s.version,
        "phase": s.phase,
        "blocked_by": s.blocked_by,
        "max_unavailable": s.max_unavailable,
        "unavailable": s.unavailable,
        "total": s.total,
        "done": s.done,
        "failed": s.failed,
        "max_failures": s.max_failures,
        "hosts": s.hosts.iter().map(host_progress).collect::<Vec<_>>(),
        "reason": s.reason,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
        "wave": s.wave,
        "waves": s.waves,
        "gate": s.gate,
        "groups": s.groups.iter().map(group_budget).collect::<Vec<_>>(),
        "rollback_of": s.rollback_of,
        "rolled_back_by": s.rolled_back_by,
        "on_failure": s.on_failure,
        "group_by": s.group_by,
        "staged": s.staged,
    })
}

/// One group's budget.
pub fn group_budget(g: &GroupBudget) -> Value {
    json!({
        "group": g.group,
        "hosts": g.hosts,
        "max_unavailable": g.max_unavailable,
        "unavailable": g.unavailable,
    })
}

/// One wave of a plan.
pub fn wave_plan(w: &WavePlan) -> Value {
    json!({
        "name": w.name,
        "hosts": w.hosts,
        "gate_after": w.gate_after,
    })
}

/// A `RolloutPlan` (`rollout plan`).
pub fn rollout_plan(p: &RolloutPlan) -> Value {
    json!({
        "service": p.service,
        "version": p.version,
        "targets": p.targets,
        "max_unavailable": p.max_unavailable,
        "max_failures": p.max_failures,
        "waves": p.waves.iter().map(wave_plan).collect::<Vec<_>>(),
        "group_by": p.group_by,
        "groups": p.groups.iter().map(group_budget).collect::<Vec<_>>(),
        "unavailable_now": p.unavailable_now,
        "blocked_by": p.blocked_by,
    })
}

/// One release a service ran.
pub fn history_entry(e: &HistoryEntry) -> Value {
    json!({
        "version": e.version,
        "sha256": e.sha256,
        "size": e.size,
        "source": e.source,
        "rollout_id": e.rollout_id,
        "at_ms": e.at_ms,
    })
}

/// A `HistoryResponse`, in the coordinator's order (newest first).
pub fn history(r: &HistoryResponse) -> Value {
    json!({ "entries": r.entries.iter().map(history_entry).collect::<Vec<_>>() })
}

/// A `HostActionResponse` (`host fence|forget`).
pub fn host_action(r: &HostActionResponse) -> Value {
    json!({ "message": r.message })
}

/// One host's progress in a rollout.
pub fn host_progress(h: &HostProgress) -> Value {
    json!({
        "host_id": h.host_id,
        "state": h.state,
        "step": h.step,
        "message": h.message,
        "reason": h.reason,
        "connected": h.connected,
        "running_version": h.running_version,
        "token": h.token,
        "holds_slot": h.holds_slot,
        "health": health_word(h.health),
        "group": h.group,
        "wave": h.wave,
        "staged": h.staged,
    })
}

/// A `ListRolloutsResponse`.
pub fn list_rollouts(r: &ListRolloutsResponse) -> Value {
    json!({ "rollouts": r.rollouts.iter().map(rollout_status).collect::<Vec<_>>() })
}

/// One service on a host.
pub fn service_status(s: &ServiceStatus) -> Value {
    json!({
        "service": s.service,
        "version": s.version,
        "sha256": s.sha256,
        "health": health_word(s.health),
        "detail": s.detail,
    })
}

/// One host.
pub fn host_info(h: &HostInfo) -> Value {
    // serde_json's map is sorted by key, so labels come out in a stable order.
    let labels: Map<String, Value> = h
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "host_id": h.host_id,
        "labels": labels,
        "connected": h.connected,
        "agent_version": h.agent_version,
        "services": h.services.iter().map(service_status).collect::<Vec<_>>(),
        "last_seen_ms": h.last_seen_ms,
        "pinned": h.pinned,
        "overridden": h.overridden,
    })
}

/// A `ListHostsResponse`.
pub fn list_hosts(r: &ListHostsResponse) -> Value {
    json!({ "hosts": r.hosts.iter().map(host_info).collect::<Vec<_>>() })
}

/// A pushed artifact: `{"sha256": "<hex>", "size": n}`.
pub fn pushed(sha256: &str, size: u64) -> Value {
    json!({ "sha256": sha256, "size": size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::pb::Health;
    use std::collections::HashMap;

    #[test]
    fn enums_are_words_and_fields_are_snake_case() {
        let s = RolloutStatus {
            id: "r-1".into(),
            phase: "rolling".into(),
            hosts: vec![HostProgress {
                host_id: "h1".into(),
                health: Health::Unhealthy as i32,
                token: u64::MAX,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = rollout_status(&s);
        assert_eq!(v["id"], "r-1");
        assert_eq!(v["hosts"][0]["health"], "unhealthy");
        assert_eq!(v["hosts"][0]["token"], u64::MAX);
        assert_eq!(v["max_unavailable"], 0);

        let hosts = ListHostsResponse {
            hosts: vec![HostInfo {
                host_id: "h1".into(),
                labels: HashMap::from([("site".to_string(), "a".to_string())]),
                services: vec![ServiceStatus {
                    service: "demo".into(),
                    health: Health::Healthy as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let v = list_hosts(&hosts);
        assert_eq!(v["hosts"][0]["labels"]["site"], "a");
        assert_eq!(v["hosts"][0]["services"][0]["health"], "healthy");
        assert_eq!(pushed("ab", 3).to_string(), r#"{"sha256":"ab","size":3}"#);
    }

    #[test]
    fn new_messages_keep_proto_field_names() {
        let s = RolloutStatus {
            id: "r-2".into(),
            phase: "rolling_back".into(),
            waves: 3,
            wave: 1,
            gate: "manual promote".into(),
            group_by: "site".into(),
            groups: vec![GroupBudget {
                group: "a".into(),
                hosts: 2,
                max_unavailable: 1,
                unavailable: 1,
            }],
            rolled_back_by: "r-3".into(),
            on_failure: "rollback".into(),
            staged: 2,
            hosts: vec![HostProgress {
                host_id: "h1".into(),
                state: "lost".into(),
                group: "a".into(),
                wave: 1,
                staged: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = rollout_status(&s);
        assert_eq!(v["waves"], 3);
        assert_eq!(v["gate"], "manual promote");
        assert_eq!(v["groups"][0]["max_unavailable"], 1);
        assert_eq!(v["rolled_back_by"], "r-3");
        assert_eq!(v["rollback_of"], "");
        assert_eq!(v["on_failure"], "rollback");
        assert_eq!(v["staged"], 2);
        assert_eq!(v["hosts"][0]["group"], "a");
        assert_eq!(v["hosts"][0]["staged"], true);

        let plan = rollout_plan(&RolloutPlan {
            service: "demo".into(),
            targets: vec!["h1".into()],
            waves: vec![WavePlan {
                name: "canary".into(),
                hosts: vec!["h1".into()],
                gate_after: "bake 10m".into(),
            }],
            unavailable_now: vec!["h1: offline".into()],
            ..Default::default()
        });
        assert_eq!(plan["targets"][0], "h1");
        assert_eq!(plan["waves"][0]["gate_after"], "bake 10m");
        assert_eq!(plan["unavailable_now"][0], "h1: offline");
        assert_eq!(plan["blocked_by"], "");

        let h = history(&HistoryResponse {
            entries: vec![HistoryEntry {
                version: "1".into(),
                size: u64::MAX,
                at_ms: 5,
                ..Default::default()
            }],
        });
        assert_eq!(h["entries"][0]["size"], u64::MAX);
        assert_eq!(h["entries"][0]["at_ms"], 5);
        assert_eq!(
            host_action(&HostActionResponse {
                message: "fenced h1".into()
            })
            .to_string(),
            r#"{"message":"fenced h1"}"#
        );
    }
}
