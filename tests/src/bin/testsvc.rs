//! `rollgate-testsvc`: a tiny HTTP service that end-to-end tests and the demo roll out.
//!
//! It answers `GET /health` (200 `ok <version>` or, in `unhealthy` mode, 500
//! `unhealthy <version>`) and `GET /version` (200 `<version>`), one request per connection.
//! Modes let a test pick how a release misbehaves:
//!
//! - `healthy` (default): serves and reports healthy.
//! - `unhealthy`: serves, but `/health` answers 500.
//! - `crash`: prints "crashing on purpose" and exits 1 before binding.
//! - `slow-start`: sleeps `--start-delay-ms` (default [`DEFAULT_SLOW_START_DELAY`]) before
//!   binding.
//!
//! Releases are wrapper scripts (`exec rollgate-testsvc --version 2.0.0 --mode healthy "$@"`)
//! and the agent appends `--port P`, so flags are accepted in any order and a later flag
//! overrides an earlier one. `TESTSVC_VERSION`, `TESTSVC_MODE` and `TESTSVC_PORT` are fallbacks
//! for flags that are not given. `--bind ADDR` (default `127.0.0.1`, fallback `TESTSVC_BIND`)
//! picks the address to listen on: a host in its own network namespace binds `0.0.0.0` so the
//! test's observer can reach it from outside. SIGTERM keeps its default action (exit at once).
//!
//! Only `std` is used so the binary builds fast and behaves the same everywhere.

use std::env;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

/// Start delay in `slow-start` mode when `--start-delay-ms` is not given.
const DEFAULT_SLOW_START_DELAY: Duration = Duration::from_millis(2000);
/// How long to keep retrying a bind whose port is still held (by the previous version, which
/// is shutting down while this one starts).
const BIND_RETRY_FOR: Duration = Duration::from_secs(5);
/// Pause between bind attempts.
const BIND_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// A client that has not sent its request head by then is dropped.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing a response may take.
const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read; anything longer is answered with 431.
const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Exit status for a command line that cannot be used (as for usage errors elsewhere).
const EXIT_USAGE: u8 = 2;

const USAGE: &str = "usage: rollgate-testsvc --port P --version V \
[--mode healthy|unhealthy|crash|slow-start] [--start-delay-ms N] [--bind ADDR]\n\
env fallbacks: TESTSVC_PORT, TESTSVC_VERSION, TESTSVC_MODE, TESTSVC_BIND";

/// How this instance behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Serve and report healthy.
    Healthy,
    /// Serve, but `/health` answers 500.
    Unhealthy,
    /// Exit 1 at start, before binding.
    Crash,
    /// Sleep before binding, then behave as `Healthy`.
    SlowStart,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "healthy" => Ok(Mode::Healthy),
            "unhealthy" => Ok(Mode::Unhealthy),
            "crash" => Ok(Mode::Crash),
            "slow-start" => Ok(Mode::SlowStart),
            other => Err(format!(
                "unknown mode {other:?}; use healthy, unhealthy, crash or slow-start"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Healthy => "healthy",
            Mode::Unhealthy => "unhealthy",
            Mode::Crash => "crash",
            Mode::SlowStart => "slow-start",
        })
    }
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    port: u16,
    version: String,
    mode: Mode,
    /// Sleep before binding; `None` means "the mode's default".
    start_delay: Option<Duration>,
    /// Address to listen on.
    bind: Ipv4Addr,
}

impl Config {
    /// How long to wait before binding.
    fn start_delay(&self) -> Duration {
        match (self.start_delay, self.mode) {
            (Some(d), _) => d,
            (None, Mode::SlowStart) => DEFAULT_SLOW_START_DELAY,
            (None, _) => Duration::ZERO,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    Run(Config),
    Help,
}

/// Parses `args` (without the program name). `env` looks up fallbacks by variable name.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, String> {
    let mut port = None;
    let mut version = None;
    let mut mode = None;
    let mut delay = None;
    let mut bind = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Invocation::Help);
        }
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || match inline.clone() {
            Some(v) => Ok(v),
            None => args.next().ok_or_else(|| format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--port" => port = Some(value()?),
            "--version" => version = Some(value()?),
            "--mode" => mode = Some(value()?),
            "--start-delay-ms" => delay = Some(value()?),
            "--bind" => bind = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let port = port
        .or_else(|| env("TESTSVC_PORT"))
        .ok_or("--port is required (or set TESTSVC_PORT)")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--port {port:?} is not a port number (0-65535)"))?;
    let version = version
        .or_else(|| env("TESTSVC_VERSION"))
        .filter(|v| !v.is_empty())
        .ok_or("--version is required (or set TESTSVC_VERSION)")?;
    let mode = match mode.or_else(|| env("TESTSVC_MODE")) {
        Some(m) => Mode::parse(&m)?,
        None => Mode::Healthy,
    };
    let start_delay = match delay {
        Some(d) => Some(Duration::from_millis(d.parse().map_err(|_| {
            format!("--start-delay-ms {d:?} is not a number of milliseconds")
        })?)),
        None => None,
    };
    let bind = match bind.or_else(|| env("TESTSVC_BIND")) {
        Some(b) => b
            .parse()
            .map_err(|_| format!("--bind {b:?} is not an IPv4 address such as 0.0.0.0"))?,
        None => Ipv4Addr::LOCALHOST,
    };
    Ok(Invocation::Run(Config {
        port,
        version,
        mode,
        start_delay,
        bind,
    }))
}

/// One HTTP response: status code, reason phrase, body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    code: u16,
    reason: &'static str,
    body: String,
}

impl Response {
    fn new(code: u16, reason: &'static str, body: impl Into<String>) -> Response {
        Response {
            code,
            reason,
            body: body.into(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.code,
            self.reason,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

/// Answers one request, given its request line (`GET /health HTTP/1.1`).
fn route(request_line: &str, version: &str, mode: Mode) -> Response {
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Response::new(400, "Bad Request", "bad request line");
    };
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/health") if mode == Mode::Unhealthy => {
            Response::new(500, "Internal Server Error", format!("unhealthy {version}"))
        }
        ("GET", "/health") => Response::new(200, "OK", format!("ok {version}")),
        ("GET", "/version") => Response::new(200, "OK", version.to_string()),
        (_, "/health" | "/version") => Response::new(405, "Method Not Allowed", "use GET"),
        _ => Response::new(404, "Not Found", "try /health or /version"),
    }
}

/// Reads the request head (up to the blank line) and returns its first line.
fn read_request_line(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > MAX_REQUEST_HEAD_BYTES {
            break;
        }
    }
    if head.len() > MAX_REQUEST_HEAD_BYTES {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&head);
    Ok(Some(text.lines().next().unwrap_or_default().to_string()))
}

/// Serves one connection: one request, one response, close.
fn handle(mut stream: TcpStream, version: &str, mode: Mode) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT))?;
    stream.set_write_timeout(Some(RESPONSE_WRITE_TIMEOUT))?;
    let response = match read_request_line(&mut stream)? {
        Some(line) => route(&line, version, mode),
        None => Response::new(431, "Request Header Fields Too Large", "request too large"),
    };
    stream.write_all(&response.to_bytes())?;
    stream.flush()
}

/// Binds `addr`, retrying while the port is still held by a process that is shutting down.
fn bind_with_retry(addr: SocketAddr) -> io::Result<TcpListener> {
    let give_up_at = Instant::now() + BIND_RETRY_FOR;
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < give_up_at => {
                thread::sleep(BIND_RETRY_INTERVAL);
            }
            Err(e) => return Err(e),
        }
    }
}

fn serve(config: Config) -> ExitCode {
    if config.mode == Mode::Crash {
        eprintln!(
            "rollgate-testsvc {} (crash): crashing on purpose",
            config.version
        );
        return ExitCode::FAILURE;
    }
    let delay = config.start_delay();
    if !delay.is_zero() {
        eprintln!(
            "rollgate-testsvc {} ({}): waiting {} ms before binding",
            config.version,
            config.mode,
            delay.as_millis()
        );
        thread::sleep(delay);
    }

    let addr = SocketAddr::from((config.bind, config.port));
    let listener = match bind_with_retry(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "rollgate-testsvc {}: cannot listen on {addr}: {e} (retried for {} s); \
                 is another process holding the port?",
                config.version,
                BIND_RETRY_FOR.as_secs()
            );
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    eprintln!(
        "rollgate-testsvc {} ({}) listening on {local}",
        config.version, config.mode
    );

    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            // A connection that died before accept(); keep serving the others.
            Err(_) => continue,
        };
        let version = config.version.clone();
        let mode = config.mode;
        let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
            // A client that hangs up early is its own problem, not the service's.
            let _ = handle(stream, &version, mode);
        });
        if let Err(e) = spawned {
            eprintln!("rollgate-testsvc: cannot start a connection thread: {e}");
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    match parse_args(env::args().skip(1), |name| env::var(name).ok()) {
        Ok(Invocation::Run(config)) => serve(config),
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rollgate-testsvc: {e}\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn run(s: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse_args(args(s), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })? {
            Invocation::Run(c) => Ok(c),
            Invocation::Help => Err("help".into()),
        }
    }

    #[test]
    fn args_in_any_order_and_from_env() {
        let cfg = |port, version: &str, mode, start_delay| Config {
            port,
            version: version.into(),
            mode,
            start_delay,
            bind: Ipv4Addr::LOCALHOST,
        };
        /// Command line, environment, expected config.
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            Config,
        );
        let table: &[Case] = &[
            (
                "--version 2.0.0 --mode healthy --port 8080",
                &[],
                cfg(8080, "2.0.0", Mode::Healthy, None),
            ),
            (
                "--port=9 --version=1 --mode=unhealthy",
                &[],
                cfg(9, "1", Mode::Unhealthy, None),
            ),
            (
                "--port 1 --version 1 --mode slow-start --start-delay-ms 250",
                &[],
                cfg(1, "1", Mode::SlowStart, Some(Duration::from_millis(250))),
            ),
            (
                "--port 1",
                &[("TESTSVC_VERSION", "3"), ("TESTSVC_MODE", "crash")],
                cfg(1, "3", Mode::Crash, None),
            ),
            (
                "--port 1 --version 4 --mode healthy",
                &[("TESTSVC_VERSION", "3"), ("TESTSVC_MODE", "crash")],
                cfg(1, "4", Mode::Healthy, None),
            ),
            (
                "--port 1 --version 1 --bind 0.0.0.0",
                &[],
                Config {
                    bind: Ipv4Addr::UNSPECIFIED,
                    ..cfg(1, "1", Mode::Healthy, None)
                },
            ),
            (
                "--port 1 --version 1",
                &[("TESTSVC_BIND", "10.0.0.2")],
                Config {
                    bind: Ipv4Addr::new(10, 0, 0, 2),
                    ..cfg(1, "1", Mode::Healthy, None)
                },
            ),
            // A later flag wins (the agent's appended flags come last).
            (
                "--mode unhealthy --port 1 --version 1 --port 2",
                &[],
                cfg(2, "1", Mode::Unhealthy, None),
            ),
        ];
        for (line, env, want) in table {
            assert_eq!(run(line, env).as_ref(), Ok(want), "{line}");
        }
    }

    #[test]
    fn bad_args_are_explained() {
        let table = [
            ("--version 1", "--port is required"),
            ("--port 1", "--version is required"),
            ("--port x --version 1", "not a port number"),
            ("--port 1 --version 1 --mode sleepy", "unknown mode"),
            ("--port 1 --version 1 --bogus", "unknown argument"),
            ("--port 1 --version", "--version needs a value"),
            ("--port 1 --version 1 --start-delay-ms soon", "milliseconds"),
            ("--port 1 --version 1 --bind localhost", "IPv4 address"),
        ];
        for (line, want) in table {
            let err = run(line, &[]).expect_err(line);
            assert!(
                err.contains(want),
                "{line}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn start_delay_defaults_only_for_slow_start() {
        let mut c = run("--port 1 --version 1 --mode slow-start", &[]).expect("valid");
        assert_eq!(c.start_delay(), DEFAULT_SLOW_START_DELAY);
        c.mode = Mode::Healthy;
        assert_eq!(c.start_delay(), Duration::ZERO);
    }

    #[test]
    fn routes() {
        let table = [
            ("GET /health HTTP/1.1", Mode::Healthy, 200, "ok 2.0.0"),
            ("GET /health?x=1 HTTP/1.1", Mode::Healthy, 200, "ok 2.0.0"),
            (
                "GET /health HTTP/1.1",
                Mode::Unhealthy,
                500,
                "unhealthy 2.0.0",
            ),
            ("GET /version HTTP/1.1", Mode::Unhealthy, 200, "2.0.0"),
            ("POST /health HTTP/1.1", Mode::Healthy, 405, "use GET"),
            (
                "GET / HTTP/1.1",
                Mode::Healthy,
                404,
                "try /health or /version",
            ),
            ("", Mode::Healthy, 400, "bad request line"),
        ];
        for (line, mode, code, body) in table {
            let r = route(line, "2.0.0", mode);
            assert_eq!((r.code, r.body.as_str()), (code, body), "{line:?} {mode}");
        }
    }

    #[test]
    fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            handle(stream, "9.9.9", Mode::Healthy).expect("handle");
        });
        let mut client = TcpStream::connect(addr).expect("connect");
        client
            .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut reply = String::new();
        client.read_to_string(&mut reply).expect("read");
        server.join().expect("server thread");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("Connection: close\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\n9.9.9"), "{reply}");
    }
}
