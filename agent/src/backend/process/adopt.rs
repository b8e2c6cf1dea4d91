//! Taking over a service process a previous agent left running (killed, stopped, upgraded).
//!
//! When the agent starts a process it records, next to the pidfile (`<service>/pid`, just the
//! pid, for operators and tools), the instance it started in `<service>/instance.json`: pid,
//! start time (`/proc/<pid>/stat` field 22, clock ticks since boot), boot id and release dir.
//! A restarted agent adopts the process as it is, without restarting it, only when all of it
//! still holds: same boot, same pid with the same start time (a reused pid has another), still
//! leading its own process group, and running from the release dir `current` names (its
//! working directory or executable inside it). Adopted, it is watched through a pidfd, so its
//! exit is noticed the moment it happens, as for a child. [`judge`] decides; it is pure.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// What the agent started, as recorded in `instance.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Instance {
    /// Its pid (= its process group: it was started as a group leader).
    pub(crate) pid: i32,
    /// `/proc/<pid>/stat` field 22 when it was started.
    pub(crate) start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was started.
    pub(crate) boot_id: String,
    /// The release dir it was started from (its name).
    pub(crate) release: String,
}

/// What `/proc` says about a pid now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Field 3 is `Z`: it exited and waits to be reaped.
    pub(crate) zombie: bool,
    /// Field 5, its process group.
    pub(crate) pgid: i32,
    /// Field 22.
    pub(crate) start_time: u64,
    /// `/proc/<pid>/cwd`, if readable.
    pub(crate) cwd: Option<PathBuf>,
    /// `/proc/<pid>/exe`, if readable.
    pub(crate) exe: Option<PathBuf>,
}

/// Where the process should be, all paths canonical.
#[derive(Debug, Clone)]
pub(crate) struct Expected<'a> {
    /// This boot's id.
    pub(crate) boot_id: &'a str,
    /// The service's releases dir.
    pub(crate) releases: &'a Path,
    /// The release `current` names and its dir, if anything is installed.
    pub(crate) current: Option<(&'a str, &'a Path)>,
}

/// Why a process the pidfile names is not adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotAdopted {
    /// No `instance.json` (or unreadable): nothing proves when it was started.
    NoRecord,
    /// The record describes another pid than the pidfile.
    RecordForOtherPid { recorded: i32 },
    /// It was started before the last reboot.
    OtherBoot,
    /// The pid was reused: this process started at another time.
    StartTimeDiffers { recorded: u64, seen: u64 },
    /// It does not lead its own process group.
    NotGroupLeader { pgid: i32 },
    /// Neither its working directory nor its executable is in this service's releases.
    OutsideReleases { cwd: Option<PathBuf> },
    /// It runs another release than the one `current` names.
    OtherRelease { runs: String, current: String },
    /// Nothing is installed any more.
    NothingInstalled,
    /// The agent cannot watch it (pidfd_open failed), so it could not notice its exit.
    CannotWatch(String),
}

impl std::fmt::Display for NotAdopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAdopted::NoRecord => write!(f, "no instance.json records when it was started"),
            NotAdopted::RecordForOtherPid { recorded } => {
                write!(f, "instance.json describes process {recorded} instead")
            }
            NotAdopted::OtherBoot => write!(f, "it was recorded before the last reboot"),
            NotAdopted::StartTimeDiffers { recorded, seen } => write!(
                f,
                "its start time is {seen}, not the recorded {recorded} (the pid was reused)"
            ),
            NotAdopted::NotGroupLeader { pgid } => {
                write!(f, "it is in process group {pgid}, not its own")
            }
            NotAdopted::OutsideReleases { cwd: Some(cwd) } => write!(
                f,
                "it runs in {}, outside this service's releases",
                cwd.display()
            ),
            NotAdopted::OutsideReleases { cwd: None } => {
                write!(f, "its working directory cannot be read")
            }
            NotAdopted::OtherRelease { runs, current } => {
                write!(f, "it runs release {runs}, but current is {current}")
            }
            NotAdopted::NothingInstalled => write!(f, "no release is installed"),
            NotAdopted::CannotWatch(e) => write!(f, "the agent cannot watch it ({e})"),
        }
    }
}

/// What to do with the process the pidfile names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It is gone (or exited and waits to be reaped): start the service.
    Gone,
    /// Provably the instance the agent started, running `current`: supervise it as it is.
    Adopt,
    /// A process of this service, but not provably that instance or not `current`: stop it
    /// (it may hold the port), then start the service.
    Stop(NotAdopted),
    /// Not this service's process at all: leave it alone, start the service.
    LeaveAlone(NotAdopted),
}

/// Decides what to do with process `pid` (the pidfile's), seen as `seen` (`None`: no such
/// process), given the agent's record of what it started and where the service should run.
pub(crate) fn judge(
    pid: i32,
    record: Option<&Instance>,
    seen: Option<&Seen>,
    want: &Expected<'_>,
) -> Verdict {
    let Some(seen) = seen.filter(|s| !s.zombie) else {
        return Verdict::Gone;
    };
    if seen.pgid != pid {
        return Verdict::LeaveAlone(NotAdopted::NotGroupLeader { pgid: seen.pgid });
    }
    let within = |dir: &Path| {
        seen.cwd.as_deref().is_some_and(|c| c.starts_with(dir))
            || seen.exe.as_deref().is_some_and(|e| e.starts_with(dir))
    };
    if !within(want.releases) {
        return Verdict::LeaveAlone(NotAdopted::OutsideReleases {
            cwd: seen.cwd.clone(),
        });
    }
    // From here on it is one of this service's processes: stopped unless adopted.
    let Some(record) = record else {
        return Verdict::Stop(NotAdopted::NoRecord);
    };
    if record.pid != pid {
        return Verdict::Stop(NotAdopted::RecordForOtherPid {
            recorded: record.pid,
        });
    }
    if record.boot_id != want.boot_id {
        return Verdict::Stop(NotAdopted::OtherBoot);
    }
    if record.start_time != seen.start_time {
        return Verdict::Stop(NotAdopted::StartTimeDiffers {
            recorded: record.start_time,
            seen: seen.start_time,
        });
    }
    let Some((current, current_dir)) = want.current else {
        return Verdict::Stop(NotAdopted::NothingInstalled);
    };
    if record.release != current || !within(current_dir) {
        return Verdict::Stop(NotAdopted::OtherRelease {
            runs: record.release.clone(),
            current: current.to_string(),
        });
    }
    Verdict::Adopt
}

/// Reads `/proc/<pid>`; `None` if there is no such process.
pub(crate) fn observe(pid: i32) -> Option<Seen> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (zombie, pgid, start_time) = parse_stat(&stat)?;
    Some(Seen {
        zombie,
        pgid,
        start_time,
        cwd: fs::read_link(format!("/proc/{pid}/cwd")).ok(),
        exe: fs::read_link(format!("/proc/{pid}/exe")).ok(),
    })
}

/// (zombie, pgrp, starttime) from a `/proc/<pid>/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_stat(stat: &str) -> Option<(bool, i32, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    let zombie = *fields.first()? == "Z";
    let pgid = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((zombie, pgid, start_time))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub(crate) fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// The record of process `pid` of release `release`, just started.
pub(crate) fn record_of(pid: i32, release: &str) -> io::Result<Instance> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, _, start_time) = parse_stat(&stat)
        .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat")))?;
    Ok(Instance {
        pid,
        start_time,
        boot_id: boot_id()?,
        release: release.to_string(),
    })
}

/// Reads `instance.json`; `None` if it is missing or unreadable.
pub(crate) fn read_record(path: &Path) -> Option<Instance> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Writes `instance.json` (atomically).
pub(crate) fn write_record(path: &Path, record: &Instance) -> io::Result<()> {
    let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
    crate::state::durable::write_atomic(path, &bytes)
}

/// A process that is not the agent's child, watched through a pidfd: it becomes readable when
/// the process exits. Opened before the process is checked, so the check is of the process the
/// pidfd names (a pid reused after the pidfd was opened fails the start-time check).
#[derive(Debug)]
pub(crate) struct Watch(AsyncFd<OwnedFd>);

impl Watch {
    /// Opens a pidfd for `pid` and registers it with the runtime.
    pub(crate) fn open(pid: i32) -> io::Result<Watch> {
        let pid = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK)?;
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may hand out a different
        // or closed fd over time; the replacement, `register`, is `unsafe` (denied here). An
        // `OwnedFd` owns one open fd for its whole life, which is exactly what `register`
        // requires, so the safe constructor is sound for it.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
        Ok(Watch(fd))
    }

    /// Completes once the process has exited. Cancel-safe; completes at once ever after.
    pub(crate) async fn exited(&self) {
        // Readiness is never cleared: an exited process stays exited.
        let _ = self.0.readable().await;
    }
}

#[cfg(test)]
mod tests;
