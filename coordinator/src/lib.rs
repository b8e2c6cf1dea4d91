//! rollgate coordinator: keeps all state in etcd, elects a leader that plans rollouts and grants
//! slots, and serves agents' streams and operators' requests over gRPC.
//!
//! Layout:
//! - [`config`]: the TOML config and its defaults.
//! - [`local_etcd`]: a supervised single-member etcd when no endpoints are configured, mTLS only
//!   with a private CA under `state_dir/etcd-pki`.
//! - [`etcd_conn`]: connecting to etcd (TLS, client certificate, user) and explaining refusals.
//! - [`store`]: etcd key schema and records.
//! - [`planner`]: the pure decision function (who gets a slot, when a rollout ends).
//! - [`lease`]: keeping this replica's lease alive, on its own thread and etcd connection.
//! - [`election`]: waiting in line for leadership (one key per replica, bound to its lease).
//! - [`driver`]: the leader loop that carries the planner's decisions out as fenced txns.
//! - [`sessions`]: agent streams: registry, liveness, orders out, progress and results in.
//! - [`control`]: operator actions.
//! - [`artifacts`]: the artifact store.
//! - [`grpc`]: the gRPC edge.
//! - [`tls`] and [`accept`]: the mTLS listener, and the bounds on connections not yet
//!   authenticated.
//! - [`roles`]: which operator role may call which RPC, the deny list, revocation of open
//!   streams, the audit line.

pub mod accept;
pub mod artifacts;
pub mod config;
pub mod control;
pub mod driver;
pub mod election;
pub mod etcd_conn;
pub mod events;
pub mod fault;
pub mod grpc;
pub mod handover;
pub mod lease;
pub mod local_etcd;
pub mod metrics;
pub mod notify;
pub mod planner;
pub mod roles;
pub mod sessions;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::Client;
use rollgate_proto::pb::agent_service_server::AgentServiceServer;
use rollgate_proto::pb::control_service_server::ControlServiceServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::artifacts::ArtifactStore;
use crate::config::Config;
use crate::sessions::Hub;
use crate::store::Keys;

/// How long in-flight work gets at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long in-flight work gets when this replica's lease is lost: its sessions' keys and its
/// leadership went with the lease, so what they would finish is void, and its agents should
/// reach a replica that can act at once.
const LEASE_LOST_GRACE: Duration = Duration::from_millis(500);
/// How long, once every session and watch has ended, unary calls in flight get to finish.
const SERVER_DRAIN: Duration = Duration::from_secs(1);
/// HTTP/2 streams one connection may have open (an agent needs two or three; an operator's
/// CLI a handful): a confused or hostile peer cannot open thousands.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// What every part of a running coordinator shares.
pub struct Ctx {
    /// etcd client (cheap to clone).
    pub etcd: Client,
    /// Key schema.
    pub keys: Keys,
    /// The config.
    pub config: Config,
    /// This replica's lease: its sessions' liveness keys and its election key are bound to it.
    pub lease: i64,
    /// Agent streams held by this replica.
    pub hub: Hub,
    /// Artifacts pushed by operators.
    pub artifacts: ArtifactStore,
    /// mTLS state (`None`: insecure development mode).
    pub tls: Option<Arc<tls::ServerTls>>,
    /// Prometheus metrics (`[metrics]`).
    pub metrics: metrics::Metrics,
    /// The agent sessions, watches and downloads this replica serves. Shutdown waits for them
    /// (after cancelling them) so that none is cut in the middle of an etcd write.
    pub tasks: TaskTracker,
    /// Rung by a session of this replica that recorded a host's result: when this replica
    /// leads, its next planning round starts at once instead of when etcd's watch reports
    /// the write (the freed slot is handed on sooner; the round reads etcd as always).
    pub results_recorded: tokio::sync::Notify,
    /// Results a session of this replica offers the leader (open while this replica leads),
    /// to be written with the grants they free room for ([`handover`]).
    pub handover: handover::Inbox,
}

impl Ctx {
    /// The fleet peers must belong to; `None` without TLS (no identities at all).
    pub fn fleet(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.fleet())
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("replica_id", &self.config.replica_id)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// What `run` checks before it reaches for etcd, for `--check`: the `[metrics]` TLS files, the
/// `[tls]` certificate, key and CA, and the `[access]` deny list. Says what it would use.
pub fn check(config: &Config) -> anyhow::Result<String> {
    rollgate_proto::metrics_tls::acceptor(&config.metrics)?;
    let tls = tls::ServerTls::load(&config.tls, config.access.deny_list.as_deref())
        .context("cannot set up mTLS ([tls] and [access] in the config)")?;
    let etcd = if config.etcd.endpoints.is_empty() {
        format!(
            "its own etcd ({}) under {}",
            config.etcd.binary.display(),
            config.state_dir.display()
        )
    } else {
        format!("etcd at {}", config.etcd.endpoints.join(", "))
    };
    Ok(format!(
        "listen {}{}, {etcd}",
        config.listen,
        if tls.is_some() {
            " (mTLS)"
        } else {
            " (INSECURE PLAINTEXT: insecure_plaintext = true; anyone who reaches it can steer \
             rollouts; for development only)"
        }
    ))
}

/// Runs a coordinator until `shutdown` resolves or its etcd lease is lost.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    // A bad [metrics] TLS file is the operator's to fix: say so before reaching for etcd.
    rollgate_proto::metrics_tls::acceptor(&config.metrics)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;

    let etcd_cancel = CancellationToken::new();
    let (endpoints, local) = if config.etcd.endpoints.is_empty() {
        let local =
            local_etcd::LocalEtcd::start(&config.etcd, &config.state_dir, etcd_cancel.clone())
                .await?;
        (vec![local.endpoint.clone()], Some(local))
    } else {
        (config.etcd.endpoints.clone(), None)
    };
    // The local etcd takes only the client certificate its own CA issued this coordinator.
    let etcd_config = match &local {
        Some(local) => local.connect_config(&config.etcd),
        None => config.etcd.clone(),
    };
    let metrics = metrics::Metrics::new();
    let mut etcd = etcd_conn::connect(&etcd_config, &endpoints, &metrics.etcd).await?;
    if let Some(local) = &local {
        local.record_peer_url(&mut etcd).await;
    }
    // Granted by its keeper, on a thread and connection of its own (`lease`).
    let keeper = lease::LeaseKeeper::start(
        etcd_config.clone(),
        endpoints.clone(),
        metrics.etcd.clone(),
        config.etcd.lease_ttl,
        cancel.clone(),
    )
    .await?;
    let lease = keeper.lease;
    let keepalive = keeper.stopped();
    // An early return below stops the keeper's thread too.
    let _stop_keeper = cancel.clone().drop_guard();

    etcd.put(
        Keys::new(&config.etcd.prefix).replica(&config.replica_id),
        config.advertise.clone(),
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .context("cannot register this replica in etcd")?;
    let artifacts = ArtifactStore::new(
        config.state_dir.join("artifacts"),
        config.max_artifact_bytes,
    )?;
    let listen = config.listen;
    let tls = tls::ServerTls::load(&config.tls, config.access.deny_list.as_deref())
        .context("cannot set up mTLS ([tls] and [access] in the config)")?;
    let opening = &config.agents.opening;
    let hub = Hub::new(sessions::opening::OpeningTurns::new(
        opening.turns,
        opening.wait,
    ));
    let ctx = Arc::new(Ctx {
        etcd,
        keys: Keys::new(&config.etcd.prefix),
        config,
        lease,
        hub,
        artifacts,
        tls: tls.clone(),
        tasks: TaskTracker::new(),
        metrics,
        results_recorded: tokio::sync::Notify::new(),
        handover: handover::Inbox::default(),
    });
    rollgate_proto::metrics::serve(
        &ctx.config.metrics,
        ctx.metrics.registry.clone(),
        cancel.clone(),
    )
    .await?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; is another coordinator running there? Change `listen` in the config"))?;
    let local_addr = listener.local_addr()?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServiceServer<grpc::AgentApi>>()
        .await;
    let agent_api = grpc::AgentApi {
        ctx: ctx.clone(),
        shutdown: cancel.clone(),
    };
    let control_api = grpc::ControlApi {
        ctx: ctx.clone(),
        shutdown: cancel.clone(),
    };
    let max = rollgate_proto::MAX_MESSAGE_BYTES;
    let server_cancel = cancel.clone();
    let checked = tls.clone();
    let control = ControlServiceServer::new(control_api).max_decoding_message_size(max);
    let control = tonic::service::interceptor::InterceptedService::new(
        control,
        move |req: tonic::Request<()>| {
            use rollgate_proto::tls::Role;
            // Which operator role may call which RPC: roles::authorize in each handler.
            tls::require(
                &req,
                checked.as_deref(),
                &[Role::Operator, Role::Viewer, Role::Deployer],
                "the control API",
            )?;
            Ok(req)
        },
    );
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health_service)
        .add_service(AgentServiceServer::new(agent_api).max_decoding_message_size(max))
        .add_service(control);
    let stop = async move { server_cancel.cancelled().await };
    let server = match &tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            tls::incoming(listener, tls.clone(), cancel.clone()),
            stop,
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )),
    };
    info!(replica = %ctx.config.replica_id, %local_addr, "coordinator listening");

    let driver = tokio::spawn(driver::run(ctx.clone(), cancel.clone()));
    let dispatcher = tokio::spawn(sessions::dispatch_orders(ctx.clone(), cancel.clone()));
    rollgate_proto::telemetry::notify_ready();

    let outcome = tokio::select! {
        _ = shutdown => {
            info!("shutting down: closing agent sessions, resigning leadership");
            Ok(())
        }
        e = keepalive => {
            error!("{e:#}: this replica's sessions and leadership are void; exiting so that its agents reconnect to another replica and a supervisor restarts it cleanly");
            Err(e)
        }
    };
    rollgate_proto::telemetry::notify_stopping();
    let stopped = stop_in_order(&ctx, &cancel, [driver, dispatcher], server);
    let grace = if outcome.is_ok() {
        SHUTDOWN_GRACE
    } else {
        LEASE_LOST_GRACE
    };
    if tokio::time::timeout(grace, stopped).await.is_err() {
        warn!(
            unfinished = ctx.tasks.len(),
            "shutdown took longer than {grace:?}; exiting anyway (agents reconnect to another \
             replica and re-send what they had not reported)"
        );
    }
    if outcome.is_ok() {
        // Sessions end now rather than when the lease times out.
        let _ = ctx.etcd.clone().lease_revoke(lease).await;
    }
    etcd_cancel.cancel();
    if let Some(local) = local {
        local.stopped().await;
    }
    outcome
}

/// Stops a replica in order: no new work (cancel: the listener stops accepting, every session and
/// watch is told to end), the leader's driver and the order dispatcher finish the transaction
/// they are in, then every session and watch ends (a session finishes the write it is in and
/// clears its session key), then the server.
async fn stop_in_order(
    ctx: &Ctx,
    cancel: &CancellationToken,
    loops: [tokio::task::JoinHandle<()>; 2],
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let started = std::time::Instant::now();
    info!(
        open = ctx.tasks.len(),
        "shutting down: waiting for the agent sessions, watches and downloads to end"
    );
    cancel.cancel();
    for task in loops {
        let _ = task.await;
    }
    ctx.tasks.close();
    ctx.tasks.wait().await;
    // Unary calls in flight finish here. Agents keep their (now idle) connections open to retry
    // on them, which would hold a graceful drain for ever: they are closed after a short wait.
    if tokio::time::timeout(SERVER_DRAIN, server).await.is_err() {
        debug!("connections still open after {SERVER_DRAIN:?} (agents retrying); closing them");
    }
    info!(
        took_ms = started.elapsed().as_millis() as u64,
        "shutdown complete: every session, watch and download ended"
    );
}
