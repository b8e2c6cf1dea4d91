//! Agent -> coordinator: a sequence of `AgentMessage`s as one session's stream, through the
//! coordinator's checks and the record changes its session makes of them
//! (`rollgate_coordinator::sessions::admit`): the hello's checks against the host's
//! certificate, the host record it opens, each status, progress report and result applied to
//! that record and to the host's step in a rollout it holds a grant in (token 7). Checks: a
//! hello passes only for the certificate's own host with a valid id; the record only ever
//! holds bounded text, valid service names and digests, rollout ids that are rollout ids, at
//! most the bounded number of labels and services, and reads back equal from its etcd JSON;
//! an older status never overwrites a newer one; only the held grant's token moves the step,
//! and a result settles it once (a repeat changes nothing); a rollout id is taken only when
//! it is one, and the step and stage keys built from it are this host's. Not reached (they need etcd):
//! the transactions themselves, the stale-token counter raise, stage reports' ownership.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollgate_coordinator::sessions::admit::{self, HelloRefusal, StatusChange};
use rollgate_coordinator::sessions::limits::{
    Trimmed, MAX_DETAIL, MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_SERVICES, MAX_VERSION,
};
use rollgate_coordinator::store::{HostRecord, HostState, HostStep, Keys};
use rollgate_fuzz::wire;
use rollgate_proto::names::{self, RolloutId};
use rollgate_proto::pb::{self, agent_message::Msg};
use rollgate_proto::tls::{Identity, Role};

/// The host the session's certificate names.
const HOST: &str = "h1";
/// The token of the grant the host holds.
const GRANT: u64 = 7;
const NOW_MS: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let msgs: Vec<pb::AgentMessage> = wire::messages(data);
    let Some(pb::AgentMessage {
        msg: Some(Msg::Hello(hello)),
    }) = msgs.first()
    else {
        return; // the session refuses a stream that does not open with a hello
    };
    let peer = Identity::new("fuzz", Role::Host, HOST).expect("identity");
    match admit::check_hello(hello, Some(&peer)) {
        Ok(()) => assert_eq!(hello.host_id, HOST, "a hello for another host passed"),
        Err(HelloRefusal::HostId(_)) => assert!(names::check("host id", &hello.host_id).is_err()),
        Err(HelloRefusal::NotItsCertificate { claimed, .. }) => assert_ne!(claimed, HOST),
        Err(why @ HelloRefusal::TooOld(_)) => assert!(why.to_agent().contains("upgrade")),
    }
    // Without TLS (development) the same checks but the certificate's run.
    let plain = admit::check_hello(hello, None);
    if plain.is_err() {
        assert!(!matches!(
            plain,
            Err(HelloRefusal::NotItsCertificate { .. })
        ));
        return;
    }
    let (mut record, _) = admit::host_record(&hello.host_id, hello, NOW_MS);
    bounded(&record);
    let mut step = HostStep {
        state: HostState::Updating,
        token: GRANT,
        ..HostStep::pending()
    };
    for m in &msgs[1..] {
        match &m.msg {
            Some(Msg::Status(s)) => status(&mut record, s),
            Some(Msg::Progress(p)) => {
                own_keys(&p.rollout_id);
                let next = admit::progressed(&step, p, NOW_MS);
                assert_eq!(next.is_some(), holds(&step, p.token));
                if let Some(next) = next {
                    assert!(next.message.len() <= MAX_DETAIL && next.token == GRANT);
                    step = next;
                }
            }
            Some(Msg::Result(r)) => {
                own_keys(&r.rollout_id);
                result(&mut step, r)
            }
            Some(Msg::Staged(s)) => own_keys(&s.rollout_id),
            Some(Msg::Hello(_)) | Some(Msg::Heartbeat(_)) | None => {}
        }
        bounded(&record);
    }
});

/// A rollout id a host sends is taken only when it is one, and then the keys the session
/// writes (the host's step and stage report) are this host's in that rollout, nothing else.
fn own_keys(raw: &str) {
    let Ok(rid) = RolloutId::parse(raw) else {
        return;
    };
    let keys = Keys::new("/rollgate/");
    for (key, kind) in [
        (keys.step(rid.as_str(), HOST), "hosts"),
        (keys.staged(rid.as_str(), HOST), "staged"),
    ] {
        assert_eq!(
            keys.parse_rollout_key(&key),
            Some((raw, kind, HOST)),
            "{key}"
        );
    }
}

fn holds(step: &HostStep, token: u64) -> bool {
    step.state == HostState::Updating && step.token == token
}

fn status(record: &mut HostRecord, s: &pb::ServiceStatus) {
    let mut trimmed = Trimmed::default();
    let before = record.services.get(&s.service).cloned();
    match admit::status_change(&record.services, s, &mut trimmed) {
        StatusChange::Dropped => assert!(!trimmed.is_empty(), "dropped without saying why"),
        StatusChange::Older { newest_ms } => {
            let before = before.expect("older than nothing");
            assert_eq!(before.observed_at_ms, newest_ms);
            assert!(s.observed_at_ms != 0 && s.observed_at_ms < newest_ms);
        }
        StatusChange::Record(state) => {
            if let Some(b) = &before {
                assert!(
                    b.superseded_by(state.observed_at_ms),
                    "older status recorded"
                );
            }
            record.services.insert(s.service.clone(), state);
        }
    }
}

fn result(step: &mut HostStep, r: &pb::OrderResult) {
    let Some(settled) = admit::settle(step, r) else {
        assert!(!holds(step, r.token), "the held grant's result was ignored");
        return;
    };
    assert!(
        holds(step, r.token),
        "settled a grant the host does not hold"
    );
    assert!(settled.reason.len() <= MAX_DETAIL && settled.running_version.len() <= MAX_VERSION);
    assert_ne!(
        settled.state,
        HostState::Updating,
        "a result left the host updating"
    );
    step.state = settled.state;
    step.reason = settled.reason;
    step.running_version = settled.running_version;
    step.interruptions = settled.interruptions;
    assert!(admit::settle(step, r).is_none(), "a result settled twice");
}

/// What S9 promises of a host record, and that it reads back from its etcd JSON.
fn bounded(record: &HostRecord) {
    assert!(record.labels.len() <= MAX_LABELS);
    for (k, v) in &record.labels {
        assert!(!k.is_empty() && k.len() <= MAX_LABEL_KEY && v.len() <= MAX_LABEL_VALUE);
    }
    assert!(record.agent_version.len() <= MAX_VERSION);
    assert!(record.services.len() <= MAX_SERVICES);
    for (name, s) in &record.services {
        names::check("service name", name).expect("a bad service name recorded");
        assert!(s.version.len() <= MAX_VERSION && s.detail.len() <= MAX_DETAIL);
        assert!(s.sha256.is_empty() || names::check_sha256(&s.sha256).is_ok());
        assert!(s.in_flight_rollout.is_empty() || RolloutId::parse(&s.in_flight_rollout).is_ok());
    }
    let json = serde_json::to_vec(record).expect("a host record encodes");
    let back: HostRecord = serde_json::from_slice(&json).expect("a host record decodes");
    assert_eq!(&back, record, "{}", String::from_utf8_lossy(&json));
}
