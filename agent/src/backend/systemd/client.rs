//! The D-Bus client of a systemd manager: calls, property reads, signal streams.

use std::time::Duration;

use thiserror::Error;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

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

    pub(super) async fn unit_call(
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
