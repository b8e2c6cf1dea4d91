//! Coordinator replicas, optionally under libfaketime, and the supervisor that restarts one
//! that exits on its own.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::*;

/// What sets one replica apart from the defaults.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaOpts {
    /// The command that starts it, without its `--config` (a wrapper, libfaketime when its
    /// clock is off, then the binary).
    pub(crate) command: Vec<String>,
    /// It serves `[metrics] listen` on a free loopback port.
    pub(crate) metrics: bool,
    /// The heartbeat interval it asks agents for ([`FleetOpts::heartbeat`]).
    pub(crate) heartbeat: Duration,
}

/// One coordinator replica. Methods take `&self`: the supervisor shares the process.
#[derive(Debug)]
pub struct Coordinator {
    /// Its `replica_id` (`coord-1`, ...): the value of the leader key while it leads.
    pub id: String,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Where it serves Prometheus metrics (`[metrics] listen`; every test replica has one unless
    /// [`FleetOpts::metrics`] is off).
    pub metrics: Option<SocketAddr>,
    /// Its state directory (config, log, artifact store).
    pub dir: PathBuf,
    pub(crate) proc: Arc<Mutex<Proc>>,
}

/// What a test adds to a replica's config.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfigExtra {
    /// Tables appended at the end (`[etcd.tls]`, ...).
    pub tables: Option<String>,
    /// Lines added to the `[metrics]` table, after `listen`.
    pub metrics: Option<String>,
}

impl Coordinator {
    pub(crate) fn start(
        dir: &Path,
        index: usize,
        ip: Ipv4Addr,
        etcd_endpoints: &[String],
        extra: &ConfigExtra,
        pki: &pki::Pki,
        replica: ReplicaOpts,
    ) -> anyhow::Result<Self> {
        let ReplicaOpts {
            command,
            metrics,
            heartbeat,
        } = replica;
        let id = format!("coord-{index}");
        let tls = pki.coordinator(&id, IpAddr::V4(ip))?.toml();
        let addr = SocketAddr::new(IpAddr::V4(ip), free_port());
        let metrics =
            metrics.then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()));
        let metrics_table = metrics.map_or(String::new(), |m| {
            format!(
                "[metrics]\nlisten = \"{m}\"\n{}\n",
                extra.metrics.as_deref().unwrap_or_default()
            )
        });
        let cdir = dir.join(&id);
        fs::create_dir_all(&cdir)?;
        let config = format!(
            r#"listen = "{addr}"
state_dir = "{state}"
replica_id = "{id}"
[etcd]
endpoints = [{endpoints}]
lease_ttl = "{LEASE_TTL_SECS}s"
{insecure_etcd}
[agents]
heartbeat_interval = "{hb}ms"
missed_heartbeats = {MISSED_HEARTBEATS}
{metrics_table}{tls}
{extra}
"#,
            state = cdir.display(),
            hb = heartbeat.as_millis(),
            extra = extra.tables.as_deref().unwrap_or_default(),
            // A plain test etcd must be allowed explicitly (the coordinator refuses it otherwise).
            endpoints = etcd_endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", "),
            insecure_etcd = if etcd_endpoints.iter().all(|e| e.starts_with("http://")) {
                "allow_insecure_etcd = true"
            } else {
                ""
            },
        );
        let cfg_path = cdir.join("coordinator.toml");
        fs::write(&cfg_path, config)?;
        let mut cmd = command;
        cmd.extend(["--config".into(), cfg_path.display().to_string()]);
        let proc = Proc::spawn(&id, &cmd, &cdir.join("coordinator.log"))?;
        Ok(Coordinator {
            id,
            addr,
            metrics,
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
pub(crate) fn faketime_prefix(secs: i64) -> anyhow::Result<Vec<String>> {
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
pub(crate) struct Supervisor {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<JoinHandle<()>>,
    pub(crate) events: Arc<Mutex<Vec<String>>>,
}

impl Supervisor {
    pub(crate) fn start(procs: Vec<(String, Arc<Mutex<Proc>>)>) -> Self {
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

    pub(crate) fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
