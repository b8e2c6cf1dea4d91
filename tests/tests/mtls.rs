//! S7 against a real coordinator over real sockets: who may connect, and who may say what.
//!
//! Negatives (each refused): no client certificate, a certificate from another CA, an expired
//! certificate, plain http, host-1 claiming to be host-2, an agent calling the control API, an
//! operator opening an agent session. Then a CA rotation picked up without a restart, and
//! oversized messages refused with the coordinator's memory bounded.

use std::path::Path;
use std::time::Duration;

use rollgate_proto::pb;
use rollgate_proto::pb::agent_message::Msg;
use rollgate_proto::pb::agent_service_client::AgentServiceClient;
use rollgate_proto::pb::control_service_client::ControlServiceClient;
use rollgate_proto::pb::coordinator_message::Msg as CMsg;
use rollgate_tests::pki::{Pki, TlsFiles};
use rollgate_tests::{Fleet, FleetOpts};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn channel(fleet: &Fleet, tls: Option<ClientTlsConfig>) -> anyhow::Result<Channel> {
    let mut url = fleet.coordinator().url();
    let mut ep;
    match tls {
        Some(tls) => {
            ep = Endpoint::from_shared(url)?.tls_config(tls)?;
        }
        None => {
            url = url.replace("https://", "http://");
            ep = Endpoint::from_shared(url)?;
        }
    }
    ep = ep
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3));
    Ok(fleet.block_on(ep.connect())?)
}

/// ListHosts with `tls`; the error text when refused.
fn list_hosts(fleet: &Fleet, tls: Option<ClientTlsConfig>) -> Result<usize, String> {
    let ch = channel(fleet, tls).map_err(|e| format!("connect: {e:#}"))?;
    let mut c = ControlServiceClient::new(ch);
    fleet
        .block_on(c.list_hosts(pb::ListHostsRequest {}))
        .map(|r| r.into_inner().hosts.len())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn ca_only(pki_ca: &Path) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(pki_ca).expect("ca")))
}

/// An operator certificate signed by the fleet CA that expired yesterday (made with rcgen
/// from the CA's own key, as a forgotten renewal would leave it).
fn expired_operator(pki: &Pki) -> anyhow::Result<(String, String)> {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.dir.join("ca.key"))?)?;
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(pki.ca())?)?
        .self_signed(&ca_key)?;
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://test/operator/late".to_string().try_into()?,
    )];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn with_identity(ca: &Path, cert: &str, key: &str) -> ClientTlsConfig {
    ca_only(ca).identity(Identity::from_pem(cert, key))
}

fn identity_of(files: &TlsFiles) -> ClientTlsConfig {
    files.client_config().expect("tls files")
}

#[test]
fn mtls_refuses_strangers_impostors_and_wrong_roles() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        sites: 1,
        ..FleetOpts::default()
    })?;
    let ca = fleet.pki.ca();

    // The operator gets in.
    assert_eq!(
        list_hosts(&fleet, Some(identity_of(&fleet.operator))),
        Ok(2)
    );

    // Each refusal below must be the coordinator's, for the right reason: its log says why.
    let log = LogCursor::new(&fleet);

    // No client certificate: the handshake is refused.
    let e = list_hosts(&fleet, Some(ca_only(&ca))).expect_err("no certificate");
    println!("no certificate: {e}");
    log.expect("peer sent no certificates")?;

    // Plain http to the TLS port.
    let e = list_hosts(&fleet, None).expect_err("plain http");
    println!("plain http: {e}");
    log.expect("TLS handshake failed")?;

    // An operator certificate from another fleet's CA (same fleet name, even).
    let other = Pki::init(&fleet.dir.join("other-pki"))?;
    let foreign = other.operator()?;
    let e = list_hosts(
        &fleet,
        Some(with_identity(
            &ca,
            &std::fs::read_to_string(&foreign.cert)?,
            &std::fs::read_to_string(&foreign.key)?,
        )),
    )
    .expect_err("foreign CA");
    println!("foreign CA: {e}");
    log.expect("invalid peer certificate")?;

    // Expired.
    let (cert, key) = expired_operator(&fleet.pki)?;
    let e = list_hosts(&fleet, Some(with_identity(&ca, &cert, &key))).expect_err("expired");
    println!("expired: {e}");
    log.expect("certificate expired")?;

    // An agent calling the control API.
    let host1 = fleet.pki.host("host-1")?;
    let e = list_hosts(&fleet, Some(identity_of(&host1))).expect_err("agent on control API");
    println!("agent on the control API: {e}");
    assert!(e.starts_with("PermissionDenied"), "{e}");
    assert!(e.contains("operator"), "{e}");

    // host-1's certificate saying hello as host-2: refused, and host-2's own session stands.
    let refusal = hello_as(&fleet, &host1, "host-2").map_err(anyhow::Error::msg)?;
    println!("host-1 claiming host-2: {refusal}");
    assert!(
        refusal.contains("certificate is for host \"host-1\""),
        "{refusal}"
    );
    let hosts = fleet.hosts()?;
    let h2 = hosts
        .iter()
        .find(|h| h.host_id == "host-2")
        .expect("host-2");
    assert!(
        h2.connected,
        "host-2 must still be connected by its own agent"
    );

    // An operator opening an agent session.
    let e = hello_as(&fleet, &fleet.operator, "host-2").expect_err("operator as agent");
    println!("operator as agent: {e}");
    assert!(e.contains("PermissionDenied"), "{e}");

    // The same certificate saying hello as itself is accepted (the refusals above are about
    // identity, not about a broken client). It replaces host-1's session, so do it last.
    let ok = hello_as(&fleet, &host1, "host-1");
    assert!(
        matches!(&ok, Err(e) if e == "welcome"),
        "host-1 as itself: {ok:?}"
    );
    log.expect("a host speaks only for itself")?;
    Ok(())
}

/// Reads the coordinator's log from where the last expectation matched.
struct LogCursor {
    path: std::path::PathBuf,
    at: std::cell::Cell<usize>,
}

impl LogCursor {
    fn new(fleet: &Fleet) -> Self {
        let path = fleet.coordinator().log();
        let at = std::fs::read_to_string(&path).map_or(0, |s| s.len());
        LogCursor {
            path,
            at: std::cell::Cell::new(at),
        }
    }

    /// Waits (briefly) for `needle` in the log after the cursor, and moves past it.
    fn expect(&self, needle: &str) -> anyhow::Result<()> {
        rollgate_tests::wait_for(
            &format!("the coordinator to log {needle:?}"),
            Duration::from_secs(5),
            || {
                let text = std::fs::read_to_string(&self.path)?;
                let from = self.at.get().min(text.len());
                Ok(text[from..].find(needle).map(|i| {
                    self.at.set(from + i + needle.len());
                }))
            },
        )
    }
}

/// Opens an agent session with `files` and says hello as `host_id`; Ok(refusal reason), or
/// Err("welcome") when accepted, or Err(status) when the call itself is refused.
fn hello_as(fleet: &Fleet, files: &TlsFiles, host_id: &str) -> Result<String, String> {
    let ch = channel(fleet, Some(identity_of(files))).map_err(|e| format!("connect: {e:#}"))?;
    let mut c = AgentServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.try_send(pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            host_id: host_id.into(),
            agent_version: "impostor".into(),
            ..Default::default()
        })),
    })
    .expect("queue");
    fleet.block_on(async move {
        let mut inbound = c
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        drop(tx);
        match first.and_then(|m| m.msg) {
            Some(CMsg::Refusal(r)) => Ok(r.reason),
            Some(CMsg::Welcome(_)) => Err("welcome".to_string()),
            other => Err(format!("unexpected {other:?}")),
        }
    })
}

#[test]
fn a_rotated_ca_is_trusted_without_a_restart() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        ..FleetOpts::default()
    })?;
    // A new CA for the same fleet, and an operator certificate from it.
    let next = Pki::init(&fleet.dir.join("next-pki"))?;
    let op = next.operator()?;
    let tls = || {
        with_identity(
            &fleet.pki.ca(),
            &std::fs::read_to_string(&op.cert).expect("cert"),
            &std::fs::read_to_string(&op.key).expect("key"),
        )
    };
    let e = list_hosts(&fleet, Some(tls())).expect_err("not trusted yet");
    println!("before rotation: {e}");
    // The operator adds the new CA to the coordinator's CA bundle (atomic rename).
    let coord_ca = fleet.pki.ca();
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(&coord_ca)?,
        std::fs::read_to_string(next.ca())?
    );
    let tmp = coord_ca.with_extension("new");
    std::fs::write(&tmp, bundle)?;
    std::fs::rename(&tmp, &coord_ca)?;
    let started = std::time::Instant::now();
    let n = rollgate_tests::wait_for("the new CA to be trusted", Duration::from_secs(10), || {
        Ok(list_hosts(&fleet, Some(tls())).ok())
    })?;
    println!(
        "after rotation: accepted after {:?}, {n} host(s) listed; no restart",
        started.elapsed()
    );
    assert!(fleet.coordinator_restarts().is_empty());
    let log = std::fs::read_to_string(fleet.coordinator().log())?;
    assert!(log.contains("TLS certificates reloaded"), "{log}");
    Ok(())
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn oversized_messages_are_refused_with_memory_bounded() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        ..FleetOpts::default()
    })?;
    let pid = fleet.coordinator().pid().expect("pid").as_raw();
    let before = rss_kib(pid);
    // An independent sampler: the worst RSS seen while the big requests arrive.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                worst = worst.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            worst
        })
    };
    let ch = channel(&fleet, Some(identity_of(&fleet.operator)))?;
    // 32 MiB specs, 8 of them at once: each is refused by size before it is decoded.
    let huge = "x".repeat(32 << 20);
    let mut worst = before;
    let results = fleet.block_on(async {
        let calls = (0..8).map(|_| {
            let mut c = ControlServiceClient::new(ch.clone()).max_encoding_message_size(usize::MAX);
            let spec = huge.clone();
            async move {
                c.create_rollout(pb::CreateRolloutRequest { spec_toml: spec })
                    .await
                    .map(|_| ())
                    .map_err(|s| (s.code(), s.message().to_string()))
            }
        });
        futures::future::join_all(calls).await
    });
    for r in &results {
        let (code, msg) = r.clone().expect_err("oversized spec accepted");
        assert!(
            matches!(
                code,
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{code:?}: {msg}"
        );
    }
    println!("oversized: {:?}", results[0]);
    // An agent stream with an oversized message is cut too.
    let host1 = fleet.pki.host("host-1")?;
    let ch = channel(&fleet, Some(identity_of(&host1)))?;
    let outcome: Result<(), String> = fleet.block_on(async {
        let mut c = AgentServiceClient::new(ch).max_encoding_message_size(usize::MAX);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::AgentMessage {
            msg: Some(Msg::Hello(pb::Hello {
                host_id: "host-1".into(),
                agent_version: "x".repeat(16 << 20),
                ..Default::default()
            })),
        })
        .await
        .expect("queue");
        let mut inbound = c
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let r = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await;
        drop(tx);
        match r {
            Ok(Ok(Some(m))) => Err(format!("accepted: {m:?}")),
            Ok(Ok(None)) => Ok(()),
            Ok(Err(s)) => {
                println!("oversized hello: {:?}: {}", s.code(), s.message());
                Ok(())
            }
            Err(_) => Err("no answer".into()),
        }
    });
    outcome.map_err(anyhow::Error::msg)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worst = worst.max(sampler.join().expect("sampler"));
    let grew = worst.saturating_sub(before);
    println!(
        "coordinator RSS: {before} KiB before, worst {worst} KiB while refusing 8 x 32 MiB \
         requests and a 16 MiB hello (grew {grew} KiB; bound 65536 KiB)"
    );
    assert!(grew < 64 * 1024, "the coordinator grew by {grew} KiB");
    // Still serving.
    assert_eq!(
        list_hosts(&fleet, Some(identity_of(&fleet.operator))),
        Ok(1)
    );
    Ok(())
}

#[test]
fn an_agent_with_another_hosts_certificate_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::init(&dir.path().join("pki"))?;
    let files = pki.host("host-1")?;
    let run = |host_id: &str, url: &str, tls: &str| -> anyhow::Result<String> {
        let cfg = dir.path().join(format!("{host_id}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "host_id = \"{host_id}\"\ncoordinator = \"{url}\"\nstate_dir = \"{}\"\n{tls}",
                dir.path().join(host_id).display()
            ),
        )?;
        let out = std::process::Command::new(rollgate_tests::bin("rollgate-agent"))
            .arg("--config")
            .arg(&cfg)
            .output()?;
        assert!(!out.status.success(), "{host_id} started");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let e = run("host-7", "https://127.0.0.1:9", &files.toml())?;
    println!("{e}");
    assert!(e.contains("is for host \"host-1\""), "{e}");
    assert!(e.contains("rollgate certs issue host host-7"), "{e}");
    let e = run("host-1", "http://127.0.0.1:9", &files.toml())?;
    println!("{e}");
    assert!(e.contains("plain http"), "{e}");
    let e = run("host-1", "https://127.0.0.1:9", "")?;
    println!("{e}");
    assert!(e.contains("insecure_plaintext"), "{e}");
    let op = pki.operator()?;
    let e = run("host-1", "https://127.0.0.1:9", &op.toml())?;
    println!("{e}");
    assert!(e.contains("is for operator tester"), "{e}");
    Ok(())
}

/// The development switch works, says so loudly, and is never implied: a plain coordinator
/// answers `--insecure` over http, and the CLI refuses http without the switch.
#[test]
fn insecure_plaintext_is_explicit_and_loud() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = rollgate_tests::Etcd::start(dir.path())?;
    let port = rollgate_tests::free_port();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nreplica_id = \"dev\"\n\
             [tls]\ninsecure_plaintext = true\n[etcd]\nendpoints = [\"{}\"]\nallow_insecure_etcd = true\n",
            dir.path().join("coord").display(),
            etcd.endpoint
        ),
    )?;
    let log = dir.path().join("coordinator.log");
    let _coord = rollgate_tests::Proc::spawn(
        "coordinator",
        &[
            rollgate_tests::bin("rollgate-coordinator")
                .display()
                .to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ],
        &log,
    )?;
    let url = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        std::process::Command::new(rollgate_tests::bin("rollgate"))
            .args(["--coordinator", &url])
            .args(args)
            .env_remove("ROLLGATE_INSECURE")
            .output()
    };
    rollgate_tests::wait_for(
        "the insecure coordinator to answer",
        Duration::from_secs(20),
        || {
            Ok(cli(&["--insecure", "hosts"])?
                .status
                .success()
                .then_some(()))
        },
    )?;
    let out = cli(&["hosts"])?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain http is for development only"), "{err}");
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains("INSECURE: [tls] insecure_plaintext = true"),
        "{text}"
    );
    Ok(())
}
