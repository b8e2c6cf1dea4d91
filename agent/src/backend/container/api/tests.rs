use super::*;

/// `GET /containers/{id}/json` and `GET /containers/json?all=1&filters=...` as dockerd 20.10
/// (API 1.41, Debian's docker.io) answered them on this machine for a running container
/// the backend would have created.
const INSPECT: &str = include_str!("../testdata/docker-20.10-inspect.json");
const LIST: &str = include_str!("../testdata/docker-20.10-list.json");

#[test]
fn real_inspect_and_list_answers_decode() {
    let c: ContainerInspect = decode("container inspect", INSPECT.as_bytes()).expect("inspect");
    assert!(c.state.running);
    assert!(!c.state.restarting);
    assert_eq!(c.state.status, "running");
    assert_eq!((c.state.exit_code, c.state.error.as_str()), (0, ""));
    assert_eq!(c.restart_count, 0);

    let l: Vec<ContainerSummary> = decode("container list", LIST.as_bytes()).expect("list");
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].names, ["/demo-capture"]);
    assert_eq!(l[0].state, "running");
    assert!(l[0].image_id.starts_with("sha256:"));
    let labels = l[0].labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("rollgate.release").map(String::as_str),
        Some("1.0.0-abc")
    );
}

#[test]
fn a_missing_or_mistyped_field_is_named() {
    let mut v: Value = serde_json::from_str(INSPECT).expect("json");
    v["State"].as_object_mut().expect("State").remove("Running");
    let err = decode::<ContainerInspect>("container inspect", v.to_string().as_bytes())
        .expect_err("Running is missing");
    assert_eq!(err, "container inspect: missing field `State.Running`");

    let mut v: Value = serde_json::from_str(INSPECT).expect("json");
    v["State"]["ExitCode"] = Value::from("zero");
    let err = decode::<ContainerInspect>("container inspect", v.to_string().as_bytes())
        .expect_err("ExitCode is a string");
    assert!(
        err.starts_with("container inspect: State: invalid type"),
        "{err}"
    );

    let mut v: Value = serde_json::from_str(INSPECT).expect("json");
    v.as_object_mut().expect("top").remove("RestartCount");
    let err = decode::<ContainerInspect>("container inspect", v.to_string().as_bytes())
        .expect_err("RestartCount is missing");
    assert_eq!(err, "container inspect: missing field `RestartCount`");

    let err = decode::<ContainerInspect>("container inspect", b"not json").expect_err("text");
    assert!(
        err.starts_with("container inspect: unreadable answer"),
        "{err}"
    );
}
