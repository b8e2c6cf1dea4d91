//! Notifications (`[[notify]]` webhooks): the leader posts the events an operator asked for to
//! their URLs, signed, retried while the receiver is down, resumed by the next leader.
//!
//! - this file: the settings, the payload and its signature (pure);
//! - [`deliver`]: the leader's task that tails the event log for each webhook.
//!
//! At least once: a webhook's cursor (`notify/<name>` in etcd: the last event id it took) moves
//! only after a 2xx answer, so an event can arrive twice (a leader dying between the answer and
//! the cursor write), never zero times; receivers deduplicate on the event id, which is in the
//! body and in the `X-Rollgate-Event-Id` header.

pub mod deliver;

use std::path::PathBuf;
use std::time::Duration;

use rollgate_proto::pb;
use serde::{Deserialize, Serialize};

/// `[[notify]]` in the coordinator's config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Its name: the key of its cursor in etcd, and what logs call it.
    pub name: String,
    /// Where events are POSTed (http or https).
    pub url: String,
    /// The event kinds wanted, as `rollgate events` names them ("rollout_halted",
    /// "gate_waiting", "rollout_succeeded", "host_failed", ...); empty: every rollout-level
    /// event (`rollout_*`, `wave_opened`, `gate_waiting`).
    #[serde(default)]
    pub events: Vec<String>,
    /// A file holding the shared secret: each body is signed with HMAC-SHA256 in the
    /// `X-Rollgate-Signature: sha256=<hex>` header. Unset: unsigned.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// How long one delivery may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// What is wrong with a `[[notify]]` table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyConfigError {
    /// An event kind that does not exist.
    #[error("[[notify]] {name}: unknown event kind {kind:?}; `rollgate events` names them (e.g. rollout_halted, rollout_succeeded, host_failed)")]
    UnknownKind {
        /// The webhook.
        name: String,
        /// What was written.
        kind: String,
    },
    /// A name that cannot be an etcd key part, or a URL that is not http(s).
    #[error("[[notify]] {name:?}: {why}")]
    Invalid {
        /// The webhook.
        name: String,
        /// Why.
        why: String,
    },
}

/// Every event kind by its name.
pub fn kind_named(name: &str) -> Option<pb::EventKind> {
    pb::EventKind::from_str_name(&format!("EVENT_KIND_{}", name.to_ascii_uppercase()))
        .filter(|k| *k != pb::EventKind::Unspecified)
}

impl NotifyConfig {
    /// Checks the table (at start, so a typo is not found at 3 a.m.).
    pub fn validate(&self) -> Result<(), NotifyConfigError> {
        let invalid = |why: &str| NotifyConfigError::Invalid {
            name: self.name.clone(),
            why: why.to_string(),
        };
        rollgate_proto::names::check("notify name", &self.name)
            .map_err(|e| invalid(&e.to_string()))?;
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(invalid("url must start with http:// or https://"));
        }
        if let Some(path) = &self.secret_file {
            // At start, not at the first halt: a missing secret would silently turn the
            // webhook off.
            match std::fs::read(path) {
                Ok(s) if !s.trim_ascii().is_empty() => {}
                Ok(_) => return Err(invalid(&format!("secret_file {} is empty; put the shared secret in it", path.display()))),
                Err(e) => return Err(invalid(&format!("cannot read secret_file {}: {e}; create it (mode 0600) or remove secret_file to send unsigned", path.display()))),
            }
        }
        for kind in &self.events {
            if kind_named(kind).is_none() {
                return Err(NotifyConfigError::UnknownKind {
                    name: self.name.clone(),
                    kind: kind.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether this webhook wants `kind`.
    pub fn wants(&self, kind: pb::EventKind) -> bool {
        if self.events.is_empty() {
            return kind.word().starts_with("rollout_")
                || matches!(kind, pb::EventKind::WaveOpened | pb::EventKind::GateWaiting);
        }
        self.events.iter().any(|k| kind_named(k) == Some(kind))
    }
}

/// The JSON body of a delivery. `text` is one line for people, so a chat webhook (Slack,
/// Mattermost, Rocket.Chat: `{"text": ...}`) can take it as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The event id (deduplicate on it).
    pub id: u64,
    /// When it was recorded (ms since the epoch).
    pub at_ms: i64,
    /// Its kind ("rollout_halted").
    pub kind: String,
    /// The rollout, service, host and operator it concerns (empty: none).
    pub rollout_id: String,
    /// See `rollout_id`.
    pub service: String,
    /// See `rollout_id`.
    pub host_id: String,
    /// See `rollout_id`.
    pub by: String,
    /// Why.
    pub reason: String,
    /// One line for people.
    pub text: String,
}

impl Payload {
    /// The body for `e`.
    pub fn of(e: &pb::Event) -> Self {
        let kind = e.kind().word().to_string();
        let mut text = format!("rollgate: {kind}");
        if !e.service.is_empty() {
            text.push_str(&format!(" {}", e.service));
        }
        if !e.rollout_id.is_empty() {
            text.push_str(&format!(" ({})", e.rollout_id));
        }
        if !e.host_id.is_empty() {
            text.push_str(&format!(" on {}", e.host_id));
        }
        if !e.reason.is_empty() {
            text.push_str(&format!(": {}", e.reason));
        }
        Payload {
            id: e.id,
            at_ms: e.at_ms,
            kind,
            rollout_id: e.rollout_id.clone(),
            service: e.service.clone(),
            host_id: e.host_id.clone(),
            by: e.by.clone(),
            reason: e.reason.clone(),
            text,
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`: the `X-Rollgate-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(events: &[&str]) -> NotifyConfig {
        NotifyConfig {
            name: "chat".into(),
            url: "https://hooks.example/x".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            secret_file: None,
            timeout: default_timeout(),
        }
    }

    #[test]
    fn kinds_are_checked_and_filtered_by_name() {
        assert_eq!(hook(&["rollout_halted", "host_failed"]).validate(), Ok(()));
        assert_eq!(
            hook(&["rollout_halt"]).validate(),
            Err(NotifyConfigError::UnknownKind {
                name: "chat".into(),
                kind: "rollout_halt".into()
            })
        );
        let h = hook(&["rollout_halted"]);
        assert!(h.wants(pb::EventKind::RolloutHalted));
        assert!(!h.wants(pb::EventKind::HostStep));
        let gate = hook(&["gate_waiting"]);
        assert_eq!(gate.validate(), Ok(()));
        assert!(gate.wants(pb::EventKind::GateWaiting));
        assert!(!gate.wants(pb::EventKind::WaveOpened));
        let all = hook(&[]);
        assert!(all.wants(pb::EventKind::RolloutSucceeded));
        assert!(
            all.wants(pb::EventKind::GateWaiting),
            "an operator must act on it"
        );
        assert!(
            !all.wants(pb::EventKind::HostStep),
            "host steps only when asked for"
        );
        let mut bad = hook(&[]);
        bad.url = "ftp://x".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
