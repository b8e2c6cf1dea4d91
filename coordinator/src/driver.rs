//! The rollout driver: runs on the elected leader only. It re-reads every active rollout from
//! etcd whenever something under the prefix changes, asks the planner what to do, and carries
//! the decisions out as fenced transactions (S3). A restart re-derives everything from etcd.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, LeaderKey, Txn, TxnOp, WatchOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::planner;
use crate::store::{
    self, encode, now_ms, FleetView, HostState, HostStep, RolloutView, SlotRecord, StoreError,
};
use crate::Ctx;

/// Pause before campaigning again after losing leadership or an etcd error.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Campaigns for leadership and drives rollouts while leader, until `cancel`.
pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    loop {
        let mut etcd = ctx.etcd.clone();
        let campaign = etcd.campaign(ctx.keys.leader(), ctx.config.replica_id.clone(), ctx.lease);
        let resp = tokio::select! {
            r = campaign => r,
            _ = cancel.cancelled() => return,
        };
        let leader = match resp.map(|mut r| r.take_leader()) {
            Ok(Some(l)) => l,
            Ok(None) => {
                warn!("etcd answered the campaign without a leader key; campaigning again");
                continue;
            }
            Err(e) => {
                warn!("campaign for leadership failed: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        info!(
            epoch = leader.rev(),
            "this replica is the leader; driving rollouts"
        );
        if let Err(e) = lead(&ctx, &leader, &cancel).await {
            warn!("leading stopped: {e}; campaigning again");
        }
        if cancel.is_cancelled() {
            let _ = ctx
                .etcd
                .clone()
                .resign(Some(etcd_client::ResignOptions::new().with_leader(leader)))
                .await;
            return;
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

async fn lead(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let mut etcd = ctx.etcd.clone();
    let mut watch = etcd
        .watch(ctx.keys.all(), Some(WatchOptions::new().with_prefix()))
        .await?;
    loop {
        if !still_leader(ctx, leader).await? {
            return Err(StoreError::Corrupt {
                key: ctx.keys.leader(),
                err: "this replica's election key is gone (lease lost)".into(),
            });
        }
        drive_once(ctx, leader).await?;
        tokio::select! {
            m = watch.message() => match m {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

async fn still_leader(ctx: &Arc<Ctx>, leader: &LeaderKey) -> Result<bool, StoreError> {
    let resp = ctx.etcd.clone().get(leader.key(), None).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| kv.create_revision() == leader.rev())
        .unwrap_or(false))
}

/// One planning round over every active rollout.
async fn drive_once(ctx: &Arc<Ctx>, leader: &LeaderKey) -> Result<(), StoreError> {
    let mut etcd = ctx.etcd.clone();
    let fleet = store::read_fleet(&mut etcd, &ctx.keys).await?;
    for rid in store::active_rollouts(&mut etcd, &ctx.keys).await? {
        let Some(view) = store::read_rollout(&mut etcd, &ctx.keys, &rid, fleet.revision).await?
        else {
            continue;
        };
        if let Err(e) = drive_rollout(ctx, leader, &fleet, &view).await {
            warn!(rollout = %rid, "planning round failed: {e}");
        }
    }
    Ok(())
}

fn fence(leader: &LeaderKey) -> Compare {
    Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev())
}

async fn drive_rollout(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    fleet: &FleetView,
    view: &RolloutView,
) -> Result<(), StoreError> {
    let keys = &ctx.keys;
    let r = &view.rollout;
    let mut etcd = ctx.etcd.clone();

    if r.phase.is_terminal() {
        // The rollout ended; the service is free for the next one once no host holds a slot.
        if view.slots.is_empty() {
            let txn = Txn::new()
                .when(vec![
                    fence(leader),
                    Compare::value(keys.active(&r.spec.service), CompareOp::Equal, r.id.clone()),
                ])
                .and_then(vec![TxnOp::delete(keys.active(&r.spec.service), None)]);
            etcd.txn(txn).await?;
        }
        return Ok(());
    }

    let plan = planner::plan_view(view, fleet);

    if let Some((phase, reason)) = plan.phase {
        let mut next = r.clone();
        next.phase = phase;
        next.reason = reason.clone();
        next.updated_at_ms = now_ms();
        let txn = Txn::new()
            .when(vec![
                fence(leader),
                Compare::mod_revision(keys.rollout(&r.id), CompareOp::Equal, view.rollout_rev),
            ])
            .and_then(vec![TxnOp::put(keys.rollout(&r.id), encode(&next), None)]);
        if etcd.txn(txn).await?.succeeded() {
            info!(rollout = %r.id, %phase, %reason, "rollout {phase}");
        }
        return Ok(());
    }

    for host in &plan.grants {
        let slot = SlotRecord {
            rollout_id: r.id.clone(),
            host_id: host.clone(),
            service: r.spec.service.clone(),
            version: r.spec.release.version.clone(),
            source: r.spec.release.source.clone(),
            sha256: r.spec.release.sha256.clone(),
            size: r.spec.release.size,
            min_healthy_time_ms: r.spec.strategy.min_healthy_time.as_millis() as u64,
            healthy_deadline_ms: r.spec.strategy.healthy_deadline.as_millis() as u64,
            granted_by: ctx.config.replica_id.clone(),
            granted_at_ms: now_ms(),
        };
        let step = HostStep {
            state: HostState::Updating,
            message: "slot granted; order sent".into(),
            ..HostStep::pending()
        };
        // S3: only the current leader grants; the rollout must be unchanged since it was read
        // (a pause in between wins); a host is granted at most once per rollout.
        let txn = Txn::new()
            .when(vec![
                fence(leader),
                Compare::mod_revision(keys.rollout(&r.id), CompareOp::Equal, view.rollout_rev),
                Compare::version(keys.step(&r.id, host), CompareOp::Equal, 0),
                Compare::version(keys.slot(&r.id, host), CompareOp::Equal, 0),
            ])
            .and_then(vec![
                TxnOp::put(keys.slot(&r.id, host), encode(&slot), None),
                TxnOp::put(keys.step(&r.id, host), encode(&step), None),
            ]);
        let resp = etcd.txn(txn).await?;
        if resp.succeeded() {
            let token = resp.header().map(|h| h.revision()).unwrap_or(0);
            info!(
                rollout = %r.id, %host, token,
                unavailable = plan.unavailable.len() + 1,
                budget = r.max_unavailable,
                "slot granted"
            );
        } else {
            // Something changed since the read; the watch brings the next round.
            return Ok(());
        }
    }
    Ok(())
}
