//! An order granted while a replica's order watch was away reaches its host even when the
//! replica's first catch-up after the watch re-opened fails (L1; nemesis seed 1140: host-15
//! was granted while its replica's watch was being re-opened, the catch-up look-up met an etcd
//! error and was only logged, and host-15 never got its order: the rollout waited for ever).
//!
//! Forced here: replica A (not the leader) holds host H's stream. A's etcd link is cut, so its
//! watch ends; the leader grants H during the cut (A cannot see it); the test arms the
//! test-only fail point `order-catch-up` (cargo feature `fault-injection`: A's next catch-up
//! fails as if etcd had refused it) and heals the link. A's watch re-opens after the grant, so
//! only a catch-up can find H's order; the first one fails. The dispatcher must re-open and
//! catch up again: H gets its order and the rollout succeeds, with H's stream on A all along.
//! With the old "log it and go on" the rollout does not move.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rollgate_tests::pb::Phase;
use rollgate_tests::{wait_for, Cut, Fleet, FleetOpts, Mode, ETCD_PREFIX};
use serde_json::Value;

const POINT: &str = "order-catch-up";

/// The replica id and connection id holding `host`'s stream, from its session key.
fn session_of(fleet: &Fleet, host: &str) -> anyhow::Result<Option<(String, String)>> {
    let key = format!("{ETCD_PREFIX}sessions/{host}");
    let Some((_, value)) = fleet.etcd_get_prefix(&key)?.into_iter().next() else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&value).with_context(|| format!("{key}: {value}"))?;
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(Some((field("replica_id"), field("conn_id"))))
}

#[test]
fn an_order_granted_while_the_watch_was_away_survives_a_failed_catch_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = FleetOpts {
        agents: 2,
        coordinators: 2,
        etcd_via_proxy: true,
        ..FleetOpts::default()
    };
    // The fail point only; no pause point armed.
    opts.coordinator_wrap = vec![
        "env".into(),
        format!("ROLLGATE_TEST_PAUSE_DIR={}", dir.path().display()),
        "ROLLGATE_TEST_PAUSE_POINTS=none".into(),
    ];
    let fleet = Fleet::start(opts)?;
    fleet.wait_connected(2)?;
    let leader = fleet.wait_leader(Duration::from_secs(10))?;
    let a = 1 - leader;
    fleet.prefer(leader);
    let a_id = format!("coord-{}", a + 1);
    let mut held = None;
    for host in ["host-1", "host-2"] {
        if let Some((replica, conn)) = session_of(&fleet, host)? {
            if replica == a_id {
                held = Some((host, conn));
            }
        }
    }
    let Some((h, conn)) = held else {
        bail!("no host's stream is on {a_id} (not the leader)");
    };
    println!("leader coord-{}; {a_id} holds {h}'s stream", leader + 1);

    // A's watch ends; the leader grants H while A cannot see it.
    fleet.cut_etcd_link(a, Cut::Refuse);
    let cut_at = Instant::now();
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let spec = fleet.spec_for_hosts(
        &v1,
        "max_unavailable = 1\nmin_healthy_time = \"300ms\"",
        &[h],
    )?;
    let id = fleet.start_rollout(&spec)?;
    wait_for("the leader to grant H", Duration::from_secs(10), || {
        let slots = fleet.etcd_get_prefix(&format!("{ETCD_PREFIX}slots/"))?;
        Ok(slots
            .iter()
            .any(|(k, _)| k.ends_with(&format!("/{h}")))
            .then_some(()))
    })?;
    // A's next catch-up fails, then the link heals: its watch re-opens after the grant.
    let fail = dir.path().join(format!("{POINT}.fail"));
    std::fs::write(&fail, "")?;
    fleet.heal_etcd_link(a);
    println!(
        "granted {h} and healed {a_id}'s etcd link {:.1?} after the cut",
        cut_at.elapsed()
    );

    let end = fleet.wait_settled(&id, Duration::from_secs(30))?;
    ensure!(
        !fail.exists(),
        "{a_id} never reached its catch-up: the fault was not injected"
    );
    ensure!(end.phase() == Phase::Succeeded, "{end:?}");
    // H's order came through A, not through a new session elsewhere.
    let now = session_of(&fleet, h)?;
    ensure!(
        now == Some((a_id.clone(), conn.clone())),
        "{h}'s stream moved ({now:?}); the test did not exercise {a_id}'s catch-up"
    );
    let log = std::fs::read_to_string(fleet.coordinators[a].log())?;
    ensure!(
        log.contains("failed by fault injection"),
        "{a_id}'s log does not show the failed catch-up"
    );
    println!("rollout {id} succeeded; {h} got its order through {a_id} after a failed catch-up");
    Ok(())
}
