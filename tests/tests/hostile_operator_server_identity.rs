//! Issue 10, item 10 (S7): clients check the server's identity, not only its CA chain and name.
//!
//! A fleet whose PKI issues all-purpose certificates (serverAuth, an IP SAN) lets any holder of
//! an operator's or a host's certificate, or another fleet's coordinator signed by the same CA,
//! answer on a coordinator's address (a stolen DNS name, an ARP spoof). Here a real TLS server
//! (`openssl s_server`) presents each such certificate; the CLI and a real agent must refuse it
//! before the handshake completes, with a message naming what they got and the fix.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rollgate_tests::pki::{Pki, FLEET};
use rollgate_tests::{bin, free_port, wait_for, Proc};

/// A certificate from the fleet CA's key, as a fleet with its own PKI could issue it.
fn forge(pki: &Pki, uri: &str, file: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.dir.join("ca.key"))?)?;
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(pki.ca())?)?
        .self_signed(&ca_key)?;
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![
        rcgen::SanType::URI(uri.to_string().try_into()?),
        rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    let (c, k) = (
        pki.dir.join(format!("{file}.pem")),
        pki.dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

/// A real TLS server presenting `cert` on a free loopback port.
fn impostor(dir: &Path, cert: &Path, key: &Path, name: &str) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let cmd: Vec<String> = [
        "openssl",
        "s_server",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-cert",
        &cert.display().to_string(),
        "-key",
        &key.display().to_string(),
        "-alpn",
        "h2",
        // Answers without reading stdin (the default mode quits at stdin's EOF).
        "-www",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dir.join(format!("{name}.log"));
    let proc = Proc::spawn(name, &cmd, &log)?;
    wait_for(&format!("{name} listening"), Duration::from_secs(5), || {
        Ok(std::fs::read_to_string(&log)?
            .contains("ACCEPT")
            .then_some(()))
    })?;
    Ok((proc, port))
}

#[test]
fn clients_refuse_a_server_that_is_not_a_coordinator_of_their_fleet() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::init(&dir.path().join("pki"))?;
    let operator = pki.operator()?;
    let host = pki.host("web-1")?;
    let cases = [
        (format!("spiffe://{FLEET}/operator/mallory"), "operator"),
        (format!("spiffe://{FLEET}/host/web-9"), "host"),
        ("spiffe://staging/coordinator/c1".to_string(), "other-fleet"),
    ];
    for (uri, name) in cases {
        let (cert, key) = forge(&pki, &uri, name)?;
        let (mut server, port) = impostor(dir.path(), &cert, &key, name)?;
        let url = format!("https://127.0.0.1:{port}");

        // The CLI.
        let mut args = vec!["--coordinator".to_string(), url.clone()];
        args.extend(operator.cli_args());
        args.push("hosts".into());
        let out = Command::new(bin("rollgate")).args(&args).output()?;
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        println!("CLI against {uri}: {}", err.trim());
        assert!(!out.status.success(), "the CLI accepted {uri}");
        assert!(
            err.contains(&uri) && err.contains("not a coordinator of fleet \"test\""),
            "the CLI must name what it got ({uri}) and why: {err}"
        );
        assert!(err.contains("rollgate certs issue coordinator"), "{err}");

        // A real agent.
        let adir = dir.path().join(format!("agent-{name}"));
        std::fs::create_dir_all(&adir)?;
        let cfg = adir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "host_id = \"web-1\"\ncoordinator = \"{url}\"\nstate_dir = \"{}\"\n{}",
                adir.join("state").display(),
                host.toml()
            ),
        )?;
        let cmd = vec![
            bin("rollgate-agent").display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        let mut agent = Proc::spawn("agent", &cmd, &adir.join("agent.log"))?;
        let line = wait_for(
            &format!("the agent to refuse {uri}"),
            Duration::from_secs(10),
            || {
                let log = std::fs::read_to_string(adir.join("agent.log")).unwrap_or_default();
                Ok(log
                    .lines()
                    .find(|l| l.contains("not a coordinator of fleet"))
                    .map(str::to_string))
            },
        )?;
        println!("agent against {uri}: {line}");
        assert!(line.contains(&uri), "{line}");
        agent.stop(Duration::from_secs(2));
        server.stop(Duration::from_secs(1));
        // The impostor never saw a finished handshake (no session for it to feed orders into).
        let slog = std::fs::read_to_string(dir.path().join(format!("{name}.log")))?;
        assert!(!slog.contains("CIPHER is"), "a handshake completed: {slog}");
    }
    Ok(())
}
