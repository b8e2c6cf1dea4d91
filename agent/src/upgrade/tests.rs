use std::path::PathBuf;

use super::*;

fn in_flight(token: u64, rollout: &str) -> InFlight {
    InFlight {
        rollout_id: rollout.into(),
        token,
        service: crate::config::AGENT_SERVICE.into(),
        version: "2.0.0".into(),
        sha256: "ab".repeat(32),
        target_dir: "2.0.0-abababababab".into(),
        previous_dir: None,
        previous_version: String::new(),
        min_healthy_time_ms: 0,
        healthy_deadline_ms: 0,
        step: String::new(),
    }
}

fn marker(token: u64, rollout: &str, failed: Option<&str>) -> Marker {
    Marker {
        rollout_id: rollout.into(),
        token,
        from_version: "1.0.0".into(),
        to_version: "2.0.0".into(),
        to_sha256: "ab".repeat(32),
        to_dir: "2.0.0-abababababab".into(),
        new_binary: PathBuf::from("/s/releases/2.0.0-abababababab/rollgate-agent"),
        binary: PathBuf::from("/usr/bin/rollgate-agent"),
        failed: failed.map(String::from),
    }
}

/// (case, marker, order in flight, ROLLGATE_AGENT_TRIAL, expected)
type Case<'a> = (
    &'a str,
    Option<Marker>,
    Option<InFlight>,
    Option<&'a str>,
    Startup,
);

#[test]
fn where_an_agent_finds_itself_at_start() {
    let m = |t, f| Some(marker(t, "r1", f));
    let f = |t| Some(in_flight(t, "r1"));
    // (case, marker, order in flight, ROLLGATE_AGENT_TRIAL, expected)
    let cases: Vec<Case> = vec![
        ("nothing", None, None, None, Startup::Idle),
        (
            "a marker without an order is stale",
            m(5, None),
            None,
            Some("5"),
            Startup::Idle,
        ),
        (
            "the new agent, on trial",
            m(5, None),
            f(5),
            Some("5"),
            Startup::Trial(marker(5, "r1", None)),
        ),
        (
            "the supervisor restarted the old binary",
            m(5, None),
            f(5),
            None,
            Startup::TrialOver(marker(5, "r1", None)),
        ),
        (
            "the trial gave up and put the old one back",
            m(5, Some("no welcome")),
            f(5),
            None,
            Startup::TrialOver(marker(5, "r1", Some("no welcome"))),
        ),
        (
            "a failed trial is never resumed, even with the variable",
            m(5, Some("no welcome")),
            f(5),
            Some("5"),
            Startup::TrialOver(marker(5, "r1", Some("no welcome"))),
        ),
        (
            "the variable of another token",
            m(5, None),
            f(5),
            Some("4"),
            Startup::TrialOver(marker(5, "r1", None)),
        ),
        (
            "died before re-executing",
            None,
            f(6),
            None,
            Startup::Interrupted(in_flight(6, "r1")),
        ),
        (
            "a marker of an older order",
            m(5, None),
            f(6),
            Some("5"),
            Startup::Interrupted(in_flight(6, "r1")),
        ),
        (
            "a marker of another rollout",
            Some(marker(6, "r0", None)),
            f(6),
            Some("6"),
            Startup::Interrupted(in_flight(6, "r1")),
        ),
    ];
    for (case, marker, f, env, want) in cases {
        assert_eq!(startup(marker, f, env), want, "{case}");
    }
}
