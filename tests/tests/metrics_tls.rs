//! https with client certificates on `/metrics` (issue 13): a coordinator serves its metrics
//! over TLS (`[metrics] tls_cert`, `tls_key`) and takes only scrapers whose certificate its
//! `client_ca` signed; an agent takes the same settings. The real Prometheus scrapes both with a
//! client certificate (`up` is 1), and the coordinator without one (`up` is 0, refused for the
//! certificate); a plain rustls client sees the exact TLS alert for no certificate and for a
//! stranger's, and a 200 with the right one. A key that
//! is not the certificate's, or a missing certificate, stops the coordinator (and the agent)
//! at start with an error naming the file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use rollgate_tests::prometheus::{Prometheus, ScrapeJob, ScrapeTls};
use rollgate_tests::scrape_tls::{https_get, CertFiles, HttpsOutcome, ScrapePki};
use rollgate_tests::{bin, http_get, wait_for, Fleet, FleetOpts, Proc};
use rustls::AlertDescription;

/// How long Prometheus may take to scrape both jobs once.
const SCRAPED_WITHIN: Duration = Duration::from_secs(20);
/// How long a daemon with bad `[metrics]` files may take to give up.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn https_metrics_take_only_scrapers_with_a_client_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = ScrapePki::new(dir.path())?;
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        metrics_extra: Some(pki.metrics_toml()),
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(1)?;
    let target = fleet.coordinator().metrics.expect("metrics on");
    let agent = fleet.agents[0].metrics.expect("metrics on");
    prometheus_with_and_without_a_certificate(&fleet, &pki, target, agent)?;
    tls_alerts_say_why(&pki, target)?;
    bad_files_stop_the_coordinator(&fleet, &pki)?;
    // Plain http on the https port gets no metrics.
    match http_get(&target.to_string(), "/metrics") {
        Ok((200, _)) => bail!("plain http got the metrics of an https endpoint"),
        Ok((code, _)) => println!("plain http to the https endpoint: HTTP {code}"),
        Err(e) => println!("plain http to the https endpoint: {e}"),
    }
    Ok(())
}

fn prometheus_with_and_without_a_certificate(
    fleet: &Fleet,
    pki: &ScrapePki,
    target: SocketAddr,
    agent: SocketAddr,
) -> anyhow::Result<()> {
    let job = |name: &str, client: Option<&CertFiles>| ScrapeJob {
        name: name.into(),
        targets: vec![if name.starts_with("agent") {
            agent
        } else {
            target
        }],
        tls: Some(ScrapeTls {
            ca: pki.ca.clone(),
            client: client.map(|c| (c.cert.clone(), c.key.clone())),
        }),
    };
    let prom = Prometheus::start_jobs(
        &fleet.dir,
        &[
            job("with-cert", Some(&pki.scraper)),
            job("without-cert", None),
            job("agent-with-cert", Some(&pki.scraper)),
        ],
    )?;
    fleet.wait("Prometheus to scrape both jobs", SCRAPED_WITHIN, || {
        let up = prom.value("up{job=\"with-cert\"}")?;
        let down = prom.value("up{job=\"without-cert\"}")?;
        let agent = prom.value("up{job=\"agent-with-cert\"}")?;
        if !(up == 1.0 && down == 0.0 && agent == 1.0) {
            bail!(
                "up{{job=with-cert}} {up}, up{{job=without-cert}} {down}, \
                 up{{job=agent-with-cert}} {agent}"
            );
        }
        Ok(Some(()))
    })?;
    let leader = prom.value("rollgate_leader{job=\"with-cert\"}")?;
    let agent_health = prom
        .query("rollgate_agent_service_health{job=\"agent-with-cert\"}")?
        .len();
    let refused = prom.target_errors("without-cert")?;
    println!(
        "Prometheus over https: up{{job=with-cert}} 1, rollgate_leader {leader}; \
         up{{job=agent-with-cert}} 1, {agent_health} agent health series; \
         up{{job=without-cert}} 0: {refused:?}"
    );
    if agent_health == 0 {
        bail!("no agent metrics scraped over https");
    }
    if leader != 1.0 {
        bail!("rollgate_leader scraped over https is {leader}, not 1");
    }
    if !(refused.len() == 1 && refused[0].contains("certificate required")) {
        bail!("the scrape without a certificate failed for another reason: {refused:?}");
    }
    Ok(())
}

/// The same client three times: only the certificate differs.
fn tls_alerts_say_why(pki: &ScrapePki, target: SocketAddr) -> anyhow::Result<()> {
    match https_get(target, "/metrics", &pki.ca, Some(&pki.scraper))? {
        HttpsOutcome::Answered(page)
            if page.starts_with("HTTP/1.1 200") && page.contains("rollgate_leader") =>
        {
            println!(
                "with the scraper's certificate: HTTP/1.1 200, {} bytes",
                page.len()
            )
        }
        other => bail!("the scraper's certificate was not served the metrics: {other:?}"),
    }
    let cases = [
        (
            None,
            AlertDescription::CertificateRequired,
            "no certificate",
        ),
        (
            Some(&pki.stranger),
            AlertDescription::UnknownCA,
            "a certificate from another CA",
        ),
    ];
    for (client, alert, what) in cases {
        match https_get(target, "/metrics", &pki.ca, client)? {
            HttpsOutcome::Tls(rustls::Error::AlertReceived(got)) if got == alert => {
                println!("with {what}: refused, TLS alert {got:?}")
            }
            other => bail!("with {what}: expected the TLS alert {alert:?}, got {other:?}"),
        }
    }
    Ok(())
}

/// The running replica's config with its `[metrics]` key or certificate swapped for a bad one:
/// the coordinator stops at start, naming the file and the fix.
fn bad_files_stop_the_coordinator(fleet: &Fleet, pki: &ScrapePki) -> anyhow::Result<()> {
    let good = std::fs::read_to_string(fleet.coordinator().dir.join("coordinator.toml"))?;
    let key = format!("tls_key = \"{}\"", pki.server.key.display());
    let cert = format!("tls_cert = \"{}\"", pki.server.cert.display());
    let missing = fleet.dir.join("no-such-cert.pem");
    let cases = [
        (
            "key-mismatch",
            good.replace(
                &key,
                &format!("tls_key = \"{}\"", pki.stranger.key.display()),
            ),
            vec![
                format!("[metrics] tls_key {}", pki.stranger.key.display()),
                "is not the private key of tls_cert".to_string(),
            ],
        ),
        (
            "missing-cert",
            good.replace(&cert, &format!("tls_cert = \"{}\"", missing.display())),
            vec![format!(
                "cannot use [metrics] tls_cert {}",
                missing.display()
            )],
        ),
    ];
    for (name, config, want) in cases {
        let log = refused("rollgate-coordinator", &fleet.dir.join(name), &config)?;
        if let Some(w) = want.iter().find(|w| !log.contains(w.as_str())) {
            bail!("{name}: the coordinator's log does not say {w:?}:\n{log}");
        }
        let line = log.lines().rfind(|l| l.contains("[metrics]")).unwrap_or("");
        println!("coordinator, {name}: exited at start: {}", line.trim());
    }
    // The agent checks them before it starts (or adopts) a service: its state dir is still
    // locked by the running agent, so a late check would fail on that lock instead.
    let agent = std::fs::read_to_string(fleet.dir.join("host-1").join("agent.toml"))?;
    let bad = agent.replace(
        &key,
        &format!("tls_key = \"{}\"", pki.stranger.key.display()),
    );
    let log = refused(
        "rollgate-agent",
        &fleet.dir.join("agent-key-mismatch"),
        &bad,
    )?;
    if !log.contains("is not the private key of tls_cert") {
        bail!("the agent's log does not name the key mismatch:\n{log}");
    }
    let line = log.lines().rfind(|l| l.contains("[metrics]")).unwrap_or("");
    println!("agent, key-mismatch: exited at start: {}", line.trim());
    Ok(())
}

/// Runs `daemon` (`rollgate-coordinator`, `rollgate-agent`) with `config` until it exits on
/// its own; its log.
fn refused(daemon: &str, dir: &Path, config: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, config)?;
    let cmd = [
        bin(daemon).display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    let mut proc = Proc::spawn(daemon, &cmd, &dir.join("daemon.log"))?;
    let status = wait_for(&format!("{daemon} to exit"), EXIT_TIMEOUT, || {
        match proc.exited_on_its_own() {
            Some(s) => Ok(Some(s)),
            None => bail!("still running; log:\n{}", proc.tail(5)),
        }
    })?;
    let log = std::fs::read_to_string(&proc.log)?;
    if status.success() {
        bail!("exited with success: {log}");
    }
    Ok(log)
}
