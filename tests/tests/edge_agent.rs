//! The edge build of the agent (issue 15, item 5): `cargo build -p rollgate-agent
//! --no-default-features` leaves the systemd and container backends out. It still rolls
//! process-backend services through a real coordinator, and a config that asks for what it
//! left out is refused at start, naming the cargo feature and the way on. tests/run.sh builds
//! it into `target/debug/edge/`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use rollgate_tests::pb::Phase;
use rollgate_tests::{bin_dir, BinDirs, Fleet, FleetOpts, Mode};

/// The edge agent's directory, or the command that builds it.
fn edge_dir() -> anyhow::Result<PathBuf> {
    let dir = bin_dir().join("edge");
    ensure!(
        dir.join("rollgate-agent").exists(),
        "{} is missing: build it with `cargo build -p rollgate-agent --no-default-features` and \
         copy target/debug/rollgate-agent there (tests/run.sh does)",
        dir.join("rollgate-agent").display()
    );
    Ok(dir)
}

/// `rollgate-agent --check` of the edge build on a config with `services`: (success, output).
fn check(services: &str) -> anyhow::Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "host_id = \"edge-1\"\ncoordinator = \"http://127.0.0.1:7443\"\nstate_dir = \"{}\"\n\
         [tls]\ninsecure_plaintext = true\n{services}",
        dir.path().join("state").display()
    );
    let path = dir.path().join("agent.toml");
    fs::write(&path, config)?;
    let out = Command::new(edge_dir()?.join("rollgate-agent"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .context("run the edge agent")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[test]
fn the_edge_agent_refuses_the_backends_it_left_out_naming_the_feature() -> anyhow::Result<()> {
    let systemd = "[[services]]\nname = \"web\"\nbackend = \"systemd\"\nunit = \"web.service\"\nbinary = \"web\"\n";
    let container =
        "[[services]]\nname = \"web\"\nbackend = \"container\"\nbinary = \"image.tar\"\n";
    let probe = "[[services]]\nname = \"web\"\nbackend = \"process\"\nbinary = \"web\"\n[[services.probes]]\nkind = \"systemd\"\nunit = \"web.service\"\n";
    let process = "or use backend = \"process\"";
    let other_probe = "or check the service with an http, tcp or exec probe";
    for (what, services, field, feature, instead) in [
        (
            "the systemd backend",
            systemd,
            "services[0].backend",
            "systemd",
            process,
        ),
        (
            "the container backend",
            container,
            "services[0].backend",
            "container",
            process,
        ),
        (
            "a systemd probe",
            probe,
            "services[0].probes[0].kind",
            "systemd",
            other_probe,
        ),
    ] {
        let (ok, text) = check(services)?;
        println!("{what}: {}", text.trim());
        ensure!(!ok, "the edge agent accepted {what}: {text}");
        ensure!(
            text.contains(field)
                && text.contains(&format!("{what} is not in this rollgate-agent build"))
                && text.contains(&format!("cargo feature `{feature}`"))
                && text.contains(instead),
            "the refusal of {what} does not name the field, the feature and the way on: {text}"
        );
    }
    let (ok, text) =
        check("[[services]]\nname = \"web\"\nbackend = \"process\"\nbinary = \"web\"\n")?;
    ensure!(ok, "the edge agent refused a process service: {text}");
    Ok(())
}

#[test]
fn the_edge_agent_rolls_process_services() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        bin_dirs: BinDirs {
            agent: Some(edge_dir()?),
            ..BinDirs::default()
        },
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet
        .start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?)?;
    let end = fleet.wait_settled(&id, Duration::from_secs(60))?;
    ensure!(end.phase() == Phase::Succeeded, "{end:?}");
    fleet.wait_all_serving("2.0.0")?;
    Ok(())
}
