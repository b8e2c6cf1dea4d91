//! A fleet: etcd, coordinator replicas and agents, with the operations tests use.

use std::fs;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::*;

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
    /// Where it serves Prometheus metrics (`[metrics] listen`; every test agent has one unless
    /// [`FleetOpts::metrics`] is off).
    pub metrics: Option<SocketAddr>,
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
    pub(crate) dir_guard: Option<tempfile::TempDir>,
    /// etcd.
    pub etcd: Etcd,
    /// The coordinator replicas, `coord-1`...
    pub coordinators: Vec<Coordinator>,
    /// The agents, `host-1`...
    pub agents: Vec<Agent>,
    /// Namespaces, veths and bridge in netns mode.
    pub net: Option<NetLab>,
    pub(crate) opts: FleetOpts,
    pub(crate) runtime: tokio::runtime::Runtime,
    /// The replica the control client tries first (the last one that answered).
    pub(crate) preferred: AtomicUsize,
    pub(crate) supervisor: Option<Supervisor>,
    /// Set when a harness wait failed, so the logs are printed on drop.
    pub(crate) failed: AtomicBool,
    /// Exits the test causes on purpose ([`Fleet::expect_exits`]).
    pub(crate) expected_exits: std::sync::Mutex<Vec<crate::exits::Expectation>>,
    /// Replica i's links to each etcd member when [`FleetOpts::etcd_via_proxy`] is set.
    pub(crate) etcd_proxies: Vec<Vec<TcpProxy>>,
    /// etcd members 2.. of a cluster ([`FleetOpts::etcd_members`]).
    pub etcd_peers: Vec<Etcd>,
}

/// The command that starts replica `k` (without its `--config`): `opts.coordinator_wrap`, then
/// libfaketime when its clock is off, then the binary.
fn coordinator_prefix(opts: &FleetOpts, k: usize) -> anyhow::Result<Vec<String>> {
    let id = format!("coord-{k}");
    let mut prefix: Vec<String> = opts
        .coordinator_wrap
        .iter()
        .map(|w| w.replace("{id}", &id))
        .collect();
    if let Some((_, secs)) = opts.clock_offset.filter(|(r, _)| *r == k) {
        prefix.extend(crate::coordinator::faketime_prefix(secs)?);
    }
    let binary = match &opts.bin_dirs.coordinator {
        Some(dir) => dir.join("rollgate-coordinator"),
        None => bin("rollgate-coordinator"),
    };
    prefix.push(binary.display().to_string());
    Ok(prefix)
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
        let (etcd, etcd_peers) = if opts.etcd_members > 1 {
            assert!(!opts.etcd_secure, "a secure etcd cluster is not built yet");
            let mut members = EtcdCluster::start(&dir, opts.etcd_members)?.members;
            let first = members.remove(0);
            (first, members)
        } else if opts.etcd_secure {
            (Etcd::start_secure(&dir)?, Vec::new())
        } else {
            (Etcd::start(&dir)?, Vec::new())
        };
        let endpoints: Vec<String> = std::iter::once(&etcd)
            .chain(&etcd_peers)
            .map(|e| e.endpoint.clone())
            .collect();
        let extra: Vec<String> = [
            opts.coordinator_extra.clone(),
            etcd.security.as_ref().map(EtcdSecurity::coordinator_toml),
        ]
        .into_iter()
        .flatten()
        .collect();
        let extra = crate::coordinator::ConfigExtra {
            tables: (!extra.is_empty()).then(|| extra.join("\n")),
            metrics: opts.metrics_extra.clone(),
        };
        let ip = net.as_ref().map_or(Ipv4Addr::LOCALHOST, |n| n.gateway);
        let pki = pki::Pki::init(&dir.join("pki"))?;
        let etcd_proxies = if opts.etcd_via_proxy {
            (0..opts.coordinators)
                .map(|_| {
                    endpoints
                        .iter()
                        .map(|e| TcpProxy::start(tcp_proxy::endpoint_addr(e)?))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut coordinators = Vec::new();
        for k in 1..=opts.coordinators {
            let endpoints: Vec<String> = match etcd_proxies.get(k - 1) {
                Some(proxies) => proxies
                    .iter()
                    .zip(&endpoints)
                    .map(|(p, e)| p.endpoint_via(e))
                    .collect(),
                None => endpoints.clone(),
            };
            coordinators.push(Coordinator::start(
                &dir,
                k,
                ip,
                &endpoints,
                &extra,
                &pki,
                ReplicaOpts {
                    command: coordinator_prefix(&opts, k)?,
                    metrics: opts.metrics,
                    heartbeat: opts.heartbeat,
                },
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
            expected_exits: Default::default(),
            failed: AtomicBool::new(false),
            etcd_proxies,
            etcd_peers,
        };
        if let Err(e) = fleet.finish_start() {
            // Drop prints the logs.
            fleet.failed.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(fleet)
    }

    pub(crate) fn finish_start(&mut self) -> anyhow::Result<()> {
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

    /// Replica `i`'s link to etcd; panics unless the fleet has [`FleetOpts::etcd_via_proxy`].
    pub fn etcd_proxy(&self, i: usize) -> &TcpProxy {
        self.etcd_proxies
            .get(i)
            .and_then(|p| p.first())
            .expect("Fleet::etcd_proxy needs FleetOpts::etcd_via_proxy")
    }

    /// Cuts replica `i` off every etcd member (needs [`FleetOpts::etcd_via_proxy`]).
    pub fn cut_etcd_link(&self, i: usize, how: Cut) {
        for p in &self.etcd_proxies[i] {
            p.cut(how);
        }
    }

    /// Heals replica `i`'s links to etcd.
    pub fn heal_etcd_link(&self, i: usize) {
        for p in &self.etcd_proxies[i] {
            p.heal();
        }
    }

    /// etcd member `i` (0-based; 0 is [`Fleet::etcd`]).
    pub fn etcd_member(&mut self, i: usize) -> &mut Etcd {
        match i {
            0 => &mut self.etcd,
            _ => &mut self.etcd_peers[i - 1],
        }
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

    /// Starts agent `index` (`host-{index + 1}`) as [`Fleet::start`] does, without waiting for
    /// its session.
    pub fn add_agent(&mut self, index: usize) -> anyhow::Result<()> {
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
        let ip = self
            .net
            .as_ref()
            .map_or(Ipv4Addr::LOCALHOST, |n| n.hosts[index].addr);
        let metrics = self
            .opts
            .metrics
            .then(|| SocketAddr::new(IpAddr::V4(ip), free_port()));
        let metrics_table = metrics.map_or(String::new(), |m| {
            format!(
                "[metrics]\nlisten = \"{m}\"\n{}\n",
                self.opts.metrics_extra.as_deref().unwrap_or_default()
            )
        });
        let config = format!(
            r#"host_id = "{id}"
{coordinator_line}
state_dir = "{state}"
{tls}
{metrics_table}[labels]
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
        let binary = match &self.opts.bin_dirs.agent {
            Some(dir) => dir.join("rollgate-agent"),
            None => bin("rollgate-agent"),
        };
        cmd.extend([
            binary.display().to_string(),
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
            metrics,
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

    pub(crate) fn write_release(&self, version: &str, mode_setup: &str) -> anyhow::Result<Release> {
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
    pub(crate) fn live_coordinator_url(&self) -> String {
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

    /// Starts the CLI in the background against replica `replica` (a watch, `events --follow`):
    /// its stdout lines arrive on the receiver; kill the child when done.
    pub fn cli_background(
        &self,
        replica: usize,
        args: &[&str],
    ) -> anyhow::Result<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
        use std::io::BufRead;
        let mut child = Command::new(bin("rollgate"))
            .arg("--coordinator")
            .arg(self.coordinators[replica].url())
            .args(self.operator.cli_args())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start `rollgate {}`", args.join(" ")))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok((child, rx))
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
            if s.is_settled() {
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
        if s.phase() != pb::Phase::Succeeded {
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
}
