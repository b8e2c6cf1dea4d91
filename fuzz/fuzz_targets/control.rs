//! Operator -> coordinator: one control request (the first byte picks the kind, the rest is
//! its protobuf encoding) through the checks the coordinator runs before it touches etcd: the
//! role rule for every caller role and RPC the request serves (`roles::decide`, with a
//! deployer's scope from the spec or the service named), the audit line's target
//! (`roles::target_words`), the spec (`RolloutSpec::parse_resolved`), host ids, pins
//! (`control::pins::check`), history's service name, event filters (`events::api::matches`,
//! `to_pb`) and download requests (`artifacts::downloads::check_request`). Checks: a viewer is
//! never let change anything, a deployer only its own services' rollouts (never fence, forget
//! or pin), a host or coordinator certificate nothing; the audit line carries no character a
//! terminal acts on; an accepted pin is within its bounds; an accepted download names a
//! lowercase sha256. Not reached (they need etcd): reading and changing rollouts, hosts and
//! pins, a deployer's scope for a rollout named by id, artifact uploads.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rollgate_coordinator::artifacts::downloads;
use rollgate_coordinator::control::pins::{self, PinRequest};
use rollgate_coordinator::events::api::{matches, to_pb};
use rollgate_coordinator::events::{EventRecord, NewEvent};
use rollgate_coordinator::roles::{decide, target_words, Rpc, Target};
use rollgate_proto::names;
use rollgate_proto::pb;
use rollgate_proto::spec::RolloutSpec;
use rollgate_proto::tls::{Identity, Role};

/// Every RPC a rollout reference serves.
const ON_A_ROLLOUT: [Rpc; 6] = [
    Rpc::ReadRollouts,
    Rpc::Pause,
    Rpc::Resume,
    Rpc::Abort,
    Rpc::Promote,
    Rpc::Rollback,
];

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 7 {
        0 => spec(body),
        1 => rollout_ref(body),
        2 => host_ref(body),
        3 => pin(body),
        4 => history(body),
        5 => events(body),
        _ => download(body),
    }
});

fn callers() -> Vec<Identity> {
    let mut deployer = Identity::new("fuzz", Role::Deployer, "ci").expect("identity");
    deployer.services = vec!["web".into()];
    [Role::Operator, Role::Viewer, Role::Host, Role::Coordinator]
        .into_iter()
        .map(|r| Identity::new("fuzz", r, "x").expect("identity"))
        .chain([deployer])
        .collect()
}

/// The role rule for each caller: what it lets through, against what S10 promises.
fn rule(rpc: Rpc, service: Option<&str>, target: Target<'_>) {
    let shown = target_words(target);
    assert_eq!(
        rollgate_proto::text::printable(&shown),
        shown,
        "the audit line's target carries control characters"
    );
    for who in callers() {
        let allowed = decide(&who, rpc, service).is_ok();
        let reads = matches!(
            rpc,
            Rpc::ReadRollouts | Rpc::Plan | Rpc::ListHosts | Rpc::History
        );
        match who.role {
            Role::Operator => assert!(allowed),
            Role::Viewer => assert_eq!(allowed, reads, "viewer, {rpc:?}"),
            Role::Deployer if reads || rpc == Rpc::PushArtifact => assert!(allowed),
            Role::Deployer => assert_eq!(
                allowed,
                service.is_some_and(|s| who.services.iter().any(|a| a == s))
                    && !matches!(rpc, Rpc::Fence | Rpc::Forget | Rpc::Pin),
                "deployer for {:?}, {rpc:?} on {service:?}",
                who.services
            ),
            Role::Host | Role::Coordinator => assert!(!allowed, "{:?} let in", who.role),
        }
    }
}

fn spec(body: &[u8]) {
    let Ok(req) = pb::CreateRolloutRequest::decode(body) else {
        return;
    };
    // A deployer's scope is the spec's service; a spec that does not parse is refused first.
    let service = RolloutSpec::parse(&req.spec_toml).ok().map(|s| s.service);
    for rpc in [Rpc::Create, Rpc::Plan] {
        if let Some(service) = &service {
            rule(rpc, Some(service), Target::Spec(&req.spec_toml));
        }
    }
    if let Ok(spec) = RolloutSpec::parse_resolved(&req.spec_toml) {
        names::check("service name", &spec.service).expect("an accepted spec's service");
        names::check_sha256(&spec.release.sha256).expect("a resolved spec's digest");
    }
}

fn rollout_ref(body: &[u8]) {
    let Ok(req) = pb::RolloutRef::decode(body) else {
        return;
    };
    for rpc in ON_A_ROLLOUT {
        // The rollout's service comes from etcd; any service, or none found.
        for service in [Some("web"), Some("api"), None] {
            rule(rpc, service, Target::Rollout(&req.id));
        }
    }
}

fn host_ref(body: &[u8]) {
    let Ok(req) = pb::HostRef::decode(body) else {
        return;
    };
    for rpc in [Rpc::Fence, Rpc::Forget] {
        rule(rpc, None, Target::Host(&req.host_id));
    }
    // fence_host's first check, before the key is built.
    if names::check("host id", &req.host_id).is_ok() {
        assert!(!req.host_id.contains(['/', '%']) && !req.host_id.is_empty());
    }
}

fn pin(body: &[u8]) {
    let Ok(r) = pb::PinHostRequest::decode(body) else {
        return;
    };
    rule(Rpc::Pin, None, Target::Host(&r.host_id));
    let req = PinRequest {
        host: r.host_id,
        labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
        services: r.services.into_iter().collect::<BTreeSet<_>>(),
        clear: r.clear,
    };
    let Ok(()) = pins::check(&req) else {
        return;
    };
    names::check("host id", &req.host).expect("a pinned host id");
    assert!(req.labels.len() <= 32);
    for (k, v) in &req.labels {
        let plain = |s: &str| !s.chars().any(char::is_control);
        assert!(!k.is_empty() && k.len() <= 63 && v.len() <= 256 && plain(k) && plain(v));
    }
    for s in &req.services {
        names::check("service name", s).expect("a pinned service name");
    }
    assert!(req.clear || !req.labels.is_empty() || !req.services.is_empty());
}

fn history(body: &[u8]) {
    let Ok(req) = pb::HistoryRequest::decode(body) else {
        return;
    };
    rule(
        Rpc::History,
        Some(&req.service),
        Target::Service(&req.service),
    );
}

fn events(body: &[u8]) {
    let Ok(req) = pb::EventsRequest::decode(body) else {
        return;
    };
    rule(Rpc::ReadRollouts, None, Target::Fleet);
    let record = EventRecord {
        id: 3,
        at_ms: 1_700_000_000_000,
        revision: 9,
        event: NewEvent {
            rollout: Some("r-0123456789abcdef".into()),
            service: Some("web".into()),
            host: Some("h1".into()),
            ..NewEvent::default()
        },
    };
    let open = pb::EventsRequest {
        follow: req.follow,
        after_id: req.after_id,
        ..Default::default()
    };
    assert!(
        matches(&open, &record),
        "no filter, and an event is left out"
    );
    if matches(&req, &record) {
        let e = to_pb(&record);
        for (want, have) in [
            (&req.rollout_id, &e.rollout_id),
            (&req.service, &e.service),
            (&req.host_id, &e.host_id),
        ] {
            assert!(
                want.is_empty() || want == have,
                "{want:?} let {have:?} through"
            );
        }
        assert!(e.at_ms >= req.since_ms);
    }
}

fn download(body: &[u8]) {
    let Ok(req) = pb::FetchArtifactRequest::decode(body) else {
        return;
    };
    if downloads::check_request(&req).is_ok() {
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        assert!(
            req.sha256.len() == 64 && req.sha256.chars().all(hex),
            "{:?}",
            req.sha256
        );
    }
}
