//! A fleet CA per test fleet, made with the real `rollgate certs` command, and the TLS files of
//! every coordinator, agent and operator in it: every link in the tests is mTLS.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::bin;

/// The fleet name in test certificates.
pub const FLEET: &str = "test";

/// A directory holding the fleet CA and issued certificates.
#[derive(Debug, Clone)]
pub struct Pki {
    /// `ca.pem`, `ca.key` and the issued `ROLE-NAME.pem|key` files.
    pub dir: PathBuf,
}

/// The three files one part presents.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Fleet CA certificate.
    pub ca: PathBuf,
    /// Own certificate.
    pub cert: PathBuf,
    /// Own key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// A `[tls]` table for a coordinator or agent config.
    pub fn toml(&self) -> String {
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// `--ca --cert --key` for the CLI.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--ca".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.cert.display().to_string(),
            "--key".into(),
            self.key.display().to_string(),
        ]
    }

    /// tonic client settings with these files.
    pub fn client_config(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        Ok(tonic::transport::ClientTlsConfig::new()
            .timeout(std::time::Duration::from_secs(2))
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                &self.ca,
            )?))
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(&self.cert)?,
                std::fs::read(&self.key)?,
            )))
    }
}

impl Pki {
    /// `rollgate certs init --fleet test --dir DIR`.
    pub fn init(dir: &Path) -> anyhow::Result<Self> {
        certs(&[
            "init",
            "--fleet",
            FLEET,
            "--dir",
            &dir.display().to_string(),
        ])?;
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn files(&self, role: &str, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.ca(),
            cert: self.dir.join(format!("{role}-{name}.pem")),
            key: self.dir.join(format!("{role}-{name}.key")),
        }
    }

    /// Issues (once) `role`'s certificate for `name`, with `ips` for a coordinator.
    pub fn issue(&self, role: &str, name: &str, ips: &[IpAddr]) -> anyhow::Result<TlsFiles> {
        let files = self.files(role, name);
        if files.cert.exists() {
            return Ok(files);
        }
        let mut args = vec![
            "issue".to_string(),
            role.to_string(),
            name.to_string(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--days".into(),
            "2".into(),
        ];
        if role == "coordinator" {
            args.extend(["--dns".into(), "localhost".into()]);
            for ip in ips {
                args.extend(["--ip".into(), ip.to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        certs(&args)?;
        Ok(files)
    }

    /// A coordinator replica's files (its certificate names 127.0.0.1 and `ip`).
    pub fn coordinator(&self, id: &str, ip: IpAddr) -> anyhow::Result<TlsFiles> {
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        if !ips.contains(&ip) {
            ips.push(ip);
        }
        self.issue("coordinator", id, &ips)
    }

    /// An agent's files.
    pub fn host(&self, id: &str) -> anyhow::Result<TlsFiles> {
        self.issue("host", id, &[])
    }

    /// The test operator's files.
    pub fn operator(&self) -> anyhow::Result<TlsFiles> {
        self.issue("operator", "tester", &[])
    }
}

fn certs(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(bin("rollgate"))
        .arg("certs")
        .args(args)
        .output()
        .context("cannot run `rollgate certs`")?;
    if !out.status.success() {
        bail!(
            "rollgate certs {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
