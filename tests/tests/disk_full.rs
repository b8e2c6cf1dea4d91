//! A full disk on a host (issue 14, item 4 B). Three agents run with a small tmpfs as their
//! state dir (mounted here; we are root), each full at a different step of an update to a
//! 2.0.0 tarball release (3 MiB of incompressible bytes that unpack, with 8 MiB of zeros, to
//! 11 MiB):
//!
//! - host-1 (2 MiB): the download does not fit; refused before a byte is written;
//! - host-2 (8 MiB): the download fits, the unpack does not (ENOSPC while writing the tree);
//! - host-3 (32 MiB, then filled up by the test): the order's first journal write (at accept)
//!   fails with ENOSPC;
//! - host-4 (32 MiB): everything is staged, then its `pre_stop` hook fills the disk, so the
//!   journal write of the `swapping` step fails: the swap must not happen (the agent journals
//!   each step before doing it; it used to log the error and swap anyway).
//!
//! Each host stays on 1.0.0 (its service answers so), its step in the rollout is `failed`
//! with a reason naming the full disk, the path and what to do, the rollout halts on the
//! fourth failure naming them, and its agent's log shows which step it was at.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{Fleet, FleetOpts, Mode, Release};

const MIB: usize = 1 << 20;
/// A file in a host's state dir that makes its `pre_stop` hook fill the disk.
const FILL_AT_PRE_STOP: &str = "fill-at-pre-stop";
/// The harness's default `web` service, plus a `pre_stop` hook that fills the disk on a host
/// whose state dir holds [`FILL_AT_PRE_STOP`].
const SERVICES: &str = r#"[[services]]
name = "web"
backend = "process"
binary = "web"
args = ["--port", "{port}"]
stop_timeout = "2s"
restart_delay = "200ms"
[services.hooks]
pre_stop = ["if [ -e {state}/fill-at-pre-stop ]; then cat /dev/zero > {state}/filler; fi; exit 0"]
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = "100ms"
timeout = "500ms"
"#;
/// Incompressible bytes in the 2.0.0 tarball: the download's size.
const RANDOM_BYTES: usize = 3 * MIB;
/// Zeros in the 2.0.0 tarball: next to nothing compressed, 8 MiB unpacked.
const ZERO_BYTES: usize = 8 * MIB;

/// A tmpfs mounted over a directory; lazily unmounted on drop (even on a panic, and even if
/// a process still holds it), then the test's leftover directory is removed.
struct Tmpfs {
    at: PathBuf,
    /// Removed after the unmount (the fleet's dir: its own cleanup could not remove a mount
    /// point); `None` when `KEEP_TEST_DIRS` is set.
    leftover: Option<PathBuf>,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str, leftover: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(at)?;
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at))?;
        Ok(Tmpfs {
            at: at.to_path_buf(),
            leftover: std::env::var_os("KEEP_TEST_DIRS")
                .is_none()
                .then(|| leftover.to_path_buf()),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg("--lazy").arg(&self.at)) {
            eprintln!("cannot unmount {}: {e:#}", self.at.display());
        }
        if let Some(dir) = self.leftover.as_ref().filter(|d| d.exists()) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[test]
fn a_full_disk_at_download_unpack_or_journal_fails_that_host_on_the_old_release(
) -> anyhow::Result<()> {
    // Declared before the fleet: unmounted after its processes are gone.
    let mut mounts: Vec<Tmpfs> = Vec::new();
    let mut fleet = Fleet::start(FleetOpts {
        agents: 4,
        agent_services: Some(SERVICES.into()),
        ..FleetOpts::default()
    })?;
    let sizes = [
        ("host-1", "2m"),
        ("host-2", "8m"),
        ("host-3", "32m"),
        ("host-4", "32m"),
    ];
    for (host, size) in sizes {
        // A fresh agent on an empty tmpfs: nothing is installed yet, so nothing is lost.
        fleet.kill_host(host);
        let state = fleet.host(host).state_dir.clone();
        if state.exists() {
            fs::remove_dir_all(&state)?;
        }
        mounts.push(Tmpfs::mount(&state, size, &fleet.dir)?);
        fleet.agent(host).proc.restart()?;
    }
    fleet.wait_connected(4)?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"100ms\"")?;

    let v2 = big_tarball(&fleet, "2.0.0")?;
    let free = fill(&fleet.host("host-3").state_dir)?;
    println!("host-3's state dir filled up: {free} bytes were free");
    fs::write(fleet.host("host-4").state_dir.join(FILL_AT_PRE_STOP), "")?;
    let observer = fleet.observe();
    let id = fleet.start_rollout(&fleet.spec(
        &v2,
        "max_unavailable = 1\nmax_failures = 3\nmin_healthy_time = \"200ms\"",
    )?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(120))?;
    let seen = observer.finish();
    seen.print(1, None);
    println!("rollout {}: {}", s.phase().word(), s.reason);

    let cases = [
        // (host, words its reason must hold, the agent's log line naming the step)
        (
            "host-1",
            vec![
                "not enough disk space in",
                "free space on the filesystem mounted at",
            ],
            "not enough disk space in",
        ),
        (
            "host-2",
            vec![
                "No space left on device",
                ".assembling/",
                "the disk is full: free space on the filesystem mounted at",
            ],
            "downloaded",
        ),
        (
            "host-3",
            vec![
                "cannot record the order durably",
                "agent-state.json",
                "No space left on device",
                "the disk is full: free space on the filesystem mounted at",
            ],
            "cannot record the order durably",
        ),
        (
            "host-4",
            vec![
                "cannot journal the swapping step",
                "agent-state.json",
                "No space left on device",
                "the disk is full: free space on the filesystem mounted at",
                "the update is refused and 1.0.0 was not stopped",
            ],
            "pre_stop",
        ),
    ];
    for (host, words, step_line) in &cases {
        let h = s
            .hosts
            .iter()
            .find(|h| h.host_id == *host)
            .with_context(|| format!("{host} is not in the rollout: {s:?}"))?;
        println!("{host}: {} — {}", h.state().word(), h.reason);
        assert_eq!(h.state(), HostState::Failed, "{host}: {h:?}");
        let mount = fleet.host(host).state_dir.display().to_string();
        for w in words.iter().chain([&mount.as_str()]) {
            assert!(
                h.reason.contains(w),
                "{host}'s reason lacks {w:?}: {}",
                h.reason
            );
        }
        assert_eq!(
            fleet.serving(host).as_deref(),
            Some("1.0.0"),
            "{host} does not serve 1.0.0 healthy after its disk filled up"
        );
        let log = fs::read_to_string(&fleet.host(host).proc.log)?;
        assert!(
            log.contains(step_line),
            "{host}'s log does not show the step ({step_line:?}):\n{}",
            fleet.host(host).proc.tail(20)
        );
    }
    // host-2 got the whole download and failed only after it, while unpacking.
    let log2 = fs::read_to_string(&fleet.host("host-2").proc.log)?;
    assert!(
        log2.contains("fetching 2.0.0") && !log2.contains("not enough disk space"),
        "host-2 did not fail in the unpack:\n{}",
        fleet.host("host-2").proc.tail(20)
    );
    assert_eq!(s.phase(), Phase::Failed, "{s:?}");
    assert!(
        s.reason.contains("4 host(s) failed"),
        "the rollout's reason does not name its failures: {}",
        s.reason
    );
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}

/// A tarball release of the test service: `web` (the wrapper script), `random.bin`
/// ([`RANDOM_BYTES`] that do not compress) and `zeros.bin` ([`ZERO_BYTES`]).
fn big_tarball(fleet: &Fleet, version: &str) -> anyhow::Result<Release> {
    let plain = fleet.release(version, Mode::Healthy)?;
    let tree = fleet.dir.join(format!("tree-{version}"));
    fs::create_dir_all(&tree)?;
    fs::copy(&plain.path, tree.join("web"))?;
    fs::set_permissions(
        tree.join("web"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..RANDOM_BYTES / 8)
        .flat_map(|_| {
            // xorshift64: incompressible enough for gzip.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    fs::write(tree.join("random.bin"), random)?;
    fs::write(tree.join("zeros.bin"), vec![0u8; ZERO_BYTES])?;
    let path = fleet.dir.join(format!("web-{version}.tar.gz"));
    run(Command::new("tar")
        .arg("czf")
        .arg(&path)
        .arg("-C")
        .arg(&tree)
        .args(["web", "random.bin", "zeros.bin"]))?;
    println!(
        "{version}: {} bytes to download, {} unpacked",
        fs::metadata(&path)?.len(),
        RANDOM_BYTES + ZERO_BYTES
    );
    Ok(Release {
        version: version.to_string(),
        path,
    })
}

/// Fills the filesystem holding `dir` until a write fails with ENOSPC; returns the bytes it
/// took.
fn fill(dir: &Path) -> anyhow::Result<u64> {
    let mut f = fs::File::create(dir.join("filler"))?;
    let mut written = 0u64;
    for chunk in [MIB, 4096, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
                Err(e) => return Err(e).context("cannot fill the disk"),
            }
        }
    }
    f.sync_all()?;
    Ok(written)
}
