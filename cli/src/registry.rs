//! A release's container image tag resolved to its manifest digest, once, when the rollout is
//! created (`rollout start`, `rollout plan`, `release pin`): the registry is asked over the OCI
//! distribution API (oci-client: token or basic auth, manifest HEAD) with the operator's
//! credentials (Docker's `config.json` `auths`, see [`rollgate_proto::registry_auth`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use rollgate_proto::image_ref::{ImageRef, PinnedImage};
use rollgate_proto::registry_auth;

use crate::client::Coordinator;
use crate::spec_file::LoadedSpec;
use crate::{artifact, render};

/// Where the CLI finds registry credentials and the registry's CA.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryOpts {
    /// Registry credentials for resolving `release.image` (Docker's config.json `auths`
    /// format); default: $REGISTRY_AUTH_FILE, then $DOCKER_CONFIG/config.json, then
    /// ~/.docker/config.json, if present.
    #[arg(long, env = "ROLLGATE_REGISTRY_AUTH", value_name = "FILE")]
    pub registry_auth: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the registry besides the system's roots.
    #[arg(long, env = "ROLLGATE_REGISTRY_CA", value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
}

impl RegistryOpts {
    /// The credentials file to read: the flag, or the first of Docker's and Podman's usual
    /// places that exists.
    fn auth_file(&self) -> Option<PathBuf> {
        if let Some(p) = &self.registry_auth {
            return Some(p.clone());
        }
        let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
        [
            env("REGISTRY_AUTH_FILE"),
            env("DOCKER_CONFIG").map(|d| d.join("config.json")),
            env("HOME").map(|h| h.join(".docker/config.json")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
    }
}

/// Why a tag could not be resolved: decides the hint the operator gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveFailure {
    /// The registry refused the credentials (or wants some).
    Unauthorized,
    /// The registry has no such repository or tag.
    NotFound,
    /// The registry could not be reached (connection, TLS).
    Unreachable,
    /// Anything else the registry said.
    Other,
}

/// Classifies an oci-client error.
pub fn classify(e: &OciDistributionError) -> ResolveFailure {
    use OciDistributionError as E;
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => ResolveFailure::Unauthorized,
        E::ImageManifestNotFoundError(_) => ResolveFailure::NotFound,
        E::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}", e.code))
                .collect();
            let has = |c: &str| codes.iter().any(|x| x.eq_ignore_ascii_case(c));
            if has("Unauthorized") || has("Denied") {
                ResolveFailure::Unauthorized
            } else if has("ManifestUnknown") || has("NameUnknown") {
                ResolveFailure::NotFound
            } else {
                ResolveFailure::Other
            }
        }
        E::RequestError(_) => ResolveFailure::Unreachable,
        _ => ResolveFailure::Other,
    }
}

/// The operator's next step for a failure.
pub fn hint(f: ResolveFailure, registry: &str, auth_file: Option<&Path>) -> String {
    match (f, auth_file) {
        (ResolveFailure::Unauthorized, Some(p)) => format!(
            "the registry refused the credentials for {registry} in {}; log in again \
             (docker login {registry}) or fix that file",
            p.display()
        ),
        (ResolveFailure::Unauthorized, None) => format!(
            "the registry wants credentials and none were found; run `docker login {registry}` \
             or pass --registry-auth FILE"
        ),
        (ResolveFailure::NotFound, _) => {
            "the registry has no such repository or tag: check the name, or push the image first"
                .into()
        }
        (ResolveFailure::Unreachable, _) => format!(
            "cannot reach {registry} over HTTPS from this machine: check the address, the \
             network, and that its certificate is trusted (--registry-ca FILE for a private CA)"
        ),
        (ResolveFailure::Other, _) => "see the registry's message above".into(),
    }
}

/// An error with its causes ("error sending request: … : connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

fn client(opts: &RegistryOpts) -> anyhow::Result<Client> {
    let mut extra_root_certificates = Vec::new();
    if let Some(ca) = &opts.registry_ca {
        let data = std::fs::read(ca)
            .with_context(|| format!("cannot read the registry CA {}", ca.display()))?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Ok(Client::new(ClientConfig {
        protocol: ClientProtocol::Https,
        extra_root_certificates,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        ..ClientConfig::default()
    }))
}

/// `image` pinned to a digest: as given when it has one, else its tag resolved in the registry.
pub async fn pin(image: &str, opts: &RegistryOpts) -> anyhow::Result<PinnedImage> {
    let parsed = ImageRef::parse(image)?;
    if let Some(p) = parsed.pinned() {
        return Ok(p);
    }
    let registry = parsed.registry().to_string();
    let auth_file = opts.auth_file();
    let creds = match &auth_file {
        Some(p) => registry_auth::read(p, &registry)?,
        None => None,
    };
    let auth = creds.map_or(RegistryAuth::Anonymous, |c| {
        RegistryAuth::Basic(c.username, c.password)
    });
    let reference: Reference = image
        .parse()
        .with_context(|| format!("image {image:?} is not a reference the registry client takes"))?;
    let digest = client(opts)?
        .fetch_manifest_digest(&reference, &auth)
        .await
        .map_err(|e| {
            let h = hint(classify(&e), &registry, auth_file.as_deref());
            anyhow::anyhow!(
                "cannot resolve image {image} to a digest: {}; {h}",
                chain(&e)
            )
        })?;
    let pinned = PinnedImage::parse(&format!("{}@{digest}", parsed.repository))
        .with_context(|| format!("registry {registry} answered an unusable digest {digest:?}"))?;
    Ok(pinned)
}

/// The reference artifact of `pinned` in a temporary file (pushed like any `release.file`).
fn artifact_file(pinned: &PinnedImage) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write as _;
    let mut f = tempfile::Builder::new()
        .prefix("rollgate-image-")
        .tempfile()
        .context("cannot write the image reference artifact to a temporary file")?;
    f.write_all(&pinned.artifact())
        .context("cannot write the image reference artifact")?;
    Ok(f)
}

/// `rollout start` of a spec with `release.image`: pins the image, pushes its reference
/// artifact to the coordinator's store, and returns the spec text to send.
pub async fn push_image(
    coord: &Coordinator,
    loaded: &LoadedSpec,
    image: &str,
    opts: &RegistryOpts,
    say: bool,
) -> anyhow::Result<String> {
    let shown = loaded.path.display();
    let pinned = pin(image, opts)
        .await
        .with_context(|| format!("{shown}: release.image"))?;
    let file = artifact_file(&pinned)?;
    let pushed = artifact::push_file(coord, file.path())
        .await
        .with_context(|| format!("{shown}: cannot push the reference artifact of {pinned}"))?;
    if say {
        eprintln!(
            "pinned {image} to {pinned}; its reference pushed to the coordinator's store: {}",
            render::pushed(&pushed.sha256, pushed.size)
        );
    }
    loaded
        .resolved_image(&pinned, &pushed.sha256, pushed.size)
        .with_context(|| format!("{image} is {pinned} now"))
}

/// `rollout plan` of a spec with `release.image`: pins the image (the registry is asked) and
/// hashes its reference artifact locally, pushing nothing.
pub async fn plan_image(
    loaded: &LoadedSpec,
    image: &str,
    opts: &RegistryOpts,
    say: bool,
) -> anyhow::Result<String> {
    let pinned = pin(image, opts)
        .await
        .with_context(|| format!("{}: release.image", loaded.path.display()))?;
    let bytes = pinned.artifact();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if say {
        eprintln!("pinned {image} to {pinned} (not pushed; `rollgate rollout start` pushes it)");
    }
    loaded
        .resolved_image(&pinned, &sha256, bytes.len() as u64)
        .with_context(|| format!("{image} is {pinned} now"))
}

/// `rollgate release pin IMAGE`: the pinned reference, and its artifact written to `out` (to
/// sign with `rollgate release sign`, and name as `release.file`).
pub async fn pin_to_file(
    image: &str,
    out: &Path,
    opts: &RegistryOpts,
) -> anyhow::Result<PinnedImage> {
    let pinned = pin(image, opts).await?;
    std::fs::write(out, pinned.artifact())
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(pinned)
}
