//! Issue 12 item 1: an agent that dies (kill -9) or is stopped (SIGTERM) while idle leaves its
//! process-backend service running, and the restarted agent adopts it as it is: the observer
//! sees no downtime, the pid is the same, the agent reports it healthy, and a later rollout
//! replaces it normally. A process the records do not prove to be the service is not adopted;
//! `stop_with_agent = true` keeps the old "the service dies with the agent".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollgate_tests::pb::{Health, Phase};
use rollgate_tests::{service_version_at, wait_for, Fleet, FleetOpts, Mode};

/// How often the downtime clock polls the victim's service.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Polls one service and keeps its longest outage (first failed poll to next good one).
struct DowntimeClock {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<Duration>>,
    thread: std::thread::JoinHandle<()>,
}

impl DowntimeClock {
    fn start(addr: SocketAddr) -> DowntimeClock {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new(Duration::ZERO));
        let (s, w) = (stop.clone(), worst.clone());
        let thread = std::thread::spawn(move || {
            let mut down_since: Option<Instant> = None;
            while !s.load(Ordering::Relaxed) {
                let up = service_version_at(addr).is_some();
                match (up, down_since) {
                    (false, None) => down_since = Some(Instant::now()),
                    (true, Some(t)) => {
                        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                        *w = (*w).max(t.elapsed());
                        down_since = None;
                    }
                    _ => {}
                }
                std::thread::sleep(POLL_EVERY);
            }
            if let Some(t) = down_since {
                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                *w = (*w).max(t.elapsed());
            }
        });
        DowntimeClock {
            stop,
            worst,
            thread,
        }
    }

    /// Stops polling; the longest outage seen.
    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let w = *self.worst.lock().unwrap_or_else(|e| e.into_inner());
        w
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The pid in `host`'s pidfile for service `web`.
fn service_pid(fleet: &Fleet, host: &str) -> anyhow::Result<i32> {
    let path = fleet.host(host).state_dir.join("services/web/pid");
    Ok(std::fs::read_to_string(&path)?.trim().parse()?)
}

/// Waits until `host`'s agent, started at `since_ms`, is connected and has reported `web`
/// healthy to the coordinator (the host was last seen, through a status, after it started).
fn wait_reported_healthy(fleet: &Fleet, host: &str, since_ms: i64) -> anyhow::Result<()> {
    wait_for(
        &format!("{host}'s new agent to report web healthy"),
        Duration::from_secs(30),
        || {
            let hosts = fleet.hosts()?;
            let h = hosts
                .iter()
                .find(|h| h.host_id == host)
                .filter(|h| h.connected && h.last_seen_ms >= since_ms);
            let web = h.and_then(|h| h.services.iter().find(|s| s.service == "web"));
            match web {
                Some(s) if s.health() == Health::Healthy => Ok(Some(())),
                other => anyhow::bail!("{other:?}"),
            }
        },
    )
}

/// Whether `pid` is alive (and not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn agent_kill9_and_sigterm_while_idle_leave_the_service_running() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        // A restart of the service would be an outage of at least this long: plain to see.
        start_delay_ms: 300,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    let victim = "host-1";
    let pid = service_pid(&fleet, victim)?;
    let observer = fleet.observe();
    let clock = DowntimeClock::start(fleet.host(victim).service_addr);

    // kill -9, then the supervisor (here: the test) starts the agent again.
    fleet.agent(victim).proc.kill9();
    println!("killed {victim}'s agent (kill -9); its service {pid} keeps running");
    let since = now_ms();
    fleet.agent(victim).proc.restart()?;
    wait_reported_healthy(&fleet, victim, since)?;
    let after_kill9 = service_pid(&fleet, victim)?;

    // SIGTERM (systemctl stop, an agent upgrade): the service is left running too.
    fleet.agent(victim).proc.stop(Duration::from_secs(10));
    let log = std::fs::read_to_string(&fleet.host(victim).proc.log)?;
    let left_running = log.contains("leaving web running for the next agent to adopt")
        && log.contains("rollgate-agent stopped");
    let alive_while_stopped = alive(after_kill9);
    let since = now_ms();
    fleet.agent(victim).proc.restart()?;
    wait_reported_healthy(&fleet, victim, since)?;
    let after_sigterm = service_pid(&fleet, victim)?;

    let worst = clock.finish();
    let seen = observer.finish();
    seen.print(0, None);
    println!(
        "{victim}: longest outage {} ms across kill -9 and SIGTERM of its agent; service pid \
         {pid}, then {after_kill9} after kill -9, {after_sigterm} after SIGTERM",
        worst.as_millis()
    );
    assert_eq!(seen.max_unavailable, 0, "no downtime: {seen:?}");
    assert_eq!(
        worst,
        Duration::ZERO,
        "no failed poll of {victim}'s service"
    );
    assert_eq!(after_kill9, pid, "adopted after kill -9, not restarted");
    assert!(
        left_running && alive_while_stopped,
        "the agent shut down cleanly on SIGTERM, leaving the service running:\n{log}"
    );
    assert_eq!(after_sigterm, pid, "adopted after SIGTERM, not restarted");
    let log = std::fs::read_to_string(&fleet.host(victim).proc.log)?;
    assert_eq!(
        log.matches(&format!("adopted process {pid} of web"))
            .count(),
        2,
        "both restarts adopted the service"
    );
    assert!(alive(pid));

    // The adopted process is replaced normally by the next rollout.
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet
        .start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    fleet.wait_all_serving("2.0.0")?;
    let new_pid = service_pid(&fleet, victim)?;
    assert_ne!(new_pid, pid);
    assert!(
        !alive(pid),
        "the adopted 1.0.0 process was stopped for the swap"
    );
    Ok(())
}

#[test]
fn a_process_not_proven_to_be_the_service_is_not_adopted() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 1,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
    let host = "host-1";
    let pid = service_pid(&fleet, host)?;
    fleet.agent(host).proc.kill9();
    // The record no longer matches the process (as after a pid reuse): it is not adopted.
    let record = fleet
        .host(host)
        .state_dir
        .join("services/web/instance.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
    v["start_time"] = serde_json::json!(v["start_time"].as_u64().unwrap_or(0) + 1);
    std::fs::write(&record, serde_json::to_vec(&v)?)?;
    let since = now_ms();
    fleet.agent(host).proc.restart()?;
    wait_reported_healthy(&fleet, host, since)?;
    let new_pid = service_pid(&fleet, host)?;
    assert_ne!(new_pid, pid, "started fresh");
    assert!(
        !alive(pid),
        "the unproven leftover was stopped (it ran from our releases)"
    );
    let log = std::fs::read_to_string(&fleet.host(host).proc.log)?;
    let line = log
        .lines()
        .find(|l| l.contains(&format!("did not adopt process {pid} of web")))
        .unwrap_or_else(|| panic!("no reason logged:\n{log}"));
    println!("{line}");
    assert!(line.contains("not the recorded"), "{line}");
    fleet.wait_all_serving("1.0.0")?;
    Ok(())
}

#[test]
fn stop_with_agent_stops_the_service_on_sigterm() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 1,
        agent_services: Some(
            r#"[[services]]
name = "web"
backend = "process"
binary = "web"
args = ["--port", "{port}"]
stop_timeout = "2s"
restart_delay = "200ms"
stop_with_agent = true
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = "100ms"
timeout = "500ms"
"#
            .into(),
        ),
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
    let host = "host-1";
    let pid = service_pid(&fleet, host)?;
    fleet.agent(host).proc.stop(Duration::from_secs(10));
    assert!(
        !alive(pid),
        "stop_with_agent = true: the service died with the agent"
    );
    assert_eq!(fleet.serving(host), None);
    let since = now_ms();
    fleet.agent(host).proc.restart()?;
    wait_reported_healthy(&fleet, host, since)?;
    assert_ne!(service_pid(&fleet, host)?, pid);
    Ok(())
}
