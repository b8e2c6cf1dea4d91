//! The rollout spec parser on arbitrary text: never panics, and a spec it accepts survives
//! the trips it makes in practice unchanged: to JSON (the coordinator's etcd record) and back,
//! and to TOML and back through the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollgate_proto::spec::{human, RolloutSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let resolved = RolloutSpec::parse_resolved(text);
    let Ok(spec) = RolloutSpec::parse(text) else {
        assert!(
            resolved.is_err(),
            "parse_resolved accepted what parse refused"
        );
        return;
    };
    if let Ok(r) = &resolved {
        assert_eq!(r, &spec);
    }

    // What the coordinator and the CLI compute and show from a spec.
    let s = &spec.strategy;
    for n in [0, 1, 3, 100, usize::MAX] {
        let _ = s.max_unavailable.resolve(n);
        let _ = s.max_unavailable_per_group.map(|b| b.resolve(n));
        let _ = s.canary.map(|b| b.resolve(n));
        let _ = s.max_failures.resolve(n);
        for w in &s.waves {
            let _ = w.resolve(n);
        }
    }
    let _ = (
        s.canary_gate.to_string(),
        s.on_failure.to_string(),
        s.max_failures.to_string(),
        human(s.pause_between_waves),
        human(s.min_healthy_time),
        human(s.healthy_deadline),
        human(s.progress_deadline),
        human(s.lost_grace),
    );

    let json = serde_json::to_vec(&spec).expect("an accepted spec serializes to JSON");
    let back: RolloutSpec =
        serde_json::from_slice(&json).expect("an accepted spec reads back from its JSON");
    assert_eq!(
        back,
        spec,
        "JSON round trip changed the spec: {}",
        String::from_utf8_lossy(&json)
    );

    let again = toml::to_string(&spec).expect("an accepted spec serializes to TOML");
    let reparsed = RolloutSpec::parse(&again).expect("an accepted spec's TOML parses");
    assert_eq!(reparsed, spec, "TOML round trip changed the spec:\n{again}");
    if resolved.is_ok() {
        RolloutSpec::parse_resolved(&again).expect("a resolved spec's TOML stays resolved");
    }
});
