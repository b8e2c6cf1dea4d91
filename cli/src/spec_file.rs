//! Reading a rollout spec file and, when it names a local `release.file`, rewriting it into a
//! release in the coordinator's store once the file is pushed.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use rollgate_proto::spec::RolloutSpec;
use thiserror::Error;

/// `release.source` for an artifact in the coordinator's store.
pub const STORE_SOURCE: &str = "store:";

/// A spec read from disk and checked as far as possible without the coordinator.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// The file's text, sent as is when there is nothing to push.
    pub text: String,
    /// The parsed spec.
    pub spec: RolloutSpec,
    /// `release.file`, resolved against the spec file's directory.
    pub artifact: Option<PathBuf>,
}

/// Reads and checks the spec at `path`. Errors name the file and the field.
pub fn load(path: &Path) -> anyhow::Result<LoadedSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rollout spec {}", path.display()))?;
    let spec = RolloutSpec::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
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
        None => {
            // Nothing to push: the spec must already be complete.
            RolloutSpec::parse_resolved(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            None
        }
    };
    Ok(LoadedSpec {
        text,
        spec,
        artifact,
    })
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

/// Rewrites `text` for an artifact pushed to the store: drops `release.file` and sets
/// `release.source = "store:"`, `release.sha256` and `release.size`. Comments and key order
/// are not kept (the coordinator stores the rewritten spec).
pub fn with_pushed_release(text: &str, sha256: &str, size: u64) -> Result<String, RewriteError> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| RewriteError::Toml(e.to_string()))?;
    let release = doc
        .get_mut("release")
        .and_then(toml::Value::as_table_mut)
        .ok_or(RewriteError::NoRelease)?;
    let size_value = i64::try_from(size).map_err(|_| RewriteError::TooLarge(size))?;
    release.remove("file");
    release.insert("source".into(), toml::Value::String(STORE_SOURCE.into()));
    release.insert("sha256".into(), toml::Value::String(sha256.into()));
    release.insert("size".into(), toml::Value::Integer(size_value));
    toml::to_string(&doc).map_err(|e| RewriteError::Toml(e.to_string()))
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
            let out = with_pushed_release(text, SHA, 1234).expect("rewrite");
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
            RolloutSpec::parse_resolved(&with_pushed_release(table[0], SHA, 1).expect("rewrite"))
                .expect("valid");
        assert_eq!(spec.strategy.max_unavailable, Budget::Percent(50));
    }

    #[test]
    fn rewrite_errors() {
        assert_eq!(
            with_pushed_release("service = \"x\"", SHA, 1),
            Err(RewriteError::NoRelease)
        );
        assert_eq!(
            with_pushed_release("service = \"x\"\nrelease = 3", SHA, 1),
            Err(RewriteError::NoRelease)
        );
        assert_eq!(
            with_pushed_release("[release]\nversion = \"1\"", SHA, u64::MAX),
            Err(RewriteError::TooLarge(u64::MAX))
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
