//! Container images named by reference (`registry.example:5000/team/app:1.2` or
//! `…/team/app@sha256:…`), and the small artifact that carries a pinned one to the agents.
//!
//! A release may name an image in a registry instead of shipping an image archive. The CLI
//! resolves a tag to its manifest digest once, when the rollout is created, and the release's
//! artifact becomes the [`PinnedImage`] text ([`PinnedImage::artifact`]): its sha256, size and
//! (for a signed release) signature then cover the digest exactly as they cover any other
//! artifact, so every host runs the same bytes and a publisher's signature pins them. The
//! agent's container backend recognises the artifact by its first line and pulls the image by
//! digest through the engine instead of loading an archive.

use std::fmt;

use thiserror::Error;

/// First line of an image reference artifact; the second is the pinned reference.
pub const ARTIFACT_MAGIC: &str = "rollgate image reference v1";
/// An image reference artifact is never larger than this (an archive nearly always is).
pub const ARTIFACT_MAX_BYTES: u64 = 1024;
/// Docker Hub's registry, for references without a registry host.
pub const DOCKER_HUB: &str = "docker.io";

/// What is wrong with an image reference; the text names the reference and the fix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageRefError {
    /// Not of the form `[registry[:port]/]path[:tag][@sha256:hex]`.
    #[error(
        "image {image:?}: {why}; write it as registry.example:5000/team/app:TAG or \
         registry.example:5000/team/app@sha256:DIGEST"
    )]
    Malformed {
        /// The reference as given.
        image: String,
        /// What part is wrong.
        why: String,
    },
    /// A reference that must be pinned names a tag.
    #[error(
        "image {0:?} is not pinned to a digest (@sha256:…); `rollgate rollout start` pins a \
         tag when the rollout is created"
    )]
    NotPinned(String),
    /// An artifact that is not an image reference artifact.
    #[error("not an image reference artifact ({0})")]
    NotAnArtifact(String),
}

/// A parsed image reference: a repository and a tag, a digest, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry.example:5000/team/app` (with the registry host when one was given).
    pub repository: String,
    /// The tag, if one was given (`1.2`).
    pub tag: Option<String>,
    /// The manifest digest, if one was given (`sha256:` and 64 lowercase hex digits).
    pub digest: Option<String>,
}

/// An image pinned to a manifest digest: what every host pulls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedImage {
    /// `registry.example:5000/team/app`.
    pub repository: String,
    /// `sha256:` and 64 lowercase hex digits.
    pub digest: String,
}

fn malformed(image: &str, why: impl Into<String>) -> ImageRefError {
    ImageRefError::Malformed {
        image: image.to_string(),
        why: why.into(),
    }
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+ separated by '.', '_', '__' or '-'s, as the distribution spec allows.
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn is_registry_host(c: &str) -> bool {
    c.contains('.') || c.contains(':') || c == "localhost"
}

fn check_host(image: &str, host: &str) -> Result<(), ImageRefError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
    if !name_ok {
        return Err(malformed(
            image,
            format!("registry host {host:?} is not a host name"),
        ));
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(malformed(
            image,
            format!("registry {host:?} has a bad port"),
        ));
    }
    Ok(())
}

fn check_digest(image: &str, digest: &str) -> Result<(), ImageRefError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| malformed(image, "the digest must start with sha256:"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(malformed(
            image,
            "the digest must be sha256: and 64 lowercase hex digits",
        ));
    }
    Ok(())
}

fn check_tag(image: &str, tag: &str) -> Result<(), ImageRefError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(malformed(image, format!("tag {tag:?} is not a valid tag")))
    }
}

impl ImageRef {
    /// Parses `[registry[:port]/]path[:tag][@sha256:hex]`; a reference with neither a tag nor a
    /// digest is refused (rollgate never guesses `latest`).
    pub fn parse(image: &str) -> Result<ImageRef, ImageRefError> {
        if image.len() > 255 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed(
                image,
                "too long, or has spaces or control characters",
            ));
        }
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) => {
                check_digest(image, d)?;
                (n, Some(d.to_string()))
            }
            None => (image, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let (r, t) = name.split_at(last_slash + i);
                check_tag(image, &t[1..])?;
                (r, Some(t[1..].to_string()))
            }
            None => (name, None),
        };
        let mut parts: Vec<&str> = repository.split('/').collect();
        if parts.len() > 1 && is_registry_host(parts[0]) {
            check_host(image, parts[0])?;
            parts.remove(0);
        }
        if let Some(bad) = parts.iter().find(|c| !is_path_component(c)) {
            return Err(malformed(
                image,
                format!("repository path part {bad:?} must be lowercase letters, digits and ._-"),
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(malformed(image, "it names neither a tag nor a digest"));
        }
        Ok(ImageRef {
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The registry host the image lives in (`docker.io` when none is named).
    pub fn registry(&self) -> &str {
        registry_of(&self.repository)
    }

    /// The pinned form, if the reference has a digest (a tag beside it is dropped: the digest
    /// decides).
    pub fn pinned(&self) -> Option<PinnedImage> {
        Some(PinnedImage {
            repository: self.repository.clone(),
            digest: self.digest.clone()?,
        })
    }
}

fn registry_of(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((first, _)) if is_registry_host(first) => first,
        _ => DOCKER_HUB,
    }
}

impl PinnedImage {
    /// Parses a reference that must be pinned (`repo@sha256:…`).
    pub fn parse(image: &str) -> Result<PinnedImage, ImageRefError> {
        ImageRef::parse(image)?
            .pinned()
            .ok_or_else(|| ImageRefError::NotPinned(image.to_string()))
    }

    /// The registry host the image lives in.
    pub fn registry(&self) -> &str {
        registry_of(&self.repository)
    }

    /// The release artifact that carries this image: always the same bytes for the same
    /// image, so a signature over it signs the digest.
    pub fn artifact(&self) -> Vec<u8> {
        format!("{ARTIFACT_MAGIC}\n{self}\n").into_bytes()
    }

    /// Reads an artifact made by [`PinnedImage::artifact`]; anything else is refused.
    pub fn from_artifact(bytes: &[u8]) -> Result<PinnedImage, ImageRefError> {
        let not = |why: &str| ImageRefError::NotAnArtifact(why.to_string());
        if bytes.len() as u64 > ARTIFACT_MAX_BYTES {
            return Err(not("too large"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| not("not text"))?;
        let rest = text
            .strip_prefix(ARTIFACT_MAGIC)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or_else(|| not("no header line"))?;
        let line = rest
            .strip_suffix('\n')
            .filter(|l| !l.contains('\n'))
            .ok_or_else(|| not("not exactly one reference line"))?;
        PinnedImage::parse(line)
    }

    /// Whether `bytes` look like an image reference artifact (its header line), so a
    /// malformed one is reported as such rather than loaded as an image archive.
    pub fn is_artifact(bytes: &[u8]) -> bool {
        bytes.starts_with(ARTIFACT_MAGIC.as_bytes())
    }
}

impl fmt::Display for PinnedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_references() {
        // (reference, repository, tag, digest, registry)
        let table = [
            (
                "reg.example:5000/team/app:1.2",
                "reg.example:5000/team/app",
                Some("1.2"),
                None,
                "reg.example:5000",
            ),
            (
                "100.64.0.1:5000/app@DIGEST",
                "100.64.0.1:5000/app",
                None,
                Some(D),
                "100.64.0.1:5000",
            ),
            (
                "team/app:v1-rc.2",
                "team/app",
                Some("v1-rc.2"),
                None,
                DOCKER_HUB,
            ),
            ("busybox:1", "busybox", Some("1"), None, DOCKER_HUB),
            (
                "localhost/app:x@DIGEST",
                "localhost/app",
                Some("x"),
                Some(D),
                "localhost",
            ),
            (
                "ghcr.io/o/a_b/c-d:latest",
                "ghcr.io/o/a_b/c-d",
                Some("latest"),
                None,
                "ghcr.io",
            ),
        ];
        for (text, repo, tag, digest, registry) in table {
            let text = text.replace("DIGEST", D);
            let r = ImageRef::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r.repository, repo, "{text}");
            assert_eq!(r.tag.as_deref(), tag, "{text}");
            assert_eq!(r.digest.as_deref(), digest, "{text}");
            assert_eq!(r.registry(), registry, "{text}");
        }
    }

    #[test]
    fn refuses_malformed_references_naming_the_part() {
        let table = [
            ("reg:5000/app", "neither a tag nor a digest"),
            ("reg:5000/App:1", "lowercase"),
            ("reg:5000/app@sha256:abc", "64 lowercase hex"),
            ("reg:5000/app@md5:abc", "must start with sha256:"),
            ("reg:99999/app:1", "bad port"),
            ("reg:5000/app:-x", "not a valid tag"),
            ("reg:5000//app:1", "repository path part \"\""),
            ("reg:5000/app:1 ", "spaces"),
        ];
        for (text, want) in table {
            let e = ImageRef::parse(text).expect_err(text).to_string();
            assert!(e.contains(want) && e.contains(text.trim()), "{text}: {e}");
        }
        let e = PinnedImage::parse("reg:5000/app:1")
            .expect_err("tag")
            .to_string();
        assert!(e.contains("not pinned"), "{e}");
    }

    #[test]
    fn artifact_round_trips_and_is_strict() {
        let p = PinnedImage::parse(&format!("reg.example:5000/team/app@{D}")).expect("pinned");
        let bytes = p.artifact();
        assert_eq!(
            String::from_utf8(bytes.clone()).expect("text"),
            format!("{ARTIFACT_MAGIC}\nreg.example:5000/team/app@{D}\n")
        );
        assert!(PinnedImage::is_artifact(&bytes));
        assert_eq!(PinnedImage::from_artifact(&bytes), Ok(p.clone()));
        assert_eq!(p.registry(), "reg.example:5000");
        let bad = [
            format!("{ARTIFACT_MAGIC}\nreg/app@{D}"),
            format!("{ARTIFACT_MAGIC}\nreg/app@{D}\nmore\n"),
            format!("{ARTIFACT_MAGIC}\nreg/app:1\n"),
            "POSIX tar archive".to_string(),
        ];
        for b in bad {
            assert!(PinnedImage::from_artifact(b.as_bytes()).is_err(), "{b:?}");
        }
        assert!(!PinnedImage::is_artifact(b"ustar\0"));
    }
}
