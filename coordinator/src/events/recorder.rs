//! The leader's event recorder: watches etcd from the revision it recorded last, derives events
//! from each change ([`super::derive`]), and stores them with sequential ids together with its
//! cursor in one transaction fenced by the leader's election key. A new leader resumes from the
//! stored cursor, so no change is recorded twice and none is skipped (unless etcd compacted it
//! away first; then the gap is logged). Old events are trimmed by count and age.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaderKey, SortOrder, SortTarget,
    Txn, TxnOp, WatchOptions,
};
use rollgate_proto::pb;
use rollgate_proto::telemetry::Ids;
use rollgate_proto::text::printable;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::derive::{derive, Subject};
use super::{cursor_key, event_key, Cursor, EventRecord, NewEvent};
use crate::store::{encode, now_ms, StoreError};
use crate::Ctx;

/// Pause before re-opening the watch after an error.
const RETRY: Duration = Duration::from_millis(500);
/// How often events past `max_age` are looked for, at most (more often for a short max_age).
const AGE_CHECK_EVERY: Duration = Duration::from_secs(60);
/// Events deleted per trim transaction at most (etcd's default txn limit is 128 ops).
const TRIM_BATCH: i64 = 100;
/// Events stored per transaction at most: with the cursor and the retention delete, within
/// etcd's default limit of 128 operations per transaction. One watch response can carry
/// thousands (a rollout across a large fleet, a restart catching up).
const EVENTS_PER_TXN: usize = 100;

/// Why the recorder stopped (it starts again from its cursor).
#[derive(Debug, thiserror::Error)]
enum RecorderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Conflict(&'static str),
}

/// Records events while this replica leads, until `cancel`.
pub async fn run(ctx: Arc<Ctx>, leader: LeaderKey, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        match record(&ctx, &leader, &cancel).await {
            Ok(()) => return,
            Err(e) => warn!("the event recorder stopped: {e}; starting again from its cursor"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

async fn record(
    ctx: &Ctx,
    leader: &LeaderKey,
    cancel: &CancellationToken,
) -> Result<(), RecorderError> {
    let prefix = &ctx.config.etcd.prefix;
    let mut etcd = ctx.etcd.clone();
    let (mut cursor, cursor_rev) = read_cursor(ctx).await?;
    let from = if cursor.revision > 0 {
        cursor.revision + 1
    } else {
        // The first leader with an event log starts from the present.
        etcd.get(ctx.keys.all(), Some(GetOptions::new().with_count_only()))
            .await?
            .header()
            .map_or(1, |h| h.revision() + 1)
    };
    let options = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(from);
    let mut watch = match crate::etcd_conn::watch(&mut etcd, prefix.clone(), Some(options)).await {
        Err(etcd_client::Error::WatchError(why)) if why.contains("compacted") => {
            warn!("events from etcd revision {from} on were compacted away before they were recorded: the event log has a gap there; recording from now on");
            write_cursor_at_present(ctx, leader, cursor).await?;
            return Err(RecorderError::Conflict(
                "the event cursor moved past a compaction",
            ));
        }
        other => other?,
    };
    info!(
        from_revision = from,
        last_id = cursor.id,
        "recording events"
    );
    let mut cursor_rev = cursor_rev;
    let mut aged = Instant::now() - AGE_CHECK_EVERY;
    let mut services = HashMap::new();
    loop {
        let resp = tokio::select! {
            m = watch.message() => m?,
            _ = cancel.cancelled() => return Ok(()),
        };
        let Some(resp) = resp else { return Ok(()) };
        let mut drafts: Vec<(i64, NewEvent)> = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(subject) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(prefix.as_str()))
                .and_then(Subject::of)
            else {
                continue;
            };
            let before = ev.prev_kv().map(|p| p.value());
            let after = (ev.event_type() == EventType::Put).then(|| kv.value());
            for e in derive(&subject, before, after) {
                drafts.push((kv.mod_revision(), e));
            }
        }
        if drafts.is_empty() {
            continue;
        }
        name_services(ctx, &mut services, &mut drafts).await?;
        for batch in batches(drafts, EVENTS_PER_TXN) {
            let revision = batch.last().map_or(cursor.revision, |(r, _)| *r);
            cursor_rev = store_batch(ctx, leader, &mut cursor, cursor_rev, batch, revision).await?;
        }
        if aged.elapsed() >= AGE_CHECK_EVERY.min(ctx.config.events.max_age / 4) {
            aged = Instant::now();
            trim_by_age(ctx).await?;
        }
    }
}

/// Host events carry their rollout's service too (so `rollgate events --service` finds them):
/// looked up once per rollout.
async fn name_services(
    ctx: &Ctx,
    known: &mut HashMap<String, String>,
    drafts: &mut [(i64, NewEvent)],
) -> Result<(), RecorderError> {
    for (_, e) in drafts.iter_mut() {
        let Some(rid) = e.rollout.clone() else {
            continue;
        };
        if let Some(svc) = &e.service {
            known.insert(rid, svc.clone());
            continue;
        }
        if !known.contains_key(&rid) {
            let resp = ctx.etcd.clone().get(ctx.keys.rollout(&rid), None).await?;
            if let Some(r) = resp
                .kvs()
                .first()
                .and_then(|kv| crate::store::decode::<crate::store::RolloutRecord>(kv).ok())
            {
                known.insert(rid.clone(), r.spec.service);
            }
        }
        e.service = known.get(&rid).cloned();
    }
    Ok(())
}

/// The cursor and its key's mod revision (0: absent).
async fn read_cursor(ctx: &Ctx) -> Result<(Cursor, i64), RecorderError> {
    let resp = ctx
        .etcd
        .clone()
        .get(cursor_key(&ctx.config.etcd.prefix), None)
        .await?;
    match resp.kvs().first() {
        Some(kv) => Ok((crate::store::decode(kv)?, kv.mod_revision())),
        None => Ok((Cursor::default(), 0)),
    }
}

/// Stores the events of one watch response and the cursor, fenced by leadership and by the
/// cursor being unchanged (one recorder at a time, even across a leader change).
async fn store_batch(
    ctx: &Ctx,
    leader: &LeaderKey,
    cursor: &mut Cursor,
    cursor_rev: i64,
    drafts: Vec<(i64, NewEvent)>,
    revision: i64,
) -> Result<i64, RecorderError> {
    let prefix = &ctx.config.etcd.prefix;
    let mut next = *cursor;
    let mut ops = Vec::new();
    let mut records = Vec::with_capacity(drafts.len());
    for (rev, draft) in drafts {
        next.id += 1;
        let record = EventRecord::new(next.id, rev, draft);
        ops.push(TxnOp::put(
            event_key(prefix, next.id),
            encode(&record),
            None,
        ));
        records.push(record);
    }
    next.revision = revision;
    ops.push(TxnOp::put(cursor_key(prefix), encode(&next), None));
    // Retention by count in the same transaction: never more than `max_count` stored.
    let keep = ctx.config.events.max_count.max(1);
    if next.id > keep {
        let first_kept = event_key(prefix, next.id - keep + 1);
        let range = DeleteOptions::new().with_range(first_kept);
        ops.push(TxnOp::delete(event_key(prefix, 0), Some(range)));
    }
    let txn = Txn::new()
        .when(vec![
            crate::driver::fence(leader),
            Compare::mod_revision(cursor_key(prefix), CompareOp::Equal, cursor_rev),
        ])
        .and_then(ops);
    let resp = ctx.etcd.clone().txn(txn).await?;
    if !resp.succeeded() {
        return Err(RecorderError::Conflict(
            "leadership or the event cursor changed",
        ));
    }
    // Logged once stored: a batch that failed is derived and logged again on the retry.
    records.iter().for_each(log_event);
    *cursor = next;
    Ok(resp.header().map_or(cursor_rev, |h| h.revision()))
}

/// Splits one watch response's events (in revision order) into batches of at most `max`, cut
/// only between revisions: the cursor stored with a batch (its last revision) then never
/// points into the middle of one, and a restart resumes after it with nothing recorded twice
/// or skipped. A revision with more than `max` events is a batch of its own.
pub(super) fn batches<T>(drafts: Vec<(i64, T)>, max: usize) -> Vec<Vec<(i64, T)>> {
    let mut out = Vec::new();
    let mut batch: Vec<(i64, T)> = Vec::new();
    let mut revision: Vec<(i64, T)> = Vec::new();
    for draft in drafts {
        if revision.first().is_some_and(|(r, _)| *r != draft.0) {
            add_revision(&mut out, &mut batch, std::mem::take(&mut revision), max);
        }
        revision.push(draft);
    }
    add_revision(&mut out, &mut batch, revision, max);
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// Adds one revision's events to the batch, closing the batch first if they would not fit.
fn add_revision<T>(
    out: &mut Vec<Vec<(i64, T)>>,
    batch: &mut Vec<(i64, T)>,
    revision: Vec<(i64, T)>,
    max: usize,
) {
    if !batch.is_empty() && batch.len() + revision.len() > max {
        out.push(std::mem::take(batch));
    }
    batch.extend(revision);
}

/// Moves the cursor to the present (after a compaction ate the changes it pointed at).
async fn write_cursor_at_present(
    ctx: &Ctx,
    leader: &LeaderKey,
    cursor: Cursor,
) -> Result<(), RecorderError> {
    let mut etcd = ctx.etcd.clone();
    let now = etcd
        .get(ctx.keys.all(), Some(GetOptions::new().with_count_only()))
        .await?;
    let revision = now.header().map_or(0, |h| h.revision());
    let next = Cursor { revision, ..cursor };
    let txn = Txn::new()
        .when(vec![crate::driver::fence(leader)])
        .and_then(vec![TxnOp::put(
            cursor_key(&ctx.config.etcd.prefix),
            encode(&next),
            None,
        )]);
    etcd.txn(txn).await?;
    Ok(())
}

/// Deletes events older than `max_age` (oldest first, a batch at a time).
async fn trim_by_age(ctx: &Ctx) -> Result<(), RecorderError> {
    let prefix = &ctx.config.etcd.prefix;
    let oldest_allowed = now_ms() - ctx.config.events.max_age.as_millis() as i64;
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Key, SortOrder::Ascend)
        .with_limit(TRIM_BATCH);
    let resp = ctx
        .etcd
        .clone()
        .get(format!("{prefix}events/"), Some(options))
        .await?;
    let mut old = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<EventRecord>(kv.value()) {
            Ok(e) if e.at_ms < oldest_allowed => old.push(TxnOp::delete(kv.key(), None)),
            _ => break,
        }
    }
    if !old.is_empty() {
        ctx.etcd.clone().txn(Txn::new().and_then(old)).await?;
    }
    Ok(())
}

/// Every event is also a log line, with the ids as journal fields under systemd (`journalctl
/// ROLLOUT_ID=r-…` finds a rollout's story).
fn log_event(e: &EventRecord) {
    let ev = &e.event;
    let kind = ev
        .kind
        .map(|k| pb::EventKind::from(k).word())
        .unwrap_or_default();
    let mut message = format!("event {}: {kind}", e.id);
    if let Some(by) = &ev.by {
        message.push_str(&format!(" by {by}"));
    }
    if !ev.reason.is_empty() {
        message.push_str(&format!(": {}", printable(&ev.reason)));
    }
    let ids = Ids {
        rollout: ev.rollout.as_deref().unwrap_or(""),
        host: ev.host.as_deref().unwrap_or(""),
        service: ev.service.as_deref().unwrap_or(""),
    };
    rollgate_proto::telemetry::info_with_ids(ids, &message);
}
