//! Hooks around an update (drain, undrain, rollback) and the watch after a commit, with real
//! release processes, real hook commands and real probes.

mod common;

use common::*;
use rollgate_agent::Config;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{Health, Outcome, Step};
use tokio::sync::watch;

fn start(config: &Config) -> (Executor, Outbox) {
    let (_tx, rx) = watch::channel(None);
    let fetcher = Fetcher::new(rx, None).expect("fetcher");
    Executor::start(config, fetcher).expect("executor")
}

#[tokio::test]
async fn hooks_drain_undrain_and_rollback() {
    let world = World::new();
    let root = world.root.path();
    let log = root.join("hooks.log");
    let block_drain = root.join("block-drain");
    let block_undrain = root.join("block-undrain");
    let hooks = format!(
        r#"[services.hooks]
pre_stop = ['echo "pre_stop $ROLLGATE_OLD_VERSION>$ROLLGATE_NEW_VERSION" >> {log}; echo drained', 'if test -e {block_drain}; then echo "backend refuses to drain" >&2; exit 7; fi']
pre_start = ['echo "pre_start $ROLLGATE_SERVICE" >> {log}']
post_start = ['echo "post_start $ROLLGATE_NEW_VERSION" >> {log}; test ! -e {block_undrain}']
on_rollback = ['echo "on_rollback $ROLLGATE_OLD_VERSION $ROLLGATE_NEW_VERSION $ROLLGATE_ROLLOUT $ROLLGATE_HOST" >> {log}']
"#,
        log = log.display(),
        block_drain = block_drain.display(),
        block_undrain = block_undrain.display(),
    );
    let text = world.config_text_with("http://127.0.0.1:1", "hook_timeout = \"5s\"", &hooks);
    let config = Config::parse(&text).expect("config");
    let (exec, mut outbox) = start(&config);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // A first install has nothing to drain: pre_stop does not run; the others do.
    exec.handle_order(order(
        1,
        world.release("1.0.0", &healthy("1.0.0")),
        100,
        5000,
    ));
    let (r, seen) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    assert_eq!(read_log(), "pre_start demo\npost_start 1.0.0\n");
    assert!(
        seen.messages
            .iter()
            .any(|m| m.starts_with("post_start hooks: `echo")),
        "{:?}",
        seen.messages
    );
    let v1_dir = world.current().expect("current");
    let v1_pid = world.running_pid().expect("running");

    // A failing pre_stop refuses the update before anything stops.
    std::fs::write(&block_drain, b"").expect("block");
    exec.handle_order(order(
        2,
        world.release("2.0.0", &healthy("2.0.0")),
        100,
        5000,
    ));
    let (r, seen) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    assert!(
        r.reason.starts_with("pre_stop hook `if test -e")
            && r.reason
                .contains("exited with status 7: backend refuses to drain")
            && r.reason
                .ends_with("; the update is refused and 1.0.0 was not stopped"),
        "{}",
        r.reason
    );
    assert_eq!(
        (r.running_version.as_str(), r.health()),
        ("1.0.0", Health::Healthy)
    );
    assert!(!seen.steps.contains(&Step::Swapping), "{:?}", seen.steps);
    assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()));
    assert!(alive(v1_pid), "the running release was not touched");
    std::fs::remove_file(&block_drain).expect("unblock");

    // A failing post_start fails the update: back to 1.0.0, then on_rollback runs.
    std::fs::write(&block_undrain, b"").expect("block");
    std::fs::write(&log, b"").expect("clear log");
    exec.handle_order(order(
        3,
        world.release("3.0.0", &healthy("3.0.0")),
        100,
        5000,
    ));
    let (r, seen) = result_for(&mut outbox, 3).await;
    assert_eq!(r.outcome(), Outcome::RolledBack, "{r:?}");
    assert!(
        r.reason.starts_with(
            "3.0.0 failed: post_start hook `echo \"post_start $ROLLGATE_NEW_VERSION\""
        ) && r.reason.contains("exited with status 1")
            && r.reason.ends_with("; back on 1.0.0, healthy"),
        "{}",
        r.reason
    );
    assert_eq!(
        read_log(),
        "pre_stop 1.0.0>3.0.0\npre_start demo\npost_start 3.0.0\non_rollback 1.0.0 3.0.0 r3 web-1\n",
        "hooks in order, with the update's environment"
    );
    assert!(
        seen.messages
            .iter()
            .any(|m| m.starts_with("pre_stop hooks: `echo") && m.contains(": drained;")),
        "the hooks' summary is in the progress: {:?}",
        seen.messages
    );
    assert!(
        seen.messages
            .iter()
            .any(|m| m.starts_with("on_rollback hooks: ")),
        "{:?}",
        seen.messages
    );
    assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()));
    std::fs::remove_file(&block_undrain).expect("unblock");

    // With the hooks passing, the update goes through.
    exec.handle_order(order(
        4,
        world.release("4.0.0", &healthy("4.0.0")),
        100,
        5000,
    ));
    let (r, _) = result_for(&mut outbox, 4).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    exec.shutdown().await;
}

#[tokio::test]
async fn a_hook_that_hangs_is_killed_at_its_timeout() {
    let world = World::new();
    let hooks = "[services.hooks]\npost_start = ['echo waiting for the load balancer; sleep 30']\n";
    let text = world.config_text_with("http://127.0.0.1:1", "hook_timeout = \"300ms\"", hooks);
    let (exec, mut outbox) = start(&Config::parse(&text).expect("config"));
    let t0 = std::time::Instant::now();
    exec.handle_order(order(
        1,
        world.release("1.0.0", &healthy("1.0.0")),
        100,
        5000,
    ));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::RolledBack, "{r:?}");
    assert!(
        r.reason
            .contains("did not finish within 300ms and was killed: waiting for the load balancer"),
        "{}",
        r.reason
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );
    exec.shutdown().await;
}

#[tokio::test]
async fn a_failure_soon_after_a_commit_is_reported_as_a_regression() {
    let world = World::new();
    let text = world.config_text_with("http://127.0.0.1:1", "watch_after_commit = \"30s\"", "");
    let (exec, mut outbox) = start(&Config::parse(&text).expect("config"));
    exec.handle_order(order(
        1,
        world.release("1.0.0", &healthy("1.0.0")),
        100,
        5000,
    ));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");

    // The release stops answering its probe (its pid file goes away) after the commit.
    let pidfile = world.service_dir().join("current").join("healthy.pid");
    let pid = std::fs::read_to_string(&pidfile).expect("pid file");
    std::fs::remove_file(&pidfile).expect("remove");
    let s = status(&mut outbox, Health::Unhealthy).await;
    assert!(
        s.detail.starts_with("regressed after commit: exec probe"),
        "{s:?}"
    );
    assert_eq!(s.version, "1.0.0");
    let hello = exec.hello();
    assert!(
        hello.services[0]
            .detail
            .starts_with("regressed after commit: "),
        "{hello:?}"
    );

    // Healthy again: the label goes with it.
    std::fs::write(&pidfile, pid).expect("restore");
    let s = status(&mut outbox, Health::Healthy).await;
    assert_eq!(s.detail, "");
    exec.shutdown().await;
}
