//! What a host may put into etcd and the logs (S9): bounds on every field of its hello and
//! statuses, and rate-limited logging of what it does wrong.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rollgate_proto::{names, pb};

/// Most labels a host record keeps.
pub const MAX_LABELS: usize = 32;
/// Longest label key, in bytes (as a Kubernetes label name).
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;
/// Most services a host record keeps.
pub const MAX_SERVICES: usize = 64;
/// Longest version (a service's or the agent's), in bytes.
pub const MAX_VERSION: usize = 128;
/// Longest detail, reason or progress message kept, in bytes; longer ones are cut with
/// [`CUT_MARKER`].
pub const MAX_DETAIL: usize = 1024;
/// Appended to text cut at its bound.
pub const CUT_MARKER: &str = "…[cut]";
/// The window over which complaints about one peer are counted.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// Complaints of one kind about one peer logged per window; the rest are counted.
pub const LOG_BURST: u32 = 10;

/// Logs one kind of event at most `burst` times per window, counting what it held back.
#[derive(Debug, Clone)]
pub struct LogLimit {
    every: Duration,
    burst: u32,
    window: Option<Instant>,
    logged: u32,
    held_back: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(LOG_EVERY, LOG_BURST)
    }
}

impl LogLimit {
    /// At most `burst` lines per `every`.
    pub fn new(every: Duration, burst: u32) -> Self {
        LogLimit {
            every,
            burst,
            window: None,
            logged: 0,
            held_back: 0,
        }
    }
    /// `Some(n)` when this occurrence is to be logged (`n` occurrences were held back before
    /// it), `None` when it is held back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= self.every)
        {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged >= self.burst {
            self.held_back += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Shortest time between two writes of one host's record for its statuses: faster statuses
/// are coalesced and the latest state is written when the interval is up.
pub const HOST_WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// Coalesced statuses in a session after which the host is logged as flooding.
pub const FLOOD_AFTER: u64 = 20;

/// Paces the writes of one host's record: at most one per interval, the latest state wins.
#[derive(Debug, Clone)]
pub struct WriteGate {
    interval: Duration,
    last: Option<Instant>,
    pending: bool,
    /// Statuses coalesced since the last write (for the log line).
    pub coalesced: u64,
}

impl WriteGate {
    /// At most one write per `interval`.
    pub fn new(interval: Duration) -> Self {
        WriteGate {
            interval,
            last: None,
            pending: false,
            coalesced: 0,
        }
    }
    /// Whether a changed record may be written now; if not, it is pending until [`Self::due`].
    pub fn admit(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_none_or(|at| now.duration_since(at) >= self.interval)
        {
            return true;
        }
        self.pending = true;
        self.coalesced += 1;
        false
    }
    /// Records a write of the host record (for any reason): nothing is pending any more.
    pub fn wrote(&mut self, now: Instant) {
        self.last = Some(now);
        self.pending = false;
    }
    /// When the pending state is to be written, if one is.
    pub fn due(&self) -> Option<Instant> {
        match (self.pending, self.last) {
            (true, Some(at)) => Some(at + self.interval),
            _ => None,
        }
    }
}

/// Text cut to at most `max` bytes (on a character boundary), marked when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(CUT_MARKER.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARKER}", &text[..end])
}

/// What was dropped or cut from a peer's report, for one log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trimmed(Vec<String>);

impl Trimmed {
    fn note(&mut self, what: String) {
        self.0.push(what);
    }
    /// Nothing was dropped or cut.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Trimmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// The labels a host record keeps: at most [`MAX_LABELS`], keys and values within their
/// bounds (others dropped, not cut: a cut label would match a selector it was not meant to).
pub fn labels(
    raw: &std::collections::HashMap<String, String>,
    trimmed: &mut Trimmed,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let sorted: BTreeMap<&String, &String> = raw.iter().collect();
    for (k, v) in sorted {
        if k.is_empty() || k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE {
            trimmed.note(format!(
                "label {:?} dropped (keys 1-{MAX_LABEL_KEY} bytes, values up to {MAX_LABEL_VALUE})",
                rollgate_proto::text::printable(&bounded(k, 64))
            ));
        } else if out.len() >= MAX_LABELS {
            trimmed.note(format!("labels past the first {MAX_LABELS} dropped"));
            break;
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Whether a status names a service the record may hold: a valid name, and room for it.
pub fn service_fits(
    name: &str,
    known: &BTreeMap<String, impl Sized>,
    trimmed: &mut Trimmed,
) -> bool {
    if let Err(e) = names::check("service name", name) {
        trimmed.note(format!(
            "status dropped: {}",
            rollgate_proto::text::printable(&bounded(&e.to_string(), 256))
        ));
        return false;
    }
    if !known.contains_key(name) && known.len() >= MAX_SERVICES {
        trimmed.note(format!(
            "status of service {name} dropped: a host reports at most {MAX_SERVICES} services"
        ));
        return false;
    }
    true
}

/// A status with every text field within its bound; an id that is not a rollout id is
/// dropped (the order's token still marks the service as out of service).
pub fn status(s: &pb::ServiceStatus, trimmed: &mut Trimmed) -> pb::ServiceStatus {
    let mut s = s.clone();
    cut(&mut s.version, MAX_VERSION, "version", trimmed);
    cut(&mut s.detail, MAX_DETAIL, "detail", trimmed);
    if !s.sha256.is_empty() && names::check_sha256(&s.sha256).is_err() {
        trimmed.note("sha256 that is not a digest dropped".into());
        s.sha256.clear();
    }
    if !s.in_flight_rollout.is_empty() && names::RolloutId::parse(&s.in_flight_rollout).is_err() {
        trimmed.note(format!(
            "in-flight rollout id {:?} dropped: not a rollout id",
            rollgate_proto::text::printable(&bounded(&s.in_flight_rollout, 64))
        ));
        s.in_flight_rollout.clear();
    }
    s
}

/// Cuts `text` to `max` bytes, noting it.
pub fn cut(text: &mut String, max: usize, what: &str, trimmed: &mut Trimmed) {
    if text.len() > max {
        trimmed.note(format!("{what} cut from {} to {max} bytes", text.len()));
        *text = bounded(text, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_char_boundary_and_marked() {
        let long = "é".repeat(1000);
        let cut = bounded(&long, MAX_DETAIL);
        assert!(
            cut.len() <= MAX_DETAIL && cut.ends_with(CUT_MARKER),
            "{}",
            cut.len()
        );
        assert_eq!(bounded("short", MAX_DETAIL), "short");
    }

    #[test]
    fn labels_are_bounded_in_count_and_bytes() {
        let mut raw: std::collections::HashMap<String, String> = (0..100)
            .map(|i| (format!("k{i:03}"), "v".to_string()))
            .collect();
        raw.insert("big".into(), "x".repeat(MAX_LABEL_VALUE + 1));
        raw.insert("y".repeat(MAX_LABEL_KEY + 1), "v".into());
        let mut t = Trimmed::default();
        let out = labels(&raw, &mut t);
        assert_eq!(out.len(), MAX_LABELS);
        assert!(!out.contains_key("big"));
        assert!(t.to_string().contains("dropped"), "{t}");
    }

    #[test]
    fn statuses_are_bounded() {
        let mut t = Trimmed::default();
        let s = status(
            &pb::ServiceStatus {
                service: "web".into(),
                version: "v".repeat(500),
                detail: "d".repeat(5000),
                in_flight_rollout: "r-0123456789abcdef/hosts/x".into(),
                ..Default::default()
            },
            &mut t,
        );
        assert!(s.version.len() <= MAX_VERSION && s.detail.len() <= MAX_DETAIL);
        assert!(s.in_flight_rollout.is_empty());
        let known: BTreeMap<String, ()> =
            (0..MAX_SERVICES).map(|i| (format!("s{i}"), ())).collect();
        assert!(!service_fits("new", &known, &mut t));
        assert!(service_fits("s1", &known, &mut t));
        assert!(!service_fits("a/b", &BTreeMap::<String, ()>::new(), &mut t));
    }

    #[test]
    fn writes_are_paced_and_the_latest_is_due() {
        let mut g = WriteGate::new(Duration::from_millis(250));
        let t0 = Instant::now();
        assert!(g.admit(t0));
        g.wrote(t0);
        assert_eq!(g.due(), None);
        assert!(!g.admit(t0 + Duration::from_millis(10)));
        assert!(!g.admit(t0 + Duration::from_millis(20)));
        assert_eq!(g.due(), Some(t0 + Duration::from_millis(250)));
        g.wrote(t0 + Duration::from_millis(250));
        assert_eq!((g.due(), g.coalesced), (None, 2));
        assert!(g.admit(t0 + Duration::from_millis(600)));
    }

    #[test]
    fn log_limit_holds_back_and_counts() {
        let mut l = LogLimit::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(61)), Some(2));
    }
}
