//! Rollout wall time against its floor (issue 17, item 3): a release rolled across
//! `--wall-hosts` hosts at budgets 1, 3 and 10. With P hosts at a time, each of the
//! ceil(N/P) waves cannot take less than the service's restart plus `min_healthy_time`; the
//! rest is rollgate's overhead (the hand-over, fetching and swapping, the first probes).
//! Settings: the test service starts in `WALL_START_DELAY_MS` (as the ~0.1 s Python service of
//! the issue); the harness's http probe every 100 ms (the issue's), which the agent runs every
//! 10 ms while a new process has not answered yet (its start-up pace); `min_healthy_time` 2 s;
//! `prefetch = true`, so a host fetches the release while it waits for its slot.

use super::*;

/// The test service's start delay in this benchmark.
const WALL_START_DELAY_MS: u64 = 100;
/// `min_healthy_time` of the measured rollouts.
const WALL_MIN_HEALTHY_MS: u64 = 2000;
/// The budgets rolled at.
const WALL_BUDGETS: [usize; 3] = [1, 3, 10];
/// Issue 17's target: rollgate's overhead per wave.
const WALL_OVERHEAD_BOUND_MS: f64 = 50.0;

pub(crate) fn wall(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let n = args.wall_hosts;
    let fleet = Fleet::start(FleetOpts {
        agents: n,
        start_delay_ms: WALL_START_DELAY_MS,
        ..FleetOpts::default()
    })?;
    fleet.install(
        "1.0.0",
        &format!("max_unavailable = {n}\nmin_healthy_time = \"100ms\""),
    )?;
    for (round, p) in WALL_BUDGETS.into_iter().enumerate() {
        let version = format!("2.0.{round}");
        fleet.wait_service_free("web")?;
        let rel = fleet.release(&version, Mode::Healthy)?;
        let strategy = format!(
            "max_unavailable = {p}\nmin_healthy_time = \"{WALL_MIN_HEALTHY_MS}ms\"\n\
             healthy_deadline = \"30s\"\nprefetch = true"
        );
        let id = fleet.start_rollout(&fleet.spec(&rel, &strategy)?)?;
        let end = fleet.wait_settled(&id, Duration::from_secs(600))?;
        if end.phase() != Phase::Succeeded {
            bail!("rollout {id} at budget {p} ended {}", end.phase().word());
        }
        print_turns(&fleet, &version)?;
        let wall_ms = (end.updated_at_ms - end.created_at_ms) as f64;
        let waves = n.div_ceil(p);
        let floor_ms = waves as f64 * (WALL_START_DELAY_MS + WALL_MIN_HEALTHY_MS) as f64;
        let per_wave = (wall_ms - floor_ms) / waves as f64;
        report.add(
            Figure::new(
                format!("rollout overhead per wave, {n} hosts at budget {p}"),
                per_wave,
                WALL_OVERHEAD_BOUND_MS,
                "ms",
            )
            .note(format!(
                "wall {:.2} s against the floor {waves} waves x ({WALL_START_DELAY_MS} ms \
                 start + {WALL_MIN_HEALTHY_MS} ms min_healthy_time) = {:.2} s",
                wall_ms / 1000.0,
                floor_ms / 1000.0
            )),
        );
    }
    Ok(())
}

/// Where a host's turn went, from the agents' own logs (medians over the hosts): accepted ->
/// the new process started (fetch or staged, swap, stop, start), started -> first passing
/// probe (the service's own start, 100 ms, plus how late the probe saw it), first pass ->
/// order finished (`min_healthy_time`, 2 s, plus the last probe round).
fn print_turns(fleet: &Fleet, version: &str) -> anyhow::Result<()> {
    let (mut to_start, mut to_pass, mut to_done) = (Vec::new(), Vec::new(), Vec::new());
    let healthy = format!("web is healthy on {version}: passing");
    for a in &fleet.agents {
        let log = read_log(&a.proc.log)?;
        let Some(i) = log
            .iter()
            .position(|l| l.has(&format!("accepted order to install web {version}")))
        else {
            continue;
        };
        let at = |text: &str| log[i..].iter().find(|l| l.has(text)).map(|l| l.at_us);
        let (Some(acc), Some(start), Some(pass), Some(done)) = (
            Some(log[i].at_us),
            at("verifying: waiting for"),
            at(&healthy),
            at("order finished: "),
        ) else {
            continue;
        };
        to_start.push(ms(start - acc));
        to_pass.push(ms(pass - start));
        to_done.push(ms(done - pass));
    }
    let p50 = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            percentiles(v).0
        }
    };
    println!(
        "  a host's turn (p50 over {} hosts): accepted -> started {:.1} ms, started -> first \
         pass {:.1} ms (service start {WALL_START_DELAY_MS} ms), first pass -> finished {:.1} \
         ms (min_healthy_time {WALL_MIN_HEALTHY_MS} ms)",
        to_start.len(),
        p50(&to_start),
        p50(&to_pass),
        p50(&to_done)
    );
    Ok(())
}
