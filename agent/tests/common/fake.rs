//! A stand-in coordinator: a real gRPC server on 127.0.0.1 that welcomes agents, records what
//! they send, lets the test push orders, and serves artifacts from memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollgate_proto::pb::agent_service_server::{AgentService, AgentServiceServer};
use rollgate_proto::pb::{self, agent_message::Msg, coordinator_message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// Something the agent did.
#[derive(Debug)]
pub enum Event {
    /// A stream opened.
    Connected,
    /// A message arrived.
    Message(Box<pb::AgentMessage>),
    /// The stream ended.
    Closed,
}

type Tx = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, Status>>;

#[derive(Clone)]
struct Svc {
    events: mpsc::UnboundedSender<Event>,
    current: Arc<Mutex<Option<Tx>>>,
    artifacts: Arc<HashMap<String, Vec<u8>>>,
}

#[tonic::async_trait]
impl AgentService for Svc {
    type ConnectStream = UnboundedReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let welcome = pb::CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(pb::Welcome {
                coordinator_id: "fake".into(),
                heartbeat_interval_ms: 100,
            })),
        };
        let _ = tx.send(Ok(welcome));
        *self.current.lock().expect("lock") = Some(tx);
        let mut inbound = req.into_inner();
        let events = self.events.clone();
        tokio::spawn(async move {
            let _ = events.send(Event::Connected);
            while let Ok(Some(m)) = inbound.message().await {
                let _ = events.send(Event::Message(Box::new(m)));
            }
            let _ = events.send(Event::Closed);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    type FetchArtifactStream = UnboundedReceiverStream<Result<pb::ArtifactChunk, Status>>;

    async fn fetch_artifact(
        &self,
        req: Request<pb::FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let req = req.into_inner();
        let Some(bytes) = self.artifacts.get(&req.sha256) else {
            return Err(Status::not_found(format!("no artifact {}", req.sha256)));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut offset = req.offset as usize;
        while offset < bytes.len() {
            let end = (offset + 1000).min(bytes.len());
            let _ = tx.send(Ok(pb::ArtifactChunk {
                offset: offset as u64,
                data: bytes[offset..end].to_vec(),
                total_size: bytes.len() as u64,
            }));
            offset = end;
        }
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A running fake coordinator.
pub struct Fake {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<Event>,
    current: Arc<Mutex<Option<Tx>>>,
    server: JoinHandle<()>,
}

impl Fake {
    /// Starts on `addr` (use port 0 for a fresh one), serving `artifacts` (sha256 → bytes).
    pub async fn start(addr: SocketAddr, artifacts: HashMap<String, Vec<u8>>) -> Fake {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events_tx, events) = mpsc::unbounded_channel();
        let current = Arc::new(Mutex::new(None));
        let svc = Svc {
            events: events_tx,
            current: current.clone(),
            artifacts: Arc::new(artifacts),
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Fake {
            addr,
            events,
            current,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends an order on the current stream.
    pub fn send(&self, order: pb::UpdateOrder) {
        let msg = pb::CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Update(order)),
        };
        let tx = self
            .current
            .lock()
            .expect("lock")
            .clone()
            .expect("an agent is connected");
        tx.send(Ok(msg)).expect("stream open");
    }

    /// Kills the server and every connection, as a crashed coordinator would.
    pub fn kill(self) -> SocketAddr {
        self.server.abort();
        *self.current.lock().expect("lock") = None;
        self.addr
    }

    /// The next message the agent sends that `pick` accepts, within `wait`.
    pub async fn next<T>(&mut self, wait: Duration, mut pick: impl FnMut(&Msg) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing matching within {wait:?}"))
                .expect("events open");
            if let Event::Message(m) = ev {
                if let Some(t) = m.msg.as_ref().and_then(&mut pick) {
                    return t;
                }
            }
        }
    }

    pub async fn hello(&mut self, wait: Duration) -> pb::Hello {
        self.next(wait, |m| match m {
            Msg::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .await
    }

    pub async fn result(&mut self, token: u64, wait: Duration) -> pb::OrderResult {
        self.next(wait, |m| match m {
            Msg::Result(r) if r.token == token => Some(r.clone()),
            _ => None,
        })
        .await
    }

    pub async fn step(&mut self, token: u64, step: pb::Step, wait: Duration) {
        self.next(wait, |m| match m {
            Msg::Progress(p) if p.token == token && p.step() == step => Some(()),
            _ => None,
        })
        .await
    }
}
