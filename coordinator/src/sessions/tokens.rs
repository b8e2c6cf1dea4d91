//! The grant counter against what hosts report (issue 9, item 9). After an etcd restore the
//! counter can be below tokens agents already acted on, and every grant would be refused as
//! stale: a host's hello (and a stale-token refusal) carries the highest token it acted on, and
//! the counter is raised above it. A compare-and-set; grants compare the counter's revision, so
//! a grant racing a raise re-reads.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tracing::warn;

use crate::store::{decode, encode, StoreError};
use crate::Ctx;

/// The most one report may move the counter forward. A real restore leaves the counter behind
/// by the grants made since the backup; 2^32 of them is beyond any fleet's history, and the
/// bound keeps a hostile host from pushing the counter to the end of its range (S9).
pub const MAX_TOKEN_JUMP: u64 = 1 << 32;

/// What a report did to the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raise {
    /// The counter was already at or above the report.
    Unchanged,
    /// The counter moved from `from` to the report.
    Raised { from: u64 },
    /// The report is more than [`MAX_TOKEN_JUMP`] above the counter: not believed.
    Implausible { counter: u64 },
    /// Other writers kept changing the counter; the report was not applied.
    Contended,
}

/// The token counter as read: its value and its key's mod revision (0: no counter yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The highest token granted so far.
    pub value: u64,
    /// The counter key's mod revision, which a raise compares.
    pub rev: i64,
}

impl Counter {
    /// The counter as a read of its key found it (`None`: not there yet).
    pub fn of(kv: Option<&etcd_client::KeyValue>) -> Result<Counter, StoreError> {
        Ok(match kv {
            Some(kv) => Counter {
                value: decode::<u64>(kv)?,
                rev: kv.mod_revision(),
            },
            None => Counter { value: 0, rev: 0 },
        })
    }
}

/// Raises the counter to `reported` if it is below; logs what it did.
pub async fn raise_token(ctx: &Arc<Ctx>, reported: u64) -> Result<Raise, StoreError> {
    raise_token_from(ctx, reported, None).await
}

/// [`raise_token`], starting from `seen`, the counter as just read along with other reads (a
/// session's opening): no read of its own unless it raises and loses a race.
pub async fn raise_token_from(
    ctx: &Arc<Ctx>,
    reported: u64,
    mut seen: Option<Counter>,
) -> Result<Raise, StoreError> {
    let key = ctx.keys.token();
    let mut etcd = ctx.etcd.clone();
    for _ in 0..8 {
        let Counter {
            value: current,
            rev,
        } = match seen.take() {
            Some(seen) => seen,
            None => Counter::of(etcd.get(key.clone(), None).await?.kvs().first())?,
        };
        if reported <= current {
            return Ok(Raise::Unchanged);
        }
        if reported - current > MAX_TOKEN_JUMP {
            return Ok(Raise::Implausible { counter: current });
        }
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(vec![TxnOp::put(key.clone(), encode(&reported), None)]);
        if etcd.txn(txn).await?.succeeded() {
            warn!(
                counter = current,
                reported,
                "this host has acted on token {reported}, above the token counter {current} \
                 (was etcd restored from a backup?); raised the counter to {reported} so new \
                 grants are not refused as stale"
            );
            return Ok(Raise::Raised { from: current });
        }
    }
    Ok(Raise::Contended)
}

/// Why a session is not opened after its hello's token could not be checked, for the agent
/// and the log; `None` when the session may open.
pub fn refusal(outcome: &Result<Raise, StoreError>, reported: u64) -> Option<String> {
    match outcome {
        Ok(Raise::Unchanged | Raise::Raised { .. }) => None,
        Ok(Raise::Implausible { counter }) => Some(format!(
            "this host reports having acted on token {reported}, more than {MAX_TOKEN_JUMP} above \
             the coordinator's token counter {counter}; no coordinator handed that out. Check the \
             host (its state file may be damaged or forged); the session is refused"
        )),
        Ok(Raise::Contended) => Some(
            "the coordinator could not raise its token counter to this host's highest token \
             (too many concurrent writers); the agent retries"
                .into(),
        ),
        Err(e) => Some(format!(
            "the coordinator cannot check its token counter against this host's highest token \
             ({e}); the agent retries"
        )),
    }
}
