//! The process backend: runs the `current` release as the agent's child, in its own group.
//!
//! The agent starts the binary, appends its output to `service.log`, stops it with SIGTERM to
//! the whole group and SIGKILL after `stop_timeout`, and records what it started (pidfile and
//! `instance.json`, see [`adopt`]). The service outlives the agent: a stopped, killed or
//! upgraded agent leaves it running, and the next agent adopts it without a restart when it is
//! provably the instance that was started; a leftover that is not is stopped (freeing its port)
//! and the service started again. `stop_with_agent = true` ties the service's lifetime to the
//! agent's instead: a clean agent shutdown stops it.

pub(crate) mod adopt;

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
    handle: Handle,
    /// Its process group (= its pid: it was started as a group leader).
    pgid: Pid,
    release: String,
}

/// How the agent learns that the process ended.
#[derive(Debug)]
enum Handle {
    /// Started by this agent: its child, with an exit status.
    Child(tokio::process::Child),
    /// Adopted from a previous agent: watched through a pidfd; no exit status.
    Adopted(adopt::Watch),
}

impl Handle {
    /// Waits until the process ended; says how ("exited with status 1"). Cancel-safe.
    async fn wait(&mut self) -> String {
        match self {
            Handle::Child(child) => match child.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => format!("ended and its status is unknown: {e}"),
            },
            Handle::Adopted(watch) => {
                watch.exited().await;
                "exited (adopted from a previous agent, so its exit status is unknown)".into()
            }
        }
    }
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
        self.record(pid, &release);
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
            handle: Handle::Child(child),
            pgid: Pid::from_raw(pid),
            release,
        });
        Ok(started)
    }

    /// Records the process just started (instance first, then the pidfile), so that a later
    /// agent can adopt it. Not fatal: the service runs; a later agent restarts it instead.
    fn record(&self, pid: i32, release: &str) {
        let instance = self.instance_file();
        if let Err(e) = adopt::record_of(pid, release)
            .and_then(|record| adopt::write_record(&instance, &record))
        {
            let _ = fs::remove_file(&instance);
            tracing::warn!(
                "cannot record process {pid} in {}: {e}; a restarted agent will restart the \
                 service instead of adopting it",
                instance.display()
            );
        }
        let pid_file = self.dir.pid_file();
        if let Err(e) =
            crate::state::durable::write_atomic(&pid_file, format!("{pid}\n").as_bytes())
        {
            tracing::warn!(
                "cannot write pidfile {}: {e}; a restarted agent may not find this process",
                pid_file.display()
            );
        }
    }

    /// `<service>/instance.json`: what the agent started (see [`adopt`]).
    fn instance_file(&self) -> std::path::PathBuf {
        self.dir.root().join("instance.json")
    }

    /// Forgets the recorded process (it ended or was stopped).
    fn forget_record(&self) {
        let _ = fs::remove_file(self.dir.pid_file());
        let _ = fs::remove_file(self.instance_file());
    }

    /// Waits until the process exits on its own; never returns while nothing runs. Cancel-safe.
    pub async fn exited(&mut self) -> Exit {
        let Some(run) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let how = run.handle.wait().await;
        let pgid = run.pgid;
        let release = run.release.clone();
        self.running = None;
        // The group is the service: a leader that died leaves nothing worth keeping, and an
        // orphan still holding the port would break the restart.
        let _ = killpg(pgid, Signal::SIGKILL);
        self.forget_record();
        Exit {
            release,
            description: format!("process {how}"),
        }
    }

    /// Stops the process: SIGTERM to its group, SIGKILL after `stop_timeout`. Returns how it
    /// went, or `None` if nothing was running.
    pub async fn stop(&mut self) -> Option<String> {
        let mut run = self.running.take()?;
        let stop_timeout = self.cfg.stop_timeout;
        let deadline = Instant::now() + stop_timeout;
        let _ = killpg(run.pgid, Signal::SIGTERM);
        let mut how = match tokio::time::timeout(stop_timeout, run.handle.wait()).await {
            Ok(ended) => format!("stopped ({ended})"),
            Err(_) => {
                let _ = killpg(run.pgid, Signal::SIGKILL);
                let _ = tokio::time::timeout(STOP_KILL_GRACE, run.handle.wait()).await;
                format!("did not stop within {stop_timeout:?} of SIGTERM; killed")
            }
        };
        // Children the service started in its group must be gone too, or they keep its port.
        if !wait_group_gone(run.pgid, deadline).await {
            let _ = killpg(run.pgid, Signal::SIGKILL);
            wait_group_gone(run.pgid, Instant::now() + STOP_KILL_GRACE).await;
            how.push_str("; leftover processes in its group were killed");
        }
        self.forget_record();
        tracing::info!(release = %run.release, "{how}");
        Some(how)
    }

    /// At agent start: adopts the process a previous agent left running if it is provably
    /// the instance that agent started and runs `current` (see [`adopt::judge`]); otherwise
    /// stops it if it is this service's (its port must be free), leaves it alone if not, and
    /// starts the service. Returns the note for the log.
    pub async fn take_over(&mut self) -> (Option<String>, Result<(), ProcessError>) {
        let name = self.cfg.name.clone();
        let note = match self.inspect_leftover() {
            None => None,
            Some(Leftover::Adopt(pid, watch)) => {
                let release = self.dir.current_dir().ok().flatten().unwrap_or_default();
                self.running = Some(Running {
                    handle: Handle::Adopted(watch),
                    pgid: Pid::from_raw(pid),
                    release: release.clone(),
                });
                tracing::info!(pid, release = %release, "adopted {name}: not restarted");
                return (
                    Some(format!(
                        "adopted process {pid} of {name} (release {release}), left running by \
                         a previous agent; it keeps running and is supervised again"
                    )),
                    Ok(()),
                );
            }
            Some(Leftover::Gone(pid)) => Some(format!(
                "process {pid} of {name}, started by a previous agent, is gone; starting {name}"
            )),
            Some(Leftover::Stop(pid, why)) => {
                self.stop_group(pid).await;
                Some(format!(
                    "did not adopt process {pid} of {name}, left by a previous agent: {why}; \
                     stopped it and started {name} again"
                ))
            }
            Some(Leftover::LeaveAlone(pid, why)) => Some(format!(
                "the pidfile of {name} names process {pid}, which is not {name}'s ({why}); \
                 left it alone and started {name}"
            )),
        };
        (note, self.start().await.map(|_| ()))
    }

    /// Stops a process left running by an earlier agent if it is this service's (adoptable
    /// or not), so its port is free and the caller starts from a known state. A process that
    /// is not this service's (a reused pid) is left alone. Returns the pid stopped.
    pub async fn stop_leftover(&self) -> Option<i32> {
        match self.inspect_leftover()? {
            Leftover::Adopt(pid, _) => {
                self.stop_group(pid).await;
                self.forget_record();
                Some(pid)
            }
            Leftover::Stop(pid, why) => {
                tracing::info!(pid, "process {pid}, left by a previous agent: {why}");
                self.stop_group(pid).await;
                Some(pid)
            }
            Leftover::Gone(_) => None,
            Leftover::LeaveAlone(pid, why) => {
                tracing::info!(pid, "left process {pid} alone: {why}");
                None
            }
        }
    }

    /// Reads the pidfile and judges the process it names; forgets the record unless the
    /// process is adopted. `None` if there is no pidfile.
    fn inspect_leftover(&self) -> Option<Leftover> {
        let text = fs::read_to_string(self.dir.pid_file()).ok();
        let pid = text.and_then(|t| t.trim().parse::<i32>().ok().filter(|p| *p > 1));
        let Some(pid) = pid else {
            self.forget_record();
            return None;
        };
        // The pidfd first: the checks below are then of the process it names.
        let watch = adopt::Watch::open(pid);
        let record = adopt::read_record(&self.instance_file());
        let seen = adopt::observe(pid);
        let canon = |p: std::path::PathBuf| fs::canonicalize(&p).unwrap_or(p);
        let releases = canon(self.dir.releases_dir());
        let current = self.dir.current_dir().ok().flatten();
        let current_dir = current.as_ref().map(|c| canon(self.dir.release_path(c)));
        let boot = adopt::boot_id().unwrap_or_default();
        let want = adopt::Expected {
            boot_id: &boot,
            releases: &releases,
            current: current.as_deref().zip(current_dir.as_deref()),
        };
        let verdict = adopt::judge(pid, record.as_ref(), seen.as_ref(), &want);
        let leftover = match (verdict, watch) {
            (adopt::Verdict::Adopt, Ok(watch)) => return Some(Leftover::Adopt(pid, watch)),
            (adopt::Verdict::Adopt, Err(e)) => {
                Leftover::Stop(pid, adopt::NotAdopted::CannotWatch(e.to_string()))
            }
            (adopt::Verdict::Gone, _) => Leftover::Gone(pid),
            (adopt::Verdict::Stop(why), _) => Leftover::Stop(pid, why),
            (adopt::Verdict::LeaveAlone(why), _) => Leftover::LeaveAlone(pid, why),
        };
        self.forget_record();
        Some(leftover)
    }

    /// SIGTERM to process group `pid`, SIGKILL after `stop_timeout`; waits until it is gone.
    async fn stop_group(&self, pid: i32) {
        let pid = Pid::from_raw(pid);
        tracing::info!(
            pid = pid.as_raw(),
            "stopping the service process left by a previous agent"
        );
        let _ = killpg(pid, Signal::SIGTERM);
        if !wait_group_gone(pid, Instant::now() + self.cfg.stop_timeout).await {
            let _ = killpg(pid, Signal::SIGKILL);
            wait_group_gone(pid, Instant::now() + STOP_KILL_GRACE).await;
        }
    }
}

/// What the pidfile of a previous agent led to.
#[derive(Debug)]
enum Leftover {
    Adopt(i32, adopt::Watch),
    Gone(i32),
    Stop(i32, adopt::NotAdopted),
    LeaveAlone(i32, adopt::NotAdopted),
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
            let (note, started) = self.take_over().await;
            (note, started.map_err(BackendError::from))
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
            let name = &self.cfg.name;
            if self.cfg.stop_with_agent && !crate::upgrade::reexecuting() {
                if self.is_running() {
                    tracing::info!(
                        "stopping {name} (the agent is shutting down; stop_with_agent = true)"
                    );
                }
                ProcessBackend::stop(self).await;
            } else if let Some(run) = self.running.take() {
                // Not killed on drop: it keeps running, recorded for the next agent.
                tracing::info!(
                    pid = run.pgid.as_raw(),
                    release = %run.release,
                    "leaving {name} running for the next agent to adopt (stop_with_agent = \
                     true would stop it with the agent)"
                );
            }
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
mod tests;
