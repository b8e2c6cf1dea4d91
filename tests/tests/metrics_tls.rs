//! https with client certificates on `/metrics` (issue 13): a coordinator serves its metrics
//! over TLS (`[metrics] tls_cert`, `tls_key`) and takes only scrapers whose certificate its
//! `client_ca` signed. The real Prometheus scrapes it with a client certificate (`up` is 1) and
//! without one (`up` is 0, refused for the certificate); a plain rustls client sees the exact
//! TLS alert for no certificate and for a stranger's, and a 200 with the right one.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use rollgate_tests::prometheus::{Prometheus, ScrapeJob, ScrapeTls};
use rollgate_tests::scrape_tls::{https_get, CertFiles, HttpsOutcome, ScrapePki};
use rollgate_tests::{http_get, Fleet, FleetOpts};
use rustls::AlertDescription;

/// How long Prometheus may take to scrape both jobs once.
const SCRAPED_WITHIN: Duration = Duration::from_secs(20);

#[test]
fn https_metrics_take_only_scrapers_with_a_client_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = ScrapePki::new(dir.path())?;
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        coordinator_metrics: Some(pki.metrics_toml()),
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(1)?;
    let target = fleet.coordinator().metrics;
    prometheus_with_and_without_a_certificate(&fleet, &pki, target)?;
    tls_alerts_say_why(&pki, target)?;
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
) -> anyhow::Result<()> {
    let job = |name: &str, client: Option<&CertFiles>| ScrapeJob {
        name: name.into(),
        targets: vec![target],
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
        ],
    )?;
    fleet.wait("Prometheus to scrape both jobs", SCRAPED_WITHIN, || {
        let up = prom.value("up{job=\"with-cert\"}")?;
        let down = prom.value("up{job=\"without-cert\"}")?;
        if !(up == 1.0 && down == 0.0) {
            bail!("up{{job=with-cert}} {up}, up{{job=without-cert}} {down}");
        }
        Ok(Some(()))
    })?;
    let leader = prom.value("rollgate_leader{job=\"with-cert\"}")?;
    let refused = prom.target_errors("without-cert")?;
    println!(
        "Prometheus over https: up{{job=with-cert}} 1, rollgate_leader {leader}; \
         up{{job=without-cert}} 0: {refused:?}"
    );
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
