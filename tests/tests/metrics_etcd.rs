//! etcd request metrics on the coordinator's `/metrics` (issue 13): every etcd call goes
//! through one metered channel, here over the test etcd's TLS with client certificates and
//! auth. A rollout shows up as timed Range and Txn calls; a killed etcd as counted errors.
//! Every page passes `promtool check metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use rollgate_tests::prometheus::{promtool_check_metrics, sample_sum};
use rollgate_tests::{http_get, Fleet, FleetOpts};

const DURATION: &str = "rollgate_etcd_request_duration_seconds";
const ERRORS: &str = "rollgate_etcd_request_errors_total";
/// How long after etcd dies the coordinator must have counted a failed call: its lease
/// keep-alive, session heartbeats and watches hit etcd every second or so.
const ERRORS_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn a_rollout_times_etcd_calls_by_method() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(3)?;
    let before = scrape(&fleet)?;
    fleet.install("1.0.0", "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
    let page = scrape(&fleet)?;
    lint(&page)?;
    for method in ["range", "txn"] {
        let label = format!("method=\"{method}\"");
        let count = sample_sum(&page, &format!("{DURATION}_count"), &label);
        let grew = count - sample_sum(&before, &format!("{DURATION}_count"), &label);
        let sum = sample_sum(&page, &format!("{DURATION}_sum"), &label);
        let buckets = buckets(&page, method);
        let median = quantile(&buckets, count, 0.5);
        println!(
            "{method}: {count} calls ({grew} during the rollout), mean {:.2} ms, median bucket \
             le={median} s, errors {}",
            1000.0 * sum / count.max(1.0),
            sample_sum(&page, ERRORS, &label)
        );
        if !(count > 0.0 && grew > 0.0 && sum > 0.0) {
            bail!(
                "no {method} calls timed during a rollout: count {count}, grew {grew}, sum {sum}"
            );
        }
        if buckets.last().map(|(_, n)| *n) != Some(count) || median.is_infinite() {
            bail!("{method}'s histogram is not populated: {buckets:?} for {count} calls");
        }
    }
    println!("methods seen: {:?}", methods(&page));
    Ok(())
}

#[test]
fn a_killed_etcd_counts_as_errors() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 1,
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(1)?;
    let before = sample_sum(&scrape(&fleet)?, ERRORS, "");
    fleet.etcd.proc.kill9();
    let killed = Instant::now();
    let page = fleet.wait(
        "the coordinator to count failed etcd calls",
        ERRORS_WITHIN,
        || {
            let page = scrape(&fleet)?;
            Ok((sample_sum(&page, ERRORS, "") > before).then_some(page))
        },
    )?;
    let after = sample_sum(&page, ERRORS, "");
    println!(
        "etcd errors {before} before the kill, {after} {:?} after it; by method: {:?}",
        killed.elapsed(),
        errors_by_method(&page)
    );
    lint(&page)?;
    fleet.etcd.proc.restart()?;
    fleet.etcd.wait_healthy()?;
    Ok(())
}

fn scrape(fleet: &Fleet) -> anyhow::Result<String> {
    let (code, page) = http_get(
        &fleet
            .coordinator()
            .metrics
            .expect("FleetOpts::default() serves metrics")
            .to_string(),
        "/metrics",
    )?;
    if code != 200 {
        bail!("/metrics answered {code}: {page}");
    }
    Ok(page)
}

fn lint(page: &str) -> anyhow::Result<()> {
    let lint = promtool_check_metrics(page)?;
    println!(
        "promtool check metrics: {}",
        if lint.is_empty() { "clean" } else { &lint }
    );
    if !lint.is_empty() {
        bail!("promtool check metrics complains:\n{lint}\n--- page ---\n{page}");
    }
    Ok(())
}

/// `(le, cumulative count)` of `method`'s buckets, in order (the last is `+Inf`).
fn buckets(page: &str, method: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{DURATION}_bucket{{");
    let label = format!("method=\"{method}\"");
    page.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding the `q` quantile.
fn quantile(buckets: &[(f64, f64)], count: f64, q: f64) -> f64 {
    buckets
        .iter()
        .find(|(_, n)| *n >= q * count)
        .map_or(f64::INFINITY, |(le, _)| *le)
}

/// Every method label on the page with its call count.
fn methods(page: &str) -> BTreeMap<String, f64> {
    by_method(page, &format!("{DURATION}_count{{"))
}

fn errors_by_method(page: &str) -> BTreeMap<String, f64> {
    by_method(page, &format!("{ERRORS}{{"))
}

fn by_method(page: &str, prefix: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let method = rest.split("method=\"").nth(1)?.split('"').next()?;
            Some((method.to_string(), l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}
