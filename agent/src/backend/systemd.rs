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

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use thiserror::Error;
use tokio::time::Instant;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

use crate::backend::{Backend, BackendError, Exit};
use crate::config::{Manager, SystemdTarget};
use crate::release::releases::ServiceDir;

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";

/// How long one D-Bus call may take before it counts as failed.
pub const DBUS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a watched unit's state is read again even without a change signal (a missed
/// signal, or a bus that went away, is noticed within this). Changes themselves arrive as
/// signals at once; this only bounds the cost of missing one.
pub const STATE_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Signals queued per subscription while nobody reads them; older ones are dropped, which
/// is fine because every signal only triggers a fresh read of the state.
const SIGNAL_QUEUE: usize = 64;
/// How long a stop waits for systemd's stop job (the unit's own `TimeoutStopSec=` decides
/// when systemd kills it; this only keeps the agent from waiting forever).
const STOP_WAIT: Duration = Duration::from_secs(120);
/// How long the agent, when it starts, waits for a unit that is not active to come up.
pub const ADOPT_START_WAIT: Duration = Duration::from_secs(120);

/// A systemd operation that failed; the message names the unit, the manager and the fix.
#[derive(Debug, Error)]
pub enum SystemdError {
    /// The manager's bus could not be reached.
    #[error(
        "cannot reach the systemd {manager} manager over D-Bus ({address}): {message}; check \
         that it runs and that the agent may talk to it{hint}"
    )]
    Connect {
        /// "system" or "user".
        manager: &'static str,
        /// The bus address tried.
        address: String,
        /// Why it failed.
        message: String,
        /// What to set for a user manager.
        hint: &'static str,
    },
    /// A call to the manager failed.
    #[error("systemd {manager} manager: {what} failed: {message}")]
    Call {
        /// "system" or "user".
        manager: &'static str,
        /// What was asked ("RestartUnit demo.service").
        what: String,
        /// The D-Bus error.
        message: String,
    },
    /// The unit is not installed (or its file does not parse).
    #[error(
        "unit {unit} is not loaded by the systemd {manager} manager (LoadState={load_state}); \
         install the unit file (the operator's job: the agent never writes units) and run \
         daemon-reload"
    )]
    NotLoaded {
        /// The unit.
        unit: String,
        /// "system" or "user".
        manager: &'static str,
        /// `not-found`, `bad-setting`, `error`, `masked`.
        load_state: String,
    },
    /// The unit did not come up.
    #[error("unit {unit} {why}")]
    Down {
        /// The unit.
        unit: String,
        /// What systemd says happened.
        why: String,
    },
}

/// What systemd says about a unit: the properties the agent judges it by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `LoadState`: loaded, not-found, bad-setting, error, masked.
    pub load: String,
    /// `ActiveState`: active, reloading, inactive, failed, activating, deactivating.
    pub active: String,
    /// `SubState`, e.g. running, start, auto-restart, dead, failed.
    pub sub: String,
    /// `Result` of a service: success, exit-code, signal, core-dump, timeout,
    /// start-limit-hit, ... (empty for other unit types).
    pub result: String,
    /// `NRestarts`: automatic restarts since the last deliberate start.
    pub n_restarts: u32,
    /// `ExecMainCode`: 0 none yet, 1 exited, 2 killed, 3 dumped core.
    pub exec_main_code: i32,
    /// `ExecMainStatus`: exit status, or signal number when killed.
    pub exec_main_status: i32,
}

impl UnitState {
    /// Whether the unit is up: active (or reloading, which an active unit does).
    pub fn is_up(&self) -> bool {
        matches!(self.active.as_str(), "active" | "reloading")
    }

    /// "active (running)", "failed (failed, Result=exit-code, main process exited with status 3)".
    pub fn describe(&self) -> String {
        let mut extra = Vec::new();
        if !self.result.is_empty() && self.result != "success" {
            extra.push(format!("Result={}", self.result));
        }
        if let Some(main) = self.main_exit() {
            if self.result != "success" || self.active != "active" {
                extra.push(main);
            }
        }
        if extra.is_empty() {
            format!("{} ({})", self.active, self.sub)
        } else {
            format!("{} ({}, {})", self.active, self.sub, extra.join(", "))
        }
    }

    /// How the main process last ended, if it did.
    fn main_exit(&self) -> Option<String> {
        let s = self.exec_main_status;
        match self.exec_main_code {
            1 => Some(format!("main process exited with status {s}")),
            2 => Some(format!("main process was killed by signal {s}")),
            3 => Some(format!("main process dumped core (signal {s})")),
            _ => None,
        }
    }

    /// Why this state means the unit went down, or `None` while it is up or starting
    /// normally. `baseline` is `NRestarts` when the agent (re)started it; `starting` says the
    /// agent's start job is still running, when being inactive or activating is expected.
    pub fn down(&self, baseline: u32, starting: bool) -> Option<String> {
        if self.active == "failed" {
            return Some(if self.result == "start-limit-hit" {
                format!(
                    "hit its start limit (start-limit-hit: systemd restarted it too often and \
                     gave up){}",
                    self.main_exit()
                        .map(|m| format!("; {m}"))
                        .unwrap_or_default()
                )
            } else {
                format!("failed: {}", self.describe())
            });
        }
        if self.sub == "auto-restart" {
            return Some(format!(
                "crashed and systemd is restarting it: {}",
                self.describe()
            ));
        }
        if self.n_restarts > baseline {
            return Some(format!(
                "was restarted by systemd {} time(s) since it was started (NRestarts={}): {}",
                self.n_restarts - baseline,
                self.n_restarts,
                self.describe()
            ));
        }
        if !starting && matches!(self.active.as_str(), "inactive" | "deactivating") {
            return Some(format!("stopped: {}", self.describe()));
        }
        None
    }
}

/// A connection to one systemd manager.
#[derive(Debug, Clone)]
pub struct SystemdClient {
    conn: Connection,
    manager: &'static str,
}

fn call_err(manager: &'static str, what: String) -> impl FnOnce(zbus::Error) -> SystemdError {
    move |e| SystemdError::Call {
        manager,
        what,
        message: dbus_message(&e),
    }
}

/// The D-Bus error's own text (`org.freedesktop.systemd1.NoSuchUnit: Unit x not found.`).
fn dbus_message(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(text), _) => format!("{}: {text}", name.as_str()),
        other => other.to_string(),
    }
}

impl SystemdClient {
    /// Connects to the manager `target` names and subscribes to its signals.
    pub async fn connect(target: &SystemdTarget) -> Result<SystemdClient, SystemdError> {
        let manager = target.manager.word();
        let address = match (&target.bus, target.manager) {
            (Some(bus), _) => bus.clone(),
            (None, Manager::System) => std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into()),
            (None, Manager::User) => {
                std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_else(|_| {
                    let runtime = std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| {
                        format!("/run/user/{}", nix::unistd::geteuid().as_raw())
                    });
                    format!("unix:path={runtime}/bus")
                })
            }
        };
        let hint = match target.manager {
            Manager::User => {
                " (for a user manager, set `bus` in the service's config, or \
                 DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR in the agent's environment)"
            }
            Manager::System => "",
        };
        let connect_err = |e: zbus::Error| SystemdError::Connect {
            manager,
            address: address.clone(),
            message: dbus_message(&e),
            hint,
        };
        let conn = zbus::connection::Builder::address(address.as_str())
            .map_err(connect_err)?
            .method_timeout(DBUS_CALL_TIMEOUT)
            .build()
            .await
            .map_err(connect_err)?;
        let client = SystemdClient { conn, manager };
        // Without a subscriber systemd sends no signals; each client subscribes for itself.
        client
            .manager_call::<()>("Subscribe", &())
            .await
            .or_else(|e| match &e {
                // Subscribing twice on one connection is harmless.
                SystemdError::Call { message, .. } if message.contains("AlreadySubscribed") => {
                    Ok(())
                }
                _ => Err(e),
            })?;
        Ok(client)
    }

    async fn manager_call<R>(
        &self,
        method: &str,
        body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
    ) -> Result<R, SystemdError>
    where
        R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
    {
        let what = method.to_string();
        let reply = self
            .conn
            .call_method(Some(DEST), MANAGER_PATH, Some(MANAGER_IFACE), method, body)
            .await
            .map_err(call_err(self.manager, what.clone()))?;
        reply
            .body()
            .deserialize::<R>()
            .map_err(call_err(self.manager, what))
    }

    /// The unit's object path, loading the unit if the manager has not yet.
    pub async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        self.manager_call("LoadUnit", &(unit,))
            .await
            .map_err(|e| with_what(e, format!("LoadUnit {unit}")))
    }

    async fn get(
        &self,
        path: &OwnedObjectPath,
        iface: &str,
        name: &str,
    ) -> Result<OwnedValue, SystemdError> {
        let reply = self
            .conn
            .call_method(Some(DEST), path, Some(PROPS_IFACE), "Get", &(iface, name))
            .await
            .map_err(call_err(self.manager, format!("reading {name}")))?;
        reply
            .body()
            .deserialize::<OwnedValue>()
            .map_err(call_err(self.manager, format!("reading {name}")))
    }

    async fn get_as<T>(
        &self,
        path: &OwnedObjectPath,
        iface: &str,
        name: &str,
    ) -> Result<T, SystemdError>
    where
        T: TryFrom<OwnedValue>,
        T::Error: std::fmt::Display,
    {
        let v = self.get(path, iface, name).await?;
        T::try_from(v).map_err(|e| SystemdError::Call {
            manager: self.manager,
            what: format!("reading {name}"),
            message: format!("unexpected type: {e}"),
        })
    }

    /// Reads the unit's state. The service properties are read only for `.service` units.
    pub async fn state(
        &self,
        unit: &str,
        path: &OwnedObjectPath,
    ) -> Result<UnitState, SystemdError> {
        let mut s = UnitState {
            load: self.get_as(path, UNIT_IFACE, "LoadState").await?,
            active: self.get_as(path, UNIT_IFACE, "ActiveState").await?,
            sub: self.get_as(path, UNIT_IFACE, "SubState").await?,
            ..UnitState::default()
        };
        if unit.ends_with(".service") && s.load == "loaded" {
            s.result = self.get_as(path, SERVICE_IFACE, "Result").await?;
            s.n_restarts = self.get_as(path, SERVICE_IFACE, "NRestarts").await?;
            s.exec_main_code = self.get_as(path, SERVICE_IFACE, "ExecMainCode").await?;
            s.exec_main_status = self.get_as(path, SERVICE_IFACE, "ExecMainStatus").await?;
        }
        Ok(s)
    }

    /// The programs and arguments of the unit's `ExecStart=` lines.
    pub async fn exec_start(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<Vec<Vec<String>>, SystemdError> {
        type ExecCommand = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);
        let lines: Vec<ExecCommand> = self.get_as(path, SERVICE_IFACE, "ExecStart").await?;
        Ok(lines
            .into_iter()
            .map(|(program, argv, ..)| {
                let mut all = vec![program];
                all.extend(argv);
                all
            })
            .collect())
    }

    async fn unit_call(
        &self,
        method: &str,
        unit: &str,
        mode: Option<&str>,
    ) -> Result<Option<OwnedObjectPath>, SystemdError> {
        let what = format!("{method} {unit}");
        match mode {
            Some(mode) => self
                .manager_call::<OwnedObjectPath>(method, &(unit, mode))
                .await
                .map(Some),
            None => self
                .manager_call::<()>(method, &(unit,))
                .await
                .map(|()| None),
        }
        .map_err(|e| with_what(e, what))
    }

    /// A stream of the manager's `JobRemoved` signals.
    async fn job_signals(&self) -> Result<MessageStream, SystemdError> {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(DEST)
            .and_then(|b| b.path(MANAGER_PATH))
            .and_then(|b| b.interface(MANAGER_IFACE))
            .and_then(|b| b.member("JobRemoved"))
            .map(|b| b.build())
            .map_err(call_err(self.manager, "watching jobs".into()))?;
        MessageStream::for_match_rule(rule, &self.conn, Some(SIGNAL_QUEUE))
            .await
            .map_err(call_err(self.manager, "watching jobs".into()))
    }

    /// A stream of the unit's `PropertiesChanged` signals.
    async fn unit_signals(&self, path: &OwnedObjectPath) -> Result<MessageStream, SystemdError> {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(DEST)
            .and_then(|b| b.path(path.as_ref()))
            .and_then(|b| b.interface(PROPS_IFACE))
            .and_then(|b| b.member("PropertiesChanged"))
            .map(|b| b.build())
            .map_err(call_err(self.manager, "watching the unit".into()))?;
        MessageStream::for_match_rule(rule, &self.conn, Some(SIGNAL_QUEUE))
            .await
            .map_err(call_err(self.manager, "watching the unit".into()))
    }
}

fn with_what(e: SystemdError, what: String) -> SystemdError {
    match e {
        SystemdError::Call {
            manager, message, ..
        } => SystemdError::Call {
            manager,
            what,
            message,
        },
        other => other,
    }
}

/// The `result` of job `job` if `msg` is its `JobRemoved` signal.
fn job_result(msg: &zbus::Message, job: &OwnedObjectPath) -> Option<String> {
    let (_id, path, _unit, result): (u32, OwnedObjectPath, String, String) =
        msg.body().deserialize().ok()?;
    (path == *job).then_some(result)
}

/// What a finished start job's result means, for the reason of a failed start.
fn job_failure(result: &str, state: &UnitState) -> String {
    match result {
        "timeout" => format!(
            "did not finish starting within systemd's start timeout (TimeoutStartSec=): {}",
            state.describe()
        ),
        "canceled" => "start was canceled (another job for the unit replaced it)".into(),
        "dependency" => format!(
            "did not start: a unit it depends on failed: {}",
            state.describe()
        ),
        "failed" => state
            .down(0, false)
            .unwrap_or_else(|| format!("failed to start: {}", state.describe())),
        other => format!("start job ended with {other:?}: {}", state.describe()),
    }
}

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
    async fn start_unit(
        &mut self,
        method: &str,
        deadline: Duration,
    ) -> Result<Instant, SystemdError> {
        let started = Instant::now();
        let unit = self.target.unit.clone();
        let path = self.check_unit().await?;
        let client = self.client().await?;
        let r = async {
            // Subscribed before the job exists, so its end cannot be missed.
            let mut jobs = client.job_signals().await?;
            let mut changes = client.unit_signals(&path).await?;
            match client.unit_call("ResetFailedUnit", &unit, None).await {
                // An inactive unit nobody references is unloaded: nothing to reset.
                Err(SystemdError::Call { message, .. }) if message.contains("NoSuchUnit") => {}
                other => {
                    other?;
                }
            }
            let job = client
                .unit_call(method, &unit, Some("replace"))
                .await?
                .unwrap_or_default();
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
                            what: format!("{method} {unit}"),
                            message: "the D-Bus connection closed while waiting for the job".into(),
                        }),
                    },
                    msg = changes.next() => if msg.is_none() {
                        return Err(SystemdError::Call {
                            manager: self.target.manager.word(),
                            what: format!("{method} {unit}"),
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
            let job = client
                .unit_call("StopUnit", &unit, Some("replace"))
                .await?
                .unwrap_or_default();
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
            let r = self.start_unit("StartUnit", ADOPT_START_WAIT).await;
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
            self.start_unit("RestartUnit", deadline)
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

/// A unit's state over a fresh look, for the systemd probe: Ok when it is active.
pub async fn check_active(client: &SystemdClient, unit: &str) -> Result<(), SystemdError> {
    let path = client.unit_path(unit).await?;
    let state = client.state(unit, &path).await?;
    if state.is_up() {
        Ok(())
    } else {
        Err(SystemdError::Down {
            unit: unit.to_string(),
            why: format!("is not active: {}", state.describe()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(active: &str, sub: &str, result: &str, n: u32, code: i32, status: i32) -> UnitState {
        UnitState {
            load: "loaded".into(),
            active: active.into(),
            sub: sub.into(),
            result: result.into(),
            n_restarts: n,
            exec_main_code: code,
            exec_main_status: status,
        }
    }

    #[test]
    fn judging_unit_states() {
        // (state, baseline, starting, expected: None = not down, Some(text it contains))
        let cases: Vec<(&str, UnitState, u32, bool, Option<&str>)> = vec![
            (
                "running",
                st("active", "running", "success", 0, 0, 0),
                0,
                false,
                None,
            ),
            (
                "reloading",
                st("reloading", "reload", "success", 0, 0, 0),
                0,
                false,
                None,
            ),
            (
                "notify unit still starting",
                st("activating", "start", "success", 0, 0, 0),
                0,
                true,
                None,
            ),
            (
                "restart job: stopped on the way",
                st("inactive", "dead", "success", 0, 0, 0),
                0,
                true,
                None,
            ),
            (
                "stopped while watched",
                st("inactive", "dead", "success", 0, 1, 0),
                0,
                false,
                Some("stopped: inactive (dead"),
            ),
            (
                "failed with an exit code",
                st("failed", "failed", "exit-code", 0, 1, 3),
                0,
                false,
                Some(
                    "failed: failed (failed, Result=exit-code, main process exited with status 3)",
                ),
            ),
            (
                "failed while starting",
                st("failed", "failed", "signal", 0, 2, 9),
                0,
                true,
                Some("killed by signal 9"),
            ),
            (
                "start limit",
                st("failed", "failed", "start-limit-hit", 5, 1, 3),
                0,
                false,
                Some("hit its start limit (start-limit-hit"),
            ),
            (
                "crashed, waiting to restart",
                st("activating", "auto-restart", "exit-code", 0, 1, 3),
                0,
                true,
                Some("crashed and systemd is restarting it"),
            ),
            (
                "restarted since the start",
                st("active", "running", "success", 2, 1, 3),
                0,
                false,
                Some("restarted by systemd 2 time(s) since it was started (NRestarts=2)"),
            ),
            (
                "restarts before the baseline do not count",
                st("active", "running", "success", 2, 0, 0),
                2,
                false,
                None,
            ),
        ];
        for (name, state, baseline, starting, want) in cases {
            let got = state.down(baseline, starting);
            match (want, &got) {
                (None, None) => {}
                (Some(text), Some(g)) if g.contains(text) => {}
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn exec_start_must_go_through_current() {
        let root = tempfile::tempdir().expect("tempdir");
        let real = root.path().join("real");
        let svc = real.join("services/demo");
        std::fs::create_dir_all(&svc).expect("dirs");
        std::os::unix::fs::symlink(&real, root.path().join("state")).expect("symlink");
        let link = svc.join("current");
        let via = root.path().join("state/services/demo/current");
        let cases = [
            (format!("{}/demo-svc", link.display()), true),
            (format!("{}/bin/demo-svc", via.display()), true),
            (
                format!("/bin/sh -c 'exec {}/demo-svc --port 1'", via.display()),
                true,
            ),
            (format!("--config={}/etc/demo.toml", link.display()), true),
            ("/usr/bin/demo-svc".to_string(), false),
            (format!("{}/current-old/demo-svc", svc.display()), false),
            (
                format!("{}/releases/1.0.0-abc/demo-svc", svc.display()),
                false,
            ),
            ("demo-svc".to_string(), false),
        ];
        for (word, want) in cases {
            assert_eq!(runs_through(&word, &link), want, "{word}");
        }
    }

    #[test]
    fn job_results_say_what_happened() {
        let failed = st("failed", "failed", "exit-code", 0, 1, 3);
        let cases = [
            ("timeout", "TimeoutStartSec"),
            ("canceled", "canceled"),
            ("dependency", "depends on"),
            ("failed", "main process exited with status 3"),
            ("skipped", "\"skipped\""),
        ];
        for (result, want) in cases {
            let got = job_failure(result, &failed);
            assert!(got.contains(want), "{result}: {got}");
        }
    }
}
