//! Rollbacks: a new rollout of the previous release under the parent's budget and groups.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use rollgate_proto::pb;
use rollgate_proto::spec::{FailureBudget, OnFailure, RolloutSpec, Strategy, TargetSpec};

use super::{not_found, resolve_id, status, store_new_rollout, ControlError};
use crate::planner::{self, Progress};
use crate::store::{self, encode, now_ms, FleetView, Phase, RolloutRecord, RolloutView};
use crate::Ctx;

/// Starts a rollback of `view`'s rollout: a new rollout of the previous release to every target
/// that took (or may have taken) the new one, under the same budget and groups, without canary
/// or waves. Returns the new rollout, or `None` when no host needs it (the rollout is then
/// marked rolled back directly). `fence` makes the leader's automatic rollback fenced (S3).
pub async fn start_rollback(
    ctx: &Arc<Ctx>,
    view: &RolloutView,
    fleet: &FleetView,
    reason: &str,
    fence: Option<Compare>,
) -> Result<Option<RolloutRecord>, ControlError> {
    let keys = &ctx.keys;
    let r = &view.rollout;
    let Some(previous) = r.previous.clone() else {
        return Err(ControlError::Conflict(format!(
            "cannot roll back {}: no earlier release of {} is recorded (this rollout was its \
             first); fix forward with a new rollout instead",
            r.id, r.spec.service
        )));
    };
    if r.rollback_of.is_some() {
        return Err(ControlError::Conflict(format!(
            "{} is itself a rollback; start a new rollout instead",
            r.id
        )));
    }
    if matches!(r.phase, Phase::RollingBack | Phase::RolledBack) {
        return Err(ControlError::Conflict(format!(
            "{} is already {} (by {})",
            r.id,
            r.phase,
            r.rolled_back_by.as_deref().unwrap_or("?")
        )));
    }
    let observed = planner::Observed {
        rollout: r,
        steps: &view.steps,
        staged: &view.staged,
        fleet,
        now_ms: now_ms(),
    };
    let targets: Vec<String> = r
        .targets
        .iter()
        .filter(|h| {
            matches!(
                planner::progress(&observed, h),
                Progress::Done | Progress::Updating | Progress::Lost | Progress::Failed
            )
        })
        .cloned()
        .collect();
    let mut parent = r.clone();
    parent.updated_at_ms = now_ms();
    let mut compares = vec![Compare::mod_revision(
        keys.rollout(&r.id),
        CompareOp::Equal,
        view.rollout_rev,
    )];
    compares.extend(fence);
    if targets.is_empty() {
        parent.phase = Phase::RolledBack;
        parent.reason = format!(
            "{reason}; no host took {}, nothing to roll back",
            r.spec.release.version
        );
        let mut ops = vec![TxnOp::put(keys.rollout(&r.id), encode(&parent), None)];
        if !r.phase.is_terminal() {
            compares.push(Compare::value(
                keys.active(&r.spec.service),
                CompareOp::Equal,
                r.id.clone(),
            ));
            ops.push(TxnOp::delete(keys.active(&r.spec.service), None));
        }
        ctx.etcd
            .clone()
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        return Ok(None);
    }
    let strategy = Strategy {
        canary: None,
        waves: Vec::new(),
        pause_between_waves: std::time::Duration::ZERO,
        max_failures: FailureBudget::Count(0),
        on_failure: OnFailure::Halt,
        stage_first: false,
        ..r.spec.strategy.clone()
    };
    let spec = RolloutSpec {
        service: r.spec.service.clone(),
        release: previous,
        targets: TargetSpec {
            hosts: targets.clone(),
            labels: Default::default(),
        },
        strategy,
    };
    let now = now_ms();
    let new = RolloutRecord {
        id: format!("r-{:06x}", rand::thread_rng().gen_range(0..0x100_0000u32)),
        max_unavailable: r.max_unavailable,
        targets,
        spec,
        phase: Phase::Rolling,
        reason: format!("rolls back {}: {reason}", r.id),
        created_at_ms: now,
        updated_at_ms: now,
        wave: 0,
        tolerated_failures: 0,
        previous: Some(r.spec.release.clone()),
        rollback_of: Some(r.id.clone()),
        rolled_back_by: None,
    };
    parent.phase = Phase::RollingBack;
    parent.reason = reason.to_string();
    parent.rolled_back_by = Some(new.id.clone());
    if r.phase.is_terminal() {
        // An ended rollout no longer owns the service: the rollback must claim it like any
        // new rollout.
        compares.push(Compare::version(
            keys.active(&r.spec.service),
            CompareOp::Equal,
            0,
        ));
    } else {
        compares.push(Compare::value(
            keys.active(&r.spec.service),
            CompareOp::Equal,
            r.id.clone(),
        ));
    }
    store_new_rollout(
        ctx,
        &new,
        compares,
        vec![TxnOp::put(keys.rollout(&r.id), encode(&parent), None)],
    )
    .await?;
    tracing::warn!(rollout = %r.id, rollback = %new.id, hosts = new.targets.len(), version = %new.spec.release.version, %reason, "rolling back");
    Ok(Some(new))
}

/// An operator's `rollgate rollout rollback ID`: returns the rollback rollout's status (or the
/// rollout's own when nothing needed rolling back).
pub async fn rollback(ctx: &Arc<Ctx>, id: &str) -> Result<pb::RolloutStatus, ControlError> {
    let id = resolve_id(ctx, id).await?;
    let mut etcd = ctx.etcd.clone();
    let fleet = store::read_fleet(&mut etcd, &ctx.keys).await?;
    let view = store::read_rollout(&mut etcd, &ctx.keys, &id, fleet.revision)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let reason = "rollback requested by an operator".to_string();
    match start_rollback(ctx, &view, &fleet, &reason, None).await? {
        Some(new) => status(ctx, &new.id).await,
        None => status(ctx, &id).await,
    }
}
