//! The replica's cache of rollout specs (`sessions/specs.rs`) on a real etcd (the
//! coordinator's own local etcd): a rollout not yet kept is read from etcd, a kept one is
//! answered without etcd, and a rollout that does not exist is `None`. Needs the `etcd` binary
//! (`ETCD_BIN`).

mod common;
#[path = "common/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;

use rollgate_coordinator::control;
use rollgate_coordinator::local_etcd::LocalEtcd;
use rollgate_coordinator::sessions::specs::RolloutSpecs;
use rollgate_coordinator::store::{encode, Health, HostRecord, ServiceState};
use rollgate_coordinator::Ctx;
use tokio_util::sync::CancellationToken;

use world::SHA2;

struct World {
    ctx: Arc<Ctx>,
    _etcd: LocalEtcd,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A real etcd with host h1 running `web` and `api` 1.0.0.
async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ctx, etcd, cancel) = world::ctx_on(dir.path()).await;
    let running = ServiceState {
        version: "1.0.0".into(),
        health: Health::Healthy,
        ..ServiceState::default()
    };
    let services = BTreeMap::from([
        ("web".to_string(), running.clone()),
        ("api".to_string(), running),
    ]);
    let host = HostRecord {
        host_id: "h1".into(),
        services,
        ..HostRecord::default()
    };
    ctx.etcd
        .clone()
        .put(ctx.keys.host("h1"), encode(&host), None)
        .await
        .expect("put host");
    World {
        ctx,
        _etcd: etcd,
        cancel,
        _dir: dir,
    }
}

/// Creates a rollout of `service` to `version`; returns its id.
async fn rollout(ctx: &Arc<Ctx>, service: &str, version: &str) -> String {
    let spec = format!(
        "service = \"{service}\"\n[release]\nversion = \"{version}\"\nsource = \
         \"https://example.invalid/web\"\nsha256 = \"{SHA2}\"\nsize = 10\n[strategy]\n\
         max_unavailable = 1\n"
    );
    control::create(ctx, &spec, None).await.expect("create").id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_is_read_once_then_answered_from_the_cache() {
    let world = world().await;
    let ctx = &world.ctx;
    let specs = RolloutSpecs::default();
    let rid = rollout(ctx, "web", "2.0.0").await;

    // Not kept yet: read from etcd.
    let read = specs
        .get(ctx, &rid)
        .await
        .expect("read")
        .expect("the rollout exists");
    assert_eq!(read.service, "web");
    assert_eq!(read.release.version, "2.0.0");
    assert_eq!(read.release.sha256, SHA2);

    // Kept: answered without etcd. (Rollouts are never deleted; deleting its record here is how
    // the test tells an answer from the cache from a read.)
    ctx.etcd
        .clone()
        .delete(ctx.keys.rollout(&rid), None)
        .await
        .expect("delete the record");
    let kept = specs
        .get(ctx, &rid)
        .await
        .expect("no etcd read needed")
        .expect("the kept spec, though etcd no longer has the record");
    assert_eq!(kept, read, "the cache answers what it read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_not_kept_is_read_and_an_unknown_rollout_is_none() {
    let world = world().await;
    let ctx = &world.ctx;
    let specs = RolloutSpecs::default();
    let first = rollout(ctx, "web", "2.0.0").await;
    specs.get(ctx, &first).await.expect("read").expect("first");
    // A rollout created after the cache was filled is not in it: it is read, not confused with
    // the kept one.
    let second = rollout(ctx, "api", "3.0.0").await;
    let read = specs
        .get(ctx, &second)
        .await
        .expect("read")
        .expect("the second rollout exists");
    assert_eq!(
        (read.service.as_str(), read.release.version.as_str()),
        ("api", "3.0.0")
    );
    assert!(
        specs
            .get(ctx, "r-does-not-exist")
            .await
            .expect("read")
            .is_none(),
        "a rollout etcd does not have is none"
    );
}
