//! Signed releases end to end (S8): agents that require signatures take a release signed with
//! `rollgate release sign`; an unsigned or wrongly signed one fails the rollout with every host
//! still on the old release; `rollgate rollout rollback` goes back to the previous signed
//! release (an explicit rollback, the only way an agent accepts an older version).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{Ending, Fleet, FleetOpts, Mode, Release};

const STRATEGY: &str = "max_unavailable = 3\nmin_healthy_time = \"200ms\"";

/// The default `web` service (as the harness writes it), behind a `[signing]` table that
/// requires releases signed by the key in `public`.
fn agent_services(public: &Path) -> String {
    format!(
        r#"[signing]
required = true
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

/// Writes a spec for `release` with `signature_file` (when given) and returns its path.
fn spec(fleet: &Fleet, release: &Release, name: &str, sig: Option<&Path>) -> PathBuf {
    let sig_line = sig.map_or(String::new(), |p| {
        format!("signature_file = \"{}\"\n", p.display())
    });
    let text = format!(
        "service = \"web\"\n[release]\nversion = \"{}\"\nfile = \"{}\"\n{sig_line}[strategy]\n{STRATEGY}\n",
        release.version,
        release.path.display()
    );
    let path = fleet.dir.join(format!("rollout-{name}.toml"));
    std::fs::write(&path, text).expect("spec");
    path
}

/// Signs `release` with the private key `key` (`rollgate release sign`); returns the .sig.
fn sign(fleet: &Fleet, key: &Path, release: &Release, out: &Path) -> anyhow::Result<PathBuf> {
    let printed = fleet.cli_ok(&[
        "release",
        "sign",
        "--key",
        &key.display().to_string(),
        "--service",
        "web",
        "--version",
        &release.version,
        "--fleet",
        rollgate_tests::pki::FLEET,
        "--expires",
        "1d",
        "--sig",
        &out.display().to_string(),
        &release.path.display().to_string(),
    ])?;
    assert!(printed.contains("signed web"), "{printed}");
    Ok(out.to_path_buf())
}

fn rollout(fleet: &Fleet, spec: &Path) -> anyhow::Result<(String, Ending)> {
    let id = fleet.start_rollout(spec)?;
    let status = fleet.wait_settled(&id, Duration::from_secs(60))?;
    let reasons: Vec<String> = status.hosts.iter().map(|h| h.reason.clone()).collect();
    println!("{id}: {} {reasons:?}", status.phase().word());
    Ok((
        id,
        Ending {
            phase: status.phase(),
            reasons: reasons.join(" | "),
        },
    ))
}

#[test]
fn signed_releases_roll_out_and_bad_signatures_change_nothing() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let publisher = keys.path().join("publisher");
    let stranger = keys.path().join("stranger");
    // The keys are made before the fleet: the agents pin the public key at start.
    for prefix in [&publisher, &stranger] {
        let out = std::process::Command::new(rollgate_tests::bin("rollgate"))
            .args(["release", "keygen", "--out"])
            .arg(prefix)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        agent_services: Some(agent_services(&publisher.with_extension("pub"))),
        ..FleetOpts::default()
    })?;
    let private = publisher.with_extension("key");

    // 1.0.0 and 2.0.0, signed, roll out.
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let sig1 = sign(&fleet, &private, &v1, &keys.path().join("v1.sig"))?;
    let (_, r) = rollout(&fleet, &spec(&fleet, &v1, "v1", Some(&sig1)))?;
    assert_eq!(r.phase, Phase::Succeeded, "{r}");
    fleet.wait_all_serving("1.0.0")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let sig2 = sign(&fleet, &private, &v2, &keys.path().join("v2.sig"))?;
    let (v2_id, r) = rollout(&fleet, &spec(&fleet, &v2, "v2", Some(&sig2)))?;
    assert_eq!(r.phase, Phase::Succeeded, "{r}");
    fleet.wait_all_serving("2.0.0")?;

    // Unsigned, and signed by a key the agents do not pin: refused, nothing swapped.
    let v3 = fleet.release("3.0.0", Mode::Healthy)?;
    let wrong = sign(
        &fleet,
        &stranger.with_extension("key"),
        &v3,
        &keys.path().join("v3-wrong.sig"),
    )?;
    for (name, sig, want) in [
        ("unsigned", None, "not signed"),
        ("wrong-key", Some(wrong.as_path()), "does not trust"),
    ] {
        let (_, r) = rollout(&fleet, &spec(&fleet, &v3, name, sig))?;
        assert_eq!(r.phase, Phase::Failed, "{name}: {r}");
        assert!(r.reasons.contains(want), "{name}: {want:?} not in {r}");
        fleet.wait_all_serving("2.0.0")?;
        fleet.wait_service_free("web")?;
    }

    // A signature file for another release is caught by the CLI before anything is sent.
    let out = fleet.cli(&[
        "rollout",
        "start",
        &spec(&fleet, &v3, "mismatch", Some(&sig2))
            .display()
            .to_string(),
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("does not sign this release"), "{err}");

    // The explicit rollback of 2.0.0 goes back to the signed 1.0.0 every host ran before.
    let out = fleet.cli_ok(&["rollout", "rollback", &v2_id, "--watch"])?;
    println!("{out}");
    fleet.wait_all_serving("1.0.0")?;
    let s = fleet.status(&v2_id)?;
    assert_eq!(s.phase(), Phase::RolledBack, "{s:?}");
    let rb = fleet.status(&s.rolled_back_by)?;
    assert_eq!(rb.phase(), Phase::Succeeded, "{rb:?}");
    assert_eq!(rb.version, "1.0.0");
    Ok(())
}
