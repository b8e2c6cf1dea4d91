//! Admission of connections before they are authenticated (issue 10, item 3): every connection
//! is accepted at once, and the TLS handshakes in progress are bounded per source and in total
//! by shedding the *oldest unauthenticated* connections, those that have not sent a whole
//! ClientHello within [`STALL_GRACE`] first, never by refusing or queueing the new one.
//!
//! So a flood of idle or stalled sockets (slow loris) from anyone who can reach the port only
//! displaces its own oldest sockets, and a peer that completes its handshake promptly gets in:
//! from another source always; from the same address (behind one NAT) unless the flood brings
//! [`MAX_HANDSHAKES_PER_SOURCE`] newer connections while it is at it. Shedding
//! and failed handshakes are logged naming the peer, at most a few lines per source per
//! interval, then summed up: a flood cannot flood the log either.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Handshakes in progress from one source; a newer connection from it sheds its oldest.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 64;
/// Handshakes in progress from all sources together (bounds memory and tasks: a pending
/// handshake holds a task and rustls's buffers, tens of KiB at most). Room for a fleet's
/// reconnect storm: after a restart thousands of agents arrive within a second or two, faster
/// than two cores complete handshakes, and at 256 the oldest, nearly finished handshakes were
/// shed again and again (swarm bench, 3000 agents: 2977 sources shed in the first second, ~20
/// sessions a second opened for 4 s while the shed agents backed off).
pub const MAX_HANDSHAKES: usize = 1024;
/// A connection without a whole ClientHello this long after it was accepted is shed before
/// any other: a TLS client sends its hello right behind the TCP handshake's last ACK.
pub const STALL_GRACE: Duration = Duration::from_millis(250);
/// Length of one log interval: per source, the first lines of each kind are logged at once and
/// the rest are summed up in one line when the interval ends.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Shedding: lines per source per interval before the rest are counted.
const SHED_LOG_BURST: u32 = 1;
/// Refused handshakes: lines per source per interval (each names its reason; an operator
/// fixing a certificate sees several attempts) before the rest are counted.
const REFUSAL_LOG_BURST: u32 = 10;
/// Sources with a tally in one log; beyond it events are counted without a source.
const MAX_LOGGED_SOURCES: usize = 4096;

/// Bounds on handshakes in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From one source (see [`source_of`]).
    pub per_source: usize,
    /// From all sources.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_source: MAX_HANDSHAKES_PER_SOURCE,
            total: MAX_HANDSHAKES,
        }
    }
}

/// The source a connection counts against: its IPv4 address (also when mapped into IPv6), or
/// the /64 of an IPv6 address (one machine commonly holds a whole /64).
pub fn source_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The handshakes in progress, oldest first, each carrying a `T` (what sheds it).
#[derive(Debug)]
pub struct Pending<T> {
    limits: Limits,
    next: u64,
    /// By ticket; tickets grow, so iteration order is age order.
    entries: BTreeMap<u64, Entry<T>>,
    per_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry<T> {
    source: IpAddr,
    peer: SocketAddr,
    /// When it was accepted.
    since: Instant,
    /// A whole ClientHello arrived: one still without after [`STALL_GRACE`] is shed first.
    hello: bool,
    value: T,
}

/// A connection taken out of [`Pending`] to make room for a newer one.
#[derive(Debug, PartialEq, Eq)]
pub struct Shed<T> {
    /// Its source.
    pub source: IpAddr,
    /// Its address.
    pub peer: SocketAddr,
    /// What it was registered with.
    pub value: T,
}

impl<T> Pending<T> {
    /// An empty table with these bounds (each at least 1).
    pub fn new(limits: Limits) -> Self {
        Pending {
            limits: Limits {
                per_source: limits.per_source.max(1),
                total: limits.total.max(1),
            },
            next: 0,
            entries: BTreeMap::new(),
            per_source: HashMap::new(),
        }
    }

    /// Registers a new connection from `peer`, accepted `now`, first taking out what must be
    /// shed so that it fits: if its source is at its bound, that source's oldest connection
    /// stalled before its ClientHello (else its oldest); then, while the total is at its
    /// bound, the same anywhere. Returns the new connection's ticket and the shed ones.
    pub fn admit(&mut self, peer: SocketAddr, value: T, now: Instant) -> (u64, Vec<Shed<T>>) {
        let source = source_of(peer.ip());
        let mut shed = Vec::new();
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source {
            shed.extend(self.victim(Some(source), now).and_then(|t| self.take(t)));
        }
        while self.entries.len() >= self.limits.total {
            match self.victim(None, now).and_then(|t| self.take(t)) {
                Some(s) => shed.push(s),
                None => break,
            }
        }
        let ticket = self.next;
        self.next += 1;
        self.entries.insert(
            ticket,
            Entry {
                source,
                peer,
                since: now,
                hello: false,
                value,
            },
        );
        *self.per_source.entry(source).or_default() += 1;
        (ticket, shed)
    }

    /// The connection with `ticket` sent a whole ClientHello.
    pub fn hello(&mut self, ticket: u64) {
        if let Some(e) = self.entries.get_mut(&ticket) {
            e.hello = true;
        }
    }

    /// Takes the connection with `ticket` out (its handshake ended); `None` if it was shed.
    pub fn take(&mut self, ticket: u64) -> Option<Shed<T>> {
        let e = self.entries.remove(&ticket)?;
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        Some(Shed {
            source: e.source,
            peer: e.peer,
            value: e.value,
        })
    }

    /// Handshakes in progress.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no handshake is in progress.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The oldest connection (of `source`, when given) without a ClientHello [`STALL_GRACE`]
    /// after it was accepted, else the oldest. (Every connection starts without one.)
    fn victim(&self, source: Option<IpAddr>, now: Instant) -> Option<u64> {
        let mut oldest = None;
        for (&ticket, e) in &self.entries {
            if source.is_some_and(|s| s != e.source) {
                continue;
            }
            if !e.hello && now.saturating_duration_since(e.since) >= STALL_GRACE {
                return Some(ticket);
            }
            oldest.get_or_insert(ticket);
        }
        oldest
    }
}

/// A per-source log budget: at most `burst` lines per source per interval; the others are
/// counted and reported by [`SourceLog::due`] once their interval has ended.
#[derive(Debug)]
pub struct SourceLog {
    interval: Duration,
    burst: u32,
    sources: HashMap<IpAddr, Tally>,
    /// Events from sources beyond [`MAX_LOGGED_SOURCES`] in the current interval.
    untracked: u64,
    next_flush: Option<Instant>,
}

#[derive(Debug)]
struct Tally {
    since: Instant,
    logged: u32,
    counted: u64,
    last_peer: SocketAddr,
}

/// Events of one source that were counted rather than logged during an interval.
#[derive(Debug, PartialEq, Eq)]
pub struct Counted {
    /// The source; `None` for events of sources beyond the tracked number.
    pub source: Option<IpAddr>,
    /// The last peer address among them.
    pub last_peer: Option<SocketAddr>,
    /// How many.
    pub count: u64,
}

impl SourceLog {
    /// A log that lets `burst` lines per source through per `interval`.
    pub fn new(interval: Duration, burst: u32) -> Self {
        SourceLog {
            interval,
            burst,
            sources: HashMap::new(),
            untracked: 0,
            next_flush: None,
        }
    }

    /// Whether to log an event from `peer` now; `false` means it was counted instead.
    pub fn allow(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let source = source_of(peer.ip());
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_LOGGED_SOURCES {
            self.untracked += 1;
            return false;
        }
        self.next_flush.get_or_insert(now + self.interval);
        let tally = self.sources.entry(source).or_insert(Tally {
            since: now,
            logged: 0,
            counted: 0,
            last_peer: peer,
        });
        tally.last_peer = peer;
        if tally.logged < self.burst {
            tally.logged += 1;
            true
        } else {
            tally.counted += 1;
            false
        }
    }

    /// The counts of intervals that ended by `now` (cheap when none did). A source whose
    /// interval ended starts afresh with its next event.
    pub fn due(&mut self, now: Instant) -> Vec<Counted> {
        if self.next_flush.is_none_or(|t| now < t) {
            return Vec::new();
        }
        let interval = self.interval;
        let mut out = Vec::new();
        self.sources.retain(|source, t| {
            if now.duration_since(t.since) < interval {
                return true;
            }
            if t.counted > 0 {
                out.push(Counted {
                    source: Some(*source),
                    last_peer: Some(t.last_peer),
                    count: t.counted,
                });
            }
            false
        });
        if self.untracked > 0 {
            out.push(Counted {
                source: None,
                last_peer: None,
                count: std::mem::take(&mut self.untracked),
            });
        }
        self.next_flush = self
            .sources
            .values()
            .map(|t| t.since + interval)
            .min()
            .or(Some(now + interval));
        out
    }
}

/// What the listener shares with its handshake tasks: the table of handshakes in progress and
/// the rate-limited logs about them.
#[derive(Debug)]
pub struct Gate {
    pending: Mutex<Pending<CancellationToken>>,
    shed_log: Mutex<SourceLog>,
    refusal_log: Mutex<SourceLog>,
}

impl Gate {
    /// A gate with these bounds.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Gate {
            pending: Mutex::new(Pending::new(limits)),
            shed_log: Mutex::new(SourceLog::new(LOG_INTERVAL, SHED_LOG_BURST)),
            refusal_log: Mutex::new(SourceLog::new(LOG_INTERVAL, REFUSAL_LOG_BURST)),
        })
    }

    /// Admits a just-accepted connection from `peer`, shedding what [`Pending::admit`] says.
    /// The returned guard holds its place until dropped.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Admitted {
        let token = CancellationToken::new();
        let now = Instant::now();
        let (ticket, shed) = lock(&self.pending).admit(peer, token.clone(), now);
        let mut log = lock(&self.shed_log);
        for s in shed {
            s.value.cancel();
            if log.allow(s.peer, now) {
                warn!(
                    peer = %s.peer,
                    "shedding unauthenticated connections from {}: over {} TLS handshakes in \
                     progress from it or {} in all; the oldest, stalled ones before others, are \
                     closed. Further sheds from it are counted and logged every {} s",
                    s.source,
                    MAX_HANDSHAKES_PER_SOURCE,
                    MAX_HANDSHAKES,
                    LOG_INTERVAL.as_secs()
                );
            }
        }
        report(&mut log, now, "shed", "unauthenticated connections");
        drop(log);
        report(
            &mut lock(&self.refusal_log),
            now,
            "refused",
            "TLS handshakes",
        );
        Admitted {
            gate: self.clone(),
            ticket,
            shed: token,
        }
    }

    /// Whether to log a refused handshake from `peer` now (else it is counted and summed up).
    pub fn log_refusal(&self, peer: SocketAddr) -> bool {
        lock(&self.refusal_log).allow(peer, Instant::now())
    }
}

/// Logs the counts of `log`'s intervals that ended.
fn report(log: &mut SourceLog, now: Instant, verb: &str, what: &str) {
    for c in log.due(now) {
        match (c.source, c.last_peer) {
            (Some(source), Some(peer)) => warn!(
                peer = %peer,
                "{verb} {} more {what} from {source} in the last {} s",
                c.count,
                LOG_INTERVAL.as_secs()
            ),
            _ => warn!(
                "{verb} {} more {what} from sources too many to name in the last {} s",
                c.count,
                LOG_INTERVAL.as_secs()
            ),
        }
    }
}

/// A connection's place among the handshakes in progress; leaving it (drop) makes room.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    ticket: u64,
    /// Fires when a newer connection shed this one.
    pub shed: CancellationToken,
}

impl Admitted {
    /// The connection sent a whole ClientHello: stalled ones are shed before it from now on.
    pub fn hello(&self) {
        lock(&self.gate.pending).hello(self.ticket);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.gate.pending).take(self.ticket);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn limits(per_source: usize, total: usize) -> Limits {
        Limits { per_source, total }
    }

    /// Admits `peers` in order (name, address, sent its hello?), one every [`STALL_GRACE`], and returns
    /// the names shed at each step.
    fn run(limits: Limits, peers: &[(&'static str, &str, bool)]) -> Vec<Vec<&'static str>> {
        let t0 = Instant::now();
        let mut p = Pending::new(limits);
        let mut out = Vec::new();
        for (i, &(name, a, hello)) in peers.iter().enumerate() {
            let now = t0 + STALL_GRACE * i as u32;
            let (ticket, shed) = p.admit(addr(a), name, now);
            if hello {
                p.hello(ticket);
            }
            out.push(shed.into_iter().map(|s| s.value).collect());
            assert!(p.len() <= limits.total);
        }
        out
    }

    #[test]
    fn sheds_the_oldest_stalled_connection_first_never_the_new_one() {
        type Case = (
            &'static str,
            Limits,
            Vec<(&'static str, &'static str, bool)>,
            Vec<Vec<&'static str>>,
        );
        let cases: Vec<Case> = vec![
            (
                "within bounds nothing is shed",
                limits(2, 4),
                vec![("a", "10.0.0.1:1", false), ("b", "10.0.0.1:2", false)],
                vec![vec![], vec![]],
            ),
            (
                "a source over its bound sheds its own oldest",
                limits(2, 10),
                vec![
                    ("a", "10.0.0.1:1", false),
                    ("x", "10.0.0.2:1", false),
                    ("b", "10.0.0.1:2", false),
                    ("c", "10.0.0.1:3", false),
                    ("d", "10.0.0.1:4", false),
                ],
                vec![vec![], vec![], vec![], vec!["a"], vec!["b"]],
            ),
            (
                "stalled ones go before older ones that sent their hello",
                limits(2, 10),
                vec![
                    ("hello", "10.0.0.1:1", true),
                    ("idle", "10.0.0.1:2", false),
                    ("new", "10.0.0.1:3", true),
                    ("newer", "10.0.0.1:4", true),
                ],
                vec![vec![], vec![], vec!["idle"], vec!["hello"]],
            ),
            (
                "the total bound sheds the oldest stalled anywhere",
                limits(10, 3),
                vec![
                    ("a", "10.0.0.1:1", true),
                    ("b", "10.0.0.2:1", false),
                    ("c", "10.0.0.3:1", true),
                    ("d", "10.0.0.4:1", true),
                    ("e", "10.0.0.5:1", true),
                ],
                vec![vec![], vec![], vec![], vec!["b"], vec!["a"]],
            ),
            (
                "an IPv6 /64 is one source, a mapped IPv4 is its IPv4",
                limits(1, 10),
                vec![
                    ("a", "[2001:db8::1]:1", false),
                    ("b", "[2001:db8::2]:1", false),
                    ("c", "[2001:db8:0:1::1]:1", false),
                    ("d", "10.0.0.1:1", false),
                    ("e", "[::ffff:10.0.0.1]:2", false),
                ],
                vec![vec![], vec!["a"], vec![], vec![], vec!["d"]],
            ),
        ];
        for (what, limits, peers, want) in cases {
            assert_eq!(run(limits, &peers), want, "{what}");
        }
    }

    #[test]
    fn a_just_accepted_connection_is_not_shed_as_stalled() {
        let t0 = Instant::now();
        let mut p = Pending::new(limits(2, 10));
        let (hello, _) = p.admit(addr("10.0.0.1:1"), "hello", t0);
        p.hello(hello);
        let soon = t0 + STALL_GRACE;
        p.admit(addr("10.0.0.1:2"), "fresh", soon);
        let (_, shed) = p.admit(addr("10.0.0.1:3"), "next", soon + STALL_GRACE / 2);
        assert_eq!(
            shed.into_iter().map(|s| s.value).collect::<Vec<_>>(),
            ["hello"]
        );
    }

    #[test]
    fn finished_handshakes_make_room() {
        let now = Instant::now();
        let mut p = Pending::new(limits(1, 1));
        let (t, _) = p.admit(addr("10.0.0.1:1"), "a", now);
        assert_eq!(p.take(t).map(|s| s.value), Some("a"));
        assert!(p.is_empty());
        let (_, shed) = p.admit(addr("10.0.0.1:2"), "b", now);
        assert!(shed.is_empty());
        // A shed connection's own take finds nothing (it is gone already).
        let (_, shed) = p.admit(addr("10.0.0.1:3"), "c", now);
        assert_eq!(shed.len(), 1);
        assert_eq!(p.take(t), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_log_names_a_source_once_per_interval_then_sums_up() {
        let t0 = Instant::now();
        let mut log = SourceLog::new(Duration::from_secs(10), 1);
        let a1 = addr("10.0.0.1:1");
        let a2 = addr("10.0.0.1:2");
        let b = addr("10.0.0.2:1");
        assert!(log.allow(a1, t0));
        assert!(!log.allow(a2, t0 + Duration::from_secs(1)));
        assert!(!log.allow(a1, t0 + Duration::from_secs(2)));
        assert!(log.allow(b, t0 + Duration::from_secs(3)));
        assert_eq!(log.due(t0 + Duration::from_secs(9)), vec![]);
        assert_eq!(
            log.due(t0 + Duration::from_secs(10)),
            vec![Counted {
                source: Some("10.0.0.1".parse().expect("ip")),
                last_peer: Some(a1),
                count: 2,
            }]
        );
        // b's interval ends later, with nothing counted: no line, and it is forgotten.
        assert_eq!(log.due(t0 + Duration::from_secs(13)), vec![]);
        assert!(log.sources.is_empty());
        // A new interval: the first event is logged again.
        assert!(log.allow(a2, t0 + Duration::from_secs(14)));
    }
}
