//! Issue 10, item 13: insecure settings only where they are safe, and never by accident.
//!
//! Real processes, each refusal checked for its reason: a coordinator with
//! `insecure_plaintext = true` on a non-loopback address; a coordinator on an external etcd
//! without TLS and authentication (unless `allow_insecure_etcd = true`); the CLI with only
//! `ROLLGATE_INSECURE` in its environment; and the local etcd's stale-process cleanup, whose
//! pidfile names another, live etcd (a reused pid, a planted file): it must be left alone.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use rollgate_tests::pki::Pki;
use rollgate_tests::{bin, free_port, free_port_pair, wait_for, Etcd, Proc};

/// How long a coordinator that must refuse its config may take to exit.
const REFUSE_WITHIN: Duration = Duration::from_secs(10);

/// Runs a coordinator with `config`; it must exit (refusing) within [`REFUSE_WITHIN`]. Returns
/// its output.
fn refused_start(dir: &Path, name: &str, config: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, config)?;
    let log = dir.join(format!("{name}.log"));
    let mut coordinator = Proc::spawn(
        name,
        &[
            bin("rollgate-coordinator").display().to_string(),
            "--config".into(),
            path.display().to_string(),
        ],
        &log,
    )?;
    let status = wait_for(
        &format!("{name}: the coordinator to refuse"),
        REFUSE_WITHIN,
        || Ok(coordinator.exited_on_its_own()),
    );
    let text = fs::read_to_string(&log)?;
    match status {
        Ok(s) => assert!(!s.success(), "{name}: exited successfully: {text}"),
        Err(_) => panic!("{name}: the coordinator started with this config: {text}"),
    }
    Ok(text)
}

#[test]
fn insecure_settings_are_refused_with_the_reason() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    fs::create_dir_all(dir.join("etcd"))?;
    let etcd = Etcd::start(&dir.join("etcd"))?;
    let state = dir.join("state").display().to_string();

    // Plaintext on an address others can reach.
    let text = refused_start(
        dir,
        "plaintext-wide",
        &format!(
            "listen = \"0.0.0.0:{}\"\nstate_dir = \"{state}\"\n[tls]\ninsecure_plaintext = true\n\
             [etcd]\nendpoints = [\"{}\"]\nallow_insecure_etcd = true\n",
            free_port(),
            etcd.endpoint
        ),
    )?;
    println!("plaintext on 0.0.0.0: {}", text.trim());
    assert!(text.contains("only on a loopback address"), "{text}");

    // A plain, unauthenticated external etcd.
    let pki = Pki::init(&dir.join("pki"))?;
    let tls = pki.coordinator("c1", Ipv4Addr::LOCALHOST.into())?.toml();
    let text = refused_start(
        dir,
        "plain-etcd",
        &format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = \"{state}\"\n[etcd]\nendpoints = [\"{}\"]\n{tls}",
            free_port(),
            etcd.endpoint
        ),
    )?;
    println!("plain etcd: {}", text.trim());
    assert!(
        text.contains("neither TLS nor authentication")
            && text.contains("allow_insecure_etcd = true"),
        "{text}"
    );

    // The CLI: an environment variable alone never turns TLS off.
    let out = Command::new(bin("rollgate"))
        .env("ROLLGATE_INSECURE", "true")
        .args(["--coordinator", "http://127.0.0.1:9", "hosts"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("ROLLGATE_INSECURE=true: {}", err.trim());
    assert!(
        !out.status.success() && err.contains("plain http is for development only"),
        "{err}"
    );
    Ok(())
}

#[test]
fn stale_etcd_cleanup_kills_only_its_own_etcd() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    // Another etcd on this machine (another coordinator's, or a system one), alive.
    fs::create_dir_all(dir.join("other"))?;
    let other = Etcd::start(&dir.join("other"))?;
    let other_pid = other.proc.pid().expect("running");
    // Our state dir's pidfile names it (a stale pid reused, or a planted file).
    let state = dir.join("state");
    fs::create_dir_all(state.join("etcd"))?;
    fs::write(state.join("etcd/etcd.pid"), other_pid.to_string())?;

    let pki = Pki::init(&dir.join("pki"))?;
    let tls = pki.coordinator("c1", Ipv4Addr::LOCALHOST.into())?.toml();
    let config = dir.join("coordinator.toml");
    fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n[etcd]\nlocal_port = {}\n{tls}",
            free_port(),
            state.display(),
            free_port_pair()
        ),
    )?;
    let log = dir.join("coordinator.log");
    let _coordinator = Proc::spawn(
        "coordinator",
        &[
            bin("rollgate-coordinator").display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
        &log,
    )?;
    let line = wait_for(
        "the coordinator to judge the pidfile",
        Duration::from_secs(20),
        || {
            let text = fs::read_to_string(&log)?;
            Ok(text
                .lines()
                .find(|l| l.contains("is not this etcd") || l.contains("stopping a local etcd"))
                .map(str::to_string))
        },
    )?;
    println!("{line}");
    wait_for("the coordinator to listen", Duration::from_secs(20), || {
        Ok(fs::read_to_string(&log)?
            .contains("coordinator listening")
            .then_some(()))
    })?;
    assert!(
        kill(Pid::from_raw(other_pid.as_raw()), None).is_ok(),
        "the other etcd (pid {other_pid}) was killed: {line}"
    );
    assert!(line.contains("leaving it alone"), "{line}");
    Ok(())
}
