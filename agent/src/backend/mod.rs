//! The seam between the update procedure and what runs a service: the [`Backend`] trait.
//!
//! The executor has one update path (fetch → stage → swap the `current` link → restart →
//! verify → commit or undo) whatever runs the service. A backend only knows how to (re)start
//! what `current` names, stop it, and tell when it went down on its own:
//!
//! - [`process`]: the agent runs the binary as its child and supervises it; a later agent
//!   adopts it (see [`process::adopt`]).
//! - [`systemd`]: a unit the operator installed runs `current/<binary>`; the
//!   agent restarts it over D-Bus and watches its state.
//! - [`container`]: each release's image archive runs as its own container
//!   (Docker Engine API); restart = create or find the release's container, stop the old one
//!   and start it; the old container is kept until the release is settled.

#[cfg(feature = "container")]
pub(crate) mod container;
pub(crate) mod process;
pub(crate) mod select;
#[cfg(feature = "systemd")]
pub(crate) mod systemd;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use thiserror::Error;
use tokio::time::Instant;

#[cfg(feature = "container")]
use crate::backend::container::engine::ContainerError;
#[cfg(feature = "systemd")]
use crate::backend::systemd::client::SystemdError;
use crate::release::releases::DiskError;

/// A service process that could not be started.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// No release is installed (`current` does not exist).
    #[error("no release is installed ({} does not exist)", .0.display())]
    NotInstalled(PathBuf),
    /// The binary could not be executed.
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why exec failed.
        source: io::Error,
    },
    /// A file the start needs could not be read or written.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// A service that could not be (re)started.
#[derive(Debug, Error)]
pub enum BackendError {
    /// No release is installed (`current` does not exist).
    #[error("no release is installed ({} does not exist)", .0.display())]
    NotInstalled(PathBuf),
    /// The process backend could not start the binary.
    #[error(transparent)]
    Process(ProcessError),
    /// systemd refused the start, or the unit failed or did not come up in time.
    #[cfg(feature = "systemd")]
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// The container engine failed a request, or the container did not run.
    #[cfg(feature = "container")]
    #[error(transparent)]
    Container(#[from] ContainerError),
}

impl From<ProcessError> for BackendError {
    fn from(e: ProcessError) -> BackendError {
        match e {
            ProcessError::NotInstalled(p) => BackendError::NotInstalled(p),
            other => BackendError::Process(other),
        }
    }
}

/// Where a long step reports its progress (a line for the operator).
pub type Reporter = std::sync::Arc<dyn Fn(String) + Send + Sync>;

/// Before an update swaps anything, or when a stage order stages the release: whatever the
/// backend needs ready ahead of the restart (the container backend pulls a release's pinned
/// image). Returns a note for the order's progress; the error refuses the update (nothing was
/// touched).
pub(crate) async fn prepare(
    cfg: &crate::config::ServiceConfig,
    dir: &crate::release::releases::ServiceDir,
    release: &str,
    report: Reporter,
) -> Result<Option<String>, String> {
    match &cfg.backend {
        #[cfg(feature = "container")]
        crate::config::Backend::Container(s) => {
            container::prepare_release(s, dir, release, report).await
        }
        _ => {
            let _ = (dir, release, report);
            Ok(None)
        }
    }
}

/// How a service went down on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The release dir it ran from.
    pub release: String,
    /// "process exited with status 1", "unit demo.service failed (...)".
    pub description: String,
}

/// What runs one service. Every method acts on the release the `current` link names; the
/// executor swaps the link itself (by rename, S5) before asking for a restart.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Whether the service was up when the backend last looked (no I/O).
    fn is_up(&self) -> bool;

    /// Whether the agent restarts the service after it went down on its own (the process
    /// backend), or leaves that to the backend's own policy (systemd's `Restart=`).
    fn agent_restarts(&self) -> bool;

    /// At agent start: takes over the service as a previous agent left it and makes sure the
    /// installed release runs, without disturbing a service that runs it (process: adopt the
    /// leftover process if it is provably the instance that was started, else stop it if it is
    /// the service's and start; systemd: start the unit if it is not active; container: start
    /// the release's container if it is not running). Returns a note for the log about
    /// anything left over.
    fn adopt(&mut self) -> BoxFuture<'_, (Option<String>, Result<(), BackendError>)>;

    /// At agent start, before undoing an update a killed agent left half done: stops whatever
    /// that agent left running outside the backend's control (process: its orphaned child, or
    /// the undo would restart the old release beside the new one still holding the port), so
    /// the undo starts from a known state. Returns a note for the log. Backends whose service
    /// lives in a manager (systemd) have nothing to reclaim.
    fn reclaim(&mut self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }

    /// Checks, before an update touches anything, that the backend can carry it out (systemd:
    /// the manager answers, the unit is installed and runs through `current`). The error is
    /// the reason to refuse the update.
    fn preflight(&mut self) -> BoxFuture<'_, Result<(), String>>;

    /// Stops whatever runs and starts the release `current` names. Returns when it is up as
    /// far as the backend can tell (process: spawned; systemd: the start job finished and the
    /// unit is active, so a `Type=notify` unit has said READY=1), or fails once `deadline`
    /// has passed. The instant is when the start began (the healthy deadline counts from it).
    fn restart(&mut self, deadline: Duration) -> BoxFuture<'_, Result<Instant, BackendError>>;

    /// Stops the service. Returns how it went, or `None` if nothing was running.
    fn stop(&mut self) -> BoxFuture<'_, Option<String>>;

    /// Completes when the service goes down on its own (exits, fails, is restarted by its
    /// manager); never completes while it is not up. Cancel-safe.
    fn exited(&mut self) -> BoxFuture<'_, Exit>;

    /// The release `current` names is settled: it was committed after passing verification,
    /// or the service was rolled back to it and passed again. The container backend removes
    /// the service's other containers; the others have nothing to do.
    fn settled(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The agent is shutting down: every backend leaves the service running for the next
    /// agent to adopt, except the process backend with `stop_with_agent = true`, which stops
    /// it.
    fn shutdown(&mut self) -> BoxFuture<'_, ()>;
}
