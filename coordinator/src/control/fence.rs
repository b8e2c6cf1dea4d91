//! `rollgate host fence|forget`: an operator vouches that a host is out of the picture.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::ControlError;
use crate::store::{self, decode, encode, now_ms, HostRecord, HostState, HostStep};
use crate::Ctx;

/// `rollgate host fence|forget HOST`: the operator vouches the host is out of the picture. Its
/// outstanding grants end (its steps fail "fenced"), its slots are dropped, and it counts
/// against no budget until it reconnects. `forget` also deletes its record and session.
pub async fn fence_host(ctx: &Arc<Ctx>, host: &str, forget: bool) -> Result<String, ControlError> {
    rollgate_proto::names::check("host id", host)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    let resp = etcd.get(keys.host(host), None).await?;
    let Some(kv) = resp.kvs().first() else {
        return Err(ControlError::NotFound(format!(
            "no host {host}; `rollgate hosts` lists the known hosts"
        )));
    };
    let mut record: HostRecord = decode(kv)?;
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
    let slots = etcd
        .get(
            keys.all_slots(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    for kv in slots.kvs() {
        if let Ok(k) = kv.key_str() {
            if k.ends_with(&format!("/{host}")) {
                ops.push(TxnOp::delete(k, None));
            }
        }
    }
    if forget {
        ops.push(TxnOp::delete(keys.host(host), None));
        ops.push(TxnOp::delete(keys.session(host), None));
    } else {
        record.fenced = true;
        ops.push(TxnOp::put(keys.host(host), encode(&record), None));
    }
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            keys.host(host),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then(ops);
    if !etcd.txn(txn).await?.succeeded() {
        return Err(ControlError::Conflict(format!(
            "host {host} reported while fencing it; run the command again"
        )));
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
    Ok(msg)
}
