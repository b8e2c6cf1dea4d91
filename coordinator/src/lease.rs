//! Keeping this replica's etcd lease alive, on a thread, runtime and etcd connection of its
//! own: a storm of agent sessions (thousands reconnecting after a restart) keeps the main
//! runtime's workers and its etcd connection busy, and a renewal queued behind that traffic for
//! a whole TTL would cost the replica its lease, its leadership and every session it holds.

use std::time::Duration;

use anyhow::Context;
use etcd_client::Client;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

use crate::config::EtcdConfig;
use crate::metrics::EtcdMetrics;

/// Pause between attempts to re-open a broken lease keep-alive.
const LEASE_RETRY: Duration = Duration::from_millis(200);

/// A replica's lease: its id, TTL, and when it was granted (or last renewed).
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// etcd's lease id.
    id: i64,
    /// Its time to live.
    ttl: Duration,
    /// When etcd last granted or renewed it, at the latest (a request's send time).
    renewed: tokio::time::Instant,
}

/// The lease keeper running on its own thread; [`LeaseKeeper::stopped`] says why it ended.
#[derive(Debug)]
pub struct LeaseKeeper {
    /// The lease it keeps.
    pub lease: i64,
    /// The keeper's verdict: `Ok` when cancelled, `Err` when the lease is lost.
    verdict: oneshot::Receiver<anyhow::Result<()>>,
}

impl LeaseKeeper {
    /// Connects to `endpoints` from a thread of its own, is granted a lease of `ttl` there and
    /// keeps it alive until `cancel` fires or the lease is lost. The lease and its keeper's
    /// connection are ready from the first renewal on: no connect or authentication (a
    /// password hash on etcd's side) lies between the grant and the first renewal.
    pub async fn start(
        cfg: EtcdConfig,
        endpoints: Vec<String>,
        metrics: EtcdMetrics,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let (granted_tx, granted) = oneshot::channel();
        let (tx, verdict) = oneshot::channel();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("lease-keeper".into())
            .spawn(move || {
                let keeper = async {
                    let mut etcd = crate::etcd_conn::connect(&cfg, &endpoints, &metrics)
                        .await
                        .context("the lease keeper cannot connect to etcd")?;
                    let sent = tokio::time::Instant::now();
                    let secs = ttl.as_secs().max(1) as i64;
                    let grant = etcd
                        .lease_grant(secs, None)
                        .await
                        .with_context(|| format!("etcd at {endpoints:?} refused a lease"));
                    let lease = Lease {
                        id: grant.as_ref().map_or(0, |g| g.id()),
                        ttl: Duration::from_secs(secs as u64),
                        renewed: sent,
                    };
                    let _ = granted_tx.send(grant.map(|g| g.id()));
                    keep_lease(etcd, lease, cancel).await
                };
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the lease keeper's runtime")
                    .and_then(|rt| rt.block_on(keeper.instrument(span)));
                let _ = tx.send(outcome);
            })
            .context("cannot start the lease keeper's thread")?;
        let lease = match granted.await {
            Ok(grant) => grant?,
            // It ended before granting: its verdict says why.
            Err(_) => return Err(LeaseKeeper::why_stopped(verdict).await),
        };
        Ok(LeaseKeeper { lease, verdict })
    }

    /// Resolves when the keeper ends, with why: the lease is lost (or the keeper was
    /// cancelled, at shutdown).
    pub async fn stopped(self) -> anyhow::Error {
        LeaseKeeper::why_stopped(self.verdict).await
    }

    async fn why_stopped(verdict: oneshot::Receiver<anyhow::Result<()>>) -> anyhow::Error {
        match verdict.await {
            Ok(Ok(())) => anyhow::anyhow!(
                "the lease keeper stopped: this replica's sessions and leadership are void"
            ),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("the lease keeper's thread ended without a verdict"),
        }
    }
}

/// Keeps this replica's lease alive. A broken keep-alive stream (etcd restarting, a leader
/// change) is re-opened. The replica ends when etcd says the lease has expired, or when no
/// renewal succeeded for a whole TTL (etcd unreachable from here: it has expired the lease by
/// then), since its sessions and leadership are then void; its agents then reconnect to a
/// replica that still reaches etcd instead of heartbeating into one that cannot act.
///
/// A renewal counts from when it was sent, not answered: etcd renewed the lease at some point
/// in between, so the replica never believes it holds the lease longer than it does.
async fn keep_lease(
    mut etcd: Client,
    lease: Lease,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use tokio::time::{timeout_at, Instant};
    let Lease {
        id: lease,
        ttl,
        renewed: lease_renewed,
    } = lease;
    let every = ttl / 3;
    let mut last_ok = lease_renewed;
    loop {
        let opened = tokio::select! {
            r = timeout_at(last_ok + ttl, etcd.lease_keep_alive(lease)) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        let Ok(opened) = opened else {
            return Err(unrenewed(lease, ttl, last_ok));
        };
        if let Ok((mut keeper, mut stream)) = opened {
            loop {
                let sent = Instant::now();
                let renewal = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                let answer = tokio::select! {
                    r = timeout_at(last_ok + ttl, renewal) => r,
                    _ = cancel.cancelled() => return Ok(()),
                };
                match answer {
                    Err(_) => return Err(unrenewed(lease, ttl, last_ok)),
                    Ok(Ok(Some(r))) if r.ttl() > 0 => last_ok = sent,
                    Ok(Ok(Some(_))) => anyhow::bail!(
                        "this replica's etcd lease {lease:x} expired (the process was paused, or \
                         cut off from etcd, for longer than lease_ttl {ttl:?}): it lost \
                         leadership and its agents' sessions"
                    ),
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(sent + every) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
        }
        // Without etcd this replica can change nothing (every write is a compare-and-set), so it
        // keeps trying until the lease's TTL has run out.
        warn!(
            since_last_renewal = ?last_ok.elapsed(),
            "etcd lease keep-alive interrupted; retrying until the lease's TTL ({ttl:?}) runs out"
        );
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RETRY) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// Why the replica ends when no renewal succeeded for a whole TTL.
fn unrenewed(lease: i64, ttl: Duration, last_ok: tokio::time::Instant) -> anyhow::Error {
    anyhow::anyhow!(
        "this replica could not renew its etcd lease {lease:x} for {:.1?}, its whole TTL of \
         {ttl:?} (etcd unreachable from here, or this process was paused: check the network \
         between this replica and etcd, and the host's load), so etcd has expired it: it lost \
         leadership and its agents' sessions",
        last_ok.elapsed()
    )
}
