//! The `rollgate` CLI against a real coordinator and agents: output, exit codes and the errors
//! an operator sees.

use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{bin, Fleet, FleetOpts, Mode};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn unreachable_coordinator_is_a_clear_error() -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(bin("rollgate"))
            .args(args)
            .env_remove("ROLLGATE_CA")
            .env_remove("ROLLGATE_CERT")
            .env_remove("ROLLGATE_KEY")
            .output()?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        Ok(text(&out))
    };
    let t = run(&["--insecure", "--coordinator", "http://127.0.0.1:9", "hosts"])?;
    assert!(t.contains("cannot reach the coordinator"), "{t}");
    assert!(t.contains("ROLLGATE_COORDINATOR"), "{t}");
    // Without an operator certificate the CLI says which flags to pass, before dialing.
    let t = run(&["--coordinator", "https://127.0.0.1:9", "hosts"])?;
    assert!(t.contains("no operator certificate given"), "{t}");
    assert!(t.contains("--ca, --cert and --key"), "{t}");
    // Plain http needs the explicit development switch.
    let t = run(&["--coordinator", "http://127.0.0.1:9", "hosts"])?;
    assert!(t.contains("plain http is for development only"), "{t}");
    Ok(())
}

#[test]
fn operator_commands_on_a_real_fleet() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        start_delay_ms: 0,
        ..FleetOpts::default()
    })?;

    let hosts = fleet.cli_ok(&["hosts"])?;
    assert!(
        hosts.contains("host-1") && hosts.contains("host-2"),
        "{hosts}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["--output", "json", "hosts"])?)?;
    assert_eq!(json["hosts"].as_array().map(Vec::len), Some(2), "{json}");

    // artifact push prints the file's real digest.
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let pushed = fleet.cli_ok(&["artifact", "push", &v1.path.display().to_string()])?;
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&v1.path)?))
    };
    assert!(pushed.contains(&format!("sha256:{want}")), "{pushed}");

    // Spec errors name the field, whether caught locally or by the coordinator.
    let bad = fleet.dir.join("bad.toml");
    std::fs::write(&bad, format!("service = \"web\"\n[release]\nversion = \"1.0.0\"\nfile = \"{}\"\n[strategy]\nmax_unavailable = 0\n", v1.path.display()))?;
    let out = fleet.cli(&["rollout", "start", &bad.display().to_string()])?;
    assert!(!out.status.success());
    assert!(text(&out).contains("max_unavailable"), "{}", text(&out));
    std::fs::write(&bad, format!("service = \"web\"\n[release]\nversion = \"1.0.0\"\nfile = \"{}\"\n[targets]\nhosts = [\"host-9\"]\n", v1.path.display()))?;
    let out = fleet.cli(&["rollout", "start", &bad.display().to_string()])?;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("targets.hosts") && text(&out).contains("host-9"),
        "{}",
        text(&out)
    );

    // start --watch follows the rollout to its end and exits 0 on success.
    let spec = fleet.spec(&v1, "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    let out = fleet.cli(&["rollout", "start", &spec.display().to_string(), "--watch"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("succeeded"), "{}", text(&out));

    // pause / resume / abort, and a watch of an aborted rollout exits non-zero.
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"2s\"")?;
    let id = fleet.start_rollout(&spec)?;
    let paused = fleet.cli_ok(&["rollout", "pause", &id])?;
    assert!(paused.contains("paused"), "{paused}");
    let s = fleet.status(&id)?;
    assert_eq!(s.phase(), Phase::Paused);
    assert!(s.blocked_by.contains("paused"), "{s:?}");
    let out = fleet.cli(&["rollout", "pause", &id])?;
    assert!(!out.status.success(), "pausing twice must be refused");
    assert!(fleet
        .cli_ok(&["rollout", "resume", &id])?
        .contains("rolling"));
    assert!(fleet
        .cli_ok(&["rollout", "abort", &id])?
        .contains("aborted"));
    let out = fleet.cli(&["rollout", "status", &id, "--watch"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = fleet.wait_settled(&id, Duration::from_secs(30))?;
    assert_eq!(s.phase(), Phase::Aborted);

    let listed = fleet.cli_ok(&["rollout", "list"])?;
    assert!(listed.contains(&id), "{listed}");
    let out = fleet.cli(&["rollout", "status", "r-nope"])?;
    assert!(!out.status.success());
    assert!(text(&out).contains("r-nope"), "{}", text(&out));
    Ok(())
}
