//! The config file as written (TOML). Kept apart from the validated types so that every
//! field can be checked with an error that names it, rather than serde's generic messages.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::types::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HOOK_TIMEOUT, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) host_id: String,
    pub(super) coordinator: Option<String>,
    pub(super) coordinators: Option<Vec<String>>,
    pub(super) state_dir: PathBuf,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub(super) heartbeat_interval: Duration,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) services: Vec<RawService>,
    #[serde(default)]
    pub(super) tls: rollgate_proto::tls::TlsConfig,
    pub(super) max_artifact_bytes: Option<u64>,
    pub(super) rollback_window: Option<u32>,
    pub(super) allowed_sources: Option<Vec<String>>,
    #[serde(default)]
    pub(super) file_source_dirs: Vec<PathBuf>,
    pub(super) source_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) signing: RawSigning,
    #[serde(default)]
    pub(super) metrics: rollgate_proto::metrics::MetricsConfig,
    pub(super) self_upgrade: Option<RawSelfUpgrade>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSelfUpgrade {
    pub(super) binary: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(super) confirm_deadline: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    #[serde(default)]
    pub(super) required: bool,
    #[serde(default)]
    pub(super) keys: Vec<PathBuf>,
    pub(super) fleet: Option<String>,
    pub(super) env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    pub(super) backend: String,
    pub(super) binary: String,
    pub(super) format: Option<String>,
    pub(super) unpack_max_bytes: Option<u64>,
    pub(super) unpack_max_entries: Option<u64>,
    pub(super) args: Option<Vec<String>>,
    pub(super) env: Option<BTreeMap<String, String>>,
    #[serde(default, with = "humantime_serde")]
    pub(super) stop_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) restart_delay: Option<Duration>,
    pub(super) stop_with_agent: Option<bool>,
    pub(super) unit: Option<String>,
    pub(super) manager: Option<String>,
    pub(super) bus: Option<String>,
    pub(super) socket: Option<PathBuf>,
    pub(super) container_name: Option<String>,
    pub(super) ports: Option<Vec<String>>,
    pub(super) mounts: Option<Vec<String>>,
    pub(super) restart_policy: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) registry_auth: Option<PathBuf>,
    #[serde(default)]
    pub(super) hooks: RawHooks,
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub(super) hook_timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    pub(super) watch_after_commit: Duration,
    #[serde(default)]
    pub(super) probes: Vec<RawProbe>,
    pub(super) signing_keys: Option<Vec<PathBuf>>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    #[serde(default)]
    pub(super) pre_stop: Vec<String>,
    #[serde(default)]
    pub(super) pre_start: Vec<String>,
    #[serde(default)]
    pub(super) post_start: Vec<String>,
    #[serde(default)]
    pub(super) on_rollback: Vec<String>,
}

fn default_heartbeat() -> Duration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_hook_timeout() -> Duration {
    DEFAULT_HOOK_TIMEOUT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub(super) kind: String,
    pub(super) url: Option<String>,
    pub(super) expect_status: Option<u16>,
    pub(super) expect_body: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) address: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) unit: Option<String>,
    pub(super) manager: Option<String>,
    pub(super) bus: Option<String>,
    pub(super) grpc_service: Option<String>,
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub(super) interval: Duration,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default = "default_threshold")]
    pub(super) success_threshold: u32,
    #[serde(default = "default_threshold")]
    pub(super) failure_threshold: u32,
}

pub(super) fn default_probe_interval() -> Duration {
    DEFAULT_PROBE_INTERVAL
}
pub(super) fn default_probe_timeout() -> Duration {
    DEFAULT_PROBE_TIMEOUT
}
pub(super) fn default_threshold() -> u32 {
    1
}
