//! Issue 14, item 5: fault injection is a build feature, not something every agent carries.
//!
//! The crash points (`ROLLGATE_TEST_CRASH_AT`) exist only in an agent built with the
//! `fault-injection` feature (`tests/run.sh` builds the test binaries with it, and also keeps a
//! build without it in `no-fault-injection/`). An agent built without it that finds the
//! setting refuses to start and says why, so a crash test run against the wrong binaries fails
//! with the reason instead of passing without ever crashing. Real `rollgate-agent` processes;
//! the agent built with the feature starts with the setting (crash_every_step.rs and
//! interrupted_update.rs show that it does crash where asked).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_tests::{bin, bin_dir, wait_for, Proc};

/// How long an agent that must refuse to start may take to exit.
const REFUSE_WITHIN: Duration = Duration::from_secs(10);
/// How long the agent with fault injection must keep running to count as started.
const STARTED_FOR: Duration = Duration::from_secs(3);
/// Where tests/run.sh keeps the agent built without the feature, under the binaries' dir.
const NO_FAULT_DIR: &str = "no-fault-injection";
const CRASH_AT: (&str, &str) = ("ROLLGATE_TEST_CRASH_AT", "verifying");

/// The agent binary built without `fault-injection`; panics with the command that makes it.
fn agent_without_fault_injection() -> PathBuf {
    let p = bin_dir().join(NO_FAULT_DIR).join("rollgate-agent");
    assert!(
        p.exists(),
        "{} is missing: tests/run.sh builds it (`cargo build -p rollgate-agent --bin \
         rollgate-agent`, copied there before the build with --features \
         rollgate-agent/fault-injection)",
        p.display()
    );
    p
}

/// A config the agent accepts: plaintext to a coordinator on this machine (none listens).
fn write_config(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "host_id = \"h1\"\ncoordinator = \"http://127.0.0.1:9\"\nstate_dir = \"{}\"\n\
         [tls]\ninsecure_plaintext = true\n",
        dir.join(format!("{name}-state")).display()
    );
    fs::write(&path, text).expect("config");
    path
}

fn spawn(dir: &Path, name: &str, binary: &Path, env: &[(&str, &str)]) -> (Proc, PathBuf) {
    let config = write_config(dir, name);
    let log = dir.join(format!("{name}.log"));
    let cmd = [
        binary.display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    (
        Proc::spawn_with_env(name, &cmd, &log, env).expect("spawn"),
        log,
    )
}

#[test]
fn an_agent_without_fault_injection_refuses_the_crash_setting_and_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let plain = agent_without_fault_injection();

    let (mut agent, log) = spawn(dir, "plain", &plain, &[CRASH_AT]);
    let status = wait_for(
        "the agent without fault injection to exit",
        REFUSE_WITHIN,
        || Ok(agent.exited_on_its_own()),
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    println!(
        "agent without fault injection, {}={}:\n{}",
        CRASH_AT.0,
        CRASH_AT.1,
        text.trim()
    );
    let status = status.unwrap_or_else(|e| panic!("it kept running with the setting: {e}\n{text}"));
    assert!(!status.success(), "it exited successfully: {text}");
    for part in [
        "ROLLGATE_TEST_CRASH_AT is set (to \"verifying\"), but this rollgate-agent was built \
         without fault injection",
        "the agent does not start",
        "--features rollgate-agent/fault-injection",
    ] {
        assert!(
            text.contains(part),
            "the refusal does not say {part:?}: {text}"
        );
    }
    assert!(
        !dir.join("plain-state").join("agent-state.json").exists(),
        "the refused agent touched its state dir"
    );

    // The same build without the setting starts: the refusal is about the setting only.
    let (mut agent, log) = spawn(dir, "plain-unset", &plain, &[]);
    let exited = wait_for("the agent to exit", STARTED_FOR, || {
        Ok(agent.exited_on_its_own())
    });
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        exited.is_err(),
        "the agent without the setting did not start: {text}"
    );
    assert!(text.contains("rollgate-agent 0.1.0 started"), "{text}");
    agent.stop(Duration::from_secs(5));
}

#[test]
fn the_test_build_has_fault_injection_and_says_when_it_is_armed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (mut agent, log) = spawn(dir, "armed", &bin("rollgate-agent"), &[CRASH_AT]);
    let exited = wait_for("the agent to exit", STARTED_FOR, || {
        Ok(agent.exited_on_its_own())
    });
    let text = fs::read_to_string(&log).unwrap_or_default();
    println!(
        "test build, {}={}:\n{}",
        CRASH_AT.0,
        CRASH_AT.1,
        text.trim()
    );
    assert!(
        exited.is_err(),
        "the test build refused the crash setting (was it built without --features \
         rollgate-agent/fault-injection?): {text}"
    );
    assert!(
        text.contains("ROLLGATE_TEST_CRASH_AT=\"verifying\": fault injection armed"),
        "{text}"
    );
    agent.stop(Duration::from_secs(5));
}
