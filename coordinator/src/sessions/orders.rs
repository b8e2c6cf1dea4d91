//! Orders to the hosts this replica holds: re-attaching grants whose holder went away, sending
//! update and stage orders as slots and rollouts appear in etcd.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use rollgate_proto::pb;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::WATCH_RETRY;
use crate::store::{self, decode, encode, HostState, HostStep, SlotRecord, StoreError};
use crate::Ctx;

/// Makes sure an `updating` step has a live slot bound to this replica's lease (its old holder
/// may be gone), then sends its order; the agent ignores an order it is running and re-reports
/// one it has finished.
pub(super) async fn reattach(
    ctx: &Arc<Ctx>,
    rollout: &crate::store::RolloutRecord,
    host: &str,
    step: &HostStep,
    step_rev: i64,
) -> Result<(), StoreError> {
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    let slot_key = keys.slot(&rollout.spec.service, host);
    let resp = etcd.get(slot_key.clone(), None).await?;
    let slot = match resp.kvs().first() {
        Some(kv) => decode::<SlotRecord>(kv)?,
        None => {
            let r = &rollout.spec;
            let slot = SlotRecord {
                rollout_id: rollout.id.clone(),
                token: step.token,
                host_id: host.to_string(),
                service: r.service.clone(),
                version: r.release.version.clone(),
                source: r.release.source.clone(),
                sha256: r.release.sha256.clone(),
                size: r.release.size,
                signature: r.release.signature.clone(),
                rollback: rollout.rollback_of.is_some(),
                min_healthy_time_ms: r.strategy.min_healthy_time.as_millis() as u64,
                healthy_deadline_ms: r.strategy.healthy_deadline.as_millis() as u64,
                granted_by: ctx.config.replica_id.clone(),
                granted_at_ms: step.granted_at_ms,
            };
            // Same grant, same token: only if the step is still this grant and no slot exists.
            let txn = Txn::new()
                .when(vec![
                    Compare::mod_revision(keys.step(&rollout.id, host), CompareOp::Equal, step_rev),
                    Compare::version(slot_key.clone(), CompareOp::Equal, 0),
                ])
                .and_then(vec![TxnOp::put(
                    slot_key,
                    encode(&slot),
                    Some(PutOptions::new().with_lease(ctx.lease)),
                )]);
            if !etcd.txn(txn).await?.succeeded() {
                return Ok(());
            }
            info!(rollout = %rollout.id, %host, token = step.token, "re-attached a grant whose holder went away");
            return Ok(()); // the slot watch sends the order
        }
    };
    if slot.token == step.token {
        info!(rollout = %rollout.id, %host, token = slot.token, "sending the order for the slot this host holds");
        ctx.hub
            .send(host, pb::coordinator_message::Msg::Update(slot.order()))
            .await;
    }
    Ok(())
}

pub(super) async fn send_stage(ctx: &Arc<Ctx>, rollout: &crate::store::RolloutRecord, host: &str) {
    let msg = pb::coordinator_message::Msg::Stage(pb::StageOrder {
        rollout_id: rollout.id.clone(),
        service: rollout.spec.service.clone(),
        release: Some(rollout.spec.release.to_pb()),
    });
    if ctx.hub.send(host, msg).await {
        info!(rollout = %rollout.id, %host, "stage order sent");
    }
}

/// Watches etcd and sends, to the hosts whose streams this replica holds, the order of every
/// new slot and the stage orders of every new `stage_first` rollout. Runs until `cancel`.
pub async fn dispatch_orders(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let keys = ctx.keys.clone();
    loop {
        let mut etcd = ctx.etcd.clone();
        let watch = crate::etcd_conn::watch(
            &mut etcd,
            keys.all(),
            Some(WatchOptions::new().with_prefix()),
        )
        .await;
        let mut stream = match watch {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot watch for new slots: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_RETRY) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        // Orders granted while the watch was down: catch up for every host held here. A host
        // whose look-up failed would wait for its order for ever (nemesis seed 1140: granted
        // while this replica's watch was re-opened, and etcd refused the look-up): re-open and
        // catch up again until every look-up succeeds.
        if !resend_all(&ctx).await {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_RETRY) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = cancel.cancelled() => return,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    warn!("order watch ended; re-opening it");
                    break;
                }
            };
            let mut caught_up = true;
            for ev in resp.events() {
                if ev.event_type() == EventType::Delete {
                    caught_up &= reattach_if_vanished(&ctx, ev).await;
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                if kv.version() != 1 {
                    continue;
                }
                let Ok(key) = kv.key_str() else { continue };
                if key.starts_with(&keys.all_slots()) {
                    let slot: SlotRecord = match decode(kv) {
                        Ok(s) => s,
                        Err(e) => {
                            warn!("{e}");
                            continue;
                        }
                    };
                    if ctx.hub.sent_ahead(&slot.host_id, slot.token) {
                        continue;
                    }
                    let order = slot.order();
                    if ctx
                        .hub
                        .send(&slot.host_id, pb::coordinator_message::Msg::Update(order))
                        .await
                    {
                        info!(rollout = %slot.rollout_id, host = %slot.host_id, token = slot.token, version = %slot.version, "order sent");
                    }
                } else if let Some((_, "", _)) = keys.parse_rollout_key(key) {
                    let Ok(rollout) = decode::<crate::store::RolloutRecord>(kv) else {
                        continue;
                    };
                    if rollout.spec.strategy.stages_ahead() {
                        for host in &rollout.targets {
                            send_stage(&ctx, &rollout, host).await;
                        }
                    }
                }
            }
            if !caught_up {
                // A vanished slot's look-up failed: re-open, which catches up every host.
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_RETRY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Re-sends the orders of every host whose stream this replica holds; false if a look-up
/// failed (each failure is logged).
async fn resend_all(ctx: &Arc<Ctx>) -> bool {
    if crate::fault::fail_once(crate::fault::FailPoint::OrderCatchUp) {
        warn!("cannot look up the held hosts' orders (failed by fault injection); trying again");
        return false;
    }
    let mut all = true;
    for host in ctx.hub.hosts() {
        if let Err(e) = resend_for(ctx, &host).await {
            warn!(%host, "cannot look up this host's orders: {e}; trying again");
            all = false;
        }
    }
    all
}

/// A slot that vanished (its holder's lease expired) for a host whose stream this replica now
/// holds: if the host's step is still `updating`, the grant is re-attached here and its order
/// sent. A slot deleted because its result was recorded leaves no `updating` step: no-op.
/// False if the look-up failed (logged), for the caller to catch up again.
async fn reattach_if_vanished(ctx: &Arc<Ctx>, ev: &etcd_client::Event) -> bool {
    let Some(key) = ev.kv().and_then(|kv| kv.key_str().ok()) else {
        return true;
    };
    if !key.starts_with(&ctx.keys.all_slots()) {
        return true;
    }
    // `slots/<service>/<host>`; host ids contain no `/`.
    let Some(host) = key.rsplit('/').next() else {
        return true;
    };
    if !ctx.hub.hosts().iter().any(|h| h == host) {
        return true;
    }
    match resend_for(ctx, host).await {
        Ok(()) => true,
        Err(e) => {
            warn!(%host, "its slot vanished and its orders cannot be looked up: {e}; catching up again");
            false
        }
    }
}

async fn resend_for(ctx: &Arc<Ctx>, host: &str) -> Result<(), StoreError> {
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    for rid in store::active_rollouts(&mut etcd, keys).await? {
        let resp = etcd.get(keys.step(&rid, host), None).await?;
        let Some(kv) = resp.kvs().first() else {
            continue;
        };
        let step: HostStep = decode(kv)?;
        if step.state != HostState::Updating {
            continue;
        }
        let resp = etcd.get(keys.rollout(&rid), None).await?;
        if let Some(rkv) = resp.kvs().first() {
            let rollout: crate::store::RolloutRecord = decode(rkv)?;
            reattach(ctx, &rollout, host, &step, kv.mod_revision()).await?;
        }
    }
    Ok(())
}
