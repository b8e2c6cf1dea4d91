//! Issue 10, item 13 (agent side): the agent's `insecure_plaintext` only towards a coordinator
//! on this machine, and never switched on by the environment.
//!
//! Real `rollgate-agent` processes, each refusal checked for its reason: plaintext towards a
//! coordinator on another address (10.0.0.1, and `localhost.example.com`, which only looks
//! local), and an agent without `[tls]` whose environment carries every name an "insecure"
//! switch could plausibly have. A loopback coordinator URL with plaintext still starts.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rollgate_tests::{bin, free_port, wait_for, Proc};

/// How long an agent that must refuse its config may take to exit.
const REFUSE_WITHIN: Duration = Duration::from_secs(10);
/// How long an accepted agent must keep running to count as started.
const STARTED_FOR: Duration = Duration::from_secs(3);

fn agent_config(dir: &Path, coordinator: &str, tls: &str) -> String {
    format!(
        "host_id = \"h1\"\ncoordinator = \"{coordinator}\"\nstate_dir = \"{}\"\n{tls}",
        dir.join("state").display()
    )
}

/// Runs an agent with `config` and `env`; returns whether it exited (and failed) within
/// `within`, and its log.
fn run_agent(
    dir: &Path,
    name: &str,
    config: &str,
    env: &[(&str, &str)],
    within: Duration,
) -> (bool, String) {
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, config).expect("config");
    let log = dir.join(format!("{name}.log"));
    let cmd = [
        bin("rollgate-agent").display().to_string(),
        "--config".into(),
        path.display().to_string(),
    ];
    let mut agent = Proc::spawn_with_env(name, &cmd, &log, env).expect("spawn");
    let exited = wait_for(&format!("{name} to exit"), within, || {
        Ok(agent.exited_on_its_own())
    });
    let text = fs::read_to_string(&log).unwrap_or_default();
    match exited {
        Ok(st) => {
            assert!(!st.success(), "{name}: exited successfully: {text}");
            (true, text)
        }
        Err(_) => (false, text),
    }
}

#[test]
fn agent_plaintext_only_to_loopback_and_never_from_the_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let plain = "[tls]\ninsecure_plaintext = true\n";

    for (i, url) in ["http://10.0.0.1:7443", "http://localhost.example.com:7443"]
        .into_iter()
        .enumerate()
    {
        let name = format!("remote-{i}");
        let (refused, text) = run_agent(
            dir,
            &name,
            &agent_config(dir, url, plain),
            &[],
            REFUSE_WITHIN,
        );
        println!("plaintext to {url}: {}", text.trim());
        assert!(refused, "the agent started with plaintext to {url}: {text}");
        assert!(
            text.contains(&format!(
                "insecure_plaintext = true is refused for the coordinator URL \"{url}\""
            )) && text.contains("set [tls] ca, cert and key"),
            "{text}"
        );
    }

    // No [tls] at all: no environment variable may stand in for the setting.
    let env = [
        ("ROLLGATE_INSECURE", "1"),
        ("ROLLGATE_INSECURE_PLAINTEXT", "true"),
        ("ROLLGATE_TLS_INSECURE_PLAINTEXT", "true"),
        ("ROLLGATE_AGENT_INSECURE", "true"),
    ];
    let url = format!("http://127.0.0.1:{}", free_port());
    let (refused, text) = run_agent(
        dir,
        "env",
        &agent_config(dir, &url, ""),
        &env,
        REFUSE_WITHIN,
    );
    println!("insecure from the environment only: {}", text.trim());
    assert!(refused, "the environment made the agent insecure: {text}");
    assert!(
        text.contains("no TLS settings") && text.contains("insecure_plaintext = true"),
        "{text}"
    );

    // The development setup that stays allowed: plaintext to a coordinator on this machine.
    let config = agent_config(dir, &url, plain);
    let (refused, text) = run_agent(dir, "loopback", &config, &[], STARTED_FOR);
    assert!(!refused, "plaintext to {url} was refused: {text}");
    assert!(
        text.contains("INSECURE: [tls] insecure_plaintext = true"),
        "{text}"
    );
}
