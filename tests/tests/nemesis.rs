//! The nemesis suite (issue 14, item 3): 3 replicas on a 3-member etcd cluster, 21 agents in
//! network namespaces, one rollout with a canary and a group budget, under faults drawn from a
//! seed (see `rollgate_tests::nemesis`). Each seed's checker uses independent evidence only and
//! fails on any broken promise: (a) budget, fleet-wide and per group, as the observer saw it;
//! (b) an order accepted on a token etcd never granted; (c) a host not serving the old or the
//! new release, healthy; (d) a rollout that did not end, or ended without a reason, within the
//! bound after the faults stopped; (e) a process that crashed or exited unplanned.
//!
//! `NEMESIS_SEEDS` picks the seeds: `7`, `1,5,9` or `1..50` (default: the CI seeds below).
//! A failing seed prints its schedule and the command that replays it. Many seeds for as long
//! as asked: `tests/nemesis.sh`.

use rollgate_tests::nemesis::{self, Opts};

/// Seeds CI runs on every change (each ~1 min here): 2 fails with (a) when the group budget
/// is loosened by one; 1034, 1061 and 1140 found liveness bugs (a grant never re-sent after a
/// replica's lease ran out; a re-attached slot outliving its recorded result, forced
/// deterministically in result_slot_race.rs; an order look-up that failed once and was never
/// tried again).
const CI_SEEDS: &[u64] = &[2, 1034, 1061, 1140];

fn seeds() -> Vec<u64> {
    let Ok(text) = std::env::var("NEMESIS_SEEDS") else {
        return CI_SEEDS.to_vec();
    };
    if let Some((a, b)) = text.split_once("..") {
        let (a, b): (u64, u64) = (
            a.trim().parse().expect("seed"),
            b.trim().parse().expect("seed"),
        );
        return (a..b).collect();
    }
    text.split(',')
        .map(|s| s.trim().parse().expect("NEMESIS_SEEDS: numbers"))
        .collect()
}

#[test]
fn promises_hold_under_seeded_faults() -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for seed in seeds() {
        let report = nemesis::run(Opts::new(seed))?;
        report.print();
        if !report.violations.is_empty() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "seeds with violations: {failed:?} (replay each with NEMESIS_SEEDS=N)"
    );
    Ok(())
}
