//! Issue 10, item 9 (S10): operators act within their role, on the record, and can be revoked.
//!
//! On a real fleet: a viewer reads but cannot steer; a deployer of `db` cannot start a `web`
//! rollout nor forget a host; every control RPC leaves an `operator=... action=...` line in the
//! coordinator's log. Then revocation through `[access] deny_list`: an agent whose identity is
//! denied is cut from its open session within seconds and refused at its next handshake; a
//! denied operator is refused. Finally `host forget` bans the host's certificate: the same
//! certificate is refused afterwards (a re-issued one has another fingerprint).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rollgate_tests::pki::{Pki, TlsFiles};
use rollgate_tests::{bin, wait_for, Fleet, FleetOpts, Mode};

/// `rollgate certs issue operator NAME --role ROLE [--services S]`.
fn issue_operator(pki: &Pki, name: &str, role: &str, services: &str) -> anyhow::Result<TlsFiles> {
    let dir = pki.dir.display().to_string();
    let mut args = vec![
        "certs", "issue", "operator", name, "--dir", &dir, "--role", role,
    ];
    if !services.is_empty() {
        args.extend(["--services", services]);
    }
    let out = Command::new(bin("rollgate")).args(&args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(TlsFiles {
        ca: pki.ca(),
        cert: pki.dir.join(format!("{role}-{name}.pem")),
        key: pki.dir.join(format!("{role}-{name}.key")),
    })
}

/// The CLI as `who`.
fn cli_as(fleet: &Fleet, who: &TlsFiles, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(bin("rollgate"))
        .args(["--coordinator", &fleet.coordinator_url()])
        .args(who.cli_args())
        .args(args)
        .output()?)
}

fn refused(out: &Output, why: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "accepted; want a refusal naming {why:?}"
    );
    assert!(err.contains(why), "refusal does not say {why:?}: {err}");
    err
}

fn log_has(fleet: &Fleet, what: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("coordinator log: {what}"),
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(fleet.coordinator().log())?;
            Ok(log.lines().find(|l| l.contains(what)).map(str::to_string))
        },
    )
}

fn offline(fleet: &Fleet, host: &str) -> anyhow::Result<Option<()>> {
    let hosts = fleet.hosts()?;
    Ok(hosts
        .iter()
        .any(|h| h.host_id == host && !h.connected)
        .then_some(()))
}

fn deny(path: &Path, entries: &[&str]) -> anyhow::Result<()> {
    std::fs::write(path, entries.join("\n") + "\n")?;
    Ok(())
}

#[test]
fn roles_are_enforced_logged_and_revocable() -> anyhow::Result<()> {
    let access = tempfile::tempdir()?;
    let deny_list = access.path().join("deny-list");
    deny(&deny_list, &["# revoked identities"])?;
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        sites: 1,
        coordinator_extra: Some(format!(
            "[access]\ndeny_list = \"{}\"\n",
            deny_list.display()
        )),
        ..FleetOpts::default()
    })?;
    let viewer = issue_operator(&fleet.pki, "val", "viewer", "")?;
    let db_deployer = issue_operator(&fleet.pki, "dee", "deployer", "db")?;
    let release = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&release, "max_unavailable = 1")?;

    // A viewer reads, and may not steer.
    let out = cli_as(&fleet, &viewer, &["hosts"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = refused(
        &cli_as(
            &fleet,
            &viewer,
            &["rollout", "start", &spec.display().to_string()],
        )?,
        "a viewer may only read; push-artifact",
    );
    println!("viewer start: {}", e.trim());
    let e = refused(
        &cli_as(&fleet, &viewer, &["rollout", "abort", "r-1"])?,
        "a viewer may only read; abort",
    );
    println!("viewer abort: {}", e.trim());
    println!(
        "{}",
        log_has(&fleet, "operator=spiffe://test/viewer/val action=abort")?
    );

    // A deployer of db may not start a web rollout, nor forget a host.
    let e = refused(
        &cli_as(
            &fleet,
            &db_deployer,
            &["rollout", "start", &spec.display().to_string()],
        )?,
        "may act on services [\"db\"] only",
    );
    println!("db deployer start web: {}", e.trim());
    let e = refused(
        &cli_as(&fleet, &db_deployer, &["host", "forget", "host-2", "--yes"])?,
        "needs an operator certificate",
    );
    println!("db deployer forget: {}", e.trim());

    // The full operator's actions are on the record too.
    fleet.cli_ok(&["hosts"])?;
    println!(
        "{}",
        log_has(
            &fleet,
            "operator=spiffe://test/operator/tester action=list-hosts"
        )?
    );

    // Revocation: the open session of a denied host is cut, its reconnects refused.
    deny(
        &deny_list,
        &["spiffe://test/host/host-1", "spiffe://test/viewer/val"],
    )?;
    let t0 = std::time::Instant::now();
    let cut = log_has(&fleet, "cut the open agent session")?;
    println!("after {:?}: {cut}", t0.elapsed());
    assert!(cut.contains("spiffe://test/host/host-1"), "{cut}");
    fleet.wait("host-1 offline", Duration::from_secs(15), || {
        offline(&fleet, "host-1")
    })?;
    println!("host-1 offline after {:?}", t0.elapsed());
    let again = log_has(
        &fleet,
        "refused a connection: spiffe://test/host/host-1 is on the deny list",
    )?;
    println!("{again}");
    let e = refused(&cli_as(&fleet, &viewer, &["hosts"])?, "");
    println!("denied viewer: {}", e.trim());

    // host forget bans the certificate host-2 connected with; a re-issued one comes back.
    fleet.kill_host("host-2");
    fleet.wait("host-2 offline", Duration::from_secs(15), || {
        offline(&fleet, "host-2")
    })?;
    fleet.cli_ok(&["host", "forget", "host-2", "--yes"])?;
    fleet.agent("host-2").proc.restart()?;
    let banned = log_has(
        &fleet,
        "this certificate was banned by `rollgate host forget`",
    )?;
    println!("{banned}");
    Ok(())
}
