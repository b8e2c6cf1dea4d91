//! Issue 14 item 4.6, a regression inside `watch_after_commit`: the canary passes its checks
//! and commits, then fails its probes while its agent still watches it. Its agent reports
//! "regressed after commit: ..." (typed: `ServiceStatus.regressed`), and the rollout counts
//! that host as failed: with `max_failures = 0` and `on_failure = "halt"` it halts, naming the
//! host and the regression, and no other host starts. The host is not rolled back (the halt
//! policy stops, it does not undo; `on_failure = "rollback"` would). The test makes the
//! regression real: each host's service has a second probe (exec) that fails once the test
//! drops a file in the host's state dir.

use std::time::{Duration, Instant};

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

/// The default `web` service plus an exec probe the test can fail, and a watch window.
const SERVICES: &str = r#"[[services]]
name = "web"
backend = "process"
binary = "web"
args = ["--port", "{port}"]
stop_timeout = "2s"
restart_delay = "200ms"
watch_after_commit = "60s"
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = "100ms"
timeout = "500ms"
[[services.probes]]
kind = "exec"
command = ["/bin/sh", "-c", "test ! -e {state}/regress"]
interval = "100ms"
timeout = "2s"
"#;

#[test]
fn a_canary_that_regresses_after_commit_halts_the_rollout() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        agent_services: Some(SERVICES.to_string()),
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\ncanary = 1\ncanary_gate = \"manual\"\nmin_healthy_time = \"500ms\"\n\
         healthy_deadline = \"10s\"\nprogress_deadline = \"30s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_status(&id, "the canary done", Duration::from_secs(60), |s| {
        s.hosts.iter().any(|h| h.state() == HostState::Done)
    })?;
    let canary = s
        .hosts
        .iter()
        .find(|h| h.state() == HostState::Done)
        .map(|h| h.host_id.clone())
        .expect("checked above");
    println!("canary {canary} done: {}", brief(&s));
    std::fs::write(fleet.host(&canary).state_dir.join("regress"), "")?;
    let regressed = Instant::now();
    println!("{canary} regresses now (its exec probe fails)");
    let s = fleet.wait_status(&id, "the rollout to halt", Duration::from_secs(20), |s| {
        s.phase() != Phase::Rolling
    })?;
    println!(
        "halted {:.2?} after the regression: {} — {}",
        regressed.elapsed(),
        brief(&s),
        s.reason
    );
    assert_eq!(s.phase(), Phase::Failed, "{}", brief(&s));
    for word in [
        canary.as_str(),
        "regressed after commit",
        "max_failures = 0",
    ] {
        assert!(
            s.reason.contains(word),
            "the reason does not say {word:?}: {:?}",
            s.reason
        );
    }
    assert_eq!(s.failed, 1, "{}", brief(&s));
    for h in s.hosts.iter().filter(|h| h.host_id != canary) {
        assert_eq!(
            h.state(),
            HostState::Pending,
            "{} started: {}",
            h.host_id,
            brief(&s)
        );
    }
    let status = fleet.cli_ok(&["rollout", "status", &id])?;
    println!("rollgate rollout status:\n{status}");
    assert!(
        status.contains("regressed after commit") && status.contains(&canary),
        "rollgate rollout status does not show why: {status}"
    );
    Ok(())
}
