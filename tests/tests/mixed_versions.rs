//! Mixed versions (issue 12, item 3): while a fleet is upgraded, coordinators and agents one
//! protocol version apart must work together. The previous protocol's binaries are real builds
//! of the last commit before protocol 2 (`tests/old-bins.sh`, which tests/run.sh runs first);
//! each scenario rolls a release across the fleet with an independent observer.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{brief, BinDirs, Fleet, FleetOpts, Mode};

/// The previous protocol's binaries (built on first use).
fn old_bins() -> anyhow::Result<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("old-bins.sh");
    let out = Command::new("bash").arg(&script).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn version_of(binary: &std::path::Path) -> anyhow::Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs 1.0.0, rolls 2.0.0 over 3 hosts with a budget of 1: it must succeed within budget.
fn rolls_a_release(bin_dirs: BinDirs, what: &str) -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        bin_dirs,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet
        .start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"300ms\"")?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    println!("{what}: {}", brief(&s));
    assert_eq!(s.phase(), Phase::Succeeded, "{what}: {s:?}");
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(1, None);
    assert!(seen.max_unavailable <= 1, "{what}: {:?}", seen.worst_set);
    let log = std::fs::read_to_string(fleet.coordinator().log())?;
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refusing an agent session"))
        .collect();
    assert!(refusals.is_empty(), "{what}: {refusals:?}");
    Ok(())
}

#[test]
fn an_old_coordinator_serves_new_agents() -> anyhow::Result<()> {
    let old = old_bins()?;
    println!(
        "old coordinator: {}",
        version_of(&old.join("rollgate-coordinator"))?
    );
    rolls_a_release(
        BinDirs {
            coordinator: Some(old),
            agent: None,
        },
        "protocol-1 coordinator, protocol-2 agents",
    )
}

#[test]
fn a_new_coordinator_serves_old_agents() -> anyhow::Result<()> {
    let old = old_bins()?;
    println!("old agents: {}", version_of(&old.join("rollgate-agent"))?);
    rolls_a_release(
        BinDirs {
            coordinator: None,
            agent: Some(old),
        },
        "protocol-2 coordinator, protocol-1 agents",
    )
}
