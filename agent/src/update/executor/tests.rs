use super::*;

fn order(token: u64, service: &str) -> pb::UpdateOrder {
    pb::UpdateOrder {
        rollout_id: "r1".into(),
        token,
        service: service.into(),
        release: Some(pb::Release {
            version: "2.0.0".into(),
            source: "store:".into(),
            sha256: "a".repeat(64),
            size: 10,
            signature: None,
        }),
        min_healthy_time_ms: 100,
        healthy_deadline_ms: 1000,
        rollback: false,
    }
}

fn in_flight(token: u64, service: &str) -> InFlight {
    InFlight {
        rollout_id: "r1".into(),
        token,
        service: service.into(),
        version: "2.0.0".into(),
        sha256: "a".repeat(64),
        target_dir: "2.0.0-aaaaaaaaaaaa".into(),
        previous_dir: None,
        previous_version: String::new(),
        min_healthy_time_ms: 100,
        healthy_deadline_ms: 1000,
        step: Step::Accepted.as_str_name().into(),
    }
}

fn result(token: u64) -> pb::OrderResult {
    OrderRef::of(&order(token, "demo")).result(
        Outcome::Succeeded,
        "2.0.0",
        Health::Healthy,
        String::new(),
    )
}

#[test]
fn intake_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(dir.path()).expect("journal");
    // Token 5 finished; token 9 is in flight for "demo"; "demo"'s highest is 9, "other"
    // has acted on nothing.
    j.begin(in_flight(5, "demo")).expect("begin");
    j.finish("demo", &result(5), None).expect("finish");
    j.begin(in_flight(9, "demo")).expect("begin");
    let known = |s: &str| s == "demo" || s == "other";

    let with = |f: &dyn Fn(&mut pb::UpdateOrder)| {
        let mut o = order(10, "other");
        f(&mut o);
        o
    };
    let cases: Vec<(&str, pb::UpdateOrder, &str)> = vec![
        ("no token", order(0, "other"), "no fencing token"),
        ("repeat of the order in flight", order(9, "demo"), "ignore"),
        ("repeat of a finished order", order(5, "demo"), "resend"),
        (
            "finished token reused by another rollout",
            with(&|o| {
                o.token = 5;
                o.service = "demo".into();
                o.rollout_id = "r-other".into();
            }),
            "stale order: token 5 was already used by rollout r1, not r-other",
        ),
        (
            "older token",
            with(&|o| {
                o.token = 4;
                o.service = "demo".into();
            }),
            "stale order: token 4 is older than 9, the highest this host has acted on for \
             service demo",
        ),
        (
            "same token, result forgotten",
            with(&|o| {
                o.token = 9;
                o.service = "demo".into();
                o.rollout_id = "r-other".into();
            }),
            "stale order: token 9 was already acted on for service demo",
        ),
        // Fenced per service: "demo" acted on 9, "other" on nothing yet.
        (
            "older than another service's token",
            order(4, "other"),
            "accept",
        ),
        (
            "unknown service",
            order(10, "nope"),
            "is not configured on host web-1",
        ),
        (
            "busy service",
            order(10, "demo"),
            "still in progress for service demo",
        ),
        (
            "no release",
            with(&|o| o.release = None),
            "carries no release",
        ),
        (
            "bad digest",
            with(&|o| {
                if let Some(r) = o.release.as_mut() {
                    r.sha256 = "xyz".into()
                }
            }),
            "sha256",
        ),
        (
            "bad source",
            with(&|o| {
                if let Some(r) = o.release.as_mut() {
                    r.source = "ftp://x".into()
                }
            }),
            "not one the agent knows",
        ),
        (
            "impossible timing",
            with(&|o| o.min_healthy_time_ms = 5000),
            "longer than healthy_deadline",
        ),
        ("fine", order(10, "other"), "accept"),
    ];
    for (name, o, want) in cases {
        let got = admit(&o, &j, "web-1", &known);
        let ok = match (&got, want) {
            (Admission::Ignore(_), "ignore") => true,
            (Admission::Resend(r), "resend") => r.token == 5,
            (Admission::Accept(a), "accept") => {
                a.target_dir == "2.0.0-aaaaaaaaaaaa" && a.deadline == Duration::from_secs(1)
            }
            (Admission::Refuse(reason), want) => reason.contains(want),
            (Admission::Stale { highest, reason }, want) => *highest == 9 && reason.contains(want),
            _ => false,
        };
        assert!(ok, "{name}: got {got:?}, want {want}");
    }

    // Token 0 is refused even by an agent that has never acted on an order.
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let fresh = Journal::open(fresh_dir.path()).expect("journal");
    match admit(&order(0, "other"), &fresh, "web-1", &known) {
        Admission::Refuse(reason) => {
            assert!(reason.starts_with("no fencing token"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let mut o = order(10, "other");
    o.healthy_deadline_ms = 0;
    match admit(&o, &j, "web-1", &known) {
        Admission::Accept(a) => assert_eq!(a.deadline, DEFAULT_HEALTHY_DEADLINE),
        other => panic!("expected accept, got {other:?}"),
    }
}
