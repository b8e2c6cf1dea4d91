//! Health probes (http, tcp, exec, systemd, grpc), their consecutive-result thresholds, and
//! the rule "healthy for `min_healthy_time` in time".

#[cfg(feature = "systemd")]
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[cfg(feature = "systemd")]
use crate::backend::systemd::client::{check_active, SystemdClient, SystemdError};
use crate::config::{ProbeCheck, ProbeConfig, ServiceConfig, SystemdTarget};

/// How much of an HTTP probe's body is read to look for `expect_body`.
pub const HTTP_BODY_LIMIT: usize = 64 * 1024;

/// A probe set that cannot be built.
#[derive(Debug, Error)]
#[error("cannot set up the health probes of service {service}: {message}")]
pub struct ProbeSetupError {
    /// The service.
    pub service: String,
    /// What failed.
    pub message: String,
}

/// All of a service's probes; the service is healthy when every one passes (after its
/// thresholds: see [`Threshold`]).
#[derive(Debug)]
pub struct Prober {
    probes: Vec<Probe>,
    interval: Duration,
    /// The service probed (the metrics' label).
    service: String,
}

#[derive(Debug)]
struct Probe {
    check: ProbeCheck,
    timeout: Duration,
    /// One client per http probe, built once: it keeps connections and the TLS setup.
    http: Option<reqwest::Client>,
    /// The gRPC channel, made on first use (it needs the runtime) and kept.
    grpc: OnceLock<tonic::transport::Channel>,
    /// The D-Bus connection of a systemd probe, made on first use, dropped after an error.
    #[cfg(feature = "systemd")]
    systemd: Arc<tokio::sync::Mutex<Option<SystemdClient>>>,
    threshold: Threshold,
}

impl Prober {
    /// The probes configured for `service`.
    pub fn new(service: &ServiceConfig) -> Result<Prober, ProbeSetupError> {
        let probes = service
            .probes
            .iter()
            .map(|p| Probe::new(p, &service.name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prober {
            probes,
            interval: service.probe_interval(),
            service: service.name.clone(),
        })
    }

    /// How often the probes run: the shortest configured interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether any probe is configured (without probes, a running process counts as healthy).
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Runs every probe at once and applies each one's thresholds; `Err` carries the first
    /// failing probe's message.
    pub async fn check(&mut self) -> Result<(), String> {
        let timed = self.probes.iter().map(|p| async move {
            let began = std::time::Instant::now();
            let result = p.run().await;
            (result, began.elapsed())
        });
        let results = futures::future::join_all(timed).await;
        let mut verdict = Ok(());
        for (probe, (result, took)) in self.probes.iter_mut().zip(results) {
            let kind = probe.kind();
            crate::metrics::get().probe(&self.service, kind, took, result.is_ok());
            let judged = probe.threshold.observe(result);
            if verdict.is_ok() {
                verdict = judged;
            }
        }
        verdict
    }

    /// Whether any probe has passed at all since the last [`Prober::reset`]: until then the
    /// service is still starting and verification probes it at the start-up pace
    /// ([`startup_retry`]).
    pub fn any_passed(&self) -> bool {
        self.probes.iter().any(|p| p.threshold.ever_passed)
    }

    /// Forgets past results: a new process starts out not yet passing (used when verifying a
    /// release that was just started).
    pub fn reset(&mut self) {
        for p in &mut self.probes {
            p.threshold.reset();
        }
    }
}

impl Probe {
    /// The kind of check, as the metrics label it.
    fn kind(&self) -> &'static str {
        match self.check {
            ProbeCheck::Http { .. } => "http",
            ProbeCheck::Tcp { .. } => "tcp",
            ProbeCheck::Exec { .. } => "exec",
            ProbeCheck::Systemd(_) => "systemd",
            ProbeCheck::Grpc { .. } => "grpc",
        }
    }

    fn new(cfg: &ProbeConfig, service: &str) -> Result<Probe, ProbeSetupError> {
        let setup_err = |message: String| ProbeSetupError {
            service: service.to_string(),
            message,
        };
        let http = match &cfg.check {
            ProbeCheck::Http { ca_file, .. } => {
                let mut builder = reqwest::Client::builder().timeout(cfg.timeout);
                if let Some(path) = ca_file {
                    // Trusted in addition to the built-in roots. Read again here (the config
                    // load checked it) so a probe built later picks up a replaced file.
                    let certs = crate::config::load_ca_file(path)
                        .map_err(|e| setup_err(format!("http probe ca_file: {e}")))?;
                    for cert in certs {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                Some(
                    builder
                        .build()
                        .map_err(|e| setup_err(crate::errors::error_chain(&e)))?,
                )
            }
            _ => None,
        };
        Ok(Probe {
            check: cfg.check.clone(),
            timeout: cfg.timeout,
            http,
            grpc: OnceLock::new(),
            #[cfg(feature = "systemd")]
            systemd: Arc::default(),
            threshold: Threshold::new(cfg.success_threshold, cfg.failure_threshold),
        })
    }

    async fn run(&self) -> Result<(), String> {
        match &self.check {
            ProbeCheck::Http {
                url,
                expect_status,
                expect_body,
                ..
            } => {
                let Some(client) = &self.http else {
                    return Err(format!("http probe {url}: no HTTP client"));
                };
                http_check(client, url, *expect_status, expect_body.as_deref()).await
            }
            ProbeCheck::Tcp { address } => {
                match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("tcp probe {address}: {e}")),
                    Err(_) => Err(format!(
                        "tcp probe {address}: no connection within {:?}",
                        self.timeout
                    )),
                }
            }
            ProbeCheck::Exec { command } => run_exec(command, self.timeout).await,
            ProbeCheck::Systemd(target) => {
                let unit = &target.unit;
                match tokio::time::timeout(self.timeout, self.systemd_check(target)).await {
                    Ok(r) => r.map_err(|e| format!("systemd probe {unit}: {e}")),
                    Err(_) => Err(format!(
                        "systemd probe {unit}: no answer within {:?}",
                        self.timeout
                    )),
                }
            }
            ProbeCheck::Grpc { address, service } => {
                match tokio::time::timeout(self.timeout, self.grpc_check(address, service)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "grpc probe {address}: no answer within {:?}",
                        self.timeout
                    )),
                }
            }
        }
    }

    /// A build without the systemd feature refuses systemd probes at config load.
    #[cfg(not(feature = "systemd"))]
    async fn systemd_check(&self, target: &SystemdTarget) -> Result<(), String> {
        Err(format!(
            "{}: this agent was built without systemd",
            target.unit
        ))
    }

    #[cfg(feature = "systemd")]
    async fn systemd_check(&self, target: &SystemdTarget) -> Result<(), String> {
        let mut slot = self.systemd.lock().await;
        let client = match slot.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = SystemdClient::connect(target)
                    .await
                    .map_err(|e| e.to_string())?;
                *slot = Some(c.clone());
                c
            }
        };
        let r = check_active(&client, &target.unit).await;
        if matches!(r, Err(SystemdError::Call { .. })) {
            // Maybe the bus went away: connect again next time.
            *slot = None;
        }
        r.map_err(|e| match e {
            SystemdError::Down { why, .. } => why,
            other => other.to_string(),
        })
    }

    async fn grpc_check(&self, address: &str, service: &str) -> Result<(), String> {
        let shown = if service.is_empty() {
            format!("grpc probe {address}")
        } else {
            format!("grpc probe {address} ({service})")
        };
        let channel = match self.grpc.get() {
            Some(c) => c.clone(),
            None => {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| format!("{shown}: {e}"))?
                    .connect_timeout(self.timeout)
                    .timeout(self.timeout);
                self.grpc.get_or_init(|| endpoint.connect_lazy()).clone()
            }
        };
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| {
                let msg = if s.message().is_empty() {
                    crate::errors::error_chain(&s)
                } else {
                    s.message().to_string()
                };
                format!("{shown}: {:?}: {msg}", s.code())
            })?;
        match reply.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("{shown}: {}", other.as_str_name())),
        }
    }
}

async fn http_check(
    client: &reqwest::Client,
    url: &str,
    expect_status: Option<u16>,
    expect_body: Option<&str>,
) -> Result<(), String> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("http probe {url}: {}", crate::errors::error_chain(&e)))?;
    let status = resp.status();
    let ok = match expect_status {
        Some(want) => status.as_u16() == want,
        None => status.is_success(),
    };
    if !ok {
        let want = expect_status.map_or("2xx".to_string(), |s| s.to_string());
        return Err(format!(
            "http probe {url}: answered {status}, expected {want}"
        ));
    }
    let Some(needle) = expect_body else {
        return Ok(());
    };
    let mut body = Vec::new();
    while body.len() < HTTP_BODY_LIMIT {
        match resp.chunk().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            Ok(None) => break,
            Err(e) => {
                return Err(format!(
                    "http probe {url}: reading the body: {}",
                    crate::errors::error_chain(&e)
                ))
            }
        }
    }
    body.truncate(HTTP_BODY_LIMIT);
    if body_contains(&body, needle) {
        Ok(())
    } else {
        Err(format!(
            "http probe {url}: the body does not contain {needle:?} (first {} bytes read)",
            body.len()
        ))
    }
}

fn body_contains(body: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    needle.is_empty() || body.windows(needle.len()).any(|w| w == needle)
}

/// The consecutive-results rule of one probe: a probe that is not passing (a new one, or
/// after failures) passes once it has passed `success` times in a row; a passing probe fails
/// once it has failed `failure` times in a row (failures before that are tolerated). With
/// both at 1 every result counts at once. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    success: u32,
    failure: u32,
    passing: bool,
    /// Consecutive results against the current verdict.
    streak: u32,
    /// Whether any result passed since the last reset.
    ever_passed: bool,
}

impl Threshold {
    /// A probe that has not passed yet.
    pub fn new(success: u32, failure: u32) -> Threshold {
        Threshold {
            success: success.max(1),
            failure: failure.max(1),
            passing: false,
            streak: 0,
            ever_passed: false,
        }
    }

    /// Records one result and says whether the probe counts as passing now (with the reason
    /// when it does not).
    pub fn observe(&mut self, result: Result<(), String>) -> Result<(), String> {
        self.ever_passed |= result.is_ok();
        match (self.passing, result) {
            (true, Ok(())) => {
                self.streak = 0;
                Ok(())
            }
            (true, Err(e)) => {
                self.streak += 1;
                if self.streak >= self.failure {
                    self.passing = false;
                    self.streak = 0;
                    Err(self.failed_message(e))
                } else {
                    tracing::debug!(
                        "probe failed ({} of {} in a row tolerated): {e}",
                        self.streak,
                        self.failure
                    );
                    Ok(())
                }
            }
            (false, Ok(())) => {
                self.streak += 1;
                if self.streak >= self.success {
                    self.passing = true;
                    self.streak = 0;
                    Ok(())
                } else {
                    Err(format!(
                        "passed {} of the {} consecutive checks it needs",
                        self.streak, self.success
                    ))
                }
            }
            (false, Err(e)) => {
                self.streak = 0;
                Err(e)
            }
        }
    }

    fn failed_message(&self, e: String) -> String {
        if self.failure > 1 {
            format!("{e} ({} times in a row)", self.failure)
        } else {
            e
        }
    }

    /// Back to "not passed yet".
    pub fn reset(&mut self) {
        self.passing = false;
        self.streak = 0;
        self.ever_passed = false;
    }
}

async fn run_exec(command: &[String], timeout: Duration) -> Result<(), String> {
    let shown = command.join(" ");
    let Some((program, args)) = command.split_first() else {
        return Err("exec probe: empty command".into());
    };
    // Own process group, so a timeout kills whatever the command started, not just the command.
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("exec probe `{shown}`: cannot start: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("exec probe `{shown}`: {}", describe_exit(status))),
        Ok(Err(e)) => Err(format!("exec probe `{shown}`: {e}")),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(format!("exec probe `{shown}`: timed out after {timeout:?}"))
        }
    }
}

/// "exited with status 3" / "was killed by signal 9".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// The closest start-up probes run: a refused connection costs next to nothing.
pub const STARTUP_RETRY_MIN: Duration = Duration::from_millis(10);

/// How long to wait before probing again a service that has not passed any probe since it
/// was started, `elapsed` ago: a tenth of that (so the first pass is seen at most ~10 % after
/// the service is up), at least [`STARTUP_RETRY_MIN`], at most the configured `interval`. A
/// service that starts in 0.1 s is seen healthy within 10 ms of it instead of up to one whole
/// interval later; one that takes a minute is probed at `interval`. Once any probe has passed,
/// the configured interval applies, so a `success_threshold` still spans whole intervals.
pub fn startup_retry(elapsed: Duration, interval: Duration) -> Duration {
    (elapsed / 10).clamp(STARTUP_RETRY_MIN.min(interval), interval)
}

/// What a run of verification has concluded so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy continuously for `min_healthy_time`.
    Healthy,
    /// Not decided yet; probe again.
    Waiting,
    /// The deadline passed first; the message says why.
    Failed(String),
}

/// The rule for a release being healthy: every probe passes continuously for `min_healthy`,
/// counted from the first all-pass; any failure resets the count; all of it before `deadline`
/// (counted from the start of the process). Pure over the clock it is given.
#[derive(Debug, Clone)]
pub struct HealthWindow {
    started: Instant,
    min_healthy: Duration,
    deadline: Duration,
    healthy_since: Option<Instant>,
    last_error: Option<String>,
}

impl HealthWindow {
    /// A window for a process started at `started`.
    pub fn new(started: Instant, min_healthy: Duration, deadline: Duration) -> HealthWindow {
        HealthWindow {
            started,
            min_healthy,
            deadline,
            healthy_since: None,
            last_error: None,
        }
    }

    /// Records one probe round at `now` and says what it means.
    pub fn observe(&mut self, now: Instant, result: Result<(), String>) -> Verdict {
        match result {
            Ok(()) => {
                let since = *self.healthy_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.min_healthy {
                    return Verdict::Healthy;
                }
            }
            Err(e) => {
                self.healthy_since = None;
                self.last_error = Some(e);
            }
        }
        if now.saturating_duration_since(self.started) >= self.deadline {
            return Verdict::Failed(self.deadline_message(now));
        }
        Verdict::Waiting
    }

    /// When the next probe round should run: after `interval`, but no later than the moment
    /// `min_healthy` is reached or the deadline passes (so neither verdict waits for a tick).
    pub fn next_round(&self, now: Instant, interval: Duration) -> Instant {
        let mut at = (now + interval).min(self.started + self.deadline);
        if let Some(since) = self.healthy_since {
            at = at.min(since + self.min_healthy);
        }
        at.max(now)
    }

    fn deadline_message(&self, now: Instant) -> String {
        let deadline = rollgate_proto::spec::human(self.deadline);
        let need = rollgate_proto::spec::human(self.min_healthy);
        match (self.healthy_since, &self.last_error) {
            (Some(since), _) => format!(
                "healthy for only {} of the required {need} when the {deadline} deadline passed",
                rollgate_proto::spec::human(now.saturating_duration_since(since))
            ),
            (None, Some(e)) => format!("not healthy within {deadline}: {e}"),
            (None, None) => format!("not healthy within {deadline}"),
        }
    }
}

#[cfg(test)]
mod tests;
