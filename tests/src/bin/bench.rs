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
use rollgate_tests::{bin, Fleet, FleetOpts, Mode, Proc, HEARTBEAT};

/// The probe interval the harness configures for every test service.
const PROBE_INTERVAL_MS: f64 = 100.0;

/// Every benchmark, in the order they run.
const BENCHES: [&str; 5] = ["idle", "agent-rss", "handover", "halt", "scale"];

const USAGE: &str = "usage: rollgate-bench [--only idle,agent-rss,handover,halt,scale] \
[--idle-secs N] [--rss-agents N] [--rss-settle-secs N] [--hosts N] [--handover-rounds N] \
[--halt-hosts N] [--scale-agents N] [--metrics on|off]";

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
    let benches: [(&str, Bench); 5] = [
        ("idle", idle),
        ("agent-rss", agent_rss),
        ("handover", handover),
        ("halt", halt),
        ("scale", scale),
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

// ------------------------------------------------------------------------------------------
// 1. Agent idle footprint
// ------------------------------------------------------------------------------------------

fn idle(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
    fleet.wait_service_free("web")?;
    // Let the end of the install rollout (history, release notes) reach etcd first.
    std::thread::sleep(Duration::from_secs(2));
    let pid = fleet.agents[0]
        .proc
        .pid()
        .context("the agent is not running")?
        .as_raw();
    let window = Duration::from_secs(args.idle_secs);
    println!(
        "agent pid {pid} idles for {window:?} (heartbeat every {} ms, health probe every {} ms)",
        HEARTBEAT.as_millis(),
        PROBE_INTERVAL_MS
    );
    let rev0 = fleet.etcd_revision()?;
    let cpu0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu1 = cpu_ticks(pid)?;
    let elapsed = t0.elapsed();
    let rev1 = fleet.etcd_revision()?;
    let (rss, hwm) = rss_kib(pid)?;
    let connected = fleet.hosts()?.iter().filter(|h| h.connected).count();

    let cpu_pct = (cpu1 - cpu0) as f64 / clk_tck() / elapsed.as_secs_f64() * 100.0;
    report.add(
        Figure::new("agent idle RSS", rss as f64 / 1024.0, 10.0, "MiB")
            .note(format!("VmHWM {:.1} MiB", hwm as f64 / 1024.0)),
    );
    report.add(
        Figure::new("agent idle CPU", cpu_pct, 1.0, "%").note(format!(
            "{} ticks of utime+stime over {:.1} s, one core = 100%",
            cpu1 - cpu0,
            elapsed.as_secs_f64()
        )),
    );
    let heartbeats = (elapsed.as_millis() / HEARTBEAT.as_millis()) as u64;
    let mut added = Figure::new(
        "etcd revisions added while idle",
        (rev1 - rev0) as f64,
        0.0,
        "",
    )
    .note(format!(
        "revision {rev0} -> {rev1} across ~{heartbeats} heartbeats; agent still connected: {}",
        connected == 1
    ));
    if rev1 > rev0 {
        let keys = fleet.etcd_keys_modified_after(rev0)?;
        added.note = format!("{}; keys written: {keys:?}", added.note);
    }
    report.add(added);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 1b. Agent idle memory, metrics off and on (issue 13)
// ------------------------------------------------------------------------------------------

fn agent_rss(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    for metrics in [false, true] {
        let word = if metrics { "on" } else { "off" };
        let fleet = Fleet::start(FleetOpts {
            agents: args.rss_agents,
            sites: 1,
            metrics,
            ..FleetOpts::default()
        })?;
        fleet.install("1.0.0", "max_unavailable = 1\nmin_healthy_time = \"200ms\"")?;
        fleet.wait_service_free("web")?;
        std::thread::sleep(Duration::from_secs(args.rss_settle_secs));
        let mut scrapes = 0;
        let mut page_bytes = 0;
        for a in fleet.agents.iter() {
            let Some(addr) = a.metrics else { continue };
            for _ in 0..RSS_SCRAPES {
                let (code, page) = rollgate_tests::http_get(&addr.to_string(), "/metrics")?;
                if code != 200 {
                    bail!("{}'s /metrics answered {code}", a.id);
                }
                scrapes += 1;
                page_bytes = page_bytes.max(page.len());
                std::thread::sleep(RSS_SCRAPE_GAP);
            }
        }
        // The last answer is written; let the connection's task end.
        std::thread::sleep(Duration::from_secs(1));
        let mut mems = Vec::new();
        for a in &fleet.agents {
            let pid = a.proc.pid().context("an agent is not running")?.as_raw();
            let m = memory(pid)?;
            println!(
                "  {} (metrics {word}): VmRSS {} KiB (anon {}, file {}), VmHWM {} KiB",
                a.id, m.rss, m.anon, m.file, m.hwm
            );
            mems.push(m);
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        let stats = |f: fn(&Memory) -> u64| -> (f64, f64, f64) {
            let mut v: Vec<u64> = mems.iter().map(f).collect();
            v.sort_unstable();
            (mib(v[0]), mib(v[(v.len() - 1) / 2]), mib(v[v.len() - 1]))
        };
        let (rmin, rmed, rmax) = stats(|m| m.rss);
        let (_, _, hmax) = stats(|m| m.hwm);
        let (_, amed, _) = stats(|m| m.anon);
        let (_, fmed, _) = stats(|m| m.file);
        let scraped = if metrics {
            format!(
                "; /metrics scraped {} times each ({page_bytes} bytes)",
                scrapes / mems.len().max(1)
            )
        } else {
            String::new()
        };
        report.add(
            Figure::new(
                format!(
                    "agent idle RSS with metrics {word} (worst of {})",
                    mems.len()
                ),
                rmax,
                AGENT_RSS_BOUND_MIB,
                "MiB",
            )
            .note(format!(
                "min/median/max {rmin:.2}/{rmed:.2}/{rmax:.2} MiB; median anon {amed:.2} + file \
                 {fmed:.2} MiB; VmHWM max {hmax:.2} MiB{scraped}"
            ))
            .enforced(),
        );
    }
    Ok(())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// CPU use of a process over `window`, in percent of one core.
fn cpu_percent(pid: i32, window: Duration) -> anyhow::Result<f64> {
    let cpu0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu1 = cpu_ticks(pid)?;
    Ok((cpu1 - cpu0) as f64 / clk_tck() / t0.elapsed().as_secs_f64() * 100.0)
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn rss_kib(pid: i32) -> anyhow::Result<(u64, u64)> {
    let m = memory(pid)?;
    Ok((m.rss, m.hwm))
}

/// A process's memory from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// VmRSS: resident now (= anon + file + shmem).
    rss: u64,
    /// VmHWM: the most it was ever resident.
    hwm: u64,
    /// RssAnon: heap, stacks, the allocator's arenas.
    anon: u64,
    /// RssFile: pages of the binary and the libraries it touched.
    file: u64,
}

fn memory(pid: i32) -> anyhow::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("odd status line")?
            .parse()?)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// Clock ticks per second of /proc's CPU times (USER_HZ).
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

// ------------------------------------------------------------------------------------------
// Log lines
// ------------------------------------------------------------------------------------------

/// One log line: its timestamp (microseconds since the epoch) and text.
#[derive(Debug, Clone)]
struct Line {
    at_us: i64,
    text: String,
}

impl Line {
    /// The value of `key=` (in a span `{key=v}` or a field ` key=v`), up to whitespace.
    fn field(&self, key: &str) -> Option<&str> {
        let pat = format!("{key}=");
        let mut from = 0;
        while let Some(i) = self.text[from..].find(&pat) {
            let at = from + i;
            let before = self.text[..at].chars().last();
            if matches!(before, Some(' ' | '{' | ',')) {
                let v = &self.text[at + pat.len()..];
                let end = v
                    .find(|c: char| c.is_whitespace() || c == '}' || c == ',')
                    .unwrap_or(v.len());
                return Some(&v[..end]);
            }
            from = at + pat.len();
        }
        None
    }

    fn has(&self, text: &str) -> bool {
        self.text.contains(text)
    }
}

/// Every timestamped line of a log.
fn read_log(path: &Path) -> anyhow::Result<Vec<Line>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            Some(Line {
                at_us: parse_rfc3339_us(ts)?,
                text: l.to_string(),
            })
        })
        .collect())
}

/// `2025-01-02T03:04:05.123456Z` (or with an offset `+01:00`) as microseconds since the epoch.
fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (clock, offset_s) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next()?.parse().ok()?;
    let mut us = 0i64;
    for (k, c) in frac.chars().take(6).enumerate() {
        us += c.to_digit(10)? as i64 * 10i64.pow(5 - k as u32);
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + hh) * 60 + mm) * 60 + ss - offset_s) * 1_000_000 + us)
}

/// p50, p99 and max of a set of samples (nearest rank).
fn percentiles(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (rank(0.50), rank(0.99), s[s.len() - 1])
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

fn add_distribution(
    report: &mut Report,
    name: &str,
    samples: &[f64],
    bound: f64,
    note: &str,
) -> anyhow::Result<()> {
    if samples.is_empty() {
        bail!("no samples for {name}");
    }
    let (p50, p99, max) = percentiles(samples);
    let n = samples.len();
    for (what, v) in [("p50", p50), ("p99", p99), ("max", max)] {
        let mut f = Figure::new(format!("{name} {what}"), v, bound, "ms");
        if what == "p50" {
            f = f.note(format!("{n} samples; {note}"));
        }
        report.add(f);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. Slot hand-over latency
// ------------------------------------------------------------------------------------------

/// The hand-over samples of one rollout, in microseconds.
#[derive(Debug, Default)]
struct Handovers {
    /// Coordinator: result recorded -> next slot granted.
    record_to_grant: Vec<i64>,
    /// Agent A reports done -> coordinator records it.
    report_to_record: Vec<i64>,
    /// Coordinator grants -> agent B accepts the order (journalled).
    grant_to_accept: Vec<i64>,
    /// Agent A's "order finished" -> agent B's "accepted order".
    end_to_end: Vec<i64>,
}

fn handover(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: args.hosts,
        ..FleetOpts::default()
    })?;
    let all = args.hosts;
    fleet.install(
        "1.0.0",
        &format!("max_unavailable = {all}\nmin_healthy_time = \"100ms\""),
    )?;
    let mut total = Handovers::default();
    for round in 0..args.handover_rounds {
        let version = format!("2.0.{round}");
        fleet.wait_service_free("web")?;
        let rel = fleet.release(&version, Mode::Healthy)?;
        let spec = fleet.spec(
            &rel,
            "max_unavailable = 1\nmin_healthy_time = \"100ms\"\nhealthy_deadline = \"20s\"",
        )?;
        let id = fleet.start_rollout(&spec)?;
        let status = fleet.wait_settled(&id, Duration::from_secs(120))?;
        if status.phase() != Phase::Succeeded {
            bail!("rollout {id} of {version} ended {}", status.phase().word());
        }
        let h = handovers_of(&fleet, &id)?;
        println!(
            "round {}: rollout {id}: record->grant ms {:?}",
            round + 1,
            h.record_to_grant.iter().map(|&u| ms(u)).collect::<Vec<_>>()
        );
        total.record_to_grant.extend(h.record_to_grant);
        total.report_to_record.extend(h.report_to_record);
        total.grant_to_accept.extend(h.grant_to_accept);
        total.end_to_end.extend(h.end_to_end);
    }
    let f = |v: &[i64]| v.iter().map(|&u| ms(u)).collect::<Vec<f64>>();
    add_distribution(
        report,
        "slot hand-over (coordinator: result recorded -> next slot granted)",
        &f(&total.record_to_grant),
        5.0,
        "coordination overhead per wave <= 5 ms",
    )?;
    add_distribution(
        report,
        "slot hand-over end to end (agent A order finished -> agent B accepted order)",
        &f(&total.end_to_end),
        5.0,
        "same bound, measured across all three processes",
    )?;
    let (p50a, _, maxa) = percentiles(&f(&total.report_to_record));
    let (p50b, _, maxb) = percentiles(&f(&total.grant_to_accept));
    if let Some((mean, count)) = etcd_fsync_ms(&fleet) {
        println!(
            "  etcd WAL fsync on this machine: mean {mean:.3} ms over {count} fsyncs (each \
             recorded result and each grant is a txn that waits for one)"
        );
    }
    println!(
        "  of which: agent done -> coordinator recorded p50 {p50a:.3} ms max {maxa:.3} ms; \
         slot granted -> next agent accepted p50 {p50b:.3} ms max {maxb:.3} ms"
    );
    Ok(())
}

/// Mean duration (ms) and count of etcd's WAL fsyncs, from its Prometheus metrics.
fn etcd_fsync_ms(fleet: &Fleet) -> Option<(f64, u64)> {
    let (_, body) = rollgate_tests::http_get(&fleet.etcd.metrics_addr(), "/metrics").ok()?;
    let metric = |name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let sum = metric("etcd_disk_wal_fsync_duration_seconds_sum")?;
    let count = metric("etcd_disk_wal_fsync_duration_seconds_count")?;
    (count > 0.0).then(|| (sum / count * 1000.0, count as u64))
}

/// Reads the coordinator's and agents' logs for rollout `id`.
fn handovers_of(fleet: &Fleet, id: &str) -> anyhow::Result<Handovers> {
    let coord = read_log(&fleet.coordinator().log())?;
    let of_rollout = |l: &&Line| l.field("rollout") == Some(id);
    let grants: Vec<&Line> = coord
        .iter()
        .filter(of_rollout)
        .filter(|l| l.has("slot granted"))
        .collect();
    let recorded: Vec<&Line> = coord
        .iter()
        .filter(of_rollout)
        .filter(|l| l.has("host updated and healthy"))
        .collect();
    // Per host: when its agent finished the order and when it accepted it.
    let mut finished = Vec::new();
    let mut accepted = Vec::new();
    for a in &fleet.agents {
        // "accepted order to install" carries the order's span (rollout=...); "order
        // finished" carries only the service's, so it is the first one after the acceptance.
        let log = read_log(&a.proc.log)?;
        let mut in_order = false;
        for l in &log {
            if l.has("accepted order to install") {
                in_order = l.field("rollout") == Some(id);
                if in_order {
                    accepted.push((a.id.clone(), l.at_us));
                }
            } else if in_order && l.has("order finished: ") {
                in_order = false;
                finished.push((a.id.clone(), l.at_us));
            }
        }
    }
    if grants.len() != fleet.agents.len() {
        bail!(
            "expected {} \"slot granted\" lines for {id} in the coordinator's log, found {}",
            fleet.agents.len(),
            grants.len()
        );
    }
    let mut h = Handovers::default();
    for pair in grants.windows(2) {
        let (g0, g1) = (pair[0], pair[1]);
        let prev = g0.field("host").context("slot granted line without host")?;
        let next = g1.field("host").context("slot granted line without host")?;
        // The previous host's result, as the coordinator recorded it.
        let rec = recorded
            .iter()
            .find(|l| l.field("host") == Some(prev))
            .with_context(|| format!("no recorded result of {prev} in {id}"))?;
        if rec.at_us > g1.at_us {
            bail!(
                "{next} was granted before {prev}'s result was recorded: max_unavailable 1 broken?"
            );
        }
        h.record_to_grant.push(g1.at_us - rec.at_us);
        let done = finished.iter().find(|(host, _)| host == prev);
        let acc = accepted.iter().find(|(host, _)| host == next);
        if let Some((_, done)) = done {
            h.report_to_record.push(rec.at_us - done);
        }
        if let Some((_, acc)) = acc {
            h.grant_to_accept.push(acc - g1.at_us);
        }
        if let (Some((_, done)), Some((_, acc))) = (done, acc) {
            h.end_to_end.push(acc - done);
        }
    }
    Ok(h)
}

// ------------------------------------------------------------------------------------------
// 3. Halt latency
// ------------------------------------------------------------------------------------------

fn halt(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let n = args.halt_hosts;
    let fleet = Fleet::start(FleetOpts {
        agents: n,
        ..FleetOpts::default()
    })?;
    fleet.install(
        "1.0.0",
        &format!("max_unavailable = {n}\nmin_healthy_time = \"100ms\""),
    )?;
    let bad = fleet.release("2.0.0", Mode::Unhealthy)?;
    let spec = fleet.spec(
        &bad,
        "max_unavailable = 2\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"2s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let status = fleet.wait_settled(&id, Duration::from_secs(60))?;
    if status.phase() != Phase::Failed {
        bail!(
            "the bad rollout {id} ended {} instead of failed",
            status.phase().word()
        );
    }
    // The last grants or results may still be on their way to the log.
    std::thread::sleep(Duration::from_millis(500));
    let coord = read_log(&fleet.coordinator().log())?;
    let lines: Vec<&Line> = coord
        .iter()
        .filter(|l| l.field("rollout") == Some(id.as_str()))
        .collect();
    let first_failure = lines
        .iter()
        .find(|l| l.has("update failed"))
        .context("no \"update failed\" line for the bad rollout in the coordinator's log")?;
    let halted = lines
        .iter()
        .find(|l| l.has("rollout failed"))
        .context("no \"rollout failed\" line in the coordinator's log")?;
    let grants: Vec<&&Line> = lines.iter().filter(|l| l.has("slot granted")).collect();
    let after_halt = grants.iter().filter(|g| g.at_us > halted.at_us).count();
    let failed_host = first_failure.field("host").unwrap_or("?").to_string();
    let bound = PROBE_INTERVAL_MS + 100.0;
    report.add(
        Figure::new(
            "halt latency (first failure recorded -> rollout failed)",
            ms(halted.at_us - first_failure.at_us),
            bound,
            "ms",
        )
        .note(format!(
            "bound = probe interval {PROBE_INTERVAL_MS} ms + 100 ms; first failure: {failed_host}"
        )),
    );
    // The agent's own verdict, earlier: the first line of the failed host's order that says it
    // is rolling back (its probes failed until healthy_deadline). The agent reports that step
    // to the coordinator at once, but sends its result only after its local rollback (old
    // release restarted and healthy again), so this figure includes that rollback.
    let a = fleet
        .agents
        .iter()
        .find(|a| a.id == failed_host)
        .with_context(|| format!("no agent {failed_host}"))?;
    let log = read_log(&a.proc.log)?;
    let verdict = log
        .iter()
        .filter(|l| l.field("rollout") == Some(id.as_str()))
        .find(|l| l.has("rolling back"))
        .with_context(|| format!("no \"rolling back\" line in {failed_host}'s agent log"))?;
    report.add(
        Figure::new(
            "halt latency (agent's failure verdict -> rollout failed)",
            ms(halted.at_us - verdict.at_us),
            bound,
            "ms",
        )
        .note(format!(
            "verdict {:?}; includes the local rollback before the result is sent",
            shorten(verdict.text.split_once("}: ").map_or("", |(_, m)| m), 60)
        )),
    );
    report.add(Figure::new(
        "slots granted after the halt",
        after_halt as f64,
        0.0,
        "",
    ));
    let mut tried: Vec<&str> = grants.iter().filter_map(|g| g.field("host")).collect();
    tried.sort();
    tried.dedup();
    report.add(
        Figure::new(
            "hosts that took the bad release",
            tried.len() as f64,
            2.0,
            "",
        )
        .note(format!("{tried:?}; budget max_unavailable = 2")),
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 4. Many agents on one coordinator
// ------------------------------------------------------------------------------------------

fn scale(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let k = args.scale_agents;
    if k == 0 {
        println!("skipped (--scale-agents 0)");
        return Ok(());
    }
    let fleet = Fleet::start(FleetOpts {
        agents: 0,
        metrics: args.scale_metrics,
        ..FleetOpts::default()
    })?;
    println!(
        "metrics {} on the coordinator and the agents",
        if args.scale_metrics { "on" } else { "off" }
    );
    let coord_pid = fleet
        .coordinator()
        .pid()
        .context("the coordinator is not running")?
        .as_raw();
    // The coordinator alone (leader lease, election, planner idle) first, so that the
    // extrapolation scales only what the agents add.
    let window = Duration::from_secs(10);
    let base_pct = cpu_percent(coord_pid, Duration::from_secs(5))?;
    let url = fleet.coordinator().url();
    let agent_bin = bin("rollgate-agent");
    let base = fleet.dir.join("bare");
    let started = Instant::now();
    let mut agents: Vec<Proc> = Vec::with_capacity(k);
    for i in 1..=k {
        let id = format!("bare-{i}");
        let dir = base.join(&id);
        fs::create_dir_all(&dir)?;
        // An agent with no services: it connects, says hello and heartbeats.
        let tls = fleet.pki.host(&id)?.toml();
        let metrics = if args.scale_metrics {
            format!(
                "[metrics]\nlisten = \"127.0.0.1:{}\"\n",
                rollgate_tests::free_port()
            )
        } else {
            String::new()
        };
        let cfg = format!(
            "host_id = \"{id}\"\ncoordinator = \"{url}\"\nstate_dir = \"{}\"\n{tls}{metrics}[labels]\nsite = \"site-{}\"\n",
            dir.join("state").display(),
            i % 10
        );
        let path = dir.join("agent.toml");
        fs::write(&path, cfg)?;
        agents.push(Proc::spawn(
            &id,
            &[
                agent_bin.display().to_string(),
                "--config".into(),
                path.display().to_string(),
            ],
            &dir.join("agent.log"),
        )?);
    }
    let deadline = Duration::from_secs(60) + Duration::from_millis(50 * k as u64);
    let mut connected = 0;
    while started.elapsed() < deadline {
        connected = fleet.hosts()?.iter().filter(|h| h.connected).count();
        if connected >= k {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let connect_time = started.elapsed();
    let exited: Vec<usize> = (0..agents.len()).filter(|&i| agents[i].exited()).collect();
    if let Some(&first) = exited.first() {
        println!(
            "{} agents exited; {}'s log:\n{}",
            exited.len(),
            agents[first].name,
            agents[first].tail(5)
        );
    }
    println!("{connected} of {k} agents connected after {connect_time:.1?}");
    // Steady state: every agent heartbeating.
    std::thread::sleep(Duration::from_secs(2));
    let pct = match fleet.coordinator().metrics {
        Some(addr) => {
            // Scraped as a Prometheus would, so the figure holds rendering the page too.
            let stop = AtomicBool::new(false);
            std::thread::scope(|scope| {
                let scraper = scope.spawn(|| scrape_until(&addr.to_string(), &stop));
                let pct = cpu_percent(coord_pid, window);
                stop.store(true, Ordering::Relaxed);
                if let Ok((n, bytes)) = scraper.join() {
                    println!("  coordinator /metrics scraped {n} times ({bytes} bytes)");
                }
                pct
            })?
        }
        None => cpu_percent(coord_pid, window)?,
    };
    let (rss, _) = rss_kib(coord_pid)?;
    let still = fleet.hosts()?.iter().filter(|h| h.connected).count();
    let agent_rss: Vec<u64> = agents
        .iter()
        .filter_map(|p| p.pid())
        .filter_map(|pid| rss_kib(pid.as_raw()).ok().map(|r| r.0))
        .collect();
    let avg_agent = agent_rss.iter().sum::<u64>() as f64 / agent_rss.len().max(1) as f64 / 1024.0;

    let target = 10_000.0;
    report.add(
        Figure::new(
            "agents not connected to one coordinator",
            (k - still.min(k)) as f64,
            0.0,
            "",
        )
        .note(format!(
            "{still} of {k} connected (design target 10000 per replica on 2 cores; this run \
             reached {still})"
        )),
    );
    let per_agent = (pct - base_pct).max(0.0) / still.max(1) as f64;
    report.add(
        Figure::new(
            format!("coordinator CPU with {still} agents, extrapolated linearly to 10000"),
            base_pct + per_agent * target,
            200.0,
            "%",
        )
        .note(format!(
            "measured {pct:.2}% of one core over {window:?} ({base_pct:.2}% with no agent), \
             heartbeats every {} ms (production default 1 s); 2 cores = 200%",
            HEARTBEAT.as_millis()
        )),
    );
    println!(
        "  coordinator RSS with {still} agents: {:.1} MiB; bare agent RSS: {avg_agent:.1} MiB average",
        rss as f64 / 1024.0
    );
    // Stop the agents before the fleet goes (its coordinator and etcd go with it).
    for mut a in agents {
        a.stop(Duration::from_secs(2));
    }
    Ok(())
}

/// Scrapes `addr`'s `/metrics` every `SCALE_SCRAPE_EVERY` until `stop`; returns how many
/// scrapes answered and the size of the last page.
fn scrape_until(addr: &str, stop: &AtomicBool) -> (usize, usize) {
    let (mut n, mut bytes) = (0, 0);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            if let Ok((200, page)) = rollgate_tests::http_get(addr, "/metrics") {
                n += 1;
                bytes = page.len();
            }
            next += SCALE_SCRAPE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (n, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse_to_microseconds() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_us("1970-01-01T00:00:01.000002Z"),
            Some(1_000_002)
        );
        // 2025-01-02T03:04:05.123456Z = 1735787045 s.
        assert_eq!(
            parse_rfc3339_us("2025-01-02T03:04:05.123456Z"),
            Some(1_735_787_045_123_456)
        );
        assert_eq!(
            parse_rfc3339_us("2025-01-02T04:04:05.123456+01:00"),
            Some(1_735_787_045_123_456)
        );
        assert_eq!(parse_rfc3339_us("INFO"), None);
    }

    #[test]
    fn fields_come_from_spans_and_events() {
        let l = Line {
            at_us: 0,
            text: "2025-01-02T03:04:05.123456Z  INFO session{host=host-2}: host updated and healthy rollout=r-1 token=7 version=2.0.0".into(),
        };
        assert_eq!(l.field("host"), Some("host-2"));
        assert_eq!(l.field("rollout"), Some("r-1"));
        assert_eq!(l.field("token"), Some("7"));
        assert_eq!(l.field("id"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&s), (50.0, 99.0, 100.0));
        assert_eq!(percentiles(&[3.0]), (3.0, 3.0, 3.0));
    }
}
