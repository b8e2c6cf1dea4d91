//! Operator actions: create, inspect, pause, resume and abort rollouts, list hosts. Each is a
//! read or a compare-and-set transaction in etcd, so any replica can serve it and a success means
//! the change is durable (S6).

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use rollgate_proto::pb;
use rollgate_proto::spec::{RolloutSpec, SpecError};
use thiserror::Error;

use crate::planner;
use crate::store::{
    self, decode, encode, now_ms, ArtifactRecord, FleetView, HostState, HostStep, Phase,
    RolloutRecord, RolloutView, StoreError,
};
use crate::Ctx;

/// How many times a compare-and-set is retried when another writer got in between.
const CAS_ATTEMPTS: usize = 5;

/// Why an operator action was refused.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The spec is wrong; the message names the field and the fix.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The request is wrong in another way (unknown host, no targets, missing artifact).
    #[error("{0}")]
    Invalid(String),
    /// No such rollout.
    #[error("{0}")]
    NotFound(String),
    /// The action does not fit the current state (another rollout active, already ended).
    #[error("{0}")]
    Conflict(String),
    /// etcd failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<etcd_client::Error> for ControlError {
    fn from(e: etcd_client::Error) -> Self {
        ControlError::Store(e.into())
    }
}

/// Validates a spec, resolves its targets and stores the rollout, claiming the service.
pub async fn create(ctx: &Arc<Ctx>, spec_toml: &str) -> Result<RolloutRecord, ControlError> {
    let spec = RolloutSpec::parse_resolved(spec_toml)?;
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    if spec.release.source == "store:" {
        let resp = etcd.get(keys.artifact(&spec.release.sha256), None).await?;
        let art: ArtifactRecord = match resp.kvs().first() {
            Some(kv) => decode(kv)?,
            None => {
                return Err(ControlError::Invalid(format!(
                    "release.sha256 {} is not in the coordinator's artifact store; push it with \
                     `rollgate artifact push FILE` or give `file = ...` in the spec",
                    spec.release.sha256
                )))
            }
        };
        if art.size != spec.release.size {
            return Err(ControlError::Invalid(format!(
                "release.size is {} but the stored artifact sha256:{} has {} bytes",
                spec.release.size, spec.release.sha256, art.size
            )));
        }
    }
    let fleet = store::read_fleet(&mut etcd, keys).await?;
    let targets = resolve_targets(&spec, &fleet)?;
    let id = format!("r-{:06x}", rand::thread_rng().gen_range(0..0x100_0000u32));
    let now = now_ms();
    let record = RolloutRecord {
        id: id.clone(),
        max_unavailable: spec.strategy.max_unavailable.resolve(targets.len()),
        targets,
        spec,
        phase: Phase::Rolling,
        reason: String::new(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    let active = keys.active(&record.spec.service);
    let txn = Txn::new()
        .when(vec![
            Compare::version(active.clone(), CompareOp::Equal, 0),
            Compare::version(keys.rollout(&id), CompareOp::Equal, 0),
        ])
        .and_then(vec![
            TxnOp::put(keys.rollout(&id), encode(&record), None),
            TxnOp::put(active.clone(), id.clone(), None),
        ]);
    if !etcd.txn(txn).await?.succeeded() {
        let resp = etcd.get(active, None).await?;
        let other = resp
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok())
            .unwrap_or("?")
            .to_string();
        return Err(ControlError::Conflict(format!(
            "service {} already has an active rollout {other}: wait for it to end, or `rollgate \
             rollout abort {other}` (a rollout that ended keeps the service until its last \
             hosts finish)",
            record.spec.service
        )));
    }
    tracing::info!(rollout = %id, service = %record.spec.service, version = %record.spec.release.version, targets = record.targets.len(), max_unavailable = record.max_unavailable, "rollout created");
    Ok(record)
}

fn resolve_targets(spec: &RolloutSpec, fleet: &FleetView) -> Result<Vec<String>, ControlError> {
    let svc = &spec.service;
    let mut targets = Vec::new();
    if !spec.targets.hosts.is_empty() {
        for h in &spec.targets.hosts {
            let Some(rec) = fleet.hosts.get(h) else {
                return Err(ControlError::Invalid(format!(
                    "targets.hosts names {h}, which has never connected to this coordinator; \
                     `rollgate hosts` lists the known hosts"
                )));
            };
            if !rec.services.contains_key(svc) {
                return Err(ControlError::Invalid(format!(
                    "targets.hosts names {h}, whose agent does not manage service {svc}; add it \
                     to that agent's config or remove the host from the spec"
                )));
            }
            if !targets.contains(h) {
                targets.push(h.clone());
            }
        }
    } else {
        for (h, rec) in &fleet.hosts {
            let labels_match = spec
                .targets
                .labels
                .iter()
                .all(|(k, v)| rec.labels.get(k) == Some(v));
            if labels_match && rec.services.contains_key(svc) {
                targets.push(h.clone());
            }
        }
    }
    if targets.is_empty() {
        return Err(ControlError::Invalid(format!(
            "no host matches the spec's targets for service {svc}: no known host whose agent \
             manages {svc}{}. `rollgate hosts` lists what the coordinator knows",
            if spec.targets.labels.is_empty() {
                String::new()
            } else {
                format!(" and has labels {:?}", spec.targets.labels)
            }
        )));
    }
    Ok(targets)
}

/// Resolves "" to the most recent rollout's id.
pub async fn resolve_id(ctx: &Arc<Ctx>, id: &str) -> Result<String, ControlError> {
    if !id.is_empty() {
        return Ok(id.to_string());
    }
    let mut etcd = ctx.etcd.clone();
    store::list_rollouts(&mut etcd, &ctx.keys)
        .await?
        .into_iter()
        .next()
        .map(|r| r.id)
        .ok_or_else(|| {
            ControlError::NotFound(
                "there are no rollouts yet; start one with `rollgate rollout start SPEC.toml`"
                    .into(),
            )
        })
}

/// The status of one rollout, as the CLI shows it.
pub async fn status(ctx: &Arc<Ctx>, id: &str) -> Result<pb::RolloutStatus, ControlError> {
    let id = resolve_id(ctx, id).await?;
    let mut etcd = ctx.etcd.clone();
    let fleet = store::read_fleet(&mut etcd, &ctx.keys).await?;
    let view = store::read_rollout(&mut etcd, &ctx.keys, &id, fleet.revision)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(render(&view, &fleet))
}

fn not_found(id: &str) -> ControlError {
    ControlError::NotFound(format!(
        "no rollout {id}; `rollgate rollout list` shows the rollouts"
    ))
}

/// Builds the wire status from what is stored; `unavailable` and `blocked_by` come from the same
/// planner the driver uses, so what the operator sees is what the leader decides on.
pub fn render(view: &RolloutView, fleet: &FleetView) -> pb::RolloutStatus {
    let r = &view.rollout;
    let plan = planner::plan_view(view, fleet);
    let hosts: Vec<pb::HostProgress> = r
        .targets
        .iter()
        .map(|h| {
            let step = view.steps.get(h).cloned().unwrap_or_else(HostStep::pending);
            let svc = fleet
                .hosts
                .get(h)
                .and_then(|rec| rec.services.get(&r.spec.service))
                .cloned()
                .unwrap_or_default();
            let slot = view.slots.get(h);
            pb::HostProgress {
                host_id: h.clone(),
                state: step.state.to_string(),
                step: step.step,
                message: step.message,
                reason: step.reason,
                connected: fleet.connected.contains(h),
                running_version: svc.version,
                token: slot.map(|s| s.token).unwrap_or(step.token),
                holds_slot: slot.is_some(),
                health: pb::Health::from(svc.health) as i32,
            }
        })
        .collect();
    let count = |st: HostState| view.steps.values().filter(|s| s.state == st).count() as u32;
    pb::RolloutStatus {
        id: r.id.clone(),
        service: r.spec.service.clone(),
        version: r.spec.release.version.clone(),
        phase: r.phase.to_string(),
        blocked_by: if r.phase.is_terminal() {
            String::new()
        } else {
            plan.blocked_by
        },
        max_unavailable: r.max_unavailable,
        unavailable: plan.unavailable.len() as u32,
        total: r.targets.len() as u32,
        done: count(HostState::Done),
        failed: count(HostState::Failed) + count(HostState::RolledBack),
        hosts,
        reason: r.reason.clone(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        max_failures: r.spec.strategy.max_failures,
    }
}

/// Every rollout, newest first.
pub async fn list(ctx: &Arc<Ctx>) -> Result<Vec<pb::RolloutStatus>, ControlError> {
    let mut etcd = ctx.etcd.clone();
    let fleet = store::read_fleet(&mut etcd, &ctx.keys).await?;
    let mut out = Vec::new();
    for r in store::list_rollouts(&mut etcd, &ctx.keys).await? {
        if let Some(view) = store::read_rollout(&mut etcd, &ctx.keys, &r.id, fleet.revision).await?
        {
            let mut s = render(&view, &fleet);
            s.hosts.clear();
            out.push(s);
        }
    }
    Ok(out)
}

/// An operator's phase change.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Stop granting slots.
    Pause,
    /// Grant slots again.
    Resume,
    /// End the rollout for good.
    Abort,
}

/// Applies a phase change with compare-and-set, retrying if the leader wrote in between.
pub async fn act(
    ctx: &Arc<Ctx>,
    id: &str,
    action: Action,
) -> Result<pb::RolloutStatus, ControlError> {
    let id = resolve_id(ctx, id).await?;
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    for _ in 0..CAS_ATTEMPTS {
        let resp = etcd.get(keys.rollout(&id), None).await?;
        let kv = resp.kvs().first().ok_or_else(|| not_found(&id))?;
        let mut r: RolloutRecord = decode(kv)?;
        let (from_ok, to, reason) = match action {
            Action::Pause => (
                r.phase == Phase::Rolling,
                Phase::Paused,
                "paused by an operator",
            ),
            Action::Resume => (r.phase == Phase::Paused, Phase::Rolling, ""),
            Action::Abort => (
                !r.phase.is_terminal(),
                Phase::Aborted,
                "aborted by an operator; hosts already updating finish on their own",
            ),
        };
        if !from_ok {
            return Err(ControlError::Conflict(format!(
                "rollout {id} is {}; cannot {}",
                r.phase,
                match action {
                    Action::Pause => "pause it (only a rolling rollout can be paused)",
                    Action::Resume => "resume it (only a paused rollout can be resumed)",
                    Action::Abort => "abort it (it has already ended)",
                }
            )));
        }
        r.phase = to;
        r.reason = reason.to_string();
        r.updated_at_ms = now_ms();
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                keys.rollout(&id),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then(vec![TxnOp::put(keys.rollout(&id), encode(&r), None)]);
        if etcd.txn(txn).await?.succeeded() {
            tracing::info!(rollout = %id, phase = %to, "operator changed the rollout's phase");
            return status(ctx, &id).await;
        }
    }
    Err(ControlError::Conflict(format!(
        "rollout {id} kept changing while trying to update it; try again"
    )))
}

/// Every host the coordinator has seen.
pub async fn hosts(ctx: &Arc<Ctx>) -> Result<Vec<pb::HostInfo>, ControlError> {
    let mut etcd = ctx.etcd.clone();
    let fleet = store::read_fleet(&mut etcd, &ctx.keys).await?;
    Ok(fleet
        .hosts
        .values()
        .map(|h| pb::HostInfo {
            host_id: h.host_id.clone(),
            labels: h.labels.clone().into_iter().collect(),
            connected: fleet.connected.contains(&h.host_id),
            agent_version: h.agent_version.clone(),
            services: h
                .services
                .iter()
                .map(|(name, s)| pb::ServiceStatus {
                    service: name.clone(),
                    version: s.version.clone(),
                    sha256: s.sha256.clone(),
                    health: pb::Health::from(s.health) as i32,
                    detail: s.detail.clone(),
                })
                .collect(),
            last_seen_ms: h.last_seen_ms,
        })
        .collect())
}

/// Records a pushed artifact's metadata.
pub async fn record_artifact(ctx: &Arc<Ctx>, sha256: &str, size: u64) -> Result<(), ControlError> {
    let rec = ArtifactRecord {
        sha256: sha256.to_string(),
        size,
        stored_by: ctx.config.replica_id.clone(),
        pushed_at_ms: now_ms(),
    };
    ctx.etcd
        .clone()
        .put(ctx.keys.artifact(sha256), encode(&rec), None)
        .await?;
    Ok(())
}
