//! Operator actions: create (and dry-run plan), inspect, pause, resume, promote, abort and roll
//! back rollouts; list, fence and forget hosts; release history. Each is a read or a
//! compare-and-set transaction in etcd, so any replica can serve it and a success means the
//! change is durable (S6).

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use rollgate_proto::pb;
use rollgate_proto::spec::{Gate, RolloutSpec, SpecError};
use thiserror::Error;

use crate::planner::{self, GateWait, Progress};
use crate::store::OperatorStamp;
use crate::store::{
    self, decode, encode, now_ms, ArtifactRecord, FleetView, HostStep, Phase, RolloutRecord,
    RolloutView, StoreError,
};
use crate::Ctx;

pub mod fence;
pub mod pins;
mod rollback;

pub use fence::fence_host;
pub use rollback::{rollback, start_rollback, Basis};

/// How many times a compare-and-set is retried when another writer got in between.
pub(crate) const CAS_ATTEMPTS: usize = 5;

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

/// Validates a spec against the store and the fleet; `check_store` requires a `store:` artifact
/// to be pushed already (a dry-run plan does not).
async fn prepare(
    ctx: &Arc<Ctx>,
    spec_toml: &str,
    check_store: bool,
) -> Result<(RolloutRecord, FleetView), ControlError> {
    let spec = RolloutSpec::parse_resolved(spec_toml)?;
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    if spec.release.source == "store:" && check_store {
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
    if let Some(label) = &spec.strategy.group_by {
        let missing: Vec<&str> = targets
            .iter()
            .filter(|h| {
                fleet
                    .hosts
                    .get(*h)
                    .is_none_or(|r| !r.labels.contains_key(label))
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(ControlError::Invalid(format!(
                "strategy.group_by = {label:?}, but these targets have no {label:?} label: {}. \
                 Add the label to their agents' configs or choose another label",
                missing.join(", ")
            )));
        }
    }
    let previous = store::history(&mut etcd, keys, &spec.service)
        .await?
        .into_iter()
        .find(|h| h.release.sha256 != spec.release.sha256)
        .map(|h| h.release);
    let (groups, group_budgets) = freeze_groups(&spec, &targets, &fleet);
    let now = now_ms();
    let record = RolloutRecord {
        id: new_rollout_id(),
        max_unavailable: spec.strategy.max_unavailable.resolve(targets.len()),
        targets,
        spec,
        phase: Phase::Rolling,
        reason: String::new(),
        created_at_ms: now,
        updated_at_ms: now,
        wave: 0,
        tolerated_failures: 0,
        previous,
        rollback_of: None,
        rolled_back_by: None,
        groups,
        group_budgets,
        wave_done: None,
        created_by: None,
        operator: None,
    };
    Ok((record, fleet))
}

/// A new rollout id: 64 random bits, so that an id is never reused in practice (an etcd
/// restore followed by new rollouts must not meet an old id in agents' journals).
pub(crate) fn new_rollout_id() -> String {
    format!("r-{:016x}", rand::thread_rng().gen::<u64>())
}

/// With `group_by`: each host's group (the targets and every other host of the service, as
/// labelled now) and each target group's budget, fixed for the rollout's life (S1).
pub(crate) fn freeze_groups(
    spec: &RolloutSpec,
    targets: &[String],
    fleet: &FleetView,
) -> (BTreeMap<String, String>, BTreeMap<String, u32>) {
    let (Some(label), Some(per)) = (
        &spec.strategy.group_by,
        spec.strategy.max_unavailable_per_group,
    ) else {
        return Default::default();
    };
    let groups: BTreeMap<String, String> = fleet
        .hosts
        .iter()
        .filter(|(h, rec)| targets.contains(h) || rec.services.contains_key(&spec.service))
        .filter_map(|(h, rec)| Some((h.clone(), rec.labels.get(label)?.clone())))
        .collect();
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for g in targets.iter().filter_map(|h| groups.get(h)) {
        *sizes.entry(g.clone()).or_default() += 1;
    }
    let budgets = sizes
        .into_iter()
        .map(|(g, n)| (g, per.resolve(n)))
        .collect();
    (groups, budgets)
}

/// Validates a spec, resolves its targets and stores the rollout, claiming the service.
pub async fn create(
    ctx: &Arc<Ctx>,
    spec_toml: &str,
    by: Option<String>,
) -> Result<RolloutRecord, ControlError> {
    let (mut record, _) = prepare(ctx, spec_toml, true).await?;
    record.created_by = by;
    store_new_rollout(ctx, &record, Vec::new(), Vec::new()).await?;
    tracing::info!(rollout = %record.id, service = %record.spec.service, version = %record.spec.release.version, targets = record.targets.len(), max_unavailable = record.max_unavailable, "rollout created");
    Ok(record)
}

/// Stores a new rollout and makes it the service's active one, in one transaction (one active
/// rollout per service). `compares`/`ops` join the transaction (a rollback also settles the
/// rollout it replaces).
pub(crate) async fn store_new_rollout(
    ctx: &Arc<Ctx>,
    record: &RolloutRecord,
    mut compares: Vec<Compare>,
    mut ops: Vec<TxnOp>,
) -> Result<(), ControlError> {
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    let active = keys.active(&record.spec.service);
    compares.push(Compare::version(
        keys.rollout(&record.id),
        CompareOp::Equal,
        0,
    ));
    if record.rollback_of.is_none() {
        compares.push(Compare::version(active.clone(), CompareOp::Equal, 0));
    }
    ops.push(TxnOp::put(keys.rollout(&record.id), encode(record), None));
    ops.push(TxnOp::put(active.clone(), record.id.clone(), None));
    if etcd
        .txn(Txn::new().when(compares).and_then(ops))
        .await?
        .succeeded()
    {
        return Ok(());
    }
    let resp = etcd.get(active, None).await?;
    let other = resp
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok())
        .unwrap_or("")
        .to_string();
    if other.is_empty() || record.rollback_of.is_some() {
        return Err(ControlError::Conflict(format!(
            "rollout {} changed while starting {}; try again",
            record.rollback_of.as_deref().unwrap_or("of this service"),
            record.id
        )));
    }
    Err(ControlError::Conflict(format!(
        "service {} already has an active rollout {other}: wait for it to end, or `rollgate \
         rollout abort {other}`",
        record.spec.service
    )))
}

/// Dry run: what a spec would target and how, and what would block it right now.
pub async fn plan(ctx: &Arc<Ctx>, spec_toml: &str) -> Result<pb::RolloutPlan, ControlError> {
    let (record, fleet) = prepare(ctx, spec_toml, false).await?;
    // Staging is the rollout's first step, not something blocking it now.
    let staged = record
        .targets
        .iter()
        .map(|h| {
            let ok = store::StageRecord {
                ok: true,
                reason: String::new(),
                at_ms: 0,
            };
            (h.clone(), ok)
        })
        .collect();
    let view = RolloutView {
        rollout: record,
        rollout_rev: 0,
        steps: Default::default(),
        staged,
    };
    let p = planner::plan_view(&view, &fleet, now_ms(), None).report;
    let r = &view.rollout;
    let st = &r.spec.strategy;
    let mut waves = Vec::new();
    let mut from = 0;
    for (i, end) in p.waves.iter().enumerate() {
        let canary = i == 0 && st.canary.is_some();
        let last = i + 1 == p.waves.len();
        waves.push(pb::WavePlan {
            name: if canary {
                "canary".into()
            } else {
                format!("wave {}", i + u32::from(st.canary.is_none()) as usize)
            },
            hosts: r.targets[from..*end].to_vec(),
            gate_after: match (last, canary, st.canary_gate) {
                (true, _, _) => String::new(),
                (false, true, Gate::Manual) => "manual promote".into(),
                (false, true, Gate::Bake(d)) => format!("bake {}", rollgate_proto::spec::human(d)),
                (false, false, _) if st.pause_between_waves.is_zero() => String::new(),
                (false, false, _) => format!(
                    "pause {}",
                    rollgate_proto::spec::human(st.pause_between_waves)
                ),
            },
        });
        from = *end;
    }
    let mut blocked_by = planner::explain::blocked_by(&p);
    let mut etcd = ctx.etcd.clone();
    let resp = etcd.get(ctx.keys.active(&r.spec.service), None).await?;
    if let Some(other) = resp.kvs().first().and_then(|kv| kv.value_str().ok()) {
        blocked_by = format!(
            "service {} already has an active rollout {other}",
            r.spec.service
        );
    }
    Ok(pb::RolloutPlan {
        service: r.spec.service.clone(),
        version: r.spec.release.version.clone(),
        targets: r.targets.clone(),
        max_unavailable: r.max_unavailable,
        max_failures: st.max_failures.resolve(r.targets.len()),
        waves,
        group_by: st.group_by.clone().unwrap_or_default(),
        groups: groups_pb(&p),
        unavailable_now: p
            .unavailable
            .iter()
            .map(|(h, w)| format!("{h}: {w:?}").to_lowercase())
            .collect(),
        blocked_by,
    })
}

fn groups_pb(p: &planner::Report) -> Vec<pb::GroupBudget> {
    p.groups
        .iter()
        .map(|g| pb::GroupBudget {
            group: g.group.clone(),
            hosts: g.hosts,
            max_unavailable: g.max_unavailable,
            unavailable: g.unavailable,
        })
        .collect()
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
        .records
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

pub(crate) fn not_found(id: &str) -> ControlError {
    ControlError::NotFound(format!(
        "no rollout {id}; `rollgate rollout list` shows the rollouts"
    ))
}

/// Builds the wire status from what is stored; `unavailable`, `blocked_by` and host states come
/// from the same planner the driver uses, so what the operator sees is what the leader decides
/// on.
pub fn render(view: &RolloutView, fleet: &FleetView) -> pb::RolloutStatus {
    let r = &view.rollout;
    let now = now_ms();
    let plan = planner::plan_view(view, fleet, now, None).report;
    let observed = planner::Observed {
        rollout: r,
        steps: &view.steps,
        staged: &view.staged,
        fleet,
        now_ms: now,
        progress_seen_ms: None,
    };
    let wave_of = |i: usize| plan.waves.iter().position(|end| i < *end).unwrap_or(0) as u32;
    let label = r.spec.strategy.group_by.clone().unwrap_or_default();
    let mut counts = std::collections::BTreeMap::<Progress, u32>::new();
    let hosts: Vec<pb::HostProgress> = r
        .targets
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let step = view.steps.get(h).cloned().unwrap_or_else(HostStep::pending);
            let svc = fleet
                .hosts
                .get(h)
                .and_then(|rec| rec.services.get(&r.spec.service))
                .cloned()
                .unwrap_or_default();
            let progress = planner::progress(&observed, h);
            *counts.entry(progress).or_default() += 1;
            pb::HostProgress {
                host_id: h.clone(),
                state: pb::HostState::from(progress) as i32,
                step: pb::Step::from(step.step) as i32,
                message: step.message,
                reason: step.reason,
                connected: fleet.is_connected(h),
                running_version: svc.version,
                token: step.token,
                holds_slot: fleet.slot(&r.spec.service, h).is_some(),
                health: pb::Health::from(svc.health) as i32,
                group: match r.groups.get(h) {
                    _ if label.is_empty() => String::new(),
                    Some(g) => g.clone(),
                    None => planner::group_of(fleet, &label, h),
                },
                wave: wave_of(i),
                staged: view.staged.get(h).is_some_and(|s| s.ok),
            }
        })
        .collect();
    let count = |p: Progress| counts.get(&p).copied().unwrap_or(0);
    pb::RolloutStatus {
        id: r.id.clone(),
        service: r.spec.service.clone(),
        version: r.spec.release.version.clone(),
        phase: pb::Phase::from(r.phase) as i32,
        blocked_by: if r.phase.is_terminal() {
            String::new()
        } else {
            planner::explain::blocked_by(&plan)
        },
        max_unavailable: r.max_unavailable,
        unavailable: plan.unavailable.len() as u32,
        total: r.targets.len() as u32,
        done: count(Progress::Done),
        failed: plan
            .failures
            .len()
            .max((count(Progress::Failed) + count(Progress::RolledBack)) as usize)
            as u32,
        hosts,
        reason: r.reason.clone(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        max_failures: r.spec.strategy.max_failures.resolve(r.targets.len()),
        wave: r.wave,
        waves: plan.waves.len() as u32,
        gate: if r.phase.is_terminal() {
            String::new()
        } else {
            planner::explain::gate(&plan)
        },
        gate_kind: match plan.gate() {
            _ if r.phase.is_terminal() => pb::GateKind::None,
            None => pb::GateKind::None,
            Some(GateWait::Promote { .. }) => pb::GateKind::ManualPromote,
            Some(GateWait::Starting { .. }) => pb::GateKind::Starting,
            Some(GateWait::Bake { .. }) => pb::GateKind::Bake,
            Some(GateWait::Pause { .. }) => pb::GateKind::Pause,
        } as i32,
        groups: groups_pb(&plan),
        rollback_of: r.rollback_of.clone().unwrap_or_default(),
        rolled_back_by: r.rolled_back_by.clone().unwrap_or_default(),
        on_failure: pb::OnFailure::from(r.spec.strategy.on_failure) as i32,
        group_by: label,
        staged: view.staged.values().filter(|s| s.ok).count() as u32,
        unreadable: String::new(),
        created_by: r.created_by.clone().unwrap_or_default(),
        image: r.spec.release.image.clone().unwrap_or_default(),
    }
}

impl From<Progress> for pb::HostState {
    fn from(p: Progress) -> Self {
        match p {
            Progress::Pending => pb::HostState::Pending,
            Progress::Updating => pb::HostState::Updating,
            Progress::Lost => pb::HostState::Lost,
            Progress::Interrupted => pb::HostState::Interrupted,
            Progress::Done => pb::HostState::Done,
            Progress::RolledBack => pb::HostState::RolledBack,
            Progress::Failed => pb::HostState::Failed,
        }
    }
}

/// Every rollout, newest first; one that cannot be read is listed as `unreadable`, naming the
/// key, and the others as usual (S9: one bad record degrades one rollout).
pub async fn list(ctx: &Arc<Ctx>) -> Result<Vec<pb::RolloutStatus>, ControlError> {
    let mut etcd = ctx.etcd.clone();
    let fleet = store::read_fleet(&mut etcd, &ctx.keys).await?;
    let all = store::list_rollouts(&mut etcd, &ctx.keys).await?;
    let mut out = Vec::new();
    for r in all.records {
        match store::read_rollout(&mut etcd, &ctx.keys, &r.id, fleet.revision).await {
            Ok(Some(view)) => {
                let mut s = render(&view, &fleet);
                s.hosts.clear();
                out.push(s);
            }
            Ok(None) => {}
            Err(e @ StoreError::Corrupt { .. }) => out.push(unreadable(&r.id, &e)),
            Err(e) => return Err(e.into()),
        }
    }
    out.extend(all.unreadable.iter().map(|(id, e)| unreadable(id, e)));
    Ok(out)
}

/// The list entry of a rollout that cannot be read.
fn unreadable(id: &str, e: &StoreError) -> pb::RolloutStatus {
    tracing::warn!(rollout = %rollgate_proto::text::printable(id), "listing rollout as unreadable: {e}");
    pb::RolloutStatus {
        id: id.to_string(),
        // Not a phase: the entry says why in `unreadable`.
        phase: pb::Phase::Unspecified as i32,
        reason: e.to_string(),
        unreadable: e.to_string(),
        ..Default::default()
    }
}

/// An operator's phase change.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Stop granting slots.
    Pause,
    /// Grant slots again (accepting the failures so far, if the failure policy paused it).
    Resume,
    /// Open the gate the rollout waits at.
    Promote,
    /// End the rollout for good.
    Abort,
}

/// Applies a phase change with compare-and-set, retrying if the leader wrote in between.
pub async fn act(
    ctx: &Arc<Ctx>,
    id: &str,
    action: Action,
    by: Option<String>,
) -> Result<pb::RolloutStatus, ControlError> {
    let id = resolve_id(ctx, id).await?;
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    for _ in 0..CAS_ATTEMPTS {
        let fleet = store::read_fleet(&mut etcd, keys).await?;
        let view = store::read_rollout(&mut etcd, keys, &id, fleet.revision)
            .await?
            .ok_or_else(|| not_found(&id))?;
        let plan = planner::plan_view(&view, &fleet, now_ms(), None).report;
        let mut r = view.rollout.clone();
        let refuse = |why: &str| {
            Err(ControlError::Conflict(format!(
                "rollout {id} is {}; cannot {why}",
                r.phase
            )))
        };
        match action {
            Action::Pause if r.phase == Phase::Rolling => {
                r.phase = Phase::Paused;
                r.reason = "paused by an operator; `rollgate rollout resume` goes on".into();
            }
            Action::Pause => return refuse("pause it (only a rolling rollout can be paused)"),
            Action::Resume if r.phase == Phase::Paused => {
                r.phase = Phase::Rolling;
                r.reason.clear();
                r.tolerated_failures = r.tolerated_failures.max(plan.failures.len() as u32);
            }
            Action::Resume => return refuse("resume it (only a paused rollout can be resumed)"),
            Action::Promote if r.phase == Phase::Rolling && plan.gate().is_some() => {
                r.wave += 1;
            }
            Action::Promote => {
                return refuse(
                    "promote it: it is not waiting at a gate (see `rollgate rollout status`)",
                )
            }
            Action::Abort if !r.phase.is_terminal() => {
                r.phase = Phase::Aborted;
                r.reason =
                    "aborted by an operator; hosts already updating finish on their own".into();
            }
            Action::Abort => return refuse("abort it (it has already ended)"),
        }
        r.updated_at_ms = now_ms();
        r.operator = by.clone().map(|by| OperatorStamp {
            by,
            at_ms: r.updated_at_ms,
        });
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                keys.rollout(&id),
                CompareOp::Equal,
                view.rollout_rev,
            )])
            .and_then(vec![TxnOp::put(keys.rollout(&id), encode(&r), None)]);
        if etcd.txn(txn).await?.succeeded() {
            tracing::info!(rollout = %id, phase = %r.phase, wave = r.wave, ?action, "operator action applied");
            return status(ctx, &id).await;
        }
    }
    Err(ControlError::Conflict(format!(
        "rollout {id} kept changing while trying to update it; try again"
    )))
}

/// A service's release history, newest first.
pub async fn history(ctx: &Arc<Ctx>, service: &str) -> Result<Vec<pb::HistoryEntry>, ControlError> {
    rollgate_proto::names::check("service name", service)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let mut etcd = ctx.etcd.clone();
    Ok(store::history(&mut etcd, &ctx.keys, service)
        .await?
        .into_iter()
        .map(|h| pb::HistoryEntry {
            version: h.release.version,
            sha256: h.release.sha256,
            size: h.release.size,
            source: h.release.source,
            rollout_id: h.rollout_id,
            at_ms: h.at_ms,
        })
        .collect())
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
            connected: fleet.is_connected(&h.host_id),
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
                    regressed: s.regressed,
                    ..Default::default()
                })
                .collect(),
            last_seen_ms: h.last_seen_ms,
            pinned: fleet.pins.contains_key(&h.host_id),
            overridden: fleet
                .overridden
                .get(&h.host_id)
                .map(|o| o.join("; "))
                .unwrap_or_default(),
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

/// Copies an artifact that was pushed to another replica into this replica's store, verifying
/// its digest, so agents streaming to any replica can fetch any `store:` release.
pub async fn copy_artifact_from_peer(ctx: &Arc<Ctx>, sha256: &str) -> Result<(), tonic::Status> {
    use rollgate_proto::pb::agent_service_client::AgentServiceClient;
    let mut etcd = ctx.etcd.clone();
    let unavailable = |e: String| tonic::Status::unavailable(e);
    let resp = etcd
        .get(ctx.keys.artifact(sha256), None)
        .await
        .map_err(|e| unavailable(format!("cannot read artifact metadata: {e}")))?;
    let Some(kv) = resp.kvs().first() else {
        return Err(tonic::Status::not_found(format!(
            "no artifact sha256:{sha256} was pushed to this fleet; push it with `rollgate artifact push FILE`"
        )));
    };
    let art: ArtifactRecord = decode(kv).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let resp = etcd
        .get(ctx.keys.replica(&art.stored_by), None)
        .await
        .map_err(|e| unavailable(format!("cannot look up replica {}: {e}", art.stored_by)))?;
    let Some(url) = resp
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok())
        .map(str::to_string)
    else {
        return Err(unavailable(format!(
            "artifact sha256:{sha256} is stored on replica {}, which is not running; start it, or push the artifact again",
            art.stored_by
        )));
    };
    let settings = |e: tonic::transport::Endpoint| {
        e.connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(600))
    };
    let unreachable = |e: String| {
        unavailable(format!(
            "cannot reach replica {} at {url}: {e}",
            art.stored_by
        ))
    };
    let channel = match &ctx.tls {
        // Replicas fetch from each other with their own (coordinator) certificate, and only
        // from a server whose certificate names a coordinator of this fleet.
        Some(tls) => rollgate_proto::tls::dial(&url, settings, &tls.files())
            .await
            .map_err(|e| unreachable(crate::tls::chain(&e)))?,
        None => settings(
            tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| unreachable(e.to_string()))?,
        )
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?,
    };
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(rollgate_proto::MAX_MESSAGE_BYTES);
    let mut stream = client
        .fetch_artifact(pb::FetchArtifactRequest {
            sha256: sha256.to_string(),
            offset: 0,
        })
        .await?
        .into_inner();
    let mut upload = ctx.artifacts.upload(ctx.config.max_artifact_store_bytes)?;
    while let Some(chunk) = stream.message().await? {
        upload.write(&chunk.data).await?;
    }
    let (got, size) = upload.finish().await?;
    if got != sha256 || size != art.size {
        let _ = std::fs::remove_file(ctx.artifacts.path(&got));
        return Err(tonic::Status::data_loss(format!(
            "replica {} served sha256:{got} ({size} bytes) for sha256:{sha256} ({} bytes); not kept",
            art.stored_by, art.size
        )));
    }
    tracing::info!(%sha256, from = %art.stored_by, "copied artifact from another replica");
    Ok(())
}
