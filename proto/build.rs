//! Generates `pb` from `proto/rollgate.proto` into `OUT_DIR`, with `serde::Serialize` on the
//! messages the CLI prints as JSON (`--output json` comes from the types themselves).

/// Messages `rollgate --output json` prints (and the messages inside them).
const JSON_MESSAGES: &[&str] = &[
    "RolloutStatus",
    "HostProgress",
    "GroupBudget",
    "ListRolloutsResponse",
    "RolloutPlan",
    "WavePlan",
    "HistoryResponse",
    "HistoryEntry",
    "HostActionResponse",
    "ListHostsResponse",
    "HostInfo",
    "ServiceStatus",
    "PushArtifactResponse",
    "Event",
];

/// Enums inside those messages: JSON shows their lower-case names ("rolling_back").
const JSON_ENUMS: &[&str] = &[
    "Phase",
    "OnFailure",
    "HostState",
    "Step",
    "Health",
    "GateKind",
    "EventKind",
];

/// Enum fields (an `i32` on the wire) and their enum, serialized by name.
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("RolloutStatus.phase", "Phase"),
    ("RolloutStatus.on_failure", "OnFailure"),
    ("RolloutStatus.gate_kind", "GateKind"),
    ("Event.kind", "EventKind"),
    ("Event.phase", "Phase"),
    ("Event.step", "Step"),
    ("HostProgress.state", "HostState"),
    ("HostProgress.step", "Step"),
    ("HostProgress.health", "Health"),
    ("ServiceStatus.health", "Health"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/rollgate.proto");
    // No `connect` constructor on clients: it would clash with the `Connect` rpc; callers build
    // a Channel themselves.
    let mut b = tonic_prost_build::configure().build_transport(false);
    for m in JSON_MESSAGES {
        b = b.message_attribute(format!(".rollgate.v1.{m}"), "#[derive(serde::Serialize)]");
    }
    for e in JSON_ENUMS {
        b = b.enum_attribute(
            format!(".rollgate.v1.{e}"),
            "#[derive(serde::Serialize)] #[serde(rename_all = \"snake_case\")]",
        );
    }
    for (field, e) in ENUM_FIELDS {
        b = b.field_attribute(
            format!(".rollgate.v1.{field}"),
            format!("#[serde(serialize_with = \"crate::json::enum_name::<crate::pb::{e}, _>\")]"),
        );
    }
    // Zero values that are "not set" keep the text the JSON showed before the enums: an
    // unreadable list entry's phase, and an empty step or state.
    let renames = [
        ("Phase.PHASE_UNSPECIFIED", "unreadable"),
        ("OnFailure.ON_FAILURE_UNSPECIFIED", ""),
        ("HostState.HOST_STATE_UNSPECIFIED", ""),
        ("Step.STEP_UNSPECIFIED", ""),
        ("GateKind.GATE_KIND_NONE", ""),
        ("EventKind.EVENT_KIND_UNSPECIFIED", ""),
    ];
    for (variant, name) in renames {
        b = b.field_attribute(
            format!(".rollgate.v1.{variant}"),
            format!("#[serde(rename = \"{name}\")]"),
        );
    }
    // serde_json writes a HashMap in hash order; labels come out sorted.
    b = b.field_attribute(
        ".rollgate.v1.HostInfo.labels",
        "#[serde(serialize_with = \"crate::json::sorted\")]",
    );
    b.compile_protos(&["proto/rollgate.proto"], &["proto"])?;
    Ok(())
}
