//! The stream to the coordinator: hello, heartbeats, orders, results; reconnects forever.
//!
//! Losing the stream never touches the services or the order in flight: the executor runs on
//! its own, and everything said while disconnected is in the next hello (statuses, the order in
//! flight, the durable recent results, the staged releases). With several coordinator replicas
//! configured, every failed connect or lost session moves on to the next one in the list.

use std::time::Duration;

use rand::Rng;
use rollgate_proto::pb::agent_service_client::AgentServiceClient;
use rollgate_proto::pb::{self, agent_message::Msg, coordinator_message};
use rollgate_proto::spec::human;
use rollgate_proto::tls::{Role, TlsConfig};
use rollgate_proto::MAX_MESSAGE_BYTES;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::update::executor::{Executor, Outbox};

/// First reconnect delay (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest reconnect delay (before jitter).
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A session that lasted this long after its welcome resets the backoff.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Time to open the TCP connection to the coordinator.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings detect a coordinator that vanished without closing the connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered for this long closes the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the coordinator to answer the opening of the stream (its response headers).
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards the coordinator before the session waits for the stream.
const OUTBOUND_QUEUE: usize = 64;

/// Where and how often to talk to the coordinator.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The coordinator replicas' URLs, tried in this order, round-robin.
    pub coordinators: Vec<String>,
    /// Heartbeat interval until a welcome says otherwise.
    pub heartbeat_interval: Duration,
    /// mTLS settings; the files are read again at every connect, so renewed certificates are
    /// used without a restart.
    pub tls: TlsConfig,
}

/// Checks the `[tls]` settings before the agent starts: the files load, the certificate is a
/// host certificate for this very host, and the URLs' scheme matches (https with TLS, http
/// only in insecure development mode). Returns what to say on a bad setting.
pub fn check_tls(config: &crate::config::Config) -> Result<(), String> {
    let tls = &config.tls;
    if tls.insecure() {
        // Plaintext lets anyone on the path forge orders that run as root here: only a
        // coordinator on this very machine is close enough.
        if let Some(u) = config.coordinators.iter().find(|u| !is_loopback_http(u)) {
            if u.starts_with("http://") {
                return Err(format!(
                    "[tls] insecure_plaintext = true is refused for the coordinator URL {u:?}: \
                     without TLS anyone on the path can forge orders this agent runs as root. \
                     Plaintext is for a development coordinator on this machine only \
                     (http://127.0.0.1:PORT, http://[::1]:PORT or http://localhost:PORT); \
                     otherwise remove insecure_plaintext and set [tls] ca, cert and key"
                ));
            }
        }
        if let Some(u) = config
            .coordinators
            .iter()
            .find(|u| u.starts_with("https://"))
        {
            return Err(format!(
                "[tls] insecure_plaintext = true talks plain http, but the coordinator URL {u:?} \
                 is https; use http:// for a development coordinator, or configure [tls] ca, \
                 cert and key"
            ));
        }
        tracing::warn!(
            "INSECURE: [tls] insecure_plaintext = true: this agent talks plain http to the \
             coordinator; anyone on the path can read and forge its orders. Development only."
        );
        return Ok(());
    }
    let hint = format!(
        "the fleet CA, and this host's certificate from `rollgate certs issue host {}`",
        config.host_id
    );
    let files = tls
        .load(Role::Host, &hint)
        .map_err(|e| e.to_string())?
        .ok_or("TLS settings missing")?;
    if files.identity.name != config.host_id {
        return Err(format!(
            "[tls] cert is for host {:?} ({}), but host_id is {:?}; the coordinator accepts a \
             host only with its own certificate. Issue one with `rollgate certs issue host {}`, \
             or fix host_id",
            files.identity.name,
            files.identity.uri(),
            config.host_id,
            config.host_id
        ));
    }
    if let Some(u) = config
        .coordinators
        .iter()
        .find(|u| u.starts_with("http://"))
    {
        return Err(format!(
            "the coordinator URL {u:?} is plain http, but [tls] is set up; write it as \
             \"https://{}\"",
            u.trim_start_matches("http://")
        ));
    }
    Ok(())
}

/// Whether `url` is `http://` to this machine: a loopback IP (127.0.0.0/8, ::1) or
/// `localhost`, with a port.
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| host == "localhost" && port.parse::<u16>().is_ok())
}

/// The delay before reconnect attempt `attempt` (0-based): exponential from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], with full jitter (uniform in 0..=that), so a
/// fleet that lost its coordinator does not come back in lockstep.
pub fn backoff_delay(attempt: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_CAP);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.gen_range(0..=ms))
}

/// The coordinator replicas and the one to dial: after every failed connect or lost session
/// the next one in the list is tried (round-robin), so a dead replica costs one attempt.
#[derive(Debug, Clone)]
pub struct Replicas {
    urls: Vec<String>,
    next: usize,
}

impl Replicas {
    /// The replicas in the order they are tried, starting with the first; `None` if `urls`
    /// is empty.
    pub fn new(urls: Vec<String>) -> Option<Replicas> {
        (!urls.is_empty()).then_some(Replicas { urls, next: 0 })
    }

    /// The URL to dial now.
    pub fn current(&self) -> &str {
        &self.urls[self.next]
    }

    /// Place of the current replica in the list (0-based).
    pub fn index(&self) -> usize {
        self.next
    }

    /// How many replicas there are (at least one).
    pub fn count(&self) -> usize {
        self.urls.len()
    }

    /// Moves on to the next replica (after the last, back to the first).
    pub fn advance(&mut self) {
        self.next = (self.next + 1) % self.urls.len();
    }

    /// The current replica for logs: its URL, and its place in the list when there are
    /// several.
    pub fn describe(&self) -> String {
        match self.urls.len() {
            1 => self.current().to_string(),
            n => format!("{} (replica {} of {n})", self.current(), self.next + 1),
        }
    }
}

/// Why a session ended.
enum End {
    /// The agent is shutting down.
    Shutdown,
    /// The connection failed or the stream broke.
    Lost {
        /// Whether the coordinator had welcomed us (the stream was up).
        welcomed: bool,
        /// What happened.
        why: String,
    },
}

/// Keeps a session with the coordinator until `cancel`: connect, hello, heartbeats, orders to
/// `executor`, messages from `outbox` to the coordinator; on loss, back off and reconnect to
/// the next replica. `channel` publishes the live connection (for `store:` downloads) or
/// `None`.
pub async fn run(
    cfg: SessionConfig,
    executor: &Executor,
    outbox: &mut Outbox,
    channel: watch::Sender<Option<Channel>>,
    cancel: CancellationToken,
) {
    let Some(mut replicas) = Replicas::new(cfg.coordinators.clone()) else {
        tracing::error!("no coordinator URL configured; services run, but no orders can come");
        wait_offline(None, outbox, &cancel).await;
        return;
    };
    let mut attempt = 0u32;
    let mut seq = 0u64;
    // One per replica: with replicas taken in turn, a single one would never see a repeat.
    let mut quiet = vec![QuietRepeats::default(); replicas.count()];
    loop {
        let began = Instant::now();
        let end = serve(
            &cfg, &replicas, executor, outbox, &channel, &mut seq, &cancel,
        )
        .await;
        channel.send_replace(None);
        let (welcomed, why) = match end {
            End::Shutdown => return,
            End::Lost { welcomed, why } => (welcomed, why),
        };
        crate::metrics::get().reconnect();
        if welcomed && began.elapsed() >= STABLE_SESSION {
            attempt = 0;
        }
        let delay = backoff_delay(attempt, &mut rand::thread_rng());
        attempt = attempt.saturating_add(1);
        let (at, index) = (replicas.describe(), replicas.index());
        replicas.advance();
        let then = if replicas.count() > 1 {
            format!("trying {} in {}", replicas.current(), human(delay))
        } else {
            format!("retrying in {}", human(delay))
        };
        if welcomed {
            tracing::warn!("lost coordinator at {at}: {why}; services keep running; {then}");
            quiet.fill(QuietRepeats::default());
        } else if quiet[index].should_warn(&why) {
            tracing::warn!(
                "cannot reach coordinator at {at}: {why}; services keep running; {then}"
            );
        } else {
            tracing::debug!("cannot reach coordinator at {at}: {why}; {then}");
        }
        if !wait_offline(Some(Instant::now() + delay), outbox, &cancel).await {
            return;
        }
    }
}

/// Waits until `wake` (forever if `None`) while disconnected, dropping what the outbox says:
/// nobody is there to hear it, and the next hello carries the same facts. Returns `false` when
/// the agent is shutting down.
async fn wait_offline(
    wake: Option<Instant>,
    outbox: &mut Outbox,
    cancel: &CancellationToken,
) -> bool {
    let sleep = async {
        match wake {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = &mut sleep => return true,
            m = outbox.recv() => if m.is_none() { return false },
        }
    }
}

async fn serve(
    cfg: &SessionConfig,
    replicas: &Replicas,
    executor: &Executor,
    outbox: &mut Outbox,
    channel_slot: &watch::Sender<Option<Channel>>,
    seq: &mut u64,
    cancel: &CancellationToken,
) -> End {
    let lost = |why: String| End::Lost {
        welcomed: false,
        why,
    };
    let url = replicas.current().to_string();
    let settings = |e: Endpoint| {
        e.connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
    };
    let connect = async {
        if cfg.tls.insecure() {
            let e = Endpoint::from_shared(url.clone()).map_err(|e| format!("bad URL: {e}"))?;
            return settings(e)
                .connect()
                .await
                .map_err(|e| crate::errors::error_chain(&e));
        }
        // Read at every connect: a renewed certificate is picked up without a restart.
        let files = match cfg.tls.load(Role::Host, "") {
            Ok(Some(f)) => f,
            Ok(None) => return Err("TLS settings missing".into()),
            Err(e) => return Err(format!("cannot use the TLS files: {e}")),
        };
        // The server must be a coordinator of our fleet, not only hold a certificate of our CA.
        rollgate_proto::tls::dial(&url, settings, &files)
            .await
            .map_err(|e| crate::errors::error_chain(&e))
    };
    let channel = tokio::select! {
        _ = cancel.cancelled() => return End::Shutdown,
        // TCP connect and TLS handshake each have their own timeout; this bounds the whole.
        c = tokio::time::timeout(CONNECT_TIMEOUT * 3, connect) => match c {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return lost(e),
            Err(_) => return lost(format!(
                "no connection within {:?} (the coordinator accepts TCP but does not answer)",
                CONNECT_TIMEOUT * 3
            )),
        },
    };

    // Whatever is queued is already reflected in the hello built right after.
    while outbox.try_recv().is_ok() {}
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let hello = executor.hello();
    tracing::debug!(
        services = hello.services.len(),
        results = hello.recent_results.len(),
        highest_token = hello.highest_token,
        "sending hello"
    );
    if tx.send(message(Msg::Hello(hello))).await.is_err() {
        return lost("the outbound stream closed before the hello".into());
    }
    let mut client =
        AgentServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let opening =
        tokio::time::timeout(STREAM_OPEN_TIMEOUT, client.connect(ReceiverStream::new(rx)));
    let mut inbound = tokio::select! {
        _ = cancel.cancelled() => return End::Shutdown,
        r = opening => match r {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return lost(status_text(&status)),
            Err(_) => {
                let waited = human(STREAM_OPEN_TIMEOUT);
                return lost(format!("the coordinator did not open the stream within {waited}"));
            }
        },
    };
    channel_slot.send_replace(Some(channel));

    let at = replicas.describe();
    let mut welcomed = false;
    let mut heartbeat = heartbeat_timer(cfg.heartbeat_interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return End::Shutdown,
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if let Err(why) = on_message(m, &at, executor, &mut welcomed, &mut heartbeat) {
                        return End::Lost { welcomed, why };
                    }
                }
                Ok(None) => {
                    let why = "the coordinator closed the stream".to_string();
                    return End::Lost { welcomed, why };
                }
                Err(status) => return End::Lost { welcomed, why: status_text(&status) },
            },
            _ = heartbeat.tick() => {
                *seq += 1;
                let beat = message(Msg::Heartbeat(pb::Heartbeat { seq: *seq }));
                if tx.send(beat).await.is_err() {
                    return End::Lost { welcomed, why: "the stream closed".into() };
                }
            }
            m = outbox.recv() => {
                let Some(m) = m else { return End::Shutdown };
                if tx.send(m).await.is_err() {
                    return End::Lost { welcomed, why: "the stream closed".into() };
                }
            }
        }
    }
}

/// Acts on one coordinator message from the replica at `at`; `Err` ends the session with that
/// reason. Public for the fuzz targets (`rollgate_agent::on_coordinator_message`).
pub fn on_message(
    msg: pb::CoordinatorMessage,
    at: &str,
    executor: &Executor,
    welcomed: &mut bool,
    heartbeat: &mut tokio::time::Interval,
) -> Result<(), String> {
    match msg.msg {
        Some(coordinator_message::Msg::Welcome(w)) => {
            use rollgate_proto::version::{
                compat, coordinator_too_old, Compat, MIN_COORDINATOR_PROTOCOL,
            };
            if compat(w.protocol_version, MIN_COORDINATOR_PROTOCOL) == Compat::TooOld {
                return Err(coordinator_too_old(w.protocol_version));
            }
            let mut every = heartbeat.period();
            if w.heartbeat_interval_ms > 0 {
                every = Duration::from_millis(w.heartbeat_interval_ms);
                *heartbeat = heartbeat_timer(every);
            }
            if !*welcomed {
                tracing::info!(
                    "connected to coordinator {} at {at}; heartbeat every {}",
                    w.coordinator_id,
                    human(every)
                );
            }
            *welcomed = true;
            executor.welcomed();
        }
        Some(coordinator_message::Msg::Refusal(r)) => {
            return Err(format!("the coordinator refused this agent: {}", r.reason));
        }
        Some(coordinator_message::Msg::Update(order)) => executor.handle_order(order),
        Some(coordinator_message::Msg::Stage(order)) => executor.handle_stage(order),
        None => tracing::debug!("ignoring an empty message from the coordinator"),
    }
    Ok(())
}

/// A heartbeat timer whose first tick is one period from now.
fn heartbeat_timer(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(Instant::now() + every, every);
    // After a stall, one heartbeat is enough; a burst of catch-up beats says nothing more.
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Keeps a coordinator that stays down from filling the log: the same failure is logged as a
/// warning the first time and then every [`REPEAT_WARN_EVERY`] attempts.
#[derive(Debug, Default, Clone)]
struct QuietRepeats {
    last: String,
    repeats: u32,
}

/// While the same connect error repeats, one warning per this many attempts.
const REPEAT_WARN_EVERY: u32 = 20;

impl QuietRepeats {
    fn should_warn(&mut self, why: &str) -> bool {
        if why == self.last {
            self.repeats += 1;
            self.repeats.is_multiple_of(REPEAT_WARN_EVERY)
        } else {
            self.last = why.to_string();
            self.repeats = 0;
            true
        }
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{}: {}", status.code(), status.message())
}

fn message(msg: Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_to_a_coordinator_on_this_machine() {
        for (url, ok) in [
            ("http://127.0.0.1:7443", true),
            ("http://127.3.4.5:7443/", true),
            ("http://[::1]:7443", true),
            ("http://localhost:7443", true),
            ("http://10.0.0.1:7443", false),
            ("http://0.0.0.0:7443", false),
            ("http://localhost.example.com:7443", false),
            ("http://coord:7443", false),
            ("https://127.0.0.1:7443", false),
        ] {
            assert_eq!(is_loopback_http(url), ok, "{url}");
        }
        let text = "host_id = \"h\"\ncoordinators = [\"http://127.0.0.1:1\", \
                    \"http://10.0.0.1:7443\"]\nstate_dir = \"/tmp/x\"\n\
                    [tls]\ninsecure_plaintext = true\n";
        let cfg = crate::config::Config::parse(text).expect("config");
        let e = check_tls(&cfg).expect_err("a remote plaintext coordinator");
        assert!(
            e.contains("insecure_plaintext = true is refused for the coordinator URL \"http://10.0.0.1:7443\"")
                && e.contains("http://127.0.0.1:PORT"),
            "{e}"
        );
        let cfg = crate::config::Config::parse(&text.replace(", \"http://10.0.0.1:7443\"", ""))
            .expect("config");
        assert_eq!(check_tls(&cfg), Ok(()));
    }

    #[test]
    fn replicas_are_tried_round_robin() {
        assert!(Replicas::new(Vec::new()).is_none());
        let mut one = Replicas::new(vec!["http://a:1".into()]).expect("one");
        assert_eq!(one.describe(), "http://a:1");
        one.advance();
        assert_eq!(one.current(), "http://a:1");

        let urls = ["http://a:1", "http://b:1", "http://c:1"];
        let mut r = Replicas::new(urls.iter().map(|u| u.to_string()).collect()).expect("three");
        let mut dialed = Vec::new();
        for _ in 0..7 {
            dialed.push(r.current().to_string());
            r.advance();
        }
        assert_eq!(
            dialed,
            [urls[0], urls[1], urls[2], urls[0], urls[1], urls[2], urls[0]]
        );
        assert_eq!(r.describe(), "http://b:1 (replica 2 of 3)");
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut rng = rand::thread_rng();
        for attempt in 0..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_CAP);
            for _ in 0..50 {
                let d = backoff_delay(attempt, &mut rng);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            }
        }
        // Full jitter: over many draws at the cap, both small and large delays appear.
        let draws: Vec<Duration> = (0..500).map(|_| backoff_delay(30, &mut rng)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(1)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(4)));
    }
}
