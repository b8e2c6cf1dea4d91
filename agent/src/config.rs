//! The agent's config file (TOML): this host, its coordinator replicas, how each service runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_proto::names;
use rollgate_proto::signing::PublicKey;
use serde::Deserialize;
use thiserror::Error;

mod container;
mod probe;
mod release_rules;
mod run_as;
#[cfg(test)]
mod signing_tests;
#[cfg(test)]
mod tests;

pub use container::{ContainerSettings, PortMap, RestartPolicy, DEFAULT_CONTAINER_SOCKET};
use probe::RawProbe;
pub use probe::{ProbeCheck, ProbeConfig};
pub use release_rules::{
    SourceRefusal, SourceRules, DEFAULT_ROLLBACK_WINDOW, MAX_ROLLBACK_WINDOW, STORE_SOURCE,
};
pub use run_as::RunAs;

/// Default heartbeat interval until the coordinator's `Welcome` says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default grace between SIGTERM and SIGKILL when stopping a service.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pause before the process backend restarts a service that exited on its own.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(1);
/// Default time between two runs of a probe.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default time one probe run may take before it counts as failed.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time one hook command may run before it is killed and counts as failed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on the bytes a tarball release may unpack to (1 GiB).
pub const DEFAULT_UNPACK_MAX_BYTES: u64 = 1 << 30;
/// Default cap on the entries (files, dirs, links) a tarball release may hold.
pub const DEFAULT_UNPACK_MAX_ENTRIES: u64 = 10_000;
/// Default cap on the size a release may declare (4 GiB): larger ones are refused unread.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 4 << 30;

/// A config the agent cannot run with; the message names the field and the fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The text is not TOML, or has unknown or mistyped fields.
    #[error("agent config is not valid: {0}")]
    Toml(String),
    /// A field has a value the agent cannot use.
    #[error("agent config field `{field}`: {problem}")]
    Field {
        /// Path of the field, e.g. `services[0].probes[1].url`.
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// Reads the CA certificates of an http probe's `ca_file` (PEM, one or more certificates).
/// The error names the path and what is wrong with it.
pub(crate) fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a valid PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

fn field_err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The validated agent config. The file looks like this:
///
/// ```toml
/// host_id = "web-1"                       # 1-128 of a-z A-Z 0-9 . _ -
/// coordinator = "https://127.0.0.1:7443"  # a coordinator replica, or instead:
/// # coordinators = ["https://a:7443", "https://b:7443"]   # several, tried in turn
/// state_dir = "/var/lib/rollgate-agent"
/// heartbeat_interval = "1s"               # until the coordinator's welcome says otherwise
/// [tls]                                   # mTLS to the coordinator (required)
/// ca = "/etc/rollgate/pki/ca.pem"         # the fleet CA
/// cert = "/etc/rollgate/pki/host-web-1.pem"   # rollgate certs issue host web-1
/// key = "/etc/rollgate/pki/host-web-1.key"
/// # insecure_plaintext = true             # development only: http:// URLs, no TLS
/// max_artifact_bytes = 4294967296         # refuse releases declaring more bytes (4 GiB)
/// rollback_window = 1                     # a rollback goes back at most this many releases
/// allowed_sources = ["store:"]            # default; add "https://artifacts.example/rel/"
/// file_source_dirs = []                   # file:// sources only under these dirs
/// [signing]                               # signed releases, see deploy/SIGNING.md
/// required = true                         # refuse releases without a valid signature
/// keys = ["/etc/rollgate/release.pub"]    # pinned ed25519 public keys (PEM); any may sign
/// # fleet = "prod"                        # default: the fleet of this host's certificate
/// # env = "production"                    # also accept signatures made with --env production
/// [labels]
/// site = "a"
/// [[services]]
/// name = "demo"
/// # signing_keys = ["/etc/rollgate/demo.pub"]  # only these sign `demo` (signing required)
/// backend = "process"                     # "process" (the agent runs it) or "systemd"
/// binary = "demo-svc"                     # what runs, inside each release dir (may be
///                                         # "bin/demo-svc" for a tarball)
/// format = "auto"                         # "binary" | "tar.gz" | "auto" (gzip magic bytes)
/// unpack_max_bytes = 1073741824           # tarballs: at most this many bytes unpacked
/// unpack_max_entries = 10000              # tarballs: at most this many entries
/// args = ["--port", "18081"]              # process backend only
/// env = { GREETING = "hi" }               # process and container backends
/// stop_timeout = "5s"                     # SIGTERM, then SIGKILL after this (10s)
/// restart_delay = "1s"                    # process: restart after an unexpected exit (1s)
/// hook_timeout = "30s"                    # each hook command (default 30s)
/// watch_after_commit = "30s"              # report a regression this long after a commit
/// # backend = "systemd" instead takes:
/// # unit = "demo.service"                 # installed by the operator; runs current/<binary>
/// # manager = "system"                    # or "user" (a `systemd --user` manager)
/// # bus = "unix:path=/run/user/1000/bus"  # D-Bus address, if not the manager's default
/// # backend = "container" instead: `binary` names the image archive (`docker save`) in each
/// # release dir; `env` and `stop_timeout` apply; and it takes:
/// # socket = "/var/run/docker.sock"       # Docker Engine API (or Podman's compatible socket)
/// # container_name = "demo"              # containers are `<container_name>-<release dir>`
/// # ports = ["18081:8080"]                # host:container, tcp
/// # mounts = ["/srv/data:/data:ro"]       # host:container[:ro|rw] binds
/// # restart_policy = "no"                 # "no" | "on-failure" | "always" | "unless-stopped"
/// # command = ["/app", "--port", "8080"]  # overrides the image's command
/// [services.hooks]                        # shell commands (`/bin/sh -c`), run in order
/// pre_stop = ["drain.sh"]                 # fails: the update is refused, nothing stopped
/// pre_start = []                          # after the swap, before the new release starts
/// post_start = ["undrain.sh"]             # after it is healthy; fails: rolled back
/// on_rollback = ["undrain.sh"]            # after going back to the previous release
/// [[services.probes]]
/// kind = "http"                           # http | tcp | exec | systemd | grpc
/// url = "http://127.0.0.1:18081/health"   # or https://
/// expect_status = 200                     # default: any 2xx
/// expect_body = "ok"                      # the body must contain this (optional)
/// # ca_file = "/etc/rollgate/ca.pem"      # https: PEM CA cert(s) trusted besides the built-in roots
/// interval = "200ms"                      # default 1s
/// timeout = "1s"                          # default 1s
/// success_threshold = 1                   # consecutive passes to count as passing
/// failure_threshold = 1                   # consecutive failures to count as failing
/// [[services.probes]]
/// kind = "tcp"
/// address = "127.0.0.1:18081"
/// [[services.probes]]
/// kind = "exec"
/// command = ["/bin/sh", "-c", "true"]
/// [[services.probes]]
/// kind = "grpc"                           # grpc.health.v1 Check, plaintext HTTP/2
/// address = "127.0.0.1:50051"
/// grpc_service = ""                       # the service name to ask about ("" = server)
/// [[services.probes]]
/// kind = "systemd"                        # the unit is active
/// unit = "demo.service"                   # default: the service's own unit
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This host's id (also the name its certificate will carry).
    pub host_id: String,
    /// URLs of the coordinator replicas, e.g. `http://127.0.0.1:7443`, in the order they are
    /// tried: after a failed connect or a lost session the agent dials the next one
    /// (round-robin). Never empty; from `coordinator` (one) or `coordinators` (a list).
    pub coordinators: Vec<String>,
    /// Where the agent keeps releases, its journal and service logs (absolute).
    pub state_dir: PathBuf,
    /// Heartbeat interval until the coordinator's `Welcome` overrides it.
    pub heartbeat_interval: Duration,
    /// Labels the coordinator selects and groups hosts by (e.g. `site`).
    pub labels: BTreeMap<String, String>,
    /// The services this host runs, in file order.
    pub services: Vec<ServiceConfig>,
    /// `[tls]`: the fleet CA and this host's certificate for mTLS to the coordinator (checked
    /// when the agent starts, see [`crate::session::check_tls`]).
    pub tls: rollgate_proto::tls::TlsConfig,
    /// Largest artifact a release may declare; larger ones are refused before any download.
    pub max_artifact_bytes: u64,
    /// `[signing]`: the fleet-wide signing keys and whether a signature is required.
    pub signing: SigningConfig,
    /// How many releases back an explicit rollback may go (1: only to the one run
    /// immediately before the current one).
    pub rollback_window: u32,
    /// Where releases may be fetched from (`allowed_sources`, `file_source_dirs`).
    pub sources: SourceRules,
}

/// `[signing]`: who may sign releases for this host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SigningConfig {
    /// Every release must carry a valid signature by one of `keys` (or, for a service with
    /// `signing_keys`, by one of those).
    pub required: bool,
    /// Pinned public keys, loaded from the PEM files the config names. With `required =
    /// false` a release that carries a signature must still verify against them (a way to
    /// turn signing on gradually); unsigned ones are accepted.
    pub keys: Vec<PublicKey>,
    /// The fleet (and environment) signatures must name: `fleet`/`env`, or the fleet of the
    /// host's certificate. Empty fleet only when no keys are pinned.
    pub scope: rollgate_proto::signing::Scope,
}

/// How one service runs on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Service name, as rollouts name it.
    pub name: String,
    /// How the service is run.
    pub backend: Backend,
    /// What runs, relative to a release dir: the artifact itself for a single binary, an
    /// entry of the unpacked tree for a tarball (e.g. `bin/demo-svc`).
    pub binary: String,
    /// What kind of artifact the releases are.
    pub format: ArtifactFormat,
    /// Caps on what a tarball release may unpack to.
    pub unpack_limits: UnpackLimits,
    /// Arguments passed to the binary (process backend).
    pub args: Vec<String>,
    /// Extra environment for the binary, on top of the agent's own (process backend).
    pub env: BTreeMap<String, String>,
    /// Grace between SIGTERM and SIGKILL when stopping the service (process backend).
    pub stop_timeout: Duration,
    /// Pause before restarting a service that exited on its own (process backend).
    pub restart_delay: Duration,
    /// Health probes; the service is healthy when all of them pass.
    pub probes: Vec<ProbeConfig>,
    /// Commands run around an update.
    pub hooks: Hooks,
    /// Time each hook command may take before it is killed and counts as failed.
    pub hook_timeout: Duration,
    /// How long after a commit a failing health check is reported as a regression of the
    /// release just committed (zero: not at all).
    pub watch_after_commit: Duration,
    /// Public keys that alone may sign this service's releases (signing is then required for
    /// it, whatever `[signing]` says); `None`: the fleet-wide `[signing]` applies.
    pub signing_keys: Option<Vec<PublicKey>>,
    /// The user and group the process runs as (process backend, `user`/`group`); `None`:
    /// the agent's own (root). Supplementary groups are cleared.
    pub run_as: Option<RunAs>,
}

/// How a service is run on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The agent starts and supervises the process itself (its lifetime is tied to the agent).
    Process,
    /// A systemd unit the operator installed runs `current/<binary>`; the agent restarts it
    /// over D-Bus and reads its state. The service outlives the agent.
    Systemd(SystemdTarget),
    /// A container run by a Docker Engine (or Podman's Docker-compatible API); each release
    /// is an image archive (`docker save`) run as its own container. The service outlives
    /// the agent.
    Container(ContainerSettings),
}

/// A systemd unit and the manager it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdTarget {
    /// Unit name, e.g. `demo.service`.
    pub unit: String,
    /// Which manager runs it.
    pub manager: Manager,
    /// D-Bus address to reach the manager through, when not the manager's default bus.
    pub bus: Option<String>,
}

/// A systemd manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// The system manager (PID 1), over the system bus.
    System,
    /// A user manager (`systemd --user`), over that user's session bus.
    User,
}

impl Manager {
    /// "system" or "user".
    pub fn word(self) -> &'static str {
        match self {
            Manager::System => "system",
            Manager::User => "user",
        }
    }
}

/// What kind of artifact a service's releases are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactFormat {
    /// One file, stored as `binary` in the release dir.
    Binary,
    /// A gzip-compressed tarball, unpacked into the release dir.
    TarGz,
    /// Decided per release by its first bytes (the gzip magic means a tarball).
    Auto,
}

/// Caps on unpacking a tarball release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most bytes the archive may decompress to (file contents and headers together).
    pub max_bytes: u64,
    /// Most entries (files, dirs, links) it may hold.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        UnpackLimits {
            max_bytes: DEFAULT_UNPACK_MAX_BYTES,
            max_entries: DEFAULT_UNPACK_MAX_ENTRIES,
        }
    }
}

/// Commands run around an update, each with `/bin/sh -c`, in order; the first failure stops
/// the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Before anything stops (drain). A failure refuses the update; nothing was touched.
    pub pre_stop: Vec<String>,
    /// After `current` names the new release, before it starts. A failure rolls back.
    pub pre_start: Vec<String>,
    /// After the new release passed its health checks, before the commit (undrain). A
    /// failure rolls back.
    pub post_start: Vec<String>,
    /// After the agent went back to the previous release (or failed to). A failure is
    /// reported but changes nothing.
    pub on_rollback: Vec<String>,
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        raw.validate()
    }

    /// The config of the service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl ServiceConfig {
    /// How often the service's probes run together: the shortest probe interval.
    pub fn probe_interval(&self) -> Duration {
        self.probes
            .iter()
            .map(|p| p.interval)
            .min()
            .unwrap_or(DEFAULT_PROBE_INTERVAL)
    }
}

// The file format. Kept apart from the validated types so that every field can be checked
// with an error that names it, rather than serde's generic messages.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host_id: String,
    coordinator: Option<String>,
    coordinators: Option<Vec<String>>,
    state_dir: PathBuf,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    heartbeat_interval: Duration,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    tls: rollgate_proto::tls::TlsConfig,
    max_artifact_bytes: Option<u64>,
    rollback_window: Option<u32>,
    allowed_sources: Option<Vec<String>>,
    #[serde(default)]
    file_source_dirs: Vec<PathBuf>,
    #[serde(default)]
    signing: RawSigning,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    #[serde(default)]
    required: bool,
    #[serde(default)]
    keys: Vec<PathBuf>,
    fleet: Option<String>,
    env: Option<String>,
}

/// Loads the pinned public keys `paths` (field `field`); the error names the file and the fix.
fn load_keys(field: &str, paths: &[PathBuf]) -> Result<Vec<PublicKey>, ConfigError> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            PublicKey::load(p).map_err(|e| field_err(format!("{field}[{i}]"), e.to_string()))
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    backend: String,
    binary: String,
    format: Option<String>,
    unpack_max_bytes: Option<u64>,
    unpack_max_entries: Option<u64>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    #[serde(default, with = "humantime_serde")]
    stop_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    restart_delay: Option<Duration>,
    unit: Option<String>,
    manager: Option<String>,
    bus: Option<String>,
    socket: Option<PathBuf>,
    container_name: Option<String>,
    ports: Option<Vec<String>>,
    mounts: Option<Vec<String>>,
    restart_policy: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    hook_timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    watch_after_commit: Duration,
    #[serde(default)]
    probes: Vec<RawProbe>,
    signing_keys: Option<Vec<PathBuf>>,
    user: Option<String>,
    group: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    #[serde(default)]
    pre_stop: Vec<String>,
    #[serde(default)]
    pre_start: Vec<String>,
    #[serde(default)]
    post_start: Vec<String>,
    #[serde(default)]
    on_rollback: Vec<String>,
}

fn default_heartbeat() -> Duration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_hook_timeout() -> Duration {
    DEFAULT_HOOK_TIMEOUT
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        names::check("host id", &self.host_id).map_err(|e| field_err("host_id", e.to_string()))?;
        let coordinators = coordinator_urls(self.coordinator, self.coordinators)?;
        if self.state_dir.as_os_str().is_empty() {
            return Err(field_err(
                "state_dir",
                "must name a directory, e.g. \"/var/lib/rollgate-agent\"",
            ));
        }
        // The agent never changes its working directory, so a relative path is resolved once,
        // here, and every later path is absolute.
        let state_dir = std::path::absolute(&self.state_dir)
            .map_err(|e| field_err("state_dir", format!("cannot make it absolute: {e}")))?;
        if self.heartbeat_interval.is_zero() {
            return Err(field_err(
                "heartbeat_interval",
                "must be longer than 0s, e.g. \"1s\"",
            ));
        }
        for (k, v) in &self.labels {
            names::check("label name", k)
                .map_err(|e| field_err(format!("labels.{k}"), e.to_string()))?;
            names::check("label value", v)
                .map_err(|e| field_err(format!("labels.{k}"), e.to_string()))?;
        }
        let max_artifact_bytes = match self.max_artifact_bytes {
            Some(0) => {
                return Err(field_err(
                    "max_artifact_bytes",
                    "must be more than 0, e.g. 4294967296 (4 GiB)",
                ))
            }
            Some(n) => n,
            None => DEFAULT_MAX_ARTIFACT_BYTES,
        };
        let mut signing = SigningConfig {
            required: self.signing.required,
            keys: load_keys("signing.keys", &self.signing.keys)?,
            scope: Default::default(),
        };
        let rollback_window = release_rules::rollback_window(self.rollback_window)?;
        let sources = release_rules::source_rules(self.allowed_sources, self.file_source_dirs)?;
        if signing.required && signing.keys.is_empty() {
            return Err(field_err(
                "signing.keys",
                "is empty but signing.required is true, so no release could ever be installed; \
                 pin the publisher's public key, e.g. keys = [\"/etc/rollgate/release.pub\"] \
                 (made by `rollgate release keygen`)",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut services = Vec::with_capacity(self.services.len());
        for (i, s) in self.services.into_iter().enumerate() {
            let svc = s.validate(i)?;
            if !seen.insert(svc.name.clone()) {
                return Err(field_err(
                    format!("services[{i}].name"),
                    format!(
                        "service {:?} is configured twice; give each service one [[services]] \
                         table",
                        svc.name
                    ),
                ));
            }
            services.push(svc);
        }
        let any_keys =
            !signing.keys.is_empty() || services.iter().any(|s| s.signing_keys.is_some());
        signing.scope = release_rules::signing_scope(
            self.signing.fleet,
            self.signing.env,
            &self.tls,
            any_keys,
        )?;
        Ok(Config {
            host_id: self.host_id,
            coordinators,
            state_dir,
            heartbeat_interval: self.heartbeat_interval,
            labels: self.labels,
            services,
            tls: self.tls,
            max_artifact_bytes,
            signing,
            rollback_window,
            sources,
        })
    }
}

/// The coordinator URLs from `coordinator` (one) or `coordinators` (several): exactly one of
/// the two fields, every URL `http://HOST:PORT`, none twice.
fn coordinator_urls(
    one: Option<String>,
    list: Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    let fields: Vec<(String, String)> = match (one, list) {
        (Some(_), Some(_)) => {
            return Err(field_err(
                "coordinators",
                "is given together with `coordinator`; keep one of them: `coordinator` for a \
                 single replica, or `coordinators` to list all of them",
            ))
        }
        (None, None) => {
            return Err(field_err(
                "coordinator",
                "is missing; set `coordinator = \"https://HOST:PORT\"`, or `coordinators = \
                 [\"https://HOST:PORT\", ...]` to list several replicas",
            ))
        }
        (Some(url), None) => vec![("coordinator".to_string(), url)],
        (None, Some(urls)) if urls.is_empty() => {
            return Err(field_err(
                "coordinators",
                "lists no URL; name at least one replica, e.g. [\"https://127.0.0.1:7443\"]",
            ))
        }
        (None, Some(urls)) => urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| (format!("coordinators[{i}]"), url))
            .collect(),
    };
    let mut urls: Vec<String> = Vec::with_capacity(fields.len());
    for (field, url) in fields {
        check_coordinator_url(&field, &url)?;
        if urls.contains(&url) {
            return Err(field_err(
                field,
                format!("{url:?} is listed twice; name each replica once"),
            ));
        }
        urls.push(url);
    }
    Ok(urls)
}

fn check_coordinator_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let Some(authority) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(field_err(
            field,
            format!("{url:?} is not a coordinator URL; write it as \"https://HOST:PORT\""),
        ));
    };
    if authority.trim_end_matches('/').is_empty()
        || tonic::transport::Endpoint::from_shared(url.to_string()).is_err()
    {
        return Err(field_err(
            field,
            format!("{url:?} is not a valid URL; write it as \"https://HOST:PORT\""),
        ));
    }
    Ok(())
}

/// A field that belongs to another kind of thing (e.g. `url` on a tcp probe, `args` on a
/// systemd service) is a mistake worth naming, not something to ignore silently.
fn stray(field: String, set: bool, owner: &str, fix: &str) -> Result<(), ConfigError> {
    if set {
        Err(field_err(
            field,
            format!("does not apply to {owner}; {fix}"),
        ))
    } else {
        Ok(())
    }
}

/// A systemd unit name: `name.type` with systemd's unit-name characters.
fn check_unit_name(field: String, unit: &str) -> Result<(), ConfigError> {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    let ok = unit.len() <= 255
        && unit.rsplit_once('.').is_some_and(|(stem, ty)| {
            !stem.is_empty()
                && TYPES.contains(&ty)
                && stem.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(field_err(
            field,
            format!("{unit:?} is not a systemd unit name; write it in full, e.g. \"demo.service\""),
        ))
    }
}

fn parse_manager(field: String, manager: Option<&str>) -> Result<Manager, ConfigError> {
    match manager {
        None | Some("system") => Ok(Manager::System),
        Some("user") => Ok(Manager::User),
        Some(other) => Err(field_err(
            field,
            format!("{other:?} is not a systemd manager; use \"system\" or \"user\""),
        )),
    }
}

fn check_bus(field: String, bus: Option<String>) -> Result<Option<String>, ConfigError> {
    match bus {
        Some(b) if !b.contains(':') || b.starts_with(':') => Err(field_err(
            field,
            format!("{b:?} is not a D-Bus address; write e.g. \"unix:path=/run/user/1000/bus\""),
        )),
        other => Ok(other),
    }
}

/// `binary`: a relative path of safe names (no `..`, no leading `/` or `.`).
fn check_binary(field: String, binary: &str) -> Result<(), ConfigError> {
    if binary.starts_with('/') {
        return Err(field_err(
            field,
            format!("{binary:?} is absolute; name the file relative to the release dir, e.g. \"demo-svc\" or \"bin/demo-svc\""),
        ));
    }
    for part in binary.split('/') {
        names::check("binary path component", part)
            .map_err(|e| field_err(field.clone(), e.to_string()))?;
    }
    Ok(())
}

impl RawService {
    fn validate(self, i: usize) -> Result<ServiceConfig, ConfigError> {
        let at = |f: &str| format!("services[{i}].{f}");
        names::check("service name", &self.name)
            .map_err(|e| field_err(at("name"), e.to_string()))?;
        let run_as = run_as::resolve(
            &format!("services[{i}]"),
            &self.backend,
            self.user.as_deref(),
            self.group.as_deref(),
        )?;
        let backend = match self.backend.as_str() {
            "process" => {
                let fix = "it is only for backend = \"systemd\"; remove it";
                stray(at("unit"), self.unit.is_some(), "the process backend", fix)?;
                stray(
                    at("manager"),
                    self.manager.is_some(),
                    "the process backend",
                    fix,
                )?;
                stray(at("bus"), self.bus.is_some(), "the process backend", fix)?;
                self.no_container_keys(&at, "the process backend")?;
                Backend::Process
            }
            "systemd" => {
                let owner = "the systemd backend";
                let fix = "the unit decides how the service runs: set it there (ExecStart=, Environment=, TimeoutStopSec=, Restart=, RestartSec=)";
                stray(at("args"), self.args.is_some(), owner, fix)?;
                stray(at("env"), self.env.is_some(), owner, fix)?;
                stray(at("stop_timeout"), self.stop_timeout.is_some(), owner, fix)?;
                stray(
                    at("restart_delay"),
                    self.restart_delay.is_some(),
                    owner,
                    fix,
                )?;
                let Some(unit) = self.unit.clone() else {
                    return Err(field_err(
                        at("unit"),
                        "a systemd service needs the unit that runs it, e.g. unit = \"demo.service\" (the operator installs the unit; its ExecStart runs the release through the service's `current` link)",
                    ));
                };
                check_unit_name(at("unit"), &unit)?;
                self.no_container_keys(&at, owner)?;
                Backend::Systemd(SystemdTarget {
                    unit,
                    manager: parse_manager(at("manager"), self.manager.as_deref())?,
                    bus: check_bus(at("bus"), self.bus.clone())?,
                })
            }
            "container" => Backend::Container(self.container_settings(&at)?),
            other => {
                return Err(field_err(
                    at("backend"),
                    format!(
                        "{other:?} is not a backend; use \"process\", \"systemd\" or \"container\""
                    ),
                ))
            }
        };
        check_binary(at("binary"), &self.binary)?;
        let format = match self.format.as_deref() {
            None | Some("auto") => ArtifactFormat::Auto,
            Some("binary") => ArtifactFormat::Binary,
            Some("tar.gz") | Some("tgz") => ArtifactFormat::TarGz,
            Some(other) => {
                return Err(field_err(
                    at("format"),
                    format!(
                    "{other:?} is not an artifact format; use \"binary\", \"tar.gz\" or \"auto\""
                ),
                ))
            }
        };
        let unpack_limits = UnpackLimits {
            max_bytes: self.unpack_max_bytes.unwrap_or(DEFAULT_UNPACK_MAX_BYTES),
            max_entries: self
                .unpack_max_entries
                .unwrap_or(DEFAULT_UNPACK_MAX_ENTRIES),
        };
        if unpack_limits.max_bytes == 0 {
            return Err(field_err(
                at("unpack_max_bytes"),
                "must be more than 0, e.g. 1073741824 (1 GiB)",
            ));
        }
        if unpack_limits.max_entries == 0 {
            return Err(field_err(
                at("unpack_max_entries"),
                "must be more than 0, e.g. 10000",
            ));
        }
        let stop_timeout = self.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
        if stop_timeout.is_zero() {
            return Err(field_err(
                at("stop_timeout"),
                "must be longer than 0s so the service can shut down cleanly, e.g. \"5s\"",
            ));
        }
        let env = self.env.unwrap_or_default();
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(field_err(
                    at("env"),
                    format!("{k:?} is not a valid environment variable name"),
                ));
            }
        }
        if self.hook_timeout.is_zero() {
            return Err(field_err(
                at("hook_timeout"),
                "must be longer than 0s, e.g. \"30s\"",
            ));
        }
        let hooks = Hooks {
            pre_stop: self.hooks.pre_stop,
            pre_start: self.hooks.pre_start,
            post_start: self.hooks.post_start,
            on_rollback: self.hooks.on_rollback,
        };
        for (list, cmds) in [
            ("pre_stop", &hooks.pre_stop),
            ("pre_start", &hooks.pre_start),
            ("post_start", &hooks.post_start),
            ("on_rollback", &hooks.on_rollback),
        ] {
            for (j, c) in cmds.iter().enumerate() {
                if c.trim().is_empty() || c.contains('\0') {
                    return Err(field_err(
                        at(&format!("hooks.{list}[{j}]")),
                        "is empty; give a shell command, e.g. \"/usr/local/bin/drain demo\"",
                    ));
                }
            }
        }
        let own_unit = match &backend {
            Backend::Systemd(t) => Some(t),
            Backend::Process | Backend::Container(_) => None,
        };
        let probes = self
            .probes
            .into_iter()
            .enumerate()
            .map(|(j, p)| p.validate(&format!("services[{i}].probes[{j}]"), own_unit))
            .collect::<Result<Vec<_>, _>>()?;
        let signing_keys = match &self.signing_keys {
            None => None,
            Some(paths) if paths.is_empty() => {
                return Err(field_err(
                    at("signing_keys"),
                    "is empty, so no release of this service could be installed; list the PEM \
                     public keys that sign it, or remove the field to use [signing] keys",
                ))
            }
            Some(paths) => Some(load_keys(&at("signing_keys"), paths)?),
        };
        Ok(ServiceConfig {
            name: self.name,
            backend,
            binary: self.binary,
            format,
            unpack_limits,
            args: self.args.unwrap_or_default(),
            env,
            stop_timeout,
            restart_delay: self.restart_delay.unwrap_or(DEFAULT_RESTART_DELAY),
            probes,
            hooks,
            hook_timeout: self.hook_timeout,
            watch_after_commit: self.watch_after_commit,
            signing_keys,
            run_as,
        })
    }
}
