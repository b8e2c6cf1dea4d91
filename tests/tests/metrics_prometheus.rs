//! Prometheus metrics (issue 13, item 1), checked with the real thing: Debian's `prometheus`
//! scrapes the test fleet's coordinator during rollouts and the test asks its HTTP API; every
//! `/metrics` page passes `promtool check metrics`.

use std::time::Duration;

use anyhow::{bail, Context};
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
    // FleetOpts::default() serves metrics on every part.
    let coordinator = fleet
        .coordinator()
        .metrics
        .context("the coordinator serves no metrics")?;
    let agents = fleet
        .agents
        .iter()
        .map(|a| {
            a.metrics
                .with_context(|| format!("{} serves no metrics", a.id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prom = Prometheus::start(
        &fleet.dir,
        &[
            ("coordinator", vec![coordinator]),
            ("agent", agents.clone()),
        ],
    )?;
    prom.wait_targets_up(1 + AGENTS)?;

    let (code, page) = http_get(&coordinator.to_string(), "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}: {page}");
    }
    lint(&page, "the coordinator")?;

    fleet.wait(
        "Prometheus to see every agent",
        Duration::from_secs(10),
        || {
            let n = prom.value("rollgate_agents_connected")?;
            Ok((n == AGENTS as f64).then_some(()))
        },
    )?;
    rollouts_as_prometheus_saw_them(&fleet, &prom)?;
    agents_as_prometheus_saw_them(&prom)?;
    let (_, page) = http_get(&agents[0].to_string(), "/metrics")?;
    lint(&page, "an agent")?;
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

/// `promtool check metrics` on a page; its complaints fail the test.
fn lint(page: &str, whose: &str) -> anyhow::Result<()> {
    let lint = promtool_check_metrics(page)?;
    println!(
        "promtool check metrics ({whose}): {:?}",
        if lint.is_empty() { "clean" } else { &lint }
    );
    if !lint.is_empty() {
        bail!(
            "promtool check metrics complains about {whose}'s page:\n{lint}\n--- page ---\n{page}"
        );
    }
    Ok(())
}

/// After those rollouts, the agents' own view: every host runs 2.0.0 again (the bad 3.0.0
/// was undone), each update counted with its outcome, each step timed, probes timed.
fn agents_as_prometheus_saw_them(prom: &Prometheus) -> anyhow::Result<()> {
    let sum = |q: &str| -> anyhow::Result<f64> { Ok(prom.query(q)?.iter().map(|(_, v)| v).sum()) };
    // The agents report after the coordinator has moved on: give the last scrape time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let on_v2 = prom
            .query("rollgate_agent_release_info{version=\"2.0.0\"} == 1")?
            .len();
        let succeeded = sum("rollgate_agent_updates_total{outcome=\"succeeded\"}")?;
        let rolled_back = sum("rollgate_agent_updates_total{outcome=\"rolled_back\"}")?;
        let healthy = sum("rollgate_agent_service_health{health=\"healthy\"}")?;
        let steps = prom.query("sum by (step) (rollgate_agent_update_step_seconds_count)")?;
        let probes = sum("rollgate_agent_probe_seconds_count")?;
        let fetched = sum("rollgate_agent_fetched_bytes_total")?;
        let said = format!(
            "agents: {on_v2}/{AGENTS} on 2.0.0, updates succeeded {succeeded}, rolled back \
             {rolled_back}, healthy {healthy}, steps timed {}, probe runs {probes}, fetched \
             {fetched} B",
            steps.len()
        );
        // install 4 + 2.0.0 on 4 succeeded; the bad 3.0.0 rolled back on the one host it reached.
        let agree = on_v2 == AGENTS
            && succeeded == 8.0
            && rolled_back == 1.0
            && healthy == AGENTS as f64
            && steps.len() >= 5
            && probes >= 1.0
            && fetched >= 1.0;
        if agree {
            println!("{said}");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the agents' metrics disagree with what happened: {said}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// deploy/prometheus: the example configs load (plain and https), the alert rules parse and their unit tests
/// pass (each alert fires on the series that should fire it, and not before).
#[test]
fn deploy_alert_rules_pass_promtool() -> anyhow::Result<()> {
    let promtool = rollgate_tests::prometheus::prometheus_tool("promtool")?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        // Its TLS files are examples: the syntax is checked, not that they exist.
        &["check", "config", "--syntax-only", "prometheus-https.yml"],
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
