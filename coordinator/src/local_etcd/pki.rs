//! The local etcd's own private CA and certificates under `state_dir/etcd-pki`: made on first
//! start, reused while they are sound, made anew (all of them) when one is missing, broken, open
//! to other users or about to expire.
//!
//! The CA is the local etcd's alone, apart from the fleet CA on purpose: etcd trusts nothing
//! else, so no host or operator certificate can ever reach rollgate's state, and only the
//! coordinator's user can read the keys that can.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::config::EtcdTlsConfig;

/// The directory under `state_dir`.
pub const PKI_DIR: &str = "etcd-pki";
/// The address the local etcd listens on; its server certificate names it (and `localhost`).
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long etcd's and the coordinator's certificates are valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 86_400);
/// At start, certificates that expire sooner than this are made anew.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Validity starts this far in the past, so a clock stepped back a little (NTP) does not make
/// fresh certificates "not yet valid".
const BACKDATE: Duration = Duration::from_secs(3600);
/// The directory: only the coordinator's user may list or enter it.
const DIR_MODE: u32 = 0o700;
/// Private keys: only the coordinator's user may read them.
const KEY_MODE: u32 = 0o600;
/// Certificates (public, inside the private directory).
const CERT_MODE: u32 = 0o644;
/// Permission bits for the group and other users: a key with any of them set is replaced.
const GROUP_OTHERS_MASK: u32 = 0o077;

/// The files of the local etcd's PKI.
#[derive(Debug, Clone)]
pub struct LocalPki {
    /// `state_dir/etcd-pki`.
    pub dir: PathBuf,
    /// The CA certificate etcd trusts for client and peer certificates (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// The CA's key (kept to issue an extra client certificate by hand, e.g. for etcdctl).
    pub ca_key: PathBuf,
    /// etcd's certificate for its client and peer listeners (serverAuth and clientAuth).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The coordinator's client certificate (clientAuth).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl LocalPki {
    /// The file names under `state_dir/etcd-pki`.
    pub fn at(state_dir: &Path) -> Self {
        let dir = state_dir.join(PKI_DIR);
        LocalPki {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        }
    }

    /// Reuses the CA and certificates under `state_dir/etcd-pki` when they check out, or makes
    /// them (all anew) when they do not.
    pub fn ensure(state_dir: &Path) -> anyhow::Result<Self> {
        let pki = Self::at(state_dir);
        private_dir(&pki.dir)?;
        let now = SystemTime::now();
        match pki.check(now) {
            Ok(()) => tracing::debug!(dir = %pki.dir.display(), "reusing the local etcd's CA"),
            Err(why) => {
                tracing::info!(
                    dir = %pki.dir.display(),
                    %why,
                    "making a new private CA and certificates for the local etcd"
                );
                pki.create(now)?;
                pki.check(now).map_err(|why| {
                    anyhow::anyhow!(
                        "the certificates just made for the local etcd in {} do not check out: \
                         {why}",
                        pki.dir.display()
                    )
                })?;
            }
        }
        Ok(pki)
    }

    /// The `[etcd.tls]` the coordinator connects to the local etcd with.
    pub fn client_tls(&self) -> EtcdTlsConfig {
        EtcdTlsConfig {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
        }
    }

    /// A rustls client config trusting only the local CA and presenting the coordinator's
    /// client certificate (for the health check).
    pub fn rustls_client(&self) -> anyhow::Result<rustls::ClientConfig> {
        let provider = provider();
        let ca = read_cert(&self.ca).map_err(anyhow::Error::msg)?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca)
            .with_context(|| format!("{} is not a usable CA", self.ca.display()))?;
        let cert = read_cert(&self.client_cert).map_err(anyhow::Error::msg)?;
        let key = read_key(&self.client_key).map_err(anyhow::Error::msg)?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
            .with_context(|| format!("cannot use {}", self.client_cert.display()))
    }

    /// Why the files cannot be reused at `now`, if they cannot: one is missing or not PEM, a
    /// key is open to other users or does not match its certificate, a certificate is not
    /// this CA's or lacks its usage, or one expires within [`RENEW_BEFORE`].
    fn check(&self, now: SystemTime) -> Result<(), String> {
        for key in [&self.ca_key, &self.server_key, &self.client_key] {
            let meta = fs::metadata(key).map_err(|e| format!("{}: {e}", key.display()))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & GROUP_OTHERS_MASK != 0 {
                return Err(format!(
                    "{} is open to other users (mode {mode:03o})",
                    key.display()
                ));
            }
        }
        let provider = provider();
        let ca = read_cert(&self.ca)?;
        matching_key(&ca, &self.ca, &self.ca_key, &provider)?;
        let ca_pem =
            fs::read_to_string(&self.ca).map_err(|e| format!("{}: {e}", self.ca.display()))?;
        let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
            .map_err(|e| format!("{}: {e}", self.ca.display()))?;
        let renew_at = now + RENEW_BEFORE;
        if ca_params.not_after < OffsetDateTime::from(renew_at) {
            return Err(format!(
                "the CA {} expires on {}",
                self.ca.display(),
                ca_params.not_after
            ));
        }
        // WebPKI checks chain, usage, names and validity; checking "now + RENEW_BEFORE" also
        // refuses a certificate that is about to expire.
        let at = UnixTime::since_unix_epoch(
            renew_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|e| e.to_string())?,
        );
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca)
            .map_err(|e| format!("{}: {e}", self.ca.display()))?;
        let roots = Arc::new(roots);

        let server = read_cert(&self.server_cert)?;
        matching_key(&server, &self.server_cert, &self.server_key, &provider)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(
                &server,
                &[],
                &ServerName::IpAddress(IpAddr::V4(LOOPBACK).into()),
                &[],
                at,
            )
            .map_err(|e| {
                format!(
                    "{} is not usable for 30 more days: {e}",
                    self.server_cert.display()
                )
            })?;

        let client = read_cert(&self.client_cert)?;
        matching_key(&client, &self.client_cert, &self.client_key, &provider)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?;
        verifier.verify_client_cert(&client, &[], at).map_err(|e| {
            format!(
                "{} is not usable for 30 more days: {e}",
                self.client_cert.display()
            )
        })?;
        Ok(())
    }

    /// Makes a new CA and both certificates, replacing whatever was there.
    fn create(&self, now: SystemTime) -> anyhow::Result<()> {
        let start = OffsetDateTime::from(now - BACKDATE);
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name("rollgate coordinator's local etcd CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = start;
        params.not_after = OffsetDateTime::from(now + CA_VALIDITY);
        let ca_key = KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;

        let leaf = |cn: &str, usages: Vec<ExtendedKeyUsagePurpose>, sans: Vec<SanType>| {
            let mut params = CertificateParams::default();
            params.distinguished_name = common_name(cn);
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = usages;
            params.subject_alt_names = sans;
            params.use_authority_key_identifier_extension = true;
            params.not_before = start;
            params.not_after = OffsetDateTime::from(now + LEAF_VALIDITY);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca, &ca_key)?;
            Ok::<_, rcgen::Error>((cert, key))
        };
        // etcd presents this on its client and peer listeners; clientAuth too, as etcd would
        // use it to dial other members (it has none).
        let (server, server_key) = leaf(
            "rollgate local etcd",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            vec![
                SanType::IpAddress(IpAddr::V4(LOOPBACK)),
                SanType::DnsName("localhost".try_into()?),
            ],
        )?;
        let (client, client_key) = leaf(
            "rollgate coordinator",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            Vec::new(),
        )?;

        write_file(&self.ca_key, ca_key.serialize_pem().as_bytes(), KEY_MODE)?;
        write_file(&self.ca, ca.pem().as_bytes(), CERT_MODE)?;
        write_file(
            &self.server_key,
            server_key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        write_file(&self.server_cert, server.pem().as_bytes(), CERT_MODE)?;
        write_file(
            &self.client_key,
            client_key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        write_file(&self.client_cert, client.pem().as_bytes(), CERT_MODE)?;
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, String> {
    CertificateDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Fails unless `key` holds the private key of `cert` (rustls compares the public keys).
fn matching_key(
    cert: &CertificateDer<'static>,
    cert_path: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(), String> {
    CertifiedKey::from_der(vec![cert.clone()], read_key(key)?, provider)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{} is not the key of {}: {e}",
                key.display(),
                cert_path.display()
            )
        })
}

/// Creates `dir` (mode 0700), or narrows an existing one to 0700.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("cannot make {} private (mode 700)", dir.display()))
}

/// Writes `bytes` to `path` with `mode` through a temporary file and a rename, so a crash
/// leaves the old file or the new one, never half of one.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(pki: &LocalPki) -> Vec<Vec<u8>> {
        [
            &pki.ca,
            &pki.ca_key,
            &pki.server_cert,
            &pki.server_key,
            &pki.client_cert,
            &pki.client_key,
        ]
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn made_private_once_then_reused() {
        let state = tempfile::tempdir().expect("tempdir");
        let pki = LocalPki::ensure(state.path()).expect("made");
        assert_eq!(mode(&pki.dir), 0o700);
        for key in [&pki.ca_key, &pki.server_key, &pki.client_key] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        let first = contents(&pki);
        let again = LocalPki::ensure(state.path()).expect("reused");
        assert_eq!(contents(&again), first, "a sound PKI is reused as it is");
        pki.rustls_client().expect("client config");
        let tls = pki.client_tls();
        assert_eq!(tls.ca.as_deref(), Some(pki.ca.as_path()));
    }

    #[test]
    fn a_broken_open_or_foreign_file_means_a_new_pki() {
        let state = tempfile::tempdir().expect("tempdir");
        let pki = LocalPki::ensure(state.path()).expect("made");
        let other = tempfile::tempdir().expect("tempdir");
        let foreign = LocalPki::ensure(other.path()).expect("made");

        type Damage = fn(&LocalPki, &LocalPki);
        let cases: [(&str, Damage, &str); 6] = [
            (
                "missing CA",
                |p, _| fs::remove_file(&p.ca).expect("rm"),
                "ca.pem",
            ),
            (
                "corrupt client key",
                |p, _| fs::write(&p.client_key, "junk").expect("write"),
                "client.key",
            ),
            (
                "key open to others",
                |p, _| {
                    fs::set_permissions(&p.server_key, fs::Permissions::from_mode(0o644))
                        .expect("chmod")
                },
                "open to other users",
            ),
            (
                "server certificate of another CA",
                |p, f| {
                    fs::copy(&f.server_cert, &p.server_cert).expect("cp");
                    fs::copy(&f.server_key, &p.server_key).expect("cp");
                },
                "invalid peer certificate",
            ),
            (
                "client key of another certificate",
                |p, f| {
                    fs::copy(&f.client_key, &p.client_key)
                        .map(|_| ())
                        .expect("cp")
                },
                "is not the key of",
            ),
            (
                "CA key of another CA",
                |p, f| fs::copy(&f.ca_key, &p.ca_key).map(|_| ()).expect("cp"),
                "is not the key of",
            ),
        ];
        for (name, damage, why) in cases {
            let before = contents(&LocalPki::ensure(state.path()).expect("sound"));
            damage(&pki, &foreign);
            let err = pki.check(SystemTime::now()).expect_err(name);
            assert!(err.contains(why), "{name}: {err}");
            let after = LocalPki::ensure(state.path()).expect(name);
            pki.check(SystemTime::now()).expect(name);
            assert_ne!(contents(&after)[0], before[0], "{name}: a new CA");
        }
    }

    #[test]
    fn certificates_are_renewed_within_thirty_days_of_expiry() {
        let state = tempfile::tempdir().expect("tempdir");
        let pki = LocalPki::ensure(state.path()).expect("made");
        let now = SystemTime::now();
        pki.check(now).expect("fresh");
        // The leaves end first (2 years): 29 days before that they must be renewed.
        let late = now + LEAF_VALIDITY - RENEW_BEFORE + Duration::from_secs(86_400);
        let err = pki.check(late).expect_err("leaf about to expire");
        assert!(err.contains("server.pem"), "{err}");
        let early = now + LEAF_VALIDITY - RENEW_BEFORE - Duration::from_secs(86_400);
        pki.check(early).expect("not yet");
    }

    #[test]
    fn an_expiring_ca_is_replaced() {
        let state = tempfile::tempdir().expect("tempdir");
        let pki = LocalPki::at(state.path());
        private_dir(&pki.dir).expect("dir");
        // Made nearly ten years ago: the leaves (2 years) would be long gone, the CA nearly.
        let long_ago = SystemTime::now() - CA_VALIDITY + Duration::from_secs(86_400);
        pki.create(long_ago).expect("made");
        let err = pki.check(SystemTime::now()).expect_err("old");
        assert!(err.contains("the CA"), "{err}");
        let old = fs::read(&pki.ca).expect("read");
        LocalPki::ensure(state.path()).expect("renewed");
        assert_ne!(fs::read(&pki.ca).expect("read"), old);
    }
}
