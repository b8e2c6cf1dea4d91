//! 1. The agent's idle footprint, and its memory with metrics off and on (issue 13).

use super::*;

// ------------------------------------------------------------------------------------------
// 1. Agent idle footprint
// ------------------------------------------------------------------------------------------

pub(crate) fn idle(args: &Args, report: &mut Report) -> anyhow::Result<()> {
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

pub(crate) fn agent_rss(args: &Args, report: &mut Report) -> anyhow::Result<()> {
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
