//! The agent upgrading itself through a rollout (issue 12, item 3). With `[self_upgrade]` the
//! agent offers a service named `rollgate-agent`; a rollout of it is carried out like any
//! other (tokens, signing, budgets, canary), but its "restart" is the agent re-executing itself:
//!
//! 1. The old agent fetches and verifies the new binary into `services/rollgate-agent/releases/`
//!    (the same staging as every release), checks that it runs (`--version`), writes
//!    [`Marker`] (`services/rollgate-agent/upgrade.json`), stops taking orders, and re-executes
//!    itself into the new binary with `ROLLGATE_AGENT_TRIAL=<token>` in its environment. Same
//!    pid: the supervisor (systemd) sees nothing; the services keep running and the new agent
//!    adopts them (`backend::process::adopt`), `stop_with_agent` or not.
//! 2. The new agent, finding the marker and its token in the environment, is on trial: once a
//!    coordinator welcomes it within `confirm_deadline` it installs itself over
//!    `[self_upgrade] binary` (copy, fsync, rename) and reports the order succeeded.
//! 3. Otherwise the old binary, untouched until then, comes back: the trial agent re-executes
//!    it when the deadline passes, or the supervisor restarts it when the new one dies (it
//!    starts `binary`, which is still the old one). The old agent, finding the marker without
//!    its token in the environment, reports the order rolled back with the reason.
//!
//! The rule in one line: `binary` is only ever replaced by an agent that has proven it can
//! start and connect.

mod task;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::state::durable;
use crate::state::journal::InFlight;

pub(crate) use task::SelfUpgrade;

/// The environment variable that tells a re-executed agent it is on trial, and for which token.
pub const TRIAL_ENV: &str = "ROLLGATE_AGENT_TRIAL";
/// The marker's file name, in the `rollgate-agent` service dir.
const MARKER_FILE: &str = "upgrade.json";

/// Set once the agent is about to re-execute itself: services are left running whatever their
/// `stop_with_agent` says (an upgrade is not the agent going away).
static REEXECUTING: AtomicBool = AtomicBool::new(false);

/// Whether the agent is shutting down to re-execute itself.
pub(crate) fn reexecuting() -> bool {
    REEXECUTING.load(Ordering::Relaxed)
}

/// An upgrade of the agent in progress, on disk while the new binary is on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub rollout_id: String,
    pub token: u64,
    /// Version the old agent reported for `rollgate-agent`.
    pub from_version: String,
    pub to_version: String,
    pub to_sha256: String,
    /// Release dir of the new binary (`<version>-<sha12>`).
    pub to_dir: String,
    /// The new binary, in its release dir.
    pub new_binary: PathBuf,
    /// The file the supervisor starts (`[self_upgrade] binary`), still the old agent.
    pub binary: PathBuf,
    /// Why the trial ended without the new agent (set by the trial agent before it puts the
    /// old one back).
    #[serde(default)]
    pub failed: Option<String>,
}

impl Marker {
    pub(crate) fn path(service_dir: &Path) -> PathBuf {
        service_dir.join(MARKER_FILE)
    }

    pub(crate) fn load(service_dir: &Path) -> Option<Marker> {
        let text = std::fs::read(Self::path(service_dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(crate) fn save(&self, service_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("marker serializes");
        durable::write_atomic(&Self::path(service_dir), &bytes)
    }

    pub(crate) fn remove(service_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path(service_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Where an agent finds itself at start, from the marker, the journal's order in flight for
/// `rollgate-agent` and `ROLLGATE_AGENT_TRIAL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Startup {
    /// Nothing in progress.
    Idle,
    /// This is the new agent, on trial.
    Trial(Marker),
    /// The old agent is back: the new one died, or gave up (the marker says why).
    TrialOver(Marker),
    /// The agent died during an upgrade before it re-executed (fetching, checking).
    Interrupted(InFlight),
}

/// Decides [`Startup`]. Pure: the marker counts only if the journal's order in flight is the
/// same token (a marker left from an older order is stale).
pub(crate) fn startup(
    marker: Option<Marker>,
    in_flight: Option<InFlight>,
    trial_env: Option<&str>,
) -> Startup {
    let Some(f) = in_flight else {
        return Startup::Idle;
    };
    match marker {
        Some(m) if m.token == f.token && m.rollout_id == f.rollout_id => {
            if trial_env == Some(m.token.to_string().as_str()) && m.failed.is_none() {
                Startup::Trial(m)
            } else {
                Startup::TrialOver(m)
            }
        }
        _ => Startup::Interrupted(f),
    }
}

/// What the agent runs next when it re-executes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reexec {
    /// The binary to execute.
    pub binary: PathBuf,
    /// `Some(token)`: put the new agent on trial for this token; `None`: the old agent coming
    /// back (the variable is removed).
    pub trial: Option<u64>,
}

/// A request to re-execute, from the upgrade task to [`crate::run`].
#[derive(Debug, Default)]
pub(crate) struct ReexecSlot {
    wanted: Mutex<Option<Reexec>>,
    notify: Notify,
}

impl ReexecSlot {
    pub(crate) fn request(&self, r: Reexec) {
        REEXECUTING.store(true, Ordering::Relaxed);
        *crate::update::shared::lock(&self.wanted) = Some(r);
        self.notify.notify_one();
    }

    /// Completes when a re-execution is requested, with what to run.
    pub(crate) async fn wanted(&self) -> Reexec {
        loop {
            if let Some(r) = crate::update::shared::lock(&self.wanted).clone() {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

/// Replaces this process with `r.binary`, same arguments, the trial variable set or removed.
/// Returns only if the exec failed.
pub fn exec(r: &Reexec) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&r.binary);
    cmd.args(std::env::args_os().skip(1));
    match r.trial {
        Some(token) => cmd.env(TRIAL_ENV, token.to_string()),
        None => cmd.env_remove(TRIAL_ENV),
    };
    cmd.exec()
}

#[cfg(test)]
mod tests;
