//! Test harness for rollgate: starts a real etcd, coordinators and agents as processes on
//! 127.0.0.1 with free ports, each with its own directory and log file, plus the test service
//! (`rollgate-testsvc`) whose releases are tiny wrapper scripts with a chosen behaviour.
//!
//! Layout:
//! - [`Fleet`]: etcd + one coordinator + N agents; prints every log's tail when a test fails.
//! - [`Observer`]: polls every host's service directly (not the coordinator's word) and records
//!   the most hosts it ever saw unavailable at once.
//! - [`wait_for`]: waits for a condition with a deadline and says what it last saw.
//!
//! Binaries come from the cargo target directory next to the test executable; build them
//! first with `cargo build --workspace --bins` (`tests/run.sh` does).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rollgate_proto::pb;

/// How long a daemon may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the observer polls each service.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(10);
/// Timeout of one observer poll.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Heartbeat interval the test coordinator asks agents for (3 missed = offline).
pub const HEARTBEAT: Duration = Duration::from_millis(300);
/// Lease TTL of test coordinators (leader failover after kill -9 takes up to this long).
pub const LEASE_TTL_SECS: u64 = 2;
/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 40;

/// Directory holding the workspace's binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path of one of the workspace's binaries; panics with the fix if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
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
    fn spawn(name: &str, cmd: &[String], log: &Path) -> anyhow::Result<Self> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("RUST_LOG", "info")
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
        self.kill9();
        let mut fresh = Proc::spawn(&self.name, &self.cmd, &self.log)?;
        self.child = fresh.child.take();
        Ok(())
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process cannot die of SIGKILL until continued.
        self.signal(Signal::SIGCONT);
        self.kill9();
    }
}

/// A real etcd server on free ports.
#[derive(Debug)]
pub struct Etcd {
    /// The process.
    pub proc: Proc,
    /// Client URL.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd (`ETCD_BIN` or `etcd` from PATH) under `dir` and waits until it is healthy.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let client = free_port();
        let peer = free_port();
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let cmd: Vec<String> = vec![
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
        let proc = Proc::spawn("etcd", &cmd, &dir.join("etcd.log")).context(
            "cannot start etcd: install it (apt-get install etcd-server) or set ETCD_BIN",
        )?;
        let etcd = Etcd { proc, endpoint };
        wait_for("etcd to be healthy", START_TIMEOUT, || {
            Ok(http_get(&format!("127.0.0.1:{client}"), "/health")
                .ok()
                .filter(|(_, body)| body.contains("\"health\":\"true\""))
                .map(|_| ()))
        })?;
        Ok(etcd)
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
    /// Its state directory.
    pub state_dir: PathBuf,
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

/// A release artifact on disk.
#[derive(Debug, Clone)]
pub struct Release {
    /// Version string.
    pub version: String,
    /// The wrapper script.
    pub path: PathBuf,
}

/// Settings for a fleet.
#[derive(Debug, Clone)]
pub struct FleetOpts {
    /// Number of agents.
    pub agents: usize,
    /// Extra delay the test service waits before it binds (makes each restart's outage long
    /// enough for the observer to see overlaps).
    pub start_delay_ms: u64,
}

impl Default for FleetOpts {
    fn default() -> Self {
        FleetOpts {
            agents: 3,
            start_delay_ms: 0,
        }
    }
}

/// etcd + one coordinator + N agents.
#[derive(Debug)]
pub struct Fleet {
    /// Everything lives here (kept when `KEEP_TEST_DIRS` is set).
    pub dir: PathBuf,
    /// Removes `dir` on drop unless `KEEP_TEST_DIRS` is set.
    dir_guard: Option<tempfile::TempDir>,
    /// etcd.
    pub etcd: Etcd,
    /// The coordinator.
    pub coordinator: Proc,
    /// Its gRPC address.
    pub coordinator_addr: SocketAddr,
    /// The agents, `host-1`...
    pub agents: Vec<Agent>,
    opts: FleetOpts,
    runtime: tokio::runtime::Runtime,
}

impl Fleet {
    /// Starts etcd, a coordinator and `opts.agents` agents, and waits until all are connected.
    pub fn start(opts: FleetOpts) -> anyhow::Result<Self> {
        let dir_guard = tempfile::Builder::new()
            .prefix("rollgate-test-")
            .tempdir()?;
        let dir = dir_guard.path().to_path_buf();
        let etcd = Etcd::start(&dir)?;
        let port = free_port();
        let coordinator_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let cdir = dir.join("coordinator");
        fs::create_dir_all(&cdir)?;
        let config = format!(
            r#"listen = "{coordinator_addr}"
state_dir = "{state}"
replica_id = "coord-1"
[etcd]
endpoints = ["{endpoint}"]
lease_ttl = "{LEASE_TTL_SECS}s"
[agents]
heartbeat_interval = "{hb}ms"
missed_heartbeats = 3
"#,
            state = cdir.display(),
            endpoint = etcd.endpoint,
            hb = HEARTBEAT.as_millis(),
        );
        let cfg_path = cdir.join("coordinator.toml");
        fs::write(&cfg_path, config)?;
        let coordinator = Proc::spawn(
            "coordinator",
            &[
                bin("rollgate-coordinator").display().to_string(),
                "--config".into(),
                cfg_path.display().to_string(),
            ],
            &cdir.join("coordinator.log"),
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut fleet = Fleet {
            dir,
            dir_guard: Some(dir_guard),
            etcd,
            coordinator,
            coordinator_addr,
            agents: Vec::new(),
            opts: opts.clone(),
            runtime,
        };
        fleet.wait_coordinator()?;
        for i in 1..=opts.agents {
            fleet.add_agent(&format!("host-{i}"))?;
        }
        fleet.wait_connected(opts.agents)?;
        Ok(fleet)
    }

    /// Waits until the coordinator answers.
    pub fn wait_coordinator(&self) -> anyhow::Result<()> {
        wait_for("the coordinator to answer", START_TIMEOUT, || {
            Ok(self.hosts().ok().map(|_| ()))
        })
    }

    fn add_agent(&mut self, id: &str) -> anyhow::Result<()> {
        let adir = self.dir.join(id);
        fs::create_dir_all(&adir)?;
        let service_port = free_port();
        let state_dir = adir.join("state");
        let config = format!(
            r#"host_id = "{id}"
coordinator = "http://{addr}"
state_dir = "{state}"
[labels]
site = "site-{site}"
[[services]]
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
"#,
            addr = self.coordinator_addr,
            state = state_dir.display(),
            site = self.agents.len() % 3,
        );
        let cfg_path = adir.join("agent.toml");
        fs::write(&cfg_path, config)?;
        let proc = Proc::spawn(
            id,
            &[
                bin("rollgate-agent").display().to_string(),
                "--config".into(),
                cfg_path.display().to_string(),
            ],
            &adir.join("agent.log"),
        )?;
        self.agents.push(Agent {
            id: id.to_string(),
            proc,
            service_port,
            state_dir,
        });
        Ok(())
    }

    /// Waits until `n` hosts are connected.
    pub fn wait_connected(&self, n: usize) -> anyhow::Result<()> {
        wait_for(&format!("{n} agents to connect"), START_TIMEOUT, || {
            let hosts = self.hosts()?;
            let c = hosts.iter().filter(|h| h.connected).count();
            if c >= n {
                Ok(Some(()))
            } else {
                bail!("{c} of {n} connected")
            }
        })
    }

    /// Writes a release of the test service: a wrapper script that runs `rollgate-testsvc`.
    pub fn release(&self, version: &str, mode: Mode) -> anyhow::Result<Release> {
        let mode_word = match mode {
            Mode::Healthy => "healthy",
            Mode::Unhealthy => "unhealthy",
            Mode::Crash => "crash",
        };
        let rdir = self.dir.join("releases");
        fs::create_dir_all(&rdir)?;
        let path = rdir.join(format!("web-{version}"));
        let script = format!(
            "#!/bin/sh\nexec {svc} --version {version} --mode {mode_word} --start-delay-ms {delay} \"$@\"\n",
            svc = bin("rollgate-testsvc").display(),
            delay = self.opts.start_delay_ms,
        );
        fs::write(&path, script)?;
        Ok(Release {
            version: version.to_string(),
            path,
        })
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

    /// Runs the `rollgate` CLI against this fleet's coordinator.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(bin("rollgate"))
            .arg("--coordinator")
            .arg(format!("http://{}", self.coordinator_addr))
            .args(args)
            .output()
            .context("cannot run the rollgate CLI")
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
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

    fn control(
        &self,
    ) -> anyhow::Result<pb::control_service_client::ControlServiceClient<tonic::transport::Channel>>
    {
        let url = format!("http://{}", self.coordinator_addr);
        let channel = self.runtime.block_on(async {
            tonic::transport::Endpoint::from_shared(url)?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(5))
                .connect()
                .await
        })?;
        Ok(pb::control_service_client::ControlServiceClient::new(
            channel,
        ))
    }

    /// Hosts as the coordinator sees them.
    pub fn hosts(&self) -> anyhow::Result<Vec<pb::HostInfo>> {
        let mut c = self.control()?;
        let r = self
            .runtime
            .block_on(c.list_hosts(pb::ListHostsRequest {}))?;
        Ok(r.into_inner().hosts)
    }

    /// A rollout's status from the coordinator.
    pub fn status(&self, id: &str) -> anyhow::Result<pb::RolloutStatus> {
        let mut c = self.control()?;
        let r = self
            .runtime
            .block_on(c.get_rollout(pb::RolloutRef { id: id.into() }))?;
        Ok(r.into_inner())
    }

    /// Waits until the rollout has ended and no host is mid-update; returns the final status.
    pub fn wait_settled(&self, id: &str, timeout: Duration) -> anyhow::Result<pb::RolloutStatus> {
        wait_for(&format!("rollout {id} to end"), timeout, || {
            let s = self.status(id)?;
            let ended = matches!(s.phase.as_str(), "succeeded" | "failed" | "aborted");
            if ended && s.hosts.iter().all(|h| h.state != "updating") {
                Ok(Some(s))
            } else {
                bail!(
                    "phase {} blocked_by {:?} hosts {:?}",
                    s.phase,
                    s.blocked_by,
                    s.hosts
                        .iter()
                        .map(|h| format!("{}:{}", h.host_id, h.state))
                        .collect::<Vec<_>>()
                )
            }
        })
    }

    /// Installs `version` (healthy) on every host from scratch and waits until all serve it.
    pub fn install(&self, version: &str, strategy: &str) -> anyhow::Result<()> {
        let rel = self.release(version, Mode::Healthy)?;
        let id = self.start_rollout(&self.spec(&rel, strategy)?)?;
        let s = self.wait_settled(&id, Duration::from_secs(60))?;
        if s.phase != "succeeded" {
            bail!("installing {version} did not succeed: {s:?}");
        }
        self.wait_all_serving(version)
    }

    /// Waits until every host's service answers healthy with `version`.
    pub fn wait_all_serving(&self, version: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("every host to serve {version}"),
            START_TIMEOUT,
            || {
                let bad: Vec<String> = self
                    .agents
                    .iter()
                    .filter(|a| service_version(a.service_port).as_deref() != Some(version))
                    .map(|a| a.id.clone())
                    .collect();
                if bad.is_empty() {
                    Ok(Some(()))
                } else {
                    bail!("not serving {version}: {bad:?}")
                }
            },
        )
    }

    /// Agent by host id.
    pub fn agent(&mut self, id: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.id == id)
            .expect("agent exists")
    }

    /// An observer over every host's service.
    pub fn observe(&self) -> Observer {
        Observer::start(
            self.agents
                .iter()
                .map(|a| (a.id.clone(), a.service_port))
                .collect(),
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- test failed; logs under {} ----", self.dir.display());
            let mut procs: Vec<&Proc> = vec![&self.etcd.proc, &self.coordinator];
            procs.extend(self.agents.iter().map(|a| &a.proc));
            for p in procs {
                eprintln!(
                    "==== {} ({}) ====\n{}",
                    p.name,
                    p.log.display(),
                    p.tail(TAIL_LINES)
                );
            }
        }
        for a in &mut self.agents {
            a.proc.signal(Signal::SIGCONT);
            a.proc.stop(Duration::from_secs(3));
        }
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            if let Some(guard) = self.dir_guard.take() {
                eprintln!("keeping {}", guard.keep().display());
            }
        }
    }
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

/// The version a host's test service reports, if it is up and healthy.
pub fn service_version(port: u16) -> Option<String> {
    match http_get(&format!("127.0.0.1:{port}"), "/health") {
        Ok((200, body)) => body.strip_prefix("ok ").map(str::to_string),
        _ => None,
    }
}

/// Polls every host's service directly and keeps the worst count of hosts unavailable at once.
#[derive(Debug)]
pub struct Observer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    down: Arc<Mutex<Vec<bool>>>,
    max: Arc<AtomicUsize>,
    worst: Arc<Mutex<Vec<String>>>,
    names: Vec<String>,
    versions: Arc<Mutex<Vec<Vec<String>>>>,
}

/// What an observer saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Most hosts unavailable at one instant.
    pub max_unavailable: usize,
    /// Which hosts they were, at the first time that maximum was reached.
    pub worst_set: Vec<String>,
    /// Per host, the distinct versions seen serving healthy, in order.
    pub versions: Vec<(String, Vec<String>)>,
}

impl Observer {
    /// Starts one polling thread per (host, port).
    pub fn start(hosts: Vec<(String, u16)>) -> Self {
        let n = hosts.len();
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(Mutex::new(vec![false; n]));
        let max = Arc::new(AtomicUsize::new(0));
        let worst = Arc::new(Mutex::new(Vec::new()));
        let versions = Arc::new(Mutex::new(vec![Vec::new(); n]));
        let names: Vec<String> = hosts.iter().map(|(h, _)| h.clone()).collect();
        let threads = hosts
            .into_iter()
            .enumerate()
            .map(|(i, (_, port))| {
                let (stop, down, max, worst, versions, names) = (
                    stop.clone(),
                    down.clone(),
                    max.clone(),
                    worst.clone(),
                    versions.clone(),
                    names.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let v = service_version(port);
                        {
                            let mut d = down.lock().expect("observer lock");
                            d[i] = v.is_none();
                            let count = d.iter().filter(|x| **x).count();
                            if count > max.load(Ordering::Relaxed) {
                                max.store(count, Ordering::Relaxed);
                                *worst.lock().expect("observer lock") = d
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, x)| **x)
                                    .map(|(j, _)| names[j].clone())
                                    .collect();
                            }
                        }
                        if let Some(v) = v {
                            let mut vs = versions.lock().expect("observer lock");
                            if vs[i].last() != Some(&v) {
                                vs[i].push(v);
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
            down,
            max,
            worst,
            names,
            versions,
        }
    }

    /// Stops polling and reports.
    pub fn finish(self) -> Observation {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let _ = self.down;
        let versions = self.versions.lock().expect("observer lock").clone();
        let worst_set = self.worst.lock().expect("observer lock").clone();
        Observation {
            max_unavailable: self.max.load(Ordering::Relaxed),
            worst_set,
            versions: self.names.into_iter().zip(versions).collect(),
        }
    }
}
