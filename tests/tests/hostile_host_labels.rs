//! A host does not choose its own labels once an operator pinned them (issue 10, item 6).
//! host-3 is in site-2; compromised, its agent claims `site = "site-0"` to be picked by a rollout
//! aimed at site-0 (e.g. to be its canary and pass the gate with fake success). With its labels
//! pinned by `rollgate host label`, rollouts see site-2 whatever it claims, the claim is logged
//! naming the host, and `rollgate hosts` shows both. Without the pin (the positive control, and
//! the behaviour before this change) the claim alone makes it a target.

use std::path::Path;
use std::time::Duration;

use rollgate_tests::{Fleet, FleetOpts, Mode};

fn plan_targets(fleet: &Fleet, spec: &Path) -> anyhow::Result<Vec<String>> {
    let out = fleet.cli_ok(&[
        "--output",
        "json",
        "rollout",
        "plan",
        &spec.display().to_string(),
    ])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    Ok(v["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Restarts host-3's agent claiming `site`, and waits until the coordinator has its hello
/// (`seen` says how it shows).
fn reconnect_claiming(
    fleet: &mut Fleet,
    site: &str,
    seen: impl Fn(&rollgate_proto::pb::HostInfo) -> bool,
) -> anyhow::Result<()> {
    fleet.set_label("host-3", "site", site)?;
    fleet.agent("host-3").proc.restart()?;
    fleet.wait(
        "host-3 to reconnect with its claim",
        Duration::from_secs(20),
        || {
            let hosts = fleet.hosts()?;
            Ok(hosts
                .iter()
                .any(|h| h.host_id == "host-3" && h.connected && seen(h))
                .then_some(()))
        },
    )?;
    fleet.wait_all_serving("1.0.0")
}

#[test]
fn a_pinned_host_cannot_claim_its_way_into_a_rollout() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 3,
        sites: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.dir.join("site-0.toml");
    std::fs::write(
        &spec,
        format!(
            "service = \"web\"\n[release]\nversion = \"2.0.0\"\nfile = \"{}\"\n\
             [targets]\nlabels = {{ site = \"site-0\" }}\n[strategy]\nmax_unavailable = 1\n",
            v2.path.display()
        ),
    )?;
    assert_eq!(plan_targets(&fleet, &spec)?, vec!["host-1"]);

    // Unpinned, a claim is enough (the attack, before this change).
    reconnect_claiming(&mut fleet, "site-0", |h| {
        h.labels.get("site").map(String::as_str) == Some("site-0")
    })?;
    let claimed = plan_targets(&fleet, &spec)?;
    println!("unpinned, host-3 claiming site-0: targets {claimed:?}");
    assert_eq!(claimed, vec!["host-1", "host-3"], "the positive control");

    // The operator pins host-3 to site-2; its agent keeps claiming site-0.
    let out = fleet.cli_ok(&["host", "label", "host-3", "site=site-2"])?;
    println!("{}", out.trim());
    assert!(out.contains("pinned labels"), "{out}");
    // A fresh hello after the pin: the claim is logged and overridden.
    reconnect_claiming(&mut fleet, "site-0", |h| h.overridden.contains("site-0"))?;
    let pinned = plan_targets(&fleet, &spec)?;
    println!("pinned, host-3 claiming site-0: targets {pinned:?}");
    assert_eq!(
        pinned,
        vec!["host-1"],
        "the claim picked host-3 despite its pin"
    );

    let hosts = fleet.cli_ok(&["hosts"])?;
    let row = hosts
        .lines()
        .find(|l| l.starts_with("host-3"))
        .unwrap_or_default();
    println!("{row}");
    assert!(row.contains("site=site-2 (pinned)"), "{row}");
    assert!(row.contains("agent claims labels"), "{row}");
    let log = std::fs::read_to_string(fleet.coordinator().log())?;
    let event = log
        .lines()
        .find(|l| l.contains("host=host-3") && l.contains("differs from what an operator pinned"))
        .unwrap_or_default();
    println!("coordinator: {event}");
    assert!(
        event.contains("site-0"),
        "the claim is not logged naming host-3: {event:?}"
    );

    // Cleared, the claim counts again.
    let out = fleet.cli(&["host", "label", "host-3", "--clear"])?;
    assert!(out.status.success(), "an operator may clear a pin: {out:?}");
    assert_eq!(plan_targets(&fleet, &spec)?, vec!["host-1", "host-3"]);
    Ok(())
}
