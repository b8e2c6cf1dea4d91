//! Registry credentials in the `auths` format of Docker's `config.json` (what `docker login`
//! and `podman login --authfile` write), read by the CLI to resolve a tag and by the agent to
//! pull:
//!
//! ```json
//! { "auths": { "registry.example:5000": { "auth": "base64(user:password)" } } }
//! ```
//!
//! An entry may give `username` and `password` instead of `auth`; its key may carry a scheme
//! and a path (`https://registry.example:5000/v1/`). Credential helpers (`credsStore`,
//! `credHelpers`) are not run: rollgate reads the file only.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

use crate::image_ref::DOCKER_HUB;

/// A registry account.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// The Docker Engine API's `X-Registry-Auth` header for a pull from `registry`: base64url
    /// JSON, as Docker's CLI sends it (Podman's compatible API takes the same).
    pub fn engine_header(&self, registry: &str) -> String {
        let body = serde_json::json!({
            "username": self.username,
            "password": self.password,
            "serveraddress": registry,
        });
        base64::engine::general_purpose::URL_SAFE.encode(body.to_string())
    }
}

/// A credentials file that cannot be used; the text names the file and the fix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthFileError {
    /// The file cannot be read.
    #[error("registry credentials file {path}: cannot read it ({why}); check the path and its permissions")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        why: String,
    },
    /// Not the `auths` format.
    #[error("registry credentials file {path}: {why}; it must be Docker's config.json format: {{\"auths\": {{\"registry:port\": {{\"auth\": \"base64 of user:password\"}}}}}}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

#[derive(Debug, Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The registry host a config key names: scheme and path dropped, Docker Hub's aliases folded.
fn key_host(key: &str) -> &str {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        h => h,
    }
}

/// Parses the text of a credentials file (named `path` in errors) and returns the account for
/// `registry`, if it has one.
pub fn lookup(
    text: &str,
    path: &str,
    registry: &str,
) -> Result<Option<Credentials>, AuthFileError> {
    let format = |why: String| AuthFileError::Format {
        path: path.to_string(),
        why,
    };
    let config: ConfigJson =
        serde_json::from_str(text).map_err(|e| format(format!("not valid JSON ({e})")))?;
    let Some((key, entry)) = config.auths.iter().find(|(k, _)| key_host(k) == registry) else {
        return Ok(None);
    };
    let creds = match (&entry.auth, &entry.username, &entry.password) {
        (Some(auth), _, _) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format(format!("auths.{key:?}.auth is not base64")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| format(format!("auths.{key:?}.auth is not text")))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| format(format!("auths.{key:?}.auth is not user:password")))?;
            Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }
        }
        (None, Some(u), Some(p)) => Credentials {
            username: u.clone(),
            password: p.clone(),
        },
        _ => {
            return Err(format(format!(
                "auths.{key:?} has neither `auth` nor `username` and `password`"
            )))
        }
    };
    Ok(Some(creds))
}

/// Reads the credentials file at `path` and returns the account for `registry`, if any.
pub fn read(path: &Path, registry: &str) -> Result<Option<Credentials>, AuthFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| AuthFileError::Read {
        path: shown.clone(),
        why: e.to_string(),
    })?;
    lookup(&text, &shown, registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_registry_entry_in_each_form() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("deploy:s3cret:x");
        let text = format!(
            r#"{{"auths": {{
                "https://reg.example:5000/v1/": {{"auth": "{b64}"}},
                "other:5000": {{"username": "u", "password": "p"}},
                "https://index.docker.io/v1/": {{"auth": "{b64}"}}
            }}, "credsStore": "desktop"}}"#
        );
        let c = lookup(&text, "f", "reg.example:5000")
            .expect("ok")
            .expect("found");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("deploy", "s3cret:x")
        );
        let c = lookup(&text, "f", "other:5000")
            .expect("ok")
            .expect("found");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert!(lookup(&text, "f", DOCKER_HUB).expect("ok").is_some());
        assert_eq!(lookup(&text, "f", "nowhere:1"), Ok(None));
        assert_eq!(format!("{c:?}"), "Credentials(u, ***)");
    }

    #[test]
    fn bad_files_name_the_file_and_the_entry() {
        let table = [
            ("{", "not valid JSON"),
            (
                r#"{"auths": {"r:1": {"auth": "%%%"}}}"#,
                "auths.\"r:1\".auth is not base64",
            ),
            (
                r#"{"auths": {"r:1": {"auth": "dXNlcg=="}}}"#,
                "is not user:password",
            ),
            (r#"{"auths": {"r:1": {}}}"#, "neither `auth`"),
        ];
        for (text, want) in table {
            let e = lookup(text, "/etc/rollgate/registry.json", "r:1")
                .expect_err(text)
                .to_string();
            assert!(
                e.contains(want) && e.contains("/etc/rollgate/registry.json"),
                "{e}"
            );
        }
        let e = read(Path::new("/nonexistent/auth.json"), "r:1").expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
