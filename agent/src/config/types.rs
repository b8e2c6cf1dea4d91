//! The validated agent config: what the rest of the agent reads. Built only by
//! [`Config::load`] and [`Config::parse`] (in `validate.rs`), from the file as written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rollgate_proto::signing::PublicKey;

use super::release_rules::SourceRules;
use super::run_as::RunAs;

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
/// # source_ca_file = "/etc/rollgate/artifacts-ca.pem"  # https sources: PEM CA cert(s) trusted
///                                         # besides the built-in roots
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
/// stop_with_agent = false                 # process: true stops the service when the agent
///                                         # stops (SIGTERM, systemctl stop, agent upgrade);
///                                         # default: it keeps running and the next agent
///                                         # adopts it
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
    /// `[metrics]`: where to serve Prometheus metrics (off by default).
    pub metrics: rollgate_proto::metrics::MetricsConfig,
    /// `[self_upgrade]`: this agent can be upgraded by a rollout of the service
    /// `rollgate-agent` (off without the table).
    pub self_upgrade: Option<SelfUpgradeConfig>,
}

/// The service name under which a host's agent is upgraded by a rollout.
pub const AGENT_SERVICE: &str = "rollgate-agent";
/// How long a new agent has to connect to a coordinator before the old one is put back.
pub const DEFAULT_CONFIRM_DEADLINE: Duration = Duration::from_secs(60);

/// `[self_upgrade]`: upgrading the agent through a rollout of [`AGENT_SERVICE`].
#[derive(Debug, Clone, PartialEq)]
pub struct SelfUpgradeConfig {
    /// The file the supervisor starts the agent from (systemd's `ExecStart=`); replaced only
    /// once a new agent has proven itself. Default: this agent's own executable.
    pub binary: PathBuf,
    /// How long a new agent has to connect to a coordinator; after that it puts the old one
    /// back.
    pub confirm_deadline: Duration,
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
    /// Stop the service when the agent stops (process backend, `stop_with_agent`). Default
    /// false: it keeps running and the next agent adopts it without a restart.
    pub stop_with_agent: bool,
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
    /// The agent starts and supervises the process itself; it outlives the agent (adopted by
    /// the next one) unless `stop_with_agent`.
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
    /// Registry credentials for releases that name an image (Docker's config.json `auths`
    /// format), read at each pull; none: pulls are anonymous.
    pub registry_auth: Option<PathBuf>,
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
