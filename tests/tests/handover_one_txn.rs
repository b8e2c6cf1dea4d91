//! The one-transaction hand-over (issue 17): when the leader holds the reporting host's session,
//! the host's result and the next host's grant are written by one etcd transaction; and the
//! hosts a round grants share transactions (up to 32 each). Checked from the revisions the
//! coordinator logs with "host updated and healthy" and "slot granted".

use std::collections::BTreeMap;
use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts, Mode};

/// A log line's `key=value` field.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// (host, revision) of each line of `rollout` containing `what`, in log order.
fn revisions(log: &str, rollout: &str, what: &str) -> Vec<(String, i64)> {
    log.lines()
        .filter(|l| l.contains(what) && field(l, "rollout") == Some(rollout))
        .map(|l| {
            let host = field(l, "host")
                .or_else(|| l.split("session{host=").nth(1)?.split('}').next())
                .unwrap_or_else(|| panic!("no host in {l}"));
            let rev = field(l, "revision")
                .unwrap_or_else(|| panic!("no revision in {l}"))
                .parse()
                .expect("revision is a number");
            (host.to_string(), rev)
        })
        .collect()
}

#[test]
fn results_and_grants_share_transactions() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"100ms\"")?;
    // Budget 3: the first round grants three hosts, in one transaction.
    let log = fleet.coordinator().log();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v2, "max_unavailable = 3\nmin_healthy_time = \"100ms\"")?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    anyhow::ensure!(s.phase() == Phase::Succeeded, "{s:?}");
    let grants = revisions(&std::fs::read_to_string(&log)?, &id, "slot granted");
    println!("budget 3, grants (host, revision): {grants:?}");
    assert_eq!(grants.len(), 4, "{grants:?}");
    let mut by_rev = BTreeMap::<i64, usize>::new();
    for (_, rev) in &grants {
        *by_rev.entry(*rev).or_default() += 1;
    }
    assert_eq!(
        by_rev.values().next(),
        Some(&3),
        "the first round's three grants are one transaction: {grants:?}"
    );

    // Budget 1: each host's result is written with the next host's grant.
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v3, "max_unavailable = 1\nmin_healthy_time = \"100ms\"")?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    anyhow::ensure!(s.phase() == Phase::Succeeded, "{s:?}");
    let text = std::fs::read_to_string(&log)?;
    let grants = revisions(&text, &id, "slot granted");
    let results = revisions(&text, &id, "host updated and healthy");
    println!("budget 1, grants: {grants:?}\nresults: {results:?}");
    assert_eq!(grants.len(), 4, "{grants:?}");
    for pair in grants.windows(2) {
        let ((prev, _), (next, granted_at)) = (&pair[0], &pair[1]);
        let (_, recorded_at) = results
            .iter()
            .find(|(h, _)| h == prev)
            .unwrap_or_else(|| panic!("no result of {prev}: {results:?}"));
        assert_eq!(
            recorded_at, granted_at,
            "{prev}'s result and {next}'s grant should be one transaction"
        );
    }
    Ok(())
}
