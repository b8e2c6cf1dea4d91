//! The fence, forced (issue 14, item 1; S3). A leader is deposed after it planned a grant and
//! before its grant transaction reached etcd: both replicas run with the test-only pause point
//! `before-grant-commit` (cargo feature `fault-injection`), so the leader stops exactly there.
//! The test then deletes its election key (what its lease running out does, while the process
//! lives on), waits until the other replica leads and is itself paused before ITS grant (so
//! nothing else changes in etcd), and lets the deposed leader go on. Its transaction must be
//! refused by etcd because of the fence alone (every other compare of the grant still holds):
//! no slot appears, no agent accepts an order or journals a token, and its log says why. Then
//! the new leader goes on and the rollout succeeds. Without the `fence(leader)` compare in the
//! grant, the deposed leader's grant commits and this test fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rollgate_tests::pb::Phase;
use rollgate_tests::{wait_for, Fleet, FleetOpts, Mode, ETCD_PREFIX};

const POINT: &str = "before-grant-commit";

fn pause_dir(root: &Path, replica: &str) -> PathBuf {
    root.join(replica)
}

/// Waits until `replica` is held at the pause point; returns what it was about to grant.
fn wait_paused(root: &Path, replica: &str, timeout: Duration) -> anyhow::Result<String> {
    let file = pause_dir(root, replica).join(format!("{POINT}.paused"));
    wait_for(
        &format!("{replica} to pause before its grant commit"),
        timeout,
        || Ok(std::fs::read_to_string(&file).ok()),
    )
}

fn release(root: &Path, replica: &str) -> anyhow::Result<()> {
    std::fs::write(pause_dir(root, replica).join(format!("{POINT}.go")), "")?;
    Ok(())
}

/// Every slot key in etcd with its record.
fn slots(fleet: &Fleet) -> anyhow::Result<Vec<(String, String)>> {
    fleet.etcd_get_prefix(&format!("{ETCD_PREFIX}slots/"))
}

/// Lines of every agent log that show an accepted order.
fn accepted_orders(fleet: &Fleet) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for a in &fleet.agents {
        let log = std::fs::read_to_string(&a.proc.log)?;
        lines.extend(
            log.lines()
                .filter(|l| l.contains("accepted order"))
                .map(|l| format!("{}: {l}", a.id)),
        );
    }
    Ok(lines)
}

#[test]
fn a_leader_deposed_between_plan_and_grant_grants_nothing() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    for r in ["coord-1", "coord-2"] {
        std::fs::create_dir_all(pause_dir(root.path(), r))?;
    }
    let wrap = format!("ROLLGATE_TEST_PAUSE_DIR={}/{{id}}", root.path().display());
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        coordinators: 2,
        coordinator_wrap: vec!["env".into(), wrap],
        ..FleetOpts::default()
    })?;
    let leader = fleet.wait_leader(Duration::from_secs(10))?;
    let (old_id, new_id) = (
        fleet.coordinators[leader].id.clone(),
        fleet.coordinators[1 - leader].id.clone(),
    );
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v1, "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
    let id = fleet.start_rollout(&spec)?;
    let planned = wait_paused(root.path(), &old_id, Duration::from_secs(15))?;
    println!("{old_id} (leader) paused before committing: {planned}");

    // Depose it: its election key goes, as when its lease runs out.
    let keys = fleet.etcd_get_prefix(&format!("{ETCD_PREFIX}leader/"))?;
    let (key, _) = keys
        .iter()
        .find(|(_, v)| *v == old_id)
        .ok_or_else(|| anyhow::anyhow!("no election key of {old_id} in {keys:?}"))?;
    fleet.etcd_delete(key)?;
    let deposed_at = Instant::now();
    let now_planned = wait_paused(root.path(), &new_id, Duration::from_secs(15))?;
    println!(
        "{new_id} leads and paused before its own grant after {:?}: {now_planned}",
        deposed_at.elapsed()
    );
    assert!(
        slots(&fleet)?.is_empty(),
        "a slot was granted while both paused"
    );

    // The deposed leader goes on: etcd must refuse its grant.
    release(root.path(), &old_id)?;
    let old = &fleet.coordinators[leader];
    // Its attempt ends in its log line (refused) or in a slot and an order (committed).
    let refused = wait_for(
        &format!("{old_id}'s grant attempt to end"),
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(old.log())?;
            let line = log
                .lines()
                .find(|l| l.contains("etcd refused this grant: this replica no longer leads"));
            let committed = !slots(&fleet)?.is_empty() || !accepted_orders(&fleet)?.is_empty();
            Ok(line.map(str::to_string).or(committed.then(String::new)))
        },
    )?;
    // A grant that did commit would be a slot (and an order) within milliseconds; hold a while.
    std::thread::sleep(Duration::from_secs(1));
    let slots_now = slots(&fleet)?;
    assert!(
        slots_now.is_empty(),
        "the deposed leader's grant committed (the fence did not hold): {slots_now:?}"
    );
    let orders = accepted_orders(&fleet)?;
    assert!(
        orders.is_empty(),
        "an agent acted on a fenced grant: {orders:?}"
    );
    assert!(
        !refused.is_empty(),
        "{old_id} did not log why its grant was refused"
    );
    println!("{old_id}: {refused}");
    for a in &fleet.agents {
        // No state file yet: the agent never acted on an order.
        let journaled = match a.state_dir.join("agent-state.json").exists() {
            true => fleet.highest_token(&a.id)?,
            false => None,
        };
        assert_eq!(
            journaled, None,
            "{} journaled a token from a fenced grant",
            a.id
        );
    }

    // The new leader grants; the rollout goes on to the end.
    release(root.path(), &new_id)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    for h in &s.hosts {
        let by = slots_or_steps_granted_by(&fleet, &new_id, &old_id, h.token);
        println!("{}: token {} ({by})", h.host_id, h.token);
    }
    fleet.wait_all_serving("1.0.0")?;
    Ok(())
}

/// Which replica granted `token`, from the replicas' own logs ("slot granted ... token=N").
fn slots_or_steps_granted_by(fleet: &Fleet, new_id: &str, old_id: &str, token: u64) -> String {
    let granted = |id: &str| {
        let Some(c) = fleet.coordinators.iter().find(|c| c.id == id) else {
            return false;
        };
        std::fs::read_to_string(c.log())
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("slot granted") && l.contains(&format!("token={token} ")))
    };
    match (granted(new_id), granted(old_id)) {
        (true, false) => format!("granted by {new_id}"),
        (false, true) => format!("granted by the DEPOSED {old_id}"),
        other => format!("granted by: {other:?}"),
    }
}
