//! The D-Bus client of a systemd manager: calls, property reads, signal streams.

use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{as_value, OwnedObjectPath, OwnedValue, Type};
use zbus::{proxy, Connection, MatchRule, MessageStream};

use super::unit_state::UnitState;
use crate::config::{Manager, SystemdTarget};

/// How long one D-Bus call may take before it counts as failed.
pub const DBUS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";
/// Signals queued per subscription while nobody reads them; older ones are dropped, which
/// is fine because every signal only triggers a fresh read of the state.
const SIGNAL_QUEUE: usize = 64;

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

/// The systemd manager's methods the agent calls.
#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// Asks for the manager's signals (it sends none to a client that did not).
    fn subscribe(&self) -> zbus::Result<()>;
    /// The unit's object path, loading the unit if the manager has not yet.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Clears a `failed` state, `NRestarts` and the start rate limit.
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    /// Queues a start job; returns the job.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Queues a restart job; returns the job.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Queues a stop job; returns the job.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
}

/// A unit's properties (`org.freedesktop.DBus.Properties` on the unit's object): one
/// `GetAll` per interface, decoded into the typed structs below.
#[proxy(
    interface = "org.freedesktop.DBus.Properties",
    default_service = "org.freedesktop.systemd1"
)]
trait UnitProperties {
    /// `GetAll("org.freedesktop.systemd1.Unit")`.
    #[zbus(name = "GetAll")]
    fn unit(&self, interface: &str) -> zbus::Result<UnitProps>;
    /// `GetAll("org.freedesktop.systemd1.Service")`.
    #[zbus(name = "GetAll")]
    fn service(&self, interface: &str) -> zbus::Result<ServiceProps>;
    /// One property.
    fn get(&self, interface: &str, name: &str) -> zbus::Result<OwnedValue>;
}

/// The `org.freedesktop.systemd1.Unit` properties the agent judges a unit by. A property
/// missing from the answer is an error that names it, not an empty state.
#[derive(Debug, Deserialize, Type)]
#[zvariant(signature = "a{sv}")]
#[serde(rename_all = "PascalCase")]
pub(super) struct UnitProps {
    #[serde(with = "as_value")]
    pub(super) load_state: String,
    #[serde(with = "as_value")]
    pub(super) active_state: String,
    #[serde(with = "as_value")]
    pub(super) sub_state: String,
}

/// The `org.freedesktop.systemd1.Service` properties the agent judges a service by.
#[derive(Debug, Deserialize, Type)]
#[zvariant(signature = "a{sv}")]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceProps {
    #[serde(with = "as_value")]
    pub(super) result: String,
    #[serde(rename = "NRestarts", with = "as_value")]
    pub(super) n_restarts: u32,
    #[serde(with = "as_value")]
    pub(super) exec_main_code: i32,
    #[serde(with = "as_value")]
    pub(super) exec_main_status: i32,
}

/// A job the agent queues for a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    Start,
    Restart,
    Stop,
}

impl Job {
    /// The manager's method that queues it.
    pub(super) fn method(self) -> &'static str {
        match self {
            Job::Start => "StartUnit",
            Job::Restart => "RestartUnit",
            Job::Stop => "StopUnit",
        }
    }
}

/// A connection to one systemd manager.
#[derive(Debug, Clone)]
pub struct SystemdClient {
    conn: Connection,
    /// The manager's methods.
    proxy: ManagerProxy<'static>,
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
        let proxy = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(connect_err)?;
        // Without a subscriber systemd sends no signals; each client subscribes for itself.
        match proxy.subscribe().await {
            Ok(()) => {}
            // Subscribing twice on one connection is harmless.
            Err(e) if dbus_message(&e).contains("AlreadySubscribed") => {}
            Err(e) => return Err(call_err(manager, "Subscribe".into())(e)),
        }
        Ok(SystemdClient {
            conn,
            proxy,
            manager,
        })
    }

    /// The unit's object path, loading the unit if the manager has not yet.
    pub async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        self.proxy
            .load_unit(unit)
            .await
            .map_err(call_err(self.manager, format!("LoadUnit {unit}")))
    }

    /// The properties of the unit at `path`.
    async fn properties(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<UnitPropertiesProxy<'static>, SystemdError> {
        let what = || format!("reading the properties of {}", path.as_str());
        UnitPropertiesProxy::builder(&self.conn)
            .path(path.clone())
            .map_err(call_err(self.manager, what()))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(call_err(self.manager, what()))
    }

    /// Reads the unit's state: one `GetAll` of its Unit properties and, for a loaded
    /// `.service` unit, one of its Service properties.
    pub async fn state(
        &self,
        unit: &str,
        path: &OwnedObjectPath,
    ) -> Result<UnitState, SystemdError> {
        let props = self.properties(path).await?;
        let u = props.unit(UNIT_IFACE).await.map_err(call_err(
            self.manager,
            format!("GetAll {UNIT_IFACE} of {unit}"),
        ))?;
        let mut s = UnitState {
            load: u.load_state,
            active: u.active_state,
            sub: u.sub_state,
            ..UnitState::default()
        };
        if unit.ends_with(".service") && s.load == "loaded" {
            let svc = props.service(SERVICE_IFACE).await.map_err(call_err(
                self.manager,
                format!("GetAll {SERVICE_IFACE} of {unit}"),
            ))?;
            s.result = svc.result;
            s.n_restarts = svc.n_restarts;
            s.exec_main_code = svc.exec_main_code;
            s.exec_main_status = svc.exec_main_status;
        }
        Ok(s)
    }

    /// The programs and arguments of the unit's `ExecStart=` lines.
    pub async fn exec_start(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<Vec<Vec<String>>, SystemdError> {
        type ExecCommand = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);
        let what = "reading ExecStart";
        let v = self
            .properties(path)
            .await?
            .get(SERVICE_IFACE, "ExecStart")
            .await
            .map_err(call_err(self.manager, what.into()))?;
        let lines = Vec::<ExecCommand>::try_from(v).map_err(|e| SystemdError::Call {
            manager: self.manager,
            what: what.into(),
            message: format!("unexpected type: {e}"),
        })?;
        Ok(lines
            .into_iter()
            .map(|(program, argv, ..)| {
                let mut all = vec![program];
                all.extend(argv);
                all
            })
            .collect())
    }

    /// `ResetFailedUnit(unit)`.
    pub(super) async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.proxy
            .reset_failed_unit(unit)
            .await
            .map_err(call_err(self.manager, format!("ResetFailedUnit {unit}")))
    }

    /// Queues a job for the unit (`mode` "replace"); returns the job's path.
    pub(super) async fn job(&self, kind: Job, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        let mode = "replace";
        match kind {
            Job::Start => self.proxy.start_unit(unit, mode).await,
            Job::Restart => self.proxy.restart_unit(unit, mode).await,
            Job::Stop => self.proxy.stop_unit(unit, mode).await,
        }
        .map_err(call_err(self.manager, format!("{} {unit}", kind.method())))
    }

    /// A stream of the manager's `JobRemoved` signals.
    pub(super) async fn job_signals(&self) -> Result<MessageStream, SystemdError> {
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
    pub(super) async fn unit_signals(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<MessageStream, SystemdError> {
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

/// The `result` of job `job` if `msg` is its `JobRemoved` signal.
pub(super) fn job_result(msg: &zbus::Message, job: &OwnedObjectPath) -> Option<String> {
    let (_id, path, _unit, result): (u32, OwnedObjectPath, String, String) =
        msg.body().deserialize().ok()?;
    (path == *job).then_some(result)
}
