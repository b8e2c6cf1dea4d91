//! Pulling a release's image from its registry through the engine (`POST /images/create`,
//! Docker's API and Podman's compatible one), by digest, with the credentials of the service's
//! `registry_auth` file (header `X-Registry-Auth`), reporting the engine's progress stream.
//!
//! The image is checked afterwards: the engine must hold an image whose repo digests include
//! the pinned digest. An image already there is not pulled again (a rollback, a staged pull).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use rollgate_proto::image_ref::PinnedImage;
use rollgate_proto::registry_auth::Credentials;
use serde::Deserialize;
use tokio::time::Instant;

use super::engine::{api_error, encode, what, ContainerError, Engine, API_CALL_TIMEOUT};

/// How long a pull may take in all.
pub const IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(900);
/// How often pull progress is reported at most.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Why a pull failed, read from the engine's message: decides the operator's hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The registry wants credentials, or refused the ones given.
    Unauthorized,
    /// The registry has no such repository, or no manifest with that digest.
    NotFound,
    /// The engine could not reach the registry (connection, DNS, timeout).
    Unreachable,
    /// The engine does not trust the registry's certificate.
    Untrusted,
    /// The engine holds an image under that reference whose digest is another.
    DigestMismatch,
    /// Anything else.
    Other,
}

/// Classifies an engine's pull error text (dockerd's and Podman's wordings).
pub fn classify(message: &str) -> PullFailure {
    let m = message.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if any(&["x509", "certificate", "tls: "]) {
        PullFailure::Untrusted
    } else if any(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
    ]) {
        PullFailure::Unauthorized
    } else if any(&[
        "manifest unknown",
        "name unknown",
        "not found",
        "does not exist",
        "no such image",
    ]) {
        PullFailure::NotFound
    } else if any(&[
        "connection refused",
        "no route to host",
        "i/o timeout",
        "timeout",
        "no such host",
        "network is unreachable",
        "connection reset",
        "eof",
    ]) {
        PullFailure::Unreachable
    } else {
        PullFailure::Other
    }
}

/// Which credentials a pull used, for the hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthUsed {
    /// The service has no `registry_auth`.
    NotConfigured,
    /// Its `registry_auth` file has no entry for the registry.
    NoEntry(PathBuf),
    /// The entry for the registry in this file.
    From(PathBuf),
}

/// What the operator can do about a failed pull.
pub fn hint(f: PullFailure, image: &PinnedImage, auth: &AuthUsed) -> String {
    let reg = image.registry();
    match (f, auth) {
        (PullFailure::Unauthorized, AuthUsed::From(p)) => format!(
            "the registry {reg} refused the credentials in {}; fix them there (read at every \
             pull) and retry the rollout",
            p.display()
        ),
        (PullFailure::Unauthorized, AuthUsed::NoEntry(p)) => format!(
            "the registry {reg} wants credentials and {} has none for it; add an \"auths\" \
             entry for {reg} (credential helpers, credsStore/credHelpers, are not run)",
            p.display()
        ),
        (PullFailure::Unauthorized, AuthUsed::NotConfigured) => format!(
            "the registry {reg} wants credentials; set registry_auth on this service (a Docker \
             config.json with an \"auths\" entry for {reg})"
        ),
        (PullFailure::NotFound, _) => format!(
            "the registry {reg} has no image {image}: push it, or start the rollout again so \
             the tag is pinned anew"
        ),
        (PullFailure::Unreachable, _) => format!(
            "the container engine on this host cannot reach the registry {reg}: check the \
             address, DNS, firewall and the registry itself"
        ),
        (PullFailure::Untrusted, _) => format!(
            "the container engine does not trust the certificate of {reg}: install its CA as \
             /etc/docker/certs.d/{reg}/ca.crt (Podman: /etc/containers/certs.d/{reg}/ca.crt)"
        ),
        (PullFailure::DigestMismatch, _) => {
            "the engine's image does not have the digest the release pins; nothing was run \
             from it"
                .into()
        }
        (PullFailure::Other, _) => "see the engine's message".into(),
    }
}

/// One message of the engine's pull stream.
#[derive(Debug, Default, Deserialize)]
pub struct PullMessage {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "progressDetail")]
    progress: Option<ProgressDetail>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorDetail")]
    error_detail: Option<ErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
struct ProgressDetail {
    #[serde(default)]
    current: Option<u64>,
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
}

/// The pull's progress, layer by layer, from the engine's messages.
#[derive(Debug, Default)]
pub struct Progress {
    /// layer id → (bytes downloaded, size, done)
    layers: BTreeMap<String, (u64, u64, bool)>,
}

impl Progress {
    /// Takes one message; returns the engine's error, if it is one.
    pub fn apply(&mut self, msg: &PullMessage) -> Option<String> {
        if let Some(e) = &msg.error {
            let detail = msg.error_detail.as_ref().and_then(|d| d.message.clone());
            return Some(detail.unwrap_or_else(|| e.clone()));
        }
        let (Some(id), Some(status)) = (&msg.id, &msg.status) else {
            return None;
        };
        const LAYER: [&str; 8] = [
            "Pulling fs layer",
            "Waiting",
            "Downloading",
            "Verifying Checksum",
            "Download complete",
            "Extracting",
            "Pull complete",
            "Already exists",
        ];
        if !LAYER.contains(&status.as_str()) {
            // "Pulling from …" and the like name the image, not a layer.
            return None;
        }
        let layer = self.layers.entry(id.clone()).or_default();
        match status.as_str() {
            "Downloading" => {
                if let Some(p) = &msg.progress {
                    layer.0 = p.current.unwrap_or(layer.0);
                    layer.1 = p.total.unwrap_or(layer.1);
                }
            }
            "Download complete" | "Pull complete" | "Already exists" => {
                layer.0 = layer.1;
                layer.2 = true;
            }
            _ => {}
        }
        None
    }

    /// "2 of 3 layers, 1.2 of 4.0 MB".
    pub fn summary(&self) -> String {
        let done = self.layers.values().filter(|l| l.2).count();
        let got: u64 = self.layers.values().map(|l| l.0).sum();
        let total: u64 = self.layers.values().map(|l| l.1).sum();
        let mb = |b: u64| b as f64 / 1e6;
        format!(
            "{done} of {} layers, {:.1} of {:.1} MB",
            self.layers.len(),
            mb(got),
            mb(total)
        )
    }
}

#[derive(Debug, Deserialize)]
struct ImageInspect {
    #[serde(rename = "RepoDigests", default)]
    repo_digests: Option<Vec<String>>,
}

impl Engine {
    /// Whether the engine holds `image` (by its digest). An image under that reference whose
    /// repo digests do not include the digest is an error.
    pub(super) async fn has_image(&self, image: &PinnedImage) -> Result<bool, ContainerError> {
        let path = format!("/images/{}/json", encode(&image.to_string()));
        let (status, bytes) = self
            .call(
                Method::GET,
                &path,
                None,
                API_CALL_TIMEOUT,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let inspect: ImageInspect =
            super::api::decode("image inspect", &bytes).map_err(ContainerError::Answer)?;
        let suffix = format!("@{}", image.digest);
        if inspect
            .repo_digests
            .unwrap_or_default()
            .iter()
            .any(|d| d.ends_with(&suffix))
        {
            return Ok(true);
        }
        Err(ContainerError::Pull {
            image: image.to_string(),
            message: "the engine's image under that reference has other digests".into(),
            hint: hint(PullFailure::DigestMismatch, image, &AuthUsed::NotConfigured),
        })
    }

    /// Pulls `image` by digest; `report` gets a progress line at most every
    /// [`PROGRESS_EVERY`]. The error says why, with the operator's next step.
    pub(super) async fn pull(
        &self,
        image: &PinnedImage,
        creds: Option<&Credentials>,
        auth: &AuthUsed,
        report: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ContainerError> {
        let fail = |message: String| ContainerError::Pull {
            image: image.to_string(),
            hint: hint(classify(&message), image, auth),
            message,
        };
        let path = format!(
            "/images/create?fromImage={}&tag={}",
            encode(&image.repository),
            encode(&image.digest)
        );
        let headers: Vec<(&str, String)> = creds
            .map(|c| ("X-Registry-Auth", c.engine_header(image.registry())))
            .into_iter()
            .collect();
        let pulling = async {
            let resp = self.request(Method::POST, &path, None, &headers).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let e = api_error(what(&Method::POST, &path), status, &bytes);
                return Err(match e {
                    ContainerError::Api { message, .. } => fail(message),
                    other => other,
                });
            }
            read_stream(&mut body, report, &fail).await
        };
        tokio::time::timeout(IMAGE_PULL_TIMEOUT, pulling)
            .await
            .map_err(|_| {
                fail(format!(
                    "the pull did not finish within {IMAGE_PULL_TIMEOUT:?}"
                ))
            })??;
        match self.has_image(image).await? {
            true => Ok(()),
            false => Err(fail(
                "the engine reported the pull done but has no such image".into(),
            )),
        }
    }
}

/// Reads the pull's message stream to its end; the first error message fails it.
async fn read_stream(
    body: &mut hyper::body::Incoming,
    report: &(dyn Fn(String) + Send + Sync),
    fail: &(dyn Fn(String) -> ContainerError + Send + Sync),
) -> Result<(), ContainerError> {
    let mut progress = Progress::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut last = Instant::now();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(format!("the engine's answer broke off: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Ok(msg) = serde_json::from_slice::<PullMessage>(&line) else {
                continue;
            };
            if let Some(e) = progress.apply(&msg) {
                return Err(fail(e));
            }
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                report(progress.summary());
            }
        }
    }
    if let Ok(msg) = serde_json::from_slice::<PullMessage>(&buf) {
        if let Some(e) = progress.apply(&msg) {
            return Err(fail(e));
        }
    }
    report(format!("pulled: {}", progress.summary()));
    Ok(())
}

#[cfg(test)]
mod tests;
