//! `--output json`: the wire messages as JSON objects. Field names are the proto field names
//! (snake_case), enums are lowercase words ("healthy"), 64-bit numbers are JSON numbers.

use rollgate_proto::pb::{
    HostInfo, HostProgress, ListHostsResponse, ListRolloutsResponse, RolloutStatus, ServiceStatus,
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
    })
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
}
