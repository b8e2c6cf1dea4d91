//! The nemesis suite (issue 14, item 3): a randomized, reproducible adversary against one
//! rollout, checked from independent evidence (see `check`).
//!
//! The fleet: a 3-member etcd cluster, 3 coordinator replicas (each reaching every member
//! through its own cuttable proxy, supervised as systemd would), 21 agents in network
//! namespaces in 3 sites, services that take 300 ms to start (so a restart's downtime is
//! visible to the observer, which polls every 10 ms). The rollout: canary 1 with a 1 s bake,
//! `max_unavailable = 3`, `max_unavailable_per_group = 1` by site, `max_failures = 1`. A seed
//! fixes the fault schedule (`schedule::generate`) and whether the release is bad on some
//! hosts (`schedule::bad_hosts`). Faults run for the window, then everything is healed and the
//! rollout must end within [`SETTLE_BOUND`].

mod apply;
mod check;
pub mod schedule;

use std::time::{Duration, Instant};

use crate::*;
use schedule::{Shape, Step};

/// How long the rollout may take to end once the faults have stopped.
pub const SETTLE_BOUND: Duration = Duration::from_secs(90);
/// How long every host gets to serve healthy again after the rollout ended.
const SERVE_BOUND: Duration = Duration::from_secs(30);
/// The budgets of the rollout under test.
const BUDGET: usize = 3;
const GROUP_BUDGET: usize = 1;

/// One run's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// The seed: the same seed replays the same faults at the same offsets.
    pub seed: u64,
    /// How long faults are started for.
    pub window: Duration,
    /// Agents (at least 2).
    pub agents: usize,
}

impl Opts {
    /// The suite's defaults for `seed`: 21 agents, faults for 20 s.
    pub fn new(seed: u64) -> Self {
        Opts {
            seed,
            window: Duration::from_secs(20),
            agents: 21,
        }
    }
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// The run's seed and schedule.
    pub seed: u64,
    pub schedule: Vec<Step>,
    /// Hosts the release fails on.
    pub bad_hosts: Vec<String>,
    /// Worst services down at once, fleet-wide and the worst group.
    pub worst: usize,
    pub worst_group: usize,
    /// Orders the agents accepted, and grants etcd committed.
    pub accepted: usize,
    pub granted: usize,
    /// How the rollout ended and how long after the faults stopped.
    pub ending: String,
    pub settled_after: Duration,
    /// Every promise broken (empty: the run passed).
    pub violations: Vec<String>,
}

impl Report {
    /// The seed, the schedule and the worst values, as the suite prints them.
    pub fn print(&self) {
        println!(
            "nemesis seed {}: {} faults, release bad on {:?}",
            self.seed,
            self.schedule.len(),
            self.bad_hosts
        );
        for s in &self.schedule {
            println!("  {s}");
        }
        println!(
            "nemesis seed {}: worst {} down at once (budget {BUDGET}), worst group {} (budget {GROUP_BUDGET}); {} orders accepted, {} grants committed; {} {:.1}s after the faults stopped",
            self.seed, self.worst, self.worst_group, self.accepted, self.granted, self.ending, self.settled_after.as_secs_f64()
        );
        for v in &self.violations {
            println!("  VIOLATION {v}");
        }
        if !self.violations.is_empty() {
            println!("  replay: NEMESIS_SEEDS={} cargo test -p rollgate-tests --test nemesis -- --nocapture", self.seed);
        }
    }
}

/// Runs one seed end to end.
pub fn run(opts: Opts) -> anyhow::Result<Report> {
    let schedule = schedule::generate(
        opts.seed,
        Shape {
            agents: opts.agents,
            etcd_members: 3,
            window: opts.window,
        },
    );
    let mut fleet = Fleet::start(FleetOpts {
        agents: opts.agents,
        coordinators: 3,
        etcd_members: 3,
        // A plain-http cluster: the secure single etcd's PKI is not built for several members.
        etcd_secure: false,
        etcd_via_proxy: true,
        netns: true,
        sites: 3,
        start_delay_ms: 300,
        ..FleetOpts::default()
    })?;
    fleet.expect_exits(
        "coordinators",
        Expected::Exit,
        "the nemesis stops replicas past their lease and cuts them off etcd",
    );
    fleet.install(
        "1.0.0",
        "max_unavailable = 21\nmin_healthy_time = \"100ms\"",
    )?;
    let bad: Vec<String> = schedule::bad_hosts(opts.seed, opts.agents)
        .into_iter()
        .map(|i| fleet.agents[i].id.clone())
        .collect();
    let bad_refs: Vec<&str> = bad.iter().map(String::as_str).collect();
    let release = fleet.release_failing_on("2.0.0", &bad_refs)?;
    let spec = fleet.spec(
        &release,
        "max_unavailable = 3\ngroup_by = \"site\"\nmax_unavailable_per_group = 1\ncanary = 1\ncanary_gate = \"1s\"\nmax_failures = 1\nmin_healthy_time = \"300ms\"\nhealthy_deadline = \"15s\"",
    )?;
    let observer = Observer::definite_only(
        fleet
            .agents
            .iter()
            .map(|a| (a.id.clone(), a.service_addr, a.group.clone()))
            .collect(),
    );
    let id = start(&fleet, &spec)?;
    run_faults(&mut fleet, &schedule)?;
    let stopped = Instant::now();
    let ended = fleet.wait_settled(&id, SETTLE_BOUND);
    let settled_after = stopped.elapsed();
    let mut violations = Vec::new();
    let ending = match &ended {
        Ok(s) => {
            violations.extend(check::outcome(s));
            format!("{} ({})", s.phase().word(), s.reason)
        }
        Err(e) => {
            violations.push(format!(
                "(d) the rollout did not end within {SETTLE_BOUND:?} of the faults stopping: {e:#}"
            ));
            print_stuck(&fleet, &id);
            "still running".into()
        }
    };
    let _ = wait_for("every host to serve 1.0.0 or 2.0.0", SERVE_BOUND, || {
        Ok(check::endings(&fleet, "1.0.0", "2.0.0")
            .is_empty()
            .then_some(()))
    });
    violations.extend(check::endings(&fleet, "1.0.0", "2.0.0"));
    let seen = observer.finish();
    violations.extend(check::budget(&seen, BUDGET, GROUP_BUDGET));
    let granted = check::granted(&fleet)?;
    let accepted = check::accepted(&fleet)?;
    violations.extend(check::fencing(&granted, &accepted));
    violations.extend(
        fleet
            .unplanned_exits()
            .into_iter()
            .map(|e| format!("(e) {e}")),
    );
    if !violations.is_empty() {
        fleet
            .failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Report {
        seed: opts.seed,
        schedule,
        bad_hosts: bad,
        worst: seen.max_unavailable,
        worst_group: seen.max_per_group.values().copied().max().unwrap_or(0),
        accepted: accepted.values().map(Vec::len).sum(),
        granted: granted.len(),
        ending,
        settled_after,
        violations,
    })
}

/// For a rollout that did not end: every coordinator's log lines about each host not yet
/// final (the logs' tails, printed at drop, are often all status polls).
fn print_stuck(fleet: &Fleet, id: &str) {
    let Ok(s) = fleet.status(id) else { return };
    let stuck: Vec<String> = s
        .hosts
        .iter()
        .filter(|h| matches!(h.state(), pb::HostState::Updating | pb::HostState::Lost))
        .map(|h| h.host_id.clone())
        .collect();
    for c in &fleet.coordinators {
        let Ok(log) = std::fs::read_to_string(c.log()) else {
            continue;
        };
        for h in &stuck {
            let (a, b) = (format!("host={h} "), format!("host={h}}}"));
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&a) || l.contains(&b))
                .collect();
            println!(
                "nemesis: {} about {h} ({} lines, the last 30):",
                c.id,
                lines.len()
            );
            for l in lines.iter().skip(lines.len().saturating_sub(30)) {
                println!("    {l}");
            }
        }
    }
}

/// Starts the rollout. The freshly formed etcd cluster may still be electing its leader on
/// a loaded machine; the CLI then says the coordinator is unavailable and nothing was changed,
/// and the harness retries as an operator would (seed 1125 under a load average of 60).
fn start(fleet: &Fleet, spec: &std::path::Path) -> anyhow::Result<String> {
    let mut tries = 0;
    loop {
        match fleet.start_rollout(spec) {
            Err(e) if tries < 5 && format!("{e:#}").contains("nothing was changed; retry") => {
                println!("nemesis: rollout start refused for now ({e:#}); retrying");
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// Starts and ends every fault at its offset; on return every fault is undone.
fn run_faults(fleet: &mut Fleet, schedule: &[Step]) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // (when it ends, what it hit)
    let mut active: Vec<(Duration, apply::Applied)> = Vec::new();
    let mut next = schedule.iter().peekable();
    loop {
        let now = t0.elapsed();
        active.sort_by_key(|(end, _)| *end);
        if let Some(&(end, applied)) = active.first().filter(|(end, _)| *end <= now) {
            active.remove(0);
            apply::end(fleet, applied)?;
            let _ = end;
            continue;
        }
        if let Some(step) = next.next_if(|s| s.at <= now) {
            let applied = apply::start(fleet, step.fault)?;
            println!(
                "nemesis +{:>5.1}s start {:?} -> {applied:?}",
                now.as_secs_f64(),
                step.fault
            );
            active.push((step.at + step.hold, applied));
            continue;
        }
        let wake = [active.first().map(|(e, _)| *e), next.peek().map(|s| s.at)]
            .into_iter()
            .flatten()
            .min();
        match wake {
            Some(at) => std::thread::sleep(at.saturating_sub(now)),
            None => return Ok(()),
        }
    }
}
