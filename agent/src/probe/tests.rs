use super::*;
use crate::config::Config;
use std::sync::Arc;

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

    let err = prober("[[services.probes]]\nkind = \"exec\"\ncommand = [\"/nonexistent/probe\"]")
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
            &[
                (100, true, Verdict::Waiting),
                (300, true, Verdict::Waiting),
                (400, true, Verdict::Healthy),
            ],
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
                (
                    1000,
                    false,
                    Verdict::Failed("not healthy within 1s: probe failed".into()),
                ),
            ],
        ),
        (
            "healthy too late fails at the deadline",
            &[
                (900, true, Verdict::Waiting),
                (
                    1000,
                    true,
                    Verdict::Failed(
                        "healthy for only 100ms of the required 300ms when the 1s deadline passed"
                            .into(),
                    ),
                ),
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

#[test]
fn startup_retry_is_a_tenth_of_the_wait_within_bounds() {
    let ms = Duration::from_millis;
    let interval = ms(500);
    // (time since the start, expected pause before the next start-up probe)
    let cases = [
        (0, 10),   // just started: as close as STARTUP_RETRY_MIN
        (50, 10),  // still the floor
        (250, 25), // a tenth of the wait
        (4_000, 400),
        (60_000, 500), // a slow starter: never slower than the configured interval
    ];
    for (elapsed, want) in cases {
        assert_eq!(
            startup_retry(ms(elapsed), interval),
            ms(want),
            "{elapsed} ms after the start"
        );
    }
    // An interval shorter than the floor wins.
    assert_eq!(startup_retry(ms(0), ms(5)), ms(5));
}

#[test]
fn any_passed_counts_raw_passes_not_the_threshold() {
    let mut t = Threshold::new(3, 1);
    assert!(!t.ever_passed);
    let _ = t.observe(Err("refused".into()));
    assert!(!t.ever_passed);
    // One pass of three needed: not passing yet, but the service answers.
    assert!(t.observe(Ok(())).is_err());
    assert!(t.ever_passed);
    t.reset();
    assert!(!t.ever_passed, "a new process starts out with no pass seen");
}
