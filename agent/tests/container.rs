//! The container backend against a real Docker Engine that the test starts itself in its own
//! network namespace (see `rollgate_tests::managers`). Images are built with no registry
//! (`docker import` of a static busybox and a `run.sh`), saved as archives and served to the
//! executor as `file://` releases. Independent checks read the engine through the `docker`
//! CLI; the health probe fetches the published port from inside the engine's namespace.

mod common;

use common::docker_engine::{DockerEngine, Kind};
use common::*;
use rollgate_agent::Config;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{self, Health, Outcome};
use tokio::sync::watch;

/// Serves `/` (so `/run.sh`) over HTTP on 8080, published as 18081.
const SERVE: &str = "exec /bin/busybox httpd -f -p 8080 -h /\n";
/// Exits at once.
const CRASH: &str = "echo 'crashing on purpose' >&2\nexit 3\n";

struct Host {
    // Dropped first: the engine stops before its dir (inside the world) is deleted.
    engine: DockerEngine,
    world: World,
}

impl Host {
    fn new(kind: Kind) -> Host {
        let world = World::new();
        let engine = DockerEngine::start_kind(kind, &world.root.path().join("engine"));
        Host { engine, world }
    }

    fn config(&self) -> Config {
        let text = format!(
            r#"host_id = "web-1"
coordinator = "http://127.0.0.1:1"
state_dir = "{state}"
file_source_dirs = ["{artifacts}"]
[[services]]
name = "demo"
backend = "container"
socket = "{socket}"
container_name = "demo"
binary = "image.tar"
format = "binary"
env = {{ GREETING = "hi" }}
ports = ["18081:8080"]
restart_policy = "no"
stop_timeout = "2s"
[[services.probes]]
kind = "exec"
command = ["nsenter", "--net=/run/netns/{netns}", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:18081/run.sh"]
interval = "100ms"
timeout = "2s"
"#,
            state = self.world.state_dir().display(),
            artifacts = self.world.artifacts_dir().display(),
            socket = self.engine.socket().display(),
            netns = self.engine.netns(),
        );
        Config::parse(&text).expect("config")
    }

    fn start(&self, config: &Config) -> (Executor, Outbox) {
        let (_tx, rx) = watch::channel(None);
        let fetcher = Fetcher::new(rx, None).expect("fetcher");
        Executor::start(config, fetcher).expect("executor")
    }

    /// An image archive release whose `run.sh` is `run_sh`.
    fn release(&self, version: &str, run_sh: &str) -> pb::Release {
        let out = self.world.root.path().join(format!("{version}.image.tar"));
        self.engine
            .build_image_archive(&format!("demo:{version}"), run_sh, &out);
        let bytes = std::fs::read(&out).expect("image archive");
        self.world.release_bytes(version, &bytes)
    }

    fn running(&self, name: &str) -> (String, String) {
        (format!("demo-{name}"), "running".into())
    }
}

#[tokio::test]
async fn docker_update_commit_rollback_and_adopt() {
    update_commit_rollback_and_adopt(Host::new(Kind::Docker)).await;
}

/// The same code against Podman's Docker-compatible API.
#[tokio::test]
async fn podman_update_commit_rollback_and_adopt() {
    update_commit_rollback_and_adopt(Host::new(Kind::Podman)).await;
}

async fn update_commit_rollback_and_adopt(host: Host) {
    let (a, b, c) = (
        host.release("1.0.0", SERVE),
        host.release("2.0.0", SERVE),
        host.release("3.0.0", CRASH),
    );
    let config = host.config();
    let (exec, mut outbox) = host.start(&config);

    // First install: the archive is loaded, a container created and started.
    exec.handle_order(order(1, a, 300, 10_000));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(
        r.outcome(),
        Outcome::Succeeded,
        "{r:?}\n{}",
        host.engine.log()
    );
    let a_dir = host.world.current().expect("current");
    assert_eq!(host.engine.containers("demo"), [host.running(&a_dir)]);
    let env = host.engine.docker(
        &["inspect", "-f", "{{.Config.Env}}", &format!("demo-{a_dir}")],
        None,
    );
    assert!(env.contains("GREETING=hi"), "{env}");

    // An update: 1.0.0's container is stopped, 2.0.0's started and verified through the
    // published port; after the commit the old container is gone.
    exec.handle_order(order(2, b, 300, 10_000));
    let (r, _) = result_for(&mut outbox, 2).await;
    assert_eq!(
        r.outcome(),
        Outcome::Succeeded,
        "{r:?}\n{}",
        host.engine.log()
    );
    assert_eq!(
        (r.running_version.as_str(), r.health()),
        ("2.0.0", Health::Healthy)
    );
    let b_dir = host.world.current().expect("current");
    assert_eq!(host.engine.containers("demo"), [host.running(&b_dir)]);

    // A release whose container exits at start: rolled back, 2.0.0's container (the very
    // same one) runs again, and the failed one is removed.
    let b_id = host.engine.docker(
        &["inspect", "-f", "{{.Id}}", &format!("demo-{b_dir}")],
        None,
    );
    exec.handle_order(order(3, c, 300, 10_000));
    let (r, _) = result_for(&mut outbox, 3).await;
    assert_eq!(
        r.outcome(),
        Outcome::RolledBack,
        "{r:?}\n{}",
        host.engine.log()
    );
    assert!(r.reason.contains("exit code 3"), "{}", r.reason);
    assert_eq!(
        (r.running_version.as_str(), r.health()),
        ("2.0.0", Health::Healthy)
    );
    assert_eq!(host.world.current().as_deref(), Some(b_dir.as_str()));
    assert_eq!(host.engine.containers("demo"), [host.running(&b_dir)]);
    let b_id_after = host.engine.docker(
        &["inspect", "-f", "{{.Id}}", &format!("demo-{b_dir}")],
        None,
    );
    assert_eq!(b_id, b_id_after, "the old container itself runs again");
    // The images of removed containers are gone too (the release dirs keep the archives).
    let images = host
        .engine
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"], None);
    assert_eq!(images.trim(), "demo:2.0.0");

    exec.shutdown().await;
    // The container outlives the agent.
    assert_eq!(host.engine.containers("demo"), [host.running(&b_dir)]);

    // A new agent adopts the running container without restarting it.
    let started_at = |host: &Host| {
        host.engine.docker(
            &[
                "inspect",
                "-f",
                "{{.State.StartedAt}}",
                &format!("demo-{b_dir}"),
            ],
            None,
        )
    };
    let before = started_at(&host);
    let (exec, mut outbox) = host.start(&config);
    let s = status(&mut outbox, Health::Healthy).await;
    assert_eq!(s.version, "2.0.0");
    assert_eq!(started_at(&host), before, "adopting must not restart it");
    exec.shutdown().await;

    // One whose container was stopped meanwhile starts it again.
    host.engine
        .docker(&["stop", &format!("demo-{b_dir}")], None);
    let (exec, mut outbox) = host.start(&config);
    status(&mut outbox, Health::Healthy).await;
    assert_eq!(host.engine.containers("demo"), [host.running(&b_dir)]);
    assert_ne!(started_at(&host), before);
    exec.shutdown().await;
}
