//! Issue 10 item 12, the starts no order asks for: the agent starts `current` on its own when
//! a process-backend service crashed and when the agent itself restarts. Both must check the
//! release tree first (S8), as the update and rollback paths do. Real executor, real
//! processes:
//!
//! - the running release's binary is rewritten, then its process is killed: the restart is
//!   refused naming the file, the rewritten script never runs, and the status says why;
//! - with the agent stopped, the binary is made world-writable: the next agent does not start
//!   the service, and its status names the file and the mode.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rollgate_agent::Config;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{self, agent_message::Msg, Health, Outcome};
use tokio::sync::watch;

/// How long, after the refusal, nothing else may be started (many `restart_delay`s).
const STAYS_DOWN: Duration = Duration::from_millis(800);

fn start(config: &Config) -> (Executor, Outbox) {
    let (_tx, rx) = watch::channel(None);
    let fetcher = Fetcher::new(rx, None).expect("fetcher");
    Executor::start(config, fetcher).expect("executor")
}

/// Reads the outbox until a STOPPED status whose detail contains `text`.
async fn stopped_with(outbox: &mut Outbox, text: &str) -> pb::ServiceStatus {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + RESULT_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, outbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no STOPPED status with {text:?}; saw {seen:?}"))
            .expect("outbox open");
        if let Some(Msg::Status(s)) = msg.msg {
            if s.health() == Health::Stopped && s.detail.contains(text) {
                return s;
            }
            seen.push(s.detail);
        }
    }
}

#[tokio::test]
async fn a_changed_release_is_not_restarted_after_a_crash_or_an_agent_restart() {
    let world = World::new();
    let config = world.config();
    let (exec, mut outbox) = start(&config);
    let v1 = world.release("1.0.0", &healthy("1.0.0"));
    exec.handle_order(order(1, v1.clone(), 100, 5000));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let pid = world.running_pid().expect("running");

    // The binary is rewritten under the running service, which then crashes.
    let dir = release_dir(&world, &v1);
    let bin = dir.join("demo-svc");
    let marker = world.root.path().join("evil-ran");
    let original = std::fs::read(&bin).expect("binary");
    std::fs::write(
        &bin,
        format!("#!/bin/sh\ntouch {}\nexec sleep 1000\n", marker.display()),
    )
    .expect("tamper");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let s = stopped_with(&mut outbox, "release file demo-svc has changed").await;
    println!("after the crash: {}", s.detail);
    assert!(
        s.detail.starts_with("release file demo-svc has changed")
            && s.detail.contains("it is not started"),
        "{s:?}"
    );
    tokio::time::sleep(STAYS_DOWN).await;
    assert!(!marker.exists(), "the rewritten binary ran");
    assert_eq!(world.running_pid(), Some(pid), "nothing wrote a new pid");

    // Put back, the agent stopped, then the mode changed: the next agent does not start it.
    std::fs::write(&bin, original).expect("restore");
    exec.shutdown().await;
    std::fs::remove_file(dir.join("healthy.pid")).expect("pidfile");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (exec, mut outbox) = start(&config);
    let s = stopped_with(&mut outbox, "release file demo-svc has mode 0777, not 0755").await;
    println!("after the agent restart: {}", s.detail);
    tokio::time::sleep(STAYS_DOWN).await;
    assert_eq!(world.running_pid(), None, "the changed release was started");
    exec.shutdown().await;
}
