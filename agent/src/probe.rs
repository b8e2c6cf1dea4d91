//! Health probes (http, tcp, exec, systemd, grpc), their consecutive-result thresholds, and
//! the rule "healthy for `min_healthy_time` in time".

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::backend::systemd::SystemdClient;
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
        let results = futures::future::join_all(self.probes.iter().map(Probe::run)).await;
        let mut verdict = Ok(());
        for (probe, result) in self.probes.iter_mut().zip(results) {
            let judged = probe.threshold.observe(result);
            if verdict.is_ok() {
                verdict = judged;
            }
        }
        verdict
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
                        .map_err(|e| setup_err(crate::error_chain(&e)))?,
                )
            }
            _ => None,
        };
        Ok(Probe {
            check: cfg.check.clone(),
            timeout: cfg.timeout,
            http,
            grpc: OnceLock::new(),
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
        let r = crate::backend::systemd::check_active(&client, &target.unit).await;
        if matches!(r, Err(crate::backend::systemd::SystemdError::Call { .. })) {
            // Maybe the bus went away: connect again next time.
            *slot = None;
        }
        r.map_err(|e| match e {
            crate::backend::systemd::SystemdError::Down { why, .. } => why,
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
                    crate::error_chain(&s)
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
        .map_err(|e| format!("http probe {url}: {}", crate::error_chain(&e)))?;
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
                    crate::error_chain(&e)
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
}

impl Threshold {
    /// A probe that has not passed yet.
    pub fn new(success: u32, failure: u32) -> Threshold {
        Threshold {
            success: success.max(1),
            failure: failure.max(1),
            passing: false,
            streak: 0,
        }
    }

    /// Records one result and says whether the probe counts as passing now (with the reason
    /// when it does not).
    pub fn observe(&mut self, result: Result<(), String>) -> Result<(), String> {
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

    /// The last probe error seen, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
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
mod tests {
    use super::*;
    use crate::config::Config;

    fn prober(probes_toml: &str) -> Prober {
        let text = format!(
            "host_id = \"h\"\ncoordinator = \"http://127.0.0.1:1\"\nstate_dir = \"/tmp/x\"\n\
             [[services]]\nname = \"s\"\nbackend = \"process\"\nbinary = \"b\"\n{probes_toml}"
        );
        let cfg = Config::parse(&text).expect("config");
        Prober::new(&cfg.services[0]).expect("prober")
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_a_bound_port_and_fails_on_a_free_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut p = prober(&format!(
            "[[services.probes]]\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout = \"500ms\""
        ));
        p.check().await.expect("bound port passes");
        drop(listener);
        // A freed port can be taken at once by another process on a busy machine (other test
        // binaries bind ephemeral ports too): try a few freed ports; a closed one must fail.
        let mut last = None;
        for _ in 0..5 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            drop(l);
            let mut p = prober(&format!(
                "[[services.probes]]\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout = \"500ms\""
            ));
            match p.check().await {
                Err(err) => {
                    assert!(err.starts_with(&format!("tcp probe {addr}:")), "{err}");
                    return;
                }
                Ok(()) => last = Some(addr),
            }
        }
        panic!("a closed port passed the tcp probe five times (last {last:?})");
    }

    #[tokio::test]
    async fn exec_probe_exit_codes_and_timeout() {
        let exec = |cmd: &str, timeout: &str| {
            prober(&format!(
                "[[services.probes]]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"{cmd}\"]\n\
                 timeout = \"{timeout}\""
            ))
        };
        exec("exit 0", "2s").check().await.expect("exit 0 passes");
        let err = exec("exit 3", "2s")
            .check()
            .await
            .expect_err("exit 3 fails");
        assert!(err.ends_with("exited with status 3"), "{err}");

        let t0 = std::time::Instant::now();
        // The background child keeps the group busy: the timeout must kill it too, and fast.
        let err = exec("sleep 30 & sleep 30", "300ms")
            .check()
            .await
            .expect_err("timeout");
        assert!(err.contains("timed out after 300ms"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

        let err =
            prober("[[services.probes]]\nkind = \"exec\"\ncommand = [\"/nonexistent/probe\"]")
                .check()
                .await
                .expect_err("missing program");
        assert!(err.contains("cannot start"), "{err}");
    }

    /// Serves one canned HTTP answer per connection, in turn.
    fn serve_http(answers: Vec<(&'static str, &'static str)>) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for ((status, body), conn) in answers.into_iter().zip(listener.incoming()) {
                let Ok(mut c) = conn else { return };
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_table() {
        // (name, probe fields, answer, Ok / Err(contains))
        type Answer = (&'static str, &'static str);
        type Case = (&'static str, &'static str, Answer, Result<(), &'static str>);
        let cases: Vec<Case> = vec![
            ("any 2xx", "", ("204 No Content", ""), Ok(())),
            (
                "503 fails",
                "",
                ("503 Service Unavailable", ""),
                Err("answered 503 Service Unavailable, expected 2xx"),
            ),
            (
                "exact status",
                "expect_status = 418",
                ("418 I'm a teapot", ""),
                Ok(()),
            ),
            (
                "other status",
                "expect_status = 200",
                ("201 Created", ""),
                Err("expected 200"),
            ),
            (
                "body match",
                "expect_body = \"ready\"",
                ("200 OK", "{\"status\":\"ready\"}"),
                Ok(()),
            ),
            (
                "body mismatch",
                "expect_body = \"ready\"",
                ("200 OK", "{\"status\":\"starting\"}"),
                Err("the body does not contain \"ready\""),
            ),
            (
                "status checked before the body",
                "expect_body = \"ready\"",
                ("500 Oops", "ready"),
                Err("expected 2xx"),
            ),
        ];
        for (name, fields, answer, want) in cases {
            let addr = serve_http(vec![answer]);
            let mut p = prober(&format!(
                "[[services.probes]]\nkind = \"http\"\nurl = \"http://{addr}/health\"\n{fields}"
            ));
            let got = p.check().await;
            match (&got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(w)) if e.contains(w) => {}
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// A throwaway CA and a server certificate it signed for 127.0.0.1.
    struct TestPki {
        ca_pem: String,
        server_cert: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
        server_key: Vec<u8>,
    }

    fn test_pki() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "rollgate test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let server_key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::default();
        server.subject_alt_names = vec![SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())];
        let server_cert = server
            .signed_by(&server_key, &ca_cert, &ca_key)
            .expect("server cert");
        TestPki {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        }
    }

    /// Serves `GET /health` over TLS on 127.0.0.1, answering 200 with `body` on every connection.
    async fn serve_https(pki: &TestPki, body: &'static str) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key.clone().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki.server_cert.clone()], key)
        .expect("server tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that rejects the certificate ends the handshake: nothing to serve.
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 2048];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let (status, body) = if head.starts_with("GET /health ") {
                        ("200 OK", body)
                    } else {
                        ("404 Not Found", "")
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_probe_with_a_private_ca() {
        let pki = test_pki();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &pki.ca_pem).expect("write ca");
        let ca_line = format!("ca_file = {:?}", ca_path.display().to_string());
        let addr = serve_https(&pki, "{\"status\":\"ready\"}").await;
        let probe = |fields: String| {
            prober(&format!(
                "[[services.probes]]\nkind = \"http\"\nurl = \"https://{addr}/health\"\n{fields}"
            ))
        };

        // Trusting the test CA: passes, body check included.
        probe(format!("{ca_line}\nexpect_body = \"ready\""))
            .check()
            .await
            .expect("https probe trusting the test CA passes");

        // Built-in roots only: the server's issuer is unknown, and the error says so.
        let err = probe(String::new())
            .check()
            .await
            .expect_err("an unknown CA fails");
        assert!(err.contains("https://"), "{err}");
        assert!(
            err.contains("certificate") && err.contains("UnknownIssuer"),
            "not a clear TLS error: {err}"
        );

        // TLS fine, body wrong.
        let err = probe(format!("{ca_line}\nexpect_body = \"serving\""))
            .check()
            .await
            .expect_err("body mismatch fails");
        assert!(
            err.contains("the body does not contain \"serving\""),
            "{err}"
        );
    }

    #[test]
    fn threshold_table() {
        let ok = || Ok::<(), String>(());
        let bad = || Err::<(), String>("down".to_string());
        // (success, failure, results in order, expected verdicts)
        type Case = (&'static str, u32, u32, Vec<bool>, Vec<bool>);
        let cases: Vec<Case> = vec![
            (
                "1/1: every result counts",
                1,
                1,
                vec![true, false, true],
                vec![true, false, true],
            ),
            (
                "needs 3 passes in a row",
                3,
                1,
                vec![true, true, true, true],
                vec![false, false, true, true],
            ),
            (
                "a failure restarts the passes",
                2,
                1,
                vec![true, false, true, true],
                vec![false, false, false, true],
            ),
            (
                "tolerates 2 failures",
                1,
                3,
                vec![true, false, false, true, false, false, false],
                vec![true, true, true, true, true, true, false],
            ),
            (
                "then needs passes again",
                2,
                2,
                vec![true, true, false, false, true, true],
                vec![false, true, true, false, false, true],
            ),
        ];
        for (name, success, failure, results, want) in cases {
            let mut t = Threshold::new(success, failure);
            let got: Vec<bool> = results
                .iter()
                .map(|r| t.observe(if *r { ok() } else { bad() }).is_ok())
                .collect();
            assert_eq!(got, want, "{name}");
        }
        let mut t = Threshold::new(2, 1);
        let first = t.observe(ok()).expect_err("one pass of two");
        assert_eq!(first, "passed 1 of the 2 consecutive checks it needs");
        t.observe(ok()).expect("two passes");
        t.reset();
        assert!(
            t.observe(ok()).is_err(),
            "reset: not passing until it passes twice again"
        );
        let mut t = Threshold::new(1, 2);
        t.observe(ok()).expect("passes");
        t.observe(bad()).expect("one failure tolerated");
        assert_eq!(t.observe(bad()), Err("down (2 times in a row)".to_string()));
    }

    #[tokio::test]
    async fn prober_applies_thresholds_across_probes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("up");
        let mut p = prober(&format!(
            "[[services.probes]]\nkind = \"exec\"\ncommand = [\"test\", \"-e\", \"{}\"]\n\
             success_threshold = 2\nfailure_threshold = 2\n",
            flag.display()
        ));
        assert!(p.check().await.is_err(), "no flag yet");
        std::fs::write(&flag, b"").expect("flag");
        assert!(p.check().await.is_err(), "one pass of two");
        p.check().await.expect("two passes");
        std::fs::remove_file(&flag).expect("unflag");
        p.check().await.expect("one failure is tolerated");
        assert!(p.check().await.is_err(), "two failures are not");
    }

    #[tokio::test]
    async fn grpc_health_probe() {
        use tonic_health::ServingStatus as S;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", S::Serving).await;
        reporter.set_service_status("demo", S::NotServing).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let grpc = |svc: &str| {
            prober(&format!(
                "[[services.probes]]\nkind = \"grpc\"\naddress = \"{addr}\"\ngrpc_service = \"{svc}\"\ntimeout = \"2s\""
            ))
        };
        grpc("").check().await.expect("the server is SERVING");
        let err = grpc("demo").check().await.expect_err("NOT_SERVING");
        assert!(err.ends_with("(demo): NOT_SERVING"), "{err}");
        let err = grpc("nope").check().await.expect_err("unknown service");
        assert!(err.contains("NotFound"), "{err}");
        reporter.set_service_status("demo", S::Serving).await;
        grpc("demo").check().await.expect("SERVING now");
        server.abort();
        let _ = server.await;
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = free.local_addr().expect("addr");
        drop(free);
        let err = prober(&format!(
            "[[services.probes]]\nkind = \"grpc\"\naddress = \"{closed}\"\ntimeout = \"1s\""
        ))
        .check()
        .await
        .expect_err("nothing listens");
        assert!(err.starts_with(&format!("grpc probe {closed}")), "{err}");
    }

    #[test]
    fn health_window_table() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let fail = || Err::<(), String>("probe failed".to_string());
        // (offset ms, probe passed?, expected verdict) with min_healthy 300ms, deadline 1000ms.
        type Round = (u64, bool, Verdict);
        let cases: &[(&str, &[Round])] = &[
            (
                "steady pass succeeds after min_healthy from the first pass",
                &[(100, true, Verdict::Waiting), (300, true, Verdict::Waiting), (400, true, Verdict::Healthy)],
            ),
            (
                "a flap resets the count",
                &[
                    (100, true, Verdict::Waiting),
                    (350, false, Verdict::Waiting),
                    (450, true, Verdict::Waiting),
                    (700, true, Verdict::Waiting),
                    (750, true, Verdict::Healthy),
                ],
            ),
            (
                "never healthy fails at the deadline with the last error",
                &[
                    (500, false, Verdict::Waiting),
                    (1000, false, Verdict::Failed("not healthy within 1s: probe failed".into())),
                ],
            ),
            (
                "healthy too late fails at the deadline",
                &[
                    (900, true, Verdict::Waiting),
                    (1000, true, Verdict::Failed(
                        "healthy for only 100ms of the required 300ms when the 1s deadline passed".into(),
                    )),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut w = HealthWindow::new(t0, ms(300), ms(1000));
            for (at, pass, want) in steps.iter() {
                let r = if *pass { Ok(()) } else { fail() };
                assert_eq!(&w.observe(t0 + ms(*at), r), want, "{name} at {at}ms");
            }
        }
    }

    #[test]
    fn next_round_does_not_overshoot() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut w = HealthWindow::new(t0, ms(300), ms(1000));
        assert_eq!(w.next_round(t0, ms(200)), t0 + ms(200));
        w.observe(t0 + ms(200), Ok(()));
        // min_healthy is reached at 500ms: probe then, not at the 600ms tick.
        assert_eq!(w.next_round(t0 + ms(400), ms(200)), t0 + ms(500));
        w.observe(t0 + ms(450), Err("x".into()));
        assert_eq!(w.next_round(t0 + ms(900), ms(200)), t0 + ms(1000));
        assert_eq!(
            HealthWindow::new(t0, Duration::ZERO, ms(1000)).observe(t0, Ok(())),
            Verdict::Healthy
        );
    }
}
