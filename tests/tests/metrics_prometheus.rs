//! Prometheus metrics (issue 13, item 1), checked with the real thing: Debian's `prometheus`
//! scrapes the test fleet's coordinator during rollouts and the test asks its HTTP API; every
//! `/metrics` page passes `promtool check metrics`.

use std::time::Duration;

use anyhow::bail;
use rollgate_tests::pb::Phase;
use rollgate_tests::prometheus::{promtool_check_metrics, Prometheus};
use rollgate_tests::{http_get, Fleet, FleetOpts, Mode};

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
    rollouts_as_prometheus_saw_them(&fleet, &prom)?;
    let leader = prom.value("rollgate_leader")?;
    let opened = prom.value("rollgate_agent_sessions_opened_total")?;
    println!("leader {leader}, sessions opened {opened}");
    if leader != 1.0 || opened < AGENTS as f64 {
        bail!("the only replica reports leader={leader}, sessions opened={opened}");
    }
    Ok(())
}

/// A good rollout (budget 2) and a bad one (halts), then Prometheus' view of them against the
/// observer's and the event log's.
fn rollouts_as_prometheus_saw_them(fleet: &Fleet, prom: &Prometheus) -> anyhow::Result<()> {
    fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v2, "max_unavailable = 2\nmin_healthy_time = \"1s\"")?;
    let id = fleet.start_rollout(&spec)?;
    assert_eq!(
        fleet.wait_settled(&id, Duration::from_secs(60))?.phase(),
        Phase::Succeeded
    );
    let worst = observer.finish().max_unavailable;
    let v3 = fleet.release_failing_on("3.0.0", &["host-1", "host-2", "host-3", "host-4"])?;
    let bad = fleet.spec(
        &v3,
        "max_unavailable = 1\nmin_healthy_time = \"200ms\"\nhealthy_deadline = \"2s\"",
    )?;
    let bad = fleet.start_rollout(&bad)?;
    assert_eq!(
        fleet.wait_settled(&bad, Duration::from_secs(60))?.phase(),
        Phase::Failed
    );

    let granted = fleet
        .cli_ok(&["-o", "json", "events"])?
        .lines()
        .filter(|l| l.contains("\"kind\":\"host_granted\""))
        .count() as f64;
    fleet.wait(
        "Prometheus to scrape the last grant and the halt",
        Duration::from_secs(10),
        || {
            let grants = prom
                .value("sum(rollgate_slot_grants_total)")
                .unwrap_or(-1.0);
            let halts = prom
                .value("sum(rollgate_rollout_halts_total)")
                .unwrap_or(-1.0);
            Ok((grants == granted && halts >= 1.0).then_some(()))
        },
    )?;
    let peak = prom.value("max_over_time(rollgate_unavailable_hosts{service=\"web\"}[5m])")?;
    let budget =
        prom.value("max_over_time(rollgate_max_unavailable_hosts{service=\"web\"}[5m])")?;
    let halts =
        prom.value("sum by (reason) (rollgate_rollout_halts_total{reason=\"failures\"})")?;
    let handovers = prom.value("sum(rollgate_handover_seconds_count)")?;
    let p50 =
        prom.value("histogram_quantile(0.5, sum by (le) (rollgate_handover_seconds_bucket))")?;
    println!(
        "Prometheus: unavailable peak {peak} (budget {budget}; observer worst {worst}); grants \
         {granted} = host_granted events; halts (failures) {halts}; hand-overs {handovers}, \
         median {:.0} ms",
        p50 * 1000.0
    );
    // Every rollout here has a budget of 2 (or 1): Prometheus saw it used, never exceeded, and
    // never less than what the independent observer saw down at once.
    if !(peak > 0.0 && peak <= 2.0 && budget == 2.0 && peak >= worst as f64) {
        bail!("unavailable peak {peak} (budget {budget}), observer worst {worst}");
    }
    if halts != 1.0 || handovers < 1.0 {
        bail!("expected one halt for failures and some hand-overs: {halts}, {handovers}");
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
