//! S5, old or new, never half: an agent killed at every step of an update (fault injection
//! aborts it right after it journals the step, as kill -9 or a power cut would), and separately
//! a service killed during verification. Each host must end on exactly the old or the new
//! release, healthy, and the coordinator must learn the outcome.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rollgate_tests::pb::{HostState, Step};
use rollgate_tests::{wait_for, Expected, Fleet, FleetOpts, Mode};

const STEPS: [&str; 5] = ["fetching", "staged", "swapping", "starting", "verifying"];

#[test]
fn agent_killed_at_each_step_ends_on_old_or_new() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: STEPS.len() + 1,
        ..FleetOpts::default()
    })?;
    fleet.expect_exits(
        "agents",
        Expected::Crash,
        "ROLLGATE_TEST_CRASH_AT aborts the agent on purpose",
    );
    fleet.install(
        "1.0.0",
        "max_unavailable = 10\nmin_healthy_time = \"200ms\"",
    )?;
    // Arm host-1..5, one step each; host-6 keeps a normal agent and gets its service killed.
    for (i, step) in STEPS.iter().enumerate() {
        let host = format!("host-{}", i + 1);
        fleet
            .agent(&host)
            .proc
            .restart_with_env(&[("ROLLGATE_TEST_CRASH_AT", step)])?;
    }
    fleet.wait_connected(STEPS.len() + 1)?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 10\nmax_failures = 10\nmin_healthy_time = \"2s\"\nhealthy_deadline = \"20s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;

    // Each armed agent dies at its step; start it again, unarmed, as systemd would.
    let mut restarted = Vec::new();
    wait_for(
        "every armed agent to crash at its step",
        Duration::from_secs(30),
        || {
            for (i, step) in STEPS.iter().enumerate() {
                let host = format!("host-{}", i + 1);
                if !restarted.contains(&host) && fleet.agent(&host).proc.exited() {
                    println!("{host}'s agent died at {step}; starting it again");
                    fleet.agent(&host).proc.restart()?;
                    restarted.push(host);
                }
            }
            if restarted.len() == STEPS.len() {
                Ok(Some(()))
            } else {
                anyhow::bail!("crashed so far: {restarted:?}")
            }
        },
    )?;

    // host-6: kill -9 its service while it is being verified.
    fleet.wait_status(&id, "host-6 verifying", Duration::from_secs(30), |s| {
        s.hosts
            .iter()
            .any(|h| h.host_id == "host-6" && h.step() == Step::Verifying)
    })?;
    let pidfile = fleet.agent("host-6").state_dir.join("services/web/pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    println!("killed host-6's service (pid {pid}) while it was verifying 2.0.0");

    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    let seen = observer.finish();
    for h in &s.hosts {
        let serving = fleet.serving(&h.host_id);
        println!(
            "{}: {} serving {:?} — {}",
            h.host_id,
            h.state().word(),
            serving,
            h.reason
        );
        // The coordinator learned an outcome, and it matches what the host really serves.
        match h.state() {
            HostState::Done => assert_eq!(serving.as_deref(), Some("2.0.0"), "{h:?}"),
            HostState::RolledBack => assert_eq!(serving.as_deref(), Some("1.0.0"), "{h:?}"),
            other => panic!(
                "{} ended {}, not done or rolled back: {h:?}",
                h.host_id,
                other.word()
            ),
        }
    }
    for (host, versions) in &seen.versions {
        assert!(
            versions.iter().all(|v| v == "1.0.0" || v == "2.0.0"),
            "{host} served something other than the old or the new release: {versions:?}"
        );
    }
    Ok(())
}
