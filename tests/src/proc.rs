//! Processes the harness starts: kill -9 / SIGSTOP, restart with the same command, log tails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child process with its log file; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    pub(crate) child: Option<Child>,
    /// Its combined stdout/stderr.
    pub log: PathBuf,
    pub(crate) cmd: Vec<String>,
    /// Exits the harness saw that it did not cause by killing the process (see [`OwnExit`]).
    pub(crate) exits: Vec<OwnExit>,
    /// The harness sent the current child SIGTERM/SIGINT/SIGKILL: its exit is planned.
    pub(crate) asked_to_exit: AtomicBool,
    /// The current child's exit is in `exits` already.
    exit_seen: bool,
}

/// An exit of a harness process that the harness did not cause with a kill or a stop.
#[derive(Debug, Clone)]
pub struct OwnExit {
    /// The process (`coord-1`, `host-2`, ...).
    pub name: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Whether the harness had asked it to exit (a signal sent through [`Proc::signal`]).
    pub asked: bool,
    /// Its log's last lines when the exit was seen.
    pub tail: String,
}

impl OwnExit {
    /// A crash: killed by a signal it did not get from the harness (abort, segfault), or a
    /// Rust panic's exit status (101).
    pub fn is_crash(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal().is_some() || self.status.code() == Some(101)
    }
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &[String], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, cmd, log, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables (e.g. fault injection).
    pub fn spawn_with_env(
        name: &str,
        cmd: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            cmd: cmd.to_vec(),
            exits: Vec::new(),
            asked_to_exit: AtomicBool::new(false),
            exit_seen: false,
        })
    }

    /// Process id.
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Sends a signal (SIGSTOP, SIGCONT, SIGTERM, ...).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            if matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGKILL) {
                self.asked_to_exit.store(true, Ordering::Relaxed);
            }
            let _ = kill(pid, sig);
        }
    }

    /// Sends SIGCONT (lets a stopped process go on, or die of a pending SIGKILL).
    pub(crate) fn cont(&self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
    }

    /// How the current child ended, if it did; an exit the harness did not cause is recorded
    /// once in [`Proc::exits`].
    pub(crate) fn observe(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        let exit = OwnExit {
            name: self.name.clone(),
            status,
            asked: self.asked_to_exit.load(Ordering::Relaxed),
            tail: self.tail(crate::TAIL_LINES),
        };
        // A reaped child keeps answering the same status: record it once.
        if !self.exit_seen {
            self.exit_seen = true;
            self.exits.push(exit);
        }
        Some(status)
    }

    /// Every exit seen so far that the harness did not cause.
    pub fn own_exits(&mut self) -> Vec<OwnExit> {
        self.observe();
        self.exits.clone()
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        self.observe();
        self.asked_to_exit.store(false, Ordering::Relaxed);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        self.observe();
        self.asked_to_exit.store(false, Ordering::Relaxed);
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same command again (after a kill), appending to the same log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_with_env(&[])
    }

    /// Starts the same command again with extra environment variables.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.kill9();
        let mut fresh = Proc::spawn_with_env(&self.name, &self.cmd, &self.log, env)?;
        self.child = fresh.child.take();
        self.exit_seen = false;
        Ok(())
    }

    /// Whether it has exited (or was killed by the harness).
    pub fn exited(&mut self) -> bool {
        self.child.is_none() || self.observe().is_some()
    }

    /// How it ended, if it exited on its own (not killed by the harness: that leaves no child).
    pub fn exited_on_its_own(&mut self) -> Option<ExitStatus> {
        self.observe()
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        tail_file(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process cannot die of SIGKILL until continued.
        self.cont();
        self.kill9();
    }
}

pub(crate) fn tail_file(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide the logs).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
