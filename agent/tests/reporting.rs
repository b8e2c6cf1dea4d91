//! What the agent reports about its services during and after orders (issue 9): statuses name
//! the order in flight and follow the service through an update and its undo, every status and
//! result says when, an unidentifiable release is an outage rather than "never ran", and
//! tokens are fenced per service. Real release files, real service processes, real probes.

mod common;

use common::*;
use rollgate_agent::Config;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{self, agent_message::Msg, Health, Outcome, Step};
use tokio::sync::watch;

fn start_with(config: &Config) -> (Executor, Outbox) {
    let (_tx, rx) = watch::channel(None);
    let fetcher = Fetcher::new(rx, None).expect("fetcher");
    Executor::start(config, fetcher).expect("executor")
}

fn start(world: &World) -> (Executor, Outbox) {
    start_with(&world.config())
}

/// Installs 1.0.0 with token 1 and reads the outbox up to its final status.
async fn install_v1(exec: &Executor, outbox: &mut Outbox, world: &World) -> pb::OrderResult {
    exec.handle_order(order(
        1,
        world.release("1.0.0", &healthy("1.0.0")),
        100,
        5000,
    ));
    let (r, _) = result_for(outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let after = next_status(outbox).await;
    assert_eq!(
        (
            after.health(),
            after.version.as_str(),
            after.in_flight_token
        ),
        (Health::Healthy, "1.0.0", 0),
        "after the result, the final state with no order in flight: {after:?}"
    );
    r
}

/// Reads the outbox until the next status.
async fn next_status(outbox: &mut Outbox) -> pb::ServiceStatus {
    let deadline = tokio::time::Instant::now() + RESULT_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, outbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no status within {RESULT_WAIT:?}"))
            .expect("outbox open");
        if let Some(Msg::Status(s)) = msg.msg {
            return s;
        }
    }
}

#[tokio::test]
async fn statuses_during_an_update_name_the_order_and_follow_the_service() {
    let world = World::new();
    let (exec, mut outbox) = start(&world);
    install_v1(&exec, &mut outbox, &world).await;

    exec.handle_order(order(
        2,
        world.release("2.0.0", &healthy("2.0.0")),
        300,
        5000,
    ));
    let (r, seen) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let trace: Vec<_> = seen
        .statuses
        .iter()
        .map(|s| (s.health(), s.version.as_str(), s.in_flight_token))
        .collect();
    // From acceptance to the result every status names the order.
    assert!(
        seen.statuses
            .iter()
            .all(|s| s.in_flight_token == 2 && s.in_flight_rollout == "r2"),
        "{:#?}",
        seen.statuses
    );
    // Accepted while healthy on 1.0.0, out of service at the swap, then what the probes say.
    assert_eq!(
        trace.first(),
        Some(&(Health::Healthy, "1.0.0", 2)),
        "{trace:?}"
    );
    let swap = seen
        .statuses
        .iter()
        .find(|s| s.health() == Health::Stopped)
        .unwrap_or_else(|| panic!("no STOPPED status at the swap: {trace:?}"));
    assert_eq!(
        (swap.version.as_str(), swap.detail.as_str()),
        ("1.0.0", "out of service for the update to 2.0.0")
    );
    assert!(
        trace.contains(&(Health::Healthy, "2.0.0", 2)),
        "the probes passing during verification are reported: {trace:?}"
    );
    // After the result: the final health, with no order in flight, observed after the result.
    let last = next_status(&mut outbox).await;
    assert_eq!(
        (last.health(), last.version.as_str(), last.in_flight_token),
        (Health::Healthy, "2.0.0", 0)
    );
    assert_eq!(last.in_flight_rollout, "");
    assert!(last.observed_at_ms >= r.finished_at_ms, "{last:?} vs {r:?}");

    // A hello during an update carries the order in its statuses, and so does the first one
    // of an agent restarted in the middle of it, until the undo's result.
    exec.handle_order(order(
        3,
        world.release("3.0.0", &unhealthy("3.0.0")),
        100,
        60_000,
    ));
    wait_step(&mut outbox, 3, Step::Verifying).await;
    let hello = exec.hello();
    let s = &hello.services[0];
    assert_eq!(
        (
            s.in_flight_token,
            s.in_flight_rollout.as_str(),
            s.version.as_str()
        ),
        (3, "r3", "3.0.0"),
        "{s:?}"
    );
    assert_ne!(s.health(), Health::Healthy, "{s:?}");
    assert_eq!(hello.in_flight.map(|p| p.token), Some(3));
    exec.shutdown().await;
    drop(outbox);

    let (exec, mut outbox) = start(&world);
    let hello = exec.hello();
    assert_eq!(
        hello.services[0].in_flight_token, 3,
        "{:?}",
        hello.services[0]
    );
    let (r, seen) = result_for(&mut outbox, 3).await;
    assert_eq!(r.outcome(), Outcome::Interrupted, "{r:?}");
    assert!(!seen.statuses.is_empty(), "the undo is reported");
    assert!(
        seen.statuses.iter().all(|s| s.in_flight_token == 3),
        "{:#?}",
        seen.statuses
    );
    let last = next_status(&mut outbox).await;
    assert_eq!(
        (last.health(), last.version.as_str(), last.in_flight_token),
        (Health::Healthy, "2.0.0", 0)
    );
    let hello = exec.hello();
    assert_eq!(hello.services[0].in_flight_token, 0);
    assert!(hello.in_flight.is_none());
    exec.shutdown().await;
}

#[tokio::test]
async fn statuses_and_results_say_when_and_the_hello_is_the_current_state() {
    let world = World::new();
    let (exec, mut outbox) = start(&world);
    let r1 = install_v1(&exec, &mut outbox, &world).await;
    assert!(r1.finished_at_ms > 1_600_000_000_000, "{r1:?}");

    // The service crashes while nobody reads the outbox (as while disconnected): the hello
    // has the change, observed after the last result.
    let pid = world.running_pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let down = status(&mut outbox, Health::Stopped).await;
    assert!(down.observed_at_ms >= r1.finished_at_ms, "{down:?}");
    let hello = exec.hello();
    let s = &hello.services[0];
    assert!(s.observed_at_ms >= down.observed_at_ms, "{s:?} vs {down:?}");
    let kept = &hello.recent_results[0];
    assert_eq!(
        kept.finished_at_ms, r1.finished_at_ms,
        "the result keeps its time"
    );
    exec.shutdown().await;
    drop(outbox);

    // Durable: after a restart the result still says when it finished, and the statuses
    // are observed after it.
    let (exec, _outbox) = start(&world);
    let hello = exec.hello();
    assert_eq!(hello.recent_results[0].finished_at_ms, r1.finished_at_ms);
    assert!(hello.services[0].observed_at_ms >= r1.finished_at_ms);
    exec.shutdown().await;
}

#[tokio::test]
async fn a_release_that_cannot_be_identified_is_unhealthy_not_never_ran() {
    // Nothing installed: STOPPED, no version (the one case that means "never ran").
    let world = World::new();
    let (exec, mut outbox) = start(&world);
    let s = exec.hello().services[0].clone();
    assert_eq!(
        (s.health(), s.version.as_str()),
        (Health::Stopped, ""),
        "{s:?}"
    );
    install_v1(&exec, &mut outbox, &world).await;
    exec.shutdown().await;
    drop(outbox);

    let meta = world
        .service_dir()
        .join("current")
        .join(".release.json")
        .canonicalize()
        .expect("metadata");
    for (damage, error) in [("corrupt", "cannot parse"), ("missing", "no such file")] {
        if damage == "corrupt" {
            std::fs::write(&meta, b"{not json").expect("corrupt the metadata");
        } else {
            std::fs::remove_file(&meta).expect("remove the metadata");
        }
        let (exec, mut outbox) = start(&world);
        let first = exec.hello().services[0].clone();
        // The service task settles on a status of its own; it must say the same.
        let settled = status(&mut outbox, Health::Unhealthy).await;
        for s in [&first, &settled] {
            assert_eq!(
                (s.health(), s.version.as_str()),
                (Health::Unhealthy, ""),
                "{damage}: {s:?}"
            );
            assert!(
                s.detail.contains(&meta.display().to_string())
                    && s.detail.contains(error)
                    && s.detail.contains("reinstall"),
                "{damage}: the detail names the path, the error and the fix: {}",
                s.detail
            );
        }
        exec.shutdown().await;
    }

    // A rollout repairs it.
    let (exec, mut outbox) = start(&world);
    exec.handle_order(order(
        2,
        world.release("2.0.0", &healthy("2.0.0")),
        100,
        5000,
    ));
    let (r, _) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let s = status(&mut outbox, Health::Healthy).await;
    assert_eq!(s.version, "2.0.0");
    exec.shutdown().await;
}

#[tokio::test]
async fn tokens_are_fenced_per_service() {
    let world = World::new();
    let other_pid = world.state_dir().join("services/other/current/healthy.pid");
    let other = format!(
        r#"[[services]]
name = "other"
backend = "process"
binary = "other-svc"
stop_timeout = "2s"
restart_delay = "100ms"
[[services.probes]]
kind = "exec"
command = ["/bin/sh", "-c", 'kill -0 "$(cat {})" 2>/dev/null']
interval = "50ms"
timeout = "1s"
"#,
        other_pid.display()
    );
    let config =
        Config::parse(&world.config_text_with("http://127.0.0.1:1", "", &other)).expect("config");
    let (exec, mut outbox) = start_with(&config);

    let mut for_other = order(
        9,
        world.release("1.0.0", &healthy("other 1.0.0")),
        100,
        5000,
    );
    for_other.service = "other".into();
    exec.handle_order(for_other);
    let (r, _) = result_for(&mut outbox, 9).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");

    // A late grant for "demo" (token 5 < 9) is not stale: "demo" never acted on a token.
    exec.handle_order(order(
        5,
        world.release("1.0.0", &healthy("1.0.0")),
        100,
        5000,
    ));
    let (r, _) = result_for(&mut outbox, 5).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{}", r.reason);
    assert_eq!(world.current().as_deref().map(|d| &d[..6]), Some("1.0.0-"));

    // Below "demo"'s own highest it is.
    exec.handle_order(order(
        4,
        world.release("2.0.0", &healthy("2.0.0")),
        100,
        5000,
    ));
    let (r, seen) = result_for(&mut outbox, 4).await;
    assert_eq!(r.outcome(), Outcome::StaleToken);
    assert_eq!(r.highest_token, 5, "the refusal names the token acted on");
    assert_eq!(
        r.reason,
        "stale order: token 4 is older than 5, the highest this host has acted on for service demo"
    );
    assert!(seen.steps.is_empty(), "nothing was started: {seen:?}");
    assert_eq!(
        exec.hello().highest_token,
        9,
        "the hello reports the maximum"
    );
    exec.shutdown().await;
}
