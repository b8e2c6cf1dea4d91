//! The config file as written (TOML), and its validation into [`Config`]: every field is
//! checked with an error that names it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use rollgate_proto::names;
use rollgate_proto::signing::PublicKey;
use serde::Deserialize;

use super::probe::RawProbe;
use super::*;

// The file format. Kept apart from the validated types so that every field can be checked
// with an error that names it, rather than serde's generic messages.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
pub(super) struct RawSigning {
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
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
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
pub(super) fn stray(field: String, set: bool, owner: &str, fix: &str) -> Result<(), ConfigError> {
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
pub(super) fn check_unit_name(field: String, unit: &str) -> Result<(), ConfigError> {
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

pub(super) fn parse_manager(field: String, manager: Option<&str>) -> Result<Manager, ConfigError> {
    match manager {
        None | Some("system") => Ok(Manager::System),
        Some("user") => Ok(Manager::User),
        Some(other) => Err(field_err(
            field,
            format!("{other:?} is not a systemd manager; use \"system\" or \"user\""),
        )),
    }
}

pub(super) fn check_bus(field: String, bus: Option<String>) -> Result<Option<String>, ConfigError> {
    match bus {
        Some(b) if !b.contains(':') || b.starts_with(':') => Err(field_err(
            field,
            format!("{b:?} is not a D-Bus address; write e.g. \"unix:path=/run/user/1000/bus\""),
        )),
        other => Ok(other),
    }
}

/// `binary`: a relative path of safe names (no `..`, no leading `/` or `.`).
pub(super) fn check_binary(field: String, binary: &str) -> Result<(), ConfigError> {
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
        stray(
            at("stop_with_agent"),
            self.stop_with_agent.is_some() && self.backend != "process",
            &format!("backend = {:?}", self.backend),
            "it is only for backend = \"process\" (systemd units and containers always outlive the agent); remove it",
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
            stop_with_agent: self.stop_with_agent.unwrap_or(false),
            probes,
            hooks,
            hook_timeout: self.hook_timeout,
            watch_after_commit: self.watch_after_commit,
            signing_keys,
            run_as,
        })
    }
}
