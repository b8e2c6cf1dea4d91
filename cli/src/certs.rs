//! `rollgate certs`: a fleet CA and the certificates of coordinators, hosts and operators.
//!
//! Every certificate names its holder in one URI SAN (`spiffe://FLEET/ROLE/NAME`, see
//! [`rollgate_proto::tls`]); the CA carries `spiffe://FLEET` so `issue` knows the fleet. Keys
//! are ECDSA P-256, written mode 0600 and never overwritten. A fleet with its own PKI skips
//! this and issues certificates of the same shape (README, section Certificates).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rollgate_proto::tls::{check_fleet, Identity, Role, SCHEME};
use time::{Duration, OffsetDateTime};

/// File names of the CA in the certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (keep it off the fleet's hosts).
pub const CA_KEY: &str = "ca.key";

/// What `init` and `issue` wrote.
#[derive(Debug)]
pub struct Issued {
    /// Certificate path.
    pub cert: PathBuf,
    /// Key path.
    pub key: PathBuf,
    /// `spiffe://...` identity.
    pub uri: String,
    /// Last day of validity.
    pub not_after: OffsetDateTime,
}

/// Creates a fleet CA in `dir` (`ca.pem`, `ca.key`), valid `days`.
pub fn init(dir: &Path, fleet: &str, days: u32) -> anyhow::Result<Issued> {
    check_fleet(fleet).map_err(|e| anyhow::anyhow!("--fleet: {e}"))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    refuse_overwrite(&[&cert_path, &key_path])?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&format!("rollgate CA of fleet {fleet}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let uri = format!("{SCHEME}{fleet}");
    params.subject_alt_names = vec![SanType::URI(uri.clone().try_into()?)];
    let not_after = validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        uri,
        not_after,
    })
}

/// What to put in an issued certificate besides the identity.
#[derive(Debug, Default)]
pub struct IssueOpts {
    /// DNS names (coordinators: every name agents and operators dial).
    pub dns: Vec<String>,
    /// IP addresses (coordinators dialled by address).
    pub ips: Vec<IpAddr>,
    /// Validity in days.
    pub days: u32,
    /// Where to write; default: the CA's directory.
    pub out_dir: Option<PathBuf>,
    /// A deployer's services (its `urn:rollgate:services:` URI SAN); required for deployers,
    /// refused for every other role.
    pub services: Vec<String>,
}

/// Issues a certificate for `role`/`name`, signed by the CA in `ca_dir`.
pub fn issue(ca_dir: &Path, role: Role, name: &str, opts: &IssueOpts) -> anyhow::Result<Issued> {
    let ca_pem = read(&ca_dir.join(CA_CERT), "the fleet CA certificate")?;
    let ca_key_pem = read(&ca_dir.join(CA_KEY), "the fleet CA key")?;
    let fleet = fleet_of_ca(&ca_pem).with_context(|| {
        format!(
            "{} is not a rollgate fleet CA",
            ca_dir.join(CA_CERT).display()
        )
    })?;
    let identity = Identity::new(&fleet, role, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("cannot read {}", ca_dir.join(CA_KEY).display()))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .with_context(|| format!("cannot read {}", ca_dir.join(CA_CERT).display()))?;
    let ca = ca_params.self_signed(&ca_key)?;

    let out = opts.out_dir.clone().unwrap_or_else(|| ca_dir.to_path_buf());
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let base = format!("{}-{}", role.word(), name);
    let cert_path = out.join(format!("{base}.pem"));
    let key_path = out.join(format!("{base}.key"));
    refuse_overwrite(&[&cert_path, &key_path])?;

    let mut params = CertificateParams::default();
    params.distinguished_name = name_dn(&identity);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Coordinator => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Host | Role::Operator | Role::Viewer | Role::Deployer => {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        }
    };
    params.use_authority_key_identifier_extension = true;
    let uri = identity.uri();
    let mut sans = vec![SanType::URI(uri.clone().try_into()?)];
    if role == Role::Coordinator {
        let mut dns = opts.dns.clone();
        if dns.is_empty() && opts.ips.is_empty() {
            dns.push("localhost".into());
        }
        for d in dns {
            sans.push(SanType::DnsName(
                d.clone()
                    .try_into()
                    .with_context(|| format!("--dns {d:?} is not a DNS name"))?,
            ));
        }
        let mut ips = opts.ips.clone();
        if opts.dns.is_empty() && ips.is_empty() {
            ips.push(IpAddr::from([127, 0, 0, 1]));
        }
        sans.extend(ips.into_iter().map(SanType::IpAddress));
    } else if !opts.dns.is_empty() || !opts.ips.is_empty() {
        bail!("--dns and --ip are for coordinator certificates; a {role} certificate names only its identity");
    }
    sans.extend(services_san(role, &opts.services)?);
    params.subject_alt_names = sans;
    let not_after = validity(&mut params, opts.days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        uri,
        not_after,
    })
}

/// The `urn:rollgate:services:A,B` URI SAN of a deployer (none for other roles).
fn services_san(role: Role, services: &[String]) -> anyhow::Result<Option<SanType>> {
    match (role, services.is_empty()) {
        (Role::Deployer, true) => bail!(
            "a deployer certificate needs --services a,b: the services whose rollouts it may \
             create and steer"
        ),
        (Role::Deployer, false) => {
            for s in services {
                rollgate_proto::names::check("service", s)
                    .map_err(|e| anyhow::anyhow!("--services: {e}"))?;
            }
            let urn = format!(
                "{}{}",
                rollgate_proto::tls::SERVICES_URN,
                services.join(",")
            );
            Ok(Some(SanType::URI(urn.try_into()?)))
        }
        (_, true) => Ok(None),
        (_, false) => bail!("--services is for deployer certificates (--role deployer)"),
    }
}

/// The fleet a rollgate CA certificate (PEM) is for: its `spiffe://FLEET` URI SAN.
pub fn fleet_of_ca(pem: &str) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .context("no PEM certificate in it")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n {
                if let Some(fleet) = u.strip_prefix(SCHEME) {
                    if check_fleet(fleet).is_ok() {
                        return Ok(fleet.to_string());
                    }
                }
            }
        }
    }
    bail!("it has no spiffe://FLEET URI SAN (made by `rollgate certs init`?)")
}

/// One line per certificate in a PEM file: identity, issuer, validity.
pub fn show(path: &Path) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject;
    let pem = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = String::new();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let der = der.with_context(|| format!("{} is not PEM", path.display()))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
        let who = match Identity::from_cert_der(&der) {
            Ok(id) => format!("{} ({})", id.uri(), id),
            Err(e) => format!("no rollgate identity: {e}"),
        };
        let end = cert.validity().not_after.timestamp();
        let left = if end < now {
            format!("EXPIRED {} days ago", (now - end) / 86_400)
        } else {
            format!("{} days left", (end - now) / 86_400)
        };
        out.push_str(&format!(
            "{who}\n  subject {}\n  issuer  {}\n  valid   {} .. {} ({left})\n",
            cert.subject(),
            cert.issuer(),
            cert.validity().not_before,
            cert.validity().not_after,
        ));
    }
    if out.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(out)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "rollgate");
    dn.push(DnType::CommonName, cn);
    dn
}

fn name_dn(id: &Identity) -> DistinguishedName {
    name(&format!("{} {} of fleet {}", id.role, id.name, id.fleet))
}

fn validity(params: &mut CertificateParams, days: u32) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    params.not_before = now - Duration::minutes(10);
    params.not_after = now + Duration::days(i64::from(days.max(1)));
    params.not_after
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {what} {}; create the CA with `rollgate certs init --fleet NAME --dir DIR` or pass --dir",
            path.display()
        )
    })
}

fn refuse_overwrite(paths: &[&Path]) -> anyhow::Result<()> {
    for p in paths {
        if p.exists() {
            bail!(
                "{} exists already; rollgate never overwrites keys or certificates. Move it away first (or pick another --dir/--out-dir)",
                p.display()
            );
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write(path, bytes, 0o644)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::tls::TlsConfig;

    #[test]
    fn issued_certificates_load_with_their_identity_and_roles() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = init(dir.path(), "prod", 30).expect("init");
        assert_eq!(ca.uri, "spiffe://prod");
        let opts = IssueOpts {
            days: 5,
            ..Default::default()
        };
        for (role, name) in [
            (Role::Coordinator, "coord-1"),
            (Role::Host, "web-1"),
            (Role::Operator, "alice"),
        ] {
            let issued = issue(dir.path(), role, name, &opts).expect("issue");
            let cfg = TlsConfig {
                ca: Some(ca.cert.clone()),
                cert: Some(issued.cert.clone()),
                key: Some(issued.key.clone()),
                insecure_plaintext: false,
            };
            let files = cfg.load(role, "").expect("loads").expect("tls");
            assert_eq!(
                files.identity,
                Identity::new("prod", role, name).expect("id")
            );
            let other = if role == Role::Host {
                Role::Operator
            } else {
                Role::Host
            };
            let e = cfg.load(other, "").expect_err("wrong role").to_string();
            assert!(e.contains(&format!("certs issue {}", other.word())), "{e}");
            let mode = fs::metadata(&issued.key).expect("key").permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
            assert!(show(&issued.cert).expect("show").contains("days left"));
        }
        let e = issue(dir.path(), Role::Host, "web-1", &opts).expect_err("exists");
        assert!(e.to_string().contains("never overwrites"), "{e}");
        let e = issue(
            dir.path(),
            Role::Host,
            "web-2",
            &IssueOpts {
                dns: vec!["x".into()],
                ..Default::default()
            },
        )
        .expect_err("dns on host");
        assert!(e.to_string().contains("coordinator certificates"), "{e}");
        let e = init(dir.path(), "prod", 30).expect_err("exists");
        assert!(e.to_string().contains("never overwrites"), "{e}");
        let e = init(&dir.path().join("x"), "Prod!", 30).expect_err("fleet");
        assert!(e.to_string().contains("--fleet"), "{e}");
    }
}
