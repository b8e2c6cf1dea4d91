//! `--output json`: the wire messages as JSON objects, serialized by the protocol types
//! themselves (`serde::Serialize` is derived on them in `rollgate-proto`'s build). Field names
//! are the proto field names (snake_case), enums are their lower-case names ("healthy",
//! "rolling_back"), 64-bit numbers are JSON numbers, labels are sorted by key.

use rollgate_proto::pb::PushArtifactResponse;
use serde::Serialize;
use serde_json::Value;

/// A wire message (`RolloutStatus`, `ListHostsResponse`, `RolloutPlan`, ...) as JSON.
pub fn message<T: Serialize>(m: &T) -> Value {
    // Only a map with non-string keys can fail, and the wire messages have none.
    serde_json::to_value(m).unwrap_or_else(|e| Value::String(format!("cannot format as JSON: {e}")))
}

/// A pushed artifact: `{"sha256": "<hex>", "size": n}`.
pub fn pushed(sha256: &str, size: u64) -> Value {
    message(&PushArtifactResponse {
        sha256: sha256.to_string(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::pb::{
        GroupBudget, Health, HistoryEntry, HistoryResponse, HostActionResponse, HostInfo,
        HostProgress, HostState, ListHostsResponse, ListRolloutsResponse, OnFailure, Phase,
        RolloutPlan, RolloutStatus, ServiceStatus, Step, WavePlan,
    };
    use std::collections::HashMap;

    #[test]
    fn enums_are_words_and_fields_are_snake_case() {
        let s = RolloutStatus {
            id: "r-1".into(),
            phase: Phase::Rolling as i32,
            hosts: vec![HostProgress {
                host_id: "h1".into(),
                health: Health::Unhealthy as i32,
                token: u64::MAX,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = message(&s);
        assert_eq!(v["id"], "r-1");
        assert_eq!(v["hosts"][0]["health"], "unhealthy");
        assert_eq!(v["hosts"][0]["token"], u64::MAX);
        assert_eq!(v["max_unavailable"], 0);
        assert_eq!(v["phase"], "rolling");
        // Zero values: no step, no state, no policy read as "" (as before the enums).
        assert_eq!(v["hosts"][0]["step"], "");
        assert_eq!(v["hosts"][0]["state"], "");
        assert_eq!(v["on_failure"], "");

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
        let v = message(&hosts);
        assert_eq!(v["hosts"][0]["labels"]["site"], "a");
        assert_eq!(v["hosts"][0]["services"][0]["health"], "healthy");
        assert_eq!(pushed("ab", 3).to_string(), r#"{"sha256":"ab","size":3}"#);
    }

    #[test]
    fn new_messages_keep_proto_field_names() {
        let s = RolloutStatus {
            id: "r-2".into(),
            phase: Phase::RollingBack as i32,
            waves: 3,
            wave: 1,
            gate: "manual promote".into(),
            gate_kind: rollgate_proto::pb::GateKind::ManualPromote as i32,
            group_by: "site".into(),
            groups: vec![GroupBudget {
                group: "a".into(),
                hosts: 2,
                max_unavailable: 1,
                unavailable: 1,
            }],
            rolled_back_by: "r-3".into(),
            on_failure: OnFailure::Rollback as i32,
            staged: 2,
            hosts: vec![HostProgress {
                host_id: "h1".into(),
                state: HostState::Lost as i32,
                step: Step::RollingBack as i32,
                group: "a".into(),
                wave: 1,
                staged: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = message(&s);
        assert_eq!(v["waves"], 3);
        assert_eq!(v["gate"], "manual promote");
        assert_eq!(v["groups"][0]["max_unavailable"], 1);
        assert_eq!(v["rolled_back_by"], "r-3");
        assert_eq!(v["rollback_of"], "");
        assert_eq!(v["on_failure"], "rollback");
        assert_eq!(v["staged"], 2);
        assert_eq!(v["hosts"][0]["group"], "a");
        assert_eq!(v["hosts"][0]["staged"], true);
        assert_eq!(v["phase"], "rolling_back");
        assert_eq!(v["hosts"][0]["state"], "lost");
        assert_eq!(v["hosts"][0]["step"], "rolling_back");

        let plan = message(&RolloutPlan {
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

        let h = message(&HistoryResponse {
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
            message(&HostActionResponse {
                message: "fenced h1".into()
            })
            .to_string(),
            r#"{"message":"fenced h1"}"#
        );
    }

    #[test]
    fn unreadable_entries_unknown_enums_and_labels() {
        let list = ListRolloutsResponse {
            rollouts: vec![RolloutStatus {
                id: "r-9".into(),
                unreadable: "bad record at /rollgate/rollouts/r-9".into(),
                ..Default::default()
            }],
        };
        let v = message(&list);
        assert_eq!(v["rollouts"][0]["phase"], "unreadable");
        assert_eq!(
            v["rollouts"][0]["unreadable"],
            "bad record at /rollgate/rollouts/r-9"
        );
        // A value from a newer coordinator this CLI does not know: the number.
        let s = RolloutStatus {
            phase: 99,
            ..Default::default()
        };
        assert_eq!(message(&s)["phase"], 99);
        let h = HostInfo {
            labels: HashMap::from([
                ("zone".to_string(), "z".to_string()),
                ("a".to_string(), "1".to_string()),
                ("m".to_string(), "2".to_string()),
            ]),
            ..Default::default()
        };
        let text = message(&h).to_string();
        assert!(
            text.contains(r#""labels":{"a":"1","m":"2","zone":"z"}"#),
            "{text}"
        );
    }

    /// The whole of a status as scripts see it: field names, enum names, numbers.
    #[test]
    fn a_status_in_full() {
        let mut s = RolloutStatus {
            id: "r-2".into(),
            service: "web".into(),
            version: "2.0.0".into(),
            max_unavailable: 1,
            total: 1,
            created_at_ms: 1_700_000_000_000,
            hosts: vec![HostProgress {
                host_id: "h1".into(),
                message: "2/5 probes".into(),
                token: 7,
                health: Health::Healthy as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        s.set_phase(Phase::Failed);
        s.set_on_failure(OnFailure::Halt);
        s.hosts[0].set_state(HostState::Updating);
        s.hosts[0].set_step(Step::Verifying);
        // As before the derive, plus "unreadable" (the list-only field, now included) and
        // "image" (the pinned image of an image release).
        let want = concat!(
            r#"{"blocked_by":"","created_at_ms":1700000000000,"created_by":"","done":0,"failed":0,"gate":"","#,
            r#""gate_kind":"","group_by":"","groups":[],"hosts":[{"connected":false,"group":"","#,
            r#""health":"healthy","holds_slot":false,"host_id":"h1","message":"2/5 probes","#,
            r#""reason":"","running_version":"","staged":false,"state":"updating","#,
            r#""step":"verifying","token":7,"wave":0}],"id":"r-2","image":"","max_failures":0,"#,
            r#""max_unavailable":1,"on_failure":"halt","phase":"failed","reason":"","#,
            r#""rollback_of":"","rolled_back_by":"","service":"web","staged":0,"total":1,"#,
            r#""unavailable":0,"unreadable":"","updated_at_ms":0,"version":"2.0.0","wave":0,"#,
            r#""waves":0}"#
        );
        assert_eq!(message(&s).to_string(), want);
    }
}
