//! Records as today's coordinator writes them to etcd (pasted from `encode`, 2026-12) must
//! still read, with the enums they hold, and map onto the wire enums by `From`, never by text.

use super::*;
use rollgate_proto::spec::OnFailure;

const ROLLOUT: &str = r#"{"id":"r-1","spec":{"service":"web","release":{"version":"2.0.0","source":"store:","sha256":"abababababababababababababababababababababababababababababababab","size":10},"targets":{},"strategy":{"max_unavailable":1,"canary_gate":"manual","pause_between_waves":"0s","max_failures":0,"on_failure":"rollback","min_healthy_time":"5s","healthy_deadline":"2m","progress_deadline":"10m","stage_first":false}},"targets":["h1","h2"],"max_unavailable":1,"phase":"rolling_back","reason":"2 hosts failed (max 1)","created_at_ms":1000,"updated_at_ms":2000,"wave":0,"tolerated_failures":0,"previous":null,"rollback_of":null,"rolled_back_by":"r-2"}"#;

const STEP: &str = r#"{"state":"rolled_back","token":7,"granted_at_ms":1500,"step":"rolling_back","message":"rolling back","reason":"failed health checks","running_version":"1.0.0","updated_at_ms":1900}"#;

const SERVICE: &str = r#"{"version":"1.0.0","sha256":"","health":"unhealthy","detail":""}"#;

#[test]
fn records_written_today_still_read() {
    let r: RolloutRecord = serde_json::from_str(ROLLOUT).expect("rollout record");
    assert_eq!(r.phase, Phase::RollingBack);
    assert_eq!(r.spec.strategy.on_failure, OnFailure::Rollback);
    assert_eq!(pb::Phase::from(r.phase), pb::Phase::RollingBack);
    assert_eq!(
        pb::OnFailure::from(r.spec.strategy.on_failure),
        pb::OnFailure::Rollback
    );
    assert!(r.phase.is_terminal());
    // Writing it again gives the same text: the stored names did not change.
    assert_eq!(String::from_utf8(encode(&r)).expect("utf-8"), ROLLOUT);

    let s: HostStep = serde_json::from_str(STEP).expect("host step");
    assert_eq!(s.state, HostState::RolledBack);
    assert_eq!(s.step, AgentStep::RollingBack);
    assert_eq!(pb::HostState::from(s.state), pb::HostState::RolledBack);
    assert_eq!(pb::Step::from(s.step), pb::Step::RollingBack);
    assert_eq!(String::from_utf8(encode(&s)).expect("utf-8"), STEP);
    assert_eq!(
        s.interruptions, 0,
        "written before interrupted grants were counted"
    );
    let mut i = s.clone();
    i.state = HostState::Interrupted;
    i.interruptions = 2;
    let text = String::from_utf8(encode(&i)).expect("utf-8");
    assert!(text.contains(r#""state":"interrupted""#), "{text}");
    assert_eq!(serde_json::from_str::<HostStep>(&text).expect("reads"), i);

    let h: ServiceState = serde_json::from_str(SERVICE).expect("service state");
    assert_eq!(h.health, Health::Unhealthy);
    assert_eq!(pb::Health::from(h.health), pb::Health::Unhealthy);
}

#[test]
fn every_stored_phase_maps_to_the_wire_and_back() {
    for p in [
        Phase::Rolling,
        Phase::Paused,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Aborted,
        Phase::RollingBack,
        Phase::RolledBack,
    ] {
        let wire = pb::Phase::from(p);
        assert_eq!(Phase::try_from(wire), Ok(p));
        // The stored name and the wire word are the same text (display only, never parsed).
        let stored = String::from_utf8(encode(&p)).expect("utf-8");
        assert_eq!(stored, format!("\"{}\"", wire.word()));
        assert_eq!(p.to_string(), wire.word());
    }
    assert_eq!(
        Phase::try_from(pb::Phase::Unspecified),
        Err(pb::Phase::Unspecified)
    );
}
