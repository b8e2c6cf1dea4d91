//! The packages on a real host with the system manager (issue 15, item 2). A Debian container
//! boots with systemd as PID 1 (`systemd-nspawn`, [`rollgate_tests::nspawn`]); the test
//! installs the `rollgate-agent` package built by `deploy/package.sh` with `dpkg -i`,
//! configures it as an operator would (edits the conffile, puts the host's certificate in
//! place, installs the service's own unit) and starts it with `systemctl`. The coordinator
//! runs outside the container. The service is a **system** unit (`manager = "system"`): the
//! agent drives PID 1 over the system bus. Rolled: an install, an update, a bad release rolled
//! back, and an update during which systemd restarts the agent after it was killed. Checked
//! with `systemctl` and `journalctl -u rollgate-agent` inside the container.
//!
//! The packages come from `target/debian` (`PROFILE=dev deploy/package.sh`, which tests/run.sh
//! runs: the same packaging as a release build, with debug binaries, to keep CI short).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rollgate_tests::nspawn::{debian_rootfs, Machine};
use rollgate_tests::pb::{HostState, Phase, Step};
use rollgate_tests::{
    free_port, own_bin_dir, service_version, wait_for, Fleet, FleetOpts, Mode, Release,
};
use serde_json::Value;

/// The host's id inside the container (its certificate names it).
const HOST: &str = "sys-1";

/// The service's unit, installed by the operator: it runs whatever release `current` names.
fn web_unit(port: u16) -> String {
    format!(
        "[Unit]\nDescription=web (rolled by rollgate)\n\n[Service]\n\
         ExecStart=/var/lib/rollgate-agent/services/web/current/web --port {port}\n\
         Restart=no\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// The service table the operator appends to the packaged /etc/rollgate/agent.toml.
fn web_service(port: u16) -> String {
    format!(
        r#"
[[services]]
name = "web"
backend = "systemd"
unit = "web.service"
manager = "system"
binary = "web"
format = "binary"
[[services.probes]]
kind = "systemd"
interval = "100ms"
timeout = "2s"
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = "100ms"
timeout = "500ms"
"#
    )
}

/// `target/debian/<package>_*.deb`, or the command that builds it.
fn deb(package: &str) -> anyhow::Result<PathBuf> {
    let dir = own_bin_dir().parent().context("target dir")?.join("debian");
    let found = fs::read_dir(&dir).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
    });
    found.with_context(|| {
        format!(
            "no {package}_*.deb in {}: build the packages first with `PROFILE=dev \
             deploy/package.sh` (tests/run.sh does)",
            dir.display()
        )
    })
}

/// `systemctl show UNIT -p PROP --value` inside the container.
fn unit_prop(m: &Machine, unit: &str, prop: &str) -> anyhow::Result<String> {
    Ok(m.sh(&format!("systemctl show {unit} -p {prop} --value"))?
        .trim()
        .to_string())
}

/// A release whose start takes `delay_s` seconds before it serves.
fn slow_release(fleet: &Fleet, version: &str, delay_s: u32) -> anyhow::Result<Release> {
    let normal = fleet.release(version, Mode::Healthy)?;
    let text = fs::read_to_string(&normal.path)?;
    fs::write(
        &normal.path,
        text.replacen("#!/bin/sh\n", &format!("#!/bin/sh\nsleep {delay_s}\n"), 1),
    )?;
    Ok(normal)
}

/// Rolls `release` to the container's host and waits for the end.
fn roll(fleet: &Fleet, release: &Release) -> anyhow::Result<(String, Phase)> {
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"20s\"";
    let id = fleet.start_rollout(&fleet.spec(release, strategy)?)?;
    let end = fleet.wait_settled(&id, Duration::from_secs(90))?;
    Ok((id, end.phase()))
}

/// Installs the agent package and configures it as an operator would.
fn install_agent(fleet: &Fleet, m: &Machine, port: u16) -> anyhow::Result<()> {
    let out = m.sh("dpkg -i /debs/rollgate-agent_*.deb")?;
    println!("dpkg -i rollgate-agent:\n{out}");
    // Not configured yet: enabled, not started, and the install says what is missing.
    ensure!(
        out.contains("rollgate-agent is installed and enabled, but not started"),
        "the install did not say why the agent is not started:\n{out}"
    );
    ensure!(m.sh("systemctl is-enabled rollgate-agent")?.trim() == "enabled");
    let active = m.exec(&["systemctl", "is-active", "rollgate-agent"])?;
    ensure!(
        String::from_utf8_lossy(&active.stdout).trim() == "inactive",
        "an unconfigured agent was started: {active:?}"
    );
    // The certificate, the conffile's host id and coordinator, the service, its unit.
    let tls = fleet.pki.host(HOST)?;
    for (from, to) in [
        (&tls.ca, "ca.pem"),
        (&tls.cert, "host.pem"),
        (&tls.key, "host.key"),
    ] {
        fs::copy(from, m.path(&format!("/etc/rollgate/pki/{to}")))?;
    }
    let conf = m.path("/etc/rollgate/agent.toml");
    let text = fs::read_to_string(&conf)?
        .replace("host_id = \"change-me\"", &format!("host_id = \"{HOST}\""))
        .replace(
            "coordinator = \"https://127.0.0.1:7443\"",
            &format!("coordinator = \"{}\"", fleet.coordinators[0].url()),
        );
    ensure!(
        text.contains(HOST),
        "the packaged agent.toml changed shape:\n{text}"
    );
    fs::write(&conf, text + &web_service(port))?;
    fs::write(m.path("/etc/systemd/system/web.service"), web_unit(port))?;
    m.sh("systemctl daemon-reload")?;
    let check = m.sh("rollgate-agent --check --config /etc/rollgate/agent.toml")?;
    println!("rollgate-agent --check:\n{check}");
    m.sh("systemctl start rollgate-agent")?;
    fleet.wait_connected(1)
}

/// The web unit is active, run by PID 1, and answers with `version`.
fn check_serving(m: &Machine, port: u16, version: &str) -> anyhow::Result<String> {
    let served = wait_for(
        &format!("web.service to serve {version}"),
        Duration::from_secs(20),
        || Ok((service_version(port).as_deref() == Some(version)).then_some(())),
    );
    served.with_context(|| {
        let status = m.sh("systemctl status web.service --no-pager -l || true");
        format!("{status:?}")
    })?;
    ensure!(m.sh("systemctl is-active web.service")?.trim() == "active");
    let pid = unit_prop(m, "web.service", "MainPID")?;
    ensure!(pid != "0", "web.service has no main process");
    let current = m.sh("readlink /var/lib/rollgate-agent/services/web/current")?;
    ensure!(
        current.contains(version),
        "current names {current}, not {version}"
    );
    Ok(pid)
}

/// The journal entries of `rollgate-agent.service` inside the container, as JSON objects.
fn agent_journal(m: &Machine, filter: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec![
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        "-u",
        "rollgate-agent",
    ];
    args.extend_from_slice(filter);
    let out = m.exec(&args)?;
    ensure!(out.status.success(), "journalctl: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn field<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_default()
}

#[test]
fn packaged_agent_rolls_a_system_unit_under_systemd_as_pid_1() -> anyhow::Result<()> {
    let debs = deb("rollgate-agent")?
        .parent()
        .context("debs dir")?
        .to_path_buf();
    let rootfs = debian_rootfs()?;
    let fleet = Fleet::start(FleetOpts {
        agents: 0,
        ..FleetOpts::default()
    })?;
    // The releases are scripts that run the test service from this build: the same path
    // inside, read-only.
    let bins = own_bin_dir();
    let m = Machine::boot(
        &format!("rg-pkg-{}", std::process::id()),
        &rootfs,
        &[(&debs, Path::new("/debs")), (&bins, &bins)],
        false,
        &fleet.dir.join("nspawn.log"),
    )?;
    let port = free_port();
    install_agent(&fleet, &m, port)?;
    ensure!(unit_prop(&m, "rollgate-agent", "Type")? == "notify");

    // Install and update: PID 1 runs each release, restarted by the agent over the bus.
    let (_, phase) = roll(&fleet, &fleet.release("1.0.0", Mode::Healthy)?)?;
    ensure!(phase == Phase::Succeeded, "install: {phase:?}");
    let pid1 = check_serving(&m, port, "1.0.0")?;
    let (_, phase) = roll(&fleet, &fleet.release("2.0.0", Mode::Healthy)?)?;
    ensure!(phase == Phase::Succeeded, "update: {phase:?}");
    let pid2 = check_serving(&m, port, "2.0.0")?;
    ensure!(pid1 != pid2, "web.service was not restarted for 2.0.0");
    println!("web.service: 1.0.0 as pid {pid1}, 2.0.0 as pid {pid2}");

    // A release whose unit fails at start: rolled back to 2.0.0, which PID 1 runs again.
    let (bad_id, phase) = roll(&fleet, &fleet.release("3.0.0", Mode::Crash)?)?;
    ensure!(phase != Phase::Succeeded, "a crashing release succeeded");
    check_serving(&m, port, "2.0.0")?;
    let rolled_back = agent_journal(&m, &[&format!("ROLLOUT_ID={bad_id}")])?;
    ensure!(
        rolled_back
            .iter()
            .any(|e| field(e, "MESSAGE").contains("order finished: rolled back")),
        "no 'rolled back' entry for {bad_id} in the journal: {rolled_back:#?}"
    );

    // The agent is killed mid-update; systemd restarts it (Restart=always), the new agent
    // undoes the interrupted update and the host is granted again.
    let restarts_before: u32 = unit_prop(&m, "rollgate-agent", "NRestarts")?.parse()?;
    let slow = slow_release(&fleet, "4.0.0", 3)?;
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"";
    let id = fleet.start_rollout(&fleet.spec(&slow, strategy)?)?;
    fleet.wait("the host verifying 4.0.0", Duration::from_secs(30), || {
        let s = fleet.status(&id)?;
        let h = s.hosts.iter().find(|h| h.host_id == HOST);
        Ok(
            h.filter(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
                .map(|_| ()),
        )
    })?;
    m.sh("systemctl kill --signal=SIGKILL rollgate-agent")?;
    println!("killed the agent while it verified 4.0.0");
    let end = fleet.wait_settled(&id, Duration::from_secs(90))?;
    ensure!(
        end.phase() == Phase::Succeeded,
        "after the restart: {end:?}"
    );
    check_serving(&m, port, "4.0.0")?;
    let restarts: u32 = unit_prop(&m, "rollgate-agent", "NRestarts")?.parse()?;
    ensure!(
        restarts == restarts_before + 1,
        "systemd restarted the agent {} times (expected once)",
        restarts - restarts_before
    );

    // The journal: the agent's lines carry their fields; this rollout's order was interrupted
    // by the kill, then finished on the new agent.
    let entries = agent_journal(&m, &[&format!("ROLLOUT_ID={id}")])?;
    let said = |what: &str| {
        entries.iter().find(|e| {
            field(e, "MESSAGE").contains(what)
                && field(e, "HOST_ID") == HOST
                && field(e, "SERVICE") == "web"
                && field(e, "SYSLOG_IDENTIFIER") == "rollgate-agent"
        })
    };
    let (Some(accepted), Some(interrupted), Some(done)) = (
        said("accepted order to install web 4.0.0"),
        said("order finished: interrupted"),
        said("order finished: succeeded"),
    ) else {
        bail!(
            "the journal lacks the accepted, interrupted or succeeded order of {id}: {entries:#?}"
        );
    };
    // systemd-journal-logger maps info to notice (5) and warn to warning (4).
    ensure!(field(interrupted, "PRIORITY") == "4", "{interrupted:#}");
    ensure!(field(done, "PRIORITY") == "5", "{done:#}");
    // The killed agent accepted the order; the one systemd started undid it and finished it.
    let (old, new) = (field(accepted, "_PID"), field(interrupted, "_PID"));
    ensure!(
        old != new && field(done, "_PID") == new,
        "agent pids: accepted by {old}, interrupted by {new}, finished by {}",
        field(done, "_PID")
    );
    println!(
        "journal: {} entries for {id}; accepted by agent pid {old}, which was killed; \
         reported interrupted and finished by pid {new}",
        entries.len()
    );
    Ok(())
}

/// The README's Install section, run on one fresh host as written there: the CLI makes the
/// fleet CA and the certificates, the coordinator and the agent are installed from their
/// packages and started with systemctl, and the CLI rolls a release (process backend) to the
/// host. `{debs}`, `{svc}` and `{port}` are filled in by the test.
const README_INSTALL: &str = r#"
set -eu
cd /root
dpkg -i /debs/rollgate_*.deb
rollgate certs init --fleet prod --dir pki
rollgate certs issue coordinator coord-a --dir pki --ip 127.0.0.1
rollgate certs issue host web-1 --dir pki
rollgate certs issue operator alice --dir pki
# The coordinator's machine
dpkg -i /debs/rollgate-coordinator_*.deb
install -m 0644 pki/ca.pem pki/coordinator-coord-a.pem /etc/rollgate/pki/
install -m 0640 -g rollgate pki/coordinator-coord-a.key /etc/rollgate/pki/
rollgate-coordinator --check --config /etc/rollgate/coordinator.toml && systemctl start rollgate-coordinator
# Every host
dpkg -i /debs/rollgate-agent_*.deb
install -m 0644 pki/ca.pem /etc/rollgate/pki/ca.pem
install -m 0644 pki/host-web-1.pem /etc/rollgate/pki/host.pem
install -m 0600 pki/host-web-1.key /etc/rollgate/pki/host.key
sed -i 's/^host_id = "change-me"/host_id = "web-1"/' /etc/rollgate/agent.toml
cat >> /etc/rollgate/agent.toml <<TOML
[[services]]
name = "web"
backend = "process"
binary = "web"
args = ["--port", "{port}"]
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = "100ms"
TOML
rollgate-agent --check --config /etc/rollgate/agent.toml && systemctl start rollgate-agent
# The operator
export ROLLGATE_CA=pki/ca.pem ROLLGATE_CERT=pki/operator-alice.pem ROLLGATE_KEY=pki/operator-alice.key
i=0
until rollgate -o json hosts | grep -q '"connected": *true'; do
  i=$((i+1)); [ $i -lt 150 ] || { echo "web-1 never connected"; rollgate hosts; exit 1; }
  sleep 0.2
done
printf '#!/bin/sh\nexec {svc} --version 1.0.0 --mode healthy --bind 127.0.0.1 "$@"\n' > web-1.0.0
cat > rollout.toml <<TOML
service = "web"
[release]
version = "1.0.0"
file = "/root/web-1.0.0"
[strategy]
max_unavailable = 1
min_healthy_time = "500ms"
TOML
rollgate rollout start rollout.toml --watch
rollgate hosts
"#;

#[test]
fn the_readme_install_works_on_a_fresh_host_from_the_packages() -> anyhow::Result<()> {
    let debs = deb("rollgate-coordinator")?
        .parent()
        .context("debs dir")?
        .to_path_buf();
    deb("rollgate-agent")?;
    deb("rollgate")?;
    let rootfs = debian_rootfs()?;
    let dir = tempfile::Builder::new()
        .prefix("rollgate-test-")
        .tempdir()?;
    // The test service's directory, where the packaged agent's sandbox lets its services see
    // it: `PrivateTmp=yes` and `ProtectHome=yes` hide a checkout under /tmp, /home or /root.
    let svc_dir = Path::new("/opt/rollgate-test");
    // A network of its own: the coordinator's default ports cannot meet another test's.
    let m = Machine::boot(
        &format!("rg-readme-{}", std::process::id()),
        &rootfs,
        &[(&debs, Path::new("/debs")), (&own_bin_dir(), svc_dir)],
        true,
        &dir.path().join("nspawn.log"),
    )?;
    let svc = svc_dir.join("rollgate-testsvc");
    let script = README_INSTALL
        .replace("{port}", "18081")
        .replace("{svc}", &svc.display().to_string());
    let out = match m.sh(&script) {
        Ok(out) => out,
        Err(e) => {
            let journal =
                m.sh("journalctl --no-pager -n 60 -u rollgate-coordinator -u rollgate-agent");
            bail!(
                "{e:#}\nthe daemons' journal ends:\n{}",
                journal.unwrap_or_else(|e| format!("{e:#}"))
            );
        }
    };
    println!("{out}");
    for unit in ["rollgate-coordinator", "rollgate-agent"] {
        ensure!(
            m.sh(&format!("systemctl is-active {unit}"))?.trim() == "active",
            "{unit} is not active"
        );
    }
    ensure!(unit_prop(&m, "rollgate-coordinator", "User")? == "rollgate");
    let current = m.sh("readlink /var/lib/rollgate-agent/services/web/current")?;
    ensure!(current.contains("1.0.0"), "current names {current}");
    // `rollgate hosts` at the end: the host serves 1.0.0, healthy.
    let hosts = out.rsplit("HOST").next().unwrap_or_default();
    ensure!(
        hosts.contains("web-1") && hosts.contains("1.0.0") && hosts.contains("healthy"),
        "rollgate hosts does not show web-1 healthy on 1.0.0:\n{out}"
    );
    Ok(())
}
