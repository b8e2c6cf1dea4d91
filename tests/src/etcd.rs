//! A real etcd: plain, or https with client certificates and auth.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::*;

/// Where one etcd member lives and how it finds its cluster.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) data: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) client: u16,
    pub(crate) peer: u16,
    /// `--initial-cluster`: `name=http://127.0.0.1:PEER,...`.
    pub(crate) cluster: String,
}

/// A real etcd server on free ports.
#[derive(Debug)]
pub struct Etcd {
    /// The process.
    pub proc: Proc,
    /// Client URL (`https://...` when secure).
    pub endpoint: String,
    /// Plain-HTTP port answering `GET /health`: the client port, or, when secure, the metrics
    /// port (the client port then wants a client certificate).
    health_port: u16,
    /// TLS files and users when started with [`Etcd::start_secure`].
    pub security: Option<EtcdSecurity>,
}

impl Etcd {
    /// `127.0.0.1:PORT` of the plain-HTTP port that answers `/health` and `/metrics` (never
    /// the key space).
    pub fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", self.health_port)
    }
}

/// The etcd user the coordinators of a secure etcd authenticate as.
pub const ETCD_USER: &str = "rollgate";
/// etcd's `--auth-token-ttl` (seconds) when secure: short, so that a test outlives several of
/// the coordinators' auth tokens and shows they are renewed.
pub const SECURE_ETCD_TOKEN_TTL_SECS: u64 = 2;

/// A throwaway PKI and the users of a secure etcd ([`Etcd::start_secure`]): TLS on the client
/// port with client certificates required (`--client-cert-auth`), auth enabled, and a
/// [`ETCD_USER`] user whose role may read and write [`ETCD_PREFIX`] and nothing else.
#[derive(Debug, Clone)]
pub struct EtcdSecurity {
    /// CA (PEM) that signed etcd's server certificate and the client certificate.
    pub ca: PathBuf,
    /// Client certificate etcd accepts (CN `rollgate-coordinator`, not an etcd user name).
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
    /// etcd's server certificate (IP SAN 127.0.0.1) and key.
    pub server_cert: PathBuf,
    /// Key of `server_cert`.
    pub server_key: PathBuf,
    /// File (mode 600) holding the password of [`ETCD_USER`].
    pub password_file: PathBuf,
    /// Password of etcd's `root` user: the harness's own access.
    pub root_password: String,
}

impl EtcdSecurity {
    /// Makes a CA, a server certificate for 127.0.0.1 and a client certificate under `dir`.
    pub(crate) fn create(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "rollgate test etcd CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let leaf = |cn: &str, sans: Vec<String>, eku: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(sans)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = leaf(
            "etcd",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_pem, client_key_pem) = leaf(
            "rollgate-coordinator",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            fs::write(&p, text)?;
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(p)
        };
        let user_password = format!("pw-{}-{}", std::process::id(), free_port());
        Ok(EtcdSecurity {
            ca: write("ca.pem", &ca_cert.pem())?,
            client_cert: write("client.pem", &client_pem)?,
            client_key: write("client-key.pem", &client_key_pem)?,
            server_cert: write("server.pem", &server_pem)?,
            server_key: write("server-key.pem", &server_key_pem)?,
            password_file: write("rollgate.password", &format!("{user_password}\n"))?,
            root_password: format!("root-{}-{}", std::process::id(), free_port()),
        })
    }

    /// The `[etcd.tls]` and `[etcd.auth]` tables a coordinator needs to use this etcd.
    pub fn coordinator_toml(&self) -> String {
        format!(
            "[etcd.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [etcd.auth]\nusername = \"{ETCD_USER}\"\npassword_file = \"{}\"\n",
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display(),
            self.password_file.display(),
        )
    }

    /// TLS with the client certificate, without a user.
    pub fn tls_options(&self) -> anyhow::Result<etcd_client::ConnectOptions> {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(fs::read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                fs::read(&self.client_cert)?,
                fs::read(&self.client_key)?,
            ));
        Ok(etcd_client::ConnectOptions::new().with_tls(tls))
    }

    /// TLS with the client certificate, as etcd's `root` user.
    pub fn root_options(&self) -> anyhow::Result<etcd_client::ConnectOptions> {
        Ok(self
            .tls_options()?
            .with_user("root", self.root_password.clone())
            .with_auto_token_refresh(true))
    }

    /// The password of [`ETCD_USER`].
    pub fn user_password(&self) -> anyhow::Result<String> {
        let text = fs::read_to_string(&self.password_file)?;
        Ok(text.trim_end_matches('\n').to_string())
    }

    /// Creates `root` and [`ETCD_USER`] (role `rollgate`: readwrite on [`ETCD_PREFIX`]) and
    /// enables auth.
    async fn enable_auth(&self, endpoint: &str) -> anyhow::Result<()> {
        use etcd_client::{Client, Permission};
        let opts = self.tls_options()?.with_timeout(Duration::from_secs(5));
        let mut c = Client::connect([endpoint], Some(opts)).await?;
        c.user_add("root", self.root_password.clone(), None).await?;
        c.role_add("root").await?;
        c.user_grant_role("root", "root").await?;
        c.role_add(ETCD_USER).await?;
        c.role_grant_permission(ETCD_USER, Permission::read_write(ETCD_PREFIX).with_prefix())
            .await?;
        c.user_add(ETCD_USER, self.user_password()?, None).await?;
        c.user_grant_role(ETCD_USER, ETCD_USER).await?;
        c.auth_enable().await?;
        Ok(())
    }
}

impl Etcd {
    /// Starts etcd (`ETCD_BIN` or `etcd` from PATH) under `dir` and waits until it is healthy.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::launch(dir, None)
    }

    /// Starts etcd as a careful operator runs it: TLS on the client port, client certificates
    /// required, auth enabled (see [`EtcdSecurity`]; files under `dir/etcd-pki`).
    pub fn start_secure(dir: &Path) -> anyhow::Result<Self> {
        let security = EtcdSecurity::create(&dir.join("etcd-pki"))?;
        let etcd = Self::launch(dir, Some(security.clone()))?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(security.enable_auth(&etcd.endpoint))
            .context("cannot set up etcd users and enable auth")?;
        Ok(etcd)
    }

    pub(crate) fn launch(dir: &Path, security: Option<EtcdSecurity>) -> anyhow::Result<Self> {
        let peer = free_port();
        let member = Member {
            name: "test".into(),
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            client: free_port(),
            peer,
            cluster: format!("test=http://127.0.0.1:{peer}"),
        };
        let etcd = Self::launch_member(&member, security)?;
        etcd.wait_healthy()?;
        Ok(etcd)
    }

    /// Starts one etcd member (not waiting: a member of a cluster is healthy only with quorum).
    pub(crate) fn launch_member(
        member: &Member,
        security: Option<EtcdSecurity>,
    ) -> anyhow::Result<Self> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let client = member.client;
        let scheme = if security.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{}", member.peer);
        let mut cmd: Vec<String> = vec![
            bin,
            "--name".into(),
            member.name.clone(),
            "--data-dir".into(),
            member.data.display().to_string(),
            "--listen-client-urls".into(),
            endpoint.clone(),
            "--advertise-client-urls".into(),
            endpoint.clone(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            member.cluster.clone(),
            "--heartbeat-interval".into(),
            "10".into(),
            "--election-timeout".into(),
            "100".into(),
            "--logger".into(),
            "zap".into(),
            "--log-level".into(),
            "error".into(),
        ];
        let mut health_port = client;
        if let Some(s) = &security {
            health_port = free_port();
            let path = |p: &Path| p.display().to_string();
            cmd.extend([
                "--cert-file".into(),
                path(&s.server_cert),
                "--key-file".into(),
                path(&s.server_key),
                "--trusted-ca-file".into(),
                path(&s.ca),
                "--client-cert-auth".into(),
                "--auth-token".into(),
                "simple".into(),
                "--auth-token-ttl".into(),
                SECURE_ETCD_TOKEN_TTL_SECS.to_string(),
                "--listen-metrics-urls".into(),
                format!("http://127.0.0.1:{health_port}"),
            ]);
        }
        let proc = Proc::spawn("etcd", &cmd, &member.log).context(
            "cannot start etcd: install it (apt-get install etcd-server) or set ETCD_BIN",
        )?;
        Ok(Etcd {
            proc,
            endpoint,
            health_port,
            security,
        })
    }

    /// Waits until etcd answers `GET /health` with `"health":"true"`.
    pub fn wait_healthy(&self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.health_port);
        wait_for("etcd to be healthy", START_TIMEOUT, || {
            let (_, body) = http_get(&addr, "/health")?;
            if body.contains("\"health\":\"true\"") {
                Ok(Some(()))
            } else {
                bail!("etcd /health: {body}")
            }
        })
    }

    /// A client with the harness's own access (TLS and `root` when secure).
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let opts = match &self.security {
            Some(s) => s.root_options()?,
            None => etcd_client::ConnectOptions::new(),
        }
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
        Ok(etcd_client::Client::connect([self.endpoint.as_str()], Some(opts)).await?)
    }
}
