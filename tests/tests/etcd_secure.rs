//! Coordinator ↔ etcd over TLS with client certificates and etcd user auth (`[etcd.tls]`,
//! `[etcd.auth]`), against a real etcd run as a careful operator runs it: https only,
//! `--client-cert-auth`, auth enabled, a `rollgate` user whose role may touch only the
//! coordinator's prefix, and auth tokens that expire every couple of seconds.
//!
//! The positive test runs rollouts to completion through such an etcd, with an idle stretch
//! longer than several token lifetimes in between (the coordinator must renew its token, keep
//! its lease and its watches). The negative tests start a coordinator as its own process with
//! one setting wrong and check that it exits with an error naming the problem; each would fail
//! if etcd (or the coordinator) ignored that setting, since the coordinator would then start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use rollgate_tests::{
    bin, free_port, wait_for, Fleet, FleetOpts, Proc, ETCD_PREFIX, ETCD_USER,
    SECURE_ETCD_TOKEN_TTL_SECS,
};

/// How long a coordinator refused by etcd may take to exit (its connect timeout is 5 s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn rollouts_complete_through_a_tls_client_cert_auth_etcd() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 3,
        etcd_secure: true,
        ..FleetOpts::default()
    })?;
    assert!(
        fleet.etcd.endpoint.starts_with("https://"),
        "{}",
        fleet.etcd.endpoint
    );
    // etcd really refuses plain clients: the coordinator's sessions exist only because it used
    // TLS, its client certificate and its user.
    let plain = fleet.block_on(async {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(1));
        let plain_url = fleet.etcd.endpoint.replace("https://", "http://");
        let mut c = etcd_client::Client::connect([plain_url], Some(opts)).await?;
        c.get(ETCD_PREFIX, None).await
    });
    assert!(plain.is_err(), "etcd answered plain http: {plain:?}");

    fleet.install("2.0.0", "max_unavailable = 1")?;
    let sessions = fleet.etcd_get_prefix(&format!("{ETCD_PREFIX}sessions/"))?;
    assert_eq!(sessions.len(), 3, "{sessions:?}");

    // Idle for several token lifetimes: the next requests carry an expired token.
    let idle = Duration::from_secs(4 * SECURE_ETCD_TOKEN_TTL_SECS);
    std::thread::sleep(idle);
    assert!(
        fleet.coordinator_restarts().is_empty(),
        "the coordinator exited while idle: {:?}",
        fleet.coordinator_restarts()
    );
    fleet.wait_leader(Duration::from_secs(5))?;
    fleet.wait_connected(3)?;
    fleet.install("3.0.0", "max_unavailable = 2")?;
    assert!(
        fleet.coordinator_restarts().is_empty(),
        "the coordinator exited: {:?}",
        fleet.coordinator_restarts()
    );

    // etcd forgets every token when it restarts: the coordinator's re-opened watches and its
    // requests must authenticate again, or new slots would never reach the agents.
    fleet.restart_etcd(Duration::from_millis(300))?;
    fleet.wait_coordinator()?;
    fleet.wait_connected(3)?;
    fleet.install("4.0.0", "max_unavailable = 1")?;
    println!(
        "supervisor restarts after the etcd restart: {:?}",
        fleet.coordinator_restarts()
    );
    let log = fs::read_to_string(fleet.coordinator().log())?;
    let notes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("auth token"))
        .collect();
    println!("coordinator warnings and token renewals: {notes:#?}");
    Ok(())
}

/// The fleet coordinator's config with its `[etcd.tls]`/`[etcd.auth]` tables replaced by
/// `tables`, on its own port, state dir and replica id.
fn config_with(fleet: &Fleet, dir: &Path, tables: &str) -> anyhow::Result<String> {
    let security = fleet.etcd.security.as_ref().expect("secure etcd");
    let base = fs::read_to_string(fleet.coordinator().dir.join("coordinator.toml"))?;
    let ours = security.coordinator_toml();
    assert!(
        base.contains(&ours),
        "the harness appends {ours} to\n{base}"
    );
    let mut text = String::new();
    for line in base.replace(&ours, tables).lines() {
        let line = if line.starts_with("listen = ") {
            format!("listen = \"127.0.0.1:{}\"", free_port())
        } else if line.starts_with("state_dir = ") {
            format!("state_dir = \"{}\"", dir.display())
        } else if line.starts_with("replica_id = ") {
            "replica_id = \"refused\"".to_string()
        } else {
            line.to_string()
        };
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// Starts a coordinator with `tables` as its etcd security settings, waits for it to exit, and
/// returns its log.
fn refused(fleet: &Fleet, name: &str, tables: &str) -> anyhow::Result<String> {
    let dir = fleet.dir.join(format!("refused-{name}"));
    fs::create_dir_all(&dir)?;
    let cfg = dir.join("coordinator.toml");
    fs::write(&cfg, config_with(fleet, &dir, tables)?)?;
    let mut proc = Proc::spawn(
        &format!("refused-{name}"),
        &[
            bin("rollgate-coordinator").display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ],
        &dir.join("coordinator.log"),
    )?;
    let status = wait_for(
        &format!("coordinator {name} to exit"),
        EXIT_TIMEOUT,
        || match proc.exited_on_its_own() {
            Some(s) => Ok(Some(s)),
            None => anyhow::bail!("still running; log:\n{}", proc.tail(5)),
        },
    )?;
    let log = fs::read_to_string(&proc.log)?;
    assert!(!status.success(), "{name}: exited with success: {log}");
    println!("--- {name}: {status}\n{}", log.trim_end());
    Ok(log)
}

fn tls_table(ca: &Path, cert_key: Option<(&Path, &Path)>) -> String {
    let mut t = format!("[etcd.tls]\nca = \"{}\"\n", ca.display());
    if let Some((cert, key)) = cert_key {
        t.push_str(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    t
}

fn auth_table(user: &str, password_file: &Path) -> String {
    format!(
        "[etcd.auth]\nusername = \"{user}\"\npassword_file = \"{}\"\n",
        password_file.display()
    )
}

fn secret_file(
    dir: &Path,
    name: &str,
    text: &str,
    mode: u32,
) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join(name);
    fs::write(&p, text)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    Ok(p)
}

fn assert_says(log: &str, what: &[&str]) {
    for w in what {
        assert!(log.contains(w), "the error should say {w:?}; log:\n{log}");
    }
}

#[test]
fn a_coordinator_etcd_refuses_exits_and_says_what_to_fix() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 0,
        etcd_secure: true,
        ..FleetOpts::default()
    })?;
    let s = fleet.etcd.security.clone().expect("secure etcd");
    let dir = fleet.dir.join("negatives");
    fs::create_dir_all(&dir)?;
    let client = Some((s.client_cert.as_path(), s.client_key.as_path()));
    let good_auth = auth_table(ETCD_USER, &s.password_file);

    // No client certificate: etcd (--client-cert-auth) ends the TLS handshake.
    let log = refused(
        &fleet,
        "no-client-cert",
        &format!("{}{good_auth}", tls_table(&s.ca, None)),
    )?;
    assert_says(
        &log,
        &["refused the TLS handshake", "set [etcd.tls] cert and key"],
    );

    // The right user with a wrong password.
    let wrong = secret_file(&dir, "wrong.password", "not-the-password\n", 0o600)?;
    let log = refused(
        &fleet,
        "wrong-password",
        &format!(
            "{}{}",
            tls_table(&s.ca, client),
            auth_table(ETCD_USER, &wrong)
        ),
    )?;
    assert_says(
        &log,
        &[
            &format!("refused user '{ETCD_USER}': authentication failed"),
            "[etcd.auth]",
            "wrong.password",
        ],
    );

    // A password file every user may read is refused before anything is sent.
    let open = secret_file(&dir, "open.password", &s.user_password()?, 0o644)?;
    let log = refused(
        &fleet,
        "open-password-file",
        &format!(
            "{}{}",
            tls_table(&s.ca, client),
            auth_table(ETCD_USER, &open)
        ),
    )?;
    assert_says(&log, &["open.password", "chmod 600"]);

    // No user at all: etcd has auth enabled.
    let log = refused(&fleet, "no-user", &tls_table(&s.ca, client))?;
    assert_says(&log, &["set [etcd.auth] username and password_file"]);

    // A CA that did not sign etcd's certificate.
    let other_ca = other_ca(&dir)?;
    let log = refused(
        &fleet,
        "wrong-ca",
        &format!("{}{good_auth}", tls_table(&other_ca, client)),
    )?;
    assert_says(
        &log,
        &["cannot verify the TLS certificate", "[etcd.tls] ca"],
    );

    // A user etcd knows but whose role does not cover the prefix.
    let outsider_pw = "outsider-pw";
    fleet.block_on(async {
        let mut c = fleet.etcd.client().await?;
        c.user_add("outsider", outsider_pw, None).await?;
        anyhow::Ok(())
    })?;
    let pw = secret_file(&dir, "outsider.password", outsider_pw, 0o600)?;
    let log = refused(
        &fleet,
        "no-permission",
        &format!(
            "{}{}",
            tls_table(&s.ca, client),
            auth_table("outsider", &pw)
        ),
    )?;
    assert_says(
        &log,
        &[
            "denied user 'outsider' access to the key prefix /rollgate/",
            "readwrite",
        ],
    );
    Ok(())
}

/// A CA certificate unrelated to the secure etcd's.
fn other_ca(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "some other CA");
    let path = dir.join("other-ca.pem");
    fs::write(&path, p.self_signed(&key)?.pem())?;
    Ok(path)
}
