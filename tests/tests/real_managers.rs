//! A rollout through the coordinator upgrades a systemd service and a container service on
//! real managers (a `systemd --user` manager and a `dockerd` that the test starts itself; see
//! `rollgate_tests::managers`), and a failing release of each is rolled back on the host: the
//! managers run the previous release again. Every check of what runs asks the manager itself
//! (`systemctl --user show`, `docker ps`) and the service itself, not the coordinator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollgate_tests::managers::{DockerEngine, UserManager};
use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{bin, brief, service_version, wait_for, Fleet, FleetOpts};

/// The port the container publishes inside the engine's network namespace.
const CT_PORT: u16 = 18080;
/// How long one rollout may take.
const ROLLOUT_WAIT: Duration = Duration::from_secs(30);
/// The strategy of every rollout: one host, short verification, and a bad release fails fast.
const STRATEGY: &str =
    "max_unavailable = 1\nmin_healthy_time = \"300ms\"\nhealthy_deadline = \"4s\"";

/// The agent's two services; `BUS`, `SOCK` and `NETNS` are filled in by the test, `{state}`
/// and `{port}` by the harness.
const SERVICES: &str = r#"[[services]]
name = "websd"
backend = "systemd"
unit = "websd.service"
manager = "user"
bus = "BUS"
binary = "websd"
format = "binary"
[[services.probes]]
kind = "systemd"
interval = "100ms"
timeout = "2s"
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
ports = ["18080:8080"]
restart_policy = "no"
stop_timeout = "2s"
[[services.probes]]
kind = "exec"
command = ["nsenter", "--net=/run/netns/NETNS", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:18080/version"]
interval = "100ms"
timeout = "2s"
"#;

/// The unit the operator installs: it runs the release through `current`.
fn unit_text(state: &Path) -> String {
    let cur = state.join("services/websd/current");
    format!(
        "[Unit]\nDescription=rollgate e2e websd\nStartLimitIntervalSec=60s\nStartLimitBurst=5\n\
         [Service]\nType=simple\nExecStart={cur}/websd\nWorkingDirectory={cur}\n\
         Restart=on-failure\nRestartSec=200ms\nTimeoutStopSec=5s\n",
        cur = cur.display()
    )
}

/// A release of `websd`: a wrapper script around `rollgate-testsvc` (`healthy`, or
/// `unhealthy`: it serves but its /health answers 500).
fn websd_release(dir: &Path, version: &str, mode: &str, port: u16) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("websd-{version}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec {svc} --version {version} --mode {mode} --bind 127.0.0.1 --port {port}\n",
            svc = bin("rollgate-testsvc").display()
        ),
    )?;
    Ok(path)
}

/// A release of `webct`: an image archive whose `run.sh` serves `/version` on 8080, or (bad)
/// exits at once.
fn webct_release(engine: &DockerEngine, dir: &Path, version: &str, bad: bool) -> PathBuf {
    let run_sh = if bad {
        "echo 'crashing on purpose' >&2\nexit 3\n".to_string()
    } else {
        format!(
            "/bin/busybox mkdir -p /www\necho {version} > /www/version\n\
             exec /bin/busybox httpd -f -p 8080 -h /www\n"
        )
    };
    let out = dir.join(format!("webct-{version}.image.tar"));
    engine.build_image_archive(&format!("webct:{version}"), &run_sh, &out);
    out
}

fn spec(dir: &Path, service: &str, version: &str, file: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("rollout-{service}-{version}.toml"));
    std::fs::write(
        &path,
        format!(
            "service = \"{service}\"\n[release]\nversion = \"{version}\"\nfile = \"{}\"\n[strategy]\n{STRATEGY}\n",
            file.display()
        ),
    )?;
    Ok(path)
}

/// Rolls `file` out as `service` `version` through the coordinator (the CLI) and returns the
/// settled status.
fn roll_out(
    fleet: &Fleet,
    service: &str,
    version: &str,
    file: &Path,
) -> anyhow::Result<rollgate_tests::pb::RolloutStatus> {
    let started = Instant::now();
    let id = fleet.start_rollout(&spec(&fleet.dir, service, version, file)?)?;
    let s = fleet.wait_settled(&id, ROLLOUT_WAIT)?;
    println!(
        "{service} {version}: {} in {:.1?}: {}",
        s.phase().word(),
        started.elapsed(),
        brief(&s)
    );
    fleet.wait_service_free(service)?;
    Ok(s)
}

/// What `websd.service` runs right now, as systemd says: its state and its main process's
/// command line.
fn websd_running(manager: &UserManager) -> (String, String) {
    let state = format!(
        "{}/{}",
        manager.show("websd.service", "ActiveState"),
        manager.show("websd.service", "SubState")
    );
    let pid = manager.show("websd.service", "MainPID");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    (state, cmdline)
}

/// Waits until systemd runs `version` of websd (active, main process started with
/// `--version <version>`) and the service answers healthy with it.
fn wait_websd(manager: &UserManager, port: u16, version: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("websd.service to run {version}"),
        Duration::from_secs(10),
        || {
            let (state, cmdline) = websd_running(manager);
            let served = service_version(port);
            if state == "active/running"
                && cmdline.contains(&format!("--version {version} "))
                && served.as_deref() == Some(version)
            {
                Ok(Some(()))
            } else {
                bail!("systemd: {state} {cmdline:?}; service says {served:?}")
            }
        },
    )
}

/// What the container answers on `/version`, asked from inside the engine's namespace.
fn webct_answer(engine: &DockerEngine) -> anyhow::Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", engine.netns()))
        .args(["/bin/busybox", "wget", "-q", "-O", "-"])
        .arg(format!("http://127.0.0.1:{CT_PORT}/version"))
        .output()
        .context("run nsenter")?;
    if !out.status.success() {
        bail!("wget: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until the engine runs exactly one webct container, of `version`, and it answers with
/// that version.
fn wait_webct(engine: &DockerEngine, version: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("the engine to run webct {version}"),
        Duration::from_secs(10),
        || {
            let containers = engine.containers("webct");
            let answer = webct_answer(engine);
            let ok = matches!(containers.as_slice(),
                [(name, state)] if name.starts_with(&format!("webct-{version}-")) && state == "running");
            if ok && answer.as_deref().ok() == Some(version) {
                Ok(Some(()))
            } else {
                bail!("docker ps: {containers:?}; /version: {answer:?}")
            }
        },
    )
}

fn assert_rolled_back(s: &rollgate_tests::pb::RolloutStatus, good: &str) {
    assert_eq!(s.phase(), Phase::Failed, "{s:?}");
    assert_eq!(s.hosts.len(), 1, "{s:?}");
    let h = &s.hosts[0];
    assert_eq!(h.state(), HostState::RolledBack, "{s:?}");
    assert_eq!(h.running_version, good, "{s:?}");
    assert!(!h.reason.is_empty(), "no reason given: {s:?}");
    println!("  {}: {} ({})", h.host_id, h.state().word(), h.reason);
}

#[test]
fn rollout_upgrades_and_rolls_back_systemd_and_container_services() -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Dropped last: the managers' dirs.
    let base = tempfile::Builder::new()
        .prefix("rollgate-managers-")
        .tempdir()?;
    let manager = UserManager::start(&base.path().join("systemd"));
    let engine = DockerEngine::start(&base.path().join("engine"));
    println!("managers up in {:.1?}", t0.elapsed());

    let services = SERVICES
        .replace("BUS", &manager.bus())
        .replace("SOCK", &engine.socket().display().to_string())
        .replace("NETNS", engine.netns());
    // Dropped first: the agent stops before the managers do.
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        agent_services: Some(services),
        ..FleetOpts::default()
    })?;
    let host = &fleet.agents[0];
    let port = host.service_port;
    manager.install_unit("websd.service", &unit_text(&host.state_dir));

    let rdir = fleet.dir.join("releases");
    std::fs::create_dir_all(&rdir)?;
    let sd = |v: &str, mode: &str| websd_release(&rdir, v, mode, port);
    let ct = |v: &str, bad: bool| webct_release(&engine, &rdir, v, bad);
    let (sd1, sd2, sd3) = (
        sd("1.0.0", "healthy")?,
        sd("2.0.0", "healthy")?,
        sd("3.0.0", "unhealthy")?,
    );
    let (ct1, ct2, ct3) = (ct("1.0.0", false), ct("2.0.0", false), ct("3.0.0", true));
    println!("releases built at {:.1?}", t0.elapsed());

    // First install of both.
    let s = roll_out(&fleet, "websd", "1.0.0", &sd1)?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    let s = roll_out(&fleet, "webct", "1.0.0", &ct1)?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    wait_websd(&manager, port, "1.0.0")?;
    wait_webct(&engine, "1.0.0")?;

    // A good upgrade of both: the managers run 2.0.0 and it answers.
    let s = roll_out(&fleet, "websd", "2.0.0", &sd2)?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(s.hosts[0].running_version, "2.0.0", "{s:?}");
    let s = roll_out(&fleet, "webct", "2.0.0", &ct2)?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(s.hosts[0].running_version, "2.0.0", "{s:?}");
    wait_websd(&manager, port, "2.0.0")?;
    wait_webct(&engine, "2.0.0")?;
    let (state, cmdline) = websd_running(&manager);
    println!("systemd runs websd: {state} {cmdline}");
    println!("docker runs webct: {:?}", engine.containers("webct"));

    // A bad 3.0.0 of each: the rollout fails, the host rolled back, the managers run 2.0.0.
    let s = roll_out(&fleet, "websd", "3.0.0", &sd3)?;
    assert_rolled_back(&s, "2.0.0");
    wait_websd(&manager, port, "2.0.0")?;
    let s = roll_out(&fleet, "webct", "3.0.0", &ct3)?;
    assert_rolled_back(&s, "2.0.0");
    wait_webct(&engine, "2.0.0")?;
    // websd is untouched by webct's rollout and vice versa.
    wait_websd(&manager, port, "2.0.0")?;
    let (state, cmdline) = websd_running(&manager);
    println!("after the failed releases, systemd runs websd: {state} {cmdline}");
    println!("docker runs webct: {:?}", engine.containers("webct"));
    println!("total {:.1?}", t0.elapsed());
    drop(fleet);
    drop(engine);
    drop(manager);
    Ok(())
}
