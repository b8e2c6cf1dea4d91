//! A local single-member etcd, started and supervised when the config names no endpoints, so
//! one machine works out of the box. Its data lives under `state_dir/etcd`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::config::EtcdConfig;

/// How long the local etcd may take to answer its health endpoint.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause before restarting a local etcd that exited.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// How long etcd gets to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running local etcd, restarted if it dies, stopped when the token is cancelled.
#[derive(Debug)]
pub struct LocalEtcd {
    /// Client URL to connect to.
    pub endpoint: String,
    /// The supervisor task; awaited at shutdown so etcd stops before the coordinator exits.
    task: tokio::task::JoinHandle<()>,
}

impl LocalEtcd {
    /// Starts etcd under `state_dir/etcd` and waits until it is healthy.
    pub async fn start(
        cfg: &EtcdConfig,
        state_dir: &Path,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let dir = state_dir.join("etcd");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create local etcd directory {}", dir.display()))?;
        let pidfile = dir.join("etcd.pid");
        kill_stale(&pidfile);
        let endpoint = format!("http://127.0.0.1:{}", cfg.local_port);
        let spawn = Spawn {
            binary: cfg.binary.clone(),
            dir: dir.clone(),
            client_port: cfg.local_port,
            pidfile,
        };
        let child = spawn.spawn()?;
        wait_ready(cfg.local_port).await.with_context(|| {
            format!(
                "local etcd did not become healthy; see {}",
                dir.join("etcd.log").display()
            )
        })?;
        tracing::info!(%endpoint, dir = %dir.display(), "local etcd is up");
        let task = tokio::spawn(supervise(spawn, child, cancel));
        Ok(LocalEtcd { endpoint, task })
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
}

impl Spawn {
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .context("cannot open the local etcd log")?;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.client_port + 1);
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
            .args(["--logger", "zap", "--log-level", "warn"])
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

/// A coordinator killed with -9 leaves its etcd running; stop it so the port is free.
fn kill_stale(pidfile: &Path) {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "etcd" {
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
}

async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if health_ok(port).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no healthy answer on 127.0.0.1:{port}/health within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health_ok(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).contains("\"health\":\"true\"")
}
