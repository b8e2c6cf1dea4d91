//! Reading a rollout spec file and, when it names a local `release.file`, rewriting it into a
//! release in the coordinator's store once the file is pushed (or, for a dry run, hashed); a
//! `release.signature_file` is read and inlined as `[release.signature]`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use rollgate_proto::image_ref::PinnedImage;
use rollgate_proto::signing::{self, SignatureFile};
use rollgate_proto::spec::RolloutSpec;
use thiserror::Error;

use crate::artifact::{self, Hashed};

/// `release.source` for an artifact in the coordinator's store.
pub const STORE_SOURCE: &str = "store:";

/// A spec read from disk and checked as far as possible without the coordinator.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// Where it was read from, named in errors.
    pub path: PathBuf,
    /// The file's text, sent as is when there is nothing to push.
    pub text: String,
    /// The parsed spec.
    pub spec: RolloutSpec,
    /// `release.file`, resolved against the spec file's directory.
    pub artifact: Option<PathBuf>,
    /// The `release.signature_file` that was read and inlined into `text`, to check against
    /// the release once its sha256 and size are known.
    pub signature: Option<SignatureFile>,
}

/// Reads and checks the spec at `path`. Errors name the file and the field.
pub fn load(path: &Path) -> anyhow::Result<LoadedSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rollout spec {}", path.display()))?;
    let spec = RolloutSpec::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let (text, spec, signature) = match &spec.release.signature_file {
        None => (text, spec, None),
        Some(file) => {
            let sig_path = resolve_file(path, file);
            let what = format!("release.signature_file {file:?} ({})", sig_path.display());
            let sig_text = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("{}: cannot read {what}", path.display()))?;
            let sig = SignatureFile::parse(&sig_text, &what)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let text =
                with_signature(&text, &sig).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let spec = RolloutSpec::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            (text, spec, Some(sig))
        }
    };
    let artifact = match &spec.release.file {
        Some(file) => {
            let artifact = resolve_file(path, file);
            // Fail before talking to anyone if the file is not there.
            std::fs::metadata(&artifact).with_context(|| {
                format!(
                    "{}: release.file {:?}: cannot read {}",
                    path.display(),
                    file,
                    artifact.display()
                )
            })?;
            Some(artifact)
        }
        // A registry image: pinned and pushed (as its reference artifact) by the caller.
        None if spec.release.image.is_some() => None,
        None => {
            // Nothing to push: the spec must already be complete.
            RolloutSpec::parse_resolved(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            None
        }
    };
    let loaded = LoadedSpec {
        path: path.to_path_buf(),
        text,
        spec,
        artifact,
        signature,
    };
    if loaded.artifact.is_none() && loaded.spec.release.image.is_none() {
        let r = &loaded.spec.release;
        loaded.check_signature(&r.sha256, r.size)?;
    }
    Ok(loaded)
}

impl LoadedSpec {
    /// The spec to send once its `release.file` is in the store (or, for a plan, would be) as
    /// `sha256` and `size`, checked to be complete. Errors name the spec file.
    pub fn resolved_with(&self, sha256: &str, size: u64) -> anyhow::Result<String> {
        self.check_signature(sha256, size)?;
        let text = with_store_release(&self.text, sha256, size)
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        RolloutSpec::parse_resolved(&text).map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        Ok(text)
    }

    /// The spec to send for a registry image pinned as `pinned`, whose reference artifact is
    /// in the store (or, for a plan, would be) as `sha256` and `size`.
    pub fn resolved_image(
        &self,
        pinned: &PinnedImage,
        sha256: &str,
        size: u64,
    ) -> anyhow::Result<String> {
        self.check_signature(sha256, size)?;
        let text = with_store_release(&self.text, sha256, size)
            .and_then(|t| with_image(&t, &pinned.to_string()))
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        RolloutSpec::parse_resolved(&text).map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        Ok(text)
    }
}

/// `text` with `release.image` set to `pinned`.
fn with_image(text: &str, pinned: &str) -> Result<String, RewriteError> {
    edit_release(text, |release| {
        release.insert("image".into(), toml::Value::String(pinned.into()));
        Ok(())
    })
}

/// `text` with its `[release]` table changed by `edit`. Comments and key order are not kept.
fn edit_release(
    text: &str,
    edit: impl FnOnce(&mut toml::Table) -> Result<(), RewriteError>,
) -> Result<String, RewriteError> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| RewriteError::Toml(e.to_string()))?;
    let release = doc
        .get_mut("release")
        .and_then(toml::Value::as_table_mut)
        .ok_or(RewriteError::NoRelease)?;
    edit(release)?;
    toml::to_string(&doc).map_err(|e| RewriteError::Toml(e.to_string()))
}

impl LoadedSpec {
    /// Checks that the inlined signature file signs this release (service, version, and the
    /// artifact's `sha256` and `size`), so a mix-up is caught here rather than on every host.
    fn check_signature(&self, sha256: &str, size: u64) -> anyhow::Result<()> {
        let Some(sig) = &self.signature else {
            return Ok(());
        };
        let s = &self.spec;
        sig.check_matches(&s.service, &s.release.version, sha256, size)
            .map_err(|e| {
                anyhow!(
                    "{}: release.signature_file does not sign this release: {e}",
                    self.path.display()
                )
            })
    }
}

/// The spec text with `release.signature_file` replaced by `[release.signature]` from `sig`.
pub fn with_signature(text: &str, sig: &SignatureFile) -> Result<String, RewriteError> {
    edit_release(text, |release| {
        release.remove("signature_file");
        let mut table = toml::Table::new();
        table.insert("key_id".into(), toml::Value::String(sig.key_id.clone()));
        table.insert(
            "signature".into(),
            toml::Value::String(sig.signature.clone()),
        );
        table.insert(
            "expires".into(),
            toml::Value::String(signing::rfc3339(signing::unix(sig.expires))),
        );
        release.insert("signature".into(), toml::Value::Table(table));
        Ok(())
    })
}

/// The spec text for a dry run. A `release.file` is hashed here, not pushed: the spec is
/// rewritten to `source = "store:"` with the local sha256 and size, which is all the
/// coordinator's plan needs (it does not require the artifact in its store). Returns the text
/// and the local digest, if a file was hashed.
pub async fn for_plan(loaded: &LoadedSpec) -> anyhow::Result<(String, Option<Hashed>)> {
    let Some(file) = &loaded.artifact else {
        return Ok((loaded.text.clone(), None));
    };
    let hashed = artifact::hash_file(file).await.with_context(|| {
        format!(
            "{}: cannot hash release.file {}",
            loaded.path.display(),
            file.display()
        )
    })?;
    let text = loaded.resolved_with(&hashed.sha256, hashed.size)?;
    Ok((text, Some(hashed)))
}

/// `file` as written in the spec at `spec_path`: relative paths start at the spec's directory.
pub fn resolve_file(spec_path: &Path, file: &str) -> PathBuf {
    let dir = spec_path.parent().unwrap_or_else(|| Path::new(""));
    dir.join(file)
}

/// The spec text cannot be rewritten.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RewriteError {
    /// Not valid TOML (already caught by parsing, kept for completeness).
    #[error("rollout spec is not valid TOML: {0}")]
    Toml(String),
    /// There is no `[release]` table.
    #[error("rollout spec has no [release] table")]
    NoRelease,
    /// The size does not fit a TOML integer.
    #[error("artifact size {0} bytes is too large for a TOML integer")]
    TooLarge(u64),
}

/// Rewrites `text` for an artifact in the store: drops `release.file` and sets
/// `release.source = "store:"`, `release.sha256` and `release.size`. Comments and key order
/// are not kept (the coordinator stores the rewritten spec).
pub fn with_store_release(text: &str, sha256: &str, size: u64) -> Result<String, RewriteError> {
    edit_release(text, |release| {
        let size_value = i64::try_from(size).map_err(|_| RewriteError::TooLarge(size))?;
        release.remove("file");
        release.insert("source".into(), toml::Value::String(STORE_SOURCE.into()));
        release.insert("sha256".into(), toml::Value::String(sha256.into()));
        release.insert("size".into(), toml::Value::Integer(size_value));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::spec::Budget;

    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn rewrites_file_into_store_release() {
        let table = [
            // The usual case.
            r#"
service = "demo"
[release]
version = "2.0.0"
file = "build/demo"
[strategy]
max_unavailable = "50%"
"#,
            // Stale sha256/size are replaced, dotted keys work, targets survive.
            r#"
service = "demo"
release.version = "2.0.0"
release.file = "/abs/demo"
release.sha256 = "00"
release.size = 1
targets.labels = { site = "a" }
"#,
        ];
        for text in table {
            let out = with_store_release(text, SHA, 1234).expect("rewrite");
            let spec = RolloutSpec::parse_resolved(&out)
                .unwrap_or_else(|e| panic!("rewritten spec should be complete: {e}\n{out}"));
            assert_eq!(spec.release.file, None, "{out}");
            assert_eq!(spec.release.source, STORE_SOURCE);
            assert_eq!(spec.release.sha256, SHA);
            assert_eq!(spec.release.size, 1234);
            assert_eq!(spec.release.version, "2.0.0");
            let original = RolloutSpec::parse(text).expect("original parses");
            assert_eq!(spec.targets, original.targets);
            assert_eq!(spec.strategy, original.strategy);
        }
        let spec =
            RolloutSpec::parse_resolved(&with_store_release(table[0], SHA, 1).expect("rewrite"))
                .expect("valid");
        assert_eq!(spec.strategy.max_unavailable, Budget::Percent(50));
    }

    #[test]
    fn rewrite_errors() {
        assert_eq!(
            with_store_release("service = \"x\"", SHA, 1),
            Err(RewriteError::NoRelease)
        );
        assert_eq!(
            with_store_release("service = \"x\"\nrelease = 3", SHA, 1),
            Err(RewriteError::NoRelease)
        );
        assert_eq!(
            with_store_release("[release]\nversion = \"1\"", SHA, u64::MAX),
            Err(RewriteError::TooLarge(u64::MAX))
        );
    }

    #[tokio::test]
    async fn plan_hashes_the_file_instead_of_pushing_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("build")).expect("mkdir");
        std::fs::write(dir.path().join("build/app"), b"abc").expect("write artifact");
        let other = "0".repeat(64);

        // (spec text, expected source, sha256, size, whether the text is sent as written)
        let table = [
            (
                "service = \"demo\"\n[release]\nversion = \"2\"\nfile = \"build/app\"\n\
                 [targets]\nlabels = { site = \"a\" }\n[strategy]\nmax_unavailable = \"50%\"\n\
                 group_by = \"site\"\ncanary = 1\nwaves = [\"50%\"]\n"
                    .to_string(),
                STORE_SOURCE,
                SHA,
                3,
                false,
            ),
            (
                // Stale sha256/size next to a file are replaced by the file's.
                "service = \"demo\"\nrelease.version = \"2\"\nrelease.file = \"build/app\"\n\
                 release.sha256 = \"00\"\nrelease.size = 1\n"
                    .to_string(),
                STORE_SOURCE,
                SHA,
                3,
                false,
            ),
            (
                format!(
                    "service = \"demo\"\n[release]\nversion = \"2\"\nsource = \"store:\"\n\
                     sha256 = \"{other}\"\nsize = 9\n"
                ),
                STORE_SOURCE,
                other.as_str(),
                9,
                true,
            ),
            (
                format!(
                    "service = \"demo\"\n[release]\nversion = \"2\"\n\
                     source = \"https://example.com/app\"\nsha256 = \"{other}\"\nsize = 9\n"
                ),
                "https://example.com/app",
                other.as_str(),
                9,
                true,
            ),
        ];
        for (i, (text, source, sha256, size, as_written)) in table.into_iter().enumerate() {
            let path = dir.path().join(format!("spec{i}.toml"));
            std::fs::write(&path, &text).expect("write spec");
            let loaded = load(&path).expect("loads");
            let (sent, hashed) = for_plan(&loaded).await.expect("resolves");
            assert_eq!(sent == text, as_written, "case {i}: {sent}");
            assert_eq!(hashed.is_none(), as_written, "case {i}");
            let spec = RolloutSpec::parse_resolved(&sent)
                .unwrap_or_else(|e| panic!("case {i}: {e}\n{sent}"));
            assert_eq!(spec.release.file, None, "case {i}");
            assert_eq!(spec.release.source, source, "case {i}");
            assert_eq!(spec.release.sha256, sha256, "case {i}");
            assert_eq!(spec.release.size, size, "case {i}");
            assert_eq!(spec.targets, loaded.spec.targets, "case {i}");
            assert_eq!(spec.strategy, loaded.spec.strategy, "case {i}");
        }

        // An empty artifact is refused, naming the spec and the file.
        std::fs::write(dir.path().join("empty"), b"").expect("write");
        let path = dir.path().join("empty.toml");
        std::fs::write(
            &path,
            "service = \"demo\"\n[release]\nversion = \"2\"\nfile = \"empty\"\n",
        )
        .expect("write spec");
        let err = format!(
            "{:#}",
            for_plan(&load(&path).expect("loads"))
                .await
                .expect_err("empty")
        );
        assert!(
            err.contains("empty.toml") && err.contains("release.file") && err.contains("is empty"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn signature_file_is_inlined_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let prefix = dir.path().join("k");
        let key = crate::release::keygen(&prefix).expect("keygen");
        let app = dir.path().join("app");
        std::fs::write(&app, b"abc").expect("write artifact");
        let expires =
            crate::release::parse_expires("1d", std::time::SystemTime::now()).expect("expires");
        let scope = rollgate_proto::signing::Scope::new("prod", "");
        crate::release::sign(&key.private, &scope, "demo", "2", expires, &app, None)
            .await
            .expect("sign");
        let spec = |version: &str| {
            let p = dir.path().join(format!("spec-{version}.toml"));
            std::fs::write(
                &p,
                format!(
                    "service = \"demo\"\n[release]\nversion = \"{version}\"\nfile = \"app\"\n\
                     signature_file = \"app.sig\"\n"
                ),
            )
            .expect("write spec");
            p
        };
        let loaded = load(&spec("2")).expect("loads");
        let (text, _) = for_plan(&loaded).await.expect("signed release resolves");
        let sent = RolloutSpec::parse_resolved(&text).expect("complete");
        assert_eq!(sent.release.signature_file, None);
        let sig = sent.release.signature.clone().expect("inlined");
        assert_eq!(sig.key_id, key.key_id);
        assert_eq!(
            sent.release.to_pb().signature.map(|s| s.signature.len()),
            Some(64)
        );

        // A signature of another version is caught before anything is sent.
        let err = format!(
            "{:#}",
            for_plan(&load(&spec("3")).expect("loads"))
                .await
                .expect_err("mismatch")
        );
        assert!(
            err.contains("does not sign this release") && err.contains("version \"2\", not \"3\""),
            "{err}"
        );
    }

    #[test]
    fn file_is_relative_to_the_spec() {
        let table = [
            ("deploy/rollout.toml", "build/app", "deploy/build/app"),
            ("rollout.toml", "app", "app"),
            ("/etc/r/rollout.toml", "/opt/app", "/opt/app"),
            ("/etc/r/rollout.toml", "../app", "/etc/r/../app"),
        ];
        for (spec, file, want) in table {
            assert_eq!(resolve_file(Path::new(spec), file), PathBuf::from(want));
        }
    }

    #[test]
    fn load_names_file_and_field() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write spec");
            p
        };
        std::fs::write(dir.path().join("app"), b"bytes").expect("write artifact");

        let ok = write(
            "ok.toml",
            "service = \"demo\"\n[release]\nversion = \"2\"\nfile = \"app\"\n",
        );
        let loaded = load(&ok).expect("loads");
        assert_eq!(loaded.artifact, Some(dir.path().join("app")));

        let cases = [
            (
                "missing.toml",
                "service = \"demo\"\n[release]\nversion = \"2\"\nfile = \"nope\"\n",
                "release.file \"nope\": cannot read",
            ),
            (
                "unresolved.toml",
                "service = \"demo\"\n[release]\nversion = \"2\"\n",
                "`release.source`",
            ),
            (
                "bad.toml",
                "service = \"demo\"\n[release]\nversion = \"2\"\nfile = \"app\"\n[strategy]\nmax_unavailable = 0\n",
                "max_unavailable",
            ),
        ];
        for (name, text, want) in cases {
            let path = write(name, text);
            let err = format!("{:#}", load(&path).expect_err(name));
            assert!(err.contains(name), "{err:?} should name the file {name}");
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
