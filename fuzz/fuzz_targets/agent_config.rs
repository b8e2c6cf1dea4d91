//! The agent's config file: TOML text through `Config::parse` (the parse and every field
//! check `rollgate-agent --config` runs), then for an accepted config what the agent checks
//! next at start before touching anything (`check_tls`, the `[metrics]` TLS acceptor).
//! Checks: never a panic; an accepted config has a valid host id, an absolute state dir, a
//! heartbeat above 0, at least one coordinator URL, unique valid service names, and every
//! duration (heartbeat, confirm deadline, stop, restart, hook, watch, probe interval and
//! timeout) usable by a timer the way the agent arms them (now + duration does not overflow). Not reached: creating the state dir and starting the
//! services (`Executor::start`; the coordinator_message target does that on a fixed config).
//! Text naming `/dev`, `/proc` or `/sys` is skipped: the agent reads the files its config names
//! (keys, certificates), and a device or FIFO there would only measure the device.
#![no_main]

use std::collections::BTreeSet;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rollgate_agent::Config;
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let Ok(config) = Config::parse(text) else {
        return;
    };
    rollgate_proto::names::check("host id", &config.host_id).expect("an accepted host id");
    assert!(
        config.state_dir.is_absolute(),
        "{}",
        config.state_dir.display()
    );
    assert!(!config.coordinators.is_empty(), "no coordinator to dial");
    assert!(!config.heartbeat_interval.is_zero());
    let now = Instant::now();
    timer(now, "heartbeat_interval", config.heartbeat_interval);
    if let Some(u) = &config.self_upgrade {
        timer(now, "self_upgrade.confirm_deadline", u.confirm_deadline);
    }
    let mut names = BTreeSet::new();
    for s in &config.services {
        rollgate_proto::names::check("service name", &s.name).expect("an accepted service name");
        assert!(names.insert(s.name.clone()), "service {} twice", s.name);
        timer(now, "stop_timeout", s.stop_timeout);
        timer(now, "restart_delay", s.restart_delay);
        timer(now, "hook_timeout", s.hook_timeout);
        timer(now, "watch_after_commit", s.watch_after_commit);
        for p in &s.probes {
            timer(now, "probe interval", p.interval);
            timer(now, "probe timeout", p.timeout);
        }
    }
    let _ = rollgate_agent::check_tls(&config);
    let _ = rollgate_proto::metrics_tls::acceptor(&config.metrics);
});

/// The agent arms timers as `Instant::now() + duration` (heartbeats, probes, stop and hook
/// deadlines): an accepted duration must not overflow that.
fn timer(now: Instant, field: &str, d: Duration) {
    assert!(
        now.checked_add(d).is_some(),
        "{field} {d:?} overflows a timer"
    );
}
