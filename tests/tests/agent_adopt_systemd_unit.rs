//! Issue 12 item 1, point 2, under systemd: the agent runs as a unit with the `KillMode=` of
//! `deploy/rollgate-agent.service` (on a real `systemd --user` manager), and a process-backend
//! service it started, which lives in the agent unit's cgroup, survives `systemctl stop`,
//! `systemctl restart` and a kill -9 of the agent followed by `Restart=always`: same pid, no
//! downtime seen by the observer, adopted by each new agent.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollgate_tests::managers::UserManager;
use rollgate_tests::pb::{Health, Phase};
use rollgate_tests::{bin, wait_for, Fleet, FleetOpts, Mode};

/// The `KillMode=` line the shipped unit sets (the default, control-group, if none).
fn shipped_kill_mode() -> anyhow::Result<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rollgate-agent.service");
    let text = std::fs::read_to_string(&unit)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("KillMode="))
        .unwrap_or("control-group")
        .trim()
        .to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn service_pid(fleet: &Fleet) -> anyhow::Result<i32> {
    let path = fleet.agents[0].state_dir.join("services/web/pid");
    Ok(std::fs::read_to_string(path)?.trim().parse()?)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits until an agent started at `since_ms` is connected and reports `web` healthy.
fn wait_reported_healthy(fleet: &Fleet, since_ms: i64) -> anyhow::Result<()> {
    wait_for(
        "the agent unit to report web healthy",
        Duration::from_secs(30),
        || {
            let hosts = fleet.hosts()?;
            let web = hosts
                .iter()
                .find(|h| h.connected && h.last_seen_ms >= since_ms)
                .and_then(|h| h.services.iter().find(|s| s.service == "web"));
            match web {
                Some(s) if s.health() == Health::Healthy => Ok(Some(())),
                other => anyhow::bail!("{other:?}"),
            }
        },
    )
}

fn systemctl_ok(manager: &UserManager, args: &[&str]) -> anyhow::Result<()> {
    let out = manager.systemctl(args);
    anyhow::ensure!(
        out.status.success(),
        "systemctl --user {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_process_service_survives_stop_restart_and_crash_of_the_agent_unit() -> anyhow::Result<()> {
    let base = tempfile::Builder::new()
        .prefix("rollgate-agent-unit-")
        .tempdir()?;
    let manager = UserManager::start(&base.path().join("systemd"));
    let mut fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        start_delay_ms: 300,
        ..FleetOpts::default()
    })?;
    // The harness's agent hands over to one run by systemd, as on a real host.
    fleet.agents[0].proc.kill9();
    let kill_mode = shipped_kill_mode()?;
    let adir = fleet.dir.join("host-1");
    manager.install_unit(
        "rollgate-agent.service",
        &format!(
            "[Service]\nType=notify\nExecStart={agent} --config {cfg}\nRestart=always\n\
             RestartSec=100ms\nKillMode={kill_mode}\nEnvironment=RUST_LOG=info\n\
             StandardOutput=append:{log}\nStandardError=append:{log}\n",
            agent = bin("rollgate-agent").display(),
            cfg = adir.join("agent.toml").display(),
            log = adir.join("agent-unit.log").display(),
        ),
    );
    let since = now_ms();
    systemctl_ok(&manager, &["start", "rollgate-agent.service"])?;
    fleet.wait_coordinator()?;
    // Installed by the unit's agent, so the service is in the unit's cgroup.
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let id = fleet
        .start_rollout(&fleet.spec(&v1, "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    wait_reported_healthy(&fleet, since)?;
    let pid = service_pid(&fleet)?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    println!(
        "KillMode={kill_mode}; service pid {pid} in cgroup {}",
        cgroup.trim()
    );
    assert!(
        cgroup.contains("rollgate-agent.service"),
        "the service runs in the agent unit's cgroup: {cgroup}"
    );

    let observer = fleet.observe();
    let mut pids = Vec::new();
    for how in ["stop+start", "restart", "kill -9"] {
        let since = now_ms();
        match how {
            "stop+start" => {
                systemctl_ok(&manager, &["stop", "rollgate-agent.service"])?;
                pids.push((format!("{how}: while the agent is stopped"), alive(pid)));
                systemctl_ok(&manager, &["start", "rollgate-agent.service"])?;
            }
            "restart" => systemctl_ok(&manager, &["restart", "rollgate-agent.service"])?,
            _ => systemctl_ok(
                &manager,
                &[
                    "kill",
                    "--signal=KILL",
                    "--kill-whom=main",
                    "rollgate-agent.service",
                ],
            )?,
        }
        wait_reported_healthy(&fleet, since)?;
        pids.push((format!("{how}: after"), service_pid(&fleet)? == pid));
    }
    let seen = observer.finish();
    seen.print(0, None);
    println!("service {pid} kept (check, kept): {pids:?}");
    assert!(pids.iter().all(|(_, kept)| *kept), "{pids:?}");
    assert_eq!(seen.max_unavailable, 0, "{seen:?}");
    let log = std::fs::read_to_string(adir.join("agent-unit.log"))?;
    assert_eq!(
        log.matches(&format!("adopted process {pid} of web"))
            .count(),
        3,
        "each new agent adopted the service"
    );
    systemctl_ok(&manager, &["stop", "rollgate-agent.service"])?;
    drop(fleet);
    drop(manager);
    Ok(())
}
