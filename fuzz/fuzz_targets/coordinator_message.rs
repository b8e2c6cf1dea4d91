//! Coordinator -> agent: a sequence of `CoordinatorMessage`s (welcome, update and stage orders,
//! refusal) handed to the agent's real session handler (`rollgate_agent::on_coordinator_message`)
//! on a real `Executor` with a fresh journal. Checks, independently of the agent's own code:
//! an update order is accepted (journaled, progress `accepted` sent) only with a token above 0,
//! for a configured service with no other order in flight, with a release whose digest is a
//! sha256, `min_healthy_time` within the deadline, and, for the service with a pinned key, a
//! valid unexpired signature by that key for this fleet; an order not accepted is answered by
//! exactly one result for that very order (refused or stale token), or ignored only as a repeat
//! of the order in flight; a stage order is answered for that order only; a welcome ends the
//! session only for a protocol too old, a refusal always, naming the reason.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use rollgate_fuzz::agent_fixture::{key_dir, Agent, Handled, FLEET, OPEN_SERVICE, SIGNED_SERVICE};
use rollgate_fuzz::wire;
use rollgate_proto::pb::{self, agent_message::Msg, coordinator_message::Msg as In};
use rollgate_proto::signing::{self, PublicKey, Scope, Signed};
use rollgate_proto::version::{compat, Compat, MIN_COORDINATOR_PROTOCOL};

/// The agent's default healthy_deadline when an order leaves it 0.
const DEFAULT_DEADLINE: Duration = rollgate_proto::spec::DEFAULT_HEALTHY_DEADLINE;

fuzz_target!(|data: &[u8]| {
    let msgs: Vec<pb::CoordinatorMessage> = wire::messages(data);
    if msgs.is_empty() {
        return;
    }
    let mut agent = Agent::start();
    // Orders accepted in this input, per service: (rollout, token). None finishes (the
    // services' tasks never run), so each stays in flight.
    let mut in_flight: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for msg in msgs {
        let handled = agent.handle(msg.clone());
        match msg.msg {
            Some(In::Welcome(w)) => welcome(&w, &handled),
            Some(In::Refusal(r)) => {
                let why = handled
                    .session
                    .as_ref()
                    .expect_err("a refusal ends the session");
                assert!(
                    why.contains(&r.reason),
                    "{why:?} does not name {:?}",
                    r.reason
                );
            }
            Some(In::Update(o)) => update(&o, &handled, &mut in_flight),
            Some(In::Stage(o)) => stage(&o, &handled),
            None => assert!(handled.session.is_ok() && handled.sent.is_empty()),
        }
        if handled.session.is_err() {
            break;
        }
    }
});

fn welcome(w: &pb::Welcome, h: &Handled) {
    let too_old = compat(w.protocol_version, MIN_COORDINATOR_PROTOCOL) == Compat::TooOld;
    match &h.session {
        Ok(()) => assert!(!too_old, "a coordinator too old was welcomed"),
        Err(why) => assert!(too_old && why.contains("upgrade"), "welcome refused: {why}"),
    }
    assert!(h.sent.is_empty(), "a welcome is not answered: {:?}", h.sent);
}

fn update(o: &pb::UpdateOrder, h: &Handled, in_flight: &mut BTreeMap<String, (String, u64)>) {
    assert!(
        h.session.is_ok(),
        "an order ended the session: {:?}",
        h.session
    );
    let mut accepted = false;
    let mut results = Vec::new();
    for m in &h.sent {
        match m {
            Msg::Progress(p) => {
                assert_eq!(
                    (p.rollout_id.as_str(), p.token, p.service.as_str()),
                    (o.rollout_id.as_str(), o.token, o.service.as_str()),
                    "progress for another order"
                );
                accepted |= p.step() == pb::Step::Accepted;
            }
            Msg::Result(r) => {
                assert_eq!(
                    (r.rollout_id.as_str(), r.token, r.service.as_str()),
                    (o.rollout_id.as_str(), o.token, o.service.as_str()),
                    "result for another order"
                );
                results.push(r);
            }
            Msg::Status(s) => assert_eq!(s.service, o.service, "status of another service"),
            other => panic!("unexpected answer to an order: {other:?}"),
        }
    }
    let current = in_flight.get(&o.service).cloned();
    if accepted {
        assert!(results.is_empty(), "accepted and answered: {results:?}");
        assert_ne!(o.token, 0, "accepted without a fencing token");
        assert!(current.is_none(), "accepted while {current:?} is in flight");
        let release = o.release.as_ref().expect("accepted without a release");
        rollgate_proto::names::check_sha256(&release.sha256).expect("accepted a bad digest");
        let deadline = match o.healthy_deadline_ms {
            0 => DEFAULT_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        assert!(Duration::from_millis(o.min_healthy_time_ms) <= deadline);
        if o.service == SIGNED_SERVICE {
            assert!(
                signed_by_the_pinned_key(&o.service, release),
                "accepted unsigned: {o:?}"
            );
        } else {
            assert_eq!(o.service, OPEN_SERVICE, "accepted for an unknown service");
        }
        in_flight.insert(o.service.clone(), (o.rollout_id.clone(), o.token));
        return;
    }
    match results.as_slice() {
        [] => assert_eq!(
            current,
            Some((o.rollout_id.clone(), o.token)),
            "an order neither accepted nor answered, and not the one in flight"
        ),
        [r] => {
            assert!(
                matches!(r.outcome(), pb::Outcome::Refused | pb::Outcome::StaleToken),
                "an order not accepted was answered {:?}",
                r.outcome()
            );
            assert!(!r.reason.is_empty(), "a refusal without a reason");
        }
        more => panic!("several results for one order: {more:?}"),
    }
}

fn stage(o: &pb::StageOrder, h: &Handled) {
    assert!(
        h.session.is_ok(),
        "a stage order ended the session: {:?}",
        h.session
    );
    for m in &h.sent {
        match m {
            Msg::Staged(s) => {
                assert_eq!((&s.rollout_id, &s.service), (&o.rollout_id, &o.service));
                assert!(
                    !s.ok && !s.reason.is_empty(),
                    "a stage answer at intake: {s:?}"
                );
            }
            other => panic!("unexpected answer to a stage order: {other:?}"),
        }
    }
    if h.sent.is_empty() {
        // Taken: staging starts (it never runs here). Only what intake may take.
        let release = o.release.as_ref().expect("staging without a release");
        rollgate_proto::names::check_sha256(&release.sha256).expect("staging a bad digest");
        if o.service == SIGNED_SERVICE {
            assert!(
                signed_by_the_pinned_key(&o.service, release),
                "staging unsigned: {o:?}"
            );
        } else {
            assert_eq!(o.service, OPEN_SERVICE, "staging for an unknown service");
        }
    }
}

/// Whether `release` carries a valid, unexpired signature of `service` by the pinned key.
fn signed_by_the_pinned_key(service: &str, release: &pb::Release) -> bool {
    let Some(sig) = &release.signature else {
        return false;
    };
    let key = PublicKey::load(&key_dir().join("release.pub")).expect("the pinned key");
    let scope = Scope::new(FLEET, "");
    let message = Signed::of(&scope, service, release).message();
    let now = signing::unix(SystemTime::now());
    key.verifies(&message, &sig.signature) && sig.expires_unix > now
}
