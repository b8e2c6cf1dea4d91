//! Real service managers for the agent's backend tests and the end-to-end tests: a
//! `systemd --user` manager
//! ([`UserManager`]) and a container engine in its own network namespace ([`DockerEngine`]).
//! If either cannot start, the test fails with its log; it never skips.
//!
//! [`UserManager`] runs detached, in a private mount namespace (so it can see a
//! `/run/systemd/system` of its own, without which `systemd --user` refuses to run), in a
//! cgroup of its own; it needs the Debian packages `systemd` and `dbus-user-session`.
//! [`DockerEngine`] is Docker's `dockerd` (Debian's `docker.io`) or rootful Podman's
//! Docker-compatible API service, driven with the `docker` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the manager and its bus may take to appear.
const UM_START_WAIT: Duration = Duration::from_secs(15);
/// How long it may take to stop after SIGTERM before it is killed.
const UM_STOP_WAIT: Duration = Duration::from_secs(10);

const START_SCRIPT: &str = r#"
set -eu
D="$1"; mkdir -p "$D/xdg/systemd/user"; chmod 700 "$D/xdg"
# Its own cgroup, so the manager does not spread into the machine's root cgroup.
for h in unified systemd; do
  c=/sys/fs/cgroup/$h/rg-agent-test-$$
  if [ -d /sys/fs/cgroup/$h ] && mkdir -p "$c" && echo $$ > "$c/cgroup.procs"; then
    echo "$c" >> "$D/cgroups"
  fi
done
export XDG_RUNTIME_DIR="$D/xdg" D
# With RG_JOURNALD=1 a real systemd-journald runs in the manager's mount namespace, on tmpfs
# (/run/log/journal), started before the manager so units log to it (JOURNAL_STREAM).
setsid unshare --mount --propagation private -- sh -c '
  mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system
  if [ "${RG_JOURNALD:-}" = 1 ]; then
    mkdir -p /run/log && mount -t tmpfs tmpfs /run/log
    if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
    /lib/systemd/systemd-journald >"$D/journald.log" 2>&1 &
    i=0
    while [ ! -S /run/systemd/journal/stdout ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
  fi
  exec /lib/systemd/systemd --user --log-target=console --log-level=info' \
  </dev/null >"$D/manager.log" 2>&1 &
echo $! > "$D/pid"
"#;

/// A running `systemd --user`; stopped (and its cgroups removed) on drop.
pub struct UserManager {
    pub dir: PathBuf,
    pid: i32,
    /// The cgroups made for it (read at start: `dir` may be gone by the time of the drop).
    cgroups: Vec<PathBuf>,
}

impl UserManager {
    /// Starts a manager whose runtime dir is `dir/xdg`; panics with the reason if it cannot.
    pub fn start(dir: &Path) -> UserManager {
        Self::launch(dir, false)
    }

    /// Like [`UserManager::start`], with a real `systemd-journald` beside it (same mount
    /// namespace): its units log to journald as they would on a host. Read it with
    /// [`UserManager::journalctl`].
    pub fn start_with_journald(dir: &Path) -> UserManager {
        assert!(
            Path::new("/lib/systemd/systemd-journald").exists(),
            "/lib/systemd/systemd-journald is missing: install the Debian package `systemd`"
        );
        let m = Self::launch(dir, true);
        assert!(
            m.in_namespace("test", &["-S", "/run/systemd/journal/stdout"])
                .status
                .success(),
            "systemd-journald did not come up; its log:\n{}",
            std::fs::read_to_string(dir.join("journald.log")).unwrap_or_default()
        );
        m
    }

    /// Runs `journalctl ARGS` in the manager's mount namespace (where its journald writes).
    pub fn journalctl(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--no-pager"];
        all.extend_from_slice(args);
        self.in_namespace("journalctl", &all)
    }

    /// Runs `program ARGS` in the manager's mount namespace.
    fn in_namespace(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "--", program])
            .args(args)
            .output()
            .expect("run nsenter")
    }

    /// The environment `systemctl --user` and `systemd-run --user` need to reach it.
    pub fn env(&self) -> [(String, String); 2] {
        [
            ("XDG_RUNTIME_DIR".into(), self.xdg().display().to_string()),
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.bus()),
        ]
    }

    fn launch(dir: &Path, journald: bool) -> UserManager {
        for tool in [
            "/lib/systemd/systemd",
            "/usr/bin/unshare",
            "/usr/bin/systemctl",
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: this test needs a real systemd user manager; install the \
                 Debian packages `systemd` and `dbus-user-session`"
            );
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(START_SCRIPT)
            .arg("start-user-manager")
            .arg(dir)
            .env("RG_JOURNALD", if journald { "1" } else { "0" })
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "cannot start systemd --user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: i32 = std::fs::read_to_string(dir.join("pid"))
            .expect("manager pid")
            .trim()
            .parse()
            .expect("pid");
        let cgroups = std::fs::read_to_string(dir.join("cgroups"))
            .unwrap_or_default()
            .lines()
            .map(PathBuf::from)
            .collect();
        let m = UserManager {
            dir: dir.to_path_buf(),
            pid,
            cgroups,
        };
        let deadline = Instant::now() + UM_START_WAIT;
        while !(m.xdg().join("systemd/private").exists() && m.xdg().join("bus").exists()) {
            if Instant::now() > deadline || !alive(pid) {
                panic!(
                    "systemd --user did not come up with a session bus within {UM_START_WAIT:?} \
                     (is `dbus-user-session` installed?); its log:\n{}",
                    m.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The bus socket is there; wait until the manager answers on it.
        loop {
            let ok = m
                .systemctl(&["is-system-running"])
                .status
                .code()
                .is_some_and(|c| c <= 1);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "systemd --user does not answer over D-Bus; its log:\n{}",
                    m.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn xdg(&self) -> PathBuf {
        self.dir.join("xdg")
    }

    /// The D-Bus address of the manager's session bus.
    pub fn bus(&self) -> String {
        format!("unix:path={}", self.xdg().join("bus").display())
    }

    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Runs `systemctl --user ARGS` against this manager.
    pub fn systemctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", self.xdg())
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus())
            .output()
            .expect("run systemctl")
    }

    /// Installs unit `name` (the operator's job) and reloads the manager.
    pub fn install_unit(&self, name: &str, text: &str) {
        let path = self.xdg().join("systemd/user").join(name);
        std::fs::write(&path, text).expect("unit file");
        let out = self.systemctl(&["daemon-reload"]);
        assert!(
            out.status.success(),
            "daemon-reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One property of a unit, as `systemctl show -p NAME --value` prints it.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self.systemctl(&["show", unit, "-p", prop, "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + UM_STOP_WAIT;
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for cg in &self.cgroups {
            // Whatever is left in the subtree goes, then the subtree, deepest first.
            let mut dirs = Vec::new();
            collect_dirs(cg, &mut dirs);
            for d in &dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for p in procs.lines() {
                    let _ = Command::new("kill").args(["-9", p]).status();
                }
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                for _ in 0..50 {
                    if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

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

/// The command of the test images: busybox's shell runs `/run.sh`.
pub(crate) const IMAGE_CMD: &str = r#"CMD ["/bin/busybox", "sh", "/run.sh"]"#;

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
        let tar = self.rootfs_tar(tag, run_sh);
        self.docker(&["import", "--change", IMAGE_CMD, "-", tag], Some(&tar));
        self.docker(&["save", "-o", &out.display().to_string(), tag], None);
        self.docker(&["rmi", tag], None);
    }

    /// A rootfs tarball (under the engine's dir) holding `/bin/busybox` and `/run.sh`: an
    /// image's content for `import --change IMAGE_CMD`.
    pub(crate) fn rootfs_tar(&self, tag: &str, run_sh: &str) -> PathBuf {
        let name = tag.replace([':', '/', '@'], "-");
        let root = self.dir.join(format!("rootfs-{name}"));
        std::fs::create_dir_all(root.join("bin")).expect("rootfs");
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("copy /bin/busybox (apt-get install busybox-static)");
        std::fs::write(root.join("run.sh"), run_sh).expect("run.sh");
        let tar = self.dir.join(format!("{name}.rootfs.tar"));
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
        tar
    }

    /// Which engine this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The directory everything of the engine lives under (podman's storage, its
    /// `containers.conf`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
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
pub(crate) fn podman_args(dir: &Path) -> Vec<String> {
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
