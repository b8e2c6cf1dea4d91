//! Prometheus metrics (issue 13, item 1), checked with the real thing: Debian's `prometheus`
//! scrapes the test fleet's coordinator during rollouts and the test asks its HTTP API; every
//! `/metrics` page passes `promtool check metrics`.

use std::time::Duration;

use anyhow::bail;
use rollgate_tests::prometheus::{promtool_check_metrics, Prometheus};
use rollgate_tests::{http_get, Fleet, FleetOpts};

const AGENTS: usize = 4;

#[test]
fn prometheus_scrapes_the_coordinator() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: AGENTS,
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(AGENTS)?;
    let coordinator = fleet.coordinator().metrics;
    let prom = Prometheus::start(&fleet.dir, &[("coordinator", vec![coordinator])])?;
    prom.wait_targets_up(1)?;

    let (code, page) = http_get(&coordinator.to_string(), "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}: {page}");
    }
    let lint = promtool_check_metrics(&page)?;
    println!(
        "promtool check metrics: {:?}",
        if lint.is_empty() { "clean" } else { &lint }
    );
    if !lint.is_empty() {
        bail!("promtool check metrics complains:\n{lint}\n--- page ---\n{page}");
    }

    fleet.wait(
        "Prometheus to see every agent",
        Duration::from_secs(10),
        || {
            let n = prom.value("rollgate_agents_connected")?;
            Ok((n == AGENTS as f64).then_some(()))
        },
    )?;
    let leader = prom.value("rollgate_leader")?;
    let opened = prom.value("rollgate_agent_sessions_opened_total")?;
    println!("leader {leader}, sessions opened {opened}");
    if leader != 1.0 || opened < AGENTS as f64 {
        bail!("the only replica reports leader={leader}, sessions opened={opened}");
    }
    Ok(())
}

/// deploy/prometheus: the example config loads, the alert rules parse and their unit tests
/// pass (each alert fires on the series that should fire it, and not before).
#[test]
fn deploy_alert_rules_pass_promtool() -> anyhow::Result<()> {
    let promtool = rollgate_tests::prometheus::prometheus_tool("promtool")?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "rollgate-alerts.yml"],
        &["test", "rules", "rollgate-alerts.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        println!(
            "promtool {}: {}",
            args.join(" "),
            said.trim().replace('\n', " | ")
        );
        if !out.status.success() {
            bail!("promtool {} failed:\n{said}", args.join(" "));
        }
    }
    Ok(())
}
