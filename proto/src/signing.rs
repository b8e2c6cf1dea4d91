//! Release signatures: ed25519 over (fleet, environment, service, version, sha256, size,
//! expiry), with keys in standard PEM so that OpenSSL is a compatible tool for making and
//! checking them.
//!
//! The signed message is [`Signed::message`]:
//!
//! ```text
//! rollgate-release-v2
//! fleet=<fleet>
//! env=<environment, or empty for every environment of the fleet>
//! service=<service>
//! version=<version>
//! sha256=<lowercase hex>
//! size=<bytes>
//! expires=<unix seconds>
//! ```
//!
//! (each line ends with `\n`). The fleet and environment do not travel with the release: an
//! agent rebuilds the message with its own (see [`Scope`]), so a signature made for another
//! fleet or environment does not verify there. A `rollgate-release-v1` signature (no fleet)
//! is recognised and refused by name ([`VerifyError::NoFleet`]). Keys: a private key is
//! PKCS#8 PEM (`BEGIN PRIVATE KEY`), a public key is SubjectPublicKeyInfo PEM (`BEGIN PUBLIC
//! KEY`); a key's id is the first 16 hex digits of the sha256 of its raw 32-byte public key.
//! With OpenSSL 3 instead of `rollgate release keygen` / `rollgate release sign`:
//!
//! ```text
//! openssl genpkey -algorithm ed25519 -out release.key
//! openssl pkey -in release.key -pubout -out release.pub
//! printf 'rollgate-release-v2\nfleet=%s\nenv=%s\nservice=%s\nversion=%s\nsha256=%s\nsize=%s\nexpires=%s\n' \
//!     prod "" demo 2.0.0 "$SHA256" "$SIZE" "$EXPIRES" > msg
//! openssl pkeyutl -sign -rawin -inkey release.key -in msg | base64 -w0
//! ```
//!
//! and the key id is `openssl pkey -pubin -in release.pub -outform DER | tail -c 32 |
//! sha256sum | cut -c1-16`. `deploy/SIGNING.md` has the whole procedure.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::pb;
use crate::spec::SignatureSpec;

/// First line of every signed message; a new format gets a new tag.
pub const MESSAGE_TAG: &str = "rollgate-release-v2";
/// The tag of the first format, which bound no fleet: recognised only to refuse it by name.
pub const OLD_MESSAGE_TAG: &str = "rollgate-release-v1";
/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Hex digits of a key id.
pub const KEY_ID_LEN: usize = 16;

/// DER of an Ed25519 SubjectPublicKeyInfo up to the raw key (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of an Ed25519 PKCS#8 v1 private key up to the 32-byte seed (RFC 8410), as OpenSSL
/// writes it.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// base64 as in PEM bodies and signature files (standard alphabet, padded).
pub fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A key that cannot be used; names the file (or "key") and the fix.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not the PEM block this kind of key needs.
    #[error("{what} is not {expected}: {problem}")]
    Format {
        /// The file (or "key").
        what: String,
        /// What was expected.
        expected: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// No random bytes for a new key.
    #[error("cannot generate a key: the system random source failed")]
    Random,
}

/// A pinned public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
    id: String,
}

impl PublicKey {
    /// The key from its raw 32 bytes.
    pub fn from_raw(raw: [u8; 32]) -> PublicKey {
        let id = hex::encode(Sha256::digest(raw))[..KEY_ID_LEN].to_string();
        PublicKey { raw, id }
    }

    /// Parses a `BEGIN PUBLIC KEY` PEM block holding an Ed25519 key. `what` names the source
    /// in errors.
    pub fn from_pem(text: &str, what: &str) -> Result<PublicKey, KeyError> {
        let bad = |problem: String| KeyError::Format {
            what: what.to_string(),
            expected: "an Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\")",
            problem,
        };
        let der = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes()).map_err(|e| {
            bad(format!(
                "{e}; make one with `rollgate release keygen` or `openssl pkey -in KEY -pubout`"
            ))
        })?;
        let bytes: &[u8] = der.as_ref();
        match bytes.strip_prefix(&SPKI_PREFIX[..]) {
            Some(raw) if raw.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(raw);
                Ok(PublicKey::from_raw(k))
            }
            _ => Err(bad(
                "it holds another kind of key (only Ed25519 signs releases)".into(),
            )),
        }
    }

    /// Reads [`PublicKey::from_pem`] from a file.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        PublicKey::from_pem(&text, &path.display().to_string())
    }

    /// The key as a `BEGIN PUBLIC KEY` PEM block.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem("PUBLIC KEY", &der)
    }

    /// First 16 hex digits of the sha256 of the raw key.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// A publisher's private key.
#[derive(Debug)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
    /// PKCS#8 v1 DER (what [`SigningKey::to_pem`] writes).
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey, KeyError> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        SigningKey::from_pkcs8(der, "new key")
    }

    fn from_pkcs8(der: Vec<u8>, what: &str) -> Result<SigningKey, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| KeyError::Format {
                what: what.to_string(),
                expected: "an Ed25519 private key in PKCS#8 PEM (\"-----BEGIN PRIVATE KEY-----\")",
                problem: format!(
                    "{e}; make one with `rollgate release keygen` or `openssl genpkey -algorithm \
                     ed25519`"
                ),
            })?;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey {
            pair,
            public: PublicKey::from_raw(raw),
            pkcs8: der,
        })
    }

    /// Parses a `BEGIN PRIVATE KEY` PEM block holding an Ed25519 key.
    pub fn from_pem(text: &str, what: &str) -> Result<SigningKey, KeyError> {
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).map_err(|e| KeyError::Format {
                what: what.to_string(),
                expected: "an Ed25519 private key in PKCS#8 PEM (\"-----BEGIN PRIVATE KEY-----\")",
                problem: e.to_string(),
            })?;
        SigningKey::from_pkcs8(der.secret_pkcs8_der().to_vec(), what)
    }

    /// Reads [`SigningKey::from_pem`] from a file.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        SigningKey::from_pem(&text, &path.display().to_string())
    }

    /// The key as a `BEGIN PRIVATE KEY` PEM block (keep it secret).
    pub fn to_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8)
    }

    /// The public half, to pin on the agents.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `release`.
    pub fn sign(&self, release: &Signed<'_>) -> pb::ReleaseSignature {
        pb::ReleaseSignature {
            key_id: self.public.key_id().to_string(),
            signature: self.pair.sign(&release.message()).as_ref().to_vec(),
            expires_unix: release.expires_unix,
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = b64().encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Where a signature is valid: a fleet and, optionally, one environment of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The fleet (as in the certificates' `spiffe://FLEET/...`).
    pub fleet: String,
    /// The environment (`staging`, `production`); empty: every environment of the fleet.
    pub env: String,
}

impl Scope {
    /// `fleet` with environment `env` (empty: any).
    pub fn new(fleet: &str, env: &str) -> Scope {
        Scope {
            fleet: fleet.to_string(),
            env: env.to_string(),
        }
    }

    /// How an operator reads it: `fleet prod` or `fleet prod, environment staging`.
    pub fn describe(&self) -> String {
        if self.env.is_empty() {
            format!("fleet {}", self.fleet)
        } else {
            format!("fleet {}, environment {}", self.fleet, self.env)
        }
    }
}

/// What a signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<'a> {
    /// The fleet it installs in.
    pub fleet: &'a str,
    /// The environment it installs in; empty: every environment of the fleet.
    pub env: &'a str,
    /// Service name.
    pub service: &'a str,
    /// Release version.
    pub version: &'a str,
    /// Lowercase hex sha256 of the artifact.
    pub sha256: &'a str,
    /// Exact size in bytes.
    pub size: u64,
    /// Unix seconds after which the signature is refused.
    pub expires_unix: i64,
}

impl<'a> Signed<'a> {
    /// The fields of `release` of `service` in `scope`, with the expiry its signature claims
    /// (0 without).
    pub fn of(scope: &'a Scope, service: &'a str, release: &'a pb::Release) -> Signed<'a> {
        Signed {
            fleet: &scope.fleet,
            env: &scope.env,
            service,
            version: &release.version,
            sha256: &release.sha256,
            size: release.size,
            expires_unix: release.signature.as_ref().map_or(0, |s| s.expires_unix),
        }
    }

    /// The exact bytes that are signed (see the module docs).
    pub fn message(&self) -> Vec<u8> {
        format!(
            "{MESSAGE_TAG}\nfleet={}\nenv={}\n{}",
            self.fleet,
            self.env,
            self.body()
        )
        .into_bytes()
    }

    /// The bytes a `rollgate-release-v1` signature covered (no fleet): only to recognise one.
    fn old_message(&self) -> Vec<u8> {
        format!("{OLD_MESSAGE_TAG}\n{}", self.body()).into_bytes()
    }

    fn body(&self) -> String {
        format!(
            "service={}\nversion={}\nsha256={}\nsize={}\nexpires={}\n",
            self.service, self.version, self.sha256, self.size, self.expires_unix
        )
    }
}

/// Why a release's signature is refused. Each message says what is wrong and what to do;
/// the agent adds which host and which release.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    /// No signature at all.
    #[error(
        "it is not signed, and this host only installs signed releases of this service; sign \
         the artifact with `rollgate release sign` and give the signature in the rollout spec \
         (release.signature_file)"
    )]
    Unsigned,
    /// Signed by a key this host does not pin.
    #[error(
        "it is signed by key {key_id}, which this host does not trust (pinned: {pinned}); sign \
         it with a pinned key, or pin the public key of {key_id} in the agent's [signing] keys"
    )]
    UnknownKey {
        /// The key id the signature names.
        key_id: String,
        /// The pinned key ids, comma-separated.
        pinned: String,
    },
    /// The signature does not verify for this host's fleet and environment.
    #[error(
        "its signature by key {key_id} does not match it for {scope}: it was signed for \
         another fleet or environment, or the service, version, sha256, size or expiry were \
         changed after signing; sign this exact artifact for this fleet with `rollgate release \
         sign --fleet FLEET [--env ENV]`"
    )]
    BadSignature {
        /// The key id the signature names.
        key_id: String,
        /// This host's fleet and environment, as [`Scope::describe`] says them.
        scope: String,
    },
    /// A valid signature in the first format, which binds no fleet.
    #[error(
        "its signature by key {key_id} is in the old rollgate-release-v1 format, which names no \
         fleet, so a build signed for one fleet or environment could install in another; \
         such signatures are refused. Sign it again with `rollgate release sign --fleet \
         FLEET [--env ENV]` (rollgate 0.2 or later)"
    )]
    NoFleet {
        /// The key id the signature names.
        key_id: String,
    },
    /// The signature's validity ended.
    #[error(
        "its signature by key {key_id} expired at {expired_at}; sign it again with a later \
         expiry (`rollgate release sign --expires 90d`)"
    )]
    Expired {
        /// The key id the signature names.
        key_id: String,
        /// When it expired (RFC 3339).
        expired_at: String,
    },
}

/// Checks the signature `release` carries against the pinned `keys` at `now`: a known key,
/// a valid signature over (fleet, environment, service, version, sha256, size, expiry) for
/// `scope` (a signature for the whole fleet, without environment, is valid in each of its
/// environments), not expired. The bytes themselves are checked against sha256 and size when
/// they are downloaded.
pub fn verify(
    keys: &[PublicKey],
    scope: &Scope,
    service: &str,
    release: &pb::Release,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let Some(sig) = &release.signature else {
        return Err(VerifyError::Unsigned);
    };
    if sig.key_id.is_empty() && sig.signature.is_empty() {
        return Err(VerifyError::Unsigned);
    }
    let Some(key) = keys.iter().find(|k| k.key_id() == sig.key_id) else {
        return Err(VerifyError::UnknownKey {
            key_id: sig.key_id.clone(),
            pinned: keys
                .iter()
                .map(|k| k.key_id().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    // The signature first: an expiry is only worth reporting when it is the publisher's.
    let fleet_wide = Scope::new(&scope.fleet, "");
    let signed = Signed::of(scope, service, release);
    let valid = key.verifies(&signed.message(), &sig.signature)
        || (!scope.env.is_empty()
            && key.verifies(
                &Signed::of(&fleet_wide, service, release).message(),
                &sig.signature,
            ));
    if !valid {
        if key.verifies(&signed.old_message(), &sig.signature) {
            return Err(VerifyError::NoFleet {
                key_id: sig.key_id.clone(),
            });
        }
        return Err(VerifyError::BadSignature {
            key_id: sig.key_id.clone(),
            scope: scope.describe(),
        });
    }
    if unix(now) >= sig.expires_unix {
        return Err(VerifyError::Expired {
            key_id: sig.key_id.clone(),
            expired_at: rfc3339(sig.expires_unix),
        });
    }
    Ok(())
}

/// Unix seconds of `t` (negative before 1970).
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The time at unix second `secs`.
pub fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Unix second `secs` as RFC 3339 (UTC).
pub fn rfc3339(secs: i64) -> String {
    humantime_serde::re::humantime::format_rfc3339_seconds(from_unix(secs)).to_string()
}

/// A signature file as `rollgate release sign` writes it next to the artifact
/// (`ARTIFACT.sig`, TOML). It repeats what was signed so that a mix-up is caught by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// The fleet it installs in (absent in files of the old format, which agents refuse).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fleet: String,
    /// The environment it installs in; empty: every environment of the fleet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env: String,
    /// Service name.
    pub service: String,
    /// Release version.
    pub version: String,
    /// Lowercase hex sha256 of the artifact.
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
    /// When the signature stops being accepted (RFC 3339).
    #[serde(with = "humantime_serde")]
    pub expires: SystemTime,
    /// Which key signed (see [`PublicKey::key_id`]).
    pub key_id: String,
    /// The ed25519 signature, base64.
    pub signature: String,
}

impl SignatureFile {
    /// Parses a signature file; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<SignatureFile, String> {
        let f: SignatureFile = toml::from_str(text).map_err(|e| {
            format!("{what} is not a rollgate signature file (from `rollgate release sign`): {e}")
        })?;
        f.spec()
            .check()
            .map_err(|problem| format!("{what}: {problem}"))?;
        if f.fleet.is_empty() {
            return Err(format!(
                "{what} names no fleet: it was made by an older `rollgate release sign` \
                 (rollgate-release-v1 signatures), which agents refuse; sign the artifact again \
                 with `rollgate release sign --fleet FLEET [--env ENV]`"
            ));
        }
        crate::tls::check_fleet(&f.fleet).map_err(|e| format!("{what}: fleet: {e}"))?;
        Ok(f)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("# rollgate release signature (`rollgate release sign`)\n{body}")
    }

    /// The signature part, as a rollout spec carries it.
    pub fn spec(&self) -> SignatureSpec {
        SignatureSpec {
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
            expires: self.expires,
        }
    }

    /// Checks that the file signs this release; the error names each field that differs.
    pub fn check_matches(
        &self,
        service: &str,
        version: &str,
        sha256: &str,
        size: u64,
    ) -> Result<(), String> {
        let mut diffs = Vec::new();
        if self.service != service {
            diffs.push(format!("service {:?}, not {service:?}", self.service));
        }
        if self.version != version {
            diffs.push(format!("version {:?}, not {version:?}", self.version));
        }
        if self.sha256 != sha256 {
            diffs.push(format!("sha256 {}, not {sha256}", self.sha256));
        }
        if self.size != size {
            diffs.push(format!("size {}, not {size}", self.size));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "it signs {}; sign this release with `rollgate release sign --service \
                 {service} --version {version} ARTIFACT`",
                diffs.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(sig: Option<pb::ReleaseSignature>) -> pb::Release {
        pb::Release {
            version: "2.0.0".into(),
            source: "store:".into(),
            sha256: "ab".repeat(32),
            size: 1234,
            signature: sig,
        }
    }

    fn signed(key: &SigningKey, expires_unix: i64) -> pb::Release {
        let r = release(None);
        let sig = key.sign(&Signed {
            expires_unix,
            ..Signed::of(&prod(), "demo", &r)
        });
        release(Some(sig))
    }

    fn prod() -> Scope {
        Scope::new("prod", "")
    }

    fn later() -> i64 {
        unix(SystemTime::now()) + 3600
    }

    #[test]
    fn round_trip_and_pem() {
        let key = SigningKey::generate().expect("key");
        let again = SigningKey::from_pem(&key.to_pem(), "k").expect("private pem");
        assert_eq!(again.public(), key.public());
        let public = PublicKey::from_pem(&key.public().to_pem(), "p").expect("public pem");
        assert_eq!(&public, key.public());
        assert_eq!(public.key_id().len(), KEY_ID_LEN);
        let r = signed(&key, later());
        assert_eq!(r.signature.as_ref().map(|s| s.signature.len()), Some(64));
        verify(&[public], &prod(), "demo", &r, SystemTime::now()).expect("valid");
    }

    #[test]
    fn every_tamper_is_refused() {
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("key");
        let keys = [key.public().clone()];
        let now = SystemTime::now();
        let good = signed(&key, later());
        let id = key.public().key_id().to_string();
        let bad = || {
            Err(VerifyError::BadSignature {
                key_id: id.clone(),
                scope: "fleet prod".into(),
            })
        };

        assert_eq!(
            verify(&keys, &prod(), "demo", &release(None), now),
            Err(VerifyError::Unsigned)
        );
        assert_eq!(
            verify(&keys, &prod(), "other", &good, now),
            bad(),
            "service"
        );
        let mut r = good.clone();
        r.version = "2.0.1".into();
        assert_eq!(verify(&keys, &prod(), "demo", &r, now), bad(), "version");
        let mut r = good.clone();
        r.sha256 = "cd".repeat(32);
        assert_eq!(verify(&keys, &prod(), "demo", &r, now), bad(), "sha256");
        let mut r = good.clone();
        r.size += 1;
        assert_eq!(verify(&keys, &prod(), "demo", &r, now), bad(), "size");
        let mut r = good.clone();
        if let Some(s) = r.signature.as_mut() {
            s.expires_unix += 86_400;
        }
        assert_eq!(
            verify(&keys, &prod(), "demo", &r, now),
            bad(),
            "expiry extended"
        );
        let mut r = good.clone();
        if let Some(s) = r.signature.as_mut() {
            s.signature[0] ^= 1;
        }
        assert_eq!(
            verify(&keys, &prod(), "demo", &r, now),
            bad(),
            "signature bytes"
        );

        // Another key's signature, named honestly: unknown key, with the pinned ones listed.
        let theirs = signed(&other, later());
        match verify(&keys, &prod(), "demo", &theirs, now) {
            Err(e @ VerifyError::UnknownKey { .. }) => {
                assert!(e.to_string().contains(&id), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Another key's signature passed off under the pinned key's id.
        let mut r = theirs.clone();
        if let Some(s) = r.signature.as_mut() {
            s.key_id = id.clone();
        }
        assert_eq!(
            verify(&keys, &prod(), "demo", &r, now),
            bad(),
            "forged key id"
        );

        let old = signed(&key, unix(now) - 10);
        match verify(&keys, &prod(), "demo", &old, now) {
            Err(VerifyError::Expired { expired_at, .. }) => {
                assert_eq!(expired_at, rfc3339(unix(now) - 10))
            }
            other => panic!("{other:?}"),
        }
    }

    /// A signature is valid only in its fleet (and its environment, when it names one); a
    /// v1 signature (no fleet) is recognised and refused by name.
    #[test]
    fn fleet_and_environment_binding() {
        let key = SigningKey::generate().expect("key");
        let keys = [key.public().clone()];
        let now = SystemTime::now();
        let unsigned = release(None);
        let sign_for = |scope: &Scope| {
            release(Some(key.sign(&Signed {
                expires_unix: later(),
                ..Signed::of(scope, "demo", &unsigned)
            })))
        };
        let staging = Scope::new("prod", "staging");
        let production = Scope::new("prod", "production");
        let fleet_wide = sign_for(&prod());
        let staging_only = sign_for(&staging);
        // (signature, host's scope, accepted)
        let table = [
            (&fleet_wide, &prod(), true),
            (&fleet_wide, &staging, true),
            (&fleet_wide, &production, true),
            (&staging_only, &staging, true),
            (&staging_only, &production, false),
            (&staging_only, &prod(), false),
            (&fleet_wide, &Scope::new("other", ""), false),
        ];
        for (r, scope, ok) in table {
            let got = verify(&keys, scope, "demo", r, now);
            assert_eq!(got.is_ok(), ok, "{scope:?}: {got:?}");
        }
        let e = verify(&keys, &production, "demo", &staging_only, now).expect_err("staging");
        assert!(
            e.to_string()
                .contains("for fleet prod, environment production"),
            "{e}"
        );

        let fleet_scope = prod();
        let v1 = Signed::of(&fleet_scope, "demo", &unsigned);
        let old = pb::ReleaseSignature {
            key_id: key.public().key_id().to_string(),
            signature: key.pair.sign(&v1.old_message()).as_ref().to_vec(),
            expires_unix: 0,
        };
        let e = verify(&keys, &prod(), "demo", &release(Some(old)), now).expect_err("v1");
        assert!(matches!(e, VerifyError::NoFleet { .. }), "{e:?}");
        assert!(e.to_string().contains("--fleet"), "{e}");
    }

    #[test]
    fn several_pinned_keys() {
        let (a, b) = (
            SigningKey::generate().expect("key"),
            SigningKey::generate().expect("key"),
        );
        let keys = [a.public().clone(), b.public().clone()];
        for k in [&a, &b] {
            verify(
                &keys,
                &prod(),
                "demo",
                &signed(k, later()),
                SystemTime::now(),
            )
            .expect("pinned");
        }
    }

    #[test]
    fn wrong_kinds_of_pem_are_refused() {
        let key = SigningKey::generate().expect("key");
        let e = PublicKey::from_pem(&key.to_pem(), "x.pem").expect_err("private as public");
        assert!(e.to_string().contains("x.pem"), "{e}");
        assert!(SigningKey::from_pem(&key.public().to_pem(), "x").is_err());
        assert!(PublicKey::from_pem("hello", "x").is_err());
    }

    #[test]
    fn signature_file_round_trip_and_mismatch() {
        let key = SigningKey::generate().expect("key");
        let r = signed(&key, 2_000_000_000);
        let sig = r.signature.clone().expect("sig");
        let f = SignatureFile {
            fleet: "prod".into(),
            env: String::new(),
            service: "demo".into(),
            version: r.version.clone(),
            sha256: r.sha256.clone(),
            size: r.size,
            expires: from_unix(sig.expires_unix),
            key_id: sig.key_id.clone(),
            signature: b64().encode(&sig.signature),
        };
        let text = f.to_toml();
        assert!(
            text.contains("expires = \"2033-05-18T03:33:20Z\""),
            "{text}"
        );
        assert_eq!(SignatureFile::parse(&text, "f").expect("parse"), f);
        assert_eq!(f.spec().to_pb().expect("pb"), sig);
        f.check_matches("demo", "2.0.0", &r.sha256, r.size)
            .expect("match");
        let e = f
            .check_matches("demo", "2.0.1", &r.sha256, 99)
            .expect_err("mismatch");
        assert!(e.contains("version \"2.0.0\", not \"2.0.1\""), "{e}");
        assert!(e.contains("size 1234, not 99"), "{e}");
    }

    /// OpenSSL is a compatible tool: a key from `openssl genpkey` signs with `openssl
    /// pkeyutl -rawin`, and we verify; our key is readable by OpenSSL and its key id matches.
    #[test]
    fn openssl_compatible() {
        let Ok(out) = std::process::Command::new("openssl")
            .arg("version")
            .output()
        else {
            eprintln!("openssl not installed; skipping the compatibility check");
            return;
        };
        assert!(out.status.success());
        let dir = std::env::temp_dir().join(format!("rollgate-sign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        run(&["genpkey", "-algorithm", "ed25519", "-out", "k.pem"]);
        run(&["pkey", "-in", "k.pem", "-pubout", "-out", "p.pem"]);
        let expires = later();
        let unsigned = release(None);
        let msg = Signed {
            expires_unix: expires,
            ..Signed::of(&prod(), "demo", &unsigned)
        }
        .message();
        std::fs::write(dir.join("msg"), &msg).expect("msg");
        let sig = run(&[
            "pkeyutl", "-sign", "-rawin", "-inkey", "k.pem", "-in", "msg",
        ]);
        let public = PublicKey::load(&dir.join("p.pem")).expect("openssl public key");
        let ours = SigningKey::load(&dir.join("k.pem")).expect("openssl private key");
        assert_eq!(ours.public(), &public);
        let r = release(Some(pb::ReleaseSignature {
            key_id: public.key_id().to_string(),
            signature: sig.clone(),
            expires_unix: expires,
        }));
        verify(&[public], &prod(), "demo", &r, SystemTime::now()).expect("openssl's signature");
        // Ed25519 is deterministic: our signature with OpenSSL's key is the same bytes.
        assert_eq!(ours.sign(&Signed::of(&prod(), "demo", &r)).signature, sig);

        // The other way: OpenSSL reads our keys and verifies our signature.
        let key = SigningKey::generate().expect("key");
        std::fs::write(dir.join("ours.pem"), key.to_pem()).expect("write");
        std::fs::write(dir.join("ours.pub"), key.public().to_pem()).expect("write");
        let sig = key.sign(&Signed {
            expires_unix: expires,
            ..Signed::of(&prod(), "demo", &unsigned)
        });
        std::fs::write(dir.join("sig"), &sig.signature).expect("write");
        run(&["pkey", "-in", "ours.pem", "-noout"]);
        run(&[
            "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "ours.pub", "-in", "msg",
            "-sigfile", "sig",
        ]);
        let der = run(&["pkey", "-pubin", "-in", "ours.pub", "-outform", "DER"]);
        let id = hex::encode(Sha256::digest(&der[der.len() - 32..]));
        assert_eq!(&id[..KEY_ID_LEN], key.public().key_id());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
