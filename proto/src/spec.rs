//! The rollout spec: what release goes to which hosts and how fast. Operators write it as TOML
//! (see `deploy/rollout.toml`); the coordinator validates it and stores it, immutable, in etcd.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names;

/// Default `min_healthy_time`: how long a host must stay healthy on the new release.
pub const DEFAULT_MIN_HEALTHY_TIME: Duration = Duration::from_secs(5);
/// Default `healthy_deadline`: how long a host may take to become healthy for `min_healthy_time`.
pub const DEFAULT_HEALTHY_DEADLINE: Duration = Duration::from_secs(120);

/// A spec that cannot be used, naming the field and the fix.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The text is not valid TOML or has unknown/mistyped fields.
    #[error("rollout spec is not valid TOML for rollgate: {0}")]
    Toml(String),
    /// A field has a value rollgate cannot use.
    #[error("rollout spec field `{field}`: {problem}")]
    Field {
        /// Dotted path of the field, e.g. `strategy.max_unavailable`.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

fn field_err(field: &'static str, problem: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        problem: problem.into(),
    }
}

/// A complete rollout spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The service to upgrade, as named in the agents' configs.
    pub service: String,
    /// The release to roll out.
    pub release: ReleaseSpec,
    /// Which hosts to upgrade.
    #[serde(default)]
    pub targets: TargetSpec,
    /// How fast, and what to do on failure.
    #[serde(default)]
    pub strategy: Strategy,
}

/// One version of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// Version string, e.g. `2.0.1`.
    pub version: String,
    /// `store:` (the coordinator's artifact store), `http(s)://...` or `file:///abs/path`.
    /// May be omitted when `file` is given: the CLI pushes the file and fills this in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Lowercase hex sha256 of the artifact.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Exact size of the artifact in bytes.
    #[serde(default)]
    pub size: u64,
    /// A file on the operator's machine; `rollgate rollout start` pushes it to the coordinator's
    /// store and replaces it with `source = "store:"`, `sha256` and `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Which hosts a rollout targets. With neither field set: every host known to the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Explicit host ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts whose labels include all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// How fast a rollout goes and when it stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Strategy {
    /// Most targets that may be unavailable at once: a count (`3`) or a percent of the targets
    /// (`"25%"`, rounded down, never below 1).
    pub max_unavailable: Budget,
    /// How many hosts may fail before the rollout halts; 0 halts at the first failure.
    pub max_failures: u32,
    /// How long a host must pass its health checks continuously on the new release.
    #[serde(with = "humantime_serde")]
    pub min_healthy_time: Duration,
    /// How long a host may take, from restart, to be healthy for `min_healthy_time`.
    #[serde(with = "humantime_serde")]
    pub healthy_deadline: Duration,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            max_unavailable: Budget::Count(1),
            max_failures: 0,
            min_healthy_time: DEFAULT_MIN_HEALTHY_TIME,
            healthy_deadline: DEFAULT_HEALTHY_DEADLINE,
        }
    }
}

/// A budget written as a count or a percent of the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// An absolute number of hosts.
    Count(u32),
    /// A percent (1..=100) of the targets, rounded down, never below 1.
    Percent(u32),
}

impl Budget {
    /// The number of hosts this budget allows among `targets` hosts.
    pub fn resolve(self, targets: usize) -> u32 {
        let targets = u32::try_from(targets).unwrap_or(u32::MAX);
        match self {
            Budget::Count(n) => n,
            Budget::Percent(p) => {
                let n = (u64::from(targets) * u64::from(p) / 100) as u32;
                n.max(1)
            }
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Count(n) => write!(f, "{n}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Budget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Budget::Count(n) => s.serialize_u32(*n),
            Budget::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "expected a positive count such as 3 or a percent such as \"25%\"",
            )
        };
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 1 => Ok(Budget::Count(u32::try_from(n).map_err(|_| bad())?)),
            Raw::Int(_) => Err(bad()),
            Raw::Str(s) => {
                let t = s.trim();
                if let Some(p) = t.strip_suffix('%') {
                    let p: u32 = p.trim().parse().map_err(|_| bad())?;
                    if (1..=100).contains(&p) {
                        return Ok(Budget::Percent(p));
                    }
                    return Err(bad());
                }
                match t.parse::<u32>() {
                    Ok(n) if n >= 1 => Ok(Budget::Count(n)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl RolloutSpec {
    /// Parses and validates a spec. `file` is accepted (the CLI replaces it before sending).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let spec: RolloutSpec = toml::from_str(text).map_err(|e| SpecError::Toml(e.to_string()))?;
        spec.validate_shape()?;
        Ok(spec)
    }

    /// Parses a spec and requires the release to be fully resolved (source, sha256, size), as
    /// the coordinator does before storing it.
    pub fn parse_resolved(text: &str) -> Result<Self, SpecError> {
        let spec = Self::parse(text)?;
        spec.validate_resolved()?;
        Ok(spec)
    }

    fn validate_shape(&self) -> Result<(), SpecError> {
        names::check("service name", &self.service)
            .map_err(|e| field_err("service", e.to_string()))?;
        names::check("version", &self.release.version)
            .map_err(|e| field_err("release.version", e.to_string()))?;
        for h in &self.targets.hosts {
            names::check("host id", h).map_err(|e| field_err("targets.hosts", e.to_string()))?;
        }
        let s = &self.strategy;
        if s.min_healthy_time > s.healthy_deadline {
            return Err(field_err(
                "strategy.min_healthy_time",
                format!(
                    "{} is longer than strategy.healthy_deadline ({}); no host could ever pass. \
                     Raise healthy_deadline or lower min_healthy_time",
                    humantime::format_duration(s.min_healthy_time),
                    humantime::format_duration(s.healthy_deadline)
                ),
            ));
        }
        if s.healthy_deadline.is_zero() {
            return Err(field_err(
                "strategy.healthy_deadline",
                "must be longer than 0s, e.g. \"60s\"",
            ));
        }
        if let Budget::Count(0) = s.max_unavailable {
            return Err(field_err(
                "strategy.max_unavailable",
                "must be at least 1, or nothing could ever be upgraded",
            ));
        }
        if self.release.file.is_some() && !self.release.source.is_empty() {
            return Err(field_err(
                "release.file",
                "give either `file` (pushed by the CLI) or `source`, not both",
            ));
        }
        Ok(())
    }

    fn validate_resolved(&self) -> Result<(), SpecError> {
        let r = &self.release;
        if r.file.is_some() {
            return Err(field_err(
                "release.file",
                "the coordinator cannot read files on your machine; use `rollgate rollout start`, \
                 which pushes the file, or push it with `rollgate artifact push` and set \
                 source = \"store:\", sha256 and size",
            ));
        }
        let src_ok = r.source == "store:"
            || r.source.starts_with("http://")
            || r.source.starts_with("https://")
            || r.source.starts_with("file:///");
        if !src_ok {
            return Err(field_err(
                "release.source",
                format!(
                    "{:?} is not a source rollgate knows; use \"store:\", \"https://...\", \
                     \"http://...\" or \"file:///absolute/path\"",
                    r.source
                ),
            ));
        }
        names::check_sha256(&r.sha256).map_err(|e| field_err("release.sha256", e.to_string()))?;
        if r.size == 0 {
            return Err(field_err(
                "release.size",
                "must be the artifact's exact size in bytes (not 0)",
            ));
        }
        Ok(())
    }
}

/// Formats a duration for people ("1m 30s").
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

mod humantime {
    pub use humantime_serde::re::humantime::*;
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
service = "demo"
[release]
version = "2.0.0"
source = "store:"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
size = 10
[strategy]
max_unavailable = "30%"
min_healthy_time = "2s"
"#;

    #[test]
    fn parses_good_spec() {
        let s = RolloutSpec::parse_resolved(GOOD).expect("valid");
        assert_eq!(s.strategy.max_unavailable, Budget::Percent(30));
        assert_eq!(s.strategy.min_healthy_time, Duration::from_secs(2));
        assert_eq!(s.strategy.healthy_deadline, DEFAULT_HEALTHY_DEADLINE);
        assert_eq!(s.strategy.max_failures, 0);
    }

    #[test]
    fn budget_resolution() {
        let table = [
            (Budget::Count(3), 10, 3),
            (Budget::Count(3), 2, 3),
            (Budget::Percent(39), 10, 3),
            (Budget::Percent(10), 1, 1),
            (Budget::Percent(50), 9, 4),
            (Budget::Percent(100), 7, 7),
            (Budget::Percent(1), 0, 1),
        ];
        for (b, n, want) in table {
            assert_eq!(b.resolve(n), want, "{b} of {n}");
        }
    }

    #[test]
    fn budget_forms() {
        let parse = |v: &str| {
            toml::from_str::<Strategy>(&format!("max_unavailable = {v}")).map(|s| s.max_unavailable)
        };
        assert_eq!(parse("2").ok(), Some(Budget::Count(2)));
        assert_eq!(parse("\"2\"").ok(), Some(Budget::Count(2)));
        assert_eq!(parse("\"25%\"").ok(), Some(Budget::Percent(25)));
        for bad in ["0", "-1", "\"0%\"", "\"101%\"", "\"x\"", "\"\""] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("\"demo\"", "\"../x\""), "`service`"),
            (GOOD.replace("store:", "ftp://x"), "`release.source`"),
            (GOOD.replace("size = 10", "size = 0"), "`release.size`"),
            (
                GOOD.replace("\"2s\"", "\"10m\""),
                "`strategy.min_healthy_time`",
            ),
            (GOOD.replace("\"30%\"", "0"), "max_unavailable"),
            (GOOD.replace("aaaa", "AAAA"), "`release.sha256`"),
            (format!("{GOOD}\nbogus = 1\n"), "bogus"),
        ];
        for (text, want) in cases {
            let err = RolloutSpec::parse_resolved(&text)
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "error {err:?} should name {want}");
        }
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn example_spec_in_deploy_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rollout.toml");
        let text = std::fs::read_to_string(path).expect("deploy/rollout.toml exists");
        let spec = RolloutSpec::parse(&text).expect("deploy/rollout.toml must stay valid");
        assert_eq!(spec.strategy.max_unavailable, Budget::Percent(25));
        assert!(spec.release.file.is_some());
    }
}
