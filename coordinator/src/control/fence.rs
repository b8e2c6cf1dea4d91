//! `rollgate host fence|forget`: an operator vouches that a host is out of the picture.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{ControlError, CAS_ATTEMPTS};
use crate::store::{self, decode, encode, now_ms, HostRecord, HostState, HostStep};
use crate::Ctx;

/// `rollgate host fence|forget HOST`: the operator vouches the host is out of the picture. Its
/// outstanding grants end (its steps fail "fenced"), its slots are dropped, and it counts
/// against no budget until it reconnects. `forget` also deletes its record.
///
/// Refused while the host's agent is connected (it may be carrying an order out; fencing it
/// would free budget it still uses). Exclusive with grants: the transaction compares the token
/// counter read before the host's steps, so a grant in between makes it re-read.
pub async fn fence_host(
    ctx: &Arc<Ctx>,
    host: &str,
    forget: bool,
    by: Option<String>,
) -> Result<String, ControlError> {
    rollgate_proto::names::check("host id", host)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    for _ in 0..CAS_ATTEMPTS {
        let plan = prepare(ctx, host, forget, by.as_deref()).await?;
        if let Some(msg) = commit(ctx, plan).await? {
            return Ok(msg);
        }
    }
    Err(ControlError::Conflict(format!(
        "host {host} kept changing (reports or grants) while fencing it; run the command again"
    )))
}

/// A fence as read: the transaction that carries it out and what it ends.
#[derive(Debug)]
pub struct FencePlan {
    host: String,
    forget: bool,
    txn: Txn,
    ended: Vec<String>,
}

/// Reads what fencing `host` takes (refused while it is connected).
pub async fn prepare(
    ctx: &Arc<Ctx>,
    host: &str,
    forget: bool,
    by: Option<&str>,
) -> Result<FencePlan, ControlError> {
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    // The counter first: any grant after this read moves it and fails the transaction.
    let token = etcd.get(keys.token(), None).await?;
    let token_rev = token.kvs().first().map_or(0, |kv| kv.mod_revision());
    let resp = etcd.get(keys.host(host), None).await?;
    let Some(kv) = resp.kvs().first() else {
        return Err(ControlError::NotFound(format!(
            "no host {host}; `rollgate hosts` lists the known hosts"
        )));
    };
    let host_rev = kv.mod_revision();
    let mut record: HostRecord = decode(kv)?;
    if etcd.get(keys.session(host), None).await?.count() > 0 {
        return Err(ControlError::Conflict(format!(
            "{host} is connected (its agent is streaming to the coordinator right now), so it \
             may be carrying out an order and fencing it would free budget it still uses. \
             `host fence`/`forget` are for hosts that are gone: stop its agent or cut it off, \
             wait until `rollgate hosts` shows it offline, then run this again"
        )));
    }
    let (mut ops, ended) = void_steps(ctx, host).await?;
    ops.extend(drop_slots(ctx, host).await?);
    if forget {
        ops.push(TxnOp::delete(keys.host(host), None));
    } else {
        record.fenced = true;
        record.fenced_by = by.map(str::to_string);
        ops.push(TxnOp::put(keys.host(host), encode(&record), None));
    }
    let txn = Txn::new()
        .when(vec![
            Compare::mod_revision(keys.host(host), CompareOp::Equal, host_rev),
            Compare::version(keys.session(host), CompareOp::Equal, 0),
            Compare::mod_revision(keys.token(), CompareOp::Equal, token_rev),
        ])
        .and_then(ops);
    Ok(FencePlan {
        host: host.to_string(),
        forget,
        txn,
        ended,
    })
}

/// Carries a fence out; `None` when anything it read changed (a report, a connect, a grant).
pub async fn commit(ctx: &Arc<Ctx>, plan: FencePlan) -> Result<Option<String>, ControlError> {
    let FencePlan {
        host,
        forget,
        txn,
        ended,
    } = plan;
    if !ctx.etcd.clone().txn(txn).await?.succeeded() {
        return Ok(None);
    }
    let what = if forget { "forgotten" } else { "fenced" };
    tracing::warn!(%host, ?ended, "host {what} by an operator");
    let mut msg = format!(
        "{host} {what}: it counts against no budget{}",
        if forget {
            " and its record is deleted (it re-registers if its agent connects again)"
        } else {
            " and gets no orders until its agent reconnects"
        }
    );
    if !ended.is_empty() {
        msg.push_str(&format!(
            "; its update in {} is marked failed",
            ended.join(", ")
        ));
    }
    Ok(Some(msg))
}

/// Marks the host's grants in active rollouts failed ("fenced"); returns the writes and the
/// rollouts concerned.
async fn void_steps(ctx: &Arc<Ctx>, host: &str) -> Result<(Vec<TxnOp>, Vec<String>), ControlError> {
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    let mut ops = Vec::new();
    let mut ended = Vec::new();
    for rid in store::active_rollouts(&mut etcd, keys).await? {
        let resp = etcd.get(keys.step(&rid, host), None).await?;
        if let Some(kv) = resp.kvs().first() {
            let mut step: HostStep = decode(kv)?;
            if step.state == HostState::Updating {
                step.state = HostState::Failed;
                step.reason = format!("fenced by an operator (token {} is void)", step.token);
                step.updated_at_ms = now_ms();
                ops.push(TxnOp::put(keys.step(&rid, host), encode(&step), None));
                ended.push(rid);
            }
        }
    }
    Ok((ops, ended))
}

/// Deletes the host's live slots.
async fn drop_slots(ctx: &Arc<Ctx>, host: &str) -> Result<Vec<TxnOp>, ControlError> {
    let slots = ctx
        .etcd
        .clone()
        .get(
            ctx.keys.all_slots(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(slots
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .filter(|k| k.ends_with(&format!("/{host}")))
        .map(|k| TxnOp::delete(k, None))
        .collect())
}
