//! The checker: verdicts from independent evidence only — the observer's polls of every
//! service, etcd's own history of the slot keys, each agent's log of the orders it accepted,
//! the services' answers at the end, and the harness's record of process exits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::WatchOptions;

use crate::*;

/// Budget (a): the observer never saw more services down at once than the budget, fleet-wide
/// and per group.
pub fn budget(seen: &Observation, budget: usize, per_group: usize) -> Vec<String> {
    let mut out = Vec::new();
    if seen.max_unavailable > budget {
        out.push(format!(
            "(a) {} hosts unavailable at once, budget {budget}: {:?}",
            seen.max_unavailable, seen.worst_set
        ));
    }
    for (group, worst) in &seen.max_per_group {
        if *worst > per_group {
            out.push(format!(
                "(a) {group}: {worst} hosts unavailable at once, group budget {per_group}: {:?}",
                seen.worst_per_group.get(group)
            ));
        }
    }
    out
}

/// Every `(host, token)` a slot was ever granted with, from etcd's history of the slot keys
/// (the test etcd never compacts).
pub fn granted(fleet: &Fleet) -> anyhow::Result<BTreeSet<(String, u64)>> {
    let prefix = format!("{ETCD_PREFIX}slots/");
    fleet.runtime.block_on(async {
        let mut c = fleet.etcd_client().await?;
        let opts = WatchOptions::new().with_prefix().with_start_revision(1);
        let mut stream = c.watch(prefix.as_str(), Some(opts)).await?;
        let mut out = BTreeSet::new();
        // History comes first, in batches; then the stream waits for new events.
        while let Ok(msg) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
            let Some(resp) = msg? else { break };
            for e in resp.events() {
                let Some(kv) = e.kv().filter(|kv| !kv.value().is_empty()) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_slice(kv.value())?;
                if let (Some(h), Some(t)) = (v["host_id"].as_str(), v["token"].as_u64()) {
                    out.insert((h.to_string(), t));
                }
            }
        }
        Ok(out)
    })
}

/// Tokens each agent accepted an order with, in log order ("accepted order ... token=N").
pub fn accepted(fleet: &Fleet) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    let mut out = BTreeMap::new();
    for a in &fleet.agents {
        let log = std::fs::read_to_string(&a.proc.log)?;
        let tokens = log
            .lines()
            .filter(|l| l.contains("accepted order"))
            .filter_map(|l| {
                let rest = &l[l.find("token=")? + 6..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        out.insert(a.id.clone(), tokens);
    }
    Ok(out)
}

/// Fencing (b): every order an agent accepted was a grant etcd committed for that host, and no
/// agent accepted a token below one it had accepted before.
pub fn fencing(
    granted: &BTreeSet<(String, u64)>,
    accepted: &BTreeMap<String, Vec<u64>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (host, tokens) in accepted {
        let mut highest = 0;
        for &t in tokens {
            if !granted.contains(&(host.clone(), t)) {
                out.push(format!(
                    "(b) {host} accepted token {t}, which etcd never granted it"
                ));
            }
            if t < highest {
                out.push(format!("(b) {host} accepted token {t} after {highest}"));
            }
            highest = highest.max(t);
        }
    }
    out
}

/// Endings (c): every host serves exactly the old or the new release, healthy (asked directly).
pub fn endings(fleet: &Fleet, old: &str, new: &str) -> Vec<String> {
    fleet
        .agents
        .iter()
        .filter_map(|a| match poll_service(a.service_addr) {
            Poll::Serving(v) if v == old || v == new => None,
            Poll::Serving(v) => Some(format!("(c) {} serves {v}, neither {old} nor {new}", a.id)),
            Poll::Down(true) => Some(format!(
                "(c) {} does not serve: nothing listens (connection refused)",
                a.id
            )),
            Poll::Down(false) => Some(format!(
                "(c) {} does not serve healthy: it answered not healthy, or reset the connection",
                a.id
            )),
            Poll::NoAnswer => Some(format!(
                "(c) {} gave no answer in time (load average {}): not shown to serve",
                a.id,
                load_average()
            )),
        })
        .collect()
}

/// Outcome (d): the rollout ended succeeded, or halted with a named reason.
pub fn outcome(s: &pb::RolloutStatus) -> Vec<String> {
    match s.phase() {
        pb::Phase::Succeeded => Vec::new(),
        pb::Phase::Failed | pb::Phase::Paused | pb::Phase::RolledBack if !s.reason.is_empty() => {
            Vec::new()
        }
        _ => vec![format!(
            "(d) the rollout ended {} without a reason: {}",
            s.phase().word(),
            brief(s)
        )],
    }
}

/// The machine's 1-minute load average, for a report (`?` if unreadable).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
