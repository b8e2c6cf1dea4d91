//! Big artifacts (issue 17, item 4): a release of `--artifact-mb` MB (default 200) staged on
//! `--artifact-agents` agents (default 50) at once (`stage_first`, the whole fleet as budget)
//! through one coordinator's store. Printed: the coordinator's peak memory (VmHWM) over the
//! push and every download, the agents' peak memory, aggregate and per-agent throughput
//! against references measured in the same run (plain tools doing the same job over TLS on
//! loopback, see [`References`]), and a download cut by `kill -9` of one agent
//! that must resume where it stopped. Then one agent alone stages another release of the same
//! size: the pipeline's own speed against the same references, without 50 downloads sharing
//! the 2 cores.
//!
//! The release is the test service's wrapper script padded with random bytes after its
//! `exec` line (`sh` never reads past it), so it still runs and nothing compresses it.

use std::io::{Read, Write};

use super::*;

/// Coordinator peak RSS while serving: under this, it never held even one copy of the
/// 200 MB artifact, whatever the number of downloads.
const COORD_HWM_BOUND_MIB: f64 = 128.0;
/// An agent's peak RSS while downloading: far below the artifact, so it writes as it
/// receives (an idle agent is ~10 MiB, issue 13).
const AGENT_HWM_BOUND_MIB: f64 = 32.0;
/// "Close" to what the loopback and TLS allow: the reference (plain tools doing the same job,
/// see [`References`]) over the measured throughput.
const SLOWDOWN_BOUND: f64 = 4.0;
/// No agent gets less than its fair share (aggregate / agents) divided by this.
const FAIRNESS_BOUND: f64 = 2.0;
/// Where the cut agent is killed: at this fraction of the download.
const CUT_AT: f64 = 0.4;
/// Bytes a cut may cost again on top of the artifact: what was in flight at the kill
/// (the coordinator's queue and the HTTP/2 window), never the part already on disk.
const RESUME_SLACK_MIB: f64 = 8.0;
/// Niceness of the agents: they stand in for 50 hosts, which would not share the
/// coordinator's and etcd's 2 cores, so they yield to them (a starved coordinator cannot renew
/// its 2 s etcd lease and restarts, which the first run of this benchmark did 3 times).
pub(crate) const AGENT_NICE: &str = "19";
/// Niceness of the agent that stages alone (the coordinator's and etcd's).
const SOLO_NICE: &str = "0";
/// How long one artifact rollout may take.
const ARTIFACT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(1200);

const MIB: f64 = 1024.0 * 1024.0;
const MB: f64 = 1e6;

pub(crate) fn big_artifact(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let size = args.artifact_mb as u64 * 1_000_000;
    let n = fit_agents(args.artifact_agents, size)?;
    let fleet_start = Instant::now();
    let mut fleet = Fleet::start(FleetOpts {
        agents: n,
        bin_dirs: BinDirs {
            coordinator: args.artifact_bins.clone(),
            agent: args.artifact_bins.clone(),
        },
        ..FleetOpts::default()
    })?;
    println!(
        "fleet of {n} agents up in {:.1} s; rollgate binaries from {}",
        fleet_start.elapsed().as_secs_f64(),
        args.artifact_bins
            .as_deref()
            .unwrap_or(&rollgate_tests::bin_dir())
            .display()
    );
    for a in &fleet.agents {
        renice(a)?;
    }
    let rel = fleet.release("2.0.0", Mode::Healthy)?;
    pad(&rel.path, size)?;
    let refs = References::measure(&rel.path, &fleet.dir, n)?;
    let strategy = format!(
        "max_unavailable = {n}\nstage_first = true\nmin_healthy_time = \"100ms\"\n\
         healthy_deadline = \"120s\"\nprogress_deadline = \"20m\""
    );
    let mut peak = Peak::default();
    let id = fleet.start_rollout(&fleet.spec(&rel, &strategy)?)?;
    // The push is done and the downloads are only starting: what the push cost.
    peak.sample(&fleet);
    peak.after_push = peak.hwm;
    let cut = cut_and_restart(&mut fleet, "host-1", size, &mut peak)?;
    let end = fleet.wait(
        "the big-artifact rollout to end",
        ARTIFACT_ROLLOUT_TIMEOUT,
        || {
            peak.sample(&fleet);
            let s = fleet.status(&id)?;
            Ok(s.is_settled().then_some(s))
        },
    )?;
    if end.phase() != Phase::Succeeded {
        bail!("the big-artifact rollout {id} ended {}", end.phase().word());
    }
    peak.sample(&fleet);
    let restarts = fleet.coordinator_restarts().len();
    report.add(
        Figure::new(
            "coordinator restarts during the transfer",
            restarts as f64,
            0.0,
            "",
        )
        .note("each is a lost etcd lease: a starved coordinator"),
    );
    let mut hwm = Vec::new();
    let mut spans = Vec::new();
    for a in fleet.agents.iter().filter(|a| a.id != "host-1") {
        let pid = a.proc.pid().context("agent gone")?.as_raw();
        hwm.push(memory(pid)?.hwm as f64 / 1024.0);
        spans.push(staging_span(&a.proc.log, &rel.version)?);
    }
    let resumed = refetched(&fleet, "host-1", cut, size)?;
    let alone = solo(&fleet, "host-2", size)?;
    print_figures(report, n, size, &refs, peak, &hwm, &spans, resumed);
    report.add(
        Figure::new(
            "one agent alone: reference / measured",
            refs.tls_one / alone,
            SLOWDOWN_BOUND,
            "x",
        )
        .note(format!(
            "{:.0} MB/s: host-2 staged another {:.0} MB release with nothing else moving \
             (download, rolling sha256, fsync, install); {}",
            alone / MB,
            size as f64 / MB,
            refs.note(1)
        )),
    );
    Ok(())
}

/// Lowers an agent's priority to [`AGENT_NICE`].
fn renice(a: &rollgate_tests::Agent) -> anyhow::Result<()> {
    renice_to(a, AGENT_NICE)
}

/// Sets an agent's niceness.
fn renice_to(a: &rollgate_tests::Agent, nice: &str) -> anyhow::Result<()> {
    let pid = a.proc.pid().context("agent gone")?.as_raw();
    let ok = Command::new("renice")
        .args(["-n", nice, "-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("renice of {} failed", a.id);
    }
    Ok(())
}

/// The coordinator's memory, sampled while the transfer runs: its VmHWM is per process, and
/// a restart would start it again.
#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    /// The highest VmHWM seen, KiB.
    hwm: u64,
    /// The last VmRSS seen, KiB.
    rss: u64,
    /// VmHWM when the push had ended (the downloads only starting), KiB.
    after_push: u64,
    samples: usize,
}

impl Peak {
    fn sample(&mut self, fleet: &Fleet) {
        let Some(pid) = fleet.coordinator().pid() else {
            return;
        };
        if let Ok(m) = memory(pid.as_raw()) {
            self.hwm = self.hwm.max(m.hwm);
            self.rss = m.rss;
            self.samples += 1;
        }
    }
}

/// The agents that fit on the fleet's disk (each keeps one copy), with room to spare; the
/// scale used is printed, never reduced silently.
fn fit_agents(want: usize, size: u64) -> anyhow::Result<usize> {
    let dir = std::env::temp_dir();
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(&dir)
        .output()?;
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("cannot read df's answer")?;
    // Each agent's copy, the coordinator's store, the release file and a dd copy, the
    // one-agent release (its file, the store's copy, the agent's), plus 2 GB.
    let need = |n: u64| (n + 6) * size + 2_000_000_000;
    let fit = (0..=want as u64)
        .rev()
        .find(|&k| need(k) <= avail)
        .unwrap_or(0) as usize;
    println!(
        "disk: {:.1} GB free in {}; {want} agents x {:.0} MB need {:.1} GB",
        avail as f64 / 1e9,
        dir.display(),
        size as f64 / MB,
        need(want as u64) as f64 / 1e9
    );
    if fit < want {
        println!("SCALED DOWN: only {fit} agents fit on this disk; measuring with {fit}");
    }
    if fit < 2 {
        bail!("not enough disk space for even 2 copies of the artifact");
    }
    Ok(fit)
}

/// Appends random bytes to the release script until it is `size` bytes long.
fn pad(path: &Path, size: u64) -> anyhow::Result<()> {
    let have = fs::metadata(path)?.len();
    let mut f = fs::OpenOptions::new().append(true).open(path)?;
    let mut rnd = fs::File::open("/dev/urandom")?.take(size.saturating_sub(have));
    std::io::copy(&mut rnd, &mut f)?;
    f.flush()?;
    Ok(())
}

/// Kills `host` with SIGKILL once its download passes [`CUT_AT`], then starts it again;
/// returns the bytes its partial file held after the kill.
fn cut_and_restart(
    fleet: &mut Fleet,
    host: &str,
    size: u64,
    peak: &mut Peak,
) -> anyhow::Result<u64> {
    let staging = fleet.host(host).state_dir.join("services/web/staging");
    let partial = || -> Option<u64> {
        let entries = fs::read_dir(&staging).ok()?;
        entries
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .and_then(|e| e.metadata().ok())
            .map(|m| m.len())
    };
    let at = (size as f64 * CUT_AT) as u64;
    rollgate_tests::wait_for(
        &format!("{host}'s download to pass {at} bytes"),
        ARTIFACT_ROLLOUT_TIMEOUT,
        || {
            peak.sample(fleet);
            Ok(partial().filter(|&len| len >= at).map(|_| ()))
        },
    )?;
    fleet.agent(host).proc.kill9();
    let kept = partial().context("the partial download is gone after the kill")?;
    println!(
        "cut: {host} killed -9 with {kept} of {size} bytes on disk ({:.0}%); restarting it",
        kept as f64 * 100.0 / size as f64
    );
    fleet.agent(host).proc.restart()?;
    renice(fleet.host(host))?;
    Ok(kept)
}

/// What the cut host fetched: (bytes on disk at the kill, the offset it asked the coordinator
/// for after the restart if the coordinator logs it, bytes received after the restart).
#[derive(Debug, Clone, Copy)]
struct Resumed {
    kept: u64,
    asked: Option<u64>,
    after: u64,
}

fn refetched(fleet: &Fleet, host: &str, kept: u64, size: u64) -> anyhow::Result<Resumed> {
    let a = fleet.host(host);
    let addr = a
        .metrics
        .context("the harness gives every agent [metrics]")?;
    let (_, body) = rollgate_tests::http_get(&addr.to_string(), "/metrics")?;
    let after = body
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("fetched_bytes_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .next()
        .with_context(|| format!("no fetched_bytes_total in {host}'s /metrics"))?
        as u64;
    // The coordinator's "serving an artifact" lines for this host (if it logs them): the last.
    let asked = read_log(&fleet.coordinator().log())?
        .iter()
        .filter(|l| l.has("serving artifact") && l.field("host") == Some(host))
        .filter_map(|l| l.field("offset")?.parse().ok())
        .next_back();
    if kept + after < size {
        bail!("{host} holds {kept} + {after} bytes of {size}: the artifact did not complete");
    }
    Ok(Resumed { kept, asked, after })
}

/// (start, end) of an agent's staging of `version` in its log, microseconds: "staging:
/// fetching VERSION" to "staged VERSION ... downloaded".
fn staging_span(log: &Path, version: &str) -> anyhow::Result<(i64, i64)> {
    let lines = read_log(log)?;
    let fetching = format!("staging: fetching {version} ");
    let staged = format!("staged {version} ");
    let start = lines.iter().rfind(|l| l.has(&fetching));
    let end = lines
        .iter()
        .rfind(|l| l.has(&staged) && l.has("downloaded"));
    match (start, end) {
        (Some(s), Some(e)) => Ok((s.at_us, e.at_us)),
        _ => bail!(
            "no staging of {version} (start and end) in {}",
            log.display()
        ),
    }
}

/// One agent alone stages another release of the same size (after the fleet's rollout):
/// its MB/s is the pipeline's own speed, without 50 downloads sharing the 2 cores. At the
/// coordinator's own priority: alone, it cannot starve the coordinator, and at nice 19 it
/// would measure the machine's other work instead.
fn solo(fleet: &Fleet, host: &str, size: u64) -> anyhow::Result<f64> {
    renice_to(fleet.host(host), SOLO_NICE)?;
    let rel = fleet.release("2.1.0", Mode::Healthy)?;
    pad(&rel.path, size)?;
    let strategy = "max_unavailable = 1\nstage_first = true\nmin_healthy_time = \"100ms\"\n\
                    healthy_deadline = \"120s\"\nprogress_deadline = \"20m\"";
    let id = fleet.start_rollout(&fleet.spec_for_hosts(&rel, strategy, &[host])?)?;
    let end = fleet.wait(
        "the one-agent rollout to end",
        ARTIFACT_ROLLOUT_TIMEOUT,
        || {
            let s = fleet.status(&id)?;
            Ok(s.is_settled().then_some(s))
        },
    )?;
    if end.phase() != Phase::Succeeded {
        bail!("the one-agent rollout {id} ended {}", end.phase().word());
    }
    let (start, stop) = staging_span(&fleet.host(host).proc.log, &rel.version)?;
    Ok(size as f64 / ((stop - start) as f64 / 1e6).max(1e-6))
}

#[allow(clippy::too_many_arguments)]
fn print_figures(
    report: &mut Report,
    n: usize,
    size: u64,
    refs: &References,
    coord: Peak,
    hwm: &[f64],
    spans: &[(i64, i64)],
    r: Resumed,
) {
    let scale = format!("{n} agents x {:.0} MB", size as f64 / MB);
    report.add(
        Figure::new(
            "coordinator peak RSS (VmHWM), push + downloads",
            coord.hwm as f64 / 1024.0,
            COORD_HWM_BOUND_MIB,
            "MiB",
        )
        .note(format!(
            "{scale}; VmHWM {:.1} MiB when the push ended; sampled {} times; VmRSS at the \
             end {:.1} MiB",
            coord.after_push as f64 / 1024.0,
            coord.samples,
            coord.rss as f64 / 1024.0
        )),
    );
    let (hmin, hmed, hmax) = spread(hwm);
    report.add(
        Figure::new(
            "agent peak RSS (VmHWM) over a download, worst agent",
            hmax,
            AGENT_HWM_BOUND_MIB,
            "MiB",
        )
        .note(format!(
            "min {hmin:.1}, median {hmed:.1} MiB over {} agents",
            hwm.len()
        )),
    );
    let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.1).max().unwrap_or(0);
    let wall = (last - first) as f64 / 1e6;
    let aggregate = spans.len() as f64 * size as f64 / wall.max(1e-6);
    let reference = refs.tls_job;
    report.add(
        Figure::new(
            "aggregate staging throughput: reference / measured",
            reference / aggregate,
            SLOWDOWN_BOUND,
            "x",
        )
        .note(format!(
            "{:.0} MB/s: {} agents staged {:.0} MB each in {wall:.1} s (download, rolling \
                 sha256, fsync, install); {}",
            aggregate / MB,
            spans.len(),
            size as f64 / MB,
            refs.note(spans.len())
        )),
    );
    let per: Vec<f64> = spans
        .iter()
        .map(|s| size as f64 / ((s.1 - s.0) as f64 / 1e6).max(1e-6) / MB)
        .collect();
    let (pmin, pmed, pmax) = spread(&per);
    let fair = aggregate / MB / spans.len() as f64;
    report.add(
        Figure::new(
            "per-agent throughput: fair share / slowest agent",
            fair / pmin,
            FAIRNESS_BOUND,
            "x",
        )
        .note(format!(
            "fair share {fair:.1} MB/s; per agent min {pmin:.1}, median {pmed:.1}, max \
                 {pmax:.1} MB/s"
        )),
    );
    let twice = (r.kept + r.after).saturating_sub(size) as f64 / MIB;
    report.add(
        Figure::new(
            "bytes fetched again after a kill -9 mid-download",
            twice,
            RESUME_SLACK_MIB,
            "MiB",
        )
        .note(format!(
            "killed with {} bytes on disk; after the restart it asked the coordinator for \
                 offset {} and received {} bytes (kept + received = {} of {size})",
            r.kept,
            r.asked
                .map_or("(not logged)".to_string(), |o| o.to_string()),
            r.after,
            r.kept + r.after
        )),
    );
}

/// (min, median, max) of samples.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |i: usize| s.get(i).copied().unwrap_or(0.0);
    (at(0), at(s.len() / 2), at(s.len().saturating_sub(1)))
}
