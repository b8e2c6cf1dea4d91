//! Simulated hosts for the `swarm` benchmark: many real agent sessions from one process. Each
//! host has its own certificate from the fleet CA and its own mTLS connection (dialed with
//! `rollgate_proto::tls::dial`, as the agent does), says a real hello, heartbeats at the
//! welcome's interval, reconnects with the agent's jittered backoff, and carries out orders
//! instantly: progress, then after `exec_delay` a succeeded result and its new status.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use rand::Rng;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rollgate_proto::pb::{self, agent_message::Msg, coordinator_message};
use rollgate_proto::tls::{Identity, Role, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::*;

/// The agent's reconnect backoff (agent/src/session.rs `BACKOFF_BASE`, `BACKOFF_CAP`,
/// `STABLE_SESSION`): exponential, capped, full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// The agent's connection settings (agent/src/session.rs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval until the welcome says otherwise (the agent's default).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Each host sends one RTT probe per this period while probing is on.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(10);
/// A probe unanswered for this long counts as this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The version every simulated host runs at the start.
pub(crate) const FIRST_VERSION: &str = "1.0.0";

/// The agent's backoff delay before reconnect attempt `attempt` (0-based).
fn backoff_delay(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_CAP);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
}

/// The fleet CA, loaded once to sign every simulated host's certificate in-process (the
/// `rollgate certs` command per host would take minutes for 10,000).
pub(crate) struct SwarmCa {
    ca_pem: Vec<u8>,
    ca: Vec<CertificateDer<'static>>,
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl SwarmCa {
    /// Loads `ca.pem` and `ca.key` from a fleet's PKI directory.
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Self> {
        let ca_pem = fs::read(dir.join("ca.pem"))?;
        let key = KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key"))?)?;
        let params = CertificateParams::from_ca_cert_pem(std::str::from_utf8(&ca_pem)?)?;
        let issuer = params.self_signed(&key)?;
        let ca = CertificateDer::pem_slice_iter(&ca_pem).collect::<Result<Vec<_>, _>>()?;
        Ok(SwarmCa {
            ca_pem,
            ca,
            issuer,
            key,
        })
    }

    /// A host certificate for `id` (`spiffe://test/host/ID`), as `rollgate certs issue host`
    /// makes it.
    pub(crate) fn host(&self, id: &str) -> anyhow::Result<TlsFiles> {
        let identity = Identity::new(rollgate_tests::pki::FLEET, Role::Host, id)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "rollgate");
        dn.push(DnType::CommonName, format!("host {id} of fleet test"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(TlsFiles {
            ca: self.ca.clone(),
            ca_pem: self.ca_pem.clone(),
            chain: vec![cert.der().clone()],
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            identity,
        })
    }
}

/// What every simulated host adds to, read by the benchmark (the independent observer).
#[derive(Debug, Default)]
pub(crate) struct SwarmStats {
    /// Hosts welcomed on a live stream right now.
    pub(crate) in_session: AtomicUsize,
    /// Welcomes received in all.
    pub(crate) welcomes: AtomicU64,
    /// Sessions lost (stream broke or closed after a welcome, or a failed connect).
    pub(crate) losses: AtomicU64,
    /// Refusals received from the coordinator.
    pub(crate) refusals: AtomicU64,
    /// Hosts holding an order right now (order received, result not yet sent): out of service.
    pub(crate) holding: AtomicUsize,
    /// The most hosts ever holding an order at once.
    pub(crate) max_holding: AtomicUsize,
    /// Distinct orders received (by token).
    pub(crate) orders: AtomicU64,
    /// Succeeded results sent.
    pub(crate) results: AtomicU64,
    /// When the first and the latest new order arrived.
    pub(crate) order_times: Mutex<Option<(Instant, Instant)>>,
    /// RTT probes are sent while this is on.
    pub(crate) probing: AtomicBool,
    /// RTT samples, microseconds (shared with the probe tasks).
    pub(crate) rtt_us: Arc<Mutex<Vec<u64>>>,
    /// The latest reason a session ended, for the report.
    pub(crate) last_loss: Mutex<String>,
    /// The latest refusal's reason, for the report.
    pub(crate) last_refusal: Mutex<String>,
    /// Connection attempts that failed before a stream was open (refused, shed, timed out).
    pub(crate) connects_failed: AtomicU64,
    /// Where each session attempt's time went, for the storm's breakdown.
    pub(crate) phases: Mutex<Phases>,
}

/// The durations of session attempts' phases, in microseconds.
#[derive(Debug, Default)]
pub(crate) struct Phases {
    /// TCP connect and TLS handshake (the dial), of dials that succeeded.
    pub(crate) dial_us: Vec<u64>,
    /// Stream opened to the welcome (the coordinator's opening work, its turn included).
    pub(crate) welcome_us: Vec<u64>,
}

impl SwarmStats {
    fn order_started(&self) {
        let now = self.holding.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_holding.fetch_max(now, Ordering::SeqCst);
        self.orders.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let mut times = self.order_times.lock().expect("order times");
        *times = Some(times.map_or((t, t), |(first, _)| (first, t)));
    }

    fn order_finished(&self) {
        self.holding.fetch_sub(1, Ordering::SeqCst);
        self.results.fetch_add(1, Ordering::Relaxed);
    }

    fn lost(&self, why: String) {
        self.losses.fetch_add(1, Ordering::Relaxed);
        *self.last_loss.lock().expect("last loss") = why;
    }
}

/// One simulated host: its identity and the little state a real agent keeps durably.
pub(crate) struct SimHost {
    pub(crate) id: String,
    pub(crate) site: String,
    pub(crate) tls: TlsFiles,
    /// The loopback address it connects from (`None`: the system's choice, 127.0.0.1).
    source: Option<std::net::IpAddr>,
    /// The version `web` runs.
    version: String,
    /// The highest fencing token acted on.
    highest_token: u64,
    /// The latest result, resent in every hello.
    last_result: Option<pb::OrderResult>,
}

/// An order being carried out: its result is due at `due`.
struct Pending {
    order: pb::UpdateOrder,
    due: TokioInstant,
}

impl SimHost {
    pub(crate) fn new(
        id: String,
        site: String,
        tls: TlsFiles,
        source: Option<std::net::IpAddr>,
    ) -> Self {
        SimHost {
            id,
            site,
            tls,
            source,
            version: FIRST_VERSION.to_string(),
            highest_token: 0,
            last_result: None,
        }
    }

    fn status(&self, in_flight: Option<&pb::UpdateOrder>) -> pb::ServiceStatus {
        pb::ServiceStatus {
            service: "web".into(),
            version: self.version.clone(),
            sha256: String::new(),
            health: pb::Health::Healthy as i32,
            detail: String::new(),
            in_flight_token: in_flight.map_or(0, |o| o.token),
            in_flight_rollout: in_flight.map_or(String::new(), |o| o.rollout_id.clone()),
            observed_at_ms: now_ms(),
            regressed: false,
        }
    }

    fn hello(&self) -> pb::Hello {
        pb::Hello {
            host_id: self.id.clone(),
            labels: [("site".to_string(), self.site.clone())].into(),
            agent_version: "swarm".into(),
            services: vec![self.status(None)],
            highest_token: self.highest_token,
            recent_results: self.last_result.iter().cloned().collect(),
            in_flight: None,
            staged: Vec::new(),
            protocol_version: rollgate_proto::version::PROTOCOL_VERSION,
        }
    }

    /// Finishes `order`: the new version runs, the result is kept for the next hello; returns
    /// the messages that say so.
    fn finish(&mut self, order: &pb::UpdateOrder, stats: &SwarmStats) -> [pb::AgentMessage; 2] {
        if let Some(r) = &order.release {
            self.version = r.version.clone();
        }
        let result = pb::OrderResult {
            rollout_id: order.rollout_id.clone(),
            token: order.token,
            service: order.service.clone(),
            outcome: pb::Outcome::Succeeded as i32,
            running_version: self.version.clone(),
            reason: String::new(),
            health: pb::Health::Healthy as i32,
            finished_at_ms: now_ms(),
            highest_token: 0,
        };
        self.last_result = Some(result.clone());
        stats.order_finished();
        [
            msg(Msg::Result(result)),
            msg(Msg::Status(self.status(None))),
        ]
    }

    /// Keeps this host in session with the coordinator at `url` until `cancel`.
    pub(crate) async fn run(
        mut self,
        url: Arc<str>,
        stats: Arc<SwarmStats>,
        exec_delay: Duration,
        cancel: CancellationToken,
    ) {
        let mut attempt = 0u32;
        let mut seq = 0u64;
        loop {
            let began = Instant::now();
            let Some((welcomed, why)) = self
                .serve(&url, &stats, exec_delay, &mut seq, &cancel)
                .await
            else {
                return;
            };
            stats.lost(why);
            if welcomed && began.elapsed() >= STABLE_SESSION {
                attempt = 0;
            }
            let delay = backoff_delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One session; `None` on shutdown, else whether it was welcomed and why it ended.
    async fn serve(
        &mut self,
        url: &str,
        stats: &SwarmStats,
        exec_delay: Duration,
        seq: &mut u64,
        cancel: &CancellationToken,
    ) -> Option<(bool, String)> {
        let settings = |e: tonic::transport::Endpoint| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        };
        let dialed = Instant::now();
        let channel = tokio::select! {
            _ = cancel.cancelled() => return None,
            c = tokio::time::timeout(CONNECT_TIMEOUT * 3, rollgate_proto::tls::dial_from(url, settings, &self.tls, self.source)) => match c {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    stats.connects_failed.fetch_add(1, Ordering::Relaxed);
                    return Some((false, format!("connect: {e}")));
                }
                Err(_) => {
                    stats.connects_failed.fetch_add(1, Ordering::Relaxed);
                    return Some((false, "connect timed out".into()));
                }
            },
        };
        let opened = Instant::now();
        let dial_us = (opened - dialed).as_micros() as u64;
        stats.phases.lock().expect("phases").dial_us.push(dial_us);
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.send(msg(Msg::Hello(self.hello()))).await;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel.clone());
        let opening =
            tokio::time::timeout(STREAM_OPEN_TIMEOUT, client.connect(ReceiverStream::new(rx)));
        let mut inbound = tokio::select! {
            _ = cancel.cancelled() => return None,
            r = opening => match r {
                Ok(Ok(resp)) => resp.into_inner(),
                Ok(Err(s)) => return Some((false, format!("open: {}", s.message()))),
                Err(_) => return Some((false, "stream open timed out".into())),
            },
        };
        let mut session = Live {
            opened,
            welcomed: false,
            heartbeat: heartbeat_timer(DEFAULT_HEARTBEAT),
            pending: None,
            probe: probe_timer(),
        };
        let end = loop {
            let due = session.pending.as_ref().map(|p| p.due);
            tokio::select! {
                _ = cancel.cancelled() => break None,
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
                        if let Err(why) = self.on_message(m, &mut session, &tx, stats, exec_delay).await {
                            break Some(why);
                        }
                    }
                    Ok(None) => break Some("the coordinator closed the stream".into()),
                    Err(s) => break Some(format!("{}: {}", s.code(), s.message())),
                },
                _ = session.heartbeat.tick() => {
                    *seq += 1;
                    if tx.send(msg(Msg::Heartbeat(pb::Heartbeat { seq: *seq }))).await.is_err() {
                        break Some("the stream closed".into());
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(TokioInstant::now)), if due.is_some() => {
                    if let Some(p) = session.pending.take() {
                        for m in self.finish(&p.order, stats) {
                            let _ = tx.send(m).await;
                        }
                    }
                }
                _ = session.probe.tick() => {
                    if stats.probing.load(Ordering::Relaxed) {
                        tokio::spawn(probe(channel.clone(), stats.rtt_us.clone()));
                    }
                }
            }
        };
        if session.welcomed {
            stats.in_session.fetch_sub(1, Ordering::SeqCst);
        }
        // Like the agent's executor, an order in flight runs on without the stream; its
        // result goes in the next hello.
        if let Some(p) = session.pending.take() {
            self.finish(&p.order, stats);
        }
        end.map(|why| (session.welcomed, why))
    }

    async fn on_message(
        &mut self,
        m: pb::CoordinatorMessage,
        session: &mut Live,
        tx: &mpsc::Sender<pb::AgentMessage>,
        stats: &SwarmStats,
        exec_delay: Duration,
    ) -> Result<(), String> {
        match m.msg {
            Some(coordinator_message::Msg::Welcome(w)) => {
                if w.heartbeat_interval_ms > 0 {
                    session.heartbeat =
                        heartbeat_timer(Duration::from_millis(w.heartbeat_interval_ms));
                }
                if !session.welcomed {
                    let took = session.opened.elapsed().as_micros() as u64;
                    stats.phases.lock().expect("phases").welcome_us.push(took);
                    session.welcomed = true;
                    stats.in_session.fetch_add(1, Ordering::SeqCst);
                    stats.welcomes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(coordinator_message::Msg::Refusal(r)) => {
                stats.refusals.fetch_add(1, Ordering::Relaxed);
                *stats.last_refusal.lock().expect("last refusal") = r.reason.clone();
                return Err(format!("refused: {}", r.reason));
            }
            Some(coordinator_message::Msg::Update(order)) => {
                if order.token <= self.highest_token {
                    // A repeat (catch-up after a reconnect): say the result again.
                    let same = self.last_result.as_ref().filter(|r| r.token == order.token);
                    if let (Some(r), None) = (same, &session.pending) {
                        let _ = tx.send(msg(Msg::Result(r.clone()))).await;
                    }
                    return Ok(());
                }
                self.highest_token = order.token;
                stats.order_started();
                let progress = pb::OrderProgress {
                    rollout_id: order.rollout_id.clone(),
                    token: order.token,
                    service: order.service.clone(),
                    step: pb::Step::Accepted as i32,
                    message: String::new(),
                };
                let _ = tx.send(msg(Msg::Progress(progress))).await;
                let _ = tx.send(msg(Msg::Status(self.status(Some(&order))))).await;
                session.pending = Some(Pending {
                    order,
                    due: TokioInstant::now() + exec_delay,
                });
            }
            Some(coordinator_message::Msg::Stage(_)) | None => {}
        }
        Ok(())
    }
}

/// One live session's timers and the order in flight.
struct Live {
    /// When the dial completed (the stream's request was sent right after).
    opened: Instant,
    welcomed: bool,
    heartbeat: tokio::time::Interval,
    pending: Option<Pending>,
    probe: tokio::time::Interval,
}

/// A `grpc.health.v1.Health/Check` on the host's own connection: the round trip through the
/// coordinator's TLS, HTTP/2 and runtime, beside every heartbeat it is handling.
async fn probe(channel: tonic::transport::Channel, sink: Arc<Mutex<Vec<u64>>>) {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let t0 = Instant::now();
    let req = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let took = match tokio::time::timeout(PROBE_TIMEOUT, client.check(req)).await {
        Ok(Ok(_)) => t0.elapsed(),
        Ok(Err(_)) => return,
        Err(_) => PROBE_TIMEOUT,
    };
    sink.lock().expect("rtt").push(took.as_micros() as u64);
}

/// A heartbeat timer whose first tick is one period from now (as the agent's).
fn heartbeat_timer(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(TokioInstant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The RTT probe timer, started at a random phase so the probes spread evenly.
fn probe_timer() -> tokio::time::Interval {
    let phase = rand::thread_rng().gen_range(0..PROBE_EVERY.as_millis() as u64);
    let start = TokioInstant::now() + Duration::from_millis(phase);
    let mut t = tokio::time::interval_at(start, PROBE_EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

fn msg(m: Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// Wall-clock milliseconds since the epoch (the agent's observation stamps).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
