//! The systemd backend against a real `systemd --user` manager that each test starts itself
//! (see `rollgate_tests::managers`): the agent swaps `current`, restarts the unit over D-Bus and
//! judges it by what systemd says. Independent checks read the unit through `systemctl`. The
//! tests run on tokio's current-thread runtime, as the agent binary does.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::user_manager::UserManager;
use common::*;
use rollgate_agent::Config;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{Health, Outcome, Step};
use tokio::sync::watch;

/// A healthy release for a `Type=notify` unit: writes its pid where the probe looks, says
/// READY=1, then becomes `sleep`.
fn notify_healthy(version: &str) -> String {
    format!(
        "#!/bin/sh\n# {version}\necho \"$$\" > healthy.pid\nsystemd-notify --ready\nexec sleep 1000\n"
    )
}

/// Crashes before it is ready (the unit's Restart=on-failure makes it a crash loop).
fn notify_crashing(version: &str) -> String {
    format!("#!/bin/sh\n# {version}\necho 'crashing on purpose' >&2\nexit 3\n")
}

/// Becomes ready, then dies a moment later (while the agent verifies it).
fn notify_dies_later(version: &str) -> String {
    format!(
        "#!/bin/sh\n# {version}\necho \"$$\" > healthy.pid\nsystemd-notify --ready\nsleep 0.5\nexit 4\n"
    )
}

fn unit_text(service_dir: &Path, binary: &str) -> String {
    let current = service_dir.join("current");
    format!(
        "[Unit]\nDescription=rollgate test service\nStartLimitIntervalSec=60s\nStartLimitBurst=3\n\
         [Service]\nType=notify\nNotifyAccess=all\nExecStart={cur}/{binary}\n\
         WorkingDirectory={cur}\nRestart=on-failure\nRestartSec=200ms\nTimeoutStopSec=5s\n",
        cur = current.display()
    )
}

struct Host {
    // Dropped first: the manager stops before its dir (inside the world) is deleted.
    manager: UserManager,
    world: World,
}

impl Host {
    fn new() -> Host {
        let world = World::new();
        let manager = UserManager::start(&world.root.path().join("systemd"));
        Host { world, manager }
    }

    fn config(&self, extra_services: &str, probes: &str) -> Config {
        let text = format!(
            r#"host_id = "web-1"
coordinator = "http://127.0.0.1:1"
state_dir = "{state}"
file_source_dirs = ["{artifacts}"]
[[services]]
name = "demo"
backend = "systemd"
unit = "demo.service"
manager = "user"
bus = "{bus}"
binary = "demo-svc"
{probes}
{extra_services}
"#,
            state = self.world.state_dir().display(),
            artifacts = self.world.artifacts_dir().display(),
            bus = self.manager.bus(),
        );
        Config::parse(&text).expect("config")
    }

    fn start(&self, config: &Config) -> (Executor, Outbox) {
        let (_tx, rx) = watch::channel(None);
        let fetcher = Fetcher::new(rx, None).expect("fetcher");
        Executor::start(config, fetcher).expect("executor")
    }

    /// The release dir the unit's main process runs in (by its cwd), as systemd reports it.
    fn running_release(&self, unit: &str) -> Option<String> {
        let pid = self.manager.show(unit, "MainPID");
        if pid == "0" || pid.is_empty() {
            return None;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        cwd.file_name().map(|n| n.to_string_lossy().into_owned())
    }
}

/// The probes for `demo`: the release's own pid file, and the unit being active.
fn probes(world: &World) -> String {
    let pidfile = world.service_dir().join("current").join("healthy.pid");
    format!(
        r#"[[services.probes]]
kind = "exec"
command = ["/bin/sh", "-c", 'kill -0 "$(cat {pidfile})" 2>/dev/null']
interval = "50ms"
timeout = "1s"
[[services.probes]]
kind = "systemd"
interval = "50ms"
timeout = "2s"
"#,
        pidfile = pidfile.display()
    )
}

#[tokio::test]
async fn systemd_update_crash_detection_and_rollback() {
    let host = Host::new();
    let world = &host.world;
    let m = &host.manager;
    m.install_unit("demo.service", &unit_text(&world.service_dir(), "demo-svc"));
    // A unit that does not run the release through `current`, and one that is not installed.
    m.install_unit("stray.service", "[Service]\nExecStart=/bin/sleep 1000\n");
    let others = r#"
[[services]]
name = "stray"
backend = "systemd"
unit = "stray.service"
manager = "user"
bus = "BUS"
binary = "demo-svc"
[[services]]
name = "ghost"
backend = "systemd"
unit = "ghost.service"
manager = "user"
bus = "BUS"
binary = "demo-svc"
"#
    .replace("BUS", &m.bus());
    let config = host.config(&others, &probes(world));
    let (exec, mut outbox) = host.start(&config);

    // First install: the unit starts on 1.0.0 and is up only once it notified.
    exec.handle_order(order(
        1,
        world.release("1.0.0", &notify_healthy("1.0.0")),
        300,
        10_000,
    ));
    let (r, seen) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}\n{}", m.log());
    assert_eq!(
        (r.running_version.as_str(), r.health()),
        ("1.0.0", Health::Healthy)
    );
    assert_eq!(
        seen.steps,
        [
            Step::Accepted,
            Step::Fetching,
            Step::Staged,
            Step::Swapping,
            Step::Starting,
            Step::Verifying
        ]
    );
    let v1_dir = world.current().expect("current");
    assert_eq!(
        host.running_release("demo.service").as_deref(),
        Some(v1_dir.as_str())
    );
    assert_eq!(m.show("demo.service", "ActiveState"), "active");

    // An update: the link is swapped and the unit restarted on 2.0.0.
    exec.handle_order(order(
        2,
        world.release("2.0.0", &notify_healthy("2.0.0")),
        300,
        10_000,
    ));
    let (r, _) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}\n{}", m.log());
    let v2_dir = world.current().expect("current");
    assert_ne!(v2_dir, v1_dir);
    assert_eq!(
        host.running_release("demo.service").as_deref(),
        Some(v2_dir.as_str())
    );

    // A release that crashes at start: systemd restarts it (Restart=on-failure); the agent
    // sees the crash loop at once, swaps back and restarts 2.0.0.
    let t0 = Instant::now();
    exec.handle_order(order(
        3,
        world.release("3.0.0", &notify_crashing("3.0.0")),
        300,
        20_000,
    ));
    let (r, seen) = result_for(&mut outbox, 3).await;
    assert_eq!(r.outcome(), Outcome::RolledBack, "{r:?}\n{}", m.log());
    assert!(
        r.reason
            .starts_with("3.0.0 failed: unit demo.service crashed and systemd is restarting it")
            || r.reason
                .starts_with("3.0.0 failed: unit demo.service failed")
            || r.reason.contains("restarted by systemd"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("status 3"), "{}", r.reason);
    assert!(
        r.reason.ends_with("; back on 2.0.0, healthy"),
        "{}",
        r.reason
    );
    assert!(seen.steps.contains(&Step::RollingBack));
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(world.current().as_deref(), Some(v2_dir.as_str()));
    assert_eq!(
        host.running_release("demo.service").as_deref(),
        Some(v2_dir.as_str())
    );
    assert_eq!(m.show("demo.service", "ActiveState"), "active");

    // A release that is ready, then dies during verification: caught by the unit's state
    // (auto-restart / NRestarts), rolled back.
    exec.handle_order(order(
        4,
        world.release("4.0.0", &notify_dies_later("4.0.0")),
        3000,
        20_000,
    ));
    let (r, _) = result_for(&mut outbox, 4).await;
    assert_eq!(r.outcome(), Outcome::RolledBack, "{r:?}\n{}", m.log());
    assert!(r.reason.contains("status 4"), "{}", r.reason);
    assert!(
        r.reason.ends_with("; back on 2.0.0, healthy"),
        "{}",
        r.reason
    );
    assert_eq!(
        host.running_release("demo.service").as_deref(),
        Some(v2_dir.as_str())
    );

    // Units the agent cannot drive are refused before anything is touched.
    let mut stray = order(
        5,
        world.release("1.0.0", &notify_healthy("1.0.0")),
        300,
        10_000,
    );
    stray.service = "stray".into();
    exec.handle_order(stray);
    let (r, _) = result_for(&mut outbox, 5).await;
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    assert!(
        r.reason
            .contains("unit stray.service does not run the release through")
            && r.reason.contains("/bin/sleep"),
        "{}",
        r.reason
    );
    let mut ghost = order(
        6,
        world.release("1.0.0", &notify_healthy("1.0.0")),
        300,
        10_000,
    );
    ghost.service = "ghost".into();
    exec.handle_order(ghost);
    let (r, _) = result_for(&mut outbox, 6).await;
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    assert!(
        r.reason.contains("unit ghost.service is not loaded"),
        "{}",
        r.reason
    );
    assert!(!world.state_dir().join("services/ghost/current").exists());

    // The unit outlives the agent: the systemd backend leaves it running at shutdown, and a
    // new agent adopts it without restarting it.
    let pid = m.show("demo.service", "MainPID");
    exec.shutdown().await;
    drop(outbox);
    assert_eq!(m.show("demo.service", "ActiveState"), "active");
    assert_eq!(m.show("demo.service", "MainPID"), pid);
    let (exec, mut outbox) = host.start(&config);
    let s = status(&mut outbox, Health::Healthy).await;
    assert_eq!(s.version, "2.0.0");
    assert_eq!(
        m.show("demo.service", "MainPID"),
        pid,
        "adopted, not restarted"
    );

    // After a commit, a crash of the unit is reported as the service going down.
    let _ = m.systemctl(&["kill", "--signal=KILL", "demo.service"]);
    let s = status(&mut outbox, Health::Stopped).await;
    assert!(s.detail.contains("unit demo.service"), "{s:?}");
    // systemd's Restart= brings it back; the agent sees it healthy again.
    let s = status(&mut outbox, Health::Healthy).await;
    assert_eq!(s.version, "2.0.0");
    exec.shutdown().await;
}

#[tokio::test]
async fn a_notify_unit_is_up_only_once_it_says_ready() {
    let host = Host::new();
    let world = &host.world;
    let m = &host.manager;
    m.install_unit("demo.service", &unit_text(&world.service_dir(), "demo-svc"));
    // The probe passes as soon as the process runs; only READY=1 may make it count.
    let started = world.service_dir().join("current").join("started");
    let probe = format!(
        "[[services.probes]]\nkind = \"exec\"\ncommand = [\"test\", \"-e\", \"{}\"]\ninterval = \"50ms\"\n",
        started.display()
    );
    let config = host.config("", &probe);
    let (exec, mut outbox) = host.start(&config);

    let slow = "#!/bin/sh\n# 1.0.0\ntouch started\nsleep 2\ntouch notified\nsystemd-notify --ready\nexec sleep 1000\n";
    let t0 = Instant::now();
    exec.handle_order(order(1, world.release("1.0.0", slow), 100, 20_000));
    wait_step(&mut outbox, 1, Step::Verifying).await;
    let notified = world.service_dir().join("current").join("notified");
    assert!(
        notified.exists(),
        "verification began before the unit said READY=1 ({:?} after the order)",
        t0.elapsed()
    );
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}\n{}", m.log());
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    let v1_dir = world.current().expect("current");

    // A release that never says READY=1 is not up, however healthy its probe looks, and is
    // rolled back when the healthy deadline passes (long enough for 1.0.0's slow start on
    // the way back).
    let never = "#!/bin/sh\n# 2.0.0\ntouch started\nexec sleep 1000\n";
    exec.handle_order(order(2, world.release("2.0.0", never), 100, 3500));
    let (r, _) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::RolledBack, "{r:?}\n{}", m.log());
    assert!(
        r.reason.starts_with(
            "2.0.0 failed: unit demo.service did not become active within 3s 500ms: activating (start)"
        ),
        "{}",
        r.reason
    );
    assert!(
        r.reason.ends_with("; back on 1.0.0, healthy"),
        "{}",
        r.reason
    );
    assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()));
    assert_eq!(
        host.running_release("demo.service").as_deref(),
        Some(v1_dir.as_str())
    );
    exec.shutdown().await;
}
