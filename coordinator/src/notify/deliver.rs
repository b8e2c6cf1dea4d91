//! The leader's webhook deliveries: one task per `[[notify]]`, tailing the event log from the
//! webhook's cursor, posting each wanted event until the receiver takes it (2xx), then moving
//! the cursor in a transaction fenced by the leader's election key.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{LeaderKey, Txn, TxnOp};
use rollgate_proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{signature, NotifyConfig, Payload};
use crate::events::{cursor_key, Cursor};
use crate::store::decode;
use crate::Ctx;

/// First pause after a failed delivery; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between two attempts at one delivery.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A failing delivery is logged on its first failure and then every this many attempts.
const WARN_EVERY: u32 = 10;
/// Pause before tailing the log again after an error.
const RESTART: Duration = Duration::from_secs(1);

/// Delivers for every `[[notify]]` while this replica leads, until `cancel`.
pub async fn run(ctx: Arc<Ctx>, leader: LeaderKey, cancel: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for hook in ctx.config.notify.clone() {
        tasks.spawn(webhook(ctx.clone(), leader.clone(), hook, cancel.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn webhook(ctx: Arc<Ctx>, leader: LeaderKey, hook: NotifyConfig, cancel: CancellationToken) {
    let secret = match &hook.secret_file {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(s) => Some(s.trim_ascii().to_vec()),
            Err(e) => {
                warn!(webhook = %hook.name, "cannot read secret_file {}: {e}; no notifications are sent to {} until it is fixed and the coordinator restarted", path.display(), hook.url);
                return;
            }
        },
    };
    let client = match reqwest::Client::builder().timeout(hook.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            warn!(webhook = %hook.name, "cannot build an HTTP client: {e}");
            return;
        }
    };
    let sender = Sender {
        hook,
        secret,
        client,
    };
    while !cancel.is_cancelled() {
        match tail(&ctx, &leader, &sender, &cancel).await {
            Ok(()) => return,
            Err(why) => {
                warn!(webhook = %sender.hook.name, "notifications paused: {why}; resuming from the last event delivered")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// How one webhook is reached.
struct Sender {
    hook: NotifyConfig,
    secret: Option<Vec<u8>>,
    client: reqwest::Client,
}

/// Follows the event log after the webhook's cursor; `Ok` when cancelled or no longer leader.
async fn tail(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    s: &Sender,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let mut delivered = read_cursor(ctx, &s.hook.name).await?;
    let req = pb::EventsRequest {
        after_id: delivered,
        follow: true,
        ..pb::EventsRequest::default()
    };
    let (tx, mut rx) = mpsc::channel(64);
    let stop = cancel.child_token();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(crate::events::api::serve(ctx.clone(), req, tx, stop));
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some(Ok(e)) => e,
                Some(Err(status)) => return Err(status.message().to_string()),
                None => return Err("the event log stream ended".into()),
            },
            _ = cancel.cancelled() => return Ok(()),
        };
        if !s.hook.wants(event.kind()) {
            continue;
        }
        if !post_until_taken(s, &event, cancel).await {
            return Ok(());
        }
        delivered = event.id;
        if !write_cursor(ctx, leader, &s.hook.name, delivered).await? {
            return Ok(()); // no longer the leader: the next one resumes from the cursor
        }
    }
}

/// Posts `event` until a 2xx answer (true) or `cancel` (false).
async fn post_until_taken(s: &Sender, event: &pb::Event, cancel: &CancellationToken) -> bool {
    let body = serde_json::to_vec(&Payload::of(event)).unwrap_or_default();
    let mut pause = RETRY_FIRST;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut req = s
            .client
            .post(&s.hook.url)
            .header("content-type", "application/json")
            .header("x-rollgate-event-id", event.id.to_string());
        if let Some(secret) = &s.secret {
            req = req.header("x-rollgate-signature", signature(secret, &body));
        }
        let why = match req.body(body.clone()).send().await {
            Ok(r) if r.status().is_success() => {
                info!(webhook = %s.hook.name, event_id = event.id, kind = event.kind().word(), attempts = attempt, "notification delivered");
                return true;
            }
            Ok(r) => format!("{} answered {}", s.hook.url, r.status()),
            Err(e) => format!("{}: {e}", s.hook.url),
        };
        if attempt == 1 || attempt.is_multiple_of(WARN_EVERY) {
            warn!(webhook = %s.hook.name, event_id = event.id, attempt, "notification not delivered ({why}); retrying every {} s at most until it is", pause.as_secs().max(1));
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => return false,
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

fn key(ctx: &Ctx, name: &str) -> String {
    format!("{}notify/{name}", ctx.config.etcd.prefix)
}

/// The last event id delivered; a new webhook starts at the newest event (no history replay).
async fn read_cursor(ctx: &Ctx, name: &str) -> Result<u64, String> {
    let mut etcd = ctx.etcd.clone();
    let etcd_err = |e: etcd_client::Error| format!("etcd: {e}");
    let resp = etcd.get(key(ctx, name), None).await.map_err(etcd_err)?;
    if let Some(kv) = resp.kvs().first() {
        return kv
            .value_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{} holds no event id", key(ctx, name)));
    }
    let resp = etcd
        .get(cursor_key(&ctx.config.etcd.prefix), None)
        .await
        .map_err(etcd_err)?;
    let newest = match resp.kvs().first() {
        Some(kv) => decode::<Cursor>(kv).map_err(|e| e.to_string())?.id,
        None => 0,
    };
    Ok(newest)
}

/// Moves the cursor (fenced: false when this replica no longer leads).
async fn write_cursor(ctx: &Ctx, leader: &LeaderKey, name: &str, id: u64) -> Result<bool, String> {
    let txn = Txn::new()
        .when(vec![crate::driver::fence(leader)])
        .and_then(vec![TxnOp::put(key(ctx, name), id.to_string(), None)]);
    match ctx.etcd.clone().txn(txn).await {
        Ok(r) => Ok(r.succeeded()),
        Err(e) => Err(format!("etcd: {e}")),
    }
}
