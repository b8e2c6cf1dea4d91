//! Test harness for rollgate: starts a real etcd, coordinator replicas and agents as processes
//! with free ports, each with its own directory and log file, plus the test service
//! (`rollgate-testsvc`) whose releases are tiny wrapper scripts with a chosen behaviour.
//!
//! Layout:
//! - [`Fleet`]: etcd + one or more coordinator replicas + N agents; prints every log's tail when
//!   a test fails. Faults: kill -9 / SIGSTOP of any process ([`Coordinator`], [`Agent::proc`]),
//!   [`Fleet::restart_etcd`], and in netns mode [`Fleet::cut`] / [`Fleet::heal`] of one host's
//!   link; [`Fleet::etcd_backup`] / [`Fleet::etcd_restore`]. A supervisor restarts a
//!   coordinator that exits on its own (as systemd's `Restart=on-failure` does in production)
//!   and records it ([`Fleet::coordinator_restarts`]). [`Fleet::leader`] reads the election key
//!   from etcd. Control RPCs ([`Fleet::rpc`], [`Fleet::status`], [`Fleet::promote`], ...) fail
//!   over between replicas.
//! - [`Etcd`]: plain, or ([`Etcd::start_secure`], `FleetOpts::etcd_secure`) https with client
//!   certificates and auth enabled, a throwaway CA and a `rollgate` user ([`EtcdSecurity`]).
//! - [`NetLab`]: netns mode; every agent (and so its service) runs in its own network namespace
//!   on a bridge in the root namespace; removed on drop, even when the test panics.
//! - [`Observer`]: polls every host's service directly (not the coordinator's word) and records
//!   the most hosts it ever saw unavailable at once, fleet-wide and per group.
//! - [`wait_for`] / [`Fleet::wait`]: waits for a condition with a deadline and says what it
//!   last saw; [`Fleet::hold_for`] asserts that something does NOT happen for a fixed window.
//!   A failed `Fleet` wait (or a test panic) prints every log's tail when the fleet is dropped.
//!
//! Binaries come from the cargo target directory next to the test executable (or from
//! `ROLLGATE_BIN_DIR`); build them first with `cargo build --workspace --bins` (`tests/run.sh`
//! does).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
pub mod managers;
pub mod pki;
pub use rollgate_proto::pb;

/// How long a daemon may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the observer polls each service.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(10);
/// Timeout of one observer poll.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Heartbeat interval the test coordinator asks agents for (3 missed = offline).
pub const HEARTBEAT: Duration = Duration::from_millis(300);
/// Heartbeats an agent may miss before the coordinator drops its session.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Lease TTL of test coordinators (leader failover after kill -9 takes up to this long).
pub const LEASE_TTL_SECS: u64 = 2;
/// Pause before the supervisor restarts a coordinator that exited on its own (production's
/// systemd unit waits 2 s; tests are impatient).
pub const COORDINATOR_RESTART_DELAY: Duration = Duration::from_millis(500);
/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 40;
/// Timeout of one control RPC before the harness tries another replica.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// The etcd key prefix the coordinators use (their default).
pub const ETCD_PREFIX: &str = "/rollgate/";

/// How long the coordinator takes to notice a silent agent (heartbeat x missed heartbeats).
pub fn session_timeout() -> Duration {
    HEARTBEAT * MISSED_HEARTBEATS
}

/// The cargo target directory the test executable lives in (target/debug or target/release).
pub fn own_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target dir");
    // A test: target/debug/deps/<test> -> target/debug. A binary of this crate (the
    // benchmark): target/release/<bin> -> target/release.
    if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Directory holding rollgate's binaries (coordinator, agent, CLI): `ROLLGATE_BIN_DIR` when
/// set (to test another build), else [`own_bin_dir`].
pub fn bin_dir() -> PathBuf {
    std::env::var_os("ROLLGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(own_bin_dir)
}

/// Path of one of the workspace's binaries; panics with the fix if it was not built. The test
/// service always comes from this crate's own build.
pub fn bin(name: &str) -> PathBuf {
    let dir = if name == "rollgate-testsvc" {
        own_bin_dir()
    } else {
        bin_dir()
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (tests/run.sh does)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until `check` returns `Ok(Some(v))`, failing after `timeout` with the last thing it saw.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing yet");
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process with its log file; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Option<Child>,
    /// Its combined stdout/stderr.
    pub log: PathBuf,
    cmd: Vec<String>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &[String], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, cmd, log, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables (e.g. fault injection).
    pub fn spawn_with_env(
        name: &str,
        cmd: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            cmd: cmd.to_vec(),
        })
    }

    /// Process id.
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Sends a signal (SIGSTOP, SIGCONT, SIGTERM, ...).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, sig);
        }
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same command again (after a kill), appending to the same log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_with_env(&[])
    }

    /// Starts the same command again with extra environment variables.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.kill9();
        let mut fresh = Proc::spawn_with_env(&self.name, &self.cmd, &self.log, env)?;
        self.child = fresh.child.take();
        Ok(())
    }

    /// Whether it has exited (or was killed by the harness).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// How it ended, if it exited on its own (not killed by the harness: that leaves no child).
    pub fn exited_on_its_own(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        tail_file(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process cannot die of SIGKILL until continued.
        self.signal(Signal::SIGCONT);
        self.kill9();
    }
}

fn tail_file(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide the logs).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    fn create(dir: &Path) -> anyhow::Result<Self> {
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

    fn launch(dir: &Path, security: Option<EtcdSecurity>) -> anyhow::Result<Self> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let client = free_port();
        let peer = free_port();
        let scheme = if security.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd: Vec<String> = vec![
            bin,
            "--name".into(),
            "test".into(),
            "--data-dir".into(),
            dir.join("etcd-data").display().to_string(),
            "--listen-client-urls".into(),
            endpoint.clone(),
            "--advertise-client-urls".into(),
            endpoint.clone(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            format!("test={peer_url}"),
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
        let proc = Proc::spawn("etcd", &cmd, &dir.join("etcd.log")).context(
            "cannot start etcd: install it (apt-get install etcd-server) or set ETCD_BIN",
        )?;
        let etcd = Etcd {
            proc,
            endpoint,
            health_port,
            security,
        };
        etcd.wait_healthy()?;
        Ok(etcd)
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

/// One coordinator replica. Methods take `&self`: the supervisor shares the process.
#[derive(Debug)]
pub struct Coordinator {
    /// Its `replica_id` (`coord-1`, ...): the value of the leader key while it leads.
    pub id: String,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its state directory (config, log, artifact store).
    pub dir: PathBuf,
    proc: Arc<Mutex<Proc>>,
}

impl Coordinator {
    fn start(
        dir: &Path,
        index: usize,
        ip: Ipv4Addr,
        etcd_endpoint: &str,
        extra: Option<&str>,
        pki: &pki::Pki,
        clock_offset: Option<i64>,
    ) -> anyhow::Result<Self> {
        let id = format!("coord-{index}");
        let tls = pki.coordinator(&id, IpAddr::V4(ip))?.toml();
        let addr = SocketAddr::new(IpAddr::V4(ip), free_port());
        let cdir = dir.join(&id);
        fs::create_dir_all(&cdir)?;
        let config = format!(
            r#"listen = "{addr}"
state_dir = "{state}"
replica_id = "{id}"
[etcd]
endpoints = ["{etcd_endpoint}"]
lease_ttl = "{LEASE_TTL_SECS}s"
{insecure_etcd}
[agents]
heartbeat_interval = "{hb}ms"
missed_heartbeats = {MISSED_HEARTBEATS}
{tls}
{extra}
"#,
            state = cdir.display(),
            hb = HEARTBEAT.as_millis(),
            extra = extra.unwrap_or_default(),
            // A plain test etcd must be allowed explicitly (the coordinator refuses it otherwise).
            insecure_etcd = if etcd_endpoint.starts_with("http://") {
                "allow_insecure_etcd = true"
            } else {
                ""
            },
        );
        let cfg_path = cdir.join("coordinator.toml");
        fs::write(&cfg_path, config)?;
        let mut cmd = match clock_offset {
            Some(secs) => faketime_prefix(secs)?,
            None => Vec::new(),
        };
        cmd.extend([
            bin("rollgate-coordinator").display().to_string(),
            "--config".into(),
            cfg_path.display().to_string(),
        ]);
        let proc = Proc::spawn(&id, &cmd, &cdir.join("coordinator.log"))?;
        Ok(Coordinator {
            id,
            addr,
            dir: cdir,
            proc: Arc::new(Mutex::new(proc)),
        })
    }

    /// `https://addr`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// kill -9 (the supervisor does not restart a process the harness killed).
    pub fn kill9(&self) {
        lock(&self.proc).kill9();
    }

    /// kill -9 if running, then start the same command again.
    pub fn restart(&self) -> anyhow::Result<()> {
        lock(&self.proc).restart()
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, sig: Signal) {
        lock(&self.proc).signal(sig);
    }

    /// Process id, while the harness holds a child.
    pub fn pid(&self) -> Option<Pid> {
        lock(&self.proc).pid()
    }

    /// Whether it is not running.
    pub fn exited(&self) -> bool {
        lock(&self.proc).exited()
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        lock(&self.proc).log.clone()
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        lock(&self.proc).tail(n)
    }
}

/// `env LD_PRELOAD=…libfaketime.so.1 FAKETIME=±Ns …`: `env` execs the command (no fork), so
/// the harness's pid is the coordinator's own.
fn faketime_prefix(secs: i64) -> anyhow::Result<Vec<String>> {
    let lib = fs::read_dir("/usr/lib")?
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .context("libfaketime is not installed: apt-get install faketime (tests/run.sh does)")?;
    Ok(vec![
        "env".into(),
        format!("LD_PRELOAD={}", lib.display()),
        format!("FAKETIME={secs:+}s"),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
    ])
}

/// Restarts coordinators that exit on their own, like systemd's `Restart=on-failure`.
#[derive(Debug)]
struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    events: Arc<Mutex<Vec<String>>>,
}

impl Supervisor {
    fn start(procs: Vec<(String, Arc<Mutex<Proc>>)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (stop2, events2) = (stop.clone(), events.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut exited_at: BTreeMap<String, Instant> = BTreeMap::new();
            while !stop2.load(Ordering::Relaxed) {
                for (id, proc) in &procs {
                    let mut p = lock(proc);
                    let Some(status) = p.exited_on_its_own() else {
                        exited_at.remove(id);
                        continue;
                    };
                    let at = *exited_at.entry(id.clone()).or_insert_with(|| {
                        let msg = format!(
                            "supervisor: {id} exited on its own ({status}) at {:.1?}; restarting it in {COORDINATOR_RESTART_DELAY:?}",
                            started.elapsed()
                        );
                        eprintln!("{msg}");
                        lock(&events2).push(msg);
                        Instant::now()
                    });
                    if at.elapsed() >= COORDINATOR_RESTART_DELAY {
                        exited_at.remove(id);
                        if let Err(e) = p.restart() {
                            let msg = format!("supervisor: cannot restart {id}: {e:#}");
                            eprintln!("{msg}");
                            lock(&events2).push(msg);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Supervisor {
            stop,
            thread: Some(thread),
            events,
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One agent of the fleet and the test service it manages.
#[derive(Debug)]
pub struct Agent {
    /// Host id.
    pub id: String,
    /// The agent process.
    pub proc: Proc,
    /// Port of the service it manages.
    pub service_port: u16,
    /// Where the observer reaches the service: 127.0.0.1, or the host's namespace address.
    pub service_addr: SocketAddr,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its `site` label.
    pub group: String,
    /// Its network namespace in netns mode.
    pub netns: Option<String>,
}

/// What a test release does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serves healthy.
    Healthy,
    /// Serves, but /health answers 500.
    Unhealthy,
    /// Exits with status 1 at start.
    Crash,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Unhealthy => "unhealthy",
            Mode::Crash => "crash",
        }
    }
}

/// A release artifact on disk.
#[derive(Debug, Clone)]
pub struct Release {
    /// Version string.
    pub version: String,
    /// The wrapper script.
    pub path: PathBuf,
}

/// How hosts are spread over sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteLayout {
    /// host-1 in site-0, host-2 in site-1, ...: neighbours in host order are in different
    /// sites.
    RoundRobin,
    /// host-1..host-k in site-0, the next k in site-1, ...: a planner that ignored the sites
    /// and took hosts in order would take several of one site at once.
    Blocks,
}

/// Settings for a fleet.
#[derive(Debug, Clone)]
pub struct FleetOpts {
    /// Number of agents (`host-1`...).
    pub agents: usize,
    /// Extra delay the test service waits before it binds (makes each restart's outage long
    /// enough for the observer to see overlaps).
    pub start_delay_ms: u64,
    /// Number of coordinator replicas (`coord-1`...), all on the same etcd. With more than
    /// one, agents get `coordinators = [...]` listing every replica, rotated so that agent i
    /// starts with replica i % n.
    pub coordinators: usize,
    /// Number of sites: agent i (0-based) gets the label `site = "site-{i % sites}"` (or, with
    /// [`SiteLayout::Blocks`], consecutive hosts share a site).
    pub sites: usize,
    /// How hosts are spread over the sites.
    pub site_layout: SiteLayout,
    /// Run every agent (and its service) in its own network namespace, so that
    /// [`Fleet::cut`] can take its link down. Needs root and iproute2.
    pub netns: bool,
    /// Restart a coordinator that exits on its own (see [`Fleet::coordinator_restarts`]).
    pub supervise: bool,
    /// The agents' `[[services]]` tables (TOML), replacing the default `web` process service;
    /// `{state}` becomes the agent's state dir, `{port}` its `service_port`, `{host}` its id.
    pub agent_services: Option<String>,
    /// TOML appended to every coordinator's config (after its `[agents]` table), e.g. an
    /// `[etcd.tls]` table.
    pub coordinator_extra: Option<String>,
    /// Run etcd with TLS, client certificates and auth ([`Etcd::start_secure`]); every
    /// coordinator gets the `[etcd.tls]` and `[etcd.auth]` tables it needs, after
    /// `coordinator_extra` (which must then not hold those tables itself). The default: every
    /// link in the tests is mTLS, etcd's included.
    pub etcd_secure: bool,
    /// Replica `k` (1-based: `coord-k`) runs with its wall clock off by this many seconds
    /// (negative: behind), under libfaketime from Debian's `faketime` package (monotonic time
    /// is left alone, so its timers run normally).
    pub clock_offset: Option<(usize, i64)>,
}

impl Default for FleetOpts {
    fn default() -> Self {
        FleetOpts {
            agents: 3,
            start_delay_ms: 0,
            coordinators: 1,
            sites: 3,
            site_layout: SiteLayout::RoundRobin,
            netns: false,
            supervise: true,
            agent_services: None,
            coordinator_extra: None,
            etcd_secure: true,
            clock_offset: None,
        }
    }
}

/// A gRPC client of the control API.
pub type ControlClient =
    pb::control_service_client::ControlServiceClient<tonic::transport::Channel>;

/// etcd + coordinator replicas + N agents.
#[derive(Debug)]
pub struct Fleet {
    /// Everything lives here (kept when `KEEP_TEST_DIRS` is set).
    pub dir: PathBuf,
    /// The fleet CA (`rollgate certs init`) and every part's certificate.
    pub pki: pki::Pki,
    /// The operator certificate the CLI and control clients present.
    pub operator: pki::TlsFiles,
    /// Removes `dir` on drop unless `KEEP_TEST_DIRS` is set.
    dir_guard: Option<tempfile::TempDir>,
    /// etcd.
    pub etcd: Etcd,
    /// The coordinator replicas, `coord-1`...
    pub coordinators: Vec<Coordinator>,
    /// The agents, `host-1`...
    pub agents: Vec<Agent>,
    /// Namespaces, veths and bridge in netns mode.
    pub net: Option<NetLab>,
    opts: FleetOpts,
    runtime: tokio::runtime::Runtime,
    /// The replica the control client tries first (the last one that answered).
    preferred: AtomicUsize,
    supervisor: Option<Supervisor>,
    /// Set when a harness wait failed, so the logs are printed on drop.
    failed: AtomicBool,
}

impl Fleet {
    /// Starts etcd, the coordinators and `opts.agents` agents, and waits until all are
    /// connected.
    pub fn start(opts: FleetOpts) -> anyhow::Result<Self> {
        assert!(opts.coordinators >= 1, "a fleet needs a coordinator");
        assert!(opts.sites >= 1, "a fleet needs a site");
        let dir_guard = tempfile::Builder::new()
            .prefix("rollgate-test-")
            .tempdir()?;
        let dir = dir_guard.path().to_path_buf();
        let net = if opts.netns {
            Some(NetLab::create(opts.agents)?)
        } else {
            None
        };
        let etcd = if opts.etcd_secure {
            Etcd::start_secure(&dir)?
        } else {
            Etcd::start(&dir)?
        };
        let extra: Vec<String> = [
            opts.coordinator_extra.clone(),
            etcd.security.as_ref().map(EtcdSecurity::coordinator_toml),
        ]
        .into_iter()
        .flatten()
        .collect();
        let extra = (!extra.is_empty()).then(|| extra.join("\n"));
        let ip = net.as_ref().map_or(Ipv4Addr::LOCALHOST, |n| n.gateway);
        let pki = pki::Pki::init(&dir.join("pki"))?;
        let mut coordinators = Vec::new();
        for k in 1..=opts.coordinators {
            coordinators.push(Coordinator::start(
                &dir,
                k,
                ip,
                &etcd.endpoint,
                extra.as_deref(),
                &pki,
                opts.clock_offset.filter(|(r, _)| *r == k).map(|(_, s)| s),
            )?);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let operator = pki.operator()?;
        let mut fleet = Fleet {
            pki,
            operator,
            dir,
            dir_guard: Some(dir_guard),
            etcd,
            coordinators,
            agents: Vec::new(),
            net,
            opts: opts.clone(),
            runtime,
            preferred: AtomicUsize::new(0),
            supervisor: None,
            failed: AtomicBool::new(false),
        };
        if let Err(e) = fleet.finish_start() {
            // Drop prints the logs.
            fleet.failed.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(fleet)
    }

    fn finish_start(&mut self) -> anyhow::Result<()> {
        for i in 0..self.coordinators.len() {
            self.wait_replica(i)?;
        }
        if self.opts.supervise {
            self.supervisor = Some(Supervisor::start(
                self.coordinators
                    .iter()
                    .map(|c| (c.id.clone(), c.proc.clone()))
                    .collect(),
            ));
        }
        for i in 0..self.opts.agents {
            self.add_agent(i)?;
        }
        let n = self.opts.agents;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // An agent that exits (a config it refuses, say) fails the start at once.
            for a in &mut self.agents {
                if a.proc.exited() {
                    bail!(
                        "{}'s agent exited at start; its log:\n{}",
                        a.id,
                        a.proc.tail(10)
                    );
                }
            }
            let connected = self
                .hosts()
                .map(|hs| hs.iter().filter(|h| h.connected).count());
            if matches!(connected, Ok(c) if c >= n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out after {START_TIMEOUT:?} waiting for {n} agents to connect; last: {connected:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first replica (the only one in a single-coordinator fleet).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinators[0]
    }

    /// The first replica's gRPC address.
    pub fn coordinator_addr(&self) -> SocketAddr {
        self.coordinators[0].addr
    }

    /// Waits until some replica answers control calls.
    pub fn wait_coordinator(&self) -> anyhow::Result<()> {
        let r = wait_for("a coordinator to answer", START_TIMEOUT, || {
            Ok(self.hosts().ok().map(|_| ()))
        });
        self.note(r)
    }

    /// Waits until replica `i` answers control calls.
    pub fn wait_replica(&self, i: usize) -> anyhow::Result<()> {
        let c = &self.coordinators[i];
        let r = wait_for(&format!("{} to answer", c.id), START_TIMEOUT, || {
            if c.exited() {
                bail!("{} is not running; log:\n{}", c.id, c.tail(10));
            }
            let mut client = self.control_at(i)?;
            self.runtime
                .block_on(client.list_hosts(pb::ListHostsRequest {}))?;
            Ok(Some(()))
        });
        self.note(r)
    }

    fn add_agent(&mut self, index: usize) -> anyhow::Result<()> {
        let id = format!("host-{}", index + 1);
        let adir = self.dir.join(&id);
        fs::create_dir_all(&adir)?;
        let service_port = free_port();
        let state_dir = adir.join("state");
        let n = self.coordinators.len();
        let urls: Vec<String> = (0..n)
            .map(|k| format!("\"{}\"", self.coordinators[(index + k) % n].url()))
            .collect();
        // One replica: the original single-URL field, which every agent version reads.
        let coordinator_line = if n == 1 {
            format!("coordinator = {}", urls[0])
        } else {
            format!("coordinators = [{}]", urls.join(", "))
        };
        let site = match self.opts.site_layout {
            SiteLayout::RoundRobin => index % self.opts.sites,
            SiteLayout::Blocks => index * self.opts.sites / self.opts.agents.max(1),
        };
        let group = format!("site-{site}");
        let services = match &self.opts.agent_services {
            Some(text) => text
                .replace("{state}", &state_dir.display().to_string())
                .replace("{port}", &service_port.to_string())
                .replace("{host}", &id),
            None => format!(
                r#"[[services]]
name = "web"
backend = "process"
binary = "web"
args = ["--port", "{service_port}"]
stop_timeout = "2s"
restart_delay = "200ms"
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{service_port}/health"
interval = "100ms"
timeout = "500ms"
"#
            ),
        };
        let tls = self.pki.host(&id)?.toml();
        let config = format!(
            r#"host_id = "{id}"
{coordinator_line}
state_dir = "{state}"
{tls}
[labels]
site = "{group}"
{services}"#,
            state = state_dir.display(),
        );
        let cfg_path = adir.join("agent.toml");
        fs::write(&cfg_path, config)?;
        let mut cmd = Vec::new();
        let (netns, ip) = match &self.net {
            Some(net) => {
                let h = &net.hosts[index];
                cmd.extend(["ip", "netns", "exec", &h.ns].map(String::from));
                (Some(h.ns.clone()), h.addr)
            }
            None => (None, Ipv4Addr::LOCALHOST),
        };
        cmd.extend([
            bin("rollgate-agent").display().to_string(),
            "--config".into(),
            cfg_path.display().to_string(),
        ]);
        let proc = Proc::spawn(&id, &cmd, &adir.join("agent.log"))?;
        self.agents.push(Agent {
            id,
            proc,
            service_port,
            service_addr: SocketAddr::new(IpAddr::V4(ip), service_port),
            state_dir,
            group,
            netns,
        });
        Ok(())
    }

    /// Waits until `n` hosts are connected.
    pub fn wait_connected(&self, n: usize) -> anyhow::Result<()> {
        let r = wait_for(&format!("{n} agents to connect"), START_TIMEOUT, || {
            let hosts = self.hosts()?;
            let c = hosts.iter().filter(|h| h.connected).count();
            if c >= n {
                Ok(Some(()))
            } else {
                bail!("{c} of {n} connected")
            }
        });
        self.note(r)
    }

    fn write_release(&self, version: &str, mode_setup: &str) -> anyhow::Result<Release> {
        let rdir = self.dir.join("releases");
        fs::create_dir_all(&rdir)?;
        let path = rdir.join(format!("web-{version}"));
        let bind = if self.net.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let script = format!(
            "#!/bin/sh\n{mode_setup}exec {svc} --version {version} --mode \"$mode\" --start-delay-ms {delay} --bind {bind} \"$@\"\n",
            svc = bin("rollgate-testsvc").display(),
            delay = self.opts.start_delay_ms,
        );
        fs::write(&path, script)?;
        Ok(Release {
            version: version.to_string(),
            path,
        })
    }

    /// Writes a release of the test service: a wrapper script that runs `rollgate-testsvc`.
    pub fn release(&self, version: &str, mode: Mode) -> anyhow::Result<Release> {
        self.write_release(version, &format!("mode={}\n", mode.word()))
    }

    /// A release that is healthy everywhere except on `hosts`, where its `/health` answers 500.
    /// The wrapper tells the hosts apart by the `--port` the agent passes.
    pub fn release_failing_on(&self, version: &str, hosts: &[&str]) -> anyhow::Result<Release> {
        let mut ports = Vec::new();
        for h in hosts {
            let a = self
                .agents
                .iter()
                .find(|a| a.id == *h)
                .with_context(|| format!("no host {h} in this fleet"))?;
            ports.push(a.service_port.to_string());
        }
        if ports.is_empty() {
            return self.release(version, Mode::Healthy);
        }
        let pattern = ports.join("|");
        let eq_pattern = ports
            .iter()
            .map(|p| format!("--port={p}"))
            .collect::<Vec<_>>()
            .join("|");
        let setup = format!(
            "mode=healthy\nprev=\nfor a in \"$@\"; do\n  if [ \"$prev\" = --port ]; then\n    case \"$a\" in {pattern}) mode=unhealthy ;; esac\n  fi\n  case \"$a\" in {eq_pattern}) mode=unhealthy ;; esac\n  prev=\"$a\"\ndone\n"
        );
        self.write_release(version, &setup)
    }

    /// Writes a rollout spec for `release` (pushed by the CLI from `file`).
    pub fn spec(&self, release: &Release, strategy: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("rollout-{}.toml", release.version));
        let text = format!(
            "service = \"web\"\n[release]\nversion = \"{}\"\nfile = \"{}\"\n[strategy]\n{strategy}\n",
            release.version,
            release.path.display()
        );
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Like [`Fleet::spec`], targeting only `hosts`.
    pub fn spec_for_hosts(
        &self,
        release: &Release,
        strategy: &str,
        hosts: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("rollout-{}.toml", release.version));
        let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let text = format!(
            "service = \"web\"\n[release]\nversion = \"{}\"\nfile = \"{}\"\n[targets]\nhosts = [{}]\n[strategy]\n{strategy}\n",
            release.version,
            release.path.display(),
            list.join(", ")
        );
        fs::write(&path, text)?;
        Ok(path)
    }

    /// URL of the replica the control client would try first.
    pub fn coordinator_url(&self) -> String {
        let i = self.preferred.load(Ordering::Relaxed) % self.coordinators.len();
        self.coordinators[i].url()
    }

    /// URL of the first replica that accepts a TCP connection, starting with the one that last
    /// answered (or that one, if none does).
    fn live_coordinator_url(&self) -> String {
        let n = self.coordinators.len();
        let first = self.preferred.load(Ordering::Relaxed);
        (0..n)
            .map(|k| &self.coordinators[(first + k) % n])
            .find(|c| TcpStream::connect_timeout(&c.addr, Duration::from_millis(300)).is_ok())
            .map_or_else(|| self.coordinator_url(), Coordinator::url)
    }

    /// Runs the `rollgate` CLI against this fleet (a replica that is up, preferring the one
    /// that last answered).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(bin("rollgate"))
            .arg("--coordinator")
            .arg(self.live_coordinator_url())
            .args(self.operator.cli_args())
            .args(args)
            .output()
            .context("cannot run the rollgate CLI")
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            self.failed.store(true, Ordering::Relaxed);
            bail!(
                "rollgate {args:?} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Starts a rollout with the CLI and returns its id.
    pub fn start_rollout(&self, spec: &Path) -> anyhow::Result<String> {
        let out = self.cli_ok(&[
            "--output",
            "json",
            "rollout",
            "start",
            &spec.display().to_string(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("rollout start printed no JSON: {out}"))?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no id in {out}"))
    }

    /// Runs a future on the harness's runtime (for calls on a [`ControlClient`]).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// A control client connected to replica `i`.
    pub fn control_at(&self, i: usize) -> anyhow::Result<ControlClient> {
        let url = self.coordinators[i].url();
        let tls = self.operator.client_config()?;
        let channel = self.runtime.block_on(async {
            tonic::transport::Endpoint::from_shared(url)?
                .tls_config(tls)?
                .connect_timeout(Duration::from_secs(1))
                .timeout(RPC_TIMEOUT)
                .connect()
                .await
        })?;
        Ok(ControlClient::new(channel))
    }

    /// A control client connected to the first replica that accepts a connection, starting
    /// with the one that last answered.
    pub fn control(&self) -> anyhow::Result<ControlClient> {
        let n = self.coordinators.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            match self.control_at(i) {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("{}: {e:#}", self.coordinators[i].id)),
            }
        }
        bail!("no coordinator replica accepts connections: {errors:?}")
    }

    /// Calls the control API on the replica that last answered, failing over to the next one
    /// when a replica is unreachable, unavailable or too slow (killed, stopped, restarting).
    pub fn rpc<T, F, Fut>(&self, what: &str, call: F) -> anyhow::Result<T>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.coordinators.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let id = &self.coordinators[i].id;
            let client = match self.control_at(i) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("{id}: {e:#}"));
                    continue;
                }
            };
            match self.runtime.block_on(call(client)) {
                Ok(r) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                    ) =>
                {
                    errors.push(format!("{id}: {s}"));
                }
                Err(s) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Err(anyhow::Error::from(s).context(format!("{what} on {id}")));
                }
            }
        }
        bail!("{what}: no replica answered: {errors:?}")
    }

    /// Hosts as the coordinator sees them.
    pub fn hosts(&self) -> anyhow::Result<Vec<pb::HostInfo>> {
        let r = self.rpc("ListHosts", |mut c| async move {
            c.list_hosts(pb::ListHostsRequest {}).await
        })?;
        Ok(r.hosts)
    }

    /// A rollout's status from the coordinator.
    pub fn status(&self, id: &str) -> anyhow::Result<pb::RolloutStatus> {
        let id = id.to_string();
        self.rpc("GetRollout", |mut c| {
            let id = id.clone();
            async move { c.get_rollout(pb::RolloutRef { id }).await }
        })
    }

    /// Opens the gate a rollout waits at (`rollgate rollout promote`).
    pub fn promote(&self, id: &str) -> anyhow::Result<pb::RolloutStatus> {
        let id = id.to_string();
        self.rpc("PromoteRollout", |mut c| {
            let id = id.clone();
            async move { c.promote_rollout(pb::RolloutRef { id }).await }
        })
    }

    /// Rolls a rollout back (`rollgate rollout rollback`); returns the rollback's status.
    pub fn rollback(&self, id: &str) -> anyhow::Result<pb::RolloutStatus> {
        let id = id.to_string();
        self.rpc("RollbackRollout", |mut c| {
            let id = id.clone();
            async move { c.rollback_rollout(pb::RolloutRef { id }).await }
        })
    }

    /// The operator vouches that a host is out of the picture (`rollgate host fence`).
    pub fn fence_host(&self, host: &str) -> anyhow::Result<String> {
        let host_id = host.to_string();
        let r = self.rpc("FenceHost", |mut c| {
            let host_id = host_id.clone();
            async move { c.fence_host(pb::HostRef { host_id }).await }
        })?;
        Ok(r.message)
    }

    /// Waits until the rollout has ended and no host is mid-update; returns the final status.
    pub fn wait_settled(&self, id: &str, timeout: Duration) -> anyhow::Result<pb::RolloutStatus> {
        let r = wait_for(&format!("rollout {id} to end"), timeout, || {
            let s = self.status(id)?;
            if is_ended(&s.phase) && s.hosts.iter().all(|h| h.state != "updating") {
                Ok(Some(s))
            } else {
                bail!("{}", brief(&s))
            }
        });
        self.note(r)
    }

    /// [`wait_for`], and the fleet's logs are printed when it times out.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let r = wait_for(what, timeout, check);
        self.note(r)
    }

    /// Waits until `check` holds for the rollout's status; returns that status.
    pub fn wait_status(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&pb::RolloutStatus) -> bool,
    ) -> anyhow::Result<pb::RolloutStatus> {
        let r = wait_for(what, timeout, || {
            let s = self.status(id)?;
            if check(&s) {
                Ok(Some(s))
            } else {
                bail!("{}", brief(&s))
            }
        });
        self.note(r)
    }

    /// Polls the rollout's status for `window`, calling `check` on each one: asserts that
    /// something does NOT happen during a fixed window. Returns the last status.
    pub fn hold_for(
        &self,
        id: &str,
        window: Duration,
        mut check: impl FnMut(&pb::RolloutStatus) -> anyhow::Result<()>,
    ) -> anyhow::Result<pb::RolloutStatus> {
        let end = Instant::now() + window;
        let mut last = None;
        while Instant::now() < end || last.is_none() {
            // A replica that is frozen or failing over may not answer; that is not a violation.
            if let Ok(s) = self.status(id) {
                let r = check(&s).with_context(|| format!("during the window: {}", brief(&s)));
                self.note(r)?;
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(last.expect("polled at least once"))
    }

    /// The moment fault tests strike: installs 1.0.0 everywhere, starts rolling out a healthy
    /// 2.0.0 with `strategy` under an observer, and returns once `ready` holds for its status.
    pub fn mid_rollout(
        &self,
        strategy: &str,
        what: &str,
        ready: impl Fn(&pb::RolloutStatus) -> bool,
    ) -> anyhow::Result<(Observer, String, pb::RolloutStatus)> {
        self.install(
            "1.0.0",
            "max_unavailable = 100\nmin_healthy_time = \"200ms\"",
        )?;
        let observer = self.observe();
        let v2 = self.release("2.0.0", Mode::Healthy)?;
        let id = self.start_rollout(&self.spec(&v2, strategy)?)?;
        let status = self.wait_status(&id, what, Duration::from_secs(60), ready)?;
        Ok((observer, id, status))
    }

    /// Installs `version` (healthy) on every host from scratch and waits until all serve it.
    pub fn install(&self, version: &str, strategy: &str) -> anyhow::Result<()> {
        let rel = self.release(version, Mode::Healthy)?;
        let id = self.start_rollout(&self.spec(&rel, strategy)?)?;
        let s = self.wait_settled(&id, Duration::from_secs(60))?;
        if s.phase != "succeeded" {
            self.failed.store(true, Ordering::Relaxed);
            bail!("installing {version} did not succeed: {s:?}");
        }
        self.wait_all_serving(version)
    }

    /// Waits until every host's service answers healthy with `version`.
    pub fn wait_all_serving(&self, version: &str) -> anyhow::Result<()> {
        let r = wait_for(
            &format!("every host to serve {version}"),
            START_TIMEOUT,
            || {
                let bad: Vec<String> = self
                    .agents
                    .iter()
                    .map(|a| (a, service_version_at(a.service_addr)))
                    .filter(|(_, v)| v.as_deref() != Some(version))
                    .map(|(a, v)| format!("{}: {v:?}", a.id))
                    .collect();
                if bad.is_empty() {
                    Ok(Some(()))
                } else {
                    bail!("not serving {version}: {bad:?}")
                }
            },
        );
        self.note(r)
    }

    /// Agent by host id.
    pub fn agent(&mut self, id: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.id == id)
            .expect("agent exists")
    }

    /// Agent by host id, shared.
    pub fn host(&self, id: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.id == id)
            .expect("agent exists")
    }

    /// The version `host`'s service serves healthy right now, if any (asked directly).
    pub fn serving(&self, host: &str) -> Option<String> {
        service_version_at(self.host(host).service_addr)
    }

    /// The highest fencing token `host`'s agent has durably acted on (its journal).
    pub fn highest_token(&self, host: &str) -> anyhow::Result<Option<u64>> {
        let path = self.host(host).state_dir.join("agent-state.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Ok(v["highest_token"].as_u64())
    }

    /// An observer over every host's service.
    pub fn observe(&self) -> Observer {
        Observer::start(
            self.agents
                .iter()
                .map(|a| (a.id.clone(), a.service_addr))
                .collect(),
        )
    }

    /// An observer that also keeps the worst count per `site` group.
    pub fn observe_grouped(&self) -> Observer {
        Observer::start_grouped(
            self.agents
                .iter()
                .map(|a| (a.id.clone(), a.service_addr, a.group.clone()))
                .collect(),
        )
    }

    /// All keys under `prefix` in etcd with their values, in key order.
    pub fn etcd_get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let r = c
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect())
        })
    }

    /// etcd's current revision (the header of a read under [`ETCD_PREFIX`]): it grows with
    /// every write anywhere in etcd, so an unchanged revision means nothing was written.
    pub fn etcd_revision(&self) -> anyhow::Result<i64> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let r = c
                .get(
                    ETCD_PREFIX,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await?;
            r.header()
                .map(|h| h.revision())
                .context("etcd answered without a header")
        })
    }

    /// Keys under [`ETCD_PREFIX`] last written after revision `rev`, with their mod revision
    /// (deleted keys do not show).
    pub fn etcd_keys_modified_after(&self, rev: i64) -> anyhow::Result<Vec<(String, i64)>> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let r = c
                .get(
                    ETCD_PREFIX,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await?;
            Ok(r.kvs()
                .iter()
                .filter(|kv| kv.mod_revision() > rev)
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.mod_revision(),
                    )
                })
                .collect())
        })
    }

    async fn etcd_client(&self) -> anyhow::Result<etcd_client::Client> {
        self.etcd.client().await
    }

    /// Index (into `coordinators`) of the replica holding leadership, read from the election
    /// key in etcd (`<prefix>leader/<lease>`, the oldest one leads; its value is the
    /// replica_id). `None` while nobody leads.
    pub fn leader(&self) -> anyhow::Result<Option<usize>> {
        let value = self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_sort(
                    etcd_client::SortTarget::Create,
                    etcd_client::SortOrder::Ascend,
                )
                .with_limit(1);
            let r = c.get(format!("{ETCD_PREFIX}leader/"), Some(opts)).await?;
            anyhow::Ok(
                r.kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            )
        })?;
        match value {
            None => Ok(None),
            Some(v) => match self.coordinators.iter().position(|c| c.id == v) {
                Some(i) => Ok(Some(i)),
                None => bail!("the leader key names {v:?}, which is not a replica of this fleet"),
            },
        }
    }

    /// Waits until some replica leads; returns its index.
    pub fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let r = wait_for("a leader", timeout, || self.leader());
        self.note(r)
    }

    /// Waits until a replica other than `old` leads; returns its index.
    pub fn wait_leader_change(&self, old: usize, timeout: Duration) -> anyhow::Result<usize> {
        let r = wait_for(
            &format!("leadership to move away from {}", self.coordinators[old].id),
            timeout,
            || match self.leader()? {
                Some(i) if i != old => Ok(Some(i)),
                other => bail!("leader: {:?}", other.map(|i| &self.coordinators[i].id)),
            },
        );
        self.note(r)
    }

    /// kill -9 etcd, keep it down for `down_for`, then start it again on the same ports and
    /// data dir and wait until it is healthy.
    pub fn restart_etcd(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.etcd.proc.kill9();
        std::thread::sleep(down_for);
        self.etcd.proc.restart()?;
        let r = self.etcd.wait_healthy();
        self.note(r)
    }

    /// Waits until no rollout of `service` is active (the coordinator's
    /// `<prefix>services/<service>/active` key is gone): the next rollout may start.
    pub fn wait_service_free(&self, service: &str) -> anyhow::Result<()> {
        let key = format!("{ETCD_PREFIX}services/{service}/active");
        self.wait(
            &format!("service {service} to be free"),
            Duration::from_secs(10),
            || {
                let kvs = self.etcd_get_prefix(&key)?;
                match kvs.iter().find(|(k, _)| *k == key) {
                    None => Ok(Some(())),
                    Some((_, v)) => bail!("{key} = {v}"),
                }
            },
        )
    }

    /// A cold backup of etcd, taken while no rollout is active: kill -9 it, copy its data dir
    /// to `<dir>/<name>`, start it again.
    pub fn etcd_backup(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.wait_service_free("web")?;
        let data = self.dir.join("etcd-data");
        let backup = self.dir.join(name);
        self.etcd.proc.kill9();
        let copied = copy_dir(&data, &backup);
        self.etcd.proc.restart()?;
        copied?;
        let r = self.etcd.wait_healthy();
        self.note(r)?;
        Ok(backup)
    }

    /// Puts a backup taken with [`Fleet::etcd_backup`] back: kill -9 etcd, replace its data
    /// dir, start it, then restart every coordinator (as an operator does after a restore).
    pub fn etcd_restore(&mut self, backup: &Path) -> anyhow::Result<()> {
        let data = self.dir.join("etcd-data");
        self.etcd.proc.kill9();
        fs::remove_dir_all(&data).with_context(|| format!("cannot remove {}", data.display()))?;
        copy_dir(backup, &data)?;
        self.etcd.proc.restart()?;
        let r = self.etcd.wait_healthy();
        self.note(r)?;
        for c in &self.coordinators {
            c.restart()?;
        }
        self.wait_coordinator()
    }

    /// What the supervisor did: one line per coordinator that exited on its own.
    pub fn coordinator_restarts(&self) -> Vec<String> {
        self.supervisor
            .as_ref()
            .map(|s| lock(&s.events).clone())
            .unwrap_or_default()
    }

    fn net_host(&self, host: &str) -> anyhow::Result<&NetHost> {
        let net = self
            .net
            .as_ref()
            .context("cut/heal need a fleet started with netns: true")?;
        let i = self
            .agents
            .iter()
            .position(|a| a.id == host)
            .with_context(|| format!("no host {host}"))?;
        Ok(&net.hosts[i])
    }

    /// Takes `host`'s link down: agent <-> coordinator and observer <-> service, both ways.
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        let h = self.net_host(host)?;
        ip(&["link", "set", &h.veth, "down"])
    }

    /// Puts `host`'s link back.
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        let h = self.net_host(host)?;
        ip(&["link", "set", &h.veth, "up"])
    }

    fn note<T>(&self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Prints the tail of every log.
    pub fn dump_logs(&self) {
        eprintln!("---- logs under {} ----", self.dir.display());
        let mut logs: Vec<(String, PathBuf, String)> = vec![(
            "etcd".into(),
            self.etcd.proc.log.clone(),
            self.etcd.proc.tail(TAIL_LINES),
        )];
        for c in &self.coordinators {
            logs.push((c.id.clone(), c.log(), c.tail(TAIL_LINES)));
        }
        for a in &self.agents {
            logs.push((a.id.clone(), a.proc.log.clone(), a.proc.tail(TAIL_LINES)));
        }
        for (name, path, tail) in logs {
            eprintln!("==== {name} ({}) ====\n{tail}", path.display());
        }
        for e in self.coordinator_restarts() {
            eprintln!("{e}");
        }
    }

    /// kill -9 a host whole: its agent, then its service (a power cut, as far as the
    /// coordinator and the observer can tell).
    pub fn kill_host(&mut self, id: &str) {
        self.agent(id).proc.kill9();
        kill_services_of(self.host(id));
    }

    /// Sets a label in a host's agent config (it takes effect when the agent restarts).
    pub fn set_label(&self, id: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(id).join("agent.toml");
        let text = fs::read_to_string(&path)?;
        let mut out = String::new();
        let mut in_labels = false;
        for line in text.lines() {
            if line.starts_with('[') {
                in_labels = line == "[labels]";
            }
            if in_labels && line.starts_with(&format!("{key} =")) {
                out.push_str(&format!("{key} = \"{value}\"\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        fs::write(&path, out)?;
        Ok(())
    }

    /// SIGKILLs the service processes an agent left behind (it was killed itself).
    fn kill_orphan_services(&self) {
        for a in &self.agents {
            kill_services_of(a);
        }
    }
}

/// SIGKILLs an agent's service processes.
fn kill_services_of(a: &Agent) {
    for pid in service_pids(a) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// An agent's running service processes, found by their pidfiles and checked to be this host's
/// test service.
pub fn service_pids(a: &Agent) -> Vec<Pid> {
    let mut pidfiles = Vec::new();
    find_named(&a.state_dir, "pid", 4, &mut pidfiles);
    pidfiles
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok()?.trim().parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains("rollgate-testsvc")
                && cmdline.contains(&format!("--port {}", a.service_port))
        })
        .map(Pid::from_raw)
        .collect()
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() || self.failed.load(Ordering::Relaxed) {
            eprintln!("---- test failed ----");
            self.dump_logs();
        }
        if let Some(s) = self.supervisor.as_mut() {
            s.shutdown();
        }
        for a in &mut self.agents {
            a.proc.signal(Signal::SIGCONT);
            a.proc.stop(Duration::from_secs(3));
        }
        self.kill_orphan_services();
        for c in &self.coordinators {
            c.signal(Signal::SIGCONT);
            c.kill9();
        }
        self.etcd.proc.kill9();
        // Namespaces go after every process in them.
        drop(self.net.take());
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            if let Some(guard) = self.dir_guard.take() {
                eprintln!("keeping {}", guard.keep().display());
            }
        }
    }
}

/// `cp -a from to`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("cannot run cp")?;
    if !out.status.success() {
        bail!(
            "cp -a {} {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn find_named(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && depth > 0 {
            find_named(&p, name, depth - 1, out);
        } else if ft.is_file() && e.file_name() == name {
            out.push(p);
        }
    }
}

/// Whether a rollout phase is final.
pub fn is_ended(phase: &str) -> bool {
    matches!(phase, "succeeded" | "failed" | "aborted" | "rolled_back")
}

/// A one-line summary of a status, for wait messages.
pub fn brief(s: &pb::RolloutStatus) -> String {
    format!(
        "phase {} blocked_by {:?} unavailable {}/{} hosts {:?}",
        s.phase,
        s.blocked_by,
        s.unavailable,
        s.max_unavailable,
        s.hosts
            .iter()
            .map(|h| format!(
                "{}:{}{}",
                h.host_id,
                h.state,
                if h.step.is_empty() {
                    String::new()
                } else {
                    format!("/{}", h.step)
                }
            ))
            .collect::<Vec<_>>()
    )
}

/// Minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr: SocketAddr = addr.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {buf:?}"))?;
    let body = buf
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((status, body))
}

/// The version a service on 127.0.0.1:`port` reports, if it is up and healthy.
pub fn service_version(port: u16) -> Option<String> {
    service_version_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// The version the service at `addr` reports, if it is up and healthy.
pub fn service_version_at(addr: SocketAddr) -> Option<String> {
    match http_get(&addr.to_string(), "/health") {
        Ok((200, body)) => body.strip_prefix("ok ").map(str::to_string),
        _ => None,
    }
}

/// Shared state of an observer's polling threads.
#[derive(Debug, Default)]
struct Seen {
    /// Per host: its service is down right now.
    down: Vec<bool>,
    /// Per host: the test says it is unreachable (counts as down whatever the service says).
    forced: Vec<bool>,
    max: usize,
    worst: Vec<String>,
    max_per_group: BTreeMap<String, usize>,
    worst_per_group: BTreeMap<String, Vec<String>>,
    versions: Vec<Vec<String>>,
}

impl Seen {
    fn record(&mut self, names: &[String], groups: &[Option<String>]) {
        let is_down = |j: usize| self.down[j] || self.forced[j];
        let now: Vec<usize> = (0..names.len()).filter(|&j| is_down(j)).collect();
        if now.len() > self.max {
            self.max = now.len();
            self.worst = now.iter().map(|&j| names[j].clone()).collect();
        }
        let mut per_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &j in &now {
            if let Some(g) = &groups[j] {
                per_group.entry(g.as_str()).or_default().push(j);
            }
        }
        for (g, members) in per_group {
            let best = self.max_per_group.entry(g.to_string()).or_insert(0);
            if members.len() > *best {
                *best = members.len();
                self.worst_per_group.insert(
                    g.to_string(),
                    members.iter().map(|&j| names[j].clone()).collect(),
                );
            }
        }
    }
}

/// Polls every host's service directly and keeps the worst count of hosts unavailable at once
/// (fleet-wide, and per group when started with groups).
#[derive(Debug)]
pub struct Observer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    names: Vec<String>,
    groups: Vec<Option<String>>,
}

/// What an observer saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Most hosts unavailable at one instant.
    pub max_unavailable: usize,
    /// Which hosts they were, at the first time that maximum was reached.
    pub worst_set: Vec<String>,
    /// Per group (observers started with groups): most of its hosts unavailable at once.
    /// Groups never seen with a host down are listed with 0.
    pub max_per_group: BTreeMap<String, usize>,
    /// Per group: which hosts, the first time that group's maximum was reached.
    pub worst_per_group: BTreeMap<String, Vec<String>>,
    /// Per host, the distinct versions seen serving healthy, in order.
    pub versions: Vec<(String, Vec<String>)>,
}

impl Observation {
    /// Prints the worst fleet-wide count (and per group, if kept) against the budgets.
    pub fn print(&self, budget: usize, per_group: Option<usize>) {
        println!(
            "observer: worst {} hosts unavailable at once (budget {budget}): {:?}",
            self.max_unavailable, self.worst_set
        );
        if let Some(g) = per_group {
            for (group, max) in &self.max_per_group {
                println!(
                    "observer: {group}: worst {max} unavailable at once (budget {g}): {:?}",
                    self.worst_per_group.get(group).cloned().unwrap_or_default()
                );
            }
        }
    }
}

impl Observer {
    /// Starts one polling thread per (host, service address).
    pub fn start(hosts: Vec<(String, SocketAddr)>) -> Self {
        Self::start_inner(hosts.into_iter().map(|(h, a)| (h, a, None)).collect())
    }

    /// Like [`Observer::start`], also keeping the worst count per group (e.g. `site`).
    pub fn start_grouped(hosts: Vec<(String, SocketAddr, String)>) -> Self {
        Self::start_inner(hosts.into_iter().map(|(h, a, g)| (h, a, Some(g))).collect())
    }

    fn start_inner(hosts: Vec<(String, SocketAddr, Option<String>)>) -> Self {
        let n = hosts.len();
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = hosts.iter().map(|(h, _, _)| h.clone()).collect();
        let groups: Vec<Option<String>> = hosts.iter().map(|(_, _, g)| g.clone()).collect();
        let mut seen = Seen {
            down: vec![false; n],
            forced: vec![false; n],
            versions: vec![Vec::new(); n],
            ..Seen::default()
        };
        for g in groups.iter().flatten() {
            seen.max_per_group.insert(g.clone(), 0);
        }
        let seen = Arc::new(Mutex::new(seen));
        let threads = hosts
            .into_iter()
            .enumerate()
            .map(|(i, (_, addr, _))| {
                let (stop, seen, names, groups) =
                    (stop.clone(), seen.clone(), names.clone(), groups.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let v = service_version_at(addr);
                        {
                            let mut s = lock(&seen);
                            s.down[i] = v.is_none();
                            s.record(&names, &groups);
                            if let Some(v) = v {
                                if s.versions[i].last() != Some(&v) {
                                    s.versions[i].push(v);
                                }
                            }
                        }
                        std::thread::sleep(OBSERVE_EVERY);
                    }
                })
            })
            .collect();
        Observer {
            stop,
            threads,
            seen,
            names,
            groups,
        }
    }

    /// Counts `host` as unavailable (or stops doing so) whatever its service answers: for a
    /// host the coordinator cannot reach (its agent frozen or cut off), which is unavailable
    /// by definition even while its service still answers the observer.
    pub fn count_as_down(&self, host: &str, down: bool) {
        let i = self
            .names
            .iter()
            .position(|n| n == host)
            .expect("observed host");
        let mut s = lock(&self.seen);
        s.forced[i] = down;
        s.record(&self.names, &self.groups);
    }

    /// The worst fleet-wide count so far.
    pub fn max_so_far(&self) -> usize {
        lock(&self.seen).max
    }

    /// Stops polling and reports.
    pub fn finish(self) -> Observation {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let s = lock(&self.seen);
        Observation {
            max_unavailable: s.max,
            worst_set: s.worst.clone(),
            max_per_group: s.max_per_group.clone(),
            worst_per_group: s.worst_per_group.clone(),
            versions: self.names.iter().cloned().zip(s.versions.clone()).collect(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Network namespaces
// ------------------------------------------------------------------------------------------

/// Serializes subnet picking and creation within this process.
static NET_LOCK: Mutex<()> = Mutex::new(());
/// Numbers hosts across every fleet of this process, so names never clash.
static NET_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS`; an error carries its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_out(args).map(|_| ())
}

fn ip_out(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One host's namespace.
#[derive(Debug, Clone)]
pub struct NetHost {
    /// Namespace name, `rg-<pid>-<n>`.
    pub ns: String,
    /// The root-namespace end of its veth pair (on the bridge); down = cut.
    pub veth: String,
    /// Its address (inside the namespace, on `eth0`).
    pub addr: Ipv4Addr,
}

/// A bridge in the root namespace with address 10.213.X.1/24 (X picked free) and one network
/// namespace per host attached to it by a veth pair. Everything is removed on drop (after
/// killing whatever still runs inside the namespaces: processes this harness started).
#[derive(Debug)]
pub struct NetLab {
    /// The bridge's name.
    pub bridge: String,
    /// The bridge's address: coordinators listen here.
    pub gateway: Ipv4Addr,
    /// The hosts, in fleet order.
    pub hosts: Vec<NetHost>,
    bridge_made: bool,
}

impl NetLab {
    /// Creates the bridge and `n` namespaces.
    pub fn create(n: usize) -> anyhow::Result<Self> {
        if let Err(e) = Command::new("ip").arg("-V").output() {
            bail!("netns mode needs iproute2's `ip` (apt-get install iproute2): {e}");
        }
        assert!(n <= 200, "netns mode takes up to 200 hosts");
        let _guard = lock(&NET_LOCK);
        sweep_stale_netns();
        let pid = std::process::id();
        let x = pick_subnet(pid)?;
        let seq = NET_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut lab = NetLab {
            bridge: format!("rgbr{pid:x}-{seq}"),
            gateway: Ipv4Addr::new(10, 213, x, 1),
            hosts: Vec::new(),
            bridge_made: false,
        };
        ip(&["link", "add", &lab.bridge, "type", "bridge"]).context(
            "cannot create a bridge for netns mode: it needs root (CAP_NET_ADMIN); CI runs as root",
        )?;
        lab.bridge_made = true;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.gateway),
            "dev",
            &lab.bridge,
        ])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for i in 0..n {
            let seq = NET_SEQ.fetch_add(1, Ordering::Relaxed);
            let host = NetHost {
                ns: format!("rg-{pid}-{seq}"),
                veth: format!("rgv{pid:x}-{seq}"),
                addr: Ipv4Addr::new(10, 213, x, 11 + i as u8),
            };
            ip(&["netns", "add", &host.ns]).with_context(|| {
                format!(
                    "cannot create network namespace {}: netns mode needs root; CI runs as root",
                    host.ns
                )
            })?;
            lab.hosts.push(host.clone());
            ip(&[
                "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns",
                &host.ns,
            ])?;
            ip(&["link", "set", &host.veth, "master", &lab.bridge, "up"])?;
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for h in &self.hosts {
            if let Ok(pids) = ip_out(&["netns", "pids", &h.ns]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let _ = ip(&["netns", "del", &h.ns]);
            let _ = ip(&["link", "del", &h.veth]);
        }
        if self.bridge_made {
            let _ = ip(&["link", "del", &self.bridge]);
        }
    }
}

/// Picks X for 10.213.X.0/24 that no address on this machine uses yet.
fn pick_subnet(pid: u32) -> anyhow::Result<u8> {
    let addrs = ip_out(&["-o", "-4", "addr", "show"])?;
    let used: BTreeSet<u8> = addrs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("10.213."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let start = (pid % 240) as usize;
    (0..240)
        .map(|k| ((start + k) % 240 + 10) as u8)
        .find(|x| !used.contains(x))
        .context("no free 10.213.X.0/24 subnet for netns mode")
}

/// Removes namespaces, veths and bridges left by test processes that no longer exist (killed
/// before they could clean up). Only names of this harness's exact shape are touched.
fn sweep_stale_netns() {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(list) = ip_out(&["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let parts: Vec<&str> = name.split('-').collect();
            if let ["rg", pid, seq] = parts.as_slice() {
                if let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), seq.parse::<u32>()) {
                    if !alive(pid) {
                        let _ = ip(&["netns", "del", name]);
                    }
                }
            }
        }
    }
    if let Ok(links) = ip_out(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "12: rgv1a2b-3@if2: <...>" -> "rgv1a2b-3"
            let Some(name) = line
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            else {
                continue;
            };
            let hexpid = name
                .strip_prefix("rgbr")
                .or_else(|| name.strip_prefix("rgv"))
                .and_then(|rest| rest.split_once('-'))
                .filter(|(_, seq)| seq.parse::<u32>().is_ok())
                .and_then(|(h, _)| u32::from_str_radix(h, 16).ok());
            if let Some(pid) = hexpid {
                if !alive(pid) {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}
