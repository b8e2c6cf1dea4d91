//! The agent's config file (TOML): this host, its coordinator replicas, how each service runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_proto::names;
use serde::Deserialize;
use thiserror::Error;

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
/// coordinator = "http://127.0.0.1:7443"   # a coordinator replica, or instead:
/// # coordinators = ["http://a:7443", "http://b:7443"]   # several, tried in turn
/// state_dir = "/var/lib/rollgate-agent"
/// heartbeat_interval = "1s"               # until the coordinator's welcome says otherwise
/// [labels]
/// site = "a"
/// [[services]]
/// name = "demo"
/// backend = "process"                     # the only backend so far
/// binary = "demo-svc"                     # file name of the artifact in each release dir
/// args = ["--port", "18081"]
/// env = { GREETING = "hi" }
/// stop_timeout = "5s"                     # SIGTERM, then SIGKILL after this (default 10s)
/// restart_delay = "1s"                    # restart after an unexpected exit (default 1s)
/// [[services.probes]]
/// kind = "http"                           # http | tcp | exec
/// url = "http://127.0.0.1:18081/health"
/// expect_status = 200                     # default: any 2xx
/// interval = "200ms"                      # default 1s
/// timeout = "1s"                          # default 1s
/// [[services.probes]]
/// kind = "tcp"
/// address = "127.0.0.1:18081"
/// [[services.probes]]
/// kind = "exec"
/// command = ["/bin/sh", "-c", "true"]
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
}

/// How one service runs on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Service name, as rollouts name it.
    pub name: String,
    /// How the service is run (only the process backend exists for now).
    pub backend: Backend,
    /// File name the artifact is stored as inside each release directory.
    pub binary: String,
    /// Arguments passed to the binary.
    pub args: Vec<String>,
    /// Extra environment for the binary (on top of the agent's own).
    pub env: BTreeMap<String, String>,
    /// Grace between SIGTERM and SIGKILL when stopping the service.
    pub stop_timeout: Duration,
    /// Pause before restarting a service that exited on its own.
    pub restart_delay: Duration,
    /// Health probes; the service is healthy when all of them pass.
    pub probes: Vec<ProbeConfig>,
}

/// How a service is run on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The agent starts and supervises the process itself (its lifetime is tied to the agent).
    Process,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    backend: String,
    binary: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    stop_timeout: Duration,
    #[serde(default = "default_restart_delay", with = "humantime_serde")]
    restart_delay: Duration,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    kind: String,
    url: Option<String>,
    expect_status: Option<u16>,
    address: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn default_heartbeat() -> Duration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_stop_timeout() -> Duration {
    DEFAULT_STOP_TIMEOUT
}
fn default_restart_delay() -> Duration {
    DEFAULT_RESTART_DELAY
}
fn default_probe_interval() -> Duration {
    DEFAULT_PROBE_INTERVAL
}
fn default_probe_timeout() -> Duration {
    DEFAULT_PROBE_TIMEOUT
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
        Ok(Config {
            host_id: self.host_id,
            coordinators,
            state_dir,
            heartbeat_interval: self.heartbeat_interval,
            labels: self.labels,
            services,
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
                "is missing; set `coordinator = \"http://HOST:PORT\"`, or `coordinators = \
                 [\"http://HOST:PORT\", ...]` to list several replicas",
            ))
        }
        (Some(url), None) => vec![("coordinator".to_string(), url)],
        (None, Some(urls)) if urls.is_empty() => {
            return Err(field_err(
                "coordinators",
                "lists no URL; name at least one replica, e.g. [\"http://127.0.0.1:7443\"]",
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
    if let Some(rest) = url.strip_prefix("https://") {
        return Err(field_err(
            field,
            format!(
                "TLS is not built into this agent yet; use \"http://{rest}\" on a trusted \
                 network"
            ),
        ));
    }
    let Some(authority) = url.strip_prefix("http://") else {
        return Err(field_err(
            field,
            format!("{url:?} is not a coordinator URL; write it as \"http://HOST:PORT\""),
        ));
    };
    if authority.trim_end_matches('/').is_empty()
        || tonic::transport::Endpoint::from_shared(url.to_string()).is_err()
    {
        return Err(field_err(
            field,
            format!("{url:?} is not a valid URL; write it as \"http://HOST:PORT\""),
        ));
    }
    Ok(())
}

impl RawService {
    fn validate(self, i: usize) -> Result<ServiceConfig, ConfigError> {
        let at = |f: &str| format!("services[{i}].{f}");
        names::check("service name", &self.name)
            .map_err(|e| field_err(at("name"), e.to_string()))?;
        let backend = match self.backend.as_str() {
            "process" => Backend::Process,
            "systemd" | "container" | "docker" | "podman" => {
                return Err(field_err(
                    at("backend"),
                    format!(
                        "the {:?} backend is not available in this agent yet; use \"process\" \
                         (the agent supervises the service itself)",
                        self.backend
                    ),
                ))
            }
            other => {
                return Err(field_err(
                    at("backend"),
                    format!("{other:?} is not a backend; use \"process\""),
                ))
            }
        };
        names::check("binary file name", &self.binary)
            .map_err(|e| field_err(at("binary"), e.to_string()))?;
        if self.stop_timeout.is_zero() {
            return Err(field_err(
                at("stop_timeout"),
                "must be longer than 0s so the service can shut down cleanly, e.g. \"5s\"",
            ));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(field_err(
                    at("env"),
                    format!("{k:?} is not a valid environment variable name"),
                ));
            }
        }
        let probes = self
            .probes
            .into_iter()
            .enumerate()
            .map(|(j, p)| p.validate(&format!("services[{i}].probes[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServiceConfig {
            name: self.name,
            backend,
            binary: self.binary,
            args: self.args,
            env: self.env,
            stop_timeout: self.stop_timeout,
            restart_delay: self.restart_delay,
            probes,
        })
    }
}

impl RawProbe {
    fn validate(self, at: &str) -> Result<ProbeConfig, ConfigError> {
        let f = |name: &str| format!("{at}.{name}");
        // A field that belongs to another kind is a mistake worth naming (e.g. `url` on a tcp
        // probe), not something to ignore silently.
        let stray = |name: &str, set: bool, kind: &str| -> Result<(), ConfigError> {
            if set {
                Err(field_err(
                    f(name),
                    format!("does not apply to a {kind:?} probe; remove it"),
                ))
            } else {
                Ok(())
            }
        };
        let check = match self.kind.as_str() {
            "http" => {
                stray("address", self.address.is_some(), "http")?;
                stray("command", self.command.is_some(), "http")?;
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
                ProbeCheck::Http {
                    url,
                    expect_status: self.expect_status,
                }
            }
            "tcp" => {
                stray("url", self.url.is_some(), "tcp")?;
                stray("expect_status", self.expect_status.is_some(), "tcp")?;
                stray("command", self.command.is_some(), "tcp")?;
                let Some(address) = self.address else {
                    return Err(field_err(
                        f("address"),
                        "a tcp probe needs an address, e.g. \"127.0.0.1:8080\"",
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
                ProbeCheck::Tcp { address }
            }
            "exec" => {
                stray("url", self.url.is_some(), "exec")?;
                stray("expect_status", self.expect_status.is_some(), "exec")?;
                stray("address", self.address.is_some(), "exec")?;
                let command = self.command.unwrap_or_default();
                if command.first().is_none_or(|c| c.is_empty()) {
                    return Err(field_err(
                        f("command"),
                        "an exec probe needs a command, e.g. [\"/bin/sh\", \"-c\", \"test -e /run/ok\"]",
                    ));
                }
                ProbeCheck::Exec { command }
            }
            other => {
                return Err(field_err(
                    f("kind"),
                    format!("{other:?} is not a probe kind; use \"http\", \"tcp\" or \"exec\""),
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
        Ok(ProbeConfig {
            check,
            interval: self.interval,
            timeout: self.timeout,
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
                expect_status: Some(200)
            }
        );
        assert_eq!(s.probes[1].interval, DEFAULT_PROBE_INTERVAL);
        assert_eq!(s.probe_interval(), Duration::from_millis(200));
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let cases: Vec<(String, &str, &str)> = vec![
            (GOOD.replace("\"web-1\"", "\"web/1\""), "`host_id`", "not valid"),
            (GOOD.replace("http://127.0.0.1:7443", "127.0.0.1:7443"), "`coordinator`", "http://HOST:PORT"),
            (GOOD.replace("http://127.0.0.1:7443", "https://c:7443"), "`coordinator`", "TLS"),
            (GOOD.replace("\"process\"", "\"systemd\""), "`services[0].backend`", "use \"process\""),
            (GOOD.replace("\"process\"", "\"foo\""), "`services[0].backend`", "not a backend"),
            (GOOD.replace("\"demo-svc\"", "\"bin/demo\""), "`services[0].binary`", "not valid"),
            (GOOD.replace("\"5s\"", "\"0s\""), "`services[0].stop_timeout`", "longer than 0s"),
            (GOOD.replace("kind = \"tcp\"", "kind = \"udp\""), "`services[0].probes[1].kind`", "\"http\", \"tcp\" or \"exec\""),
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
                &["http://HOST:PORT"],
            ),
            (
                GOOD.replace(line, "coordinators = [\"https://a:7443\"]"),
                "`coordinators[0]`",
                &["TLS"],
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
        let c = Config::load(&path).expect("deploy/agent.toml must stay valid");
        assert_eq!(c.coordinators.len(), 1);
        // The commented-out replica list there must be valid too once uncommented (and the
        // single `coordinator` line dropped).
        let text = std::fs::read_to_string(&path).expect("read");
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
