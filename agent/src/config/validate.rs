//! The validation of the config file as written into [`Config`]: every field is checked
//! with an error that names it.

use super::BuildFeature;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_proto::names;
use rollgate_proto::signing::PublicKey;

use super::checks::{check_binary, check_bus, check_unit_name, parse_manager, stray};
use super::error::{field_err, ConfigError};
use super::raw::{RawConfig, RawSelfUpgrade, RawService};
use super::types::{
    ArtifactFormat, Backend, Config, Hooks, SelfUpgradeConfig, ServiceConfig, SigningConfig,
    SystemdTarget, UnpackLimits, AGENT_SERVICE, DEFAULT_CONFIRM_DEADLINE,
    DEFAULT_MAX_ARTIFACT_BYTES, DEFAULT_RESTART_DELAY, DEFAULT_STOP_TIMEOUT,
    DEFAULT_UNPACK_MAX_BYTES, DEFAULT_UNPACK_MAX_ENTRIES,
};
use super::{release_rules, run_as};

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
        let sources = release_rules::source_rules(
            self.allowed_sources,
            self.file_source_dirs,
            self.source_ca_file,
        )?;
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
        let self_upgrade = self_upgrade(self.self_upgrade, &services)?;
        check_timers(self.heartbeat_interval, self_upgrade.as_ref(), &services)?;
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
            metrics: self.metrics,
            self_upgrade,
        })
    }
}

/// The longest duration a setting may have: the agent arms timers with them (now + duration),
/// and a duration past what a clock can add (found while writing the agent_config fuzz target:
/// `heartbeat_interval = "400000000000years"`) panicked it; nothing it waits for takes a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Every duration of the config within [`MAX_DURATION`]; the error names the field.
fn check_timers(
    heartbeat: Duration,
    self_upgrade: Option<&SelfUpgradeConfig>,
    services: &[ServiceConfig],
) -> Result<(), ConfigError> {
    let mut all = vec![("heartbeat_interval".to_string(), heartbeat)];
    if let Some(u) = self_upgrade {
        all.push(("self_upgrade.confirm_deadline".into(), u.confirm_deadline));
    }
    for (i, s) in services.iter().enumerate() {
        let at = |f: &str| format!("services[{i}].{f}");
        all.push((at("stop_timeout"), s.stop_timeout));
        all.push((at("restart_delay"), s.restart_delay));
        all.push((at("hook_timeout"), s.hook_timeout));
        all.push((at("watch_after_commit"), s.watch_after_commit));
        for (j, p) in s.probes.iter().enumerate() {
            all.push((at(&format!("probes[{j}].interval")), p.interval));
            all.push((at(&format!("probes[{j}].timeout")), p.timeout));
        }
    }
    match all.into_iter().find(|(_, d)| *d > MAX_DURATION) {
        Some((field, d)) => Err(field_err(
            field,
            format!(
                "is {}, longer than the {} a setting may be; give a shorter duration, e.g. \"30s\"",
                rollgate_proto::spec::human(d),
                rollgate_proto::spec::human(MAX_DURATION)
            ),
        )),
        None => Ok(()),
    }
}

/// `[self_upgrade]`: an absolute binary path (default: this executable), no service of the
/// same name.
fn self_upgrade(
    raw: Option<RawSelfUpgrade>,
    services: &[ServiceConfig],
) -> Result<Option<SelfUpgradeConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if services.iter().any(|s| s.name == AGENT_SERVICE) {
        return Err(field_err(
            "self_upgrade",
            format!(
                "a [[services]] table is named {AGENT_SERVICE:?}, the name under which \
                 [self_upgrade] upgrades the agent itself; rename the service"
            ),
        ));
    }
    let binary = match raw.binary {
        Some(b) if b.is_absolute() => b,
        Some(b) => {
            return Err(field_err(
                "self_upgrade.binary",
                format!(
                    "{} is not an absolute path; give the path the supervisor starts the \
                     agent from (systemd's ExecStart=), e.g. /usr/bin/rollgate-agent",
                    b.display()
                ),
            ))
        }
        None => std::env::current_exe().map_err(|e| {
            field_err(
                "self_upgrade.binary",
                format!("is not set and this agent's own path cannot be read ({e}); set it"),
            )
        })?,
    };
    let confirm_deadline = raw.confirm_deadline.unwrap_or(DEFAULT_CONFIRM_DEADLINE);
    if confirm_deadline < std::time::Duration::from_secs(1) {
        return Err(field_err(
            "self_upgrade.confirm_deadline",
            "is under 1s; a new agent needs time to start and connect (default 60s)",
        ));
    }
    Ok(Some(SelfUpgradeConfig {
        binary,
        confirm_deadline,
    }))
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
                super::require_built(
                    &at("backend"),
                    BuildFeature::Systemd,
                    "the systemd backend",
                    "use backend = \"process\"",
                )?;
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
            "container" => {
                super::require_built(
                    &at("backend"),
                    BuildFeature::Container,
                    "the container backend",
                    "use backend = \"process\"",
                )?;
                Backend::Container(self.container_settings(&at)?)
            }
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
