//! Ports for the processes a test starts (etcd, coordinators, agents' metrics, services).
//!
//! A port found free with `bind(0)` and released can be taken again before the process the
//! test starts binds it: the kernel hands the same ephemeral range out to every outgoing
//! connection (a CI run saw an agent refuse to start, "cannot serve metrics on
//! 127.0.0.1:44247: Address already in use"). So ports come from below the ephemeral range,
//! and each is reserved for the life of the test process by an advisory lock on
//! `$TMPDIR/rollgate-test-ports/<port>.lock` (test binaries or nemesis jobs running side by
//! side never share one; a crashed process's locks go with it), and checked free with a bind.

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// The lowest port handed out; the highest is just below the kernel's ephemeral range.
const FIRST: u32 = 12_000;

/// The lock files this process holds: a port stays reserved while its file stays open.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
/// Where the next search starts (spread by process id, so processes rarely meet).
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A TCP port on 127.0.0.1 that no other test process holds, that outgoing connections do not
/// take (it is below the ephemeral range), and that was free when handed out.
pub fn free_port() -> u16 {
    reserve(1)
}

/// A port `p` with `p + 1` reserved too (a local etcd's client and peer ports).
pub fn free_port_pair() -> u16 {
    reserve(2)
}

fn reserve(count: u32) -> u16 {
    let last = ephemeral_start().saturating_sub(count).max(FIRST + 1000);
    let span = last - FIRST;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = FIRST + NEXT.fetch_add(count, Ordering::SeqCst) % span;
        if let Some(files) = (0..count)
            .map(|i| lock(port + i))
            .collect::<Option<Vec<_>>>()
        {
            crate::lock(&HELD).extend(files);
            return port as u16;
        }
    }
    panic!(
        "no free port left between {FIRST} and {last}: other processes hold them all \
         (lock files in {})",
        lock_dir().display()
    );
}

/// Takes `port`'s lock file and checks the port can be bound; `None` if either fails.
fn lock(port: u32) -> Option<File> {
    let dir = lock_dir();
    fs::create_dir_all(&dir).ok()?;
    let file = File::create(dir.join(format!("{port}.lock"))).ok()?;
    file.try_lock().ok()?;
    TcpListener::bind((Ipv4Addr::LOCALHOST, port as u16)).ok()?;
    Some(file)
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("rollgate-test-ports")
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = free_port();
            assert!(
                u32::from(p) >= FIRST && u32::from(p) < ephemeral_start(),
                "{p}"
            );
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        let pair = free_port_pair();
        assert!(
            seen.insert(pair) && seen.insert(pair + 1),
            "pair {pair} overlaps"
        );
        // Another process's lock: a child holding one port's lock keeps it from this process.
        let held = lock_dir().join(format!("{}.lock", pair + 2));
        let mut child = std::process::Command::new("flock")
            .args(["-n"])
            .arg(&held)
            .args(["sleep", "5"])
            .spawn()
            .expect("flock(1)");
        std::thread::sleep(std::time::Duration::from_millis(300));
        NEXT.store(u32::from(pair + 2) - FIRST, Ordering::SeqCst);
        let p = free_port();
        let _ = child.kill();
        let _ = child.wait();
        assert_ne!(p, pair + 2, "took a port another process holds");
    }
}
