//! rollgate-agent: the daemon on every host. It dials out to a coordinator (any of its
//! replicas), reports its services' releases and health, stages releases ahead of their slot
//! on request, and carries out update orders: fetch and verify a release (unless it is
//! staged), swap it in, restart, watch its health, and commit or roll back, so that whatever
//! happens the service ends on exactly the old or the new release.
//!
//! Layout (public: [`config`], [`release::unpack`], [`check_tls`] and
//! [`on_coordinator_message`] for the fuzz targets, and [`run`], [`Executor`], [`Outbox`] and
//! [`Fetcher`] for the agent's tests; the rest is crate-private):
//! - [`config`]: the agent's TOML config and its validation.
//! - `session`: the bidi stream to the coordinator (hello, heartbeats, orders, results) and
//!   reconnecting with backoff, round-robin over the coordinator replicas.
//! - `update`: carrying out orders.
//!   - `update::executor`: order intake with fencing tokens, stage orders, hellos.
//!   - `update::order`, `update::shared`: what intake and the service tasks share (the order
//!     types; the journal, status board and outbox).
//!   - `update::context`: what the update procedure works on (`ServiceContext`).
//!   - `update::procedure`: the update procedure itself (stage, drain, swap, restart, verify,
//!     undrain, commit or roll back) and the undo of an update an agent restart interrupted:
//!     one path whatever runs the service.
//!   - `update::staging`: getting a verified release dir, ahead of the slot (stage orders,
//!     which run beside an update) or as an update's first step; pins staged releases against
//!     pruning.
//!   - `update::status`: what the agent reports about each service (latest status, order in
//!     flight) and the clock that orders observations and results.
//!   - `update::service`: one task per service: supervision, idle health reports (and
//!     regressions within `watch_after_commit`), running its orders.
//!   - `update::hooks`: the operator's commands around an update (pre_stop, pre_start,
//!     post_start, on_rollback).
//! - `backend`: the seam between the update procedure and what runs a service;
//!   `backend::select` picks the one a service's config asks for.
//!   - `backend::process`: the process backend (start, stop by process group, pidfile;
//!     `backend::process::adopt`: taking over what a previous agent left running).
//!   - `backend::systemd`: the systemd backend (restart a unit over D-Bus, judge it by its
//!     state).
//!   - `backend::container`: the container backend (Docker Engine API: load, create, start,
//!     stop, remove).
//! - `probe`: http/tcp/exec/systemd/grpc health probes, their thresholds, and the
//!   min-healthy-time rule.
//! - [`release`]: releases, from download to a release dir.
//!   - `release::trust`: which releases this host accepts before touching anything:
//!     signatures by pinned keys, the size cap, no downgrade but an explicit rollback.
//!   - `release::fetch`: downloading artifacts (store, http, file), resuming, size and
//!     digest checks.
//!   - `release::releases`: a service's directory: staging, release dirs, the `current`
//!     link.
//!   - [`release::unpack`]: tarball releases, unpacked without escaping their release dir,
//!     modes normalized.
//!   - `release::release_tree`: what a release dir held when installed, checked before each
//!     start.
//! - [`upgrade`]: the agent upgrading itself through a rollout of `rollgate-agent` (re-exec
//!   into the new binary, confirm or put the old one back).
//! - `state`: what survives a restart.
//!   - `state::journal`: the durable state file (highest token, orders in flight, recent
//!     results).
//!   - `state::durable`: write-fsync-rename-fsync and link swaps by rename.
//!
//! The binary (`main.rs`) only parses the command line and calls [`run`].
//!
//! State dir:
//!
//! ```text
//! <state_dir>/
//!   agent.lock            held (flock) while an agent runs: one agent per state dir
//!   agent-state.json      the journal: highest token per service, orders in flight, last
//!                         32 results (with when they finished), releases staged for
//!                         orders still to come, releases each
//!                         service ran (the only ones a rollback may go back to)
//!   services/<svc>/       one per configured service; see `release::releases`
//! ```

#![warn(missing_docs)]

pub(crate) mod backend;
pub mod config;
mod errors;
pub(crate) mod metrics;
pub(crate) mod probe;
pub mod release;
pub(crate) mod session;
pub(crate) mod state;
pub(crate) mod update;
pub mod upgrade;

use std::future::Future;

use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use release::fetch::Fetcher;
pub use session::{check_tls, on_message as on_coordinator_message};
pub use update::executor::{Executor, Outbox, StartError};
pub use update::{FaultInjectionMissing, CRASH_AT_ENV};

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The executor (state dir, journal, services) could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The download client could not be set up.
    #[error(transparent)]
    Fetch(#[from] release::fetch::FetchError),
    /// The `[tls]` settings are missing or unusable.
    #[error("cannot connect securely: {0}")]
    Tls(String),
    /// `[metrics]` cannot be served: the address is taken, or its TLS files are unusable.
    #[error("{0}")]
    Metrics(String),
    /// The test-only crash setting is present but this build has no fault injection.
    #[error(transparent)]
    FaultInjection(#[from] FaultInjectionMissing),
}

/// Runs the agent until `shutdown` completes (`Ok(None)`) or its self-upgrade wants it
/// re-executed (`Ok(Some(what))`, for the caller to [`upgrade::exec`]): starts the services (undoing an update a
/// previous run left unfinished), keeps a session with the coordinator, and carries out its
/// orders. On shutdown it stops taking orders first, then leaves the services running for the
/// next agent to adopt (or stops those with `stop_with_agent = true`).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<upgrade::Reexec>, AgentError> {
    // Before anything is touched: a test asking for crash points must not run without them.
    update::check_build()?;
    session::check_tls(&config).map_err(AgentError::Tls)?;
    // A bad [metrics] TLS file stops the agent before it touches a service.
    rollgate_proto::metrics_tls::acceptor(&config.metrics)
        .map_err(|e| AgentError::Metrics(e.to_string()))?;
    let (channel_tx, channel_rx) = watch::channel(None);
    let fetcher = release::fetch::Fetcher::new(channel_rx, config.sources.ca_file.as_deref())?;
    let (executor, mut outbox) = Executor::start(&config, fetcher)?;
    tracing::info!(
        host = %config.host_id,
        services = config.services.len(),
        state_dir = %config.state_dir.display(),
        "rollgate-agent {} started; connecting to {}",
        env!("CARGO_PKG_VERSION"),
        config.coordinators.join(", then ")
    );
    rollgate_proto::telemetry::notify_ready();

    let cancel = CancellationToken::new();
    let registry = crate::metrics::get().registry.clone();
    rollgate_proto::metrics::serve(&config.metrics, registry, cancel.clone())
        .await
        .map_err(|e| AgentError::Metrics(e.to_string()))?;
    let session_cfg = session::SessionConfig {
        coordinators: config.coordinators.clone(),
        heartbeat_interval: config.heartbeat_interval,
        tls: config.tls.clone(),
    };
    let mut reexec = None;
    {
        let session = session::run(
            session_cfg,
            &executor,
            &mut outbox,
            channel_tx,
            cancel.clone(),
        );
        tokio::pin!(session);
        tokio::select! {
            _ = &mut session => {}
            r = executor.reexec_wanted() => {
                tracing::info!(
                    "re-executing {} (services keep running and are adopted)",
                    r.binary.display()
                );
                reexec = Some(r);
                cancel.cancel();
                session.await;
            }
            _ = shutdown => {
                tracing::info!(
                    "shutting down: no new orders; services keep running for the next agent \
                     (those with stop_with_agent = true are stopped)"
                );
                rollgate_proto::telemetry::notify_stopping();
                cancel.cancel();
                session.await;
            }
        }
    }
    executor.shutdown().await;
    if reexec.is_none() {
        tracing::info!("rollgate-agent stopped");
    }
    Ok(reexec)
}
