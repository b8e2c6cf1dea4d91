//! Operator actions racing a grant (issue 9, items 4 and 5), on a real etcd (the coordinator's
//! own local etcd, TLS and all) with the coordinator's real code. The race window sits between
//! an action's reads and its transaction, too narrow to hit reliably with whole processes, so
//! each test reads, commits a grant exactly as the driver's transaction writes it (token
//! counter, step, slot), then lets the action commit what it read. Needs the `etcd` binary
//! (`ETCD_BIN`).
//!
//! Before the fix the rollback committed anyway, leaving the host granted in between outside
//! the rollback (its parent later claimed "every host is on the old release again"), and the
//! fence committed anyway, leaving a live order to a host that then counted as zero.

mod common;
#[path = "common/world.rs"]
mod world;
use world::{world, SHA2};

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rollgate_coordinator::control::{self, fence, ControlError};
use rollgate_coordinator::store::{self, encode, now_ms, HostState, HostStep, SlotRecord};
use rollgate_coordinator::Ctx;

/// Grants `host` a slot in rollout `rid` as the driver's transaction does: the token counter
/// moves, the step becomes `updating`, the slot appears.
async fn grant(ctx: &Arc<Ctx>, rid: &str, host: &str) -> u64 {
    let mut etcd = ctx.etcd.clone();
    let round = store::read_round(&mut etcd, &ctx.keys, None, &[])
        .await
        .expect("round");
    let token = round.token.0 + 1;
    let step = HostStep {
        state: HostState::Updating,
        token,
        granted_at_ms: now_ms(),
        ..HostStep::pending()
    };
    let slot = SlotRecord {
        rollout_id: rid.into(),
        token,
        host_id: host.into(),
        service: "web".into(),
        version: "2.0.0".into(),
        source: "https://example.invalid/web".into(),
        sha256: SHA2.into(),
        size: 10,
        signature: None,
        rollback: false,
        min_healthy_time_ms: 0,
        healthy_deadline_ms: 1000,
        granted_by: "test".into(),
        granted_at_ms: now_ms(),
    };
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            ctx.keys.token(),
            CompareOp::Equal,
            round.token.1,
        )])
        .and_then(vec![
            TxnOp::put(ctx.keys.token(), encode(&token), None),
            TxnOp::put(ctx.keys.slot("web", host), encode(&slot), None),
            TxnOp::put(ctx.keys.step(rid, host), encode(&step), None),
        ]);
    assert!(etcd.txn(txn).await.expect("grant").succeeded());
    token
}

#[tokio::test]
async fn a_rollback_and_a_grant_are_exclusive() {
    let (w, rid) = world().await;
    let ctx = &w.ctx;
    grant(ctx, &rid, "h1").await;

    // The operator's rollback reads...
    let mut etcd = ctx.etcd.clone();
    let round = store::read_round(&mut etcd, &ctx.keys, None, &[])
        .await
        .expect("round");
    let view = store::read_rollout(&mut etcd, &ctx.keys, &rid, round.fleet.revision)
        .await
        .expect("read")
        .expect("rollout");
    let basis = control::Basis {
        view: &view,
        fleet: &round.fleet,
        token_rev: round.token.1,
    };
    // ...the leader grants h2 in between...
    grant(ctx, &rid, "h2").await;
    // ...and the rollback decided on the old read must not commit.
    let raced = control::start_rollback(ctx, &basis, "test", None, None).await;
    match &raced {
        Err(ControlError::Conflict(why)) => {
            println!("refused as it should be: {why}");
            assert!(why.contains("changed"), "{why}");
        }
        other => panic!("the rollback committed over a grant it did not see: {other:?}"),
    }
    // The operator's command re-reads: h2 is rolled back too.
    let st = control::rollback(ctx, &rid, None).await.expect("rollback");
    let targets: Vec<&str> = st.hosts.iter().map(|h| h.host_id.as_str()).collect();
    println!("rollback {} targets {targets:?}", st.id);
    assert_eq!(targets, vec!["h1", "h2"]);
}

#[tokio::test]
async fn a_fence_and_a_grant_are_exclusive() {
    let (w, rid) = world().await;
    let ctx = &w.ctx;
    // The operator fences h3 (offline): the fence reads...
    let plan = fence::prepare(ctx, "h3", false, None)
        .await
        .expect("prepare");
    // ...the leader grants h3 in between...
    let token = grant(ctx, &rid, "h3").await;
    // ...and the fence decided on the old read must not commit.
    let raced = fence::commit(ctx, plan).await.expect("commit");
    assert!(
        raced.is_none(),
        "the fence committed over grant {token} it did not see: {raced:?}"
    );
    // Run again, it voids that grant.
    let msg = control::fence_host(ctx, "h3", false, None)
        .await
        .expect("fence");
    println!("{msg}");
    assert!(
        msg.contains(&format!("its update in {rid} is marked failed")),
        "{msg}"
    );
    let mut etcd = ctx.etcd.clone();
    let slot = etcd
        .get(ctx.keys.slot("web", "h3"), None)
        .await
        .expect("get");
    assert_eq!(slot.count(), 0, "the voided grant's slot is gone");
}

#[tokio::test]
async fn a_connected_host_is_not_fenced() {
    let (w, _rid) = world().await;
    let ctx = &w.ctx;
    let mut etcd = ctx.etcd.clone();
    etcd.put(ctx.keys.session("h2"), "{}", None)
        .await
        .expect("session");
    match control::fence_host(ctx, "h2", false, None).await {
        Err(ControlError::Conflict(why)) => {
            println!("{why}");
            assert!(why.contains("h2 is connected"), "{why}");
            assert!(why.contains("shows it offline"), "names the way out: {why}");
        }
        other => panic!("fenced a connected host: {other:?}"),
    }
    match control::fence_host(ctx, "h2", true, None).await {
        Err(ControlError::Conflict(why)) => assert!(why.contains("h2 is connected"), "{why}"),
        other => panic!("forgot a connected host: {other:?}"),
    }
}

/// The leader reads the rollouts active last round in its round's transaction (issue 17): the
/// view it gets must be the one a separate read at the round's revision gives, and a rollout
/// that is gone reads as none.
#[tokio::test]
async fn a_round_reads_its_expected_rollouts_at_its_revision() {
    let (w, rid) = world().await;
    let ctx = &w.ctx;
    let token = grant(ctx, &rid, "h2").await;
    let mut etcd = ctx.etcd.clone();
    let expected = [rid.clone(), "r-0000000000000000".to_string()];
    let mut round = store::read_round(&mut etcd, &ctx.keys, None, &expected)
        .await
        .expect("round");
    assert_eq!(round.leader_rev, None, "no leader key was asked for");
    let in_round = round
        .views
        .remove(&rid)
        .expect("read with the round")
        .expect("readable")
        .expect("exists");
    let apart = store::read_rollout(&mut etcd, &ctx.keys, &rid, round.fleet.revision)
        .await
        .expect("read")
        .expect("rollout");
    assert_eq!(in_round.rollout_rev, apart.rollout_rev);
    assert_eq!(
        format!("{:?}", in_round.steps),
        format!("{:?}", apart.steps)
    );
    assert_eq!(in_round.steps.get("h2").map(|s| s.token), Some(token));
    let gone = round.views.remove("r-0000000000000000").expect("asked for");
    assert!(matches!(gone, Ok(None)), "{gone:?}");
}
