//! A local single-member etcd, started and supervised when the config names no endpoints, so
//! one machine works out of the box. Its data lives under `state_dir/etcd`.
//!
//! It speaks mTLS only, on its client port and on its peer port alike (etcd serves its whole
//! gRPC API on the peer port too): certificates from a private CA under `state_dir/etcd-pki`
//! ([`pki`]), made on first start without any setup. Any other local user or process that can
//! reach 127.0.0.1 is refused, and so is every fleet certificate.

pub mod pki;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls::pki_types::ServerName;
use tokio::process::{Child, Command};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::config::EtcdConfig;
use pki::{LocalPki, LOOPBACK};

/// How long the local etcd may take to answer its health endpoint.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between health checks while etcd starts.
const HEALTH_POLL: Duration = Duration::from_millis(50);
/// How long one health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before restarting a local etcd that exited.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// How long etcd gets to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The local etcd's history bounds: compact (every 5 minutes, etcd's schedule in revision
/// mode) down to the last 10,000 revisions, and a 2 GiB backend quota. Freed pages are reused;
/// `etcdctl defrag` returns them to the disk (README: "etcd upkeep").
const COMPACTION: [&str; 6] = [
    "--auto-compaction-mode",
    "revision",
    "--auto-compaction-retention",
    "10000",
    "--quota-backend-bytes",
    "2147483648",
];

/// A running local etcd, restarted if it dies, stopped when the token is cancelled.
#[derive(Debug)]
pub struct LocalEtcd {
    /// Client URL to connect to (`https://127.0.0.1:local_port`).
    pub endpoint: String,
    /// Its CA and the coordinator's client certificate: the only way in.
    pub pki: LocalPki,
    /// Peer URL (`https://127.0.0.1:local_port+1`), to correct what an older data dir records.
    peer_url: String,
    /// The supervisor task; awaited at shutdown so etcd stops before the coordinator exits.
    task: tokio::task::JoinHandle<()>,
}

impl LocalEtcd {
    /// Makes (or reuses) the local CA and certificates, starts etcd under `state_dir/etcd` and
    /// waits until it is healthy.
    pub async fn start(
        cfg: &EtcdConfig,
        state_dir: &Path,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let dir = state_dir.join("etcd");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create local etcd directory {}", dir.display()))?;
        let pki = LocalPki::ensure(state_dir).with_context(|| {
            format!(
                "cannot set up the local etcd's CA in {}",
                state_dir.join(pki::PKI_DIR).display()
            )
        })?;
        let tls = TlsConnector::from(Arc::new(pki.rustls_client()?));
        let pidfile = dir.join("etcd.pid");
        kill_stale(&pidfile, &cfg.binary, &dir.join("data"));
        let endpoint = format!("https://{LOOPBACK}:{}", cfg.local_port);
        let peer_url = format!("https://{LOOPBACK}:{}", cfg.local_port + 1);
        let spawn = Spawn {
            binary: cfg.binary.clone(),
            dir: dir.clone(),
            client_port: cfg.local_port,
            pidfile,
            pki: pki.clone(),
        };
        let child = spawn.spawn()?;
        wait_ready(cfg.local_port, &tls).await.with_context(|| {
            format!(
                "local etcd did not become healthy; see {}",
                dir.join("etcd.log").display()
            )
        })?;
        tracing::info!(
            %endpoint,
            dir = %dir.display(),
            pki = %pki.dir.display(),
            "local etcd is up (mTLS only, private CA)"
        );
        let task = tokio::spawn(supervise(spawn, child, cancel));
        Ok(LocalEtcd {
            endpoint,
            pki,
            peer_url,
            task,
        })
    }

    /// A data directory from before the local etcd used TLS still records its peer URL as
    /// `http://`: record the `https://` one it listens on now. etcd never dials itself, so this
    /// only keeps `etcdctl member list` truthful; a failure is logged and ignored.
    pub async fn record_peer_url(&self, client: &mut etcd_client::Client) {
        let members = match client.member_list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot list the local etcd's members: {e}");
                return;
            }
        };
        for m in members.members() {
            if m.peer_urls() == [self.peer_url.as_str()] {
                continue;
            }
            match client.member_update(m.id(), [self.peer_url.clone()]).await {
                Ok(_) => tracing::info!(
                    was = ?m.peer_urls(),
                    now = %self.peer_url,
                    "recorded the local etcd's peer URL (its data dir is from before TLS)"
                ),
                Err(e) => tracing::warn!("cannot record the local etcd's peer URL: {e}"),
            }
        }
    }

    /// `[etcd]` for connecting to this etcd: `cfg` with the local CA and the coordinator's
    /// client certificate as its `[etcd.tls]`.
    pub fn connect_config(&self, cfg: &EtcdConfig) -> EtcdConfig {
        EtcdConfig {
            tls: Some(self.pki.client_tls()),
            ..cfg.clone()
        }
    }

    /// Waits for the supervisor to stop etcd (after the cancel token fired).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

struct Spawn {
    binary: PathBuf,
    dir: PathBuf,
    client_port: u16,
    pidfile: PathBuf,
    pki: LocalPki,
}

impl Spawn {
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .context("cannot open the local etcd log")?;
        let client = format!("https://{LOOPBACK}:{}", self.client_port);
        let peer = format!("https://{LOOPBACK}:{}", self.client_port + 1);
        // With a data dir, etcd ignores the --initial-* flags (see record_peer_url).
        let pki = &self.pki;
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg("rollgate")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .arg("--initial-cluster")
            .arg(format!("rollgate={peer}"))
            // Clients: TLS, and only certificates from the local CA.
            .arg("--cert-file")
            .arg(&pki.server_cert)
            .arg("--key-file")
            .arg(&pki.server_key)
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--client-cert-auth")
            // The peer port serves the same gRPC API: the same certificate and the same rule.
            .arg("--peer-cert-file")
            .arg(&pki.server_cert)
            .arg("--peer-key-file")
            .arg(&pki.server_key)
            .arg("--peer-trusted-ca-file")
            .arg(&pki.ca)
            .arg("--peer-client-cert-auth")
            .args(["--logger", "zap", "--log-level", "warn"])
            // S9: history does not grow without bound whatever hosts send: keep the last
            // revisions only, and stop writes (alarm NOSPACE) before the disk fills.
            .args(COMPACTION)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start local etcd {:?}: {e}. Install it (Debian/Ubuntu: apt-get install \
                     etcd-server), set etcd.binary to its path, or set etcd.endpoints to an \
                     existing cluster",
                    self.binary
                )
            })?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&self.pidfile, pid.to_string());
        }
        Ok(child)
    }
}

async fn supervise(spawn: Spawn, mut child: Child, cancel: CancellationToken) {
    loop {
        tokio::select! {
            status = child.wait() => {
                tracing::error!(?status, "local etcd exited; restarting it in {:?}", RESTART_DELAY);
                tokio::select! {
                    _ = tokio::time::sleep(RESTART_DELAY) => {}
                    _ = cancel.cancelled() => return,
                }
                match spawn.spawn() {
                    Ok(c) => child = c,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        continue;
                    }
                }
            }
            _ = cancel.cancelled() => {
                stop(&mut child).await;
                let _ = std::fs::remove_file(&spawn.pidfile);
                return;
            }
        }
    }
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A coordinator killed with -9 leaves its etcd running; stop it so the port is free. Only
/// when the pidfile's process really is that etcd: its command line names the etcd binary and
/// this very data dir (a pid is reused; a pidfile can be stale or planted).
fn kill_stale(pidfile: &Path, binary: &Path, data_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !is_our_etcd(&args, binary, data_dir) {
        tracing::warn!(
            pid,
            pidfile = %pidfile.display(),
            cmdline = %rollgate_proto::text::printable(&args.join(" ")),
            "the local etcd's pidfile names a process that is not this etcd (not {} with \
             --data-dir {}); leaving it alone",
            binary.display(),
            data_dir.display()
        );
        return;
    }
    tracing::warn!(
        pid,
        "stopping a local etcd left over by an earlier coordinator"
    );
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `args` (a `/proc/PID/cmdline`) is an etcd started as `binary` on `data_dir`.
fn is_our_etcd(args: &[String], binary: &Path, data_dir: &Path) -> bool {
    let Some(argv0) = args.first() else {
        return false;
    };
    let name = |p: &Path| p.file_name().map(|n| n.to_os_string());
    let same_binary = Path::new(argv0) == binary || name(Path::new(argv0)) == name(binary);
    let data = data_dir.to_string_lossy();
    let same_data = args
        .windows(2)
        .any(|w| w[0] == "--data-dir" && w[1] == data)
        || args.iter().any(|a| *a == format!("--data-dir={data}"));
    same_binary && same_data
}

async fn wait_ready(port: u16, tls: &TlsConnector) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let last = match tokio::time::timeout(HEALTH_TIMEOUT, health(port, tls)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {HEALTH_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no healthy answer on https://{LOOPBACK}:{port}/health within \
                 {READY_TIMEOUT:?}; last: {last}"
            );
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// `GET /health` over TLS with the coordinator's client certificate (etcd takes no other).
async fn health(port: u16, tls: &TlsConnector) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect((LOOPBACK, port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(std::net::IpAddr::V4(LOOPBACK).into());
    let mut s = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let req = format!("GET /health HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read until the answer is in: etcd need not close the connection (or say close_notify).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if text.contains("\"health\":\"true\"") {
            return Ok(());
        }
        if n == 0 {
            return Err(format!(
                "unhealthy: {}",
                text.lines().last().unwrap_or_default()
            ));
        }
    }
}
