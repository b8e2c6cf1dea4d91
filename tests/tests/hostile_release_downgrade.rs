//! Issue 10 item 4: an operator without the signing key cannot downgrade the fleet. On real
//! processes (etcd, a coordinator, two agents that require signatures), with 0.9.0, 1.0.0 and
//! 2.0.0 signed and rolled out in turn:
//!
//! - `rollgate rollout rollback` of an old rollout (the one that installed 1.0.0, whose
//!   previous release is 0.9.0) is refused by the coordinator, logged naming the operator;
//! - an old signed pre-release (`1.5.0-rc1`, never run here) rolled out as new is refused by
//!   every agent (semver puts it below 2.0.0);
//! - a build signed for the staging environment does not install on production agents;
//! - the rollback of the latest rollout still goes back to the release run just before.
//!
//! Hosts never leave 2.0.0 until that last, allowed rollback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{pki, Ending, Fleet, FleetOpts, Mode, Release};

const STRATEGY: &str = "max_unavailable = 2\nmin_healthy_time = \"200ms\"";

/// The default `web` service behind a `[signing]` table for the production environment.
fn agent_services(public: &Path) -> String {
    format!(
        r#"[signing]
required = true
env = "production"
keys = ["{}"]
[[services]]
name = "web"
backend = "process"
binary = "web"
args = ["--port", "{{port}}"]
stop_timeout = "2s"
restart_delay = "200ms"
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{{port}}/health"
interval = "100ms"
timeout = "500ms"
"#,
        public.display()
    )
}

struct Publisher {
    dir: tempfile::TempDir,
}

impl Publisher {
    fn new() -> anyhow::Result<Publisher> {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new(rollgate_tests::bin("rollgate"))
            .args(["release", "keygen", "--out"])
            .arg(dir.path().join("publisher"))
            .output()?;
        anyhow::ensure!(out.status.success(), "keygen: {out:?}");
        Ok(Publisher { dir })
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("publisher.pub")
    }

    /// `rollgate release sign --fleet test [--env ENV]`; returns the .sig.
    fn sign(&self, fleet: &Fleet, release: &Release, env: Option<&str>) -> anyhow::Result<PathBuf> {
        let out = self.dir.path().join(format!(
            "{}-{}.sig",
            release.version,
            env.unwrap_or("fleet")
        ));
        let key = self.dir.path().join("publisher.key");
        let mut args = vec![
            "release".to_string(),
            "sign".into(),
            "--key".into(),
            key.display().to_string(),
            "--service".into(),
            "web".into(),
            "--version".into(),
            release.version.clone(),
            "--fleet".into(),
            pki::FLEET.into(),
            "--sig".into(),
            out.display().to_string(),
        ];
        if let Some(env) = env {
            args.extend(["--env".to_string(), env.to_string()]);
        }
        args.push(release.path.display().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let printed = fleet.cli_ok(&refs)?;
        assert!(printed.contains("signed web"), "{printed}");
        Ok(out)
    }
}

fn spec(fleet: &Fleet, release: &Release, sig: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let text = format!(
        "service = \"web\"\n[release]\nversion = \"{}\"\nfile = \"{}\"\nsignature_file = \"{}\"\n[strategy]\n{STRATEGY}\n",
        release.version,
        release.path.display(),
        sig.display()
    );
    let path = fleet.dir.join(format!("rollout-{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Rolls `release` out with `sig`; returns the id and how it ended.
fn roll(
    fleet: &Fleet,
    release: &Release,
    sig: &Path,
    name: &str,
) -> anyhow::Result<(String, Ending)> {
    let id = fleet.start_rollout(&spec(fleet, release, sig, name)?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    let reasons: Vec<String> = s.hosts.iter().map(|h| h.reason.clone()).collect();
    println!("{name} {id}: {} {reasons:?}", s.phase().word());
    fleet.wait_service_free("web")?;
    Ok((
        id,
        Ending {
            phase: s.phase(),
            reasons: reasons.join(" | "),
        },
    ))
}

#[test]
fn an_operator_cannot_downgrade_without_the_signing_key() -> anyhow::Result<()> {
    let publisher = Publisher::new()?;
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        agent_services: Some(agent_services(&publisher.public())),
        ..FleetOpts::default()
    })?;
    let mut ids = Vec::new();
    for v in ["0.9.0", "1.0.0", "2.0.0"] {
        let rel = fleet.release(v, Mode::Healthy)?;
        let sig = publisher.sign(&fleet, &rel, None)?;
        let (id, r) = roll(&fleet, &rel, &sig, v)?;
        assert_eq!(r.phase, Phase::Succeeded, "{v}: {r}");
        fleet.wait_all_serving(v)?;
        ids.push(id);
    }

    // 1. Rolling back an old rollout (previous release 0.9.0) is refused by the coordinator.
    let out = fleet.cli(&["rollout", "rollback", &ids[1]])?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("rollback of {}: {err}", ids[1]);
    assert!(
        !out.status.success(),
        "an old rollout was rolled back: {err}"
    );
    assert!(err.contains("not the latest rollout of web"), "{err}");
    assert!(err.contains("rollback_window = 1"), "{err}");
    let log = std::fs::read_to_string(fleet.coordinator().log())?;
    let logged = log
        .lines()
        .find(|l| l.contains("rollback refused"))
        .unwrap_or_default();
    println!("coordinator log: {logged}");
    assert!(
        logged.contains("spiffe://test/operator/"),
        "the refusal names the operator: {logged:?}"
    );
    fleet.wait_all_serving("2.0.0")?;

    // 2. An old signed pre-release, never run here, rolled out as if new: refused.
    let rc = fleet.release("1.5.0-rc1", Mode::Healthy)?;
    let sig = publisher.sign(&fleet, &rc, None)?;
    let (_, r) = roll(&fleet, &rc, &sig, "rc")?;
    assert_eq!(r.phase, Phase::Failed, "rc: {r}");
    assert!(r.reasons.contains("not newer than 2.0.0"), "rc: {r}");
    fleet.wait_all_serving("2.0.0")?;

    // 3. A build signed for staging does not install in production; one for production does.
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let staging = publisher.sign(&fleet, &v3, Some("staging"))?;
    let (_, r) = roll(&fleet, &v3, &staging, "staging")?;
    assert_eq!(r.phase, Phase::Failed, "staging: {r}");
    assert!(
        r.reasons.contains("for fleet test, environment production"),
        "staging: {r}"
    );
    fleet.wait_all_serving("2.0.0")?;
    let production = publisher.sign(&fleet, &v3, Some("production"))?;
    let (v3_id, r) = roll(&fleet, &v3, &production, "production")?;
    assert_eq!(r.phase, Phase::Succeeded, "production: {r}");
    fleet.wait_all_serving("3.0.0")?;

    // 4. The latest rollout rolls back to the release run just before it.
    let out = fleet.cli_ok(&["rollout", "rollback", &v3_id, "--watch"])?;
    println!("{out}");
    fleet.wait_all_serving("2.0.0")?;
    Ok(())
}
