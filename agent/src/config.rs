//! The agent's config file (TOML): this host, its coordinator replicas, how each service runs.
//!
//! Layout, each file depending only on the ones listed before it (this file only declares
//! and re-exports):
//! - `error.rs`: [`ConfigError`] and `field_err`.
//! - `release_rules.rs`, `run_as.rs`: the release rules (S8) and a service's `user`/`group`,
//!   each a type with its check.
//! - `types.rs`: the validated config ([`Config`] and what it holds) and the defaults.
//! - `checks.rs`: field checks shared by the validators (`stray`, `check_unit_name`, ...).
//! - `raw.rs`: the file as written (serde structs).
//! - `probe.rs`, `container.rs`: validation of a probe table and of the container settings.
//! - `validate.rs`: [`Config::load`], [`Config::parse`] and the rest of the validation.

mod checks;
mod container;
mod error;
mod probe;
mod raw;
mod release_rules;
mod run_as;
#[cfg(test)]
mod signing_tests;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub(crate) use checks::load_ca_file;
pub use error::ConfigError;
pub use release_rules::{
    SourceRefusal, SourceRules, DEFAULT_ROLLBACK_WINDOW, MAX_ROLLBACK_WINDOW, STORE_SOURCE,
};
pub use run_as::RunAs;
pub use types::{
    ArtifactFormat, Backend, Config, ContainerSettings, Hooks, Manager, PortMap, ProbeCheck,
    ProbeConfig, RestartPolicy, SelfUpgradeConfig, ServiceConfig, SigningConfig, SystemdTarget,
    UnpackLimits, AGENT_SERVICE, DEFAULT_CONFIRM_DEADLINE, DEFAULT_CONTAINER_SOCKET,
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HOOK_TIMEOUT, DEFAULT_MAX_ARTIFACT_BYTES,
    DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT, DEFAULT_RESTART_DELAY, DEFAULT_STOP_TIMEOUT,
    DEFAULT_UNPACK_MAX_BYTES, DEFAULT_UNPACK_MAX_ENTRIES,
};

/// A part of the agent an edge build can leave out (cargo features of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuildFeature {
    /// `backend = "systemd"` and systemd probes.
    Systemd,
    /// `backend = "container"`.
    Container,
}

impl BuildFeature {
    fn name(self) -> &'static str {
        match self {
            BuildFeature::Systemd => "systemd",
            BuildFeature::Container => "container",
        }
    }

    fn built(self) -> bool {
        match self {
            BuildFeature::Systemd => cfg!(feature = "systemd"),
            BuildFeature::Container => cfg!(feature = "container"),
        }
    }
}

/// Refuses `what` (at `field`) when this agent was built without `feature` (an edge build,
/// `--no-default-features`): it says so and how to go on (a full build, or `instead`).
pub(crate) fn require_built(
    field: &str,
    feature: BuildFeature,
    what: &str,
    instead: &str,
) -> Result<(), ConfigError> {
    if feature.built() {
        return Ok(());
    }
    Err(error::field_err(
        field,
        format!(
            "{what} is not in this rollgate-agent build (built without the cargo feature \
             `{}`, an edge build); install the full agent (the Debian package, or \
             `cargo build --release -p rollgate-agent`) or {instead}",
            feature.name()
        ),
    ))
}
