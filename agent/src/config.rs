//! The agent's config file (TOML): this host, its coordinator replicas, how each service runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_proto::names;
use rollgate_proto::signing::PublicKey;
use serde::Deserialize;
use thiserror::Error;

mod release_rules;
mod run_as;
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

/// Default Docker Engine API socket.
pub const DEFAULT_CONTAINER_SOCKET: &str = "/var/run/docker.sock";

/// How the container backend runs a service's releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSettings {
    /// The engine's API socket (Docker's, or Podman's compatible one).
    pub socket: PathBuf,
    /// Containers are named `<container_name>-<release dir>`.
    pub container_name: String,
    /// Published ports, tcp.
    pub ports: Vec<PortMap>,
    /// Bind mounts as the engine takes them: `host:container[:ro]`.
    pub mounts: Vec<String>,
    /// The engine's restart policy for the container.
    pub restart_policy: RestartPolicy,
    /// Overrides the image's command, if set.
    pub command: Option<Vec<String>>,
}

/// One published port: `host:container`, tcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    /// Port on the host.
    pub host: u16,
    /// Port inside the container.
    pub container: u16,
}

/// What the engine does when the container exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Nothing.
    No,
    /// Restart it after a non-zero exit.
    OnFailure,
    /// Always restart it (and at engine start).
    Always,
    /// Restart it unless it was stopped on purpose.
    UnlessStopped,
}

impl RestartPolicy {
    /// The engine's name for the policy.
    pub fn word(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }
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

/// One health probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// What the probe checks.
    pub check: ProbeCheck,
    /// Time between two runs.
    pub interval: Duration,
    /// Time one run may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive passes before a failing (or new) probe counts as passing.
    pub success_threshold: u32,
    /// Consecutive failures before a passing probe counts as failing.
    pub failure_threshold: u32,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeCheck {
    /// An HTTP(S) GET that must answer `expect_status`, or any 2xx when `None`.
    Http {
        /// The URL to GET.
        url: String,
        /// The status that counts as healthy; any 2xx when `None`.
        expect_status: Option<u16>,
        /// Text the body must contain (its first 64 KiB are read).
        expect_body: Option<String>,
        /// PEM file of extra CA certificates trusted for `https://` URLs, in addition to the
        /// built-in (webpki) roots. Checked to hold at least one certificate at load time.
        ca_file: Option<PathBuf>,
    },
    /// A TCP connect to `host:port`.
    Tcp {
        /// `host:port` to connect to.
        address: String,
    },
    /// A command that must exit 0.
    Exec {
        /// Program and arguments (no shell unless you name one).
        command: Vec<String>,
    },
    /// A systemd unit that must be active.
    Systemd(SystemdTarget),
    /// A `grpc.health.v1.Health/Check` call that must answer SERVING (plaintext HTTP/2).
    Grpc {
        /// `host:port` of the gRPC server.
        address: String,
        /// The service name asked about; "" asks about the server as a whole.
        service: String,
    },
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    kind: String,
    url: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
    ca_file: Option<PathBuf>,
    address: Option<String>,
    command: Option<Vec<String>>,
    unit: Option<String>,
    manager: Option<String>,
    bus: Option<String>,
    grpc_service: Option<String>,
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_threshold")]
    success_threshold: u32,
    #[serde(default = "default_threshold")]
    failure_threshold: u32,
}

fn default_heartbeat() -> Duration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_probe_interval() -> Duration {
    DEFAULT_PROBE_INTERVAL
}
fn default_probe_timeout() -> Duration {
    DEFAULT_PROBE_TIMEOUT
}
fn default_hook_timeout() -> Duration {
    DEFAULT_HOOK_TIMEOUT
}
fn default_threshold() -> u32 {
    1
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
    /// Refuses the container backend's keys on another backend.
    fn no_container_keys(
        &self,
        at: &dyn Fn(&str) -> String,
        owner: &str,
    ) -> Result<(), ConfigError> {
        let fix = "it is only for backend = \"container\"; remove it";
        for (key, set) in [
            ("socket", self.socket.is_some()),
            ("container_name", self.container_name.is_some()),
            ("ports", self.ports.is_some()),
            ("mounts", self.mounts.is_some()),
            ("restart_policy", self.restart_policy.is_some()),
            ("command", self.command.is_some()),
        ] {
            stray(at(key), set, owner, fix)?;
        }
        Ok(())
    }

    /// The container backend's settings, checked.
    fn container_settings(
        &self,
        at: &dyn Fn(&str) -> String,
    ) -> Result<ContainerSettings, ConfigError> {
        let owner = "the container backend";
        let fix = "the engine runs the image: set the command with `command`, the stop grace with `stop_timeout`";
        stray(at("args"), self.args.is_some(), owner, fix)?;
        stray(
            at("restart_delay"),
            self.restart_delay.is_some(),
            owner,
            fix,
        )?;
        for (key, set) in [
            ("unit", self.unit.is_some()),
            ("manager", self.manager.is_some()),
            ("bus", self.bus.is_some()),
        ] {
            stray(
                at(key),
                set,
                owner,
                "it is only for backend = \"systemd\"; remove it",
            )?;
        }
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINER_SOCKET));
        if !socket.is_absolute() {
            return Err(field_err(
                at("socket"),
                "must be an absolute path, e.g. \"/var/run/docker.sock\" or \"/run/podman/podman.sock\"",
            ));
        }
        let container_name = self
            .container_name
            .clone()
            .unwrap_or_else(|| self.name.clone());
        names::check("container name", &container_name)
            .map_err(|e| field_err(at("container_name"), e.to_string()))?;
        let ports = self
            .ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, p)| {
                let parsed = p.split_once(':').and_then(|(h, c)| {
                    Some(PortMap {
                        host: h.parse().ok()?,
                        container: c.parse().ok()?,
                    })
                });
                parsed.ok_or_else(|| {
                    field_err(
                        at(&format!("ports[{j}]")),
                        format!("{p:?} is not host:container (tcp), e.g. \"18081:8080\""),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = self.mounts.clone().unwrap_or_default();
        for (j, m) in mounts.iter().enumerate() {
            let parts: Vec<&str> = m.split(':').collect();
            let ok = matches!(parts.len(), 2 | 3)
                && parts[..2].iter().all(|p| p.starts_with('/'))
                && parts.get(2).is_none_or(|o| matches!(*o, "ro" | "rw"));
            if !ok {
                return Err(field_err(
                    at(&format!("mounts[{j}]")),
                    format!("{m:?} is not an absolute host:container[:ro|rw] bind, e.g. \"/srv/data:/data:ro\""),
                ));
            }
        }
        let restart_policy = match self.restart_policy.as_deref() {
            None | Some("no") => RestartPolicy::No,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("always") => RestartPolicy::Always,
            Some("unless-stopped") => RestartPolicy::UnlessStopped,
            Some(other) => {
                return Err(field_err(
                    at("restart_policy"),
                    format!("{other:?} is not a restart policy; use \"no\", \"on-failure\", \"always\" or \"unless-stopped\""),
                ))
            }
        };
        if self.command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(field_err(
                at("command"),
                "is empty; remove it to run the image's own command, or give one, e.g. [\"/app\", \"--port\", \"8080\"]",
            ));
        }
        Ok(ContainerSettings {
            socket,
            container_name,
            ports,
            mounts,
            restart_policy,
            command: self.command.clone(),
        })
    }

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

impl RawProbe {
    /// `own_unit` is the service's unit when it runs under systemd (a systemd probe's default).
    fn validate(
        self,
        at: &str,
        own_unit: Option<&SystemdTarget>,
    ) -> Result<ProbeConfig, ConfigError> {
        let f = |name: &str| format!("{at}.{name}");
        let kind = self.kind.clone();
        let owner = format!("a {kind:?} probe");
        // Which fields each kind takes; any other field set is named as a mistake.
        let takes: &[&str] = match kind.as_str() {
            "http" => &["url", "expect_status", "expect_body", "ca_file"],
            "tcp" => &["address"],
            "exec" => &["command"],
            "systemd" => &["unit", "manager", "bus"],
            "grpc" => &["address", "grpc_service"],
            _ => &[],
        };
        let set = [
            ("url", self.url.is_some()),
            ("expect_status", self.expect_status.is_some()),
            ("expect_body", self.expect_body.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("address", self.address.is_some()),
            ("command", self.command.is_some()),
            ("unit", self.unit.is_some()),
            ("manager", self.manager.is_some()),
            ("bus", self.bus.is_some()),
            ("grpc_service", self.grpc_service.is_some()),
        ];
        if !takes.is_empty() {
            for (name, is_set) in set {
                if !takes.contains(&name) {
                    stray(f(name), is_set, &owner, "remove it")?;
                }
            }
        }
        let check = match kind.as_str() {
            "http" => {
                let Some(url) = self.url else {
                    return Err(field_err(
                        f("url"),
                        "an http probe needs a url, e.g. \"http://127.0.0.1:8080/health\"",
                    ));
                };
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| field_err(f("url"), format!("{url:?} is not a valid URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(field_err(
                        f("url"),
                        format!("{url:?} must start with http:// or https://"),
                    ));
                }
                if let Some(s) = self.expect_status {
                    if !(100..=599).contains(&s) {
                        return Err(field_err(
                            f("expect_status"),
                            format!("{s} is not an HTTP status; use e.g. 200"),
                        ));
                    }
                }
                if self.expect_body.as_deref() == Some("") {
                    return Err(field_err(
                        f("expect_body"),
                        "is empty, which every body contains; give the text to look for, or remove it",
                    ));
                }
                if let Some(path) = &self.ca_file {
                    load_ca_file(path).map_err(|problem| field_err(f("ca_file"), problem))?;
                }
                ProbeCheck::Http {
                    url,
                    expect_status: self.expect_status,
                    expect_body: self.expect_body,
                    ca_file: self.ca_file,
                }
            }
            "tcp" | "grpc" => {
                let Some(address) = self.address else {
                    return Err(field_err(
                        f("address"),
                        format!("a {kind} probe needs an address, e.g. \"127.0.0.1:8080\""),
                    ));
                };
                let port_ok = address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(field_err(
                        f("address"),
                        format!("{address:?} is not HOST:PORT, e.g. \"127.0.0.1:8080\""),
                    ));
                }
                if kind == "tcp" {
                    ProbeCheck::Tcp { address }
                } else {
                    ProbeCheck::Grpc {
                        address,
                        service: self.grpc_service.unwrap_or_default(),
                    }
                }
            }
            "exec" => {
                let command = self.command.unwrap_or_default();
                if command.first().is_none_or(|c| c.is_empty()) {
                    return Err(field_err(
                        f("command"),
                        "an exec probe needs a command, e.g. [\"/bin/sh\", \"-c\", \"test -e /run/ok\"]",
                    ));
                }
                ProbeCheck::Exec { command }
            }
            "systemd" => {
                let target = match (self.unit, own_unit) {
                    (Some(unit), _) => {
                        check_unit_name(f("unit"), &unit)?;
                        let manager = match (self.manager.as_deref(), own_unit) {
                            (None, Some(own)) => own.manager,
                            (m, _) => parse_manager(f("manager"), m)?,
                        };
                        let bus = match (self.bus, own_unit) {
                            (None, Some(own)) if own.manager == manager => own.bus.clone(),
                            (b, _) => check_bus(f("bus"), b)?,
                        };
                        SystemdTarget { unit, manager, bus }
                    }
                    (None, Some(own)) => {
                        stray(f("manager"), self.manager.is_some(), "a systemd probe of the service's own unit", "remove it (the service's `manager` applies)")?;
                        stray(f("bus"), self.bus.is_some(), "a systemd probe of the service's own unit", "remove it (the service's `bus` applies)")?;
                        own.clone()
                    }
                    (None, None) => {
                        return Err(field_err(
                            f("unit"),
                            "a systemd probe of a service that systemd does not run needs the unit to check, e.g. unit = \"demo.service\"",
                        ))
                    }
                };
                ProbeCheck::Systemd(target)
            }
            other => {
                return Err(field_err(
                    f("kind"),
                    format!("{other:?} is not a probe kind; use \"http\", \"tcp\", \"exec\", \"systemd\" or \"grpc\""),
                ))
            }
        };
        if self.interval.is_zero() {
            return Err(field_err(
                f("interval"),
                "must be longer than 0s, e.g. \"1s\"",
            ));
        }
        if self.timeout.is_zero() {
            return Err(field_err(
                f("timeout"),
                "must be longer than 0s, e.g. \"1s\"",
            ));
        }
        for (name, v) in [
            ("success_threshold", self.success_threshold),
            ("failure_threshold", self.failure_threshold),
        ] {
            if v == 0 {
                return Err(field_err(
                    f(name),
                    "must be at least 1 (consecutive results)",
                ));
            }
        }
        Ok(ProbeConfig {
            check,
            interval: self.interval,
            timeout: self.timeout,
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
host_id = "web-1"
coordinator = "http://127.0.0.1:7443"
state_dir = "/var/lib/rollgate-agent"
[labels]
site = "a"
[[services]]
name = "demo"
backend = "process"
binary = "demo-svc"
args = ["--port", "18081"]
env = { GREETING = "hi" }
stop_timeout = "5s"
restart_delay = "1s"
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:18081/health"
expect_status = 200
interval = "200ms"
timeout = "1s"
[[services.probes]]
kind = "tcp"
address = "127.0.0.1:18081"
[[services.probes]]
kind = "exec"
command = ["/bin/sh", "-c", "true"]
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD).expect("valid config");
        assert_eq!(c.host_id, "web-1");
        assert_eq!(c.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(c.labels.get("site").map(String::as_str), Some("a"));
        let s = c.service("demo").expect("demo configured");
        assert_eq!(s.backend, Backend::Process);
        assert_eq!(s.stop_timeout, Duration::from_secs(5));
        assert_eq!(s.probes.len(), 3);
        assert_eq!(
            s.probes[0].check,
            ProbeCheck::Http {
                url: "http://127.0.0.1:18081/health".into(),
                expect_status: Some(200),
                expect_body: None,
                ca_file: None,
            }
        );
        assert_eq!(s.probes[1].interval, DEFAULT_PROBE_INTERVAL);
        assert_eq!(s.probe_interval(), Duration::from_millis(200));
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let cases: Vec<(String, &str, &str)> = vec![
            (GOOD.replace("\"web-1\"", "\"web/1\""), "`host_id`", "not valid"),
            (GOOD.replace("http://127.0.0.1:7443", "127.0.0.1:7443"), "`coordinator`", "https://HOST:PORT"),
            (GOOD.replace("http://127.0.0.1:7443", "ftp://c:7443"), "`coordinator`", "not a coordinator URL"),
            (GOOD.replace("[labels]", "[tls]\nca = \"/x\"\ncrt = \"/y\"\n[labels]"), "crt", "unknown field"),
            (GOOD.replace("\"process\"", "\"container\""), "`services[0].args`", "does not apply to the container backend"),
            (GOOD.replace("\"process\"", "\"systemd\""), "`services[0].args`", "does not apply to the systemd backend"),
            (GOOD.replace("\"process\"", "\"foo\""), "`services[0].backend`", "not a backend"),
            (GOOD.replace("\"demo-svc\"", "\"../demo\""), "`services[0].binary`", "not valid"),
            (GOOD.replace("\"demo-svc\"", "\"/bin/demo\""), "`services[0].binary`", "is absolute"),
            (GOOD.replace("\"demo-svc\"", "\"bin//demo\""), "`services[0].binary`", "not valid"),
            (GOOD.replace("\"5s\"", "\"0s\""), "`services[0].stop_timeout`", "longer than 0s"),
            (GOOD.replace("kind = \"tcp\"", "kind = \"udp\""), "`services[0].probes[1].kind`", "\"exec\", \"systemd\" or \"grpc\""),
            (GOOD.replace("address = \"127.0.0.1:18081\"", "address = \"localhost\""), "`services[0].probes[1].address`", "HOST:PORT"),
            (GOOD.replace("address = \"127.0.0.1:18081\"", "url = \"http://x/\""), "`services[0].probes[1].url`", "remove it"),
            (GOOD.replace("url = \"http://127.0.0.1:18081/health\"", ""), "`services[0].probes[0].url`", "needs a url"),
            (GOOD.replace("[\"/bin/sh\", \"-c\", \"true\"]", "[]"), "`services[0].probes[2].command`", "needs a command"),
            (GOOD.replace("expect_status = 200", "expect_status = 42"), "`services[0].probes[0].expect_status`", "not an HTTP status"),
            (GOOD.replace("interval = \"200ms\"", "interval = \"0s\""), "`services[0].probes[0].interval`", "longer than 0s"),
            (GOOD.replace("site = \"a\"", "site = \"a b\""), "`labels.site`", "not valid"),
            (format!("{GOOD}\n[[services]]\nname = \"demo\"\nbackend = \"process\"\nbinary = \"x\"\n"), "`services[1].name`", "configured twice"),
            (GOOD.replace("host_id = \"web-1\"", "host_id = \"web-1\"\nbogus = 1"), "bogus", "unknown field"),
            (GOOD.replace("\"200ms\"", "\"soon\""), "interval", "invalid"),
        ];
        for (text, field, fix) in cases {
            let err = Config::parse(&text).expect_err(field).to_string();
            assert!(err.contains(field), "error {err:?} should name {field}");
            assert!(err.contains(fix), "error {err:?} should say {fix:?}");
        }
    }

    #[test]
    fn http_probe_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let field = "`services[0].probes[0].ca_file`";
        for (path, fix) in [
            (&missing, "cannot read"),
            (&junk, "holds no PEM certificate"),
        ] {
            let text = GOOD.replace(
                "expect_status = 200",
                &format!(
                    "expect_status = 200\nca_file = {:?}",
                    path.display().to_string()
                ),
            );
            let err = Config::parse(&text).expect_err(fix).to_string();
            assert!(err.contains(field), "error {err:?} should name {field}");
            assert!(
                err.contains(&path.display().to_string()),
                "error {err:?} should name the path"
            );
            assert!(err.contains(fix), "error {err:?} should say {fix:?}");
        }
        // Not an http probe: named as a stray field.
        let text = GOOD.replace(
            "address = \"127.0.0.1:18081\"",
            "address = \"127.0.0.1:18081\"\nca_file = \"/x.pem\"",
        );
        let err = Config::parse(&text).expect_err("stray").to_string();
        assert!(err.contains("`services[0].probes[1].ca_file`"), "{err}");
    }

    const SYSTEMD: &str = r#"
host_id = "web-1"
coordinator = "http://127.0.0.1:7443"
state_dir = "/var/lib/rollgate-agent"
[[services]]
name = "demo"
backend = "systemd"
unit = "demo.service"
binary = "bin/demo-svc"
format = "tar.gz"
unpack_max_bytes = 1000000
unpack_max_entries = 50
hook_timeout = "5s"
watch_after_commit = "30s"
[services.hooks]
pre_stop = ["/usr/local/bin/drain demo"]
post_start = ["/usr/local/bin/undrain demo"]
on_rollback = ["logger rolled back"]
[[services.probes]]
kind = "systemd"
[[services.probes]]
kind = "grpc"
address = "127.0.0.1:50051"
grpc_service = "demo"
success_threshold = 2
failure_threshold = 3
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:8080/ready"
expect_body = "ready"
"#;

    #[test]
    fn systemd_services_hooks_tarballs_and_new_probes() {
        let c = Config::parse(SYSTEMD).expect("valid config");
        let s = c.service("demo").expect("demo configured");
        let own = SystemdTarget {
            unit: "demo.service".into(),
            manager: Manager::System,
            bus: None,
        };
        assert_eq!(s.backend, Backend::Systemd(own.clone()));
        assert_eq!(s.binary, "bin/demo-svc");
        assert_eq!(s.format, ArtifactFormat::TarGz);
        assert_eq!(
            s.unpack_limits,
            UnpackLimits {
                max_bytes: 1_000_000,
                max_entries: 50
            }
        );
        assert_eq!(s.hook_timeout, Duration::from_secs(5));
        assert_eq!(s.watch_after_commit, Duration::from_secs(30));
        assert_eq!(s.hooks.pre_stop, ["/usr/local/bin/drain demo"]);
        assert!(s.hooks.pre_start.is_empty());
        assert_eq!(s.hooks.on_rollback, ["logger rolled back"]);
        assert_eq!(
            s.probes[0].check,
            ProbeCheck::Systemd(own),
            "defaults to the own unit"
        );
        assert_eq!(
            s.probes[1].check,
            ProbeCheck::Grpc {
                address: "127.0.0.1:50051".into(),
                service: "demo".into()
            }
        );
        assert_eq!(
            (s.probes[1].success_threshold, s.probes[1].failure_threshold),
            (2, 3)
        );
        assert_eq!(
            (s.probes[2].success_threshold, s.probes[2].failure_threshold),
            (1, 1)
        );
        assert!(
            matches!(&s.probes[2].check, ProbeCheck::Http { expect_body: Some(b), .. } if b == "ready")
        );

        let user = Config::parse(&SYSTEMD.replace(
            "unit = \"demo.service\"",
            "unit = \"demo.service\"\nmanager = \"user\"\nbus = \"unix:path=/tmp/x/bus\"",
        ))
        .expect("user manager");
        let Backend::Systemd(t) = &user.services[0].backend else {
            panic!("systemd backend");
        };
        assert_eq!(
            (t.manager, t.bus.as_deref()),
            (Manager::User, Some("unix:path=/tmp/x/bus"))
        );
        // The systemd probe of the service's own unit goes through the same manager and bus.
        assert_eq!(
            user.services[0].probes[0].check,
            ProbeCheck::Systemd(t.clone())
        );

        // The defaults: auto format, 1 GiB / 10000 entries, 30s hooks, no watch window.
        let plain = Config::parse(GOOD).expect("valid config");
        let p = &plain.services[0];
        assert_eq!(p.format, ArtifactFormat::Auto);
        assert_eq!(p.unpack_limits, UnpackLimits::default());
        assert_eq!(p.hook_timeout, DEFAULT_HOOK_TIMEOUT);
        assert!(p.watch_after_commit.is_zero());
        assert_eq!(p.hooks, Hooks::default());

        let cases: Vec<(String, &str, &str)> = vec![
            (
                SYSTEMD.replace("unit = \"demo.service\"\n", ""),
                "`services[0].unit`",
                "needs the unit",
            ),
            (
                SYSTEMD.replace("\"demo.service\"", "\"demo\""),
                "`services[0].unit`",
                "not a systemd unit name",
            ),
            (
                SYSTEMD.replace(
                    "unit = \"demo.service\"",
                    "unit = \"demo.service\"\nmanager = \"root\"",
                ),
                "`services[0].manager`",
                "\"system\" or \"user\"",
            ),
            (
                SYSTEMD.replace(
                    "unit = \"demo.service\"",
                    "unit = \"demo.service\"\nbus = \"/run/bus\"",
                ),
                "`services[0].bus`",
                "not a D-Bus address",
            ),
            (
                SYSTEMD.replace(
                    "unit = \"demo.service\"",
                    "unit = \"demo.service\"\nrestart_delay = \"1s\"",
                ),
                "`services[0].restart_delay`",
                "RestartSec=",
            ),
            (
                SYSTEMD.replace("\"tar.gz\"", "\"zip\""),
                "`services[0].format`",
                "\"binary\", \"tar.gz\" or \"auto\"",
            ),
            (
                SYSTEMD.replace("1000000", "0"),
                "`services[0].unpack_max_bytes`",
                "more than 0",
            ),
            (
                SYSTEMD.replace("= 50", "= 0"),
                "`services[0].unpack_max_entries`",
                "more than 0",
            ),
            (
                SYSTEMD.replace("\"5s\"", "\"0s\""),
                "`services[0].hook_timeout`",
                "longer than 0s",
            ),
            (
                SYSTEMD.replace("[\"logger rolled back\"]", "[\"  \"]"),
                "`services[0].hooks.on_rollback[0]`",
                "is empty",
            ),
            (
                SYSTEMD.replace("post_start", "post_stop"),
                "post_stop",
                "unknown field",
            ),
            (
                SYSTEMD.replace("success_threshold = 2", "success_threshold = 0"),
                "`services[0].probes[1].success_threshold`",
                "at least 1",
            ),
            (
                SYSTEMD.replace("expect_body = \"ready\"", "expect_body = \"\""),
                "`services[0].probes[2].expect_body`",
                "is empty",
            ),
            (
                SYSTEMD.replace(
                    "grpc_service = \"demo\"",
                    "grpc_service = \"demo\"\nurl = \"http://x/\"",
                ),
                "`services[0].probes[1].url`",
                "does not apply to a \"grpc\" probe",
            ),
            (
                SYSTEMD.replace("address = \"127.0.0.1:50051\"", "address = \"localhost\""),
                "`services[0].probes[1].address`",
                "HOST:PORT",
            ),
            (
                SYSTEMD.replace(
                    "kind = \"systemd\"",
                    "kind = \"systemd\"\nmanager = \"user\"",
                ),
                "`services[0].probes[0].manager`",
                "the service's `manager` applies",
            ),
            (
                GOOD.replace(
                    "kind = \"tcp\"\naddress = \"127.0.0.1:18081\"",
                    "kind = \"systemd\"",
                ),
                "`services[0].probes[1].unit`",
                "needs the unit to check",
            ),
            (
                GOOD.replace(
                    "binary = \"demo-svc\"",
                    "binary = \"demo-svc\"\nunit = \"x.service\"",
                ),
                "`services[0].unit`",
                "only for backend = \"systemd\"",
            ),
        ];
        for (text, field, fix) in cases {
            let err = Config::parse(&text).expect_err(field).to_string();
            assert!(err.contains(field), "error {err:?} should name {field}");
            assert!(err.contains(fix), "error {err:?} should say {fix:?}");
        }

        // A systemd probe of another unit, on a process-backend service.
        let other = Config::parse(&GOOD.replace(
            "kind = \"tcp\"\naddress = \"127.0.0.1:18081\"",
            "kind = \"systemd\"\nunit = \"postgresql.service\"",
        ))
        .expect("valid config");
        assert_eq!(
            other.services[0].probes[1].check,
            ProbeCheck::Systemd(SystemdTarget {
                unit: "postgresql.service".into(),
                manager: Manager::System,
                bus: None
            })
        );
    }

    #[test]
    fn coordinator_replicas() {
        let one = Config::parse(GOOD).expect("valid config");
        assert_eq!(one.coordinators, ["http://127.0.0.1:7443"]);

        let list = GOOD.replace(
            "coordinator = \"http://127.0.0.1:7443\"",
            "coordinators = [\"http://a:7443\", \"http://b:7443\"]",
        );
        let many = Config::parse(&list).expect("valid config");
        assert_eq!(many.coordinators, ["http://a:7443", "http://b:7443"]);

        let line = "coordinator = \"http://127.0.0.1:7443\"";
        let cases: Vec<(String, &str, &[&str])> = vec![
            (
                GOOD.replace(line, &format!("{line}\ncoordinators = [\"http://b:7443\"]")),
                "`coordinators`",
                &["`coordinator`", "keep one of them"],
            ),
            (
                GOOD.replace(line, ""),
                "`coordinator`",
                &["is missing", "`coordinators = ["],
            ),
            (
                GOOD.replace(line, "coordinators = []"),
                "`coordinators`",
                &["lists no URL"],
            ),
            (
                GOOD.replace(line, "coordinators = [\"http://a:7443\", \"b:7443\"]"),
                "`coordinators[1]`",
                &["https://HOST:PORT"],
            ),
            (
                GOOD.replace(
                    line,
                    "coordinators = [\"http://a:7443\", \"http://b:7443\", \"http://a:7443\"]",
                ),
                "`coordinators[2]`",
                &["listed twice"],
            ),
            (
                GOOD.replace(line, "coordinators = \"http://a:7443\""),
                "coordinators",
                &["invalid type"],
            ),
        ];
        for (text, field, says) in cases {
            let err = Config::parse(&text).expect_err(field).to_string();
            assert!(err.contains(field), "error {err:?} should name {field}");
            for s in says {
                assert!(err.contains(s), "error {err:?} should say {s:?}");
            }
        }
    }

    #[test]
    fn example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        // The example names files of a real host: its signing key (generated here), and the
        // host certificate the fleet comes from (absent here, so the fleet line is used).
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("release.pub");
        let pair = rollgate_proto::signing::SigningKey::generate().expect("key");
        std::fs::write(&key, pair.public().to_pem()).expect("write key");
        let text = std::fs::read_to_string(&path)
            .expect("read")
            .replace(
                "keys = [\"/etc/rollgate/release.pub\"]",
                &format!("keys = [{:?}]", key.display().to_string()),
            )
            .replace("# fleet = \"prod\"", "fleet = \"prod\"");
        let c = Config::parse(&text).expect("deploy/agent.toml must stay valid");
        assert_eq!(c.coordinators.len(), 1);
        assert!(c.signing.required, "signing is on in the example");
        assert_eq!(c.signing.keys.len(), 1);
        // The commented-out replica list there must be valid too once uncommented (and the
        // single `coordinator` line dropped).
        let listed: String = text
            .lines()
            .filter(|l| !l.starts_with("coordinator = "))
            .map(|l| match l.strip_prefix("# coordinators = ") {
                Some(list) => format!("coordinators = {list}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        let c = Config::parse(&listed).expect("the documented replica list must be valid");
        assert!(c.coordinators.len() > 1, "{:?}", c.coordinators);
    }

    #[test]
    fn container_services() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let c = Config::load(&deploy.join("agent-container.toml"))
            .expect("deploy/agent-container.toml must stay valid");
        let s = &c.services[0];
        assert_eq!(
            s.backend,
            Backend::Container(ContainerSettings {
                socket: PathBuf::from("/var/run/docker.sock"),
                container_name: "demo".into(),
                ports: vec![PortMap {
                    host: 18081,
                    container: 8080
                }],
                mounts: vec!["/srv/demo:/data:ro".into()],
                restart_policy: RestartPolicy::OnFailure,
                command: Some(vec!["/demo-svc".into(), "--port".into(), "8080".into()]),
            })
        );
        assert_eq!(s.env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(s.stop_timeout, Duration::from_secs(5));

        // Defaults: the docker socket, the service's name, no ports or mounts, policy "no".
        let minimal = GOOD
            .replace("\"process\"", "\"container\"")
            .replace("args = [\"--port\", \"18081\"]\n", "")
            .replace("restart_delay = \"1s\"\n", "");
        let c = Config::parse(&minimal).expect("minimal container service");
        assert_eq!(
            c.services[0].backend,
            Backend::Container(ContainerSettings {
                socket: PathBuf::from(DEFAULT_CONTAINER_SOCKET),
                container_name: "demo".into(),
                ports: vec![],
                mounts: vec![],
                restart_policy: RestartPolicy::No,
                command: None,
            })
        );

        let with = |extra: &str| minimal.replace("binary = ", &format!("{extra}\nbinary = "));
        let cases: Vec<(String, &str, &str)> = vec![
            (
                with("ports = [\"18081\"]"),
                "`services[0].ports[0]`",
                "host:container",
            ),
            (
                with("ports = [\"a:80\"]"),
                "`services[0].ports[0]`",
                "host:container",
            ),
            (
                with("mounts = [\"data:/data\"]"),
                "`services[0].mounts[0]`",
                "absolute",
            ),
            (
                with("mounts = [\"/a:/b:rx\"]"),
                "`services[0].mounts[0]`",
                "ro|rw",
            ),
            (
                with("restart_policy = \"sometimes\""),
                "`services[0].restart_policy`",
                "not a restart policy",
            ),
            (with("command = []"), "`services[0].command`", "is empty"),
            (
                with("socket = \"docker.sock\""),
                "`services[0].socket`",
                "absolute",
            ),
            (
                with("container_name = \"a/b\""),
                "`services[0].container_name`",
                "container name",
            ),
            (
                with("unit = \"demo.service\""),
                "`services[0].unit`",
                "only for backend = \"systemd\"",
            ),
            (
                GOOD.replace("binary = ", "ports = [\"1:2\"]\nbinary = "),
                "`services[0].ports`",
                "does not apply to the process backend",
            ),
        ];
        for (text, field, says) in cases {
            let err = Config::parse(&text).expect_err(field).to_string();
            assert!(err.contains(field), "error {err:?} should name {field}");
            assert!(err.contains(says), "error {err:?} should say {says:?}");
        }
    }

    #[test]
    fn example_systemd_config_and_unit_in_deploy_agree() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let c = Config::load(&deploy.join("agent-systemd.toml"))
            .expect("deploy/agent-systemd.toml must stay valid");
        let s = &c.services[0];
        let Backend::Systemd(target) = &s.backend else {
            panic!("the example is for the systemd backend: {:?}", s.backend);
        };
        assert_eq!(target.unit, "demo.service");
        assert!(!s.hooks.pre_stop.is_empty() && !s.hooks.on_rollback.is_empty());
        // The example unit runs the release through the `current` link the agent swaps.
        let unit = std::fs::read_to_string(deploy.join("demo-systemd.service")).expect("unit");
        let current = c.state_dir.join("services").join(&s.name).join("current");
        let exec = format!("ExecStart={}/{}", current.display(), s.binary);
        assert!(
            unit.lines().any(|l| l.starts_with(&exec)),
            "demo-systemd.service should have a line starting with {exec}"
        );
    }

    #[test]
    fn relative_state_dir_becomes_absolute() {
        let c =
            Config::parse(&GOOD.replace("/var/lib/rollgate-agent", "state")).expect("valid config");
        assert!(c.state_dir.is_absolute(), "{}", c.state_dir.display());
        assert!(c.state_dir.ends_with("state"));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Config::load(Path::new("/nonexistent/agent.toml")).expect_err("no file");
        assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
    }
}

#[cfg(test)]
mod signing_tests {
    use super::*;
    use rollgate_proto::signing::SigningKey;

    const BASE: &str = r#"
host_id = "web-1"
coordinator = "http://127.0.0.1:7443"
state_dir = "/var/lib/rollgate-agent"
[[services]]
name = "demo"
backend = "process"
binary = "demo-svc"
SERVICE_KEYS
"#;

    /// A config with `top` (top-level keys, then tables) and `service_keys` in the service.
    fn text(top: &str, service_keys: &str) -> String {
        let (keys, tables) = top.split_at(top.find('[').unwrap_or(top.len()));
        format!(
            "{keys}\n{}\n{tables}\n",
            BASE.replace("SERVICE_KEYS", service_keys)
        )
    }

    #[test]
    fn keys_load_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate().expect("key");
        let pub_path = dir.path().join("k.pub");
        std::fs::write(&pub_path, key.public().to_pem()).expect("write");
        let plain = Config::parse(&text("", "")).expect("valid");
        assert_eq!(plain.max_artifact_bytes, DEFAULT_MAX_ARTIFACT_BYTES);
        assert_eq!(plain.signing, SigningConfig::default());
        assert_eq!(plain.services[0].signing_keys, None);

        let keys = format!("[\"{}\"]", pub_path.display());
        let c = Config::parse(&text(
            &format!(
                "max_artifact_bytes = 1000\n[signing]\nrequired = true\nkeys = {keys}\n\
                 fleet = \"prod\"\nenv = \"staging\""
            ),
            &format!("signing_keys = {keys}"),
        ))
        .expect("valid");
        assert_eq!(c.max_artifact_bytes, 1000);
        assert!(c.signing.required);
        assert_eq!(c.signing.keys, vec![key.public().clone()]);
        assert_eq!(c.services[0].signing_keys, Some(vec![key.public().clone()]));
        assert_eq!(
            c.signing.scope,
            rollgate_proto::signing::Scope::new("prod", "staging")
        );
        assert_eq!(c.rollback_window, DEFAULT_ROLLBACK_WINDOW);
        assert_eq!(c.sources, SourceRules::default());
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate().expect("key");
        let private = dir.path().join("k.key");
        std::fs::write(&private, key.to_pem()).expect("write");
        let public = dir.path().join("k.pub");
        std::fs::write(&public, key.public().to_pem()).expect("write");
        let cases = [
            (
                text("[signing]\nrequired = true", ""),
                "`signing.keys`",
                "no release could ever be installed",
            ),
            (
                text("[signing]\nkeys = [\"/nonexistent/k.pub\"]", ""),
                "`signing.keys[0]`",
                "/nonexistent/k.pub",
            ),
            (
                text(
                    &format!("[signing]\nkeys = [\"{}\"]", private.display()),
                    "",
                ),
                "`signing.keys[0]`",
                "BEGIN PUBLIC KEY",
            ),
            (
                text("", "signing_keys = []"),
                "`services[0].signing_keys`",
                "is empty",
            ),
            (
                text("max_artifact_bytes = 0", ""),
                "`max_artifact_bytes`",
                "more than 0",
            ),
            (
                text("[signing]\nrequire = true", ""),
                "require",
                "unknown field",
            ),
            (
                text(&format!("[signing]\nkeys = [\"{}\"]", public.display()), ""),
                "`signing.fleet`",
                "set fleet = \"FLEET\"",
            ),
            (
                text("rollback_window = 0", ""),
                "`rollback_window`",
                "must be 1 to",
            ),
            (
                format!(
                    "allowed_sources = [\"https://x.example\"]\n{}",
                    BASE.replace("SERVICE_KEYS", "")
                ),
                "`allowed_sources[0]`",
                "ending in",
            ),
        ];
        for (text, field, fix) in cases {
            let err = Config::parse(&text).expect_err(field).to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
            assert!(err.contains(fix), "{err:?} should say {fix:?}");
        }
    }
}
