//! A whole Debian host for the package tests: `systemd-nspawn` boots a Debian root filesystem
//! with systemd as PID 1 (its own journald, its own system bus), as on a real machine. The
//! container shares the test machine's network, so its agent dials the test fleet's
//! coordinator on 127.0.0.1 and the test reaches its services there.
//!
//! The root filesystem is made once with `debootstrap` (about a minute, ~250 MB) under
//! `target/nspawn/`, of the test machine's own release (a binary built here runs in it), and
//! booted with `--volatile=overlay`: every boot starts from the same clean tree and writes
//! nothing back. Needs root and the Debian packages `debootstrap` and `systemd-container`;
//! without them the test fails naming them, it never skips.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What the root filesystem gets beyond `--variant=minbase`: systemd as PID 1 and its bus,
/// what the packages' maintainer scripts use (adduser), TLS roots, and etcd (the
/// coordinator package recommends it: without `[etcd] endpoints` it runs its own).
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,adduser,ca-certificates,etcd-server";
/// How long systemd in the container may take to come up.
const BOOT_WAIT: Duration = Duration::from_secs(60);

/// The Debian (or Ubuntu) root filesystem for containers, made on first use; its path.
pub fn debian_rootfs() -> anyhow::Result<PathBuf> {
    for tool in ["/usr/sbin/debootstrap", "/usr/bin/systemd-nspawn"] {
        if !Path::new(tool).exists() {
            bail!(
                "{tool} is missing: the package tests boot a Debian container; install the \
                 Debian packages debootstrap and systemd-container (tests/run.sh does)"
            );
        }
    }
    let (distro, suite) = host_release()?;
    let base = crate::own_bin_dir()
        .parent()
        .context("target dir")?
        .join("nspawn");
    fs::create_dir_all(&base)?;
    let root = base.join(format!("{distro}-{suite}"));
    // One test process builds it; others wait on the lock and find it done.
    let lock = File::create(base.join("rootfs.lock"))?;
    lock.lock()?;
    // `.complete` records what it was made with; a tree made with another list is made again.
    let made = format!("{suite} {INCLUDE}");
    if fs::read_to_string(root.join(".complete")).ok().as_deref() == Some(made.as_str()) {
        return Ok(root);
    }
    let tmp = base.join(format!("{distro}-{suite}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    let mirror = match distro.as_str() {
        "ubuntu" => "http://archive.ubuntu.com/ubuntu",
        _ => "http://deb.debian.org/debian",
    };
    let started = Instant::now();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), &suite])
        .arg(&tmp)
        .arg(mirror)
        .output()
        .context("run debootstrap")?;
    if !out.status.success() {
        bail!(
            "debootstrap {suite} from {mirror} failed ({}); its output ends:\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 20)
        );
    }
    // Debian's etcd.service would start at every boot on 127.0.0.1:2379, on the test
    // machine's network when the container shares it; the coordinator runs its own etcd.
    let off = Command::new("systemctl")
        .arg(format!("--root={}", tmp.display()))
        .args(["disable", "etcd.service"])
        .output()
        .context("run systemctl --root")?;
    if !off.status.success() {
        bail!("cannot disable etcd.service in the new root filesystem: {off:?}");
    }
    fs::write(tmp.join(".complete"), made.as_bytes())?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root)?;
    println!(
        "made the {distro} {suite} root filesystem in {:.0?} at {}",
        started.elapsed(),
        root.display()
    );
    Ok(root)
}

/// The test machine's distribution and release code name (`debian`, `bookworm`).
fn host_release() -> anyhow::Result<(String, String)> {
    let text = fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    match (field("ID"), field("VERSION_CODENAME")) {
        (Some(id), Some(suite)) if id == "debian" || id == "ubuntu" => Ok((id, suite)),
        other => bail!("the package tests boot a container of this machine's release, which must be Debian or Ubuntu; /etc/os-release says {other:?}"),
    }
}

/// A booted container; powered off (and its cgroups removed) on drop.
pub struct Machine {
    pub name: String,
    /// The container's PID 1, as the test machine sees it (for `nsenter`).
    pub leader: i32,
    nspawn: Child,
    log: PathBuf,
}

const BOOT_SCRIPT: &str = r#"
set -eu
NAME="$1"; ROOT="$2"; shift 2
mkdir -p /run/systemd/nspawn
# Its own cgroup, so nspawn's payload and supervisor cgroups land under it.
for h in unified systemd; do
  if [ -d /sys/fs/cgroup/$h ]; then
    mkdir -p /sys/fs/cgroup/$h/rg-$NAME && echo $$ > /sys/fs/cgroup/$h/rg-$NAME/cgroup.procs
  fi
done
# No host systemd or machined here: --register=no --keep-unit; nspawn cleans up its own dir
# on a tmpfs of this mount namespace.
exec unshare --mount --propagation private -- sh -c '
  mount -t tmpfs tmpfs /run/systemd/nspawn
  root="$0"; name="$1"; shift
  exec systemd-nspawn -D "$root" --volatile=overlay -b --register=no --keep-unit \
       -M "$name" --console=passive "$@"' "$ROOT" "$NAME" "$@"
"#;

impl Machine {
    /// Boots `rootfs` as host `name`, with `binds` (test machine path, path inside) read-only;
    /// with `private_network` it has only a loopback of its own (else the test machine's).
    pub fn boot(
        name: &str,
        rootfs: &Path,
        binds: &[(&Path, &Path)],
        private_network: bool,
        log: &Path,
    ) -> anyhow::Result<Machine> {
        let mut cmd = Command::new("setsid");
        cmd.args(["bash", "-c", BOOT_SCRIPT, "boot", name])
            .arg(rootfs)
            .args(
                binds
                    .iter()
                    .map(|(from, to)| format!("--bind-ro={}:{}", from.display(), to.display())),
            )
            .args(private_network.then_some("--private-network"))
            .stdin(Stdio::null())
            .stdout(File::create(log)?)
            .stderr(File::create(log.with_extension("err"))?);
        let nspawn = cmd.spawn().context("start systemd-nspawn")?;
        let mut m = Machine {
            name: name.to_string(),
            leader: 0,
            nspawn,
            log: log.to_path_buf(),
        };
        m.leader = m.wait_booted()?;
        Ok(m)
    }

    /// Waits until systemd in the container is up; its PID 1's pid.
    fn wait_booted(&mut self) -> anyhow::Result<i32> {
        let deadline = Instant::now() + BOOT_WAIT;
        let mut state = String::from("not started");
        while Instant::now() < deadline {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!(
                    "systemd-nspawn exited ({status}) while booting {}; {}",
                    self.name,
                    self.logs()
                );
            }
            // setsid, bash, unshare and sh all exec: the child is systemd-nspawn itself.
            let children = format!("/proc/{0}/task/{0}/children", self.nspawn.id());
            let leader = fs::read_to_string(children)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok());
            if let Some(leader) = leader {
                let out = nsenter(leader, &["systemctl", "is-system-running"])?;
                state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    return Ok(leader);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "systemd in container {} did not come up in {BOOT_WAIT:?} (last state: {state}); {}",
            self.name,
            self.logs()
        )
    }

    /// Runs `args` inside the container (all its namespaces, as root).
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        nsenter(self.leader, args)
    }

    /// Runs `script` with `sh -c` inside the container; its stdout and stderr, or an error
    /// with both when it fails.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        let out = self.exec(&["sh", "-c", script])?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "in {}: `{script}` failed ({}):\n{text}",
                self.name,
                out.status
            );
        }
        Ok(text)
    }

    /// A path of the container's file system, as the test machine reaches it.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.leader,
            inside.trim_start_matches('/')
        ))
    }

    /// What nspawn printed (the container's console).
    pub fn logs(&self) -> String {
        let out = fs::read_to_string(&self.log).unwrap_or_default();
        let err = fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!(
            "systemd-nspawn's output ends:\n{}\n{}",
            tail(&out, 30),
            tail(&err, 30)
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.leader > 0 {
            let _ = nsenter(self.leader, &["systemctl", "poweroff", "--no-block"]);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(None) = self.nspawn.try_wait() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for h in ["unified", "systemd"] {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{h}/rg-{}", self.name));
            remove_cgroup_tree(&dir);
        }
    }
}

/// Removes a cgroup and the cgroups under it, deepest first (cgroups go with `rmdir` only).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn nsenter(leader: i32, args: &[&str]) -> anyhow::Result<Output> {
    Command::new("nsenter")
        .args(["-t", &leader.to_string(), "-a", "--"])
        .args(args)
        .output()
        .context("run nsenter")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
