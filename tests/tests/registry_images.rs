//! Releases that name a container image in a registry, end to end on real parts: Debian's
//! `docker-registry` over https (a test CA) with htpasswd users (`rollgate_tests::registry`),
//! images pushed into it by the test, a real dockerd and a real Podman pulling through their
//! Docker APIs, rollouts through a real coordinator and the CLI.
//!
//! What each test checks, by asking the engine and the service (not the coordinator):
//! - a tag is pinned to its digest once, when the rollout is created: a tag moved mid-rollout
//!   (pushed again with other bytes) does not reach the hosts after the first; every host runs
//!   the same digest;
//! - pulls use the agent's `registry_auth` file, report progress, and with `stage_first`
//!   happen ahead of the slot;
//! - a bad release is rolled back to the old container;
//! - each failure (refused credentials, no credentials, an unknown image, a wrong digest, an
//!   unreachable registry) is refused with its reason and the old container keeps serving.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollgate_tests::managers::{DockerEngine, Kind};
use rollgate_tests::pb::{HostState, Phase, RolloutStatus};
use rollgate_tests::registry::Registry;
use rollgate_tests::{brief, wait_for, Fleet, FleetOpts};

const USER: &str = "deployer";
const PASS: &str = "s3cret-pass";
/// How long one rollout may take.
const ROLLOUT_WAIT: Duration = Duration::from_secs(60);

/// Each agent's container service; `SOCK`, `NETNS` and `AUTH` are filled in by the test,
/// `{port}` (the container's published port, in the engine's namespace) by the harness.
const SERVICES: &str = r#"[[services]]
name = "webct"
backend = "container"
socket = "SOCK"
container_name = "webct{port}"
binary = "image.tar"
format = "binary"
ports = ["{port}:8080"]
restart_policy = "no"
stop_timeout = "2s"
registry_auth = "AUTH"
[[services.probes]]
kind = "exec"
command = ["nsenter", "--net=/run/netns/NETNS", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/version"]
interval = "100ms"
timeout = "2s"
"#;

/// An image's `run.sh`: serves `answer` on `/version` at 8080, or (bad) exits at once.
fn run_sh(answer: &str, bad: bool) -> String {
    if bad {
        return "echo 'crashing on purpose' >&2\nexit 3\n".into();
    }
    format!(
        "/bin/busybox mkdir -p /www\necho {answer} > /www/version\n\
         exec /bin/busybox httpd -f -p 8080 -h /www\n"
    )
}

/// One engine, its registry and a fleet of `agents` hosts whose `webct` runs on the engine.
struct Setup {
    // Field order is drop order: the agents stop before the registry and the engine.
    fleet: Fleet,
    reg: Registry,
    engine: DockerEngine,
    /// The agents' `registry_auth` file (rewritten by some tests).
    auth: PathBuf,
    /// The tests' own files.
    dir: PathBuf,
    _base: tempfile::TempDir,
}

impl Setup {
    fn start(kind: Kind, agents: usize) -> anyhow::Result<Setup> {
        Setup::start_signed(kind, agents, None)
    }

    /// With `signing_key`: the agents require releases signed by that public key.
    fn start_signed(
        kind: Kind,
        agents: usize,
        signing_key: Option<&Path>,
    ) -> anyhow::Result<Setup> {
        let t0 = Instant::now();
        let base = tempfile::Builder::new()
            .prefix("rollgate-images-")
            .tempdir()?;
        let dir = base.path().to_path_buf();
        let engine = DockerEngine::start_kind(kind, &dir.join("engine"));
        let reg = Registry::start(&dir.join("registry"), &engine, &[(USER, PASS)]);
        let auth = dir.join("registry-auth.json");
        reg.auth_file(&auth, USER, PASS);
        let signing = signing_key.map_or(String::new(), |k| {
            format!("[signing]\nrequired = true\nkeys = [\"{}\"]\n", k.display())
        });
        let services = (signing + SERVICES)
            .replace("SOCK", &engine.socket().display().to_string())
            .replace("NETNS", engine.netns())
            .replace("AUTH", &auth.display().to_string());
        let fleet = Fleet::start(FleetOpts {
            agents,
            sites: 1,
            agent_services: Some(services),
            ..FleetOpts::default()
        })?;
        println!(
            "[{kind:?}] engine, registry {} and {agents} agent(s) up in {:.1?}",
            reg.addr(),
            t0.elapsed()
        );
        Ok(Setup {
            fleet,
            reg,
            engine,
            auth,
            dir,
            _base: base,
        })
    }

    /// Pushes `team/webct:TAG` answering `answer` (or crashing); returns its digest.
    fn push(&self, tag: &str, answer: &str, bad: bool) -> String {
        let repo_tag = format!("team/webct:{tag}");
        self.reg
            .push_image(&self.engine, &repo_tag, &run_sh(answer, bad), USER, PASS)
    }

    fn image(&self, tag_or_digest: &str) -> String {
        let sep = if tag_or_digest.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        format!("{}/team/webct{sep}{tag_or_digest}", self.reg.addr())
    }

    /// A spec rolling `image` out as `version`; `strategy` lines are added to `[strategy]`.
    fn spec(&self, version: &str, image: &str, strategy: &str) -> anyhow::Result<PathBuf> {
        self.spec_with(version, image, "", strategy)
    }

    /// [`Setup::spec`] with `release` lines (e.g. a signature file) added to `[release]`.
    fn spec_with(
        &self,
        version: &str,
        image: &str,
        release: &str,
        strategy: &str,
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("rollout-{version}.toml"));
        std::fs::write(
            &path,
            format!(
                "service = \"webct\"\n[release]\nversion = \"{version}\"\nimage = \"{image}\"\n\
                 {release}\n\
                 [strategy]\nmax_unavailable = 1\nmin_healthy_time = \"300ms\"\n\
                 healthy_deadline = \"10s\"\n{strategy}\n"
            ),
        )?;
        Ok(path)
    }

    /// `rollgate rollout start` with the registry's CA and the operator's credentials:
    /// `Ok(rollout id)`, or `Err(what the CLI said)`.
    fn start_rollout(&self, spec: &Path) -> anyhow::Result<Result<String, String>> {
        let out = self.fleet.cli(&[
            "--output",
            "json",
            "rollout",
            "start",
            &spec.display().to_string(),
            "--registry-ca",
            &self.reg.ca_pem().display().to_string(),
            "--registry-auth",
            &self.auth.display().to_string(),
        ])?;
        if !out.status.success() {
            return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("rollout start printed no JSON: {out:?}"))?;
        Ok(Ok(v["id"].as_str().context("no id")?.to_string()))
    }

    /// Starts `spec` and waits until it ends.
    fn roll(&self, spec: &Path) -> anyhow::Result<RolloutStatus> {
        let t = Instant::now();
        let id = match self.start_rollout(spec)? {
            Ok(id) => id,
            Err(e) => bail!("rollout start refused: {e}"),
        };
        let s = self.fleet.wait_settled(&id, ROLLOUT_WAIT)?;
        println!(
            "  {}: {} in {:.1?}: {}",
            spec.display(),
            s.phase().word(),
            t.elapsed(),
            brief(&s)
        );
        self.fleet.wait_service_free("webct")?;
        Ok(s)
    }

    /// What host `i`'s container answers on `/version`, asked from the engine's namespace.
    fn answer(&self, i: usize) -> anyhow::Result<String> {
        let port = self.fleet.agents[i].service_port;
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.engine.netns()))
            .args(["/bin/busybox", "wget", "-q", "-O", "-"])
            .arg(format!("http://127.0.0.1:{port}/version"))
            .output()?;
        if !out.status.success() {
            bail!("wget: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The image reference host `i`'s running container was created from, as the engine says.
    fn running_image(&self, i: usize) -> anyhow::Result<String> {
        let port = self.fleet.agents[i].service_port;
        let name = format!("webct{port}");
        let running: Vec<String> = self
            .engine
            .containers("webct")
            .into_iter()
            .filter(|(n, s)| n.starts_with(&format!("{name}-")) && s == "running")
            .map(|(n, _)| n)
            .collect();
        let [one] = running.as_slice() else {
            bail!("{name}: not exactly one running container: {running:?}");
        };
        let image = self
            .engine
            .docker(&["inspect", "--format", "{{.Config.Image}}", one], None);
        Ok(image.trim().to_string())
    }

    /// Waits until host `i` serves `answer` from exactly one running container of `image`.
    fn wait_serving(&self, i: usize, answer: &str, image: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("host {i} to serve {answer} from {image}"),
            Duration::from_secs(10),
            || {
                let (got, running) = (self.answer(i), self.running_image(i));
                match (&got, &running) {
                    (Ok(a), Ok(r)) if a == answer && r == image => Ok(Some(())),
                    _ => bail!("/version: {got:?}; runs {running:?}"),
                }
            },
        )
    }

    fn agent_log(&self, i: usize) -> String {
        let path = self
            .fleet
            .dir
            .join(&self.fleet.agents[i].id)
            .join("agent.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

/// The pinned image a rollout stored, as `rollout status` shows it.
fn stored_image(setup: &Setup, id: &str) -> anyhow::Result<String> {
    let out = setup.fleet.cli_ok(&["rollout", "status", id])?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("image "))
        .with_context(|| format!("no image line in the status:\n{out}"))?;
    Ok(line.trim().to_string())
}

fn assert_refused(s: &RolloutStatus, want: &[&str]) {
    assert_ne!(s.phase(), Phase::Succeeded, "{s:?}");
    let h = &s.hosts[0];
    assert_eq!(h.state(), HostState::Failed, "{s:?}");
    for w in want {
        assert!(h.reason.contains(w), "reason lacks {w:?}: {}", h.reason);
    }
    assert!(h.reason.contains("nothing was stopped"), "{}", h.reason);
    println!("    refused: {}", h.reason);
}

#[test]
fn dockerd_pins_tags_pulls_with_credentials_stages_and_rolls_back() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let s = Setup::start(Kind::Docker, 2)?;
    let d1 = s.push("1.0.0", "1.0.0", false);
    let d2 = s.push("2.0.0", "2.0.0", false);
    let d3 = s.push("3.0.0", "3.0.0", true);
    let d4 = s.push("4.0.0", "4.0.0", false);
    println!("pushed 4 images at {:.1?}", t0.elapsed());

    // Install by tag: the tag is pinned to the digest the registry has.
    let r = s.roll(&s.spec("1.0.0", &s.image("1.0.0"), "")?)?;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    assert_eq!(stored_image(&s, &r.id)?, s.image(&d1));
    for i in 0..2 {
        s.wait_serving(i, "1.0.0", &s.image(&d1))?;
    }
    // The pull's progress lines (sent to the coordinator as the order's progress and logged).
    let log = s.agent_log(0);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fetching: pull"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("fetching: pulling image"))
            && lines
                .iter()
                .any(|l| l.contains("fetching: pulled: 1 of 1 layers")),
        "no pull progress in the agent's log: {lines:#?}"
    );
    println!("  pull progress:\n    {}", lines.join("\n    "));

    // The tag moves while the rollout waits at its canary gate: the second host still gets
    // the digest pinned when the rollout was created.
    let spec = s.spec(
        "2.0.0",
        &s.image("2.0.0"),
        "canary = 1\ncanary_gate = \"manual\"",
    )?;
    let id = s.start_rollout(&spec)?.map_err(anyhow::Error::msg)?;
    wait_for("the canary to finish", ROLLOUT_WAIT, || {
        let st = s.fleet.status(&id)?;
        Ok(st
            .hosts
            .iter()
            .any(|h| h.state() == HostState::Done)
            .then_some(()))
    })?;
    let moved = s.push("2.0.0", "2.0.0-moved", false);
    assert_ne!(moved, d2, "the re-push must change the tag's digest");
    s.fleet.cli_ok(&["rollout", "promote", &id])?;
    let r = s.fleet.wait_settled(&id, ROLLOUT_WAIT)?;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    s.fleet.wait_service_free("webct")?;
    for i in 0..2 {
        s.wait_serving(i, "2.0.0", &s.image(&d2))?;
    }
    println!("  tag moved to {moved} mid-rollout; both hosts run {d2}");

    // A release that crashes: rolled back to the old container, which serves again.
    let r = s.roll(&s.spec("3.0.0", &s.image(&d3), "")?)?;
    assert_eq!(r.hosts[0].state(), HostState::RolledBack, "{r:?}");
    s.wait_serving(0, "2.0.0", &s.image(&d2))?;
    s.wait_serving(1, "2.0.0", &s.image(&d2))?;

    // stage_first: every host pulls before the first slot is granted.
    let r = s.roll(&s.spec("4.0.0", &s.image("4.0.0"), "stage_first = true")?)?;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    for i in 0..2 {
        s.wait_serving(i, "4.0.0", &s.image(&d4))?;
        let log = s.agent_log(i);
        let staged = log.find("staging 4.0.0: image").context("no staged pull")?;
        let accepted = log[staged..].find("accepted");
        assert!(
            accepted.is_some(),
            "host {i}: the pull was not ahead of the order"
        );
        assert!(
            log[staged..].contains("is already in the engine"),
            "host {i}: the update pulled again"
        );
    }
    println!("total {:.1?}", t0.elapsed());
    Ok(())
}

#[test]
fn podman_installs_and_updates_from_the_registry_with_credentials() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let s = Setup::start(Kind::Podman, 1)?;
    let d1 = s.push("1.0.0", "1.0.0", false);
    let d2 = s.push("2.0.0", "2.0.0", false);
    let r = s.roll(&s.spec("1.0.0", &s.image("1.0.0"), "")?)?;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    s.wait_serving(0, "1.0.0", &s.image(&d1))?;
    let r = s.roll(&s.spec("2.0.0", &s.image("2.0.0"), "stage_first = true")?)?;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    s.wait_serving(0, "2.0.0", &s.image(&d2))?;
    assert!(
        s.agent_log(0).contains("staging 2.0.0: image"),
        "no staged pull"
    );
    println!("total {:.1?}", t0.elapsed());
    Ok(())
}

/// Each way a pull fails is refused before anything is stopped: the host keeps serving
/// 1.0.0 from its old container, and the reason names the cause and the fix. Refusals the
/// CLI can see itself (a tag it cannot resolve) stop the rollout before it is created.
#[test]
fn failed_pulls_refuse_the_update_and_the_old_container_keeps_serving() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut s = Setup::start(Kind::Docker, 1)?;
    let d1 = s.push("1.0.0", "1.0.0", false);
    let d2 = s.push("2.0.0", "2.0.0", false);
    let other = s.reg.push_image(
        &s.engine,
        "team/other:1",
        &run_sh("other", false),
        USER,
        PASS,
    );
    let r = s.roll(&s.spec("1.0.0", &s.image("1.0.0"), "")?)?;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    let old = s.image(&d1);
    s.wait_serving(0, "1.0.0", &old)?;
    let auth = s.auth.display().to_string();

    // Refused credentials (the file is read at every pull): the CLI cannot pin a tag with
    // them, and the agent cannot pull a pinned digest.
    s.reg.auth_file(&s.auth, USER, "wrong-password");
    let e = s
        .start_rollout(&s.spec("2.0.0", &s.image("2.0.0"), "")?)?
        .expect_err("a tag cannot be pinned with refused credentials");
    assert!(
        e.contains(&format!("refused the credentials for {}", s.reg.addr())),
        "{e}"
    );
    println!("    CLI refused: {}", e.trim());
    let r = s.roll(&s.spec("2.0.0", &s.image(&d2), "")?)?;
    assert_refused(
        &r,
        &[
            "unauthorized",
            &format!("refused the credentials in {auth}"),
        ],
    );
    s.wait_serving(0, "1.0.0", &old)?;

    // No credentials for this registry in the file.
    std::fs::write(
        &s.auth,
        r#"{"auths": {"elsewhere.example:5000": {"auth": "dTpw"}}}"#,
    )?;
    let r = s.roll(&s.spec("2.0.1", &s.image(&d2), "")?)?;
    assert_refused(
        &r,
        &[
            "no basic auth credentials",
            &format!("{auth} has none for it"),
        ],
    );
    s.wait_serving(0, "1.0.0", &old)?;
    s.reg.auth_file(&s.auth, USER, PASS);

    // A missing image: a digest no manifest has.
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = s.roll(&s.spec("2.0.2", &s.image(&missing), "")?)?;
    assert_refused(&r, &["manifest unknown", "has no image"]);
    s.wait_serving(0, "1.0.0", &old)?;

    // A wrong digest: one the registry has, but for another repository.
    let r = s.roll(&s.spec("2.0.3", &s.image(&other), "")?)?;
    assert_refused(
        &r,
        &[
            "manifest unknown",
            &format!("has no image {}", s.image(&other)),
        ],
    );
    s.wait_serving(0, "1.0.0", &old)?;

    // The CLI cannot pin a tag the registry does not have: no rollout is created.
    let e = s
        .start_rollout(&s.spec("2.0.4", &s.image("9.9.9"), "")?)?
        .expect_err("an unknown tag must be refused");
    assert!(
        e.contains("cannot resolve image") && e.contains("no such repository or tag"),
        "{e}"
    );
    println!("    CLI refused: {}", e.trim());

    // The registry is unreachable: the CLI cannot pin a tag, the agent cannot pull a digest.
    s.reg.stop();
    let e = s
        .start_rollout(&s.spec("2.0.5", &s.image("2.0.0"), "")?)?
        .expect_err("a tag cannot be pinned with the registry down");
    assert!(e.contains(&format!("cannot reach {}", s.reg.addr())), "{e}");
    println!("    CLI refused: {}", e.trim());
    let r = s.roll(&s.spec("2.0.6", &s.image(&d2), "")?)?;
    assert_refused(
        &r,
        &[
            "connection refused",
            &format!("cannot reach the registry {}", s.reg.addr()),
        ],
    );
    s.wait_serving(0, "1.0.0", &old)?;
    assert_eq!(s.answer(0)?, "1.0.0");
    println!("total {:.1?}", t0.elapsed());
    Ok(())
}

/// A signed image release signs the digest: the publisher pins the tag (`rollgate release
/// pin`) and signs the reference artifact; the agents, which require signatures, pull it. Once
/// the tag moves, the same spec no longer matches its signature and the CLI refuses it; an
/// unsigned image release is refused by the agents and the old container keeps serving.
#[test]
fn signed_image_releases_sign_the_digest() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let keys = tempfile::tempdir()?;
    let prefix = keys.path().join("publisher");
    let rollgate = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(rollgate_tests::bin("rollgate"))
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "rollgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    rollgate(&["release", "keygen", "--out", &prefix.display().to_string()])?;
    let s = Setup::start_signed(Kind::Docker, 1, Some(&prefix.with_extension("pub")))?;
    let d1 = s.push("1.0.0", "1.0.0", false);
    let artifact = s.dir.join("webct-1.0.0.image");
    let pinned = rollgate(&[
        "release",
        "pin",
        &s.image("1.0.0"),
        "--out",
        &artifact.display().to_string(),
        "--registry-ca",
        &s.reg.ca_pem().display().to_string(),
        "--registry-auth",
        &s.auth.display().to_string(),
    ])?;
    assert!(pinned.contains(&s.image(&d1)), "{pinned}");
    rollgate(&[
        "release",
        "sign",
        "--key",
        &prefix.with_extension("key").display().to_string(),
        "--service",
        "webct",
        "--version",
        "1.0.0",
        "--fleet",
        rollgate_tests::pki::FLEET,
        &artifact.display().to_string(),
    ])?;
    let sig = format!("signature_file = \"{}.sig\"", artifact.display());
    let signed = s.spec_with("1.0.0", &s.image("1.0.0"), &sig, "")?;
    let r = s.roll(&signed)?;
    assert_eq!(r.phase(), Phase::Succeeded, "{r:?}");
    s.wait_serving(0, "1.0.0", &s.image(&d1))?;

    // The tag moves: the signature signs the old digest, and the CLI says so.
    s.push("1.0.0", "1.0.0-moved", false);
    let e = s
        .start_rollout(&signed)?
        .expect_err("a signature of another digest must be refused");
    assert!(e.contains("does not sign this release"), "{e}");
    println!("    CLI refused: {}", e.trim());

    // Unsigned: the agents refuse it before anything is touched.
    let d2 = s.push("2.0.0", "2.0.0", false);
    let r = s.roll(&s.spec("2.0.0", &s.image(&d2), "")?)?;
    assert_ne!(r.phase(), Phase::Succeeded, "{r:?}");
    let h = &r.hosts[0];
    assert!(h.reason.contains("not signed"), "{}", h.reason);
    println!("    refused: {}", h.reason);
    s.wait_serving(0, "1.0.0", &s.image(&d1))?;
    println!("total {:.1?}", t0.elapsed());
    Ok(())
}
