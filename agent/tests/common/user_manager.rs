//! A real systemd user manager (`systemd --user`) for one test, started the way this
//! project's machines allow: detached, in a private mount namespace (so it can see a
//! `/run/systemd/system` of its own, without which `systemd --user` refuses to run), in a
//! cgroup of its own. Needs the Debian packages `systemd` and `dbus-user-session` (the
//! latter gives the user manager its session bus, which the agent talks to). If the manager
//! cannot start, the test fails and says why; it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the manager and its bus may take to appear.
const START_WAIT: Duration = Duration::from_secs(15);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);

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
export XDG_RUNTIME_DIR="$D/xdg"
setsid unshare --mount --propagation private -- sh -c '
  mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system
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
        let deadline = Instant::now() + START_WAIT;
        while !(m.xdg().join("systemd/private").exists() && m.xdg().join("bus").exists()) {
            if Instant::now() > deadline || !alive(pid) {
                panic!(
                    "systemd --user did not come up with a session bus within {START_WAIT:?} \
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
        let deadline = Instant::now() + STOP_WAIT;
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
