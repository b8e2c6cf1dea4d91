//! `rollgate-bench`: measures rollgate against the targets in DESIGN.md ("Targets") on a real
//! fleet on loopback (etcd, a coordinator and agents as processes, started by the test
//! harness) and prints each figure as `name: value (bound: X) OK|OVER`. These are measurements,
//! not asserts: an OVER of a design target does not fail the run. Figures marked `[enforced]`
//! are promises made in an issue (the agent's memory, issue 13): an OVER there makes the exit
//! status non-zero, as does a harness failure. Run it through `tests/bench.sh`, which builds
//! the release binaries.
//!
//! Benchmarks (`--only a,b`; default: all):
//! - `idle`: one agent with one installed healthy service idles for `--idle-secs`: its VmRSS
//!   (/proc/PID/status), its CPU time (utime+stime of /proc/PID/stat) over the window, and how
//!   many etcd revisions were added meanwhile (heartbeats must not write).
//! - `agent-rss`: `--rss-agents` idle agents with one installed healthy service each, once
//!   without `[metrics]` and once with it: after `--rss-settle-secs` (past tokio's 10 s
//!   keep-alive of blocking-pool threads, which the install used) each metrics endpoint is
//!   scraped `RSS_SCRAPES` times, then every agent's VmRSS and VmHWM are read. The worst agent
//!   is held to 10 MiB (issue 13: "agent RSS stays <= 10 MiB"); min/median/max are printed.
//! - `handover`: `--hosts` agents, `max_unavailable = 1`: the time between the coordinator
//!   recording a host's result ("host updated and healthy") and granting the next slot ("slot
//!   granted"), over `--handover-rounds` rollouts; plus the same hand-over measured end to end
//!   from the agents' logs (host A's "order finished" to host B's "accepted order").
//! - `halt`: an unhealthy release with `max_unavailable = 2` on `--halt-hosts` hosts: the time
//!   between the coordinator recording the first failure and its "rollout failed" line, and
//!   whether any slot was granted after that.
//! - `scale`: `--scale-agents` agents without services on one coordinator: how many connect,
//!   and the coordinator's RSS and CPU with them all heartbeating. `--metrics off` runs the
//!   coordinator and the agents without `[metrics]`; with `on` (the default) the coordinator's
//!   `/metrics` is scraped every `SCALE_SCRAPE_EVERY` during the CPU window, as a Prometheus
//!   would, so the two runs compare the whole cost of the metrics.
//! - `swarm`: `--swarm-agents` simulated hosts (default 1000) from one load generator in this
//!   process, each a real mTLS agent session with its own host certificate (hello,
//!   heartbeats, orders carried out in `--swarm-exec-ms`), on one coordinator with the
//!   production heartbeat of 1 s (`--swarm-heartbeat-ms`): coordinator CPU and RSS and etcd
//!   revisions over `--swarm-idle-secs`, the round trip on the agents' connections, a
//!   reconnect storm after kill -9 + restart of the coordinator, and a rollout at a 1 %
//!   budget (grants per second, planning rounds, the most hosts holding an order at once).
//! - `wall`: a release rolled across `--wall-hosts` hosts (default 30) at budgets 1, 3 and 10:
//!   the overhead per wave beyond the floor ceil(N/P) x (restart + `min_healthy_time`).
//! - `big-artifact`: a `--artifact-mb` MB release (default 200) staged at once on
//!   `--artifact-agents` agents (default 50) through one coordinator: its peak RSS, the agents'
//!   peak RSS, aggregate and per-agent MB/s against plain tools doing the same job over TLS
//!   on loopback in the same run (with `openssl speed` and `dd` printed beside it), and one
//!   agent killed -9 mid-download, which must resume where it stopped.
//!
//! Times come from the daemons' own log lines: tracing's default timestamp, RFC 3339 in UTC
//! with microseconds (`2025-01-02T03:04:05.123456Z`), written when the event happens. Every
//! process runs on this machine, so one clock stamps them all.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollgate_tests::pb::Phase;
use rollgate_tests::{bin, BinDirs, Fleet, FleetOpts, Mode, Proc, HEARTBEAT};

mod artifact;
mod artifact_ref;
mod footprint;
mod latency;
mod logs;
mod procfs;
mod scale;
mod swarm;
mod swarm_host;
mod wall;

use artifact::*;
use artifact_ref::*;
use footprint::*;
use latency::*;
use logs::*;
use procfs::*;
use scale::*;
use swarm::swarm;
use wall::*;

/// The probe interval the harness configures for every test service.
const PROBE_INTERVAL_MS: f64 = 100.0;

/// Every benchmark, in the order they run.
const BENCHES: [&str; 8] = [
    "idle",
    "agent-rss",
    "handover",
    "halt",
    "scale",
    "wall",
    "swarm",
    "big-artifact",
];

const USAGE: &str = "usage: rollgate-bench [--only idle,agent-rss,handover,halt,scale,wall,swarm,\
big-artifact] [--idle-secs N] [--rss-agents N] [--rss-settle-secs N] [--hosts N] \
[--handover-rounds N] [--halt-hosts N] [--scale-agents N] [--metrics on|off] [--wall-hosts N] \
[--swarm-agents N] [--swarm-heartbeat-ms N] [--swarm-exec-ms N] [--swarm-idle-secs N] \
[--swarm-sources one|many] [--artifact-agents N] [--artifact-mb N] [--artifact-bins DIR]";

/// Issue 13: an idle agent's resident memory, metrics on, stays within this.
const AGENT_RSS_BOUND_MIB: f64 = 10.0;
/// Scrapes of each agent's `/metrics` before its memory is read.
const RSS_SCRAPES: usize = 10;
/// Between two scrapes of one agent.
const RSS_SCRAPE_GAP: Duration = Duration::from_millis(100);
/// How often the scale benchmark scrapes the coordinator while it measures its CPU.
const SCALE_SCRAPE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Args {
    only: Vec<String>,
    idle_secs: u64,
    rss_agents: usize,
    rss_settle_secs: u64,
    hosts: usize,
    handover_rounds: usize,
    halt_hosts: usize,
    scale_agents: usize,
    /// `--metrics on|off`: `[metrics]` on the scale benchmark's coordinator and agents.
    scale_metrics: bool,
    /// Hosts of the `wall` benchmark.
    wall_hosts: usize,
    /// Simulated hosts of the `swarm` benchmark.
    swarm_agents: usize,
    /// The heartbeat interval of the `swarm` coordinator (production's default: 1 s).
    swarm_heartbeat: Duration,
    /// How long a simulated host takes to carry out an order.
    swarm_exec: Duration,
    /// The `swarm` idle window.
    swarm_idle_secs: u64,
    /// `--swarm-sources one`: every simulated host connects from 127.0.0.1 (a fleet behind
    /// one NAT) instead of its own loopback address.
    swarm_one_source: bool,
    /// Agents of the `big-artifact` benchmark.
    artifact_agents: usize,
    /// Size of its release, in MB (10^6 bytes).
    artifact_mb: usize,
    /// `--artifact-bins DIR`: the coordinator and agent binaries of `big-artifact` (another
    /// build's, to compare before and after a change); default: this build's.
    artifact_bins: Option<std::path::PathBuf>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut a = Args {
            only: BENCHES.map(String::from).to_vec(),
            idle_secs: 60,
            rss_agents: 3,
            rss_settle_secs: 15,
            hosts: 6,
            handover_rounds: 3,
            halt_hosts: 6,
            scale_agents: 300,
            scale_metrics: true,
            wall_hosts: 30,
            swarm_agents: 1000,
            swarm_heartbeat: Duration::from_secs(1),
            swarm_exec: Duration::from_millis(100),
            swarm_idle_secs: 30,
            swarm_one_source: false,
            artifact_agents: 50,
            artifact_mb: 200,
            artifact_bins: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let num = || -> anyhow::Result<usize> {
                value
                    .parse()
                    .with_context(|| format!("{flag} takes a number, not {value:?}"))
            };
            match flag.as_str() {
                "--only" => {
                    a.only = value.split(',').map(|s| s.trim().to_string()).collect();
                    for b in &a.only {
                        if !BENCHES.contains(&b.as_str()) {
                            bail!("unknown benchmark {b:?}\n{USAGE}");
                        }
                    }
                }
                "--idle-secs" => a.idle_secs = num()? as u64,
                "--rss-agents" => a.rss_agents = num()?.max(1),
                "--rss-settle-secs" => a.rss_settle_secs = num()? as u64,
                "--hosts" => a.hosts = num()?.max(2),
                "--handover-rounds" => a.handover_rounds = num()?.max(1),
                "--halt-hosts" => a.halt_hosts = num()?.max(3),
                "--scale-agents" => a.scale_agents = num()?,
                "--wall-hosts" => a.wall_hosts = num()?.max(10),
                "--swarm-agents" => a.swarm_agents = num()?.max(1),
                "--swarm-heartbeat-ms" => {
                    a.swarm_heartbeat = Duration::from_millis(num()?.max(10) as u64)
                }
                "--swarm-exec-ms" => a.swarm_exec = Duration::from_millis(num()? as u64),
                "--swarm-idle-secs" => a.swarm_idle_secs = num()?.max(1) as u64,
                "--swarm-sources" => {
                    a.swarm_one_source = match value.as_str() {
                        "one" => true,
                        "many" => false,
                        _ => bail!("--swarm-sources takes one or many, not {value:?}\n{USAGE}"),
                    }
                }
                "--artifact-agents" => a.artifact_agents = num()?.max(2),
                "--artifact-mb" => a.artifact_mb = num()?.max(1),
                "--artifact-bins" => a.artifact_bins = Some(value.into()),
                "--metrics" => {
                    a.scale_metrics = match value.as_str() {
                        "on" => true,
                        "off" => false,
                        _ => bail!("--metrics takes on or off, not {value:?}\n{USAGE}"),
                    }
                }
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        Ok(a)
    }

    fn wants(&self, name: &str) -> bool {
        self.only.iter().any(|b| b == name)
    }
}

/// One benchmark: it adds its figures to the report.
type Bench = fn(&Args, &mut Report) -> anyhow::Result<()>;

/// One measured figure against its bound (lower is better).
#[derive(Debug, Clone)]
struct Figure {
    name: String,
    value: f64,
    bound: f64,
    unit: &'static str,
    note: String,
    /// A promise rather than a design target: an OVER fails the run.
    enforced: bool,
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, bound: f64, unit: &'static str) -> Self {
        Figure {
            name: name.into(),
            value,
            bound,
            unit,
            note: String::new(),
            enforced: false,
        }
    }

    fn enforced(mut self) -> Self {
        self.enforced = true;
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    fn ok(&self) -> bool {
        self.value <= self.bound
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sp = if self.unit.is_empty() { "" } else { " " };
        write!(
            f,
            "{}: {}{sp}{} (bound: {}{sp}{}) {}",
            self.name,
            num(self.value),
            self.unit,
            num(self.bound),
            self.unit,
            if self.ok() { "OK" } else { "OVER" }
        )?;
        if self.enforced {
            write!(f, " [enforced]")?;
        }
        if !self.note.is_empty() {
            write!(f, "  [{}]", self.note)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn add(&mut self, f: Figure) {
        println!("{f}");
        self.figures.push(f);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    println!(
        "rollgate-bench: binaries from {}; harness settings: heartbeat {} ms, probe interval {} ms",
        rollgate_tests::bin_dir().display(),
        HEARTBEAT.as_millis(),
        PROBE_INTERVAL_MS
    );
    let mut report = Report::default();
    let mut failures = Vec::new();
    let benches: [(&str, Bench); 8] = [
        ("idle", idle),
        ("agent-rss", agent_rss),
        ("handover", handover),
        ("halt", halt),
        ("scale", scale),
        ("wall", wall),
        ("swarm", swarm),
        ("big-artifact", big_artifact),
    ];
    for (name, run) in benches {
        if !args.wants(name) {
            continue;
        }
        println!("\n== {name} ==");
        if let Err(e) = run(&args, &mut report) {
            eprintln!("{name}: the benchmark could not run: {e:#}");
            failures.push(name);
        }
    }
    println!("\n== summary ==");
    for f in &report.figures {
        println!("{f}");
    }
    let over = report.figures.iter().filter(|f| !f.ok()).count();
    let broken: Vec<&str> = report
        .figures
        .iter()
        .filter(|f| f.enforced && !f.ok())
        .map(|f| f.name.as_str())
        .collect();
    println!(
        "{} figures, {over} OVER their bound{}{}",
        report.figures.len(),
        if broken.is_empty() {
            String::new()
        } else {
            format!("; enforced bounds broken: {broken:?}")
        },
        if failures.is_empty() {
            String::new()
        } else {
            format!("; benchmarks that could not run: {failures:?}")
        }
    );
    if !failures.is_empty() || !broken.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
