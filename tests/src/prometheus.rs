//! A real Prometheus server (Debian's `prometheus` package) scraping a test fleet, asked through
//! its HTTP API; and `promtool` to check what rollgate serves and ships.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::*;

/// How often the test Prometheus scrapes (its smallest sensible interval).
pub const SCRAPE_INTERVAL: Duration = Duration::from_millis(250);

/// Path of a Prometheus tool, or an error that says which package brings it.
pub fn prometheus_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from("/usr/bin").join(name);
    if !path.exists() {
        bail!(
            "{} not found: apt-get install prometheus (tests/run.sh does it as root)",
            path.display()
        );
    }
    Ok(path)
}

/// A Prometheus server scraping fixed targets.
#[derive(Debug)]
pub struct Prometheus {
    /// Its HTTP address.
    pub addr: SocketAddr,
    proc: Proc,
}

/// One scrape job of the test Prometheus.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// `job_name`.
    pub name: String,
    /// Its targets.
    pub targets: Vec<SocketAddr>,
    /// Scrape over https with these files (`None`: plain http).
    pub tls: Option<ScrapeTls>,
}

/// The `tls_config` of an https scrape job.
#[derive(Debug, Clone)]
pub struct ScrapeTls {
    /// The CA that signed the target's certificate.
    pub ca: PathBuf,
    /// The client certificate and key Prometheus presents (`None`: none).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl ScrapeJob {
    fn yaml(&self) -> String {
        let list: Vec<String> = self.targets.iter().map(|t| format!("'{t}'")).collect();
        let mut job = format!("  - job_name: {}\n", self.name);
        if let Some(tls) = &self.tls {
            job.push_str("    scheme: https\n    tls_config:\n");
            job.push_str(&format!("      ca_file: {}\n", tls.ca.display()));
            if let Some((cert, key)) = &tls.client {
                job.push_str(&format!(
                    "      cert_file: {}\n      key_file: {}\n",
                    cert.display(),
                    key.display()
                ));
            }
        }
        job.push_str(&format!(
            "    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ));
        job
    }
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping each `(job, targets)` over plain http every
    /// [`SCRAPE_INTERVAL`].
    pub fn start(dir: &Path, jobs: &[(&str, Vec<SocketAddr>)]) -> anyhow::Result<Self> {
        let jobs: Vec<ScrapeJob> = jobs
            .iter()
            .map(|(name, targets)| ScrapeJob {
                name: name.to_string(),
                targets: targets.clone(),
                tls: None,
            })
            .collect();
        Self::start_jobs(dir, &jobs)
    }

    /// Starts Prometheus in `dir`, running `jobs` every [`SCRAPE_INTERVAL`].
    pub fn start_jobs(dir: &Path, jobs: &[ScrapeJob]) -> anyhow::Result<Self> {
        let bin = prometheus_tool("prometheus")?;
        let dir = dir.join("prometheus");
        fs::create_dir_all(&dir)?;
        let every = format!("{}ms", SCRAPE_INTERVAL.as_millis());
        let mut config = format!(
            "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\nscrape_configs:\n"
        );
        for job in jobs {
            config.push_str(&job.yaml());
        }
        let cfg = dir.join("prometheus.yml");
        fs::write(&cfg, config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let cmd = [
            bin.display().to_string(),
            format!("--config.file={}", cfg.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_string(),
        ];
        let proc = Proc::spawn("prometheus", &cmd, &dir.join("prometheus.log"))?;
        let p = Prometheus { addr, proc };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&addr.to_string(), "/-/ready").map(|(c, _)| c).ok() != Some(200) {
            if Instant::now() > deadline {
                bail!("Prometheus not ready in 30 s:\n{}", p.proc.tail(20));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(p)
    }

    /// An instant query; each result as (labels, value).
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        let (code, body) = http_get(&self.addr.to_string(), &path)?;
        let json: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("Prometheus said: {body}"))?;
        if code != 200 || json["status"] != "success" {
            bail!("query {expr:?} failed ({code}): {body}");
        }
        let mut out = Vec::new();
        for r in json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no value in {r}"))?;
            out.push((r["metric"].clone(), value));
        }
        Ok(out)
    }

    /// The single value of `expr` (an error if there is not exactly one series).
    pub fn value(&self, expr: &str) -> anyhow::Result<f64> {
        match self.query(expr)?.as_slice() {
            [(_, v)] => Ok(*v),
            other => bail!("{expr:?} has {} series, not 1: {other:?}", other.len()),
        }
    }

    /// The last scrape error of each target of `job` (empty strings for good scrapes).
    pub fn target_errors(&self, job: &str) -> anyhow::Result<Vec<String>> {
        let (code, body) = http_get(&self.addr.to_string(), "/api/v1/targets?state=active")?;
        let json: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("Prometheus said: {body}"))?;
        if code != 200 {
            bail!("/api/v1/targets answered {code}: {body}");
        }
        let targets = json["data"]["activeTargets"].as_array().cloned();
        Ok(targets
            .unwrap_or_default()
            .iter()
            .filter(|t| t["labels"]["job"] == job)
            .map(|t| t["lastError"].as_str().unwrap_or_default().to_string())
            .collect())
    }

    /// Waits until every target has been scraped successfully at least once.
    pub fn wait_targets_up(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = self.query("up == 1")?.len();
            if up >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{up} of {n} targets up after 20 s: {:?}", self.query("up")?);
            }
            std::thread::sleep(SCRAPE_INTERVAL);
        }
    }
}

/// `promtool check metrics` on a `/metrics` page: the exposition parses and follows the naming
/// conventions. Returns promtool's complaints (empty: clean).
pub fn promtool_check_metrics(page: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(prometheus_tool("promtool")?)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The format ends every line with a newline (`http_get` trims the body).
    let page = format!("{}\n", page.trim_end());
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() && said.trim().is_empty() {
        bail!("promtool failed ({}) without saying why", out.status);
    }
    Ok(said.trim().to_string())
}

/// The sum of the samples named `name` on a `/metrics` page whose labels contain `labels`
/// (e.g. `method="range"`; empty: every sample of that name).
pub fn sample_sum(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let named = rest.is_empty() || rest.starts_with('{');
            (named && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |total, v| total + v)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
