//! `prefetch = true` (issue 17): every target downloads and verifies the release as soon as the
//! rollout starts, while it waits for its slot, so its turn costs only the swap and restart.
//! Checked from the agents' own logs: each host staged the release before it accepted its
//! order, and its update found the release on disk instead of downloading it. Without
//! prefetch (the control rollout), the hosts download at their turn.

use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts, Mode};

/// Where, in one agent's log, a rollout's order was accepted, and how its release got there.
#[derive(Debug)]
struct Turn {
    /// The release was staged ahead (a stage order) before the order was accepted.
    staged_before_accept: bool,
    /// The update downloaded the release itself (it was not on disk).
    downloaded_at_turn: bool,
}

fn turn(log: &str, version: &str) -> anyhow::Result<Turn> {
    let accept = format!("accepted order to install web {version}");
    let staged = format!("staged {version} as ");
    let accepted = log
        .find(&accept)
        .ok_or_else(|| anyhow::anyhow!("no {accept:?} in the log:\n{log}"))?;
    let after = &log[accepted..];
    Ok(Turn {
        staged_before_accept: log[..accepted].contains(&staged),
        downloaded_at_turn: after
            .lines()
            .take_while(|l| !l.contains("order finished"))
            .any(|l| l.contains(&format!("{version} downloaded, sha256 verified"))),
    })
}

#[test]
fn prefetch_stages_every_target_ahead_of_its_slot() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"100ms\"")?;
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"500ms\"";

    // Control: without prefetch, a host downloads the release at its turn.
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet.start_rollout(&fleet.spec(&v2, strategy)?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    anyhow::ensure!(s.phase() == Phase::Succeeded, "{s:?}");
    for a in &fleet.agents {
        let t = turn(&std::fs::read_to_string(&a.proc.log)?, "2.0.0")?;
        println!("{} without prefetch: {t:?}", a.id);
        assert!(
            !t.staged_before_accept && t.downloaded_at_turn,
            "{}: {t:?}",
            a.id
        );
    }

    // With prefetch, every host waiting for its slot has the release before its turn; the rollout does not wait
    // for all of them (that is stage_first), and each update finds it on disk.
    fleet.wait_service_free("web")?;
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v3, &format!("{strategy}\nprefetch = true"))?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    anyhow::ensure!(s.phase() == Phase::Succeeded, "{s:?}");
    assert_eq!(s.staged, 3, "every target reported its staging: {s:?}");
    // The first host is granted as the stage orders go out, so its update and its staging
    // race; every host after it waited for its slot and must have had the release by then.
    let mut ahead = 0;
    for a in &fleet.agents {
        let t = turn(&std::fs::read_to_string(&a.proc.log)?, "3.0.0")?;
        println!("{} with prefetch: {t:?}", a.id);
        ahead += usize::from(t.staged_before_accept && !t.downloaded_at_turn);
    }
    assert!(
        ahead >= fleet.agents.len() - 1,
        "only {ahead} of the {} hosts had the release staged before their turn",
        fleet.agents.len()
    );
    fleet.wait_all_serving("3.0.0")?;
    Ok(())
}
