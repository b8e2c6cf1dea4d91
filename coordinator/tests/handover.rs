//! The one-transaction hand-over (issue 17) with the real leader (`driver::run`) on a real etcd:
//! a result offered to the leader's round is written with the grant it makes room for, in one
//! transaction; and a result whose own compares no longer hold is written by nobody, and grants
//! nobody (the leader planned with it applied, so a grant without it would rest on nothing).
//! The test plays the host's session: it reads the step and slot and builds the result's
//! compares and writes as `sessions/record_result.rs` does. Needs the `etcd` binary.

mod common;
#[path = "common/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, TxnOp};
use rollgate_coordinator::handover::Offer;
use rollgate_coordinator::store::{
    decode, encode, now_ms, Health, HostRecord, HostState, HostStep, ServiceState,
};
use rollgate_coordinator::{driver, Ctx};
use tokio_util::sync::CancellationToken;
use world::{world, SHA2};

/// The hosts holding a slot of `web`, with their slot's key-value.
async fn slots(ctx: &Ctx) -> Vec<(String, KeyValue)> {
    let prefix = ctx.keys.slot("web", "");
    let resp = ctx
        .etcd
        .clone()
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("slots");
    resp.kvs()
        .iter()
        .map(|kv| {
            let host = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            (host, kv.clone())
        })
        .collect()
}

/// Waits until exactly one host holds a slot; returns it.
async fn the_one_slot(ctx: &Ctx) -> (String, KeyValue) {
    for _ in 0..500 {
        let mut s = slots(ctx).await;
        if s.len() == 1 {
            return s.remove(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no host was granted: {:?}", slots(ctx).await);
}

/// A host's step in the rollout, with its mod revision.
async fn step(ctx: &Ctx, rid: &str, host: &str) -> Option<(HostStep, i64)> {
    let resp = ctx.etcd.clone().get(ctx.keys.step(rid, host), None).await;
    let kv = resp.expect("step").kvs().first()?.clone();
    Some((decode(&kv).expect("step record"), kv.mod_revision()))
}

/// `host`'s result "done on 2.0.0", as its session would offer it; `step_rev` is the step's mod
/// revision the result compares.
fn done(ctx: &Ctx, rid: &str, host: &str, slot: &KeyValue, token: u64, step_rev: i64) -> Offer {
    let keys = &ctx.keys;
    let step = HostStep {
        state: HostState::Done,
        token,
        running_version: "2.0.0".into(),
        updated_at_ms: now_ms(),
        ..HostStep::pending()
    };
    let state = ServiceState {
        version: "2.0.0".into(),
        sha256: SHA2.into(),
        health: Health::Healthy,
        ..ServiceState::default()
    };
    let services = BTreeMap::from([("web".to_string(), state)]);
    let record = HostRecord {
        host_id: host.into(),
        services: services.clone(),
        ..HostRecord::default()
    };
    Offer {
        rollout: rid.into(),
        host: host.into(),
        service: "web".into(),
        step: step.clone(),
        services,
        drops_slot: true,
        compares: vec![
            Compare::mod_revision(keys.step(rid, host), CompareOp::Equal, step_rev),
            Compare::mod_revision(
                keys.slot("web", host),
                CompareOp::Equal,
                slot.mod_revision(),
            ),
        ],
        ops: vec![
            TxnOp::put(keys.step(rid, host), encode(&step), None),
            TxnOp::put(keys.host(host), encode(&record), None),
            TxnOp::delete(keys.slot("web", host), None),
        ],
    }
}

#[tokio::test]
async fn a_result_rides_the_grant_it_frees_room_for_and_only_if_its_compares_hold() {
    let (w, rid) = world().await;
    let ctx = &w.ctx;
    for h in ["h1", "h2", "h3"] {
        let lease = etcd_client::PutOptions::new().with_lease(ctx.lease);
        ctx.etcd
            .clone()
            .put(ctx.keys.session(h), "test", Some(lease))
            .await
            .expect("session");
    }
    let cancel = CancellationToken::new();
    let leader = tokio::spawn(driver::run(ctx.clone(), cancel.clone()));

    // Budget 1: one host is granted. Its result, offered to the leader, is written with the
    // next host's grant.
    let (first, slot) = the_one_slot(ctx).await;
    let (s, rev) = step(ctx, &rid, &first).await.expect("granted step");
    let offer = done(ctx, &rid, &first, &slot, s.token, rev);
    let written = ctx
        .handover
        .offer(offer)
        .expect("the leader's inbox is open");
    let at = tokio::time::timeout(Duration::from_secs(10), written)
        .await
        .expect("the leader answers")
        .expect("the result is written with a grant");
    let (state, _) = step(ctx, &rid, &first).await.expect("step");
    assert_eq!(state.state, HostState::Done);
    let (second, slot) = the_one_slot(ctx).await;
    assert_ne!(second, first);
    assert_eq!(
        slot.mod_revision(),
        at,
        "{first}'s result and {second}'s grant are one transaction"
    );

    // The second host's result, but its step changed since the session read it (a stale
    // revision): the leader must neither write it nor grant the third host on it.
    let (s, rev) = step(ctx, &rid, &second).await.expect("granted step");
    let stale = done(ctx, &rid, &second, &slot, s.token, rev - 1);
    let written = ctx
        .handover
        .offer(stale)
        .expect("the leader's inbox is open");
    let answer = tokio::time::timeout(Duration::from_secs(10), written)
        .await
        .expect("the leader answers");
    assert!(
        answer.is_err(),
        "a result whose compares fail is handed back, not written (written at {answer:?})"
    );
    let (state, _) = step(ctx, &rid, &second).await.expect("step");
    assert_eq!(
        state.state,
        HostState::Updating,
        "{second}'s step is untouched"
    );
    let held = slots(ctx).await;
    let hosts: Vec<&str> = held.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        hosts,
        [second.as_str()],
        "nobody else is granted while {second}'s result is not written"
    );
    cancel.cancel();
    leader.await.expect("the leader stops");
}
