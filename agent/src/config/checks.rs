//! Field checks shared by the validators of the config file.

use std::path::Path;

use rollgate_proto::names;

use super::error::{field_err, ConfigError};
use super::types::Manager;

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
