//! `rollgate host label HOST key=value... [--services a,b] [--clear]`: an operator pins what
//! rollouts see of a host (its labels, and optionally the services it may be targeted for), so a
//! compromised host cannot pick itself as a target or a canary by claiming a label or a service
//! (issue 10, item 6). A pin never changes a running rollout: targets and groups are fixed when
//! a rollout is created.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rollgate_proto::names;

use super::ControlError;
use crate::store::{encode, now_ms, PinRecord};
use crate::Ctx;

/// Most labels a pin may hold, and their sizes (the same bounds hellos are held to).
const MAX_LABELS: usize = 32;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 256;

/// What an operator asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinRequest {
    /// The host.
    pub host: String,
    /// Its labels, as rollouts will see them.
    pub labels: BTreeMap<String, String>,
    /// The services it may be targeted for; empty: not pinned.
    pub services: BTreeSet<String>,
    /// Remove the pin instead.
    pub clear: bool,
}

/// Stores (or clears) a pin; returns what was done, for the operator.
pub async fn pin_host(ctx: &Arc<Ctx>, req: &PinRequest, by: &str) -> Result<String, ControlError> {
    check(req)?;
    let key = ctx.keys.pin(&req.host);
    let mut etcd = ctx.etcd.clone();
    if req.clear {
        let resp = etcd.delete(key, None).await?;
        return Ok(if resp.deleted() > 0 {
            format!(
                "{}: pin removed; rollouts created from now on see the labels and services its \
                 agent reports",
                req.host
            )
        } else {
            format!("{}: had no pin", req.host)
        });
    }
    let pin = PinRecord {
        labels: req.labels.clone(),
        services: (!req.services.is_empty()).then(|| req.services.clone()),
        by: by.to_string(),
        at_ms: now_ms(),
    };
    etcd.put(key, encode(&pin), None).await?;
    tracing::info!(host = %req.host, operator = %by, labels = ?pin.labels, services = ?pin.services, "host pinned");
    Ok(format!(
        "{}: pinned labels {:?}{}; rollouts created from now on see these whatever its agent \
         claims (running rollouts keep the targets and groups they started with)",
        req.host,
        pin.labels,
        match &pin.services {
            Some(s) => format!(" and services {s:?}"),
            None => String::new(),
        }
    ))
}

/// Checks names and sizes; the error names the bad part and the fix.
pub fn check(req: &PinRequest) -> Result<(), ControlError> {
    let invalid = |m: String| Err(ControlError::Invalid(m));
    names::check("host id", &req.host).map_err(|e| ControlError::Invalid(e.to_string()))?;
    if req.clear && (!req.labels.is_empty() || !req.services.is_empty()) {
        return invalid("--clear removes the pin; give no labels or services with it".into());
    }
    if !req.clear && req.labels.is_empty() && req.services.is_empty() {
        return invalid(
            "give the labels to pin (key=value ...), --services, or --clear to remove the pin"
                .into(),
        );
    }
    if req.labels.len() > MAX_LABELS {
        return invalid(format!("at most {MAX_LABELS} labels may be pinned"));
    }
    for (k, v) in &req.labels {
        let plain = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
        if !plain(k) || k.len() > MAX_LABEL_KEY || k.contains('=') {
            return invalid(format!(
                "label key {k:?}: 1 to {MAX_LABEL_KEY} bytes, no '=' and no control characters"
            ));
        }
        if v.chars().any(char::is_control) || v.len() > MAX_LABEL_VALUE {
            return invalid(format!(
                "label {k}: the value has control characters or is over {MAX_LABEL_VALUE} bytes"
            ));
        }
    }
    for s in &req.services {
        names::check("service name", s).map_err(|e| ControlError::Invalid(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_requests_table() {
        let req = |labels: &[(&str, &str)], clear: bool| PinRequest {
            host: "h1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            services: BTreeSet::new(),
            clear,
        };
        assert!(check(&req(&[("site", "a")], false)).is_ok());
        assert!(check(&req(&[], true)).is_ok());
        for (r, want) in [
            (req(&[], false), "give the labels"),
            (req(&[("site", "a")], true), "--clear removes"),
            (req(&[("si\u{1b}te", "a")], false), "label key"),
            (req(&[("site", "a\u{1b}[2J")], false), "control characters"),
        ] {
            let e = check(&r).expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
