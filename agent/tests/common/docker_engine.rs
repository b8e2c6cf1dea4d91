//! A real container engine that a test starts in its own network namespace and data dir:
//! Docker's `dockerd` (Debian's `docker.io`, after `/work/shared/recipes/dockerd-netns.sh`),
//! or rootful Podman's Docker-compatible API service (`podman system service`, Debian's
//! `podman` and `runc`, with `/work/shared/recipes/containers.conf`). Both are driven with the
//! `docker` CLI. If the engine cannot start, the test fails with its log: the container
//! backend is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `dockerd` may take to answer (it is ready in under a second here).
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long it may take to stop (it stops its containers first).
const STOP_WAIT: Duration = Duration::from_secs(20);

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `dockerd`.
    Docker,
    /// `podman system service`.
    Podman,
}

/// The containers.conf that makes rootful podman work on the project's machines.
const PODMAN_CONF: &str = "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n";

/// A running engine; stopped (with its containers), and its namespace deleted, on drop.
pub struct DockerEngine {
    kind: Kind,
    dir: PathBuf,
    netns: String,
    child: Child,
}

impl DockerEngine {
    /// Starts `dockerd` in a fresh network namespace with everything under `dir`.
    pub fn start(dir: &Path) -> DockerEngine {
        DockerEngine::start_kind(Kind::Docker, dir)
    }

    /// Starts the engine in a fresh network namespace with everything under `dir`.
    pub fn start_kind(kind: Kind, dir: &Path) -> DockerEngine {
        std::fs::create_dir_all(dir).expect("engine dir");
        let netns = format!("rg-ctr-{}-{}", std::process::id(), rand_suffix(dir));
        run("ip", &["netns", "add", &netns]);
        // A new namespace's loopback is down; the published ports are reached through it.
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("engine log");
        let child = match kind {
            Kind::Docker => Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg("dockerd")
                .arg("--data-root")
                .arg(dir.join("data"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("-H")
                .arg(format!("unix://{}", dir.join("docker.sock").display()))
                .arg("--pidfile")
                .arg(dir.join("docker.pid"))
                .args(["--bip", "172.31.250.1/24"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run dockerd (apt-get install docker.io): {e}")),
            Kind::Podman => {
                std::fs::write(dir.join("containers.conf"), PODMAN_CONF).expect("containers.conf");
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{netns}"))
                    .args(podman_args(dir))
                    .args(["system", "service", "--time=0"])
                    .arg(format!("unix://{}", dir.join("docker.sock").display()))
                    .env("CONTAINERS_CONF", dir.join("containers.conf"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log"))
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("cannot run podman (apt-get install podman runc): {e}")
                    })
            }
        };
        let mut engine = DockerEngine {
            kind,
            dir: dir.to_owned(),
            netns,
            child,
        };
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if engine.docker_ok(&["version"]) {
                return engine;
            }
            if let Ok(Some(status)) = engine.child.try_wait() {
                panic!("dockerd exited ({status}) at start:\n{}", engine.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd did not answer within {READY_WAIT:?}:\n{}",
                    engine.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The network namespace the engine (and so the published ports) lives in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The tail of `dockerd`'s log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .args(args);
        c
    }

    fn docker_ok(&self, args: &[&str]) -> bool {
        self.docker_cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs the `docker` CLI against this engine; panics (with the engine's log) if it fails.
    pub fn docker(&self, args: &[&str], stdin: Option<&Path>) -> String {
        let mut c = self.docker_cmd(args);
        if let Some(p) = stdin {
            c.stdin(std::fs::File::open(p).expect("stdin file"));
        }
        let out = c.output().expect("run docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `name state` of every container labelled for `service`, sorted by name.
    pub fn containers(&self, service: &str) -> Vec<(String, String)> {
        let out = self.docker(
            &[
                "ps",
                "-a",
                "--filter",
                &format!("label=rollgate.service={service}"),
                "--format",
                "{{.Names}} {{.State}}",
            ],
            None,
        );
        let mut v: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| {
                let (n, s) = l.split_once(' ')?;
                Some((n.to_owned(), s.to_owned()))
            })
            .collect();
        v.sort();
        v
    }

    /// Builds an image from `/bin/busybox` (static) and `run.sh` with no registry
    /// (`docker import`), saves it as an archive at `out`, and removes it from the engine so
    /// only the archive holds it.
    pub fn build_image_archive(&self, tag: &str, run_sh: &str, out: &Path) {
        let root = self.dir.join(format!("rootfs-{}", tag.replace(':', "-")));
        std::fs::create_dir_all(root.join("bin")).expect("rootfs");
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("copy /bin/busybox (apt-get install busybox-static)");
        std::fs::write(root.join("run.sh"), run_sh).expect("run.sh");
        let tar = self
            .dir
            .join(format!("{}.rootfs.tar", tag.replace(':', "-")));
        run(
            "tar",
            &[
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ],
        );
        self.docker(
            &[
                "import",
                "--change",
                r#"CMD ["/bin/busybox", "sh", "/run.sh"]"#,
                "-",
                tag,
            ],
            Some(&tar),
        );
        self.docker(&["save", "-o", &out.display().to_string(), tag], None);
        self.docker(&["rmi", tag], None);
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        // Podman's containers live on (under conmon) without the API service.
        if self.kind == Kind::Podman {
            let _ = Command::new("podman")
                .args(podman_args(&self.dir).iter().skip(1))
                .args(["rm", "-f", "-a", "-t", "0"])
                .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // SIGTERM: dockerd stops its containers and unmounts before it exits.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// `podman` and its storage options, everything under `dir`.
fn podman_args(dir: &Path) -> Vec<String> {
    vec![
        "podman".into(),
        "--root".into(),
        dir.join("root").display().to_string(),
        "--runroot".into(),
        dir.join("run").display().to_string(),
    ]
}

fn rand_suffix(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(dir.display().to_string().as_bytes()))[..6].to_owned()
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
