//! The agent against a stand-in coordinator: the session (hello, heartbeats, orders,
//! reconnects), `store:` downloads, and the real binary surviving `kill -9` mid-update.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fake::Fake;
use common::*;
use rollgate_proto::pb::{agent_message::Msg, Health, Outcome, Step};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_hello_heartbeats_orders_and_resend_after_reconnect() {
    let world = World::new();
    let body = healthy("1.0.0");
    let mut store_release = world.release("1.0.0", &body);
    store_release.source = "store:".into();
    let artifacts = HashMap::from([(sha(&body), body.clone().into_bytes())]);
    let mut fake = Fake::start("127.0.0.1:0".parse().expect("addr"), artifacts.clone()).await;

    let config = rollgate_agent::Config::parse(&world.config_text(&fake.url())).expect("config");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(rollgate_agent::run(config, async {
        let _ = stop_rx.await;
    }));

    let hello = fake.hello(WAIT).await;
    assert_eq!(hello.host_id, "web-1");
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.highest_token, 0);
    assert_eq!(hello.services.len(), 1);
    assert_eq!(
        (
            hello.services[0].service.as_str(),
            hello.services[0].health()
        ),
        ("demo", Health::Stopped)
    );
    // Heartbeats follow the welcome's interval (100ms).
    for _ in 0..3 {
        fake.next(WAIT, |m| matches!(m, Msg::Heartbeat(_)).then_some(()))
            .await;
    }

    // An order with a `store:` source: fetched over the session's channel.
    fake.send(order(5, store_release, 100, 5000));
    fake.step(5, Step::Fetching, WAIT).await;
    let r = fake.result(5, WAIT).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let status = fake
        .next(WAIT, |m| match m {
            Msg::Status(s) if s.health() == Health::Healthy => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(status.version, "1.0.0");
    let pid = world.running_pid().expect("running");

    // The coordinator dies; the service keeps running; the agent reconnects to its
    // replacement and resends the result in its hello.
    let addr = fake.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(pid),
        "losing the coordinator does not touch the service"
    );
    let mut fake = Fake::start(addr, artifacts).await;
    let hello = fake.hello(WAIT).await;
    assert_eq!(hello.highest_token, 5);
    assert!(hello
        .recent_results
        .iter()
        .any(|r| r.token == 5 && r.outcome() == Outcome::Succeeded));
    assert_eq!(hello.services[0].version, "1.0.0");
    assert_eq!(hello.services[0].health(), Health::Healthy);

    // A stale order is refused over the stream.
    fake.send(order(
        4,
        world.release("0.9.0", &healthy("0.9.0")),
        100,
        5000,
    ));
    let r = fake.result(4, WAIT).await;
    assert_eq!(r.outcome(), Outcome::Refused);
    assert!(
        r.reason.starts_with("stale order: token 4 is older than 5"),
        "{}",
        r.reason
    );

    let _ = stop_tx.send(());
    agent.await.expect("join").expect("agent ran");
    assert!(
        !alive(pid),
        "the process backend stops the service with the agent"
    );
}

/// The real binary, with its stderr in a file of the world.
fn spawn_agent(world: &World, config: &std::path::Path, n: u32) -> Child {
    let log = std::fs::File::create(world.root.path().join(format!("agent-{n}.log"))).expect("log");
    Command::new(env!("CARGO_BIN_EXE_rollgate-agent"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn agent")
}

fn agent_log(world: &World, n: u32) -> String {
    std::fs::read_to_string(world.root.path().join(format!("agent-{n}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_killed_mid_update_undoes_it_on_restart() {
    let world = World::new();
    let mut fake = Fake::start("127.0.0.1:0".parse().expect("addr"), HashMap::new()).await;
    let config_path = world.root.path().join("agent.toml");
    std::fs::write(&config_path, world.config_text(&fake.url())).expect("config");

    let mut agent = spawn_agent(&world, &config_path, 1);
    fake.hello(WAIT).await;
    fake.send(order(
        1,
        world.release("1.0.0", &healthy("1.0.0")),
        100,
        5000,
    ));
    let r = fake.result(1, WAIT).await;
    assert_eq!(
        r.outcome(),
        Outcome::Succeeded,
        "{r:?}\n{}",
        agent_log(&world, 1)
    );
    let v1_dir = world.current().expect("current");

    fake.send(order(
        2,
        world.release("2.0.0", &unhealthy("2.0.0")),
        100,
        60_000,
    ));
    fake.step(2, Step::Verifying, WAIT).await;
    let v2_pid: i32 = std::fs::read_to_string(world.service_dir().join("pid"))
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    agent.kill().expect("kill -9");
    let _ = agent.wait();
    assert!(
        alive(v2_pid),
        "a killed agent leaves its service process behind"
    );

    let mut agent = spawn_agent(&world, &config_path, 2);
    let hello = fake.hello(WAIT).await;
    assert_eq!(hello.highest_token, 2);
    let r = match hello.recent_results.iter().find(|r| r.token == 2) {
        Some(r) => r.clone(),
        None => {
            let in_flight = hello.in_flight.expect("the interrupted order is reported");
            assert_eq!(in_flight.token, 2);
            fake.result(2, WAIT).await
        }
    };
    assert_eq!(
        r.outcome(),
        Outcome::RolledBack,
        "{r:?}\n{}",
        agent_log(&world, 2)
    );
    assert_eq!(
        r.reason,
        "agent restarted during the update to 2.0.0; back on 1.0.0, healthy"
    );
    assert!(
        !alive(v2_pid),
        "the leftover process was stopped through the pidfile"
    );
    assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()));
    let v1_pid = world.running_pid().expect("1.0.0 running");
    assert!(alive(v1_pid));

    // SIGTERM: the agent stops its service and exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sigterm");
    let status = agent.wait().expect("wait");
    assert!(status.success(), "{status}\n{}", agent_log(&world, 2));
    assert!(!alive(v1_pid));
    let log = agent_log(&world, 2);
    assert!(log.contains("stopped process"), "{log}");
}

#[test]
fn binary_reports_a_bad_config_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "host_id = \"web-1\"\ncoordinator = \"http://127.0.0.1:1\"\nstate_dir = \"/tmp/x\"\n\
         [[services]]\nname = \"demo\"\nbackend = \"systemd\"\nbinary = \"x\"\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`services[0].backend`") && err.contains("use \"process\""),
        "{err}"
    );
}
