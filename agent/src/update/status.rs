//! What the agent tells the coordinator about each service: its latest observed status, the
//! order in flight on it, and the clock that orders observations and results.
//!
//! The contract (what the coordinator may rely on):
//! - Every `ServiceStatus` names the order in flight on the service (`in_flight_token`,
//!   `in_flight_rollout`) from the moment intake accepts it (or, after an agent restart, from
//!   the start, for an order the journal still has in flight) until its result is queued;
//!   after that result the next status (always sent) has token 0 and rollout "".
//! - `observed_at_ms` and `OrderResult.finished_at_ms` come from one clock that never goes
//!   backwards within an agent (nor below the results its journal kept), so they order what
//!   the agent saw. A result's final status is observed after the result.
//! - The board is updated before anything is queued, so a hello built after a message was
//!   queued already says what the message says; a message queued before the hello may still
//!   arrive after it, and then its `observed_at_ms` is not newer than the hello's.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rollgate_proto::pb::{self, agent_message::Msg, Health};
use tokio::sync::mpsc;

use crate::release::releases::ServiceDir;

/// The release `current` names, as (version, sha256); `None` if nothing is installed. The
/// error is the status detail for a release that is installed but cannot be identified
/// (its metadata is missing or damaged): such a service is broken, not "never ran".
pub(crate) fn current_release(dir: &ServiceDir) -> Result<Option<(String, String)>, String> {
    match dir.current() {
        Ok(Some(r)) => Ok(Some((r.info.version, r.info.sha256))),
        Ok(None) => Ok(None),
        Err(e) => Err(format!(
            "the current release cannot be identified: {e}; reinstall the service with a \
             rollout of another release, or restore the file"
        )),
    }
}

/// A service's status when the agent starts, before its task has looked at it: UNKNOWN on
/// the installed release, STOPPED with nothing installed, UNHEALTHY if what is installed
/// cannot be identified.
pub(crate) fn initial(service: &str, dir: &ServiceDir) -> pb::ServiceStatus {
    let (version, sha256, health, detail) = match current_release(dir) {
        Ok(Some((v, s))) => (v, s, Health::Unknown, "starting".to_string()),
        Ok(None) => (
            String::new(),
            String::new(),
            Health::Stopped,
            "no release installed".to_string(),
        ),
        Err(detail) => (String::new(), String::new(), Health::Unhealthy, detail),
    };
    pb::ServiceStatus {
        service: service.to_string(),
        version,
        sha256,
        health: health as i32,
        detail,
        ..Default::default()
    }
}

/// The statuses and orders in flight of every service, and the outbox statuses go to.
#[derive(Debug)]
pub(crate) struct StatusBoard {
    inner: Mutex<Board>,
    outbox: mpsc::UnboundedSender<pb::AgentMessage>,
}

#[derive(Debug, Default)]
struct Board {
    services: BTreeMap<String, Entry>,
    /// The last stamp handed out: stamps never go backwards, even when the wall clock does.
    last_stamp_ms: i64,
}

#[derive(Debug, Default)]
struct Entry {
    /// The latest observation (what a hello reports).
    status: Option<pb::ServiceStatus>,
    /// The order in flight and its latest step (`None`: no order).
    order: Option<pb::OrderProgress>,
    /// What was last queued for the coordinator, so only changes are sent.
    sent: Option<Reported>,
}

/// The part of a status whose change is worth a message (a new detail alone is not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reported {
    health: i32,
    version: String,
    sha256: String,
    in_flight_token: u64,
}

impl Reported {
    fn of(s: &pb::ServiceStatus) -> Reported {
        Reported {
            health: s.health,
            version: s.version.clone(),
            sha256: s.sha256.clone(),
            in_flight_token: s.in_flight_token,
        }
    }
}

/// Milliseconds since the epoch by the wall clock (0 if it is set before 1970).
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Board {
    fn stamp(&mut self) -> i64 {
        self.last_stamp_ms = self.last_stamp_ms.max(wall_ms());
        self.last_stamp_ms
    }

    /// Stamps `status` (observation time, order in flight), stores it, and says whether it
    /// differs from what was last sent.
    fn observe(&mut self, mut status: pb::ServiceStatus) -> (pb::ServiceStatus, bool) {
        status.observed_at_ms = self.stamp();
        let entry = self.services.entry(status.service.clone()).or_default();
        let (token, rollout) = entry
            .order
            .as_ref()
            .map_or((0, String::new()), |p| (p.token, p.rollout_id.clone()));
        status.in_flight_token = token;
        status.in_flight_rollout = rollout;
        entry.status = Some(status.clone());
        let key = Reported::of(&status);
        let changed = entry.sent.as_ref() != Some(&key);
        if changed {
            entry.sent = Some(key);
        }
        (status, changed)
    }
}

impl StatusBoard {
    /// An empty board whose stamps start no lower than `floor_ms` (the latest time the
    /// journal recorded, so a clock set back across a restart cannot reorder).
    pub(crate) fn new(outbox: mpsc::UnboundedSender<pb::AgentMessage>, floor_ms: i64) -> Self {
        StatusBoard {
            inner: Mutex::new(Board {
                last_stamp_ms: floor_ms,
                ..Board::default()
            }),
            outbox,
        }
    }

    /// Locks the board even if a task panicked while holding it: every writer leaves it
    /// consistent between statements.
    fn board(&self) -> MutexGuard<'_, Board> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self, msg: Msg) {
        // Fails only when the agent is shutting down.
        let _ = self.outbox.send(pb::AgentMessage { msg: Some(msg) });
    }

    /// The agent's clock for results: ms since the epoch, never below an earlier stamp.
    pub(crate) fn stamp(&self) -> i64 {
        self.board().stamp()
    }

    /// Records an observation of a service (stamped with the time and the order in flight)
    /// and queues it if health, release or order changed. Returns it if it was queued.
    pub(crate) fn observe(&self, status: pb::ServiceStatus) -> Option<pb::ServiceStatus> {
        let mut board = self.board();
        let (status, changed) = board.observe(status);
        crate::metrics::get().status(&status);
        // Queued under the lock, so the outbox has statuses in the order they were observed.
        changed.then(|| {
            self.queue(Msg::Status(status.clone()));
            status
        })
    }

    /// Makes the next observation of `service` be sent even if health, release and order
    /// are unchanged (a reason the coordinator must see, e.g. why a service is not started).
    pub(crate) fn resend(&self, service: &str) {
        if let Some(entry) = self.board().services.get_mut(service) {
            entry.sent = None;
        }
    }

    /// The latest observation of `service`.
    pub(crate) fn status(&self, service: &str) -> Option<pb::ServiceStatus> {
        self.board()
            .services
            .get(service)
            .and_then(|e| e.status.clone())
    }

    /// An order is in flight on `progress.service` from now on (or makes progress): the stored
    /// status is observed again with it (and queued if the order is new to it).
    pub(crate) fn set_progress(&self, progress: pb::OrderProgress) {
        crate::metrics::get().step(&progress.service, progress.step());
        let mut board = self.board();
        let entry = board.services.entry(progress.service.clone()).or_default();
        entry.order = Some(progress);
        if let Some(status) = entry.status.clone() {
            let (status, changed) = board.observe(status);
            if changed {
                self.queue(Msg::Status(status));
            }
        }
    }

    /// The order on `service` is over (its result is queued). The caller observes the
    /// service's final state right after.
    pub(crate) fn end_order(&self, service: &str) {
        if let Some(e) = self.board().services.get_mut(service) {
            e.order = None;
        }
    }

    /// For a hello: the statuses of `services` (in that order) and the order in flight (the
    /// newest, if several).
    pub(crate) fn snapshot(
        &self,
        services: &[String],
    ) -> (Vec<pb::ServiceStatus>, Option<pb::OrderProgress>) {
        let board = self.board();
        let statuses = services
            .iter()
            .filter_map(|s| board.services.get(s).and_then(|e| e.status.clone()))
            .collect();
        let in_flight = board
            .services
            .values()
            .filter_map(|e| e.order.as_ref())
            .max_by_key(|p| p.token)
            .cloned();
        (statuses, in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(health: pb::Health) -> pb::ServiceStatus {
        pb::ServiceStatus {
            service: "demo".into(),
            version: "1.0.0".into(),
            health: health as i32,
            ..Default::default()
        }
    }

    fn progress(token: u64) -> pb::OrderProgress {
        pb::OrderProgress {
            rollout_id: format!("r{token}"),
            token,
            service: "demo".into(),
            ..Default::default()
        }
    }

    #[test]
    fn statuses_carry_the_order_in_flight_and_only_changes_are_queued() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let board = StatusBoard::new(tx, 0);
        assert!(board.observe(status(pb::Health::Healthy)).is_some());
        assert!(
            board.observe(status(pb::Health::Healthy)).is_none(),
            "no change, nothing sent"
        );
        board.set_progress(progress(7));
        let s = board.status("demo").expect("stored");
        assert_eq!((s.in_flight_token, s.in_flight_rollout.as_str()), (7, "r7"));
        board.set_progress(progress(7));
        let sent = board
            .observe(status(pb::Health::Stopped))
            .expect("a change");
        assert_eq!(sent.in_flight_token, 7);
        board.end_order("demo");
        let last = board
            .observe(status(pb::Health::Stopped))
            .expect("the order ended: a change");
        assert_eq!(
            (last.in_flight_token, last.in_flight_rollout.as_str()),
            (0, "")
        );

        let mut queued = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(Msg::Status(s)) = m.msg {
                queued.push((s.health(), s.in_flight_token, s.observed_at_ms));
            }
        }
        let tokens: Vec<_> = queued.iter().map(|q| (q.0, q.1)).collect();
        assert_eq!(
            tokens,
            [
                (pb::Health::Healthy, 0),
                (pb::Health::Healthy, 7),
                (pb::Health::Stopped, 7),
                (pb::Health::Stopped, 0)
            ]
        );
        assert!(queued.windows(2).all(|w| w[0].2 <= w[1].2), "{queued:?}");
    }

    #[test]
    fn stamps_never_go_below_the_floor_or_backwards() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let future = wall_ms() + 3_600_000;
        let board = StatusBoard::new(tx, future);
        assert_eq!(board.stamp(), future);
        let s = board
            .observe(status(pb::Health::Healthy))
            .expect("first observation");
        assert_eq!(s.observed_at_ms, future);
    }
}
