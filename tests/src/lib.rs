//! Test harness for rollgate: starts a real etcd, coordinator replicas and agents as processes
//! with free ports, each with its own directory and log file, plus the test service
//! (`rollgate-testsvc`) whose releases are tiny wrapper scripts with a chosen behaviour.
//!
//! Layout:
//! - [`Fleet`]: etcd + one or more coordinator replicas + N agents; prints every log's tail when
//!   a test fails. Faults: kill -9 / SIGSTOP of any process ([`Coordinator`], [`Agent::proc`]),
//!   [`Fleet::restart_etcd`], and in netns mode [`Fleet::cut`] / [`Fleet::heal`] of one host's
//!   link; [`Fleet::etcd_backup`] / [`Fleet::etcd_restore`]. A supervisor restarts a
//!   coordinator that exits on its own (as systemd's `Restart=on-failure` does in production)
//!   and records it ([`Fleet::coordinator_restarts`]). [`Fleet::leader`] reads the election key
//!   from etcd. Control RPCs ([`Fleet::rpc`], [`Fleet::status`], [`Fleet::promote`], ...) fail
//!   over between replicas.
//! - [`Etcd`]: plain, or ([`Etcd::start_secure`], `FleetOpts::etcd_secure`) https with client
//!   certificates and auth enabled, a throwaway CA and a `rollgate` user ([`EtcdSecurity`]).
//! - [`NetLab`]: netns mode; every agent (and so its service) runs in its own network namespace
//!   on a bridge in the root namespace; removed on drop, even when the test panics.
//! - [`Observer`]: polls every host's service directly (not the coordinator's word) and records
//!   the most hosts it ever saw unavailable at once, fleet-wide and per group.
//! - [`wait_for`] / [`Fleet::wait`]: waits for a condition with a deadline and says what it
//!   last saw; [`Fleet::hold_for`] asserts that something does NOT happen for a fixed window.
//!   A failed `Fleet` wait (or a test panic) prints every log's tail when the fleet is dropped.
//!
//! - No silent crashes: every coordinator or agent exit the harness did not cause, and every
//!   `panicked at` in their logs, fails the test when the fleet is dropped, unless the test
//!   declared it ([`Fleet::expect_exits`]).
//! - [`nemesis`]: the seeded fault suite (schedule, faults, checker).
//! - [`browser`]: a real headless Chromium driven through chromedriver (WebDriver);
//!   [`dashboard`]: a running `rollgate dashboard` for it to open.
//! - [`registry`]: a real container registry over https with htpasswd users, reachable from
//!   the test process and from inside one engine's network namespace, and images pushed into
//!   it with the engine's own CLI.
//!
//! Files: `proc.rs` (processes and their exits), `etcd.rs`, `etcd_cluster.rs` (several
//! members), `coordinator.rs` (replicas, libfaketime, the supervisor), `fleet.rs` (the fleet,
//! its agents, releases, specs, CLI and control calls, waits), `fleet_opts.rs` (its settings),
//! `fleet_faults.rs` (etcd helpers, leadership, kills, cuts, backup/restore, log dumps),
//! `exits.rs` (unplanned exits),
//! `observer.rs`, `netlab.rs`, `pki.rs`, `managers.rs` (real systemd and container engines),
//! `prometheus.rs` (a real Prometheus server and promtool), `webhook.rs` (a test-owned webhook
//! receiver that checks signatures), `scrape_tls.rs` (certificates for an https `/metrics` and
//! a TLS client that reports the server's refusal), `tcp_proxy.rs` ([`TcpProxy`]: a loopback
//! TCP proxy a test can cut and heal, e.g. between one coordinator and etcd).
//!
//! Binaries come from the cargo target directory next to the test executable (or from
//! `ROLLGATE_BIN_DIR`); build them first with `cargo build --workspace --bins --features
//! rollgate-agent/fault-injection,rollgate-coordinator/fault-injection` (`tests/run.sh` does).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

pub mod browser;
pub mod dashboard;
pub mod managers;
pub mod nemesis;
pub mod nspawn;
pub mod pki;
pub mod prometheus;
pub mod registry;
pub mod scrape_tls;
pub mod tcp_proxy;
pub mod webhook;

mod coordinator;
mod etcd;
mod etcd_cluster;
mod exits;
mod fleet;
mod fleet_faults;
mod fleet_opts;
mod netlab;
mod observer;
mod ports;
mod proc;

pub use coordinator::*;
pub use etcd::*;
pub use etcd_cluster::*;
pub use exits::*;
pub use fleet::*;
pub use fleet_faults::*;
pub use fleet_opts::*;
pub use netlab::*;
pub use observer::*;
pub use ports::{free_port, free_port_pair};
pub use proc::*;
pub use rollgate_proto::pb;
pub use tcp_proxy::{Cut, TcpProxy};

/// How long a daemon may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the observer polls each service.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(10);
/// Timeout of one observer poll.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Heartbeat interval the test coordinator asks agents for (3 missed = offline).
pub const HEARTBEAT: Duration = Duration::from_millis(300);
/// Heartbeats an agent may miss before the coordinator drops its session.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Lease TTL of test coordinators (leader failover after kill -9 takes up to this long).
pub const LEASE_TTL_SECS: u64 = 2;
/// Pause before the supervisor restarts a coordinator that exited on its own (production's
/// systemd unit waits 2 s; tests are impatient).
pub const COORDINATOR_RESTART_DELAY: Duration = Duration::from_millis(500);
/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 40;
/// Timeout of one control RPC before the harness tries another replica.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// The etcd key prefix the coordinators use (their default).
pub const ETCD_PREFIX: &str = "/rollgate/";

/// How long the coordinator takes to notice a silent agent (heartbeat x missed heartbeats).
pub fn session_timeout() -> Duration {
    HEARTBEAT * MISSED_HEARTBEATS
}

/// The cargo target directory the test executable lives in (target/debug or target/release).
pub fn own_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target dir");
    // A test: target/debug/deps/<test> -> target/debug. A binary of this crate (the
    // benchmark): target/release/<bin> -> target/release.
    if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Directory holding rollgate's binaries (coordinator, agent, CLI): `ROLLGATE_BIN_DIR` when
/// set (to test another build), else [`own_bin_dir`].
pub fn bin_dir() -> PathBuf {
    std::env::var_os("ROLLGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(own_bin_dir)
}

/// Path of one of the workspace's binaries; panics with the fix if it was not built. The test
/// service always comes from this crate's own build.
pub fn bin(name: &str) -> PathBuf {
    let dir = if name == "rollgate-testsvc" {
        own_bin_dir()
    } else {
        bin_dir()
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins --features rollgate-agent/fault-injection,rollgate-coordinator/fault-injection` (tests/run.sh does)",
        p.display()
    );
    p
}

/// Waits until `check` returns `Ok(Some(v))`, failing after `timeout` with the last thing it saw.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing yet");
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
