//! Agent sessions: one task per connected agent stream. It records the host and its liveness in
//! etcd, sends the orders of the slots granted to the host, and writes the agent's progress and
//! results back as the evidence that frees slots (S2). Any replica can hold any agent's stream:
//! orders and results pass through etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use rand::Rng;
use rollgate_proto::names::RolloutId;
use rollgate_proto::pb;
use rollgate_proto::text::printable;
use rollgate_proto::tls::Identity;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use crate::store::{
    self, decode, encode, now_ms, HostRecord, HostState, HostStep, RolloutRecord, SessionRecord,
    StageRecord, StoreError,
};
use crate::Ctx;

pub mod admit;
pub mod limits;
pub mod opening;
mod orders;
mod record_result;
pub mod results;
pub mod specs;
pub mod tokens;

use limits::{bounded, LogLimit, Trimmed, WriteGate, HOST_WRITE_INTERVAL, MAX_DETAIL};

pub use orders::dispatch_orders;
use orders::{reattach, send_stage};

/// How long a new stream may take to send its hello.
/// Attempts at a session's catch-up (its orders after a reconnect) before the session ends.
const CATCH_UP_TRIES: u32 = 3;
/// Pause between catch-up attempts.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(300);
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause before re-opening the slot watch after it broke (etcd restart).
pub(super) const WATCH_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Outgoing half of one agent stream.
pub type AgentTx = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// The agent streams this replica holds, by host id.
#[derive(Debug, Default)]
pub struct Hub {
    conns: Mutex<HashMap<String, Conn>>,
    /// Bounds the sessions doing their opening etcd work at once (a reconnect storm).
    pub opening: opening::OpeningTurns,
    /// The service and release of the rollouts hosts report on (their records are large).
    pub specs: specs::RolloutSpecs,
    /// Per host, the token whose order the leader sent as it granted it, before etcd's watch
    /// reported the slot (whose dispatch then skips it).
    sent_ahead: Mutex<HashMap<String, u64>>,
}

#[derive(Debug, Clone)]
struct Conn {
    conn_id: String,
    tx: AgentTx,
    /// Cancels this session when a newer stream for the same host arrives.
    cancel: CancellationToken,
}

impl Hub {
    /// A hub whose sessions open in `opening`'s turns.
    pub fn new(opening: opening::OpeningTurns) -> Self {
        Hub {
            opening,
            ..Hub::default()
        }
    }

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

    /// Hosts with a stream here.
    fn len(&self) -> usize {
        self.conns.lock().expect("hub lock").len()
    }

    fn hosts(&self) -> Vec<String> {
        self.conns
            .lock()
            .expect("hub lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Sends the order of a slot this replica's leader just granted, when the host's stream is
    /// here (false otherwise): the order goes out without waiting for etcd's watch to report
    /// the slot, and that report then sends nothing more ([`Hub::sent_ahead`]).
    pub async fn send_granted(&self, slot: &crate::store::SlotRecord) -> bool {
        let msg = pb::coordinator_message::Msg::Update(slot.order());
        if !self.send(&slot.host_id, msg).await {
            return false;
        }
        let mut ahead = self.sent_ahead.lock().expect("hub lock");
        ahead.insert(slot.host_id.clone(), slot.token);
        true
    }

    /// Whether the order of `host`'s slot of `token` was sent as it was granted (asked once:
    /// the answer is forgotten). A report of the slot that comes first sends it again, which
    /// the agent ignores (the token is the one it is carrying out).
    fn sent_ahead(&self, host: &str, token: u64) -> bool {
        let mut ahead = self.sent_ahead.lock().expect("hub lock");
        if ahead.get(host) == Some(&token) {
            ahead.remove(host);
            return true;
        }
        false
    }

    /// Sends a message to a host if its stream is here; false otherwise.
    async fn send(&self, host: &str, msg: pb::coordinator_message::Msg) -> bool {
        let Some(tx) = self.sender(host) else {
            return false;
        };
        tx.send(Ok(pb::CoordinatorMessage { msg: Some(msg) }))
            .await
            .is_ok()
    }
}

/// Serves one agent stream until it ends, the agent goes silent, or the replica shuts down.
/// `leaf` is the certificate the host presented (DER), checked against `host forget`'s ban.
pub async fn serve(
    ctx: Arc<Ctx>,
    peer: Option<Identity>,
    leaf: Option<Vec<u8>>,
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
    if let Err(why) = admit::check_hello(&hello, peer.as_ref()) {
        log_refused_hello(&why, &hello, peer.as_ref());
        refuse(&tx, &why.to_agent()).await;
        return;
    }
    let host = hello.host_id.clone();
    let span = tracing::info_span!("session", host = %host);
    async move {
        // Held until the session is open and caught up: its etcd work is then done.
        let Some(opening::Admitted { turn, pin }) =
            opening::admit_in_turn(&ctx, peer.as_ref(), leaf.as_deref(), &hello, &tx).await
        else {
            return;
        };
        let conn_id = format!("{:016x}", rand::thread_rng().gen::<u64>());
        let cancel = shutdown.child_token();
        let mut session = Session {
            ctx: ctx.clone(),
            host: host.clone(),
            conn_id: conn_id.clone(),
            record: HostRecord::default(),
            refusals: LogLimit::default(),
            written: HostRecord::default(),
            writes: WriteGate::new(HOST_WRITE_INTERVAL),
            floods: LogLimit::new(limits::LOG_EVERY, 1),
        };
        if let Err(e) = session.open(&hello, pin.as_ref()).await {
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
        ctx.metrics.sessions_opened.inc();
        ctx.metrics.set_connected(ctx.hub.len());
        info!(
            agent_version = %printable(&hello.agent_version),
            highest_token = hello.highest_token,
            "agent connected"
        );
        let welcome = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                coordinator_id: ctx.config.replica_id.clone(),
                heartbeat_interval_ms: ctx.config.agents.heartbeat_interval.as_millis() as u64,
                protocol_version: rollgate_proto::version::PROTOCOL_VERSION,
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        // The hello's service states are the agent's current ones: these older results settle
        // steps but never overwrite them (issue 9, item 3).
        for result in &hello.recent_results {
            if let Err(e) = session.apply_result(result, Replay::FromHello).await {
                warn!("cannot record a result from hello: {e}");
            }
        }
        // Without its catch-up a host could wait for ever for an order granted while it was
        // away (a nemesis seed found it): retry, then end the session so that it comes back.
        let mut tries = 0;
        while let Err(e) = session.catch_up(&hello).await {
            tries += 1;
            if !matches!(e, StoreError::Etcd(_)) {
                // A record it cannot read is that rollout's problem, not the session's (S9).
                warn!("cannot look up orders for this host: {e}");
                break;
            }
            if tries == CATCH_UP_TRIES {
                warn!("cannot look up this host's orders ({e}); ending its session so that it reconnects and the look-up runs again");
                cancel.cancel();
                break;
            }
            tokio::time::sleep(CATCH_UP_RETRY).await;
        }
        drop(turn);
        let silent = ctx.config.session_timeout();
        loop {
            let flush = session.writes.due();
            let msg = tokio::select! {
                m = tokio::time::timeout(silent, inbound.message()) => m,
                _ = sleep_until(flush), if flush.is_some() => {
                    if let Err(e) = session.write_status().await {
                        warn!("cannot record the host's latest status: {e}; closing the session so it re-sends on reconnect");
                        break;
                    }
                    continue;
                }
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
                // Nothing the agent said is lost: it re-sends results and in-flight orders in
                // the hello of its next session.
                warn!("cannot record what the agent said: {e}; closing the session so it re-sends on reconnect");
                break;
            }
        }
        ctx.hub.unregister(&host, &conn_id);
        ctx.metrics.sessions_closed.inc();
        ctx.metrics.set_connected(ctx.hub.len());
        if let Err(e) = session.close().await {
            warn!("cannot clear the session key (it expires with this replica's lease): {e}");
        }
        info!("agent session ended");
    }
    .instrument(span)
    .await
}

async fn sleep_until(at: Option<std::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Logs why a hello was refused (the certificate and the claim, when they disagree).
fn log_refused_hello(why: &admit::HelloRefusal, hello: &pb::Hello, peer: Option<&Identity>) {
    match why {
        admit::HelloRefusal::HostId(e) => warn!(
            "refusing an agent session: {}",
            printable(&bounded(e, MAX_DETAIL))
        ),
        admit::HelloRefusal::NotItsCertificate {
            certificate,
            claimed,
        } => warn!(
            certificate = %peer.map(Identity::uri).unwrap_or_default(),
            claimed = %claimed,
            "refusing an agent session: its certificate is for host {certificate} but its hello \
             claims host {claimed}; a host speaks only for itself"
        ),
        admit::HelloRefusal::TooOld(why) => {
            warn!(host = %printable(&hello.host_id), "refusing an agent session: {why}")
        }
    }
}

/// Whether two host records say the same, apart from when things were seen.
fn same_content(a: &HostRecord, b: &HostRecord) -> bool {
    let untimed = |r: &HostRecord| {
        let mut r = r.clone();
        r.last_seen_ms = 0;
        r.services.values_mut().for_each(|s| s.observed_at_ms = 0);
        r
    };
    untimed(a) == untimed(b)
}

async fn refuse(tx: &AgentTx, reason: &str) {
    let msg = pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Refusal(pb::Refusal {
            reason: reason.to_string(),
        })),
    };
    let _ = tx.send(Ok(msg)).await;
}

/// Where a result comes from: the live stream, or a hello's replay of recent results (older
/// than the hello's own service states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    Live,
    FromHello,
}

struct Session {
    ctx: Arc<Ctx>,
    host: String,
    conn_id: String,
    /// This replica writes the host record while it holds the stream; kept here to update it
    /// without a read.
    record: HostRecord,
    /// Refused messages are logged, but a host sending nothing else cannot flood the log.
    refusals: LogLimit,
    /// The record as last written: a status that changes nothing is not written again.
    written: HostRecord,
    /// Paces status writes (S9: a host cannot grow etcd at the rate it sends).
    writes: WriteGate,
    /// The "statuses coalesced" line, once a minute.
    floods: LogLimit,
}

impl Session {
    fn session_value(&self) -> Vec<u8> {
        encode(&SessionRecord {
            replica_id: self.ctx.config.replica_id.clone(),
            conn_id: self.conn_id.clone(),
            connected_at_ms: 0,
        })
    }

    /// Compares that the host's session key is still this session's.
    fn mine(&self) -> Compare {
        Compare::value(
            self.ctx.keys.session(&self.host),
            CompareOp::Equal,
            self.session_value(),
        )
    }

    /// Writes the host record, only while this session is the host's (an old session never
    /// overwrites what a newer one or an operator's fence wrote).
    async fn put_record(&mut self) -> Result<(), StoreError> {
        self.wrote();
        let put = TxnOp::put(self.ctx.keys.host(&self.host), encode(&self.record), None);
        let txn = Txn::new().when(vec![self.mine()]).and_then(vec![put]);
        if self.ctx.etcd.clone().txn(txn).await?.succeeded() {
            return Ok(());
        }
        Err(StoreError::Superseded {
            host: self.host.clone(),
        })
    }

    /// Notes that the host record is being written as it stands.
    fn wrote(&mut self) {
        self.written = self.record.clone();
        self.writes.wrote(std::time::Instant::now());
    }

    /// Logs what was dropped or cut from the host's report (rate-limited).
    fn trimmed(&mut self, what: &str, trimmed: &Trimmed) {
        if trimmed.is_empty() {
            return;
        }
        if let Some(held_back) = self.refusals.admit(std::time::Instant::now()) {
            warn!(
                held_back,
                "this host's {what} is over rollgate's bounds, kept within them: {trimmed}"
            );
        }
    }

    /// Writes the record's latest state if it differs from what was written (times aside).
    async fn write_status(&mut self) -> Result<(), StoreError> {
        if same_content(&self.record, &self.written) {
            self.writes.wrote(std::time::Instant::now());
            return Ok(());
        }
        self.put_record().await
    }

    /// Whether the host's session key is still this session's.
    async fn still_mine(&self) -> Result<bool, StoreError> {
        let resp = self
            .ctx
            .etcd
            .clone()
            .get(self.ctx.keys.session(&self.host), None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.value() == self.session_value().as_slice()))
    }

    /// Records the session and the host as its hello says; `pin` is the host's pin as read in
    /// its admission.
    async fn open(&mut self, hello: &pb::Hello, pin: Option<&KeyValue>) -> Result<(), StoreError> {
        let (record, trimmed) = admit::host_record(&self.host, hello, now_ms());
        self.trimmed("hello", &trimmed);
        self.record = record;
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
        self.wrote();
        self.check_pin(pin)
    }

    /// A hello whose labels or services differ from what an operator pinned (`pin`, as read)
    /// is an event: the pin stands (rollouts see the pinned values), the claim is logged
    /// naming the host.
    fn check_pin(&self, pin: Option<&KeyValue>) -> Result<(), StoreError> {
        let Some(kv) = pin else {
            return Ok(());
        };
        let pin: crate::store::PinRecord = decode(kv)?;
        let overridden = pin.apply(&mut self.record.clone());
        if !overridden.is_empty() {
            let claimed = printable(&overridden.join("; ")).into_owned();
            warn!(
                pinned_by = %printable(&pin.by),
                "this host claims {claimed}, which differs from what an operator pinned; rollouts \
                 see the pinned labels {:?} (`rollgate host label` changes the pin)",
                pin.labels
            );
        }
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
            Some(Msg::Result(r)) => self.apply_result(&r, Replay::Live).await,
            Some(Msg::Staged(s)) => self.staged(&s).await,
        }
    }

    /// Records a service's status: kept within bounds, written only when it changes and at
    /// most once per [`HOST_WRITE_INTERVAL`] (faster ones coalesce; the latest wins).
    async fn status(&mut self, s: &pb::ServiceStatus) -> Result<(), StoreError> {
        let mut trimmed = Trimmed::default();
        let change = admit::status_change(&self.record.services, s, &mut trimmed);
        self.trimmed("status", &trimmed);
        let state = match change {
            admit::StatusChange::Dropped => return Ok(()),
            admit::StatusChange::Older { newest_ms } => {
                debug!(service = %printable(&s.service), observed_at_ms = s.observed_at_ms, newest_ms, "older status ignored");
                return Ok(());
            }
            admit::StatusChange::Record(state) => state,
        };
        info!(service = %printable(&s.service), version = %printable(&state.version), health = s.health().word(), detail = %printable(&state.detail), in_flight_token = s.in_flight_token, "service status");
        self.record.services.insert(s.service.clone(), state);
        self.record.last_seen_ms = now_ms();
        if same_content(&self.record, &self.written) {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if self.writes.admit(now) {
            return self.put_record().await;
        }
        // An agent's burst around an update coalesces a few; only a flood is worth a line.
        if self.writes.coalesced < limits::FLOOD_AFTER {
            return Ok(());
        }
        if let Some(held_back) = self.floods.admit(now) {
            warn!(
                held_back,
                coalesced = self.writes.coalesced,
                "this host sends changing statuses faster than one per {HOST_WRITE_INTERVAL:?}; \
                 coalescing them: its latest state is written at most every {HOST_WRITE_INTERVAL:?}"
            );
        }
        Ok(())
    }

    /// Logs (rate-limited, naming the host: the session span carries it) a message refused
    /// because of the rollout id it names.
    fn refused(&mut self, what: &str, rollout_id: &str, why: &str) {
        if let Some(held_back) = self.refusals.admit(std::time::Instant::now()) {
            warn!(
                rollout = %printable(&bounded(rollout_id, 128)),
                held_back,
                "refused this host's {what}: {why}; nothing was recorded"
            );
        }
    }

    /// The rollout id a host sent, if it is one (S9: grammar before it comes near a key).
    fn rollout_id(&mut self, what: &str, raw: &str) -> Option<RolloutId> {
        let id = RolloutId::parse(raw).ok();
        if id.is_none() {
            self.refused(what, raw, "not a rollout id ('r-' and 16 hex digits)");
        }
        id
    }

    async fn staged(&mut self, s: &pb::StageResult) -> Result<(), StoreError> {
        const WHAT: &str = "stage report";
        let Some(rid) = self.rollout_id(WHAT, &s.rollout_id) else {
            return Ok(());
        };
        // Ownership: the rollout exists and targets this host.
        let rollout_key = self.ctx.keys.rollout(rid.as_str());
        let resp = self.ctx.etcd.clone().get(rollout_key.clone(), None).await?;
        let targeted = match resp.kvs().first().map(decode::<RolloutRecord>) {
            None => Err("no such rollout"),
            Some(Err(e)) => {
                warn!(rollout = %rid, "cannot check a stage report: {e}");
                return Ok(());
            }
            Some(Ok(r)) if !r.targets.contains(&self.host) => {
                Err("that rollout does not target this host")
            }
            Some(Ok(_)) => Ok(()),
        };
        if let Err(why) = targeted {
            self.refused(WHAT, rid.as_str(), why);
            return Ok(());
        }
        let reason = bounded(&s.reason, MAX_DETAIL);
        if s.ok {
            info!(rollout = %rid, service = %printable(&s.service), "release staged");
        } else {
            warn!(rollout = %rid, service = %printable(&s.service), reason = %printable(&reason), "cannot stage the release");
        }
        let rec = StageRecord {
            ok: s.ok,
            reason,
            at_ms: now_ms(),
        };
        let key = self.ctx.keys.staged(rid.as_str(), &self.host);
        let txn = Txn::new()
            .when(vec![Compare::version(rollout_key, CompareOp::Greater, 0)])
            .and_then(vec![TxnOp::put(key, encode(&rec), None)]);
        self.ctx.etcd.clone().txn(txn).await?;
        Ok(())
    }

    /// Reads this host's step in a rollout with its key's mod revision.
    async fn step(&self, rid: &RolloutId) -> Result<Option<(HostStep, i64)>, StoreError> {
        let resp = self
            .ctx
            .etcd
            .clone()
            .get(self.ctx.keys.step(rid.as_str(), &self.host), None)
            .await?;
        resp.kvs()
            .first()
            .map(|kv| Ok((decode::<HostStep>(kv)?, kv.mod_revision())))
            .transpose()
    }

    async fn progress(&mut self, p: &pb::OrderProgress) -> Result<(), StoreError> {
        let Some(rid) = self.rollout_id("progress report", &p.rollout_id) else {
            return Ok(());
        };
        // Ownership: only this host's step, and only the grant it holds.
        let Some((step, rev)) = self.step(&rid).await? else {
            return Ok(());
        };
        let Some(step) = admit::progressed(&step, p, now_ms()) else {
            return Ok(());
        };
        debug!(rollout = %rid, token = p.token, step = p.step().word(), message = %printable(&step.message), "progress");
        let key = self.ctx.keys.step(rid.as_str(), &self.host);
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(vec![TxnOp::put(key, encode(&step), None)]);
        self.ctx.etcd.clone().txn(txn).await?;
        Ok(())
    }

    /// After a (re)connect: re-attaches grants whose slot vanished with an old replica (the
    /// agent may still be working on them), re-sends orders, and stage orders still due.
    async fn catch_up(&mut self, hello: &pb::Hello) -> Result<(), StoreError> {
        let ctx = self.ctx.clone();
        let keys = &ctx.keys;
        let mut etcd = ctx.etcd.clone();
        for rid in store::active_rollouts(&mut etcd, keys).await? {
            let Ok(rid) = RolloutId::parse(&rid) else {
                continue;
            };
            let resp = etcd.get(keys.rollout(rid.as_str()), None).await?;
            let Some(kv) = resp.kvs().first() else {
                continue;
            };
            // One rollout that cannot be read does not keep this host from the others.
            let rollout: RolloutRecord = match decode(kv) {
                Ok(r) => r,
                Err(e) => {
                    warn!(rollout = %rid, "skipping this rollout in the catch-up: {e}");
                    continue;
                }
            };
            if !rollout.targets.contains(&self.host) {
                continue;
            }
            if let Some((step, step_rev)) = self.step(&rid).await? {
                if step.state == HostState::Updating {
                    reattach(&self.ctx, &rollout, &self.host, &step, step_rev).await?;
                }
            }
            if rollout.spec.strategy.stages_ahead() && !rollout.phase.is_terminal() {
                let staged_key = keys.staged(rid.as_str(), &self.host);
                let done = etcd.get(staged_key, None).await?;
                let ok = done
                    .kvs()
                    .first()
                    .map(decode::<StageRecord>)
                    .transpose()?
                    .is_some_and(|s| s.ok);
                let have = hello.staged.iter().any(|s| {
                    s.service == rollout.spec.service && s.sha256 == rollout.spec.release.sha256
                });
                if have && !ok {
                    self.staged(&pb::StageResult {
                        rollout_id: rid.to_string(),
                        service: rollout.spec.service.clone(),
                        sha256: rollout.spec.release.sha256.clone(),
                        ok: true,
                        reason: String::new(),
                    })
                    .await?;
                } else if !ok {
                    send_stage(&self.ctx, &rollout, &self.host).await;
                }
            }
        }
        Ok(())
    }
}
