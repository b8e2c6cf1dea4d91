//! The process backend: runs the `current` release as the agent's child, in its own group.
//!
//! The agent starts the binary, appends its output to `service.log`, stops it with SIGTERM to
//! the whole group and SIGKILL after `stop_timeout`, and remembers the group in a pidfile so that
//! an agent restarted after a crash or `kill -9` can stop the process it left behind (and free
//! its port) before starting the service again. This backend ties the service's lifetime to the
//! agent's: a clean agent shutdown stops the service. Hosts that need the service to outlive the
//! agent use the systemd backend ([`crate::backend::systemd`]).

use std::fs;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgid, Pid};
use tokio::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::backend::{Backend, BackendError, Exit, ProcessError};
use crate::config::ServiceConfig;
use crate::probe::describe_exit;
use crate::release::releases::{DiskError, ServiceDir};

/// After SIGKILL, how long to wait for the process group to disappear before giving up.
pub const STOP_KILL_GRACE: Duration = Duration::from_secs(2);
/// How often to look whether a process group is gone.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many times to retry a spawn that fails with ETXTBSY. A binary written moments ago can
/// be briefly held open for writing by a process forked (for another spawn) before it was closed.
const SPAWN_BUSY_RETRIES: u32 = 10;
/// Pause between those retries.
const SPAWN_BUSY_DELAY: Duration = Duration::from_millis(20);

/// The process backend of one service: runs its process and knows whether it is up.
#[derive(Debug)]
pub struct ProcessBackend {
    dir: ServiceDir,
    cfg: Arc<ServiceConfig>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    child: tokio::process::Child,
    /// Its process group (= its pid: it was started as a group leader).
    pgid: Pid,
    release: String,
}

impl ProcessBackend {
    /// The backend for the service stored in `dir`, configured by `cfg`.
    pub fn new(dir: ServiceDir, cfg: Arc<ServiceConfig>) -> ProcessBackend {
        ProcessBackend {
            dir,
            cfg,
            running: None,
        }
    }

    /// Whether the process is running (started and not yet seen to exit).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Pid of the running process.
    #[cfg(test)]
    pub fn pid(&self) -> Option<i32> {
        self.running.as_ref().map(|r| r.pgid.as_raw())
    }

    /// Starts the release `current` points at. Returns when the process was spawned.
    pub async fn start(&mut self) -> Result<Instant, ProcessError> {
        if self.running.is_some() {
            self.stop().await;
        }
        let link = self.dir.current_link();
        let Some(release) = self.dir.current_dir()? else {
            return Err(ProcessError::NotInstalled(link));
        };
        // Run from the resolved release dir, not through `current`, so a later swap of the
        // link cannot change what this process sees as its working directory.
        let release_dir = self.dir.release_path(&release);
        let bin = release_dir.join(self.dir.binary());
        let log_path = self.dir.log_file();
        let log = open_log(&log_path, &release)?;
        if let Some(r) = &self.cfg.run_as {
            let (d, rd, gid) = (self.dir.clone(), release_dir.clone(), r.gid);
            tokio::task::spawn_blocking(move || share_with_group(&d, &rd, gid))
                .await
                .map_err(|e| DiskError {
                    action: "share with the service's group",
                    path: release_dir.clone(),
                    source: io::Error::other(e),
                })??;
        }
        let mut attempt = 0;
        let child = loop {
            let mut cmd = tokio::process::Command::new(&bin);
            cmd.args(&self.cfg.args)
                .envs(&self.cfg.env)
                .current_dir(&release_dir)
                .stdin(Stdio::null())
                .stdout(clone_log(&log, &log_path)?)
                .stderr(clone_log(&log, &log_path)?)
                .process_group(0)
                // The service must survive an agent crash; stale ones are handled by the pidfile.
                .kill_on_drop(false);
            if let Some(r) = &self.cfg.run_as {
                // Run as root, std clears the supplementary groups before setuid.
                cmd.uid(r.uid).gid(r.gid);
            }
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e)
                    if e.raw_os_error() == Some(Errno::ETXTBSY as i32)
                        && attempt < SPAWN_BUSY_RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(SPAWN_BUSY_DELAY).await;
                }
                Err(source) => return Err(ProcessError::Spawn { path: bin, source }),
            }
        };
        let started = Instant::now();
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let pid_file = self.dir.pid_file();
        if let Err(e) =
            crate::state::durable::write_atomic(&pid_file, format!("{pid}\n").as_bytes())
        {
            // Not fatal: the service runs; only the cleanup after an agent crash is weakened.
            tracing::warn!(
                "cannot write pidfile {}: {e}; a restarted agent may not find this process",
                pid_file.display()
            );
        }
        match &self.cfg.run_as {
            Some(r) => tracing::info!(
                release = %release,
                pid,
                "started {} as user {} (uid {}, gid {})",
                bin.display(),
                r.user,
                r.uid,
                r.gid
            ),
            None => tracing::info!(release = %release, pid, "started {}", bin.display()),
        }
        self.running = Some(Running {
            child,
            pgid: Pid::from_raw(pid),
            release,
        });
        Ok(started)
    }

    /// Waits until the process exits on its own; never returns while nothing runs. Cancel-safe.
    pub async fn exited(&mut self) -> Exit {
        let Some(run) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let status = run.child.wait().await;
        let pgid = run.pgid;
        let release = run.release.clone();
        self.running = None;
        // The group is the service: a leader that died leaves nothing worth keeping, and an
        // orphan still holding the port would break the restart.
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = fs::remove_file(self.dir.pid_file());
        let description = match status {
            Ok(st) => format!("process {}", describe_exit(st)),
            Err(e) => format!("process ended and its status is unknown: {e}"),
        };
        Exit {
            release,
            description,
        }
    }

    /// Stops the process: SIGTERM to its group, SIGKILL after `stop_timeout`. Returns how it
    /// went, or `None` if nothing was running.
    pub async fn stop(&mut self) -> Option<String> {
        let mut run = self.running.take()?;
        let stop_timeout = self.cfg.stop_timeout;
        let deadline = Instant::now() + stop_timeout;
        let _ = killpg(run.pgid, Signal::SIGTERM);
        let mut how = match tokio::time::timeout(stop_timeout, run.child.wait()).await {
            Ok(Ok(st)) => format!("stopped ({})", describe_exit(st)),
            Ok(Err(e)) => format!("stopped (status unknown: {e})"),
            Err(_) => {
                let _ = killpg(run.pgid, Signal::SIGKILL);
                let _ = tokio::time::timeout(STOP_KILL_GRACE, run.child.wait()).await;
                format!("did not stop within {stop_timeout:?} of SIGTERM; killed")
            }
        };
        // Children the service started in its group must be gone too, or they keep its port.
        if !wait_group_gone(run.pgid, deadline).await {
            let _ = killpg(run.pgid, Signal::SIGKILL);
            wait_group_gone(run.pgid, Instant::now() + STOP_KILL_GRACE).await;
            how.push_str("; leftover processes in its group were killed");
        }
        let _ = fs::remove_file(self.dir.pid_file());
        tracing::info!(release = %run.release, "{how}");
        Some(how)
    }

    /// Stops a process left running by an earlier agent (found through the pidfile), so its
    /// port is free before the service starts again. The pid is trusted only if that process
    /// still leads its own group and works in one of this service's release dirs: a pid can
    /// be reused by an unrelated process after a reboot.
    pub async fn stop_leftover(&self) -> Option<i32> {
        let pid_file = self.dir.pid_file();
        let text = fs::read_to_string(&pid_file).ok()?;
        let _ = fs::remove_file(&pid_file);
        let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1)?;
        let pid = Pid::from_raw(pid);
        if !self.is_ours(pid) {
            return None;
        }
        tracing::info!(
            pid = pid.as_raw(),
            "stopping the service process left by a previous agent"
        );
        let _ = killpg(pid, Signal::SIGTERM);
        if !wait_group_gone(pid, Instant::now() + self.cfg.stop_timeout).await {
            let _ = killpg(pid, Signal::SIGKILL);
            wait_group_gone(pid, Instant::now() + STOP_KILL_GRACE).await;
        }
        Some(pid.as_raw())
    }

    fn is_ours(&self, pid: Pid) -> bool {
        if getpgid(Some(pid)).ok() != Some(pid) {
            return false;
        }
        let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) else {
            return false;
        };
        let releases = self.dir.releases_dir();
        let releases = fs::canonicalize(&releases).unwrap_or(releases);
        cwd.starts_with(&releases)
    }
}

impl Backend for ProcessBackend {
    fn is_up(&self) -> bool {
        self.is_running()
    }

    fn agent_restarts(&self) -> bool {
        true
    }

    fn adopt(&mut self) -> BoxFuture<'_, (Option<String>, Result<(), BackendError>)> {
        async move {
            let note = self
                .stop_leftover()
                .await
                .map(|pid| format!("stopped process {pid}, left running by a previous agent"));
            let started = self.start().await.map(|_| ()).map_err(BackendError::from);
            (note, started)
        }
        .boxed()
    }

    fn reclaim(&mut self) -> BoxFuture<'_, Option<String>> {
        async move {
            self.stop_leftover()
                .await
                .map(|pid| format!("stopped process {pid}, left running by the killed agent"))
        }
        .boxed()
    }

    fn preflight(&mut self) -> BoxFuture<'_, Result<(), String>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn restart(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<Instant, BackendError>> {
        // `start` stops the running process first; spawning is all "up" means here (the
        // probes decide health).
        async move { self.start().await.map_err(BackendError::from) }.boxed()
    }

    fn stop(&mut self) -> BoxFuture<'_, Option<String>> {
        ProcessBackend::stop(self).boxed()
    }

    fn exited(&mut self) -> BoxFuture<'_, Exit> {
        ProcessBackend::exited(self).boxed()
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if self.is_running() {
                tracing::info!("stopping {} (the agent is shutting down)", self.cfg.name);
            }
            ProcessBackend::stop(self).await;
        }
        .boxed()
    }
}

fn open_log(path: &Path, release: &str) -> Result<fs::File, DiskError> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| DiskError {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
    let now = humantime_serde::re::humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    // A marker between runs makes the log readable after restarts and swaps.
    let _ = writeln!(f, "--- {now} rollgate-agent: starting release {release}");
    Ok(f)
}

/// Lets a service running with group `gid` reach and read what is its: the release tree it
/// runs from becomes group-owned (modes untouched, so the recorded tree still matches), its
/// service and releases dirs group-readable, its log group-owned (mode 0640). The state dir
/// and `services/` get o+x only (passing through, no listing) so the path can be walked.
fn share_with_group(dir: &ServiceDir, release_dir: &Path, gid: u32) -> Result<(), DiskError> {
    use std::os::unix::fs::{lchown, PermissionsExt};
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError {
            action: "share with the service's group",
            path,
            source,
        }
    };
    let root = dir.root();
    let services = root.parent().unwrap_or(root);
    let state = services.parent().unwrap_or(services);
    for (d, add) in [
        (state, 0o001),
        (services, 0o001),
        (root, 0o050),
        (&dir.releases_dir(), 0o050),
    ] {
        let mode = fs::metadata(d).map_err(err(d))?.permissions().mode();
        if mode & add != add {
            fs::set_permissions(d, fs::Permissions::from_mode(mode | add)).map_err(err(d))?;
        }
    }
    for p in [root, &dir.releases_dir(), &dir.log_file()] {
        lchown(p, None, Some(gid)).map_err(err(p))?;
    }
    chgrp_tree(release_dir, gid).map_err(err(release_dir))
}

/// Gives `path` and everything under it to group `gid`; links are changed, not followed.
fn chgrp_tree(path: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chgrp_tree(&entry?.path(), gid)?;
        }
    }
    Ok(())
}

fn clone_log(f: &fs::File, path: &Path) -> Result<fs::File, DiskError> {
    f.try_clone().map_err(|source| DiskError {
        action: "open",
        path: path.to_path_buf(),
        source,
    })
}

/// Whether any process of group `pgid` is still alive. A zombie leader counts as gone: it
/// holds no port, and it may never be reaped if it is not our child.
fn group_alive(pgid: Pid) -> bool {
    match killpg(pgid, None) {
        Err(Errno::ESRCH) => false,
        Err(_) => true,
        Ok(()) => !(is_zombie(pgid) && only_zombies(pgid)),
    }
}

fn is_zombie(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether every live member of group `pgid` is a zombie (scans /proc; fine for a stop).
fn only_zombies(pgid: Pid) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let pid = Pid::from_raw(pid);
        if getpgid(Some(pid)).ok() == Some(pgid) && !is_zombie(pid) {
            return false;
        }
    }
    true
}

/// Polls until group `pgid` is gone or `deadline` passes; true if it is gone.
async fn wait_group_gone(pgid: Pid, deadline: Instant) -> bool {
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::release::releases::ReleaseInfo;
    use sha2::{Digest, Sha256};

    fn setup(script: &str, stop_timeout: &str) -> (tempfile::TempDir, ProcessBackend, ServiceDir) {
        setup_with(script, stop_timeout, "")
    }

    /// A process backend for one installed release running `script`; `extra` is added to the
    /// service's table.
    fn setup_with(
        script: &str,
        stop_timeout: &str,
        extra: &str,
    ) -> (tempfile::TempDir, ProcessBackend, ServiceDir) {
        let state = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "host_id = \"h\"\ncoordinator = \"http://127.0.0.1:1\"\nstate_dir = \"{}\"\n\
             [[services]]\nname = \"s\"\nbackend = \"process\"\nbinary = \"svc\"\n\
             stop_timeout = \"{stop_timeout}\"\nargs = [\"a1\"]\nenv = {{ GREETING = \"hi\" }}\n\
             {extra}",
            state.path().display()
        );
        let cfg = Config::parse(&text).expect("config");
        let dir = ServiceDir::new(&cfg.state_dir, "s", "svc");
        dir.create().expect("create");
        let body = format!("#!/bin/sh\n{script}\n");
        let sha = hex::encode(Sha256::digest(body.as_bytes()));
        let p = dir.partial_path(&sha);
        fs::write(&p, &body).expect("script");
        let name = dir
            .install(
                &p,
                &ReleaseInfo {
                    version: "1.0.0".into(),
                    sha256: sha,
                    size: body.len() as u64,
                },
            )
            .expect("install");
        dir.point_current_at(&name).expect("point");
        let sup = ProcessBackend::new(dir.clone(), Arc::new(cfg.services[0].clone()));
        (state, sup, dir)
    }

    #[tokio::test]
    async fn runs_in_the_release_dir_with_args_env_and_log() {
        let (_state, mut sup, dir) = setup("echo \"$GREETING $1 $(pwd)\"; exit 4", "1s");
        sup.start().await.expect("start");
        let exit = sup.exited().await;
        assert_eq!(exit.description, "process exited with status 4");
        let log = fs::read_to_string(dir.log_file()).expect("log");
        let release = dir.current_dir().expect("read").expect("installed");
        let cwd = fs::canonicalize(dir.release_path(&release)).expect("canon");
        assert!(log.contains(&format!("hi a1 {}", cwd.display())), "{log}");
        assert!(!dir.pid_file().exists(), "pidfile removed after exit");
    }

    /// The `Uid:`, `Gid:` and `Groups:` lines of /proc/PID/status.
    fn ids_of(pid: i32) -> Vec<String> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .filter(|l| ["Uid:", "Gid:", "Groups:"].iter().any(|k| l.starts_with(k)))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[tokio::test]
    async fn runs_as_the_configured_user_with_its_files_readable() {
        // The tests run as root, as the agent does; the temp state dir is 0700.
        let script = "head -c 3 ./svc >/dev/null && echo release-readable; \
                      head -n 1 ../../service.log >/dev/null && echo log-readable; exec sleep 30";
        let (_state, mut sup, dir) =
            setup_with(script, "2s", "user = \"nobody\"\ngroup = \"nogroup\"\n");
        sup.start().await.expect("start");
        let pid = sup.pid().expect("pid");
        let log = || fs::read_to_string(dir.log_file()).expect("log");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log().contains("log-readable") && Instant::now() < deadline {
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
        let ids = ids_of(pid);
        println!("service as nobody: {ids:?}");
        assert_eq!(
            ids,
            [
                "Uid: 65534 65534 65534 65534",
                "Gid: 65534 65534 65534 65534",
                "Groups:"
            ],
            "{}",
            log()
        );
        let text = log();
        assert!(
            text.contains("release-readable") && text.contains("log-readable"),
            "{text}"
        );
        sup.stop().await.expect("was running");
        let release = dir.current_dir().expect("read").expect("installed");
        dir.check_tree(&release)
            .expect("sharing left the recorded tree as it was");
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_and_kills_the_group() {
        // Ignores SIGTERM, and has a child in its group that would keep running otherwise.
        let (_state, mut sup, dir) = setup("trap '' TERM; sleep 30 & sleep 30; wait", "300ms");
        sup.start().await.expect("start");
        let pid = sup.pid().expect("pid");
        assert_eq!(
            fs::read_to_string(dir.pid_file()).expect("pidfile").trim(),
            pid.to_string()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let how = sup.stop().await.expect("was running");
        assert!(how.contains("killed"), "{how}");
        assert!(!group_alive(Pid::from_raw(pid)));
        assert!(sup.stop().await.is_none());
    }

    #[tokio::test]
    async fn a_leftover_process_is_found_through_the_pidfile() {
        let (_state, mut sup, dir) = setup("exec sleep 30", "2s");
        sup.start().await.expect("start");
        let pid = sup.pid().expect("pid");
        // Forget the child as a crashed agent would; its pidfile stays behind.
        let run = sup.running.take().expect("running");
        drop(run);
        let fresh = ProcessBackend::new(dir.clone(), sup.cfg.clone());
        assert_eq!(fresh.stop_leftover().await, Some(pid));
        assert!(!group_alive(Pid::from_raw(pid)));
        assert!(!dir.pid_file().exists());

        // A pidfile naming someone else's process is ignored.
        fs::write(dir.pid_file(), format!("{}\n", std::process::id())).expect("pidfile");
        assert_eq!(fresh.stop_leftover().await, None);
    }

    #[tokio::test]
    async fn start_without_a_release_is_a_clear_error() {
        let (_state, mut sup, dir) = setup("true", "1s");
        dir.remove_current().expect("remove");
        let err = sup.start().await.expect_err("nothing installed");
        assert!(err.to_string().contains("no release is installed"), "{err}");
    }
}
