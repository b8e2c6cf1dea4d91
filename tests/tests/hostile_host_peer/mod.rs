//! A compromised host for the hostile_host_* tests: a real fleet certificate for `host_id` and a
//! hand-written agent session (the real agent would never send what these tests send). It runs
//! on its own runtime thread, heartbeats so the session stays up, records every order it
//! receives and, when asked, answers update orders with a fake success.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollgate_proto::pb;
use rollgate_proto::pb::agent_message::Msg;
use rollgate_proto::pb::agent_service_client::AgentServiceClient;
use rollgate_proto::pb::coordinator_message::Msg as CMsg;
use rollgate_tests::Fleet;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

/// How often the peer heartbeats (well under the test coordinators' session timeout).
const HEARTBEAT: Duration = Duration::from_millis(200);

/// One hostile session.
pub struct HostilePeer {
    /// Sends anything on the session.
    pub tx: mpsc::Sender<pb::AgentMessage>,
    /// Every message the coordinator sent, in order.
    pub received: Arc<Mutex<Vec<CMsg>>>,
    /// Keeps the runtime (and the session) alive.
    _runtime: tokio::runtime::Runtime,
}

impl HostilePeer {
    /// Opens a session as `hello.host_id` with that host's own certificate. With
    /// `fake_success`, every update order is answered at once with a healthy success.
    pub fn connect(fleet: &Fleet, hello: pb::Hello, fake_success: bool) -> anyhow::Result<Self> {
        let files = fleet.pki.host(&hello.host_id)?;
        let ep = Endpoint::from_shared(fleet.coordinator().url())?
            .tls_config(files.client_config()?)?
            .connect_timeout(Duration::from_secs(3));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::channel(64);
        tx.try_send(pb::AgentMessage {
            msg: Some(Msg::Hello(hello)),
        })?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut inbound = runtime.block_on(async {
            let mut client = AgentServiceClient::new(ep.connect().await?);
            let stream = client
                .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            anyhow::Ok(stream)
        })?;
        let (seen, answer) = (received.clone(), tx.clone());
        runtime.spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let Some(msg) = m.msg else { continue };
                if let (true, CMsg::Update(order)) = (fake_success, &msg) {
                    let _ = answer.send(success(order)).await;
                }
                seen.lock().expect("peer lock").push(msg);
            }
        });
        let beat = tx.clone();
        runtime.spawn(async move {
            for seq in 0.. {
                tokio::time::sleep(HEARTBEAT).await;
                let msg = Msg::Heartbeat(pb::Heartbeat { seq });
                if beat
                    .send(pb::AgentMessage { msg: Some(msg) })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(HostilePeer {
            tx,
            received,
            _runtime: runtime,
        })
    }

    /// Sends one message (waits for room on the session).
    pub fn send(&self, msg: Msg) -> anyhow::Result<()> {
        self.tx.blocking_send(pb::AgentMessage { msg: Some(msg) })?;
        Ok(())
    }

    /// Whether the coordinator answered the hello with a welcome.
    pub fn welcomed(&self) -> bool {
        self.received
            .lock()
            .expect("peer lock")
            .iter()
            .any(|m| matches!(m, CMsg::Welcome(_)))
    }

    /// The update orders received so far.
    pub fn updates(&self) -> Vec<pb::UpdateOrder> {
        self.received
            .lock()
            .expect("peer lock")
            .iter()
            .filter_map(|m| match m {
                CMsg::Update(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A healthy success for `order`.
pub fn success(order: &pb::UpdateOrder) -> pb::AgentMessage {
    let version = order
        .release
        .as_ref()
        .map(|r| r.version.clone())
        .unwrap_or_default();
    pb::AgentMessage {
        msg: Some(Msg::Result(pb::OrderResult {
            rollout_id: order.rollout_id.clone(),
            token: order.token,
            service: order.service.clone(),
            outcome: pb::Outcome::Succeeded as i32,
            running_version: version,
            health: pb::Health::Healthy as i32,
            ..Default::default()
        })),
    }
}

/// A service status as a hello or a status message carries it.
pub fn service(name: &str, version: &str) -> pb::ServiceStatus {
    pb::ServiceStatus {
        service: name.into(),
        version: version.into(),
        health: pb::Health::Healthy as i32,
        ..Default::default()
    }
}

/// Writes a rollout spec for a service other than `web` (the hostile host claims it), with a
/// throwaway file as the release.
pub fn spec_for(
    fleet: &Fleet,
    service: &str,
    version: &str,
    hosts: &[&str],
) -> anyhow::Result<std::path::PathBuf> {
    let file = fleet.dir.join(format!("{service}-{version}.bin"));
    std::fs::write(&file, format!("{service} {version}"))?;
    let path = fleet.dir.join(format!("rollout-{service}-{version}.toml"));
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "service = \"{service}\"\n[release]\nversion = \"{version}\"\nfile = \"{}\"\n\
             [targets]\nhosts = [{}]\n[strategy]\nmax_unavailable = 1\n",
            file.display(),
            list.join(", ")
        ),
    )?;
    Ok(path)
}

/// Puts a raw value into etcd (an operator's mistake, or a key the old code let a host write).
pub fn etcd_put(fleet: &Fleet, key: &str, value: &str) -> anyhow::Result<()> {
    fleet.block_on(async {
        let mut c = fleet.etcd.client().await?;
        c.put(key, value, None).await?;
        anyhow::Ok(())
    })
}

/// The coordinator's log so far.
pub fn coordinator_log(fleet: &Fleet) -> String {
    std::fs::read_to_string(fleet.coordinator().log()).unwrap_or_default()
}
