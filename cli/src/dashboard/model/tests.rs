use super::*;
use rollgate_proto::pb::{GroupBudget, ServiceStatus, Step};
use std::collections::HashMap;

fn host(id: &str, site: &str, connected: bool, version: &str, health: Health) -> HostInfo {
    HostInfo {
        host_id: id.into(),
        labels: HashMap::from([(SITE_LABEL.to_string(), site.to_string())]),
        connected,
        services: vec![ServiceStatus {
            service: "demo".into(),
            version: version.into(),
            health: health as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn fleet_counts_versions_sites_and_trouble() {
    let hosts = [
        host("h3", "b", true, "2.0.0", Health::Unhealthy),
        host("h1", "a", true, "1.0.0", Health::Healthy),
        host("h2", "a", false, "1.0.0", Health::Healthy),
        host("h4", "b", true, "", Health::Stopped),
    ];
    let v = fleet(&hosts);
    let ids: Vec<&str> = v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(ids, ["h1", "h2", "h3", "h4"]);
    assert_eq!(v["total"], 4);
    assert_eq!(v["offline"], 1);
    assert_eq!(v["unhealthy"], 1);
    assert_eq!(v["hosts"][1]["attention"], "offline");
    assert_eq!(v["hosts"][2]["attention"], "unhealthy");
    // Nothing installed yet is not a fault.
    assert_eq!(v["hosts"][3]["attention"], "ok");
    assert_eq!(
        v["versions"],
        json!([
            {"service": "demo", "version": "1.0.0", "hosts": 2},
            {"service": "demo", "version": "2.0.0", "hosts": 1},
            {"service": "demo", "version": "none", "hosts": 1},
        ])
    );
    assert_eq!(
        v["sites"],
        json!([
            {"site": "a", "hosts": 2, "connected": 1},
            {"site": "b", "hosts": 2, "connected": 2},
        ])
    );
    assert_eq!(v["labels"], json!(["site=a", "site=b"]));
}

#[test]
fn a_service_being_updated_is_not_unhealthy_but_a_regressed_one_is() {
    let mut h = host("h1", "a", true, "2.0.0", Health::Stopped);
    h.services[0].in_flight_token = 7;
    assert_eq!(attention(&h), Attention::None);
    h.services[0].health = Health::Unhealthy as i32;
    assert_eq!(attention(&h), Attention::None);
    h.services[0].regressed = true;
    assert_eq!(attention(&h), Attention::Unhealthy);
    h.services[0].in_flight_token = 0;
    h.services[0].regressed = false;
    assert_eq!(attention(&h), Attention::Unhealthy);
    h.connected = false;
    assert_eq!(attention(&h), Attention::Offline);
}

fn status(phase: Phase, gate: GateKind) -> RolloutStatus {
    RolloutStatus {
        id: "r-1".into(),
        service: "demo".into(),
        version: "2.0.0".into(),
        phase: phase as i32,
        gate_kind: gate as i32,
        ..Default::default()
    }
}

#[test]
fn actions_follow_the_phase_and_the_gate() {
    use Action::*;
    let table = [
        (Phase::Rolling, GateKind::None, vec![Pause, Abort]),
        (
            Phase::Rolling,
            GateKind::ManualPromote,
            vec![Pause, Promote, Abort],
        ),
        (Phase::Rolling, GateKind::Bake, vec![Pause, Promote, Abort]),
        (Phase::Rolling, GateKind::Pause, vec![Pause, Abort]),
        (Phase::Paused, GateKind::None, vec![Resume, Abort, Rollback]),
        (Phase::Succeeded, GateKind::None, vec![Rollback]),
        (Phase::Failed, GateKind::None, vec![Rollback]),
        (Phase::Aborted, GateKind::None, vec![Rollback]),
        (Phase::RollingBack, GateKind::None, vec![]),
        (Phase::RolledBack, GateKind::None, vec![]),
        (Phase::Unspecified, GateKind::None, vec![]),
    ];
    for (phase, gate, want) in table {
        assert_eq!(actions(&status(phase, gate)), want, "{phase:?} {gate:?}");
    }
    for a in Action::ALL {
        assert_eq!(Action::from_word(a.word()), Some(a));
        assert!(!a.consequence().is_empty());
    }
    assert_eq!(Action::from_word("delete"), None);
}

fn progress(id: &str, wave: u32, state: HostState) -> HostProgress {
    HostProgress {
        host_id: id.into(),
        wave,
        state: state as i32,
        ..Default::default()
    }
}

#[test]
fn rollout_view_counts_waves_and_says_why_it_waits() {
    let mut s = status(Phase::Rolling, GateKind::None);
    s.waves = 2;
    s.wave = 1;
    s.total = 4;
    s.done = 2;
    s.failed = 1;
    s.blocked_by = "the budget: 1 of 1 unavailable".into();
    s.created_by = "spiffe://f/operator/ann".into();
    s.group_by = "site".into();
    s.groups = vec![
        GroupBudget {
            group: "b".into(),
            hosts: 2,
            max_unavailable: 1,
            unavailable: 0,
        },
        GroupBudget {
            group: "a".into(),
            hosts: 2,
            max_unavailable: 1,
            unavailable: 1,
        },
    ];
    let mut updating = progress("h4", 1, HostState::Updating);
    updating.step = Step::Fetching as i32;
    updating.message = "fetching 2.0.0".into();
    s.hosts = vec![
        updating,
        progress("h3", 1, HostState::Failed),
        progress("h2", 0, HostState::Done),
        progress("h1", 0, HostState::Done),
    ];
    let v = rollout(&s);
    assert_eq!(v["phase"], "rolling");
    assert_eq!(v["waiting"], "the budget: 1 of 1 unavailable");
    assert_eq!(v["reason"], Value::Null);
    assert_eq!(v["created_by"], "spiffe://f/operator/ann");
    assert_eq!(v["percent"], 75);
    assert_eq!(v["wave"], 2);
    assert_eq!(v["groups"][0]["group"], "a");
    let hosts: Vec<&str> = v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(hosts, ["h1", "h2", "h3", "h4"]);
    assert_eq!(v["hosts"][3]["progress"], "fetching 2.0.0");
    assert_eq!(v["hosts"][3]["state"], "updating");
    assert_eq!(
        v["wave_progress"],
        json!([
            {"name": "wave 1", "current": false, "total": 2, "done": 2, "failed": 0, "percent": 100},
            {"name": "wave 2", "current": true, "total": 2, "done": 0, "failed": 1, "percent": 50},
        ])
    );
    assert_eq!(v["actions"][0]["action"], "pause");

    // The gate in words, with the command that opens a manual one (no "gate:" label).
    s.gate = "manual promote".into();
    s.gate_kind = GateKind::ManualPromote as i32;
    let gate = rollout(&s)["gate"].as_str().unwrap_or_default().to_string();
    assert!(
        gate.starts_with("manual promote (`rollgate rollout promote r-1`"),
        "{gate}"
    );

    // Paused: the reason is what it waits for, said once.
    s.phase = Phase::Paused as i32;
    s.reason = s.blocked_by.clone();
    assert_eq!(rollout(&s)["reason"], Value::Null);
    s.reason = "halted: 1 host failed".into();
    assert_eq!(rollout(&s)["reason"], "halted: 1 host failed");
}

#[test]
fn a_single_wave_holds_every_host_and_lists_sort_newest_first() {
    let mut s = status(Phase::Succeeded, GateKind::None);
    s.hosts = vec![progress("h1", 0, HostState::Done)];
    s.total = 1;
    s.done = 1;
    let v = rollout(&s);
    assert_eq!(v["waves"], 1);
    assert_eq!(v["wave_progress"][0]["percent"], 100);
    assert_eq!(v["wave_progress"][0]["current"], false);
    assert_eq!(percent(1, 0), 0);

    let mut old = s.clone();
    old.id = "r-0".into();
    old.created_at_ms = 1;
    s.created_at_ms = 2;
    let list = rollouts(&[old, s]);
    assert_eq!(list["rollouts"][0]["id"], "r-1");
    assert_eq!(list["rollouts"][1]["id"], "r-0");
    assert_eq!(list["rollouts"][0]["percent"], 100);
}

#[test]
fn history_shortens_digests() {
    let v = history(
        "demo",
        &[HistoryEntry {
            version: "2.0.0".into(),
            sha256: "0123456789abcdef0123".into(),
            size: 2048,
            rollout_id: "r-1".into(),
            ..Default::default()
        }],
    );
    assert_eq!(v["service"], "demo");
    assert_eq!(v["entries"][0]["sha256"], "0123456789ab");
    assert_eq!(v["entries"][0]["rollout_id"], "r-1");
}
