//! gRPC edge: translates requests to calls into `sessions` and `control` and errors to statuses.
//! No decisions are made here.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use rollgate_proto::pb;
use rollgate_proto::pb::agent_service_server::AgentService;
use rollgate_proto::pb::control_service_server::ControlService;
use rollgate_proto::tls::Role;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::artifacts::{downloads, serve, ArtifactError};
use crate::control::{self, Action, ControlError};
use crate::roles::{self, Rpc, Target};
use crate::{sessions, Ctx};

/// Queue depth of one agent's outgoing messages.
const AGENT_QUEUE: usize = 64;
/// Queue depth of one watcher's outgoing messages.
const STREAM_QUEUE: usize = 16;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        match &e {
            ControlError::Spec(_) | ControlError::Invalid(_) => {
                Status::invalid_argument(e.to_string())
            }
            ControlError::NotFound(_) => Status::not_found(e.to_string()),
            ControlError::Conflict(_) => Status::failed_precondition(e.to_string()),
            // One unreadable record: retrying will not help, repairing that key will.
            ControlError::Store(crate::store::StoreError::Corrupt { .. }) => Status::data_loss(
                format!("{e}; only this rollout is affected: repair or delete that key"),
            ),
            ControlError::Store(_) => Status::unavailable(format!(
                "{e}; the coordinator cannot reach etcd right now, nothing was changed; retry"
            )),
        }
    }
}

impl From<ArtifactError> for Status {
    fn from(e: ArtifactError) -> Self {
        match &e {
            ArtifactError::NotFound(_) => Status::not_found(e.to_string()),
            ArtifactError::TooLarge { .. } | ArtifactError::StoreFull { .. } => {
                Status::resource_exhausted(e.to_string())
            }
            ArtifactError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

/// `AgentService` for agents.
#[derive(Debug, Clone)]
pub struct AgentApi {
    /// Shared coordinator state.
    pub ctx: Arc<Ctx>,
    /// Fires at shutdown so sessions end.
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type ConnectStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;
    type FetchArtifactStream = BoxStream<pb::ArtifactChunk>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let tls = self.ctx.tls.clone();
        let peer =
            crate::tls::require(&request, tls.as_deref(), &[Role::Host], "an agent session")?;
        let chain = crate::tls::peer_chain(&request);
        // The ban check (`roles::admit_host`) is etcd work: the session does it in its turn.
        let leaf = peer.as_ref().and(chain.first()).map(|c| c.to_vec());
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let ctx = self.ctx.clone();
        // Cut when the host's certificate is denied, expires or loses its CA (roles::guard).
        let shutdown = roles::guard(tls, peer.clone(), chain, &self.shutdown, "agent session");
        self.ctx.tasks.spawn(async move {
            let inbound = request.into_inner();
            sessions::serve(ctx, peer, leaf, inbound, tx, shutdown.clone()).await;
            shutdown.cancel();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_artifact(
        &self,
        request: Request<pb::FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let who = crate::tls::require(
            &request,
            self.ctx.tls.as_deref(),
            &[Role::Host, Role::Coordinator, Role::Operator],
            "downloading an artifact",
        )?;
        let req = request.into_inner();
        downloads::check_request(&req)?;
        // S9: a host downloads only the artifacts of its own orders.
        downloads::authorize(&self.ctx, who.as_ref(), &req.sha256).await?;
        let (file, total) = match self.ctx.artifacts.open(&req.sha256, req.offset).await {
            Err(ArtifactError::NotFound(_)) => {
                // Pushed to another replica: copy it here first (once, verified), then serve it.
                downloads::ensure_local(&self.ctx, who.as_ref(), &req.sha256).await?;
                self.ctx.artifacts.open(&req.sha256, req.offset).await?
            }
            other => other?,
        };
        let (tx, rx) = serve::queue();
        let offset = req.offset.min(total);
        let host = who.as_ref().map_or("-", |id| id.name.as_str());
        tracing::info!(%host, sha256 = %req.sha256, offset, total, "serving artifact");
        let send = serve::send_chunks(
            serve::Download {
                file,
                sha256: req.sha256,
                offset,
                total,
            },
            tx,
        );
        self.ctx.tasks.spawn(send);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// `ControlService` for operators.
#[derive(Debug, Clone)]
pub struct ControlApi {
    /// Shared coordinator state.
    pub ctx: Arc<Ctx>,
    /// Fires at shutdown so watch streams end.
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    type WatchRolloutStream = BoxStream<pb::RolloutStatus>;
    type EventsStream = BoxStream<pb::Event>;

    async fn create_rollout(
        &self,
        request: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let spec = &request.get_ref().spec_toml;
        let who = roles::authorize(&self.ctx, &request, Rpc::Create, Target::Spec(spec)).await?;
        let r = control::create(&self.ctx, &request.into_inner().spec_toml, uri(&who)).await?;
        Ok(Response::new(control::status(&self.ctx, &r.id).await?))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::RolloutRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let id = &request.get_ref().id;
        roles::authorize(&self.ctx, &request, Rpc::ReadRollouts, Target::Rollout(id)).await?;
        Ok(Response::new(
            control::status(&self.ctx, &request.into_inner().id).await?,
        ))
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        roles::authorize(&self.ctx, &request, Rpc::ReadRollouts, Target::Fleet).await?;
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: control::list(&self.ctx).await?,
        }))
    }

    async fn watch_rollout(
        &self,
        request: Request<pb::RolloutRef>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let id = &request.get_ref().id;
        let who =
            roles::authorize(&self.ctx, &request, Rpc::ReadRollouts, Target::Rollout(id)).await?;
        let chain = crate::tls::peer_chain(&request);
        let id = control::resolve_id(&self.ctx, &request.into_inner().id).await?;
        let first = control::status(&self.ctx, &id).await?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let ctx = self.ctx.clone();
        // Cut when the operator's certificate is denied, expires or loses its CA.
        let shutdown = roles::guard(ctx.tls.clone(), who, chain, &self.shutdown, "watch");
        let guarded = shutdown.clone();
        self.ctx.tasks.spawn(async move {
            let _done = guarded.drop_guard();
            let mut etcd = ctx.etcd.clone();
            let watch = crate::etcd_conn::watch(
                &mut etcd,
                ctx.keys.all(),
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await;
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!("cannot watch etcd: {e}"))))
                        .await;
                    return;
                }
            };
            while !last.ends_watch() {
                tokio::select! {
                    m = watch.message() => match m {
                        Ok(Some(_)) => {}
                        _ => {
                            let _ = tx.send(Err(Status::unavailable("the coordinator lost its etcd watch; run the command again"))).await;
                            return;
                        }
                    },
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down; run the command again to follow the rollout"))).await;
                        return;
                    }
                }
                match control::status(&ctx, &id).await {
                    Ok(s) if s != last => {
                        last = s.clone();
                        if tx.send(Ok(s)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause_rollout(
        &self,
        request: Request<pb::RolloutRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let id = &request.get_ref().id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Pause, Target::Rollout(id)).await?;
        let id = request.into_inner().id;
        Ok(Response::new(
            control::act(&self.ctx, &id, Action::Pause, uri(&who)).await?,
        ))
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::RolloutRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let id = &request.get_ref().id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Resume, Target::Rollout(id)).await?;
        let id = request.into_inner().id;
        Ok(Response::new(
            control::act(&self.ctx, &id, Action::Resume, uri(&who)).await?,
        ))
    }

    async fn abort_rollout(
        &self,
        request: Request<pb::RolloutRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let id = &request.get_ref().id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Abort, Target::Rollout(id)).await?;
        let id = request.into_inner().id;
        Ok(Response::new(
            control::act(&self.ctx, &id, Action::Abort, uri(&who)).await?,
        ))
    }

    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        roles::authorize(&self.ctx, &request, Rpc::ListHosts, Target::Fleet).await?;
        Ok(Response::new(pb::ListHostsResponse {
            hosts: control::hosts(&self.ctx).await?,
        }))
    }

    async fn push_artifact(
        &self,
        request: Request<Streaming<pb::PushArtifactChunk>>,
    ) -> Result<Response<pb::PushArtifactResponse>, Status> {
        roles::authorize(&self.ctx, &request, Rpc::PushArtifact, Target::Fleet).await?;
        let operator = crate::tls::peer(&request, self.ctx.fleet().as_deref())
            .ok()
            .flatten()
            .map_or_else(|| "an operator (plaintext)".to_string(), |i| i.uri());
        let mut stream = request.into_inner();
        // Bounded by max_artifact_bytes and, with what the store holds, max_artifact_store_bytes.
        let received = async {
            let limit = self.ctx.config.max_artifact_store_bytes;
            let mut upload = self.ctx.artifacts.upload(limit)?;
            while let Some(chunk) = stream.message().await? {
                upload.write(&chunk.data).await?;
            }
            Ok::<_, Status>(upload.finish().await?)
        };
        let (sha256, size) = received.await.inspect_err(|e| {
            tracing::warn!(%operator, "artifact push refused: {}", e.message());
        })?;
        control::record_artifact(&self.ctx, &sha256, size).await?;
        tracing::info!(%sha256, size, "artifact stored");
        Ok(Response::new(pb::PushArtifactResponse { sha256, size }))
    }

    async fn plan_rollout(
        &self,
        request: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::RolloutPlan>, Status> {
        let spec = &request.get_ref().spec_toml;
        roles::authorize(&self.ctx, &request, Rpc::Plan, Target::Spec(spec)).await?;
        let spec = request.into_inner().spec_toml;
        Ok(Response::new(control::plan(&self.ctx, &spec).await?))
    }

    async fn promote_rollout(
        &self,
        request: Request<pb::RolloutRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let id = &request.get_ref().id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Promote, Target::Rollout(id)).await?;
        let id = request.into_inner().id;
        Ok(Response::new(
            control::act(&self.ctx, &id, Action::Promote, uri(&who)).await?,
        ))
    }

    async fn rollback_rollout(
        &self,
        request: Request<pb::RolloutRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let id = &request.get_ref().id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Rollback, Target::Rollout(id)).await?;
        let operator = uri(&who).unwrap_or_else(|| "an operator (plaintext)".to_string());
        let id = request.into_inner().id;
        let done = control::rollback(&self.ctx, &id, uri(&who)).await;
        if let Err(e @ ControlError::Conflict(_)) = &done {
            tracing::warn!(%operator, rollout = %id, "rollback refused: {e}");
        }
        Ok(Response::new(done?))
    }

    async fn get_history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let service = &request.get_ref().service;
        roles::authorize(&self.ctx, &request, Rpc::History, Target::Service(service)).await?;
        let service = request.into_inner().service;
        Ok(Response::new(pb::HistoryResponse {
            entries: control::history(&self.ctx, &service).await?,
        }))
    }

    async fn fence_host(
        &self,
        request: Request<pb::HostRef>,
    ) -> Result<Response<pb::HostActionResponse>, Status> {
        let host = &request.get_ref().host_id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Fence, Target::Host(host)).await?;
        let host = request.into_inner().host_id;
        let message = control::fence_host(&self.ctx, &host, false, uri(&who)).await?;
        Ok(Response::new(pb::HostActionResponse { message }))
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let who = roles::authorize(&self.ctx, &request, Rpc::ReadRollouts, Target::Fleet).await?;
        let chain = crate::tls::peer_chain(&request);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let ctx = self.ctx.clone();
        // Cut when the operator's certificate is denied, expires or loses its CA.
        let shutdown = roles::guard(ctx.tls.clone(), who, chain, &self.shutdown, "events");
        let req = request.into_inner();
        self.ctx.tasks.spawn(async move {
            let _done = shutdown.clone().drop_guard();
            crate::events::api::serve(ctx, req, tx, shutdown).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn forget_host(
        &self,
        request: Request<pb::HostRef>,
    ) -> Result<Response<pb::HostActionResponse>, Status> {
        let host = &request.get_ref().host_id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Forget, Target::Host(host)).await?;
        let host = request.into_inner().host_id;
        let message = control::fence_host(&self.ctx, &host, true, uri(&who)).await?;
        // Its certificate stays refused until re-issued (issue 10 item 9).
        roles::ban_forgotten(&self.ctx, &host, who.as_ref()).await?;
        Ok(Response::new(pb::HostActionResponse { message }))
    }

    async fn pin_host(
        &self,
        request: Request<pb::PinHostRequest>,
    ) -> Result<Response<pb::HostActionResponse>, Status> {
        let host = &request.get_ref().host_id;
        let who = roles::authorize(&self.ctx, &request, Rpc::Pin, Target::Host(host)).await?;
        let r = request.into_inner();
        let req = control::pins::PinRequest {
            host: r.host_id,
            labels: r.labels.into_iter().collect(),
            services: r.services.into_iter().collect(),
            clear: r.clear,
        };
        let by = who.map_or_else(|| "insecure-development".to_string(), |w| w.uri());
        let message = control::pins::pin_host(&self.ctx, &req, &by).await?;
        Ok(Response::new(pb::HostActionResponse { message }))
    }
}

/// The operator's identity as recorded in the audit trail (`None` without TLS).
fn uri(who: &Option<rollgate_proto::tls::Identity>) -> Option<String> {
    who.as_ref().map(|w| w.uri())
}
