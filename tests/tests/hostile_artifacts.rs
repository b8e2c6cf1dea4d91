//! Issue 10 item 5 (S9): a host downloads only the artifacts of its own orders, and its
//! downloads cannot make replicas copy without bound, dial themselves, or fill their disks.
//! On real processes (etcd, two coordinator replicas, one agent) and a compromised host,
//! `host-evil`, that holds a real fleet certificate and speaks gRPC by hand:
//!
//! 1. `FetchArtifact` for an artifact no order of host-evil names is refused (permission
//!    denied), and the replica's log names the host;
//! 2. once a rollout targets host-evil, it gets the same artifact; 8 concurrent downloads
//!    from the replica that does not hold the bytes start one copy from the other replica;
//! 3. a record naming the replica itself while its file is gone answers "push it again" at
//!    once, without dialing itself (the old code dialed itself, which asked itself again...);
//! 4. a push that would take the store past `max_artifact_store_bytes` is refused, naming
//!    the operator in the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rollgate_proto::pb;
use rollgate_proto::pb::agent_message::Msg;
use rollgate_proto::pb::agent_service_client::AgentServiceClient;
use rollgate_tests::{bin, Fleet, FleetOpts, Mode};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

/// Concurrent downloads from the replica that lacks the bytes.
const CONCURRENT: usize = 8;
/// Longest any one download may take (the old self-dial never answered).
const FETCH_WITHIN: Duration = Duration::from_secs(10);
/// How often the hand-written session sends a heartbeat.
const BEAT: Duration = Duration::from_millis(100);
/// What the coordinator logs once per copy from another replica.
const COPIED: &str = "copied artifact from another replica";

/// host-evil's own certificate, dialing replica `i`.
async fn evil_channel(fleet: &Fleet, host: &str, i: usize) -> anyhow::Result<Channel> {
    let files = fleet.pki.host(host)?;
    let ep = Endpoint::from_shared(fleet.coordinators[i].url())?
        .tls_config(files.client_config()?)?
        .connect_timeout(Duration::from_secs(3));
    Ok(ep.connect().await?)
}

/// Keeps a session open as `host-evil` (hello with a healthy `web` 1.0.0, then heartbeats),
/// so rollouts can target it; it answers no order.
fn evil_session(fleet: &Fleet, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let channel = rt.block_on(evil_channel(fleet, "host-evil", 0))?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.try_send(pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            host_id: "host-evil".into(),
            agent_version: "0.0.0".into(),
            labels: HashMap::from([("site".to_string(), "site-0".to_string())]),
            services: vec![pb::ServiceStatus {
                service: "web".into(),
                version: "1.0.0".into(),
                health: pb::Health::Healthy as i32,
                ..Default::default()
            }],
            ..Default::default()
        })),
    })?;
    rt.spawn(async move {
        let mut client = AgentServiceClient::new(channel);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let Ok(inbound) = client.connect(stream).await else {
            return;
        };
        let mut inbound = inbound.into_inner();
        let beats = tokio::spawn(async move {
            for seq in 1.. {
                tokio::time::sleep(BEAT).await;
                let beat = Msg::Heartbeat(pb::Heartbeat { seq });
                if tx.send(pb::AgentMessage { msg: Some(beat) }).await.is_err() {
                    return;
                }
            }
        });
        while let Ok(Some(_)) = inbound.message().await {}
        beats.abort();
    });
    Ok(())
}

/// Downloads `sha256` as `host` from replica `i`; returns the bytes' digest or the refusal.
async fn fetch(fleet: &Fleet, host: &str, i: usize, sha256: &str) -> anyhow::Result<String> {
    let mut client = AgentServiceClient::new(evil_channel(fleet, host, i).await?)
        .max_decoding_message_size(rollgate_proto::MAX_MESSAGE_BYTES);
    let req = pb::FetchArtifactRequest {
        sha256: sha256.to_string(),
        offset: 0,
    };
    let got = tokio::time::timeout(FETCH_WITHIN, async {
        let mut stream = client.fetch_artifact(req).await?.into_inner();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.message().await? {
            hasher.update(&chunk.data);
        }
        Ok::<_, tonic::Status>(hex::encode(hasher.finalize()))
    })
    .await;
    Ok(match got {
        Err(_) => format!("no answer within {FETCH_WITHIN:?}"),
        Ok(Err(status)) => format!("refused: {:?}: {}", status.code(), status.message()),
        Ok(Ok(sha)) => sha,
    })
}

fn sha_of(path: &Path) -> anyhow::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

fn log_of(fleet: &Fleet, i: usize) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(fleet.coordinators[i].log())?)
}

fn stored(fleet: &Fleet, i: usize, sha256: &str) -> PathBuf {
    fleet.coordinators[i].dir.join("artifacts").join(sha256)
}

/// `rollgate artifact push FILE` against replica `i`.
fn push_to(fleet: &Fleet, i: usize, file: &Path) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin("rollgate"))
        .arg("--coordinator")
        .arg(fleet.coordinators[i].url())
        .args(fleet.operator.cli_args())
        .args(["artifact", "push"])
        .arg(file)
        .output()?)
}

#[test]
fn a_host_downloads_only_its_own_artifacts_and_copies_stay_bounded() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        coordinators: 2,
        ..FleetOpts::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    evil_session(&fleet, &rt)?;
    fleet.wait_connected(2)?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let sha = sha_of(&v2.path)?;

    // 1. Pushed, but no order of host-evil names it: refused, logged naming the host.
    let out = push_to(&fleet, 0, &v2.path)?;
    assert!(out.status.success(), "push: {out:?}");
    let got = rt.block_on(fetch(&fleet, "host-evil", 0, &sha))?;
    println!("host-evil without an order: {got}");
    assert!(got.starts_with("refused: PermissionDenied"), "{got}");
    assert!(got.contains("host host-evil may download only the artifacts of its own orders"));
    let logged = log_of(&fleet, 0)?;
    let line = logged
        .lines()
        .find(|l| l.contains("refused an artifact download"))
        .unwrap_or_default();
    println!("coord-1 log: {line}");
    assert!(
        line.contains("host-evil"),
        "the refusal names the host: {line:?}"
    );

    // 2. A rollout targets host-evil: it gets the bytes, and 8 downloads at once from the
    // replica without them make one copy.
    let spec = fleet.spec_for_hosts(&v2, "max_unavailable = 1", &["host-evil"])?;
    let id = fleet.start_rollout(&spec)?;
    println!("rollout {id} targets host-evil");
    let holder = usize::from(!stored(&fleet, 0, &sha).exists());
    let other = 1 - holder;
    assert!(stored(&fleet, holder, &sha).exists() && !stored(&fleet, other, &sha).exists());
    let got = rt.block_on(async {
        let all = (0..CONCURRENT).map(|_| fetch(&fleet, "host-evil", other, &sha));
        futures::future::join_all(all).await
    });
    let copies = log_of(&fleet, other)?.matches(COPIED).count();
    println!(
        "{CONCURRENT} downloads from coord-{}: {copies} copy",
        other + 1
    );
    for g in got {
        assert_eq!(g?, sha, "a download failed");
    }
    assert_eq!(
        copies, 1,
        "copies made for {CONCURRENT} concurrent downloads"
    );
    // Another real host, not targeted, is still refused.
    let got = rt.block_on(fetch(&fleet, "host-1", other, &sha))?;
    assert!(
        got.starts_with("refused: PermissionDenied"),
        "host-1: {got}"
    );

    // 3. The record names the holder, whose file is gone: "push it again", no self-dial.
    std::fs::remove_file(stored(&fleet, holder, &sha))?;
    let started = Instant::now();
    let got = rt.block_on(fetch(&fleet, "host-evil", holder, &sha))?;
    println!(
        "missing on its holder, answered in {:?}: {got}",
        started.elapsed()
    );
    assert!(got.starts_with("refused: NotFound"), "{got}");
    assert!(got.contains("push it again"), "{got}");
    let log = log_of(&fleet, holder)?;
    assert_eq!(
        log.matches(COPIED).count(),
        0,
        "the holder copied from itself"
    );
    assert!(
        !log.contains("cannot reach replica"),
        "the holder dialed itself"
    );
    let line = log
        .lines()
        .find(|l| l.contains("artifact download refused"))
        .unwrap_or_default();
    assert!(line.contains("spiffe://test/host/host-evil"), "{line:?}");

    // 4. The store's disk budget bounds pushes too.
    let c = &fleet.coordinators[other];
    let cfg = c.dir.join("coordinator.toml");
    let used: u64 = std::fs::read_dir(c.dir.join("artifacts"))?
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum();
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!("max_artifact_store_bytes = {}\n{text}", used + 64),
    )?;
    c.restart()?;
    fleet.wait_replica(other)?;
    let big = fleet.dir.join("big.bin");
    std::fs::write(&big, vec![7u8; 4096])?;
    let out = push_to(&fleet, other, &big)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    println!(
        "push of 4096 bytes to a store holding {used} of {}: {err}",
        used + 64
    );
    assert!(!out.status.success(), "the push went past the budget");
    assert!(err.contains("max_artifact_store_bytes"), "{err}");
    assert!(!stored(&fleet, other, &sha_of(&big)?).exists());
    let log = log_of(&fleet, other)?;
    let line = log
        .lines()
        .find(|l| l.contains("artifact push refused"))
        .unwrap_or_default();
    assert!(line.contains("spiffe://test/operator/"), "{line:?}");
    Ok(())
}
