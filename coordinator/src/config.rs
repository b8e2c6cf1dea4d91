//! The coordinator's TOML config, with defaults that make one machine work out of the box.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Default gRPC listen address for agents and operators.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Default client port of the local etcd the coordinator starts when no endpoints are set.
pub const DEFAULT_LOCAL_ETCD_PORT: u16 = 23790;

/// Everything the coordinator reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server (agents, operators, health) listens on.
    pub listen: SocketAddr,
    /// URL other replicas reach this one at (to copy artifacts pushed here); default
    /// `http://<listen>`.
    pub advertise: String,
    /// Where the artifact store (and the local etcd, when used) live.
    pub state_dir: PathBuf,
    /// Name of this replica in logs and session records; default `<hostname>-<pid>`.
    pub replica_id: String,
    /// Largest artifact `rollgate artifact push` accepts.
    pub max_artifact_bytes: u64,
    /// etcd connection.
    pub etcd: EtcdConfig,
    /// How agents' sessions are kept.
    pub agents: AgentsConfig,
}

/// etcd connection and the local single-member etcd.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Endpoints of an etcd cluster. Empty: start and supervise a local single-member etcd under
    /// `state_dir/etcd`.
    pub endpoints: Vec<String>,
    /// etcd binary for the local etcd (looked up in PATH when not absolute).
    pub binary: PathBuf,
    /// Client port of the local etcd (its peer port is the next one).
    pub local_port: u16,
    /// Key prefix under which all of rollgate's state lives.
    pub prefix: String,
    /// TTL of this replica's lease: liveness of its agent sessions and its leadership. A replica
    /// that stops for longer loses both; a shorter TTL hands over faster.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

/// Agent session settings, sent to every agent in `Welcome`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// How often agents send a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How many heartbeats in a row an agent may miss before its session is dropped and the host
    /// counts as offline.
    pub missed_heartbeats: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            advertise: String::new(),
            state_dir: PathBuf::from("/var/lib/rollgate-coordinator"),
            replica_id: String::new(),
            max_artifact_bytes: 1 << 30,
            etcd: EtcdConfig::default(),
            agents: AgentsConfig::default(),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            binary: PathBuf::from("etcd"),
            local_port: DEFAULT_LOCAL_ETCD_PORT,
            prefix: "/rollgate/".to_string(),
            lease_ttl: Duration::from_secs(5),
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read coordinator config {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("coordinator config {} is not valid", path.display()))?;
        config.finish()?;
        Ok(config)
    }

    /// Fills derived defaults and checks values; used by `load` and by tests that build configs.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if self.replica_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "coordinator".to_string());
            self.replica_id = format!("{host}-{}", std::process::id());
        }
        if self.advertise.is_empty() {
            self.advertise = format!("http://{}", self.listen);
        }
        if !self.etcd.prefix.starts_with('/') || !self.etcd.prefix.ends_with('/') {
            bail!(
                "etcd.prefix {:?} must start and end with '/', e.g. \"/rollgate/\"",
                self.etcd.prefix
            );
        }
        if self.etcd.lease_ttl < Duration::from_secs(1) {
            bail!("etcd.lease_ttl must be at least 1s (etcd leases count whole seconds)");
        }
        if self.agents.heartbeat_interval.is_zero() || self.agents.missed_heartbeats == 0 {
            bail!("agents.heartbeat_interval and agents.missed_heartbeats must be above zero");
        }
        Ok(())
    }

    /// How long an agent may stay silent before its session is dropped.
    pub fn session_timeout(&self) -> Duration {
        self.agents.heartbeat_interval * self.agents.missed_heartbeats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let c = Config::load(&path).expect("deploy/coordinator.toml must stay valid");
        assert!(c.etcd.endpoints.is_empty());
        assert_eq!(c.listen.port(), 7443);
    }

    #[test]
    fn bad_values_are_named() {
        let mut c: Config = toml::from_str("[etcd]\nprefix = \"rollgate\"").expect("parses");
        let err = c.finish().expect_err("prefix without slashes").to_string();
        assert!(err.contains("etcd.prefix"), "{err}");
        assert!(toml::from_str::<Config>("listen = 5").is_err());
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}
