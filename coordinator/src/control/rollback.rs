//! Rollbacks: a new rollout of the previous release under the parent's budget and groups.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rollgate_proto::pb;
use rollgate_proto::spec::{
    FailureBudget, OnFailure, ReleaseSpec, RolloutSpec, Strategy, TargetSpec,
};

use super::{
    freeze_groups, new_rollout_id, not_found, resolve_id, status, store_new_rollout, ControlError,
    CAS_ATTEMPTS,
};
use crate::planner::{self, Progress};
use crate::store::OperatorStamp;
use crate::store::{self, encode, now_ms, FleetView, Phase, RolloutRecord, RolloutView};
use crate::Ctx;

/// What a rollback is checked against: the state it was decided on.
pub struct Basis<'a> {
    /// The rollout to roll back, read at `fleet.revision`.
    pub view: &'a RolloutView,
    /// The fleet at the same revision.
    pub fleet: &'a FleetView,
    /// The token counter's mod revision at that revision: every grant moves it, so a grant
    /// committed after the read makes the rollback's transaction fail and re-read (a host
    /// granted in between would otherwise install the new release outside the rollback).
    pub token_rev: i64,
}

/// Starts a rollback of the basis' rollout: a new rollout of the previous release to every
/// target that took (or may have taken) the new one, under the same budget and groups, without
/// canary or waves. Returns the new rollout, or `None` when no host needs it (the rollout is
/// then marked rolled back directly). `fence` makes the leader's automatic rollback fenced
/// (S3). A grant in between fails it with [`ControlError::Conflict`]; read again and retry.
pub async fn start_rollback(
    ctx: &Arc<Ctx>,
    basis: &Basis<'_>,
    reason: &str,
    fence: Option<Compare>,
    by: Option<&str>,
) -> Result<Option<RolloutRecord>, ControlError> {
    let keys = &ctx.keys;
    let r = &basis.view.rollout;
    let previous = rollbackable(r)?;
    let targets = rollback_targets(basis);
    let mut parent = r.clone();
    parent.updated_at_ms = now_ms();
    parent.operator = by.map(|by| OperatorStamp {
        by: by.to_string(),
        at_ms: parent.updated_at_ms,
    });
    let mut compares = vec![
        Compare::mod_revision(
            keys.rollout(&r.id),
            CompareOp::Equal,
            basis.view.rollout_rev,
        ),
        Compare::mod_revision(keys.token(), CompareOp::Equal, basis.token_rev),
    ];
    compares.extend(fence);
    let active = keys.active(&r.spec.service);
    if targets.is_empty() {
        parent.phase = Phase::RolledBack;
        parent.reason = format!(
            "{reason}; no host took {}, nothing to roll back",
            r.spec.release.version
        );
        let mut ops = vec![TxnOp::put(keys.rollout(&r.id), encode(&parent), None)];
        if !r.phase.is_terminal() {
            compares.push(Compare::value(
                active.clone(),
                CompareOp::Equal,
                r.id.clone(),
            ));
            ops.push(TxnOp::delete(active, None));
        }
        let txn = Txn::new().when(compares).and_then(ops);
        if !ctx.etcd.clone().txn(txn).await?.succeeded() {
            return Err(changed(&r.id));
        }
        return Ok(None);
    }
    let mut new = rollback_record(basis, targets, previous, reason);
    new.created_by = by.map(str::to_string);
    parent.phase = Phase::RollingBack;
    parent.reason = reason.to_string();
    parent.rolled_back_by = Some(new.id.clone());
    compares.push(if r.phase.is_terminal() {
        // An ended rollout no longer owns the service: the rollback must claim it like any
        // new rollout.
        Compare::version(active, CompareOp::Equal, 0)
    } else {
        Compare::value(active, CompareOp::Equal, r.id.clone())
    });
    let parent_op = TxnOp::put(keys.rollout(&r.id), encode(&parent), None);
    store_new_rollout(ctx, &new, compares, vec![parent_op]).await?;
    tracing::warn!(rollout = %r.id, rollback = %new.id, hosts = new.targets.len(), version = %new.spec.release.version, %reason, "rolling back");
    Ok(Some(new))
}

fn changed(id: &str) -> ControlError {
    ControlError::Conflict(format!(
        "rollout {id} changed (a host was granted or the rollout moved) while starting its \
         rollback; run the command again"
    ))
}

/// The release to go back to, or why this rollout cannot be rolled back.
fn rollbackable(r: &RolloutRecord) -> Result<ReleaseSpec, ControlError> {
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
    Ok(previous)
}

/// The rule that keeps an operator from reaching back to an old release without the signing
/// key: a rollout can be rolled back only while fewer than `window` rollouts of its service
/// that succeeded (rollbacks included) came after it, i.e. (window 1) only when what it
/// replaced is the release the hosts ran just before the current one. Rollouts that failed or
/// were aborted after it do not count. `all` is every rollout, newest first.
fn within_window(all: &[RolloutRecord], id: &str, window: u32) -> Result<(), String> {
    let Some(pos) = all.iter().position(|r| r.id == id) else {
        return Ok(()); // read again below, and reported as not found there
    };
    let service = &all[pos].spec.service;
    let newer: Vec<&RolloutRecord> = all[..pos]
        .iter()
        .filter(|r| &r.spec.service == service && r.phase == Phase::Succeeded)
        .collect();
    if newer.len() < window.max(1) as usize {
        return Ok(());
    }
    let latest = newer.first().map_or("?", |r| r.id.as_str());
    let version = newer
        .first()
        .map_or("?", |r| r.spec.release.version.as_str());
    Err(format!(
        "cannot roll back {id}: it is not the latest rollout of {service} ({latest} is, with \
         {version}), and a rollback goes back only {window} rollout(s) (rollback_window = \
         {window}), so no operator can reach an older release without the signing key. Roll \
         back {latest}, or publish the fix as a new version"
    ))
}

/// The parent's targets that took, or may have taken, the new release: granted (done,
/// updating, lost, failed), reporting it, or with one of its orders in flight.
fn rollback_targets(basis: &Basis<'_>) -> Vec<String> {
    let r = &basis.view.rollout;
    let observed = planner::Observed {
        rollout: r,
        steps: &basis.view.steps,
        staged: &basis.view.staged,
        fleet: basis.fleet,
        now_ms: now_ms(),
        progress_seen_ms: None,
    };
    let reported = |h: &str| {
        basis
            .fleet
            .hosts
            .get(h)
            .and_then(|rec| rec.services.get(&r.spec.service))
            .is_some_and(|s| s.version == r.spec.release.version || s.in_flight_rollout == r.id)
    };
    r.targets
        .iter()
        .filter(|h| {
            matches!(
                planner::progress(&observed, h),
                Progress::Done | Progress::Updating | Progress::Lost | Progress::Failed
            ) || reported(h)
        })
        .cloned()
        .collect()
}

/// The rollback rollout: the previous release, the parent's budget and groups, one wave.
fn rollback_record(
    basis: &Basis<'_>,
    targets: Vec<String>,
    previous: ReleaseSpec,
    reason: &str,
) -> RolloutRecord {
    let r = &basis.view.rollout;
    let strategy = Strategy {
        canary: None,
        waves: Vec::new(),
        pause_between_waves: std::time::Duration::ZERO,
        max_failures: FailureBudget::Count(0),
        on_failure: OnFailure::Halt,
        stage_first: false,
        prefetch: false,
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
    // The parent's groups and group budgets (frozen when it was created; computed now for a
    // parent stored before they were).
    let (groups, group_budgets) = if r.group_budgets.is_empty() {
        freeze_groups(&r.spec, &r.targets, basis.fleet)
    } else {
        (r.groups.clone(), r.group_budgets.clone())
    };
    let now = now_ms();
    RolloutRecord {
        id: new_rollout_id(),
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
        groups,
        group_budgets,
        wave_done: None,
        created_by: None,
        operator: None,
    }
}

/// An operator's `rollgate rollout rollback ID`: returns the rollback rollout's status (or the
/// rollout's own when nothing needed rolling back). Re-reads and retries when a grant got in
/// between.
pub async fn rollback(
    ctx: &Arc<Ctx>,
    id: &str,
    by: Option<String>,
) -> Result<pb::RolloutStatus, ControlError> {
    let id = resolve_id(ctx, id).await?;
    let mut etcd = ctx.etcd.clone();
    let all = store::list_rollouts(&mut etcd, &ctx.keys).await?;
    within_window(&all.records, &id, ctx.config.rollback_window).map_err(ControlError::Conflict)?;
    let reason = "rollback requested by an operator".to_string();
    let mut last = None;
    for _ in 0..CAS_ATTEMPTS {
        let round = store::read_round(&mut etcd, &ctx.keys, None, &[]).await?;
        let view = store::read_rollout(&mut etcd, &ctx.keys, &id, round.fleet.revision)
            .await?
            .ok_or_else(|| not_found(&id))?;
        let basis = Basis {
            view: &view,
            fleet: &round.fleet,
            token_rev: round.token.1,
        };
        match start_rollback(ctx, &basis, &reason, None, by.as_deref()).await {
            Ok(Some(new)) => return status(ctx, &new.id).await,
            Ok(None) => return status(ctx, &id).await,
            Err(ControlError::Conflict(why)) => last = Some(ControlError::Conflict(why)),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| changed(&id)))
}
