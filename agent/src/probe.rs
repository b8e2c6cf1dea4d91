//! Health probes (http, tcp, exec) and the rule "healthy for `min_healthy_time` in time".

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::time::Instant;

use crate::config::{ProbeCheck, ProbeConfig, ServiceConfig};

/// A probe set that cannot be built.
#[derive(Debug, Error)]
#[error("cannot set up the health probes of service {service}: {message}")]
pub struct ProbeSetupError {
    /// The service.
    pub service: String,
    /// What failed.
    pub message: String,
}

/// All of a service's probes; the service is healthy when every one passes.
#[derive(Debug, Clone)]
pub struct Prober {
    probes: Vec<Probe>,
    interval: Duration,
}

#[derive(Debug, Clone)]
struct Probe {
    check: ProbeCheck,
    timeout: Duration,
    /// One client per http probe, built once: it keeps connections and the TLS setup.
    http: Option<reqwest::Client>,
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

    /// Runs every probe at once; `Err` carries the first failure's message.
    pub async fn check(&self) -> Result<(), String> {
        let results = futures::future::join_all(self.probes.iter().map(Probe::run)).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ())
    }
}

impl Probe {
    fn new(cfg: &ProbeConfig, service: &str) -> Result<Probe, ProbeSetupError> {
        let http = match cfg.check {
            ProbeCheck::Http { .. } => Some(
                reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .build()
                    .map_err(|e| ProbeSetupError {
                        service: service.to_string(),
                        message: crate::error_chain(&e),
                    })?,
            ),
            _ => None,
        };
        Ok(Probe {
            check: cfg.check.clone(),
            timeout: cfg.timeout,
            http,
        })
    }

    async fn run(&self) -> Result<(), String> {
        match &self.check {
            ProbeCheck::Http { url, expect_status } => {
                let Some(client) = &self.http else {
                    return Err(format!("http probe {url}: no HTTP client"));
                };
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("http probe {url}: {}", crate::error_chain(&e)))?;
                let status = resp.status();
                let ok = match expect_status {
                    Some(want) => status.as_u16() == *want,
                    None => status.is_success(),
                };
                if ok {
                    Ok(())
                } else {
                    let want = expect_status.map_or("2xx".to_string(), |s| s.to_string());
                    Err(format!(
                        "http probe {url}: answered {status}, expected {want}"
                    ))
                }
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
        }
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
        let p = prober(&format!(
            "[[services.probes]]\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout = \"500ms\""
        ));
        p.check().await.expect("bound port passes");
        drop(listener);
        let err = p.check().await.expect_err("closed port fails");
        assert!(err.starts_with(&format!("tcp probe {addr}:")), "{err}");
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

    #[tokio::test]
    async fn http_probe_checks_the_status() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(mut c) = conn else { return };
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf);
                let status = if i == 0 {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        let p = prober(&format!(
            "[[services.probes]]\nkind = \"http\"\nurl = \"http://{addr}/health\""
        ));
        p.check().await.expect("200 passes");
        let err = p.check().await.expect_err("503 fails");
        assert!(err.contains("503") && err.contains("expected 2xx"), "{err}");
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
