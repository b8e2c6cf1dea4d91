//! `rollgate release keygen` and `rollgate release sign`: the publisher's ed25519 key pair and
//! the signature file agents check (see `deploy/SIGNING.md`; OpenSSL is a compatible tool).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use rollgate_proto::names;
use rollgate_proto::signing::{self, Scope, SignatureFile, Signed, SigningKey};

use crate::artifact;

/// How long a signature is accepted when `--expires` is not given.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(90 * 24 * 3600);

/// The files `keygen` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// The private key (PKCS#8 PEM, mode 0600).
    pub private: PathBuf,
    /// The public key to pin on the agents (SPKI PEM).
    pub public: PathBuf,
    /// Its key id.
    pub key_id: String,
}

/// `PREFIX` with `suffix` appended to its file name.
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes a new key pair as `PREFIX.key` (0600) and `PREFIX.pub`; refuses to overwrite either.
pub fn keygen(prefix: &Path) -> anyhow::Result<KeyFiles> {
    let private = with_suffix(prefix, ".key");
    let public = with_suffix(prefix, ".pub");
    for p in [&private, &public] {
        if std::fs::symlink_metadata(p).is_ok() {
            bail!(
                "{} already exists; a new key would orphan every signature made with it. Choose \
                 another --out, or remove the old files if you really mean to replace the key",
                p.display()
            );
        }
    }
    let key = SigningKey::generate()?;
    let write = |path: &Path, text: &str, mode: u32| -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(&private, &key.to_pem(), 0o600)?;
    write(&public, &key.public().to_pem(), 0o644)?;
    Ok(KeyFiles {
        private,
        public,
        key_id: key.public().key_id().to_string(),
    })
}

/// Parses `--expires`: a duration from now (`90d`, `12h`) or a time (`2027-01-31T00:00:00Z`).
pub fn parse_expires(text: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    let text = text.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let d = humantime::parse_duration(text).map_err(|_| {
        anyhow!(
            "--expires {text:?} is neither a duration such as \"90d\" nor a time such as \
             \"2027-01-31T00:00:00Z\""
        )
    })?;
    Ok(now + d)
}

/// Signs `artifact` as release `version` of `service` for `scope` (a fleet, optionally one
/// environment) with the key in `key`, valid until `expires`, and writes the signature file
/// to `out` (default `ARTIFACT.sig`). Returns what was written and where.
pub async fn sign(
    key: &Path,
    scope: &Scope,
    service: &str,
    version: &str,
    expires: SystemTime,
    artifact: &Path,
    out: Option<PathBuf>,
) -> anyhow::Result<(SignatureFile, PathBuf)> {
    names::check("service name", service).map_err(|e| anyhow!("--service: {e}"))?;
    names::check("version", version).map_err(|e| anyhow!("--version: {e}"))?;
    rollgate_proto::tls::check_fleet(&scope.fleet).map_err(|e| anyhow!("--fleet: {e}"))?;
    if !scope.env.is_empty() {
        names::check("environment", &scope.env).map_err(|e| anyhow!("--env: {e}"))?;
    }
    if expires <= SystemTime::now() {
        bail!("--expires is in the past; agents would refuse the signature at once");
    }
    let key = SigningKey::load(key)?;
    let hashed = artifact::hash_file(artifact)
        .await
        .with_context(|| format!("cannot hash {}", artifact.display()))?;
    let expires_unix = signing::unix(expires);
    let sig = key.sign(&Signed {
        fleet: &scope.fleet,
        env: &scope.env,
        service,
        version,
        sha256: &hashed.sha256,
        size: hashed.size,
        expires_unix,
    });
    let file = SignatureFile {
        fleet: scope.fleet.clone(),
        env: scope.env.clone(),
        service: service.to_string(),
        version: version.to_string(),
        sha256: hashed.sha256,
        size: hashed.size,
        expires: signing::from_unix(expires_unix),
        key_id: sig.key_id,
        signature: signing::b64().encode(&sig.signature),
    };
    let out = out.unwrap_or_else(|| with_suffix(artifact, ".sig"));
    std::fs::write(&out, file.to_toml())
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok((file, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::pb;
    use rollgate_proto::signing::PublicKey;

    #[tokio::test]
    async fn keygen_then_sign_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().join("release");
        let files = keygen(&prefix).expect("keygen");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&files.private)
                .expect("key")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let err = keygen(&prefix).expect_err("no overwrite").to_string();
        assert!(err.contains("already exists"), "{err}");

        let artifact = dir.path().join("demo-2.0.0");
        std::fs::write(&artifact, b"bytes").expect("artifact");
        let expires = parse_expires("30d", SystemTime::now()).expect("expires");
        let scope = Scope::new("prod", "");
        let (file, out) = sign(
            &files.private,
            &scope,
            "demo",
            "2.0.0",
            expires,
            &artifact,
            None,
        )
        .await
        .expect("sign");
        assert_eq!(out, dir.path().join("demo-2.0.0.sig"));
        let read = SignatureFile::parse(&std::fs::read_to_string(&out).expect("sig"), "sig")
            .expect("parse");
        assert_eq!(read, file);
        assert_eq!(read.size, 5);
        let public = PublicKey::load(&files.public).expect("public");
        assert_eq!(public.key_id(), files.key_id);
        let release = pb::Release {
            version: "2.0.0".into(),
            source: "store:".into(),
            sha256: read.sha256.clone(),
            size: read.size,
            signature: Some(read.spec().to_pb().expect("pb")),
        };
        signing::verify(
            std::slice::from_ref(&public),
            &scope,
            "demo",
            &release,
            SystemTime::now(),
        )
        .expect("verifies");
        let elsewhere = Scope::new("staging", "");
        assert!(
            signing::verify(&[public], &elsewhere, "demo", &release, SystemTime::now()).is_err()
        );
    }

    #[test]
    fn expires_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            parse_expires("1h", now).expect("duration"),
            now + Duration::from_secs(3600)
        );
        assert_eq!(
            signing::unix(parse_expires("2030-01-01T00:00:00Z", now).expect("time")),
            1_893_456_000
        );
        assert!(parse_expires("soon", now).is_err());
    }
}
