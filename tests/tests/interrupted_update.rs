//! Issue 12 item 2: an interrupted update is not a failed release. Agents die in the middle of
//! an update (fault injection aborts the agent right after it journals a step, as kill -9 or a
//! power cut would; one more is kill -9'd while verifying); with `max_failures = 0` and a good
//! release the rollout still finishes, every host on the new release, within the budget as an
//! independent observer sees it. A host whose agent dies on every attempt fails after the bound,
//! with that reason.

use std::time::Duration;

use rollgate_tests::pb::{HostState, Phase, Step};
use rollgate_tests::{wait_for, Expected, Fleet, FleetOpts, Mode};

const STEPS: [&str; 5] = ["fetching", "staged", "swapping", "starting", "verifying"];
const BUDGET: usize = 2;

#[test]
fn agents_killed_mid_update_do_not_halt_a_good_rollout() -> anyhow::Result<()> {
    let hosts = STEPS.len() + 2;
    let mut fleet = Fleet::start(FleetOpts {
        agents: hosts,
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
    // host-1..5 die at one step each; host-7 is kill -9'd while verifying.
    for (i, step) in STEPS.iter().enumerate() {
        let host = format!("host-{}", i + 1);
        let agent = &mut fleet.agent(&host).proc;
        agent.restart_with_env(&[("ROLLGATE_TEST_CRASH_AT", step)])?;
    }
    fleet.wait_connected(hosts)?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        &format!(
            "max_unavailable = {BUDGET}\nmax_failures = 0\nmin_healthy_time = \"1s\"\n\
             healthy_deadline = \"20s\""
        ),
    )?;
    let id = fleet.start_rollout(&spec)?;

    // Each armed agent dies at its step; start it again, unarmed, as systemd would. host-7's
    // agent is killed once, while it verifies 2.0.0.
    let mut restarted: Vec<String> = Vec::new();
    let mut killed = false;
    let s = wait_for("the rollout to settle", Duration::from_secs(180), || {
        for (i, step) in STEPS.iter().enumerate() {
            let host = format!("host-{}", i + 1);
            if !restarted.contains(&host) && fleet.agent(&host).proc.exited() {
                println!("{host}'s agent died at {step}; starting it again");
                fleet.agent(&host).proc.restart()?;
                restarted.push(host);
            }
        }
        let s = fleet.status(&id)?;
        let verifying = |h: &&rollgate_tests::pb::HostProgress| {
            h.host_id == "host-7" && h.state() == HostState::Updating && h.step() == Step::Verifying
        };
        if !killed && s.hosts.iter().any(|h| verifying(&h)) {
            fleet.agent("host-7").proc.kill9();
            println!("kill -9 of host-7's agent while it verifies 2.0.0; starting it again");
            fleet.agent("host-7").proc.restart()?;
            killed = true;
        }
        if s.is_settled() {
            return Ok(Some(s));
        }
        anyhow::bail!("{}", rollgate_tests::brief(&s))
    })?;
    let seen = observer.finish();
    seen.print(BUDGET, None);
    for h in &s.hosts {
        println!(
            "{}: {} token {} — {}",
            h.host_id,
            h.state().word(),
            h.token,
            h.reason
        );
    }
    assert_eq!(
        s.phase(),
        Phase::Succeeded,
        "{}: {}",
        s.phase().word(),
        s.reason
    );
    assert_eq!(
        restarted.len(),
        STEPS.len(),
        "every armed agent died: {restarted:?}"
    );
    assert!(killed, "host-7's agent was killed while verifying");
    for h in &s.hosts {
        assert_eq!(h.state(), HostState::Done, "{h:?}");
        assert_eq!(fleet.serving(&h.host_id).as_deref(), Some("2.0.0"), "{h:?}");
    }
    assert!(
        seen.max_unavailable <= BUDGET,
        "observer saw {} hosts down at once (budget {BUDGET}): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    for (host, versions) in &seen.versions {
        assert!(
            versions.iter().all(|v| v == "1.0.0" || v == "2.0.0"),
            "{host} served something other than the old or the new release: {versions:?}"
        );
    }
    Ok(())
}

#[test]
fn a_host_interrupted_past_the_bound_fails_with_that_reason() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
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
    let crash = [("ROLLGATE_TEST_CRASH_AT", "verifying")];
    fleet.agent("host-1").proc.restart_with_env(&crash)?;
    fleet.wait_connected(2)?;

    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec_for_hosts(
        &v2,
        "max_unavailable = 1\nmax_failures = 0\nmin_healthy_time = \"200ms\"",
        &["host-1"],
    )?;
    let id = fleet.start_rollout(&spec)?;
    // host-1's agent dies on every attempt; it is started again, still armed, each time.
    let mut crashes = 0;
    let s = wait_for("the rollout to settle", Duration::from_secs(120), || {
        if fleet.agent("host-1").proc.exited() {
            crashes += 1;
            println!("host-1's agent died while verifying (crash {crashes}); starting it again");
            fleet.agent("host-1").proc.restart_with_env(&crash)?;
        }
        let s = fleet.status(&id)?;
        if s.is_settled() {
            return Ok(Some(s));
        }
        anyhow::bail!("{}", rollgate_tests::brief(&s))
    })?;
    let h = &s.hosts[0];
    println!(
        "{}: {}: {} — {}",
        s.phase().word(),
        h.host_id,
        h.state().word(),
        s.reason
    );
    assert_eq!(s.phase(), Phase::Failed, "{s:?}");
    assert_eq!(h.state(), HostState::Failed, "{h:?}");
    assert!(
        h.reason
            .contains("interrupted 3 times (agent restarts or stale tokens)"),
        "{:?}",
        h.reason
    );
    assert!(s.reason.contains("interrupted 3 times"), "{:?}", s.reason);
    assert_eq!(crashes, 3, "one crash per grant, three grants");
    // Each undo put 1.0.0 back.
    fleet.wait_all_serving("1.0.0")?;
    Ok(())
}
