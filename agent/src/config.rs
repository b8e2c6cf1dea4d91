//! The agent's config file (TOML): this host, its coordinator replicas, how each service runs.

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
use checks::{check_binary, check_bus, check_unit_name, parse_manager, stray};
use error::field_err;
pub use error::ConfigError;
use raw::{RawConfig, RawProbe, RawService};
pub use release_rules::{
    SourceRefusal, SourceRules, DEFAULT_ROLLBACK_WINDOW, MAX_ROLLBACK_WINDOW, STORE_SOURCE,
};
pub use run_as::RunAs;
pub use types::{
    ArtifactFormat, Backend, Config, ContainerSettings, Hooks, Manager, PortMap, ProbeCheck,
    ProbeConfig, RestartPolicy, ServiceConfig, SigningConfig, SystemdTarget, UnpackLimits,
    DEFAULT_CONTAINER_SOCKET, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HOOK_TIMEOUT,
    DEFAULT_MAX_ARTIFACT_BYTES, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT,
    DEFAULT_RESTART_DELAY, DEFAULT_STOP_TIMEOUT, DEFAULT_UNPACK_MAX_BYTES,
    DEFAULT_UNPACK_MAX_ENTRIES,
};
