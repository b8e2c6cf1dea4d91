//! The lease keeper (`lease.rs`) against a real etcd (the coordinator's own local etcd, mTLS):
//! it keeps the replica's lease alive for many TTLs, and when it cannot renew for a whole TTL
//! (etcd stopped with SIGSTOP, as a cut or a paused etcd looks from here) it ends with the
//! verdict that makes the replica exit (`lib.rs` selects on `LeaseKeeper::stopped`). Needs the
//! `etcd` binary (`ETCD_BIN`).

mod common;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rollgate_coordinator::config::EtcdConfig;
use rollgate_coordinator::lease::LeaseKeeper;
use rollgate_coordinator::local_etcd::LocalEtcd;
use rollgate_coordinator::metrics::EtcdMetrics;
use tokio_util::sync::CancellationToken;

/// The TTL under test: short, so that a lost lease shows within seconds.
const TTL: Duration = Duration::from_secs(2);

struct World {
    etcd: LocalEtcd,
    cfg: EtcdConfig,
    dir: tempfile::TempDir,
    cancel: CancellationToken,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, etcd, cancel) = common::start_etcd(dir.path()).await;
        let cfg = etcd.connect_config(&cfg);
        World {
            etcd,
            cfg,
            dir,
            cancel,
        }
    }

    async fn keeper(&self, cancel: CancellationToken) -> LeaseKeeper {
        LeaseKeeper::start(
            self.cfg.clone(),
            vec![self.etcd.endpoint.clone()],
            EtcdMetrics::default(),
            TTL,
            cancel,
        )
        .await
        .expect("a lease is granted")
    }

    /// The local etcd's process (its supervisor writes the pid file).
    fn etcd_pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.dir.path().join("etcd/etcd.pid")).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }

    fn signal_etcd(&self, signal: Signal) {
        let pid = self.etcd_pid().expect("the local etcd's pid file");
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to etcd: {e}"));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A test that failed while etcd was stopped must not leave it stopped.
        if let Some(pid) = self.etcd_pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
        self.cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_holds_the_lease_for_many_ttls() {
    let world = World::start().await;
    let stop = CancellationToken::new();
    let keeper = world.keeper(stop.clone()).await;
    let lease = keeper.lease;
    // Four TTLs: without renewals etcd expires the lease after one.
    let ended = tokio::time::timeout(TTL * 4, keeper.stopped()).await;
    assert!(
        ended.is_err(),
        "the keeper ended on a healthy etcd: {:?}",
        ended.map(|e| e.to_string())
    );
    let mut etcd = rollgate_coordinator::etcd_conn::connect(
        &world.cfg,
        std::slice::from_ref(&world.etcd.endpoint),
        &EtcdMetrics::default(),
    )
    .await
    .expect("connect");
    let left = etcd
        .lease_time_to_live(lease, None)
        .await
        .expect("lease time to live")
        .ttl();
    assert!(
        left > 0,
        "etcd says lease {lease:x} has {left} s left after {:?}: it was not renewed",
        TTL * 4
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_not_renewed_for_its_ttl_ends_the_keeper_with_why() {
    let world = World::start().await;
    let keeper = world.keeper(CancellationToken::new()).await;
    // Let it settle into its renewals, then stop etcd: no renewal can be answered any more.
    tokio::time::sleep(TTL / 2).await;
    world.signal_etcd(Signal::SIGSTOP);
    let stopped_at = Instant::now();
    // It must give up once a whole TTL has passed since its last renewal (at most one TTL
    // before the stop), not wait on etcd for ever: the replica exits on this verdict.
    let verdict = tokio::time::timeout(TTL * 3, keeper.stopped()).await;
    let took = stopped_at.elapsed();
    world.signal_etcd(Signal::SIGCONT);
    let why = verdict
        .unwrap_or_else(|_| {
            panic!(
                "the keeper still believed in its lease {took:?} after etcd stopped (TTL {TTL:?})"
            )
        })
        .to_string();
    assert!(
        why.contains("could not renew its etcd lease"),
        "the keeper ended, but not for the unrenewed lease: {why}"
    );
    assert!(
        took <= TTL + Duration::from_millis(500),
        "the keeper gave up {took:?} after etcd stopped, later than the lease's TTL {TTL:?}"
    );
}
