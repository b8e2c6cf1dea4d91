//! The agent's durable memory: highest token per service, orders in flight, recent results,
//! staged pins.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use rollgate_proto::pb;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::durable;

/// How many results are kept and resent in every hello.
pub const RECENT_RESULTS: usize = 32;
/// File name of the journal inside the state dir.
pub const JOURNAL_FILE: &str = "agent-state.json";
/// Format version written into the file, so a future agent can tell old files apart.
/// 1: one highest token for the whole host. 2: a highest token per service (see
/// [`Journal::highest_token_for`]), results carry when they finished.
const FORMAT: u32 = 2;

/// The journal could not be read or written.
#[derive(Debug, Error)]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error(
        "cannot {action} the agent's state file {}: {source}{}",
        path.display(),
        crate::errors::disk_full_hint(source, path)
    )]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file exists but cannot be understood.
    #[error(
        "the agent's state file {} is not readable ({message}); it is written atomically, so \
         this is unexpected: inspect it, or move it away to start fresh (the agent then forgets \
         its highest fencing token and unfinished orders)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

/// An order the agent accepted and has not finished. Enough to undo it after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Rollout the order belongs to.
    pub rollout_id: String,
    /// Its fencing token.
    pub token: u64,
    /// The service being updated.
    pub service: String,
    /// Version being installed.
    pub version: String,
    /// Its digest.
    pub sha256: String,
    /// Release dir the update installs (`<version>-<sha12>`).
    pub target_dir: String,
    /// Release dir `current` pointed at before the update (`None`: nothing was installed).
    pub previous_dir: Option<String>,
    /// Version of that previous release ("" when none).
    pub previous_version: String,
    /// How long the release must stay healthy.
    pub min_healthy_time_ms: u64,
    /// How long it may take to get there.
    pub healthy_deadline_ms: u64,
    /// Last step started (`pb::Step` name).
    pub step: String,
}

impl InFlight {
    /// The step as the protocol enum.
    pub fn step(&self) -> pb::Step {
        pb::Step::from_str_name(&self.step).unwrap_or(pb::Step::Unspecified)
    }

    /// The progress message a hello reports for this order.
    pub fn progress(&self, message: &str) -> pb::OrderProgress {
        pb::OrderProgress {
            rollout_id: self.rollout_id.clone(),
            token: self.token,
            service: self.service.clone(),
            step: self.step() as i32,
            message: message.to_string(),
        }
    }
}

/// An order result as stored (enums by name, so the file is readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredResult {
    rollout_id: String,
    token: u64,
    service: String,
    outcome: String,
    running_version: String,
    reason: String,
    health: String,
    /// When the order finished (ms since the epoch, agent's clock); 0 in files written
    /// before it was recorded, which reads as "older than anything".
    #[serde(default)]
    finished_at_ms: i64,
}

impl From<&pb::OrderResult> for StoredResult {
    fn from(r: &pb::OrderResult) -> StoredResult {
        StoredResult {
            rollout_id: r.rollout_id.clone(),
            token: r.token,
            service: r.service.clone(),
            outcome: r.outcome().as_str_name().to_string(),
            running_version: r.running_version.clone(),
            reason: r.reason.clone(),
            health: r.health().as_str_name().to_string(),
            finished_at_ms: r.finished_at_ms,
        }
    }
}

impl From<&StoredResult> for pb::OrderResult {
    fn from(r: &StoredResult) -> pb::OrderResult {
        let outcome = pb::Outcome::from_str_name(&r.outcome).unwrap_or(pb::Outcome::Unspecified);
        let health = pb::Health::from_str_name(&r.health).unwrap_or(pb::Health::Unknown);
        pb::OrderResult {
            rollout_id: r.rollout_id.clone(),
            token: r.token,
            service: r.service.clone(),
            outcome: outcome as i32,
            running_version: r.running_version.clone(),
            reason: r.reason.clone(),
            health: health as i32,
            finished_at_ms: r.finished_at_ms,
            // Only refusals carry it, and refusals are not journaled.
            highest_token: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Data {
    format: u32,
    /// Highest fencing token acted on for any service; `None` until the first order is
    /// accepted. What the hello reports.
    highest_token: Option<u64>,
    /// Highest fencing token acted on for each service: what intake fences orders with (S4).
    /// (Absent in format 1 files; see `legacy_floor`.)
    #[serde(default)]
    highest_by_service: BTreeMap<String, u64>,
    /// The host-wide highest token of a format 1 file, which did not say which service acted
    /// on it: it stays the floor of every service's highest token. Applying it only to the
    /// services that have a kept result would be unsafe: results are evicted (only the last
    /// few are kept), so a service could have acted on it with no trace left, and a late
    /// order below it would then be carried out. The floor keeps exactly the old behaviour
    /// for old tokens; orders granted after the upgrade are fenced per service.
    #[serde(default)]
    legacy_floor: Option<u64>,
    /// Accepted, unfinished orders by service.
    in_flight: BTreeMap<String, InFlight>,
    /// Last results, oldest first.
    recent_results: VecDeque<StoredResult>,
    /// Release dirs each service committed to, oldest first (for keeping the last few).
    history: BTreeMap<String, Vec<String>>,
    /// Release dirs each service staged for an order that has not come yet: pruning keeps
    /// them until the next update order for the service is accepted. (Absent in files
    /// written before staging existed.)
    #[serde(default)]
    staged: BTreeMap<String, Vec<String>>,
    /// Releases (version, sha256) each service committed to, oldest first: the only ones an
    /// explicit rollback may go back to. (Absent in files written before signing existed;
    /// `history` stands in for what was committed before.)
    #[serde(default)]
    ran: BTreeMap<String, Vec<RanRelease>>,
}

/// Committed releases kept per service: the rollback window's limit, plus the current one.
pub const RAN_KEPT: usize = crate::config::MAX_ROLLBACK_WINDOW as usize + 1;

/// A release a service ran here (committed to after passing its health checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RanRelease {
    version: String,
    sha256: String,
}

/// The durable state. Every change is written (tmp, fsync, rename, fsync dir) before the
/// method returns; a change whose write fails is not applied.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    data: Data,
}

impl Journal {
    /// Opens the journal in `state_dir`, or starts an empty one if there is none.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join(JOURNAL_FILE);
        let data = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut data: Data =
                    serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if data.format < 2 {
                    // Written at the next change, with the format raised.
                    data.legacy_floor = data.highest_token;
                }
                data
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Data {
                format: FORMAT,
                ..Data::default()
            },
            Err(source) => {
                return Err(JournalError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        Ok(Journal { path, data })
    }

    /// Highest token acted on for any service (`None` before the first order).
    pub fn highest_token(&self) -> Option<u64> {
        self.data.highest_token
    }

    /// Highest token acted on for `service` (`None` before its first order): orders for a
    /// service are fenced by its own tokens only, so a late order for one service is not
    /// refused because another service acted on a newer grant. A journal from before
    /// per-service tokens contributes its host-wide value to every service (see
    /// `Data::legacy_floor`).
    pub fn highest_token_for(&self, service: &str) -> Option<u64> {
        let own = self.data.highest_by_service.get(service).copied();
        own.max(self.data.legacy_floor)
    }

    /// The unfinished order for `service`, if any.
    pub fn in_flight(&self, service: &str) -> Option<&InFlight> {
        self.data.in_flight.get(service)
    }

    /// The recorded result of the order with `token` for `service`, if still kept.
    pub fn result_for(&self, token: u64, service: &str) -> Option<pb::OrderResult> {
        self.data
            .recent_results
            .iter()
            .rev()
            .find(|r| r.token == token && r.service == service)
            .map(pb::OrderResult::from)
    }

    /// The kept results, oldest first.
    pub fn recent_results(&self) -> Vec<pb::OrderResult> {
        self.data
            .recent_results
            .iter()
            .map(pb::OrderResult::from)
            .collect()
    }

    /// The latest `finished_at_ms` of the kept results (0 if none): the agent's clock never
    /// stamps below it, even if the wall clock was set back across a restart.
    pub fn latest_finish_ms(&self) -> i64 {
        self.data
            .recent_results
            .iter()
            .map(|r| r.finished_at_ms)
            .max()
            .unwrap_or(0)
    }

    /// Releases (version, sha256) `service` committed to, newest last.
    pub fn ran(&self, service: &str) -> impl Iterator<Item = (&str, &str)> {
        self.data
            .ran
            .get(service)
            .into_iter()
            .flatten()
            .map(|r| (r.version.as_str(), r.sha256.as_str()))
    }

    /// Release dirs `service` committed to, oldest first.
    pub fn history(&self, service: &str) -> &[String] {
        self.data.history.get(service).map_or(&[], Vec::as_slice)
    }

    /// Whether `service` ran release `version` with digest `sha256` on this host (committed
    /// to it after an update). A version in the record must match its full digest. A version
    /// committed before the record existed is known only by its release dir name (version and
    /// the first 12 hex digits of the digest), which then counts: passing for it would take an
    /// artifact of that version whose digest shares those digits and, where signing is
    /// required, the publisher's signature over it.
    pub fn ran_before(&self, service: &str, version: &str, sha256: &str) -> bool {
        let recorded: Vec<&RanRelease> = self
            .data
            .ran
            .get(service)
            .map(|r| r.iter().filter(|x| x.version == version).collect())
            .unwrap_or_default();
        if !recorded.is_empty() {
            return recorded.iter().any(|x| x.sha256 == sha256);
        }
        self.history(service)
            .iter()
            .any(|d| *d == crate::release::releases::ServiceDir::release_dir_name(version, sha256))
    }

    /// Whether release `version` / `sha256` is among the `window` releases `service`
    /// committed to before `current` (the one it runs now): how far an explicit rollback may
    /// go back. A journal from before the record is judged by its release dir names.
    pub fn within_rollback_window(
        &self,
        service: &str,
        (version, sha256): (&str, &str),
        current: (&str, &str),
        window: u32,
    ) -> bool {
        let window = window as usize;
        let ran: Vec<(&str, &str)> = self.ran(service).collect();
        if !ran.is_empty() {
            let before = match ran.split_last() {
                Some((last, rest)) if *last == current => rest,
                _ => &ran[..],
            };
            return before
                .iter()
                .rev()
                .take(window)
                .any(|r| *r == (version, sha256));
        }
        let name = |v: &str, s: &str| crate::release::releases::ServiceDir::release_dir_name(v, s);
        let history = self.history(service);
        let before = match history.split_last() {
            Some((last, rest)) if *last == name(current.0, current.1) => rest,
            _ => history,
        };
        before
            .iter()
            .rev()
            .take(window)
            .any(|d| *d == name(version, sha256))
    }

    /// Records that `service` committed to release `version` / `sha256` (see
    /// [`Journal::ran_before`]) as its newest; keeps the newest [`RAN_KEPT`] per service, so
    /// a rollback can reach only recent releases (the agent's `rollback_window`).
    pub fn record_ran(
        &mut self,
        service: &str,
        version: &str,
        sha256: &str,
    ) -> Result<(), JournalError> {
        let newest = self
            .data
            .ran
            .get(service)
            .and_then(|r| r.last())
            .is_some_and(|x| x.version == version && x.sha256 == sha256);
        if newest {
            return Ok(());
        }
        self.change(|d| {
            let ran = d.ran.entry(service.to_string()).or_default();
            ran.retain(|x| !(x.version == version && x.sha256 == sha256));
            ran.push(RanRelease {
                version: version.to_string(),
                sha256: sha256.to_string(),
            });
            let extra = ran.len().saturating_sub(RAN_KEPT);
            ran.drain(..extra);
        })
    }

    /// Release dirs `service` staged ahead of an order that has not come yet, oldest first.
    pub fn staged(&self, service: &str) -> &[String] {
        self.data.staged.get(service).map_or(&[], Vec::as_slice)
    }

    /// Records that release dir `dir` of `service` was staged for an order still to come, so
    /// pruning keeps it.
    pub fn pin_staged(&mut self, service: &str, dir: &str) -> Result<(), JournalError> {
        if self.staged(service).iter().any(|d| d == dir) {
            return Ok(());
        }
        self.change(|d| {
            d.staged
                .entry(service.to_string())
                .or_default()
                .push(dir.to_string());
        })
    }

    /// Records an accepted order (and raises the highest token) durably. The coordinator has
    /// moved on to an order for this service, so what was staged before is either this
    /// order's release or superseded: its pins are dropped (the dirs go at the next commit).
    pub fn begin(&mut self, order: InFlight) -> Result<(), JournalError> {
        self.change(|d| {
            d.highest_token = Some(d.highest_token.map_or(order.token, |h| h.max(order.token)));
            let own = d
                .highest_by_service
                .entry(order.service.clone())
                .or_default();
            *own = (*own).max(order.token);
            d.staged.remove(&order.service);
            d.in_flight.insert(order.service.clone(), order);
        })
    }

    /// Records that the order for `service` is starting `step`; `previous` (when given)
    /// replaces the release dir to go back to.
    ///
    /// Written to disk only when a restarted agent's recovery would read it back: the dirs to
    /// go back to (given with the swap) and a rollback under way. Every other step is
    /// progress, not evidence (recovery undoes whatever the step, from what `current` names):
    /// it is kept in memory, reported by a hello, and written with the next durable change.
    /// That saves two fsyncs per step of every update (issue 17's hand-over and wall time).
    pub fn step(
        &mut self,
        service: &str,
        step: pb::Step,
        previous: Option<(Option<String>, String)>,
    ) -> Result<(), JournalError> {
        if previous.is_none() && step != pb::Step::RollingBack {
            if let Some(f) = self.data.in_flight.get_mut(service) {
                f.step = step.as_str_name().to_string();
            }
            return Ok(());
        }
        self.change(|d| {
            if let Some(f) = d.in_flight.get_mut(service) {
                f.step = step.as_str_name().to_string();
                if let Some((dir, version)) = previous {
                    f.previous_dir = dir;
                    f.previous_version = version;
                }
            }
        })
    }

    /// Finishes the order for `service`: drops it from the in-flight set, keeps `result`, and
    /// appends `committed` (the release dir now current) to the history. Applied in memory
    /// even if the write fails, so the agent keeps working; the error says the disk is sick.
    pub fn finish(
        &mut self,
        service: &str,
        result: &pb::OrderResult,
        committed: Option<&str>,
    ) -> Result<(), JournalError> {
        let apply = |d: &mut Data| {
            d.in_flight.remove(service);
            d.recent_results.push_back(StoredResult::from(result));
            while d.recent_results.len() > RECENT_RESULTS {
                d.recent_results.pop_front();
            }
            if let Some(dir) = committed {
                let h = d.history.entry(service.to_string()).or_default();
                h.retain(|x| x != dir);
                h.push(dir.to_string());
            }
        };
        let outcome = self.change(apply);
        if outcome.is_err() {
            apply(&mut self.data);
        }
        outcome
    }

    fn change(&mut self, f: impl FnOnce(&mut Data)) -> Result<(), JournalError> {
        let mut next = self.data.clone();
        f(&mut next);
        next.format = FORMAT;
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| JournalError::Io {
            action: "encode",
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        durable::write_atomic(&self.path, &bytes).map_err(|source| JournalError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        })?;
        self.data = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(token: u64, service: &str) -> InFlight {
        InFlight {
            rollout_id: "r1".into(),
            token,
            service: service.into(),
            version: "2.0.0".into(),
            sha256: "a".repeat(64),
            target_dir: "2.0.0-aaaaaaaaaaaa".into(),
            previous_dir: None,
            previous_version: String::new(),
            min_healthy_time_ms: 100,
            healthy_deadline_ms: 1000,
            step: pb::Step::Accepted.as_str_name().into(),
        }
    }

    fn result(token: u64) -> pb::OrderResult {
        pb::OrderResult {
            rollout_id: "r1".into(),
            token,
            service: "demo".into(),
            outcome: pb::Outcome::Succeeded as i32,
            running_version: "2.0.0".into(),
            reason: String::new(),
            health: pb::Health::Healthy as i32,
            ..Default::default()
        }
    }

    #[test]
    fn survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        assert_eq!(j.highest_token(), None);
        j.begin(order(7, "demo")).expect("begin");
        j.step(
            "demo",
            pb::Step::Swapping,
            Some((Some("1.0.0-x".into()), "1.0.0".into())),
        )
        .expect("step");

        let mut j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.highest_token(), Some(7));
        let f = j.in_flight("demo").expect("in flight");
        assert_eq!(f.step(), pb::Step::Swapping);
        assert_eq!(f.previous_dir.as_deref(), Some("1.0.0-x"));

        j.finish("demo", &result(7), Some("2.0.0-aaaaaaaaaaaa"))
            .expect("finish");
        let j = Journal::open(dir.path()).expect("reopen");
        assert!(j.in_flight("demo").is_none());
        assert_eq!(j.result_for(7, "demo"), Some(result(7)));
        assert_eq!(j.result_for(7, "other"), None);
        assert_eq!(j.history("demo"), ["2.0.0-aaaaaaaaaaaa".to_string()]);
    }

    #[test]
    fn only_the_steps_recovery_reads_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let on_disk = || {
            let reopened = Journal::open(dir.path()).expect("reopen");
            reopened.in_flight("demo").map(|f| f.step())
        };
        let mut j = Journal::open(dir.path()).expect("open");
        j.begin(order(7, "demo")).expect("begin");
        j.step("demo", pb::Step::Staged, None).expect("step");
        assert_eq!(
            j.in_flight("demo").map(|f| f.step()),
            Some(pb::Step::Staged)
        );
        assert_eq!(
            on_disk(),
            Some(pb::Step::Accepted),
            "progress is not written"
        );
        j.step("demo", pb::Step::Swapping, Some((None, String::new())))
            .expect("step");
        j.step("demo", pb::Step::Verifying, None).expect("step");
        assert_eq!(
            on_disk(),
            Some(pb::Step::Swapping),
            "the swap's dirs are evidence"
        );
        j.step("demo", pb::Step::RollingBack, None).expect("step");
        assert_eq!(
            on_disk(),
            Some(pb::Step::RollingBack),
            "a rollback is evidence"
        );
    }

    #[test]
    fn releases_run_are_remembered_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let mut j = Journal::open(dir.path()).expect("open");
        // A journal from before the record: a committed dir of that version and digest counts.
        j.finish("demo", &result(1), Some("1.0.0-aaaaaaaaaaaa"))
            .expect("finish");
        assert!(j.ran_before("demo", "1.0.0", &a));
        assert!(!j.ran_before("demo", "1.0.0", &b));
        assert!(!j.ran_before("other", "1.0.0", &a));
        // The record keeps exact (version, sha256) pairs, across a reopen.
        j.finish("demo", &result(2), Some("2.0.0-bbbbbbbbbbbb"))
            .expect("finish");
        j.record_ran("demo", "2.0.0", &b).expect("record");
        let j = Journal::open(dir.path()).expect("reopen");
        assert!(j.ran_before("demo", "2.0.0", &b));
        assert!(!j.ran_before("demo", "2.0.0", &a));
        let same_prefix = format!("{}{}", &b[..12], "c".repeat(52));
        assert!(
            !j.ran_before("demo", "2.0.0", &same_prefix),
            "a recorded version needs its full digest"
        );
        assert!(
            j.ran_before("demo", "1.0.0", &a),
            "what was committed before the record still counts"
        );
    }

    #[test]
    fn rollback_window_reaches_only_the_last_releases_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        let shas: Vec<String> = ["a", "b", "c"].iter().map(|c| c.repeat(64)).collect();
        let rel = |i: usize| (["0.9.0", "1.0.0", "2.0.0"][i], shas[i].as_str());
        for i in 0..3 {
            j.record_ran("demo", rel(i).0, rel(i).1).expect("record");
        }
        let cur = rel(2);
        assert!(j.within_rollback_window("demo", rel(1), cur, 1));
        assert!(
            !j.within_rollback_window("demo", rel(0), cur, 1),
            "two back"
        );
        assert!(j.within_rollback_window("demo", rel(0), cur, 2));
        // Running 0.9.0 again makes it the newest: 2.0.0 is then the one before it.
        j.record_ran("demo", rel(0).0, rel(0).1).expect("record");
        assert!(j.within_rollback_window("demo", rel(2), rel(0), 1));
        assert!(!j.within_rollback_window("demo", rel(1), rel(0), 1));
        for i in 0..RAN_KEPT + 5 {
            j.record_ran("demo", &format!("3.0.{i}"), &shas[0])
                .expect("record");
        }
        assert_eq!(j.ran("demo").count(), RAN_KEPT, "bounded");
    }

    #[test]
    fn keeps_only_the_last_results_and_never_lowers_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        for t in 1..=40u64 {
            j.begin(order(t, "demo")).expect("begin");
            j.finish("demo", &result(t), None).expect("finish");
        }
        let kept = j.recent_results();
        assert_eq!(kept.len(), RECENT_RESULTS);
        assert_eq!(
            kept.first().map(|r| r.token),
            Some(40 - RECENT_RESULTS as u64 + 1)
        );
        j.begin(order(3, "other")).expect("begin");
        assert_eq!(j.highest_token(), Some(40));
    }

    #[test]
    fn staged_pins_last_until_the_next_order_for_the_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        j.pin_staged("demo", "3.0.0-x").expect("pin");
        j.pin_staged("demo", "3.0.0-x").expect("pin again");
        j.pin_staged("other", "1.0.0-y").expect("pin");
        let mut j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.staged("demo"), ["3.0.0-x".to_string()]);
        j.begin(order(1, "demo")).expect("begin");
        assert!(j.staged("demo").is_empty());
        assert_eq!(j.staged("other"), ["1.0.0-y".to_string()]);
        let j = Journal::open(dir.path()).expect("reopen");
        assert!(j.staged("demo").is_empty());
    }

    #[test]
    fn a_file_from_before_staging_still_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(JOURNAL_FILE),
            br#"{"format":1,"highest_token":4,"in_flight":{},"recent_results":[],"history":{}}"#,
        )
        .expect("write");
        let j = Journal::open(dir.path()).expect("open");
        assert_eq!(j.highest_token(), Some(4));
        assert!(j.staged("demo").is_empty());
    }

    #[test]
    fn highest_tokens_are_per_service_and_a_format_1_value_is_every_services_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        j.begin(order(9, "b")).expect("begin");
        j.begin(order(5, "a")).expect("begin");
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.highest_token_for("a"), Some(5));
        assert_eq!(j.highest_token_for("b"), Some(9));
        assert_eq!(j.highest_token_for("c"), None);
        assert_eq!(
            j.highest_token(),
            Some(9),
            "the hello still reports the maximum"
        );

        // A format 1 file does not say which service acted on its token 7: it fences all.
        let old = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            old.path().join(JOURNAL_FILE),
            br#"{"format":1,"highest_token":7,"in_flight":{},"recent_results":[{"rollout_id":"r1","token":7,"service":"a","outcome":"OUTCOME_SUCCEEDED","running_version":"2.0.0","reason":"","health":"HEALTH_HEALTHY"}],"history":{}}"#,
        )
        .expect("write");
        let mut j = Journal::open(old.path()).expect("open");
        assert_eq!(j.highest_token_for("a"), Some(7));
        assert_eq!(j.highest_token_for("never-ordered"), Some(7));
        let r = j.result_for(7, "a").expect("an old result still reads");
        assert_eq!(r.finished_at_ms, 0, "unknown finish time reads as oldest");
        // The floor survives the first write (in format 2) and later tokens are per service.
        j.begin(order(8, "a")).expect("begin");
        let j = Journal::open(old.path()).expect("reopen");
        assert_eq!(j.highest_token_for("a"), Some(8));
        assert_eq!(j.highest_token_for("b"), Some(7));
    }

    #[test]
    fn a_result_keeps_when_it_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        let mut r = result(3);
        r.finished_at_ms = 1_700_000_000_123;
        j.finish("demo", &r, None).expect("finish");
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.result_for(3, "demo"), Some(r.clone()));
        assert_eq!(j.recent_results(), [r]);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(JOURNAL_FILE), b"{not json").expect("write");
        let err = Journal::open(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("move it away"), "{err}");
    }
}
