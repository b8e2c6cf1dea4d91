//! The systemd backend: a unit the operator installed runs `current/<binary>`; the agent
//! restarts it over D-Bus (`org.freedesktop.systemd1`) and reads its state.
//!
//! The agent never writes unit files. The operator installs the unit, with an `ExecStart=`
//! that runs the release through the service's `current` link (e.g.
//! `/var/lib/rollgate-agent/services/demo/current/demo-svc`); the agent checks that before an
//! update, because a unit that runs something else would "pass" an update without running it.
//!
//! An update swaps `current` (by rename) and then:
//!
//! 1. `ResetFailedUnit`: clears a `failed` state, `NRestarts` and the start rate limit, so a
//!    release that crash-looped into `start-limit-hit` does not keep the next one (or the
//!    rollback) from starting. Start limits are for automatic restarts; this is a deliberate
//!    start.
//! 2. `RestartUnit(unit, "replace")`, and waits for that job to finish. A `Type=notify` unit's
//!    start job finishes only when it sends READY=1, so it counts as up only then.
//! 3. While waiting, and afterwards until the next restart, the unit's state is watched
//!    (`PropertiesChanged` signals, and a re-read every [`STATE_POLL_INTERVAL`]): a unit that
//!    is `failed` (any `Result=`, including `start-limit-hit`), whose main process ended and
//!    is being auto-restarted, or whose `NRestarts` grew, is down at once.
//!
//! Works with the system manager (system bus) and with a user manager (`systemd --user`, over
//! that user's session bus); `bus` names another D-Bus address.

pub(crate) mod client;
mod unit_state;

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use zbus::zvariant::OwnedObjectPath;
use zbus::MessageStream;

use crate::backend::{Backend, BackendError, Exit};
use crate::config::SystemdTarget;
use crate::release::releases::ServiceDir;
use client::{job_result, Job};
pub use client::{SystemdClient, SystemdError};
use unit_state::job_failure;

/// How often a watched unit's state is read again even without a change signal (a missed
/// signal, or a bus that went away, is noticed within this). Changes themselves arrive as
/// signals at once; this only bounds the cost of missing one.
pub const STATE_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long a stop waits for systemd's stop job (the unit's own `TimeoutStopSec=` decides
/// when systemd kills it; this only keeps the agent from waiting forever).
const STOP_WAIT: Duration = Duration::from_secs(120);
/// How long the agent, when it starts, waits for a unit that is not active to come up.
pub const ADOPT_START_WAIT: Duration = Duration::from_secs(120);

/// The systemd backend for one service.
#[derive(Debug)]
pub struct SystemdBackend {
    target: SystemdTarget,
    dir: ServiceDir,
    /// Connected on first use, and again after an error.
    client: Option<SystemdClient>,
    /// The unit being watched since the agent last started or adopted it; `None` before that
    /// or once it is stopped.
    watch: Option<Watch>,
}

#[derive(Debug)]
struct Watch {
    path: OwnedObjectPath,
    /// `PropertiesChanged` of the unit; `None` when it has to be subscribed again.
    changes: Option<MessageStream>,
    /// `NRestarts` when the unit was last seen come up.
    baseline: u32,
    /// Whether the unit was up when last looked at.
    up: bool,
    /// The release dir `current` named when it was started.
    release: String,
}

impl SystemdBackend {
    /// The backend for the unit `target` names, running releases from `dir`.
    pub fn new(dir: ServiceDir, target: SystemdTarget) -> SystemdBackend {
        SystemdBackend {
            target,
            dir,
            client: None,
            watch: None,
        }
    }

    async fn client(&mut self) -> Result<SystemdClient, SystemdError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = SystemdClient::connect(&self.target).await?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection after a D-Bus error, so the next call connects again.
    fn on_error<T>(&mut self, r: Result<T, SystemdError>) -> Result<T, SystemdError> {
        if matches!(
            r,
            Err(SystemdError::Connect { .. } | SystemdError::Call { .. })
        ) {
            self.client = None;
        }
        r
    }

    fn release(&self) -> String {
        self.dir.current_dir().ok().flatten().unwrap_or_default()
    }

    async fn check_unit(&mut self) -> Result<OwnedObjectPath, SystemdError> {
        let unit = self.target.unit.clone();
        let client = self.client().await?;
        let r = async {
            let path = client.unit_path(&unit).await?;
            let state = client.state(&unit, &path).await?;
            if state.load != "loaded" {
                return Err(SystemdError::NotLoaded {
                    unit: unit.clone(),
                    manager: self.target.manager.word(),
                    load_state: state.load,
                });
            }
            Ok(path)
        }
        .await;
        self.on_error(r)
    }

    /// Resets, restarts (or starts) the unit and waits until its job finished and it is up.
    async fn start_unit(&mut self, kind: Job, deadline: Duration) -> Result<Instant, SystemdError> {
        let started = Instant::now();
        let unit = self.target.unit.clone();
        let path = self.check_unit().await?;
        let client = self.client().await?;
        let r = async {
            // Subscribed before the job exists, so its end cannot be missed.
            let mut jobs = client.job_signals().await?;
            let mut changes = client.unit_signals(&path).await?;
            match client.reset_failed(&unit).await {
                // An inactive unit nobody references is unloaded: nothing to reset.
                Err(SystemdError::Call { message, .. }) if message.contains("NoSuchUnit") => {}
                other => {
                    other?;
                }
            }
            let job = client.job(kind, &unit).await?;
            let until = started + deadline;
            let result = loop {
                tokio::select! {
                    msg = jobs.next() => match msg {
                        Some(Ok(m)) => match job_result(&m, &job) {
                            Some(result) => break result,
                            None => continue,
                        },
                        _ => return Err(SystemdError::Call {
                            manager: self.target.manager.word(),
                            what: format!("{} {unit}", kind.method()),
                            message: "the D-Bus connection closed while waiting for the job".into(),
                        }),
                    },
                    msg = changes.next() => if msg.is_none() {
                        return Err(SystemdError::Call {
                            manager: self.target.manager.word(),
                            what: format!("{} {unit}", kind.method()),
                            message: "the D-Bus connection closed while waiting for the job".into(),
                        });
                    },
                    _ = tokio::time::sleep(STATE_POLL_INTERVAL) => {}
                    _ = tokio::time::sleep_until(until) => {
                        let state = client.state(&unit, &path).await?;
                        return Err(SystemdError::Down {
                            unit: unit.clone(),
                            why: format!(
                                "did not become active within {}: {}",
                                rollgate_proto::spec::human(deadline),
                                state.describe()
                            ),
                        });
                    }
                }
                // Crashes while the job waits (a Type=notify unit that dies before READY=1
                // and is auto-restarted keeps its start job waiting) fail at once.
                let state = client.state(&unit, &path).await?;
                if let Some(why) = state.down(0, true) {
                    return Err(SystemdError::Down {
                        unit: unit.clone(),
                        why,
                    });
                }
            };
            let state = client.state(&unit, &path).await?;
            if result != "done" {
                return Err(SystemdError::Down {
                    unit: unit.clone(),
                    why: job_failure(&result, &state),
                });
            }
            if let Some(why) = state.down(0, false) {
                return Err(SystemdError::Down {
                    unit: unit.clone(),
                    why,
                });
            }
            Ok((state, changes))
        }
        .await;
        let (state, changes) = self.on_error(r)?;
        tracing::info!(
            unit = %unit,
            "{unit} is {} on release {}",
            state.describe(),
            self.release()
        );
        self.watch = Some(Watch {
            path,
            changes: Some(changes),
            baseline: state.n_restarts,
            up: state.is_up(),
            release: self.release(),
        });
        Ok(started)
    }

    async fn stop_unit(&mut self) -> Result<Option<String>, SystemdError> {
        let unit = self.target.unit.clone();
        let path = self.check_unit().await?;
        let client = self.client().await?;
        let r = async {
            let before = client.state(&unit, &path).await?;
            let mut jobs = client.job_signals().await?;
            let job = client.job(Job::Stop, &unit).await?;
            let waited = tokio::time::timeout(STOP_WAIT, async {
                while let Some(Ok(m)) = jobs.next().await {
                    if let Some(result) = job_result(&m, &job) {
                        return Some(result);
                    }
                }
                None
            })
            .await;
            let after = client.state(&unit, &path).await?;
            let how = match waited {
                Ok(Some(r)) if r == "done" => format!("stopped unit {unit}: {}", after.describe()),
                Ok(Some(r)) => {
                    format!("stop of unit {unit} ended with {r:?}: {}", after.describe())
                }
                _ => format!(
                    "unit {unit} did not stop within {STOP_WAIT:?}: {}",
                    after.describe()
                ),
            };
            Ok(before.is_up().then_some(how))
        }
        .await;
        self.on_error(r)
    }

    /// Waits for the watched unit to go down (or, while it is down, to come back up, which
    /// systemd's `Restart=` does on its own; that only updates the state). With no watch (the
    /// manager was unreachable at start, or a start failed) but a release installed, it keeps
    /// trying to look at the unit, without starting it, so its health is known again.
    async fn watch_until_down(&mut self) -> Exit {
        loop {
            let Some(w) = self.watch.as_mut() else {
                if self.dir.current_dir().ok().flatten().is_none() {
                    return std::future::pending().await;
                }
                tokio::time::sleep(STATE_POLL_INTERVAL).await;
                self.attach().await;
                continue;
            };
            match w.changes.as_mut() {
                Some(changes) => {
                    tokio::select! {
                        msg = changes.next() => if msg.is_none() {
                            // The connection went away; subscribe again on the next round.
                            w.changes = None;
                            self.client = None;
                        },
                        _ = tokio::time::sleep(STATE_POLL_INTERVAL) => {}
                    }
                }
                None => tokio::time::sleep(STATE_POLL_INTERVAL).await,
            }
            if let Some(exit) = self.look().await {
                return exit;
            }
        }
    }

    /// Starts watching the unit as it is (no start, no reset).
    async fn attach(&mut self) {
        let unit = self.target.unit.clone();
        let r = async {
            let path = self.check_unit().await?;
            let client = self.client().await?;
            let changes = client.unit_signals(&path).await?;
            let state = client.state(&unit, &path).await?;
            Ok::<_, SystemdError>((path, changes, state))
        }
        .await;
        match self.on_error(r) {
            Ok((path, changes, state)) => {
                tracing::info!("watching unit {unit}: {}", state.describe());
                self.watch = Some(Watch {
                    path,
                    changes: Some(changes),
                    baseline: state.n_restarts,
                    up: state.is_up(),
                    release: self.release(),
                });
            }
            Err(e) => tracing::debug!("cannot watch unit {unit} yet: {e}"),
        }
    }

    /// Reads the watched unit's state once; returns an exit if it went down.
    async fn look(&mut self) -> Option<Exit> {
        let unit = self.target.unit.clone();
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return self.lost_sight(e),
        };
        let w = self.watch.as_mut()?;
        if w.changes.is_none() {
            w.changes = client.unit_signals(&w.path).await.ok();
        }
        let state = match client.state(&unit, &w.path).await {
            Ok(s) => s,
            Err(e) => {
                self.client = None;
                return self.lost_sight(e);
            }
        };
        let w = self.watch.as_mut()?;
        if w.up {
            if let Some(why) = state.down(w.baseline, false) {
                w.up = false;
                return Some(Exit {
                    release: w.release.clone(),
                    description: format!("unit {unit} {why}"),
                });
            }
        } else if state.is_up() {
            tracing::info!("unit {unit} is up again: {}", state.describe());
            w.up = true;
            w.baseline = state.n_restarts;
        }
        None
    }

    /// The unit's state cannot be read: if it was up, that is reported once as going down.
    fn lost_sight(&mut self, e: SystemdError) -> Option<Exit> {
        let w = self.watch.as_mut()?;
        if !w.up {
            return None;
        }
        w.up = false;
        Some(Exit {
            release: w.release.clone(),
            description: format!("cannot read the state of unit {}: {e}", self.target.unit),
        })
    }

    /// Checks that some `ExecStart=` line runs the release through `current`.
    async fn check_exec_start(&mut self, path: &OwnedObjectPath) -> Result<(), String> {
        let client = self.client().await.map_err(|e| e.to_string())?;
        let lines = match client.exec_start(path).await {
            Ok(l) => l,
            Err(e) => {
                self.client = None;
                return Err(e.to_string());
            }
        };
        let link = self.dir.current_link();
        let through_current = lines.iter().flatten().any(|word| runs_through(word, &link));
        if through_current {
            return Ok(());
        }
        let shown: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
        Err(format!(
            "unit {} does not run the release through {}: its ExecStart is {:?}; point \
             ExecStart at {}/{} (the agent swaps that link), then daemon-reload",
            self.target.unit,
            self.dir.current_link().display(),
            shown,
            self.dir.current_link().display(),
            self.dir.binary()
        ))
    }
}

impl Backend for SystemdBackend {
    fn is_up(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.up)
    }

    fn agent_restarts(&self) -> bool {
        false
    }

    fn adopt(&mut self) -> BoxFuture<'_, (Option<String>, Result<(), BackendError>)> {
        async move {
            if self.dir.current_dir().ok().flatten().is_none() {
                return (
                    None,
                    Err(BackendError::NotInstalled(self.dir.current_link())),
                );
            }
            // StartUnit leaves an active unit alone (its job finishes at once), so an agent
            // restart does not disturb a running service.
            let r = self.start_unit(Job::Start, ADOPT_START_WAIT).await;
            (None, r.map(|_| ()).map_err(BackendError::from))
        }
        .boxed()
    }

    fn preflight(&mut self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let path = self.check_unit().await.map_err(|e| e.to_string())?;
            if self.target.unit.ends_with(".service") {
                self.check_exec_start(&path).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn restart(&mut self, deadline: Duration) -> BoxFuture<'_, Result<Instant, BackendError>> {
        async move {
            if self.dir.current_dir().ok().flatten().is_none() {
                return Err(BackendError::NotInstalled(self.dir.current_link()));
            }
            self.watch = None;
            self.start_unit(Job::Restart, deadline)
                .await
                .map_err(BackendError::from)
        }
        .boxed()
    }

    fn stop(&mut self) -> BoxFuture<'_, Option<String>> {
        async move {
            self.watch = None;
            match self.stop_unit().await {
                Ok(how) => how,
                Err(e) => {
                    tracing::warn!("cannot stop unit {}: {e}", self.target.unit);
                    Some(format!("cannot stop unit {}: {e}", self.target.unit))
                }
            }
        }
        .boxed()
    }

    fn exited(&mut self) -> BoxFuture<'_, Exit> {
        self.watch_until_down().boxed()
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        // The unit outlives the agent; only the connection goes.
        self.watch = None;
        self.client = None;
        futures::future::ready(()).boxed()
    }
}

/// Whether a word of an `ExecStart=` line (a path, or a shell script naming paths) names a
/// path under the `current` link `link`. Directories are compared resolved, so a state dir
/// reached through a symlink still matches; the link itself is never followed.
fn runs_through(word: &str, link: &Path) -> bool {
    let Some(link_parent) = link.parent().and_then(|p| std::fs::canonicalize(p).ok()) else {
        return false;
    };
    let Some(link_name) = link.file_name() else {
        return false;
    };
    word.split(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '=' | ';' | '('))
        .filter(|token| token.starts_with('/'))
        .any(|token| {
            Path::new(token).ancestors().any(|a| {
                a.file_name() == Some(link_name)
                    && a.parent()
                        .and_then(|p| std::fs::canonicalize(p).ok())
                        .is_some_and(|p| p == link_parent)
            })
        })
}

#[cfg(test)]
mod tests;
