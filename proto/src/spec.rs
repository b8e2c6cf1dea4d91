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
    /// A container image in a registry (`registry.example:5000/team/app:1.2` or
    /// `…@sha256:…`), instead of `file`: `rollgate rollout start` pins a tag to its digest and
    /// pushes the pinned reference as the artifact (see [`crate::image_ref`]); the coordinator
    /// stores it pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The publisher's signature (`[release.signature]`); agents that pin signing keys refuse
    /// the release without a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureSpec>,
    /// A signature file from `rollgate release sign` on the operator's machine; the CLI reads
    /// it, checks that it signs this release, and replaces it with `signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_file: Option<String>,
}

/// A release signature in a spec: see [`crate::signing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {
    /// Which key signed: 16 hex digits (see [`crate::signing::PublicKey::key_id`]).
    pub key_id: String,
    /// The ed25519 signature, base64.
    pub signature: String,
    /// When the signature stops being accepted (RFC 3339, e.g. `"2027-01-01T00:00:00Z"`).
    #[serde(with = "humantime_serde")]
    pub expires: std::time::SystemTime,
}

impl SignatureSpec {
    /// Checks the form (not the validity) of the signature; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let hex_id = self.key_id.len() == crate::signing::KEY_ID_LEN
            && self
                .key_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_id {
            return Err(format!(
                "key_id {:?} is not a key id (16 lowercase hex digits, as `rollgate release \
                 sign` prints)",
                self.key_id
            ));
        }
        self.to_pb().map(|_| ())
    }

    /// The signature as it goes on the wire.
    pub fn to_pb(&self) -> Result<crate::pb::ReleaseSignature, String> {
        use base64::Engine as _;
        let bytes = crate::signing::b64()
            .decode(self.signature.trim())
            .map_err(|e| format!("signature is not base64 ({e}); copy it from the .sig file"))?;
        if bytes.len() != crate::signing::SIGNATURE_LEN {
            return Err(format!(
                "signature is {} bytes, not the {} of an ed25519 signature; copy it from the \
                 .sig file",
                bytes.len(),
                crate::signing::SIGNATURE_LEN
            ));
        }
        Ok(crate::pb::ReleaseSignature {
            key_id: self.key_id.clone(),
            signature: bytes,
            expires_unix: crate::signing::unix(self.expires),
        })
    }
}

impl ReleaseSpec {
    /// The release as orders carry it (a malformed signature, which validation refuses,
    /// would be sent as none).
    pub fn to_pb(&self) -> crate::pb::Release {
        crate::pb::Release {
            version: self.version.clone(),
            source: self.source.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            signature: self.signature.as_ref().and_then(|s| s.to_pb().ok()),
        }
    }
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
    /// A host label (e.g. `site`) that splits the targets into groups with a budget each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// Most targets of one group unavailable at once: a count or a percent of the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable_per_group: Option<Budget>,
    /// How many targets (count or percent) form the canary wave, upgraded first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Budget>,
    /// What opens the gate after the canary: `"manual"` (`rollgate rollout promote`) or a bake
    /// time such as `"10m"` (the canary must stay done and healthy that long).
    pub canary_gate: Gate,
    /// Later waves as cumulative counts or percents of the targets, e.g. `["25%", "50%"]`; the
    /// rest form the last wave.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Budget>,
    /// Pause between waves (after the canary gate).
    #[serde(with = "humantime_serde")]
    pub pause_between_waves: Duration,
    /// How many hosts may fail before `on_failure` applies: a count (0 = the first failure
    /// triggers it) or a percent of the targets (rounded down).
    pub max_failures: FailureBudget,
    /// What happens when failures pass `max_failures`.
    pub on_failure: OnFailure,
    /// How long a host must pass its health checks continuously on the new release.
    #[serde(with = "humantime_serde")]
    pub min_healthy_time: Duration,
    /// How long a host may take, from restart, to be healthy for `min_healthy_time`.
    #[serde(with = "humantime_serde")]
    pub healthy_deadline: Duration,
    /// A rollout that makes no progress this long (no host finishing, outside gates and
    /// pauses) fails with the reason it was stuck.
    #[serde(with = "humantime_serde")]
    pub progress_deadline: Duration,
    /// How long a host lost mid-update (its agent or its session gone, no report through any
    /// replica) may stay silent past its `healthy_deadline` before it counts as failed. A host
    /// that comes back within it reports its real result and is no failure (an agent restart,
    /// a reconnect through another replica, a network blip). Left out of the stored record
    /// when it is the default, so a coordinator that predates it reads such a rollout.
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "is_default_lost_grace"
    )]
    pub lost_grace: Duration,
    /// Every target downloads and verifies the release before the first slot is granted.
    pub stage_first: bool,
    /// Every target downloads and verifies the release as soon as the rollout starts, while it
    /// waits for its slot (taking none), so its turn costs only the swap and the restart.
    /// Unlike `stage_first` it holds no grant back. Left out of the stored record when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
}

impl Strategy {
    /// Whether targets are sent the release ahead of their slot (`stage_first` or `prefetch`).
    pub fn stages_ahead(&self) -> bool {
        self.stage_first || self.prefetch
    }
}

/// Default `progress_deadline`.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// Default `lost_grace`: long enough for an agent restart, a replica failover or a network
/// blip; short enough that a host that is gone for good fails before the default
/// `progress_deadline` would call the rollout stalled.
pub const DEFAULT_LOST_GRACE: Duration = Duration::from_secs(300);

fn is_default_lost_grace(d: &Duration) -> bool {
    *d == DEFAULT_LOST_GRACE
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            max_unavailable: Budget::Count(1),
            group_by: None,
            max_unavailable_per_group: None,
            canary: None,
            canary_gate: Gate::Manual,
            waves: Vec::new(),
            pause_between_waves: Duration::ZERO,
            max_failures: FailureBudget::Count(0),
            on_failure: OnFailure::Halt,
            min_healthy_time: DEFAULT_MIN_HEALTHY_TIME,
            healthy_deadline: DEFAULT_HEALTHY_DEADLINE,
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            lost_grace: DEFAULT_LOST_GRACE,
            stage_first: false,
            prefetch: false,
        }
    }
}

/// What opens the canary gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// An operator runs `rollgate rollout promote`.
    Manual,
    /// The canary stays done (and healthy) this long.
    Bake(Duration),
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Manual => f.write_str("manual"),
            Gate::Bake(d) => write!(f, "{}", human(*d)),
        }
    }
}

impl Serialize for Gate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Exact, not `human` (whole milliseconds): the stored spec must read back equal.
        match self {
            Gate::Manual => s.serialize_str("manual"),
            Gate::Bake(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "manual" {
            return Ok(Gate::Manual);
        }
        humantime::parse_duration(s.trim())
            .map(Gate::Bake)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected \"manual\" or a bake time such as \"10m\", got {s:?}"
                ))
            })
    }
}

/// What happens when failures pass `max_failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop for good (phase `failed`); hosts in flight finish or roll back on their own.
    Halt,
    /// Pause; an operator may resume (more failures pause it again) or roll back.
    Pause,
    /// Roll every host that took the release back to the previous one, under the same budget.
    Rollback,
}

impl fmt::Display for OnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnFailure::Halt => "halt",
            OnFailure::Pause => "pause",
            OnFailure::Rollback => "rollback",
        })
    }
}

/// A failure budget: a count (0 allowed) or a percent of the targets (rounded down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureBudget {
    /// Absolute number of failed hosts tolerated.
    Count(u32),
    /// Percent (0..=100) of the targets tolerated, rounded down.
    Percent(u32),
}

impl FailureBudget {
    /// Failed hosts tolerated among `targets` hosts.
    pub fn resolve(self, targets: usize) -> u32 {
        let targets = u32::try_from(targets).unwrap_or(u32::MAX);
        match self {
            FailureBudget::Count(n) => n,
            FailureBudget::Percent(p) => (u64::from(targets) * u64::from(p) / 100) as u32,
        }
    }
}

impl fmt::Display for FailureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureBudget::Count(n) => write!(f, "{n}"),
            FailureBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for FailureBudget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FailureBudget::Count(n) => s.serialize_u32(*n),
            FailureBudget::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for FailureBudget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match parse_amount(d, 0)? {
            Amount::Count(n) => Ok(FailureBudget::Count(n)),
            Amount::Percent(p) => Ok(FailureBudget::Percent(p)),
        }
    }
}

enum Amount {
    Count(u32),
    Percent(u32),
}

/// Parses `3`, `"3"` or `"25%"`; counts and percents below `min` are refused.
fn parse_amount<'de, D: serde::Deserializer<'de>>(d: D, min: u32) -> Result<Amount, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Str(String),
    }
    let bad = || {
        serde::de::Error::custom(format!(
            "expected a count of at least {min} such as 3, or a percent such as \"25%\""
        ))
    };
    let count = |n: i64| -> Result<Amount, D::Error> {
        let n = u32::try_from(n).map_err(|_| bad())?;
        if n >= min {
            Ok(Amount::Count(n))
        } else {
            Err(bad())
        }
    };
    match Raw::deserialize(d)? {
        Raw::Int(n) => count(n),
        Raw::Str(s) => {
            let t = s.trim();
            if let Some(p) = t.strip_suffix('%') {
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                if (min..=100).contains(&p) {
                    return Ok(Amount::Percent(p));
                }
                return Err(bad());
            }
            count(t.parse::<i64>().map_err(|_| bad())?)
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
        match parse_amount(d, 1)? {
            Amount::Count(n) => Ok(Budget::Count(n)),
            Amount::Percent(p) => Ok(Budget::Percent(p)),
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
        if s.group_by.is_none() && s.max_unavailable_per_group.is_some() {
            return Err(field_err(
                "strategy.max_unavailable_per_group",
                "needs strategy.group_by, the host label that forms the groups (e.g. \"site\")",
            ));
        }
        if let Some(label) = &s.group_by {
            if label.is_empty() {
                return Err(field_err(
                    "strategy.group_by",
                    "must name a host label such as \"site\"",
                ));
            }
        }
        let mut last = None;
        for w in &s.waves {
            if let Some(prev) = last {
                if same_kind_not_growing(prev, *w) {
                    return Err(field_err(
                        "strategy.waves",
                        format!(
                            "waves are cumulative and must grow: {w} after {prev}; e.g. \
                             [\"25%\", \"50%\"] means a quarter, then up to half, then the rest"
                        ),
                    ));
                }
            }
            last = Some(*w);
        }
        if s.progress_deadline < s.healthy_deadline {
            return Err(field_err(
                "strategy.progress_deadline",
                format!(
                    "{} is shorter than strategy.healthy_deadline ({}); a single slow host would \
                     fail the rollout. Raise progress_deadline",
                    humantime::format_duration(s.progress_deadline),
                    humantime::format_duration(s.healthy_deadline)
                ),
            ));
        }
        if let Some(image) = &self.release.image {
            crate::image_ref::ImageRef::parse(image)
                .map_err(|e| field_err("release.image", e.to_string()))?;
            if self.release.file.is_some() {
                return Err(field_err(
                    "release.image",
                    "give either `image` (a registry image) or `file` (an artifact), not both",
                ));
            }
        }
        if self.release.file.is_some() && !self.release.source.is_empty() {
            return Err(field_err(
                "release.file",
                "give either `file` (pushed by the CLI) or `source`, not both",
            ));
        }
        if self.release.signature_file.is_some() && self.release.signature.is_some() {
            return Err(field_err(
                "release.signature_file",
                "give either `signature_file` (read by the CLI) or [release.signature], not both",
            ));
        }
        if let Some(sig) = &self.release.signature {
            sig.check().map_err(|e| field_err("release.signature", e))?;
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
        if r.signature_file.is_some() {
            return Err(field_err(
                "release.signature_file",
                "the coordinator cannot read files on your machine; use `rollgate rollout \
                 start`, which reads it, or copy its key_id, signature and expires into \
                 [release.signature]",
            ));
        }
        if let Some(image) = &r.image {
            crate::image_ref::PinnedImage::parse(image)
                .map_err(|e| field_err("release.image", e.to_string()))?;
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

fn same_kind_not_growing(prev: Budget, next: Budget) -> bool {
    match (prev, next) {
        (Budget::Count(a), Budget::Count(b)) | (Budget::Percent(a), Budget::Percent(b)) => b <= a,
        _ => false,
    }
}

/// Formats a duration for people ("1m 30s").
pub fn human(d: Duration) -> String {
    // Whole milliseconds, without going through a u64 of them (which wraps past 584 million
    // years).
    let ms = Duration::new(d.as_secs(), d.subsec_millis() * 1_000_000);
    humantime::format_duration(ms).to_string()
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
        assert_eq!(s.strategy.max_failures, FailureBudget::Count(0));
        assert_eq!(s.strategy.on_failure, OnFailure::Halt);
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
    fn full_strategy() {
        let text = format!(
            "{GOOD}group_by = \"site\"\nmax_unavailable_per_group = 1\ncanary = 1\n\
             canary_gate = \"10m\"\nwaves = [\"25%\", \"50%\"]\npause_between_waves = \"30s\"\n\
             max_failures = \"10%\"\non_failure = \"rollback\"\nstage_first = true\nprefetch = true\n"
        );
        let s = RolloutSpec::parse_resolved(&text).expect("valid").strategy;
        assert_eq!(s.group_by.as_deref(), Some("site"));
        assert_eq!(s.max_unavailable_per_group, Some(Budget::Count(1)));
        assert_eq!(s.canary, Some(Budget::Count(1)));
        assert_eq!(s.canary_gate, Gate::Bake(Duration::from_secs(600)));
        assert_eq!(s.waves, vec![Budget::Percent(25), Budget::Percent(50)]);
        assert_eq!(s.max_failures, FailureBudget::Percent(10));
        assert_eq!(s.max_failures.resolve(25), 2);
        assert_eq!(s.on_failure, OnFailure::Rollback);
        assert!(s.stage_first);
        assert!(s.prefetch);
        let manual = GOOD.replace(
            "min_healthy_time",
            "canary_gate = \"manual\"\nmin_healthy_time",
        );
        assert_eq!(
            RolloutSpec::parse(&manual)
                .expect("valid")
                .strategy
                .canary_gate,
            Gate::Manual
        );
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
            (format!("{GOOD}max_unavailable_per_group = 1\n"), "group_by"),
            (
                format!("{GOOD}waves = [\"50%\", \"25%\"]\n"),
                "`strategy.waves`",
            ),
            (format!("{GOOD}canary_gate = \"soon\"\n"), "canary_gate"),
            (format!("{GOOD}on_failure = \"explode\"\n"), "on_failure"),
            (
                format!("{GOOD}progress_deadline = \"1s\"\n"),
                "`strategy.progress_deadline`",
            ),
            (format!("{GOOD}max_failures = \"150%\"\n"), "max_failures"),
            (
                GOOD.replace("size = 10", "size = 10\nimage = \"reg:5000/app:1\""),
                "`release.image`: image \"reg:5000/app:1\" is not pinned",
            ),
            (
                GOOD.replace("size = 10", "size = 10\nimage = \"reg:5000/App:1\""),
                "`release.image`: image \"reg:5000/App:1\": repository path part",
            ),
            (
                GOOD.replace("size = 10", "size = 10\nimage = \"r:1/a:1\"\nfile = \"x\""),
                "either `image` (a registry image) or `file`",
            ),
        ];
        for (text, want) in cases {
            let err = RolloutSpec::parse_resolved(&text)
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "error {err:?} should name {want}");
        }
    }

    /// The round trip `fuzz/fuzz_targets/spec.rs` checks: a bake time that is not whole
    /// milliseconds (or is more than u64::MAX of them) was serialized rounded (or wrapped), so
    /// the spec read back from the coordinator's record (JSON, same `Serialize`) was not the
    /// one accepted.
    #[test]
    fn bake_times_survive_serialization() {
        for gate in [
            "1500us",
            "1ns",
            "10m 1ns",
            "600000000y",
            "584542046090y 1ns",
        ] {
            let text = format!("{GOOD}canary_gate = \"{gate}\"\n");
            let spec = RolloutSpec::parse_resolved(&text).expect(gate);
            let again = toml::to_string(&spec).expect("serializes");
            assert_eq!(RolloutSpec::parse(&again).expect(gate), spec, "{gate}");
        }
        assert_eq!(
            human(Duration::from_secs(600_000_000 * 31_557_600)),
            "600000000years"
        );
        assert_eq!(human(Duration::from_micros(1500)), "1ms");
    }
}

#[cfg(test)]
mod signature_tests {
    use super::*;
    use base64::Engine as _;

    const SIGNED: &str = r#"
service = "demo"
[release]
version = "2.0.0"
source = "store:"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
size = 10
[release.signature]
key_id = "0123456789abcdef"
signature = "SIG"
expires = "2030-01-01T00:00:00Z"
"#;

    fn with_sig(sig: &str) -> String {
        SIGNED.replace("SIG", sig)
    }

    #[test]
    fn signature_goes_on_the_wire() {
        let sig = crate::signing::b64().encode([7u8; 64]);
        let spec = RolloutSpec::parse_resolved(&with_sig(&sig)).expect("valid");
        let pb = spec.release.to_pb().signature.expect("signature");
        assert_eq!(pb.signature, vec![7u8; 64]);
        assert_eq!(pb.key_id, "0123456789abcdef");
        assert_eq!(pb.expires_unix, 1_893_456_000);
        // The stored form keeps it.
        let again = toml_roundtrip(&spec);
        assert_eq!(again.release.signature, spec.release.signature);
    }

    fn toml_roundtrip(spec: &RolloutSpec) -> RolloutSpec {
        let text = toml::to_string(spec).expect("encode");
        RolloutSpec::parse(&text).expect("decode")
    }

    #[test]
    fn bad_signatures_name_the_field() {
        let good = crate::signing::b64().encode([7u8; 64]);
        let cases = [
            (with_sig("not base64!"), "`release.signature`"),
            (
                with_sig(&crate::signing::b64().encode([7u8; 10])),
                "10 bytes",
            ),
            (
                with_sig(&good).replace("0123456789abcdef", "KEY"),
                "`release.signature`",
            ),
            (
                with_sig(&good).replace(
                    "[release.signature]",
                    "signature_file = \"x.sig\"\n[release.signature]",
                ),
                "`release.signature_file`",
            ),
            (
                format!(
                    "{}signature_file = \"x.sig\"\n",
                    SIGNED
                        .split("[release.signature]")
                        .next()
                        .unwrap_or_default()
                ),
                "`release.signature_file`",
            ),
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
        assert_eq!(spec.strategy.canary_gate, Gate::Manual);
        assert_eq!(spec.strategy.on_failure, OnFailure::Rollback);
        assert!(spec.strategy.stage_first);
        assert!(spec.release.file.is_some());
    }

    /// `lost_grace` is stored only when it is not the default, so a record of a rollout that
    /// leaves it alone reads in a coordinator that predates the field (`deny_unknown_fields`);
    /// a set value round-trips.
    #[test]
    fn lost_grace_is_stored_only_when_set() {
        let base = "service = \"web\"\n[release]\nversion = \"2.0.0\"\nsource = \"store:\"\n";
        let spec = RolloutSpec::parse(base).expect("minimal spec");
        assert_eq!(spec.strategy.lost_grace, DEFAULT_LOST_GRACE);
        let json = serde_json::to_string(&spec).expect("json");
        assert!(!json.contains("lost_grace"), "{json}");
        let set = RolloutSpec::parse(&format!("{base}[strategy]\nlost_grace = \"30s\"\n"))
            .expect("lost_grace set");
        assert_eq!(set.strategy.lost_grace, Duration::from_secs(30));
        let json = serde_json::to_string(&set).expect("json");
        assert!(json.contains("\"lost_grace\":\"30s\""), "{json}");
        let back: RolloutSpec = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, set);
    }
}
