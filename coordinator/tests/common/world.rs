//! A real etcd (the coordinator's own local etcd, TLS and all) and a `Ctx` around it, with
//! hosts h1..h3 running `web` 1.0.0 and a rollout of 2.0.0 over them. Needs the `etcd` binary
//! (`ETCD_BIN`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rollgate_coordinator::artifacts::ArtifactStore;
use rollgate_coordinator::config::Config;
use rollgate_coordinator::control;
use rollgate_coordinator::local_etcd::LocalEtcd;
use rollgate_coordinator::sessions::Hub;
use rollgate_coordinator::store::{encode, Health, HistoryRecord, HostRecord, Keys, ServiceState};
use rollgate_coordinator::Ctx;
use rollgate_proto::spec::ReleaseSpec;
use tokio_util::sync::CancellationToken;

pub struct World {
    pub ctx: Arc<Ctx>,
    _etcd: LocalEtcd,
    _cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

pub const SHA1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const SHA2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// A coordinator's shared state on a real etcd started in `dir` (no sessions, no TLS to agents),
/// its lease granted (60 s); with the etcd and the token that stops it.
pub async fn ctx_on(dir: &Path) -> (Arc<Ctx>, LocalEtcd, CancellationToken) {
    let (cfg, etcd, cancel) = super::common::start_etcd(dir).await;
    let client = rollgate_coordinator::etcd_conn::connect(
        &etcd.connect_config(&cfg),
        std::slice::from_ref(&etcd.endpoint),
        &rollgate_coordinator::metrics::EtcdMetrics::default(),
    )
    .await
    .expect("connect");
    let config = Config {
        etcd: cfg,
        ..Config::default()
    };
    // The replica's lease: its election key and the hosts' session keys are bound to it.
    let lease = client
        .clone()
        .lease_grant(60, None)
        .await
        .expect("lease")
        .id();
    let ctx = Arc::new(Ctx {
        etcd: client,
        keys: Keys::new(&config.etcd.prefix),
        artifacts: ArtifactStore::new(dir.join("artifacts"), 1 << 20).expect("store"),
        config,
        lease,
        hub: Hub::default(),
        tls: None,
        tasks: tokio_util::task::TaskTracker::new(),
        metrics: rollgate_coordinator::metrics::Metrics::new(),
        results_recorded: tokio::sync::Notify::new(),
        handover: Default::default(),
    });
    (ctx, etcd, cancel)
}

/// A real etcd with hosts h1..h3 running `web` 1.0.0 and a rollout of 2.0.0 over them.
pub async fn world() -> (World, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ctx, etcd, cancel) = ctx_on(dir.path()).await;
    let mut etcd_c = ctx.etcd.clone();
    for h in ["h1", "h2", "h3"] {
        let mut services = BTreeMap::new();
        services.insert(
            "web".to_string(),
            ServiceState {
                version: "1.0.0".into(),
                sha256: SHA1.into(),
                health: Health::Healthy,
                ..ServiceState::default()
            },
        );
        let rec = HostRecord {
            host_id: h.into(),
            services,
            ..HostRecord::default()
        };
        etcd_c
            .put(ctx.keys.host(h), encode(&rec), None)
            .await
            .expect("put host");
    }
    let v1 = HistoryRecord {
        release: release("1.0.0", SHA1),
        rollout_id: "r-first".into(),
        at_ms: 1,
    };
    etcd_c
        .put(
            ctx.keys.history_entry("web", 1, "r-first"),
            encode(&v1),
            None,
        )
        .await
        .expect("history");
    let spec = format!(
        "service = \"web\"\n[release]\nversion = \"2.0.0\"\nsource = \"https://example.invalid/web\"\n\
         sha256 = \"{SHA2}\"\nsize = 10\n[strategy]\nmax_unavailable = 1\n"
    );
    let r = control::create(&ctx, &spec, None).await.expect("create");
    let world = World {
        ctx,
        _etcd: etcd,
        _cancel: cancel,
        _dir: dir,
    };
    (world, r.id)
}

pub fn release(version: &str, sha256: &str) -> ReleaseSpec {
    ReleaseSpec {
        version: version.into(),
        source: "https://example.invalid/web".into(),
        sha256: sha256.into(),
        size: 10,
        file: None,
        image: None,
        signature: None,
        signature_file: None,
    }
}
