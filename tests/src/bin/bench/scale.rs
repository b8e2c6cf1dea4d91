//! 4. Many agents on one coordinator.

use super::*;

// ------------------------------------------------------------------------------------------
// 4. Many agents on one coordinator
// ------------------------------------------------------------------------------------------

pub(crate) fn scale(args: &Args, report: &mut Report) -> anyhow::Result<()> {
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
pub(crate) fn scrape_until(addr: &str, stop: &AtomicBool) -> (usize, usize) {
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
