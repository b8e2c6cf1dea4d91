//! The leader's grants: the slots a round hands out, in fenced transactions of up to
//! [`GRANTS_PER_TXN`] hosts, the first carrying the results the round planned with
//! ([`crate::handover`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, LeaderKey, PutOptions, Txn, TxnOp};
use tracing::{info, warn};

use super::fence;
use crate::handover::Carry;
use crate::metrics::ServiceLabel;
use crate::planner::Unavailable;
use crate::store::{
    encode, now_ms, FleetView, HostState, HostStep, RolloutRecord, RolloutView, SlotRecord,
    StoreError,
};
use crate::Ctx;

/// The slot a grant hands `host`, and the step it records.
fn grant_records(
    ctx: &Ctx,
    r: &RolloutRecord,
    host: &str,
    token: u64,
    now: i64,
) -> (SlotRecord, HostStep) {
    let slot = SlotRecord {
        rollout_id: r.id.clone(),
        token,
        host_id: host.to_string(),
        service: r.spec.service.clone(),
        version: r.spec.release.version.clone(),
        source: r.spec.release.source.clone(),
        sha256: r.spec.release.sha256.clone(),
        size: r.spec.release.size,
        signature: r.spec.release.signature.clone(),
        rollback: r.rollback_of.is_some(),
        min_healthy_time_ms: r.spec.strategy.min_healthy_time.as_millis() as u64,
        healthy_deadline_ms: r.spec.strategy.healthy_deadline.as_millis() as u64,
        granted_by: ctx.config.replica_id.clone(),
        granted_at_ms: now,
    };
    let step = HostStep {
        state: HostState::Updating,
        token,
        granted_at_ms: now,
        message: "slot granted; order sent".into(),
        ..HostStep::pending()
    };
    (slot, step)
}

/// What a round's grants rest on: the fleet and the rollout as planned, and the hosts out of
/// service as planned (for the count the log shows).
pub(super) struct GrantBasis<'a> {
    pub(super) fleet: &'a FleetView,
    pub(super) view: &'a RolloutView,
    pub(super) unavailable: &'a [(String, Unavailable)],
}

/// Grants the planned slots, up to [`GRANTS_PER_TXN`] hosts per fenced transaction, handing out
/// increasing tokens; the first transaction also writes the `carry`ed results. Returns the
/// revision of that first transaction, or `None` when etcd refused it (nothing was written).
pub(super) async fn grant(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    basis: &GrantBasis<'_>,
    hosts: &[String],
    counter: &mut (u64, i64),
    carry: &[Carry],
) -> Result<Option<i64>, StoreError> {
    let r = &basis.view.rollout;
    let mut etcd = ctx.etcd.clone();
    let mut count = basis.unavailable.len();
    let mut freed_at = handed_over_at(basis.view);
    let connected: Vec<(&str, i64)> = hosts
        .iter()
        .filter_map(|h| Some((h.as_str(), *basis.fleet.connected.get(h)?)))
        .collect();
    let mut first = None;
    for (i, chunk) in grant_chunks(&connected, carry.len()).enumerate() {
        let carried = if i == 0 { carry } else { &[] };
        // The counter as read at the start of the round (each grant's txn compares its mod
        // revision, so a stale value grants nothing).
        let (txn, granted) = grant_txn(ctx, leader, basis, chunk, *counter, carried);
        let what = format!("grant of {} in rollout {}", hosts_word(&granted), r.id);
        crate::fault::pause(crate::fault::PausePoint::BeforeGrantCommit, &what).await;
        let resp = match etcd.txn(txn).await {
            Ok(resp) => resp,
            Err(e) if too_many_ops(&e) => {
                grant_chunk_refused(chunk.len() + carried.len(), &e);
                return Ok(first);
            }
            Err(e) => return Err(e.into()),
        };
        if !resp.succeeded() {
            if deposed(&resp, leader) {
                warn!(
                    rollout = %r.id, hosts = %hosts_word(&granted),
                    "etcd refused this grant: this replica no longer leads (its election key is \
                     gone), so nothing was granted; the new leader plans again"
                );
            }
            // Something changed since the read; the watch brings the next round.
            return Ok(first);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        first.get_or_insert(revision);
        let top = granted.last().map_or(counter.0, |(_, s)| s.token);
        *counter = (top, revision);
        for (host, slot) in granted {
            count += usize::from(!basis.unavailable.iter().any(|(h, _)| h == host));
            count_grant(ctx, r, freed_at.take());
            let token = slot.token;
            info!(
                rollout = %r.id, %host, token, unavailable = count, budget = r.max_unavailable,
                revision, "slot granted"
            );
            // A host served here gets its order now, not when etcd's watch reports the slot.
            if ctx.hub.send_granted(&slot).await {
                info!(rollout = %r.id, %host, token, version = %slot.version, "order sent");
            }
        }
    }
    Ok(first)
}

/// Hosts granted in one transaction: etcd refuses more than 128 compares or operations in one
/// (its default `--max-txn-ops`); each host adds three compares and two puts.
const GRANTS_PER_TXN: usize = 32;

/// Hosts per grant transaction in this process: [`GRANTS_PER_TXN`], or one after etcd refused
/// a transaction as too large (an etcd run with a lower `--max-txn-ops`).
static GRANT_CHUNK: AtomicUsize = AtomicUsize::new(GRANTS_PER_TXN);

/// The planned hosts in transaction-sized chunks; the first leaves room for `carried` results
/// (three compares each).
fn grant_chunks<'a, 'h>(
    hosts: &'a [(&'h str, i64)],
    carried: usize,
) -> impl Iterator<Item = &'a [(&'h str, i64)]> {
    let size = GRANT_CHUNK.load(Ordering::Relaxed);
    let first = size.saturating_sub(carried).max(1).min(hosts.len());
    let (head, rest) = hosts.split_at(first);
    std::iter::once(head)
        .filter(|h| !h.is_empty())
        .chain(rest.chunks(size))
}

/// Whether etcd refused a transaction for its number of operations (`--max-txn-ops`).
fn too_many_ops(e: &etcd_client::Error) -> bool {
    e.to_string().contains("too many operations in txn request")
}

/// An etcd that refused a grant transaction of `size` hosts and results as too large: from now
/// on this process grants one host per transaction.
fn grant_chunk_refused(size: usize, e: &etcd_client::Error) {
    if GRANT_CHUNK.swap(1, Ordering::Relaxed) > 1 {
        warn!(
            "etcd refused a grant of {size} hosts and results in one transaction ({e}): its \
             --max-txn-ops is below the 128 rollgate expects; granting one host per \
             transaction from now on (slower hand-overs); raise --max-txn-ops to 128 or more"
        );
    }
}

/// One transaction granting `chunk` (host, its session's lease) the next tokens after
/// `counter`, all or none, and writing the `carried` results; with the hosts it grants and
/// their slots.
fn grant_txn<'a>(
    ctx: &Ctx,
    leader: &LeaderKey,
    basis: &GrantBasis<'_>,
    chunk: &[(&'a str, i64)],
    counter: (u64, i64),
    carried: &[Carry],
) -> (Txn, Vec<(&'a str, SlotRecord)>) {
    let (keys, r, fleet) = (&ctx.keys, &basis.view.rollout, basis.fleet);
    let (last_token, token_rev) = counter;
    // S3: only the current leader grants; the rollout is unchanged since it was read (a pause
    // in between wins); tokens only grow; a host holds one slot per service and is granted
    // once per rollout; its stream is still where the slot's lease says.
    let mut compares = vec![
        fence(leader),
        Compare::mod_revision(
            keys.rollout(&r.id),
            CompareOp::Equal,
            basis.view.rollout_rev,
        ),
        Compare::mod_revision(keys.token(), CompareOp::Equal, token_rev),
    ];
    let top = last_token + chunk.len() as u64;
    let mut ops = vec![TxnOp::put(keys.token(), encode(&top), None)];
    // The results this grant rests on, with everything their sessions compare.
    for c in carried {
        compares.extend(c.offer.compares.iter().cloned());
        ops.extend(c.offer.ops.iter().cloned());
    }
    let mut granted = Vec::with_capacity(chunk.len());
    for (i, &(host, lease)) in chunk.iter().enumerate() {
        let token = last_token + 1 + i as u64;
        let (slot, mut step) = grant_records(ctx, r, host, token, now_ms());
        let before = basis.view.steps.get(host);
        step.interruptions = before.map_or(0, |s| s.interruptions);
        let slot_key = keys.slot(&r.spec.service, host);
        compares.extend([
            step_unchanged(keys.step(&r.id, host), before, fleet.revision),
            Compare::version(slot_key.clone(), CompareOp::Equal, 0),
            Compare::lease(keys.session(host), CompareOp::Equal, lease),
        ]);
        ops.extend([
            TxnOp::put(
                slot_key,
                encode(&slot),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(keys.step(&r.id, host), encode(&step), None),
        ]);
        granted.push((host, slot));
    }
    // On refusal, the election key: tells a deposed leader from a changed rollout.
    let txn = Txn::new()
        .when(compares)
        .and_then(ops)
        .or_else(vec![TxnOp::get(leader.key(), None)]);
    (txn, granted)
}

/// "host-3" or "host-3 and 4 more".
fn hosts_word<T>(granted: &[(&str, T)]) -> String {
    match granted {
        [] => String::new(),
        [(h, _)] => h.to_string(),
        [(h, _), rest @ ..] => format!("{h} and {} more", rest.len()),
    }
}

/// Whether a refused transaction that read the election key in its `or_else` found it gone
/// (or another one in its place): the fence refused it.
fn deposed(resp: &etcd_client::TxnResponse, leader: &LeaderKey) -> bool {
    let found = resp.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.create_revision())),
        _ => None,
    });
    matches!(found, Some(rev) if rev != Some(leader.rev()))
}

/// When the share of the budget this grant uses was freed: the latest result of the rollout,
/// if it came after every grant so far (the first grant after it hands it over).
fn handed_over_at(view: &RolloutView) -> Option<i64> {
    let steps = view.steps.values();
    let freed = steps
        .clone()
        .filter(|s| s.state.is_final())
        .map(|s| s.updated_at_ms)
        .max()?;
    let granted = steps.map(|s| s.granted_at_ms).max().unwrap_or(0);
    (freed > granted).then_some(freed)
}

/// `rollgate_slot_grants_total`, and the hand-over latency when this grant reuses a freed share.
fn count_grant(ctx: &Ctx, r: &RolloutRecord, freed_at: Option<i64>) {
    let service = ServiceLabel {
        service: r.spec.service.clone(),
    };
    ctx.metrics.grants.get_or_create(&service).inc();
    if let Some(at) = freed_at {
        let secs = (now_ms() - at).max(0) as f64 / 1000.0;
        ctx.metrics.handover.observe(secs);
    }
}

/// A host is granted once per rollout: its step must not exist yet, or (granted again after
/// an agent restart interrupted its update) be the `interrupted` step read at `revision`.
fn step_unchanged(key: String, before: Option<&HostStep>, revision: i64) -> Compare {
    match before {
        Some(s) if s.state == HostState::Interrupted => {
            Compare::mod_revision(key, CompareOp::Less, revision + 1)
        }
        _ => Compare::version(key, CompareOp::Equal, 0),
    }
}
