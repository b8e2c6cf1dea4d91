//! The coordinator's own local etcd (no `etcd.endpoints`) takes only the client certificate its
//! private CA (`state_dir/etcd-pki`) issued the coordinator, on its client port and on its
//! peer port alike (etcd serves its whole gRPC API on both).
//!
//! One real coordinator process, started on an etcd data directory an earlier version left
//! (plain http, with data in it). On the client port the coordinator's certificate reads
//! rollgate's state and the old data; TLS without a client certificate and TLS with a fleet host
//! certificate are refused, and so is plain http on both ports. Each negative is answered by a
//! plain local etcd (as before) or one without `--client-cert-auth`, so each would fail the
//! test. A restart reuses the same CA and certificates. The peer port over TLS is checked at
//! the HTTP level by the coordinator crate's own `local_etcd_tls` test.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use nix::sys::signal::Signal;
use rollgate_tests::pki::{Pki, TlsFiles};
use rollgate_tests::{bin, free_port, free_port_pair, wait_for, Proc, ETCD_PREFIX};

/// How long the coordinator (and its etcd) may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect and request timeout of the probing etcd clients.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the coordinator gets to stop on SIGTERM (it stops its etcd first).
const STOP_GRACE: Duration = Duration::from_secs(15);
/// A key the earlier (plain http) local etcd held; it must survive the switch to TLS.
const OLD_KEY: &str = "/upgrade-check";

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Reads `key` (with its prefix) through `url` with `options`: the keys found.
fn read(
    rt: &tokio::runtime::Runtime,
    url: &str,
    options: ConnectOptions,
    key: &str,
) -> Result<Vec<String>, String> {
    rt.block_on(async {
        let options = options
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(PROBE_TIMEOUT);
        let mut c = Client::connect([url], Some(options))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let r = c
            .get(key, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("get: {e}"))?;
        Ok(r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    })
}

fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> anyhow::Result<ConnectOptions> {
    let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(fs::read(ca)?));
    if let Some((cert, key)) = identity {
        t = t.identity(Identity::from_pem(fs::read(cert)?, fs::read(key)?));
    }
    Ok(ConnectOptions::new().with_tls(t))
}

/// TLS with the coordinator's own local-etcd client certificate; `path` names a file in
/// `state_dir/etcd-pki`.
fn own_options(path: &dyn Fn(&str) -> PathBuf) -> anyhow::Result<ConnectOptions> {
    tls(
        &path("ca.pem"),
        Some((&path("client.pem"), &path("client.key"))),
    )
}

/// Runs etcd as the earlier version ran it (plain http on both ports) on `state/etcd/data`,
/// writes [`OLD_KEY`], and stops it.
fn leave_plain_etcd_data(state: &Path, port: u16) -> anyhow::Result<()> {
    let dir = state.join("etcd");
    fs::create_dir_all(&dir)?;
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", port + 1);
    let mut etcd = Proc::spawn(
        "old-etcd",
        &[
            etcd_bin(),
            "--name".into(),
            "rollgate".into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("rollgate={peer}"),
        ],
        &dir.join("old-etcd.log"),
    )?;
    let rt = runtime()?;
    wait_for("the old plain etcd", START_TIMEOUT, || {
        rt.block_on(async {
            let options = ConnectOptions::new()
                .with_connect_timeout(PROBE_TIMEOUT)
                .with_timeout(PROBE_TIMEOUT);
            let mut c = Client::connect([client.as_str()], Some(options)).await?;
            c.put(OLD_KEY, "kept", None).await?;
            Ok(Some(()))
        })
    })?;
    etcd.stop(STOP_GRACE);
    Ok(())
}

fn cli_hosts(url: &str, operator: &TlsFiles) -> anyhow::Result<Option<()>> {
    let out = Command::new(bin("rollgate"))
        .arg("--coordinator")
        .arg(url)
        .args(operator.cli_args())
        .arg("hosts")
        .output()?;
    if out.status.success() {
        Ok(Some(()))
    } else {
        anyhow::bail!(
            "rollgate hosts: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

fn pki_files(state: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = state.join("etcd-pki");
    let mut files = Vec::new();
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        let p = dir.join(name);
        let bytes = fs::read(&p)?;
        files.push((p, bytes));
    }
    Ok(files)
}

#[test]
fn local_etcd_takes_only_the_coordinators_own_certificate() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::init(&tmp.path().join("pki"))?;
    let coordinator_tls = pki.coordinator("local", IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let operator = pki.operator()?;
    let host = pki.host("web-1")?;
    let state = tmp.path().join("state");
    let port = free_port_pair();
    leave_plain_etcd_data(&state, port)?;

    let listen = format!("127.0.0.1:{}", free_port());
    let config = tmp.path().join("coordinator.toml");
    fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\nstate_dir = \"{}\"\nreplica_id = \"local\"\n\
             [etcd]\nbinary = \"{}\"\nlocal_port = {port}\n{}",
            state.display(),
            etcd_bin(),
            coordinator_tls.toml()
        ),
    )?;
    let log = tmp.path().join("coordinator.log");
    let mut coordinator = Proc::spawn(
        "coordinator",
        &[
            bin("rollgate-coordinator").display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
        &log,
    )?;
    let url = format!("https://{listen}");
    let up = |coordinator: &mut Proc| {
        wait_for("`rollgate hosts` to succeed", START_TIMEOUT, || {
            if coordinator.exited() {
                anyhow::bail!("the coordinator exited:\n{}", coordinator.tail(30));
            }
            cli_hosts(&url, &operator)
        })
    };
    up(&mut coordinator)?;

    let files = pki_files(&state)?;
    let path = |name: &str| state.join("etcd-pki").join(name);
    let ca = path("ca.pem");
    let rt = runtime()?;
    let endpoint = format!("https://127.0.0.1:{port}");
    // The coordinator's certificate: the key written by the plain etcd is still there, and so
    // is this replica's registration.
    let own = own_options(&path)?;
    let keys = read(&rt, &endpoint, own.clone(), OLD_KEY)
        .map_err(|e| anyhow::anyhow!("with the coordinator's certificate: {e}"))?;
    assert_eq!(keys, [OLD_KEY]);
    let replicas = read(&rt, &endpoint, own, &format!("{ETCD_PREFIX}replicas/"))
        .map_err(|e| anyhow::anyhow!("with the coordinator's certificate: {e}"))?;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    // The old data dir recorded an http:// peer URL; the coordinator corrects it.
    let peers = rt.block_on(async {
        let mut c = Client::connect([endpoint.as_str()], Some(own_options(&path)?)).await?;
        let members = c.member_list().await?;
        anyhow::Ok(
            members
                .members()
                .iter()
                .flat_map(|m| m.peer_urls().to_vec())
                .collect::<Vec<_>>(),
        )
    })?;
    assert_eq!(peers, [format!("https://127.0.0.1:{}", port + 1)]);

    let no_cert = read(&rt, &endpoint, tls(&ca, None)?, OLD_KEY);
    assert!(
        no_cert.is_err(),
        "etcd answered TLS without a client certificate: {no_cert:?}"
    );
    let fleet_cert = read(
        &rt,
        &endpoint,
        tls(&ca, Some((&host.cert, &host.key)))?,
        OLD_KEY,
    );
    assert!(
        fleet_cert.is_err(),
        "etcd answered a fleet host certificate: {fleet_cert:?}"
    );
    // Plain http on either port (the peer port serves the same gRPC API: a plain local etcd
    // answers this on both).
    for p in [port, port + 1] {
        let plain = read(
            &rt,
            &format!("http://127.0.0.1:{p}"),
            ConnectOptions::new(),
            OLD_KEY,
        );
        assert!(plain.is_err(), "port {p} answered plain http: {plain:?}");
        println!("plain http on {p}: {plain:?}");
    }
    println!("no client certificate: {no_cert:?}\nfleet host certificate: {fleet_cert:?}");

    // A restart (SIGTERM: the coordinator stops its etcd) reuses the same CA and certificates.
    coordinator.signal(Signal::SIGTERM);
    wait_for("the coordinator to stop", STOP_GRACE, || {
        Ok(coordinator.exited().then_some(()))
    })?;
    coordinator.restart()?;
    up(&mut coordinator)?;
    assert_eq!(
        pki_files(&state)?,
        files,
        "a restart must reuse the local etcd's CA"
    );
    let text = fs::read_to_string(&log)?;
    assert_eq!(
        text.matches("making a new private CA").count(),
        1,
        "the CA is made once:\n{text}"
    );
    coordinator.stop(STOP_GRACE);
    Ok(())
}
