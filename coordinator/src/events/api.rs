//! `Events`: the event log as the control API serves it (filters, backlog, then follow).
//! Any replica serves it: the log is in etcd. The backlog is read at one revision and the watch
//! starts right after it, so a follower sees every event once, in id order.

use std::sync::Arc;

use etcd_client::{EventType, GetOptions, WatchOptions};
use rollgate_proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{event_key, EventKind, EventRecord};
use crate::Ctx;

/// Where a stream of events goes.
pub type EventTx = mpsc::Sender<Result<pb::Event, Status>>;

/// Sends the matching backlog, then (with `follow`) each new event, until the client goes,
/// `shutdown` fires or etcd fails (the client resumes with `after_id`).
pub async fn serve(
    ctx: Arc<Ctx>,
    req: pb::EventsRequest,
    tx: EventTx,
    shutdown: CancellationToken,
) {
    if let Err(status) = send_all(&ctx, &req, &tx, &shutdown).await {
        let _ = tx.send(Err(status)).await;
    }
}

async fn send_all(
    ctx: &Ctx,
    req: &pb::EventsRequest,
    tx: &EventTx,
    shutdown: &CancellationToken,
) -> Result<(), Status> {
    let prefix = &ctx.config.etcd.prefix;
    let mut etcd = ctx.etcd.clone();
    let unavailable = |e: etcd_client::Error| {
        Status::unavailable(format!(
            "cannot read the event log from etcd: {e}; run the command again"
        ))
    };
    let end = format!("{prefix}events0"); // just past every `events/…` key
    let options = GetOptions::new().with_range(end);
    let backlog = etcd
        .get(event_key(prefix, req.after_id + 1), Some(options))
        .await
        .map_err(unavailable)?;
    let revision = backlog.header().map_or(0, |h| h.revision());
    let mut last = req.after_id;
    for kv in backlog.kvs() {
        if !send(kv.value(), req, tx, &mut last).await {
            return Ok(());
        }
    }
    if !req.follow {
        return Ok(());
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = crate::etcd_conn::watch(&mut etcd, format!("{prefix}events/"), Some(options))
        .await
        .map_err(unavailable)?;
    loop {
        let resp = tokio::select! {
            m = watch.message() => m.map_err(unavailable)?,
            _ = tx.closed() => return Ok(()),
            _ = shutdown.cancelled() => {
                return Err(Status::unavailable("the coordinator is shutting down; run the command again (it resumes after the last event shown)"));
            }
        };
        let Some(resp) = resp else { return Ok(()) };
        for ev in resp.events() {
            let Some(kv) = ev.kv().filter(|_| ev.event_type() == EventType::Put) else {
                continue;
            };
            if !send(kv.value(), req, tx, &mut last).await {
                return Ok(());
            }
        }
    }
}

/// Sends one stored event if it matches and is newer than `last`; false when the client left.
async fn send(value: &[u8], req: &pb::EventsRequest, tx: &EventTx, last: &mut u64) -> bool {
    let Ok(record) = serde_json::from_slice::<EventRecord>(value) else {
        return true; // written by a newer version: skipped, not fatal
    };
    if record.id <= *last || !matches(req, &record) {
        return true;
    }
    *last = record.id;
    tx.send(Ok(to_pb(&record))).await.is_ok()
}

/// Whether `e` passes the request's filters.
pub fn matches(req: &pb::EventsRequest, e: &EventRecord) -> bool {
    let is = |want: &str, have: &Option<String>| want.is_empty() || have.as_deref() == Some(want);
    is(&req.rollout_id, &e.event.rollout)
        && is(&req.service, &e.event.service)
        && is(&req.host_id, &e.event.host)
        && e.at_ms >= req.since_ms
}

/// The wire form of a stored event.
pub fn to_pb(e: &EventRecord) -> pb::Event {
    let ev = &e.event;
    pb::Event {
        id: e.id,
        at_ms: e.at_ms,
        kind: ev
            .kind
            .map_or(pb::EventKind::Unspecified, pb::EventKind::from) as i32,
        rollout_id: ev.rollout.clone().unwrap_or_default(),
        service: ev.service.clone().unwrap_or_default(),
        host_id: ev.host.clone().unwrap_or_default(),
        by: ev.by.clone().unwrap_or_default(),
        phase: ev.phase.map_or(pb::Phase::Unspecified, pb::Phase::from) as i32,
        wave: ev.wave.unwrap_or_default(),
        token: ev.token.unwrap_or_default(),
        step: ev.step.map_or(pb::Step::Unspecified, pb::Step::from) as i32,
        reason: ev.reason.clone(),
        spec_json: ev
            .spec
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok())
            .unwrap_or_default(),
    }
}

impl From<EventKind> for pb::EventKind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::RolloutCreated => pb::EventKind::RolloutCreated,
            EventKind::RolloutPaused => pb::EventKind::RolloutPaused,
            EventKind::RolloutResumed => pb::EventKind::RolloutResumed,
            EventKind::WaveOpened => pb::EventKind::WaveOpened,
            EventKind::GateWaiting => pb::EventKind::GateWaiting,
            EventKind::RolloutHalted => pb::EventKind::RolloutHalted,
            EventKind::RolloutSucceeded => pb::EventKind::RolloutSucceeded,
            EventKind::RolloutAborted => pb::EventKind::RolloutAborted,
            EventKind::RolloutRollingBack => pb::EventKind::RolloutRollingBack,
            EventKind::RolloutRolledBack => pb::EventKind::RolloutRolledBack,
            EventKind::HostGranted => pb::EventKind::HostGranted,
            EventKind::HostStep => pb::EventKind::HostStep,
            EventKind::HostDone => pb::EventKind::HostDone,
            EventKind::HostRolledBack => pb::EventKind::HostRolledBack,
            EventKind::HostFailed => pb::EventKind::HostFailed,
            EventKind::HostInterrupted => pb::EventKind::HostInterrupted,
            EventKind::HostFenced => pb::EventKind::HostFenced,
            EventKind::HostForgotten => pb::EventKind::HostForgotten,
        }
    }
}
