//! Start-up probing (issue 17): right after a new release starts, until its probe first passes,
//! the agent probes at a start-up pace (a tenth of the time since the start, 10 ms at least)
//! instead of its configured interval, so a service that comes up in half a second is seen up
//! then, not one interval later.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rollgate_agent::{Config, Executor, Fetcher};
use rollgate_proto::pb::Outcome;
use tokio::sync::watch;

/// The probe's configured interval: far longer than the service takes to come up.
const INTERVAL: &str = "5s";

/// A release that takes `delay` to come up: its pid file (what the probe checks) appears then.
fn slow_start(version: &str, delay: &str) -> String {
    format!("#!/bin/sh\n# {version}\nsleep {delay}\necho \"$$\" > healthy.pid\nexec sleep 1000\n")
}

#[tokio::test]
async fn a_new_release_is_probed_at_start_up_pace_until_it_first_passes() {
    let world = World::new();
    let text = world
        .config_text("http://127.0.0.1:1")
        .replace("interval = \"50ms\"", &format!("interval = \"{INTERVAL}\""));
    assert!(text.contains(INTERVAL), "the probe's interval is set");
    let config = Config::parse(&text).expect("config");
    let (_tx, rx) = watch::channel(None);
    let (exec, mut outbox) =
        Executor::start(&config, Fetcher::new(rx, None).expect("fetcher")).expect("executor");

    let began = Instant::now();
    let v1 = world.release("1.0.0", &slow_start("1.0.0", "0.5"));
    exec.handle_order(order(1, v1, 100, 20_000));
    let (r, _) = result_for(&mut outbox, 1).await;
    let took = began.elapsed();
    println!("installed a release that comes up in 0.5 s in {took:?} (probe interval {INTERVAL})");
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    // The first probe runs right after the start and fails (no pid file yet). At the
    // configured pace the next one would run 5 s later; passing well before that shows the
    // start-up pace.
    assert!(
        took < Duration::from_secs(4),
        "verification waited for the configured interval: {took:?}"
    );
}
