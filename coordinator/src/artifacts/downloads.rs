//! Who may download which artifact, and copies from other replicas: one copy per artifact
//! at a time (other requests wait for it), a bounded number at once, within the store's
//! disk budget, and never from this replica itself (S9).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rollgate_proto::pb;
use rollgate_proto::tls::{Identity, Role};
use tonic::Status;

use crate::store::{self, decode, RolloutRecord};
use crate::Ctx;

/// State shared by every download on this replica.
#[derive(Debug, Default)]
pub struct CopyGate {
    /// One lock per artifact being copied: the second request for it waits, then finds it.
    copying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Copies running at once (`max_artifact_copies`), set at first use.
    permits: OnceLock<tokio::sync::Semaphore>,
}

/// Refuses a host's download of `sha256` unless one of its own orders names it: an
/// active rollout that targets the host and rolls out (or rolls back to) that artifact.
/// Replicas and operators may download any artifact. Logged naming the host.
pub async fn authorize(ctx: &Arc<Ctx>, who: Option<&Identity>, sha256: &str) -> Result<(), Status> {
    let Some(id) = who.filter(|id| id.role == Role::Host) else {
        return Ok(());
    };
    let mut etcd = ctx.etcd.clone();
    let unavailable = |e: String| Status::unavailable(format!("cannot read rollouts: {e}"));
    let active = store::active_rollouts(&mut etcd, &ctx.keys)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    for rid in active {
        let resp = etcd
            .get(ctx.keys.rollout(&rid), None)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let Some(Ok(r)) = resp.kvs().first().map(decode::<RolloutRecord>) else {
            continue;
        };
        if orders(&r, &id.name, sha256) {
            return Ok(());
        }
    }
    tracing::warn!(host = %id.name, %sha256, "refused an artifact download: no order of this host names it");
    Err(Status::permission_denied(format!(
        "host {} may download only the artifacts of its own orders, and no active rollout \
         targeting it names sha256:{sha256}",
        id.name
    )))
}

/// Whether rollout `r` orders `host` to fetch artifact `sha256`.
fn orders(r: &RolloutRecord, host: &str, sha256: &str) -> bool {
    !r.phase.is_terminal() && r.spec.release.sha256 == sha256 && r.targets.iter().any(|t| t == host)
}

/// Makes sure `sha256` is in this replica's store for `who`'s download, copying it once from
/// the replica that holds it: concurrent requests for it wait for that one copy.
pub async fn ensure_local(
    ctx: &Arc<Ctx>,
    who: Option<&Identity>,
    sha256: &str,
) -> Result<(), Status> {
    let gate = &ctx.artifacts.gate;
    let lock = {
        let mut copying = gate.copying.lock().unwrap_or_else(|p| p.into_inner());
        copying.entry(sha256.to_string()).or_default().clone()
    };
    let guard = lock.lock().await;
    let result = if ctx.artifacts.path(sha256).exists() {
        Ok(()) // another request copied it while this one waited
    } else {
        copy_once(ctx, sha256).await.inspect_err(|e| {
            let peer = who.map_or_else(|| "a plaintext peer".to_string(), Identity::uri);
            tracing::warn!(%peer, %sha256, "artifact download refused: {}", e.message());
        })
    };
    drop(guard);
    let mut copying = gate.copying.lock().unwrap_or_else(|p| p.into_inner());
    if Arc::strong_count(&lock) <= 2 {
        copying.remove(sha256);
    }
    result
}

async fn copy_once(ctx: &Arc<Ctx>, sha256: &str) -> Result<(), Status> {
    let art = record(ctx, sha256).await?;
    if art.stored_by == ctx.config.replica_id {
        // The record says this replica holds it, and it does not: dialing ourselves would
        // only ask again.
        return Err(Status::not_found(format!(
            "artifact sha256:{sha256} was pushed to this replica but its file is gone; push it \
             again with `rollgate artifact push FILE`"
        )));
    }
    let limit = ctx.config.max_artifact_store_bytes;
    let used = ctx.artifacts.used_bytes().map_err(Status::from)?;
    if used.saturating_add(art.size) > limit {
        tracing::warn!(%sha256, used, size = art.size, "artifact store full: copy refused");
        return Err(Status::resource_exhausted(format!(
            "this replica's artifact store holds {used} bytes; copying sha256:{sha256} ({} \
             bytes) would pass max_artifact_store_bytes ({limit}); remove old artifacts or \
             raise the limit",
            art.size
        )));
    }
    let permits = ctx.artifacts.gate.permits.get_or_init(|| {
        tokio::sync::Semaphore::new(ctx.config.max_artifact_copies.max(1) as usize)
    });
    let _permit = permits
        .acquire()
        .await
        .map_err(|_| Status::unavailable("shutting down"))?;
    crate::control::copy_artifact_from_peer(ctx, sha256).await
}

async fn record(ctx: &Arc<Ctx>, sha256: &str) -> Result<store::ArtifactRecord, Status> {
    let resp = ctx
        .etcd
        .clone()
        .get(ctx.keys.artifact(sha256), None)
        .await
        .map_err(|e| Status::unavailable(format!("cannot read artifact metadata: {e}")))?;
    let Some(kv) = resp.kvs().first() else {
        return Err(Status::not_found(format!(
            "no artifact sha256:{sha256} was pushed to this fleet; push it with `rollgate \
             artifact push FILE`"
        )));
    };
    decode(kv).map_err(|e| Status::internal(e.to_string()))
}

/// A download request's digest, checked.
pub fn check_request(req: &pb::FetchArtifactRequest) -> Result<(), Status> {
    rollgate_proto::names::check_sha256(&req.sha256)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}
