//! Agent sessions: one task per connected agent stream. It records the host and its liveness in
//! etcd, sends the orders of the slots granted to the host, and writes the agent's progress and
//! results back as the evidence that frees slots (S2). Any replica can hold any agent's stream:
//! orders and results pass through etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use rand::Rng;
use rollgate_proto::{names, pb};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use crate::store::{
    self, decode, encode, now_ms, HostRecord, HostState, HostStep, ServiceState, SessionRecord,
    SlotRecord, StoreError,
};
use crate::Ctx;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause before re-opening the slot watch after it broke (etcd restart).
const WATCH_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Outgoing half of one agent stream.
pub type AgentTx = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// The agent streams this replica holds, by host id.
#[derive(Debug, Default)]
pub struct Hub {
    conns: Mutex<HashMap<String, Conn>>,
}

#[derive(Debug, Clone)]
struct Conn {
    conn_id: String,
    tx: AgentTx,
    /// Cancels this session when a newer stream for the same host arrives.
    cancel: CancellationToken,
}

impl Hub {
    fn register(&self, host: &str, conn: Conn) {
        let old = self
            .conns
            .lock()
            .expect("hub lock")
            .insert(host.to_string(), conn);
        if let Some(old) = old {
            old.cancel.cancel();
        }
    }

    fn unregister(&self, host: &str, conn_id: &str) {
        let mut conns = self.conns.lock().expect("hub lock");
        if conns
            .get(host)
            .map(|c| c.conn_id == conn_id)
            .unwrap_or(false)
        {
            conns.remove(host);
        }
    }

    fn sender(&self, host: &str) -> Option<AgentTx> {
        self.conns
            .lock()
            .expect("hub lock")
            .get(host)
            .map(|c| c.tx.clone())
    }

    fn hosts(&self) -> Vec<String> {
        self.conns
            .lock()
            .expect("hub lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Sends an order to a host if its stream is here; false otherwise.
    async fn send_order(&self, host: &str, order: pb::UpdateOrder) -> bool {
        let Some(tx) = self.sender(host) else {
            return false;
        };
        let msg = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Update(order)),
        };
        tx.send(Ok(msg)).await.is_ok()
    }
}

/// Serves one agent stream until it ends, the agent goes silent, or the replica shuts down.
pub async fn serve(
    ctx: Arc<Ctx>,
    mut inbound: Streaming<pb::AgentMessage>,
    tx: AgentTx,
    shutdown: CancellationToken,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(h)),
        }))) => h,
        Ok(Ok(_)) => {
            refuse(&tx, "the first message on a session must be hello").await;
            return;
        }
        Ok(Err(e)) => {
            debug!("agent stream failed before hello: {e}");
            return;
        }
        Err(_) => {
            refuse(&tx, "no hello within 10s").await;
            return;
        }
    };
    if let Err(e) = names::check("host id", &hello.host_id) {
        warn!("refusing an agent session: {e}");
        refuse(&tx, &e.to_string()).await;
        return;
    }
    let host = hello.host_id.clone();
    let span = tracing::info_span!("session", host = %host);
    async move {
        let conn_id = format!("{:016x}", rand::thread_rng().gen::<u64>());
        let cancel = shutdown.child_token();
        let mut session = Session {
            ctx: ctx.clone(),
            host: host.clone(),
            conn_id: conn_id.clone(),
            record: HostRecord::default(),
        };
        if let Err(e) = session.open(&hello).await {
            warn!("cannot record the session in etcd: {e}; closing it, the agent will retry");
            refuse(&tx, "coordinator cannot reach etcd right now").await;
            return;
        }
        ctx.hub.register(
            &host,
            Conn {
                conn_id: conn_id.clone(),
                tx: tx.clone(),
                cancel: cancel.clone(),
            },
        );
        info!(
            agent_version = %hello.agent_version,
            highest_token = hello.highest_token,
            "agent connected"
        );
        let welcome = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                coordinator_id: ctx.config.replica_id.clone(),
                heartbeat_interval_ms: ctx.config.agents.heartbeat_interval.as_millis() as u64,
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        for result in &hello.recent_results {
            if let Err(e) = session.apply_result(result).await {
                warn!("cannot record a result from hello: {e}");
            }
        }
        if let Err(e) = session.resend_orders().await {
            warn!("cannot look up orders for this host: {e}");
        }
        let silent = ctx.config.session_timeout();
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout(silent, inbound.message()) => m,
                _ = cancel.cancelled() => {
                    debug!("session replaced or replica shutting down");
                    break;
                }
            };
            let msg = match msg {
                Err(_) => {
                    warn!("agent silent for {silent:?}; dropping its session, the host counts as offline until it reconnects");
                    break;
                }
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => {
                    info!("agent closed its stream");
                    break;
                }
                Ok(Err(e)) => {
                    info!("agent stream broke: {}", e.message());
                    break;
                }
            };
            if let Err(e) = session.handle(msg).await {
                warn!("cannot record what the agent said: {e}");
            }
        }
        ctx.hub.unregister(&host, &conn_id);
        if let Err(e) = session.close().await {
            warn!("cannot clear the session key (it expires with this replica's lease): {e}");
        }
    }
    .instrument(span)
    .await
}

async fn refuse(tx: &AgentTx, reason: &str) {
    let msg = pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Refusal(pb::Refusal {
            reason: reason.to_string(),
        })),
    };
    let _ = tx.send(Ok(msg)).await;
}

struct Session {
    ctx: Arc<Ctx>,
    host: String,
    conn_id: String,
    /// This replica writes the host record while it holds the stream; kept here to update it
    /// without a read.
    record: HostRecord,
}

impl Session {
    fn session_value(&self) -> Vec<u8> {
        encode(&SessionRecord {
            replica_id: self.ctx.config.replica_id.clone(),
            conn_id: self.conn_id.clone(),
            connected_at_ms: 0,
        })
    }

    async fn open(&mut self, hello: &pb::Hello) -> Result<(), StoreError> {
        self.record = HostRecord {
            host_id: self.host.clone(),
            labels: hello.labels.clone().into_iter().collect(),
            agent_version: hello.agent_version.clone(),
            services: hello
                .services
                .iter()
                .map(|s| (s.service.clone(), ServiceState::from(s)))
                .collect(),
            last_seen_ms: now_ms(),
        };
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        let txn = Txn::new().and_then(vec![
            TxnOp::put(keys.host(&self.host), encode(&self.record), None),
            TxnOp::put(
                keys.session(&self.host),
                self.session_value(),
                Some(PutOptions::new().with_lease(self.ctx.lease)),
            ),
        ]);
        etcd.txn(txn).await?;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), StoreError> {
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        self.record.last_seen_ms = now_ms();
        let txn = Txn::new()
            .when(vec![Compare::value(
                keys.session(&self.host),
                CompareOp::Equal,
                self.session_value(),
            )])
            .and_then(vec![
                TxnOp::delete(keys.session(&self.host), None),
                TxnOp::put(keys.host(&self.host), encode(&self.record), None),
            ]);
        etcd.txn(txn).await?;
        Ok(())
    }

    async fn handle(&mut self, msg: pb::AgentMessage) -> Result<(), StoreError> {
        use pb::agent_message::Msg;
        match msg.msg {
            Some(Msg::Heartbeat(_)) | None => Ok(()),
            Some(Msg::Hello(_)) => {
                warn!("agent sent a second hello; ignored");
                Ok(())
            }
            Some(Msg::Status(s)) => self.status(&s).await,
            Some(Msg::Progress(p)) => self.progress(&p).await,
            Some(Msg::Result(r)) => self.apply_result(&r).await,
        }
    }

    async fn status(&mut self, s: &pb::ServiceStatus) -> Result<(), StoreError> {
        let state = ServiceState::from(s);
        info!(service = %s.service, version = %s.version, health = s.health().word(), detail = %s.detail, "service status");
        self.record.services.insert(s.service.clone(), state);
        self.record.last_seen_ms = now_ms();
        let mut etcd = self.ctx.etcd.clone();
        etcd.put(self.ctx.keys.host(&self.host), encode(&self.record), None)
            .await?;
        if s.health() == pb::Health::Healthy {
            self.release_failed_slots(&s.service, &s.version).await?;
        }
        Ok(())
    }

    /// A host that failed and kept its slot frees it once it reports healthy again (S2).
    async fn release_failed_slots(&self, service: &str, version: &str) -> Result<(), StoreError> {
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        for rid in store::active_rollouts(&mut etcd, keys).await? {
            let slot_key = keys.slot(&rid, &self.host);
            let resp = etcd.get(slot_key.clone(), None).await?;
            let Some(kv) = resp.kvs().first() else {
                continue;
            };
            let slot: SlotRecord = decode(kv)?;
            if slot.service != service {
                continue;
            }
            let step_resp = etcd.get(keys.step(&rid, &self.host), None).await?;
            let failed = step_resp
                .kvs()
                .first()
                .map(decode::<HostStep>)
                .transpose()?
                .map(|s| s.state == HostState::Failed)
                .unwrap_or(false);
            if !failed {
                continue;
            }
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    slot_key.clone(),
                    CompareOp::Equal,
                    kv.create_revision(),
                )])
                .and_then(vec![TxnOp::delete(slot_key, None)]);
            if etcd.txn(txn).await?.succeeded() {
                info!(rollout = %rid, %version, "host is healthy again; its slot is released");
            }
        }
        Ok(())
    }

    async fn progress(&mut self, p: &pb::OrderProgress) -> Result<(), StoreError> {
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        let slot_key = keys.slot(&p.rollout_id, &self.host);
        let step_key = keys.step(&p.rollout_id, &self.host);
        let resp = etcd.get(step_key.clone(), None).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(());
        };
        let mut step: HostStep = decode(kv)?;
        if step.state != HostState::Updating {
            return Ok(());
        }
        debug!(rollout = %p.rollout_id, token = p.token, step = p.step().word(), message = %p.message, "progress");
        step.step = p.step().word().to_string();
        step.message = p.message.clone();
        step.token = p.token;
        step.updated_at_ms = now_ms();
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(slot_key, CompareOp::Equal, p.token as i64),
                Compare::mod_revision(step_key.clone(), CompareOp::Equal, kv.mod_revision()),
            ])
            .and_then(vec![TxnOp::put(step_key, encode(&step), None)]);
        etcd.txn(txn).await?;
        Ok(())
    }

    /// Records an order's outcome. Fenced by the slot's token, so a stale or repeated result
    /// changes nothing. A slot is freed only on evidence: healthy on the new release, or healthy
    /// again on the old one (or back to nothing on a host that never ran the service).
    async fn apply_result(&mut self, r: &pb::OrderResult) -> Result<(), StoreError> {
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        let slot_key = keys.slot(&r.rollout_id, &self.host);
        let resp = etcd.get(slot_key.clone(), None).await?;
        let Some(kv) = resp.kvs().first() else {
            debug!(rollout = %r.rollout_id, token = r.token, "result for a slot that is no longer held; already recorded");
            return Ok(());
        };
        if kv.create_revision() as u64 != r.token {
            debug!(rollout = %r.rollout_id, token = r.token, slot_token = kv.create_revision(), "result with a stale token ignored");
            return Ok(());
        }
        let slot: SlotRecord = decode(kv)?;
        let health = r.health();
        let back_to_nothing = r.running_version.is_empty() && health == pb::Health::Stopped;
        let (state, free) = match r.outcome() {
            pb::Outcome::Succeeded => (HostState::Done, true),
            pb::Outcome::RolledBack => (
                HostState::RolledBack,
                health == pb::Health::Healthy || back_to_nothing,
            ),
            pb::Outcome::Refused => (
                HostState::Failed,
                health == pb::Health::Healthy || back_to_nothing,
            ),
            pb::Outcome::Failed | pb::Outcome::Unspecified => (HostState::Failed, false),
        };
        let step = HostStep {
            state,
            token: r.token,
            step: String::new(),
            message: String::new(),
            reason: r.reason.clone(),
            running_version: r.running_version.clone(),
            updated_at_ms: now_ms(),
        };
        let prev = self
            .record
            .services
            .get(&slot.service)
            .cloned()
            .unwrap_or_default();
        self.record.services.insert(
            slot.service.clone(),
            ServiceState {
                version: r.running_version.clone(),
                sha256: if r.running_version == slot.version {
                    slot.sha256.clone()
                } else {
                    prev.sha256
                },
                health: health.into(),
                detail: if state == HostState::Done {
                    String::new()
                } else {
                    r.reason.clone()
                },
            },
        );
        self.record.last_seen_ms = now_ms();
        let mut ops = vec![
            TxnOp::put(keys.step(&r.rollout_id, &self.host), encode(&step), None),
            TxnOp::put(keys.host(&self.host), encode(&self.record), None),
        ];
        if free {
            ops.push(TxnOp::delete(slot_key.clone(), None));
        }
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                slot_key,
                CompareOp::Equal,
                r.token as i64,
            )])
            .and_then(ops);
        if etcd.txn(txn).await?.succeeded() {
            let outcome = r.outcome().word();
            if state == HostState::Done {
                info!(rollout = %r.rollout_id, token = r.token, version = %r.running_version, "host updated and healthy; slot released");
            } else if free {
                warn!(rollout = %r.rollout_id, token = r.token, %outcome, reason = %r.reason, "update failed; host is back on {:?} and healthy; slot released", r.running_version);
            } else {
                warn!(rollout = %r.rollout_id, token = r.token, %outcome, reason = %r.reason, "update failed and the host is not healthy; it keeps its slot (counts as unavailable) until it reports healthy or an operator forgets it");
            }
        }
        Ok(())
    }

    /// Sends the orders for slots this host holds (after a reconnect; the agent ignores an
    /// order it is already running and re-reports one it has finished).
    async fn resend_orders(&self) -> Result<(), StoreError> {
        resend_for(&self.ctx, &self.host).await
    }
}

/// Watches for new slots and sends each one's order to its host if that host's stream is held
/// by this replica. Runs until `cancel`.
pub async fn dispatch_orders(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let keys = ctx.keys.clone();
    loop {
        let mut etcd = ctx.etcd.clone();
        let watch = etcd
            .watch(keys.rollouts(), Some(WatchOptions::new().with_prefix()))
            .await;
        let mut stream = match watch {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot watch for new slots: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_RETRY) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        // Orders granted while the watch was down: resend for every host held here.
        for host in ctx.hub.hosts() {
            if let Err(e) = resend_for(&ctx, &host).await {
                warn!(%host, "cannot resend orders: {e}");
            }
        }
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = cancel.cancelled() => return,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    warn!("slot watch ended; re-opening it");
                    break;
                }
            };
            for ev in resp.events() {
                if ev.event_type() != EventType::Put {
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                if kv.version() != 1 {
                    continue;
                }
                let Ok(key) = kv.key_str() else { continue };
                let Some((rid, "slots", host)) = keys.parse_rollout_key(key) else {
                    continue;
                };
                let slot: SlotRecord = match decode(kv) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("{e}");
                        continue;
                    }
                };
                let token = kv.create_revision() as u64;
                if ctx.hub.send_order(host, slot.order(token)).await {
                    info!(rollout = %rid, %host, token, version = %slot.version, "order sent");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_RETRY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

async fn resend_for(ctx: &Arc<Ctx>, host: &str) -> Result<(), StoreError> {
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    for rid in store::active_rollouts(&mut etcd, keys).await? {
        let resp = etcd
            .get(keys.slot(&rid, host), Some(GetOptions::new()))
            .await?;
        if let Some(kv) = resp.kvs().first() {
            let slot: SlotRecord = decode(kv)?;
            let token = kv.create_revision() as u64;
            info!(rollout = %rid, %host, token, "sending the order for the slot this host holds");
            ctx.hub.send_order(host, slot.order(token)).await;
        }
    }
    Ok(())
}
