//! Issue 12 item 1, for the backends whose services live in a manager: a systemd unit (on a
//! real `systemd --user` manager) and a container (on a real `dockerd`) keep running when their
//! agent is killed (kill -9) or stopped (SIGTERM), and the restarted agent adopts them as they
//! are: the unit's main PID and the container's id and start time are unchanged, and the agent
//! reports both healthy.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollgate_tests::managers::{DockerEngine, UserManager};
use rollgate_tests::pb::{Health, Phase};
use rollgate_tests::{bin, service_version, wait_for, Fleet, FleetOpts};

/// The agent's two services; `BUS` and `SOCK` are filled in by the test, `{state}` and
/// `{port}` by the harness.
const SERVICES: &str = r#"[[services]]
name = "websd"
backend = "systemd"
unit = "websd.service"
manager = "user"
bus = "BUS"
binary = "websd"
format = "binary"
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = "100ms"
timeout = "500ms"

[[services]]
name = "webct"
backend = "container"
socket = "SOCK"
container_name = "webct"
binary = "image.tar"
format = "binary"
restart_policy = "no"
stop_timeout = "2s"
[[services.probes]]
kind = "exec"
command = ["/bin/true"]
interval = "100ms"
timeout = "2s"
"#;

fn unit_text(state: &Path) -> String {
    let cur = state.join("services/websd/current");
    format!(
        "[Unit]\nDescription=rollgate e2e websd\n[Service]\nType=simple\n\
         ExecStart={cur}/websd\nWorkingDirectory={cur}\nRestart=on-failure\n",
        cur = cur.display()
    )
}

fn rollout(fleet: &Fleet, service: &str, version: &str, file: &Path) -> anyhow::Result<()> {
    let spec = fleet.dir.join(format!("rollout-{service}-{version}.toml"));
    std::fs::write(
        &spec,
        format!(
            "service = \"{service}\"\n[release]\nversion = \"{version}\"\nfile = \"{}\"\n\
             [strategy]\nmax_unavailable = 1\nmin_healthy_time = \"300ms\"\n",
            file.display()
        ),
    )?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    anyhow::ensure!(s.phase() == Phase::Succeeded, "{service} {version}: {s:?}");
    fleet.wait_service_free(service)?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Waits until the agent started at `since_ms` is connected and reports both services healthy.
fn wait_both_healthy(fleet: &Fleet, since_ms: i64) -> anyhow::Result<()> {
    wait_for(
        "the new agent to report websd and webct healthy",
        Duration::from_secs(30),
        || {
            let hosts = fleet.hosts()?;
            let h = hosts
                .iter()
                .find(|h| h.connected && h.last_seen_ms >= since_ms)
                .ok_or_else(|| anyhow::anyhow!("not connected since the restart: {hosts:?}"))?;
            let healthy = |name: &str| {
                h.services
                    .iter()
                    .any(|s| s.service == name && s.health() == Health::Healthy)
            };
            if healthy("websd") && healthy("webct") {
                Ok(Some(()))
            } else {
                anyhow::bail!("{:?}", h.services)
            }
        },
    )
}

#[test]
fn systemd_and_container_services_are_left_alone_by_agent_restarts() -> anyhow::Result<()> {
    let base = tempfile::Builder::new()
        .prefix("rollgate-adopt-managers-")
        .tempdir()?;
    let manager = UserManager::start(&base.path().join("systemd"));
    let engine = DockerEngine::start(&base.path().join("engine"));
    let services = SERVICES
        .replace("BUS", &manager.bus())
        .replace("SOCK", &engine.socket().display().to_string());
    let mut fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        agent_services: Some(services),
        ..FleetOpts::default()
    })?;
    let port = fleet.agents[0].service_port;
    manager.install_unit("websd.service", &unit_text(&fleet.agents[0].state_dir));
    let rdir: PathBuf = fleet.dir.join("releases");
    std::fs::create_dir_all(&rdir)?;
    let sd = rdir.join("websd-1.0.0");
    std::fs::write(
        &sd,
        format!(
            "#!/bin/sh\nexec {} --version 1.0.0 --mode healthy --bind 127.0.0.1 --port {port}\n",
            bin("rollgate-testsvc").display()
        ),
    )?;
    let ct = rdir.join("webct-1.0.0.image.tar");
    engine.build_image_archive("webct:1.0.0", "exec /bin/busybox sleep 100000\n", &ct);
    rollout(&fleet, "websd", "1.0.0", &sd)?;
    rollout(&fleet, "webct", "1.0.0", &ct)?;

    let main_pid = || manager.show("websd.service", "MainPID");
    let containers = || engine.containers("webct");
    let container_id = || {
        let [(name, _)] = containers().try_into().expect("one webct container");
        engine.docker(
            &["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &name],
            None,
        )
    };
    let (pid, id) = (main_pid(), container_id());
    println!(
        "websd.service main PID {pid}; webct container {}",
        id.trim()
    );

    for how in ["kill -9", "SIGTERM"] {
        let host = fleet.agent("host-1");
        match how {
            "kill -9" => host.proc.kill9(),
            _ => host.proc.stop(Duration::from_secs(10)),
        }
        assert_eq!(main_pid(), pid, "{how} of the agent left the unit alone");
        assert_eq!(
            container_id(),
            id,
            "{how} of the agent left the container alone"
        );
        let since = now_ms();
        fleet.agent("host-1").proc.restart()?;
        wait_both_healthy(&fleet, since)?;
        assert_eq!(main_pid(), pid, "adopted after {how}: same main PID");
        assert_eq!(container_id(), id, "adopted after {how}: same container");
        assert_eq!(service_version(port).as_deref(), Some("1.0.0"));
        println!(
            "after {how} of the agent: websd main PID {pid}, webct {}",
            id.trim()
        );
    }
    drop(fleet);
    drop(engine);
    drop(manager);
    Ok(())
}
