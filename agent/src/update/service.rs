//! One service's task: supervision, health transitions, and its orders one at a time.

use std::sync::Arc;

use rollgate_proto::pb::{self, agent_message::Msg, Health};
use rollgate_proto::spec::human;
use rollgate_proto::telemetry::{self, Ids};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{self, BackendError, Exit};
use crate::config::ServiceConfig;
use crate::probe::Prober;
use crate::release::fetch::Fetcher;
use crate::release::releases::ServiceDir;
use crate::state::journal::{InFlight, Journal};
use crate::update::context::ServiceContext;
use crate::update::order::{Accepted, Finished};
use crate::update::shared::Shared;
use crate::update::{procedure, staging};

/// How many committed releases each service keeps on disk (plus the one before the last update).
pub const KEEP_RELEASES: usize = 3;
/// How long a restart after an unexpected exit may take to come up (only backends the agent
/// restarts get here; the process backend is up once spawned).
const SUPERVISED_RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Everything one service's task owns.
#[derive(Debug)]
pub(crate) struct ServiceUnit {
    /// What the update procedure works on.
    pub(crate) ctx: ServiceContext,
    /// Why the service is down (shown as STOPPED's detail).
    down_reason: Option<String>,
    /// When to restart a process that exited on its own (only backends the agent restarts).
    restart_at: Option<Instant>,
}

impl ServiceUnit {
    pub(crate) fn new(
        cfg: Arc<ServiceConfig>,
        dir: ServiceDir,
        prober: Prober,
        fetcher: Fetcher,
        shared: Arc<Shared>,
        host_id: Arc<str>,
    ) -> ServiceUnit {
        let backend = backend::select::for_service(dir.clone(), cfg.clone());
        ServiceUnit {
            ctx: ServiceContext {
                cfg,
                dir,
                backend,
                prober,
                fetcher,
                shared,
                host_id,
                watch_until: None,
                regressed: false,
            },
            down_reason: None,
            restart_at: None,
        }
    }

    /// The task: start (or undo an interrupted update), then supervise, probe and take orders
    /// until `cancel`; then hand the service to the backend's shutdown (the process backend
    /// stops it; a systemd unit keeps running).
    /// `interrupted` is the order a previous agent left unfinished, read from the journal before
    /// any new order could be accepted.
    pub(crate) async fn run(
        mut self,
        interrupted: Option<InFlight>,
        mut orders: mpsc::Receiver<Accepted>,
        cancel: CancellationToken,
    ) {
        let span = tracing::info_span!("service", service = %self.ctx.cfg.name);
        async move {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {}
                _ = self.startup(interrupted) => {}
            }
            let mut next_probe = Instant::now();
            while !cancel.is_cancelled() {
                let restart_at = self.restart_at;
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    Some(order) = orders.recv() => {
                        let id = &order.id;
                        self.ctx.watch_until = None;
                        self.ctx.regressed = false;
                        let span =
                            tracing::info_span!("order", rollout = %id.rollout_id, token = id.token);
                        let update = procedure::carry_out(&mut self.ctx, &order).instrument(span);
                        let done = tokio::select! {
                            biased;
                            _ = cancel.cancelled() => None,
                            f = update => Some(f),
                        };
                        match done {
                            Some(f) => self.finish(f),
                            None => {
                                let v = &order.artifact.version;
                                tracing::warn!(
                                    "shutting down during the update to {v}; the next start undoes it"
                                );
                                break;
                            }
                        }
                        next_probe = Instant::now() + self.ctx.prober.interval();
                    }
                    exit = self.ctx.backend.exited() => self.on_exit(exit),
                    _ = tokio::time::sleep_until(restart_at.unwrap_or(next_probe)),
                        if restart_at.is_some() => {
                        self.restart().await
                    }
                    _ = tokio::time::sleep_until(next_probe) => {
                        self.watch_health().await;
                        next_probe = Instant::now() + self.ctx.prober.interval();
                    }
                }
            }
            self.ctx.backend.shutdown().await;
        }
        .instrument(span)
        .await
    }

    /// Either undoes an update a previous agent left unfinished, or takes the service over
    /// as that agent left it (process: frees the port from its leftover process, then starts
    /// the installed release; systemd: starts the unit unless it is active).
    async fn startup(&mut self, interrupted: Option<InFlight>) {
        if let Some(f) = interrupted {
            if let Some(note) = self.ctx.backend.reclaim().await {
                tracing::info!("{note}");
            }
            let span = tracing::info_span!("order", rollout = %f.rollout_id, token = f.token);
            let done = procedure::recover(&mut self.ctx, &f).instrument(span).await;
            self.finish(done);
            return;
        }
        // The agent starts `current` itself here (process backend): S8 first.
        if self.ctx.backend.agent_restarts() && !self.tree_intact().await {
            if let Some(note) = self.ctx.backend.reclaim().await {
                tracing::info!("{note}");
            }
            return;
        }
        let (note, started) = self.ctx.backend.adopt().await;
        if let Some(note) = note {
            tracing::info!("{note}");
        }
        match started {
            Ok(()) => {}
            Err(BackendError::NotInstalled(_)) => {
                tracing::info!(
                    "no release of {} is installed yet; waiting for an order",
                    self.ctx.cfg.name
                );
            }
            Err(e) => self.went_down(format!("cannot start: {e}")),
        }
    }

    /// Commits how an order ended: journal (durable), the result, the final status (with no
    /// order in flight), then old releases. The journal stays locked until the final status
    /// is recorded, so a hello sees the order either in flight or finished with the state it
    /// left, never the result with a status from before it.
    fn finish(&mut self, mut f: Finished) {
        let service = self.ctx.cfg.name.clone();
        let shared = self.ctx.shared.clone();
        let mut journal = shared.journal();
        f.result.finished_at_ms = shared.board.stamp();
        let keep = self.record(&mut journal, &f);
        let r = &f.result;
        let line = format!("order finished: {} ({})", r.outcome().word(), r.reason);
        let level = match r.outcome() {
            pb::Outcome::Succeeded | pb::Outcome::RolledBack => log::Level::Info,
            _ => log::Level::Warn,
        };
        let ids = Ids {
            rollout: &r.rollout_id,
            host: &self.ctx.host_id,
            service: &service,
        };
        telemetry::log_with_ids(level, ids, &line);
        crate::metrics::get().finished(&service, r.outcome());
        shared.send(Msg::Result(f.result.clone()));
        shared.board.end_order(&service);
        self.settle(&f.result);
        drop(journal);
        if f.committed.is_some() {
            match self.ctx.dir.prune(&keep) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!("removed old releases: {}", removed.join(", "))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot remove old releases: {e}"),
            }
        }
    }

    /// Journals how the order ended; returns the release dirs to keep.
    fn record(&self, journal: &mut Journal, f: &Finished) -> Vec<String> {
        let service = &self.ctx.cfg.name;
        // What a later explicit rollback may go back to (S8: no silent downgrades).
        if let Some(info) = f
            .committed
            .as_deref()
            .and_then(|d| self.ctx.dir.release_info(d).ok().flatten())
        {
            if let Err(e) = journal.record_ran(service, &info.version, &info.sha256) {
                tracing::error!("{e}; a later rollback to {} may be refused", info.version);
            }
        }
        if let Err(e) = journal.finish(service, &f.result, f.committed.as_deref()) {
            tracing::error!("{e}; the result is sent but will not survive an agent restart");
        }
        let mut keep: Vec<String> = journal
            .history(service)
            .iter()
            .rev()
            .take(KEEP_RELEASES)
            .cloned()
            .collect();
        keep.extend(f.previous.clone());
        // Staged for an order still to come (see `staging`).
        keep.extend(journal.staged(service).iter().cloned());
        keep
    }

    /// Takes the service back under supervision after an order, and reports the state the
    /// order left it in (always sent: the order in flight is over).
    fn settle(&mut self, result: &pb::OrderResult) {
        if result.outcome() == pb::Outcome::Refused {
            // A refusal touched nothing: supervision carries on as before.
            let last = self
                .ctx
                .shared
                .status(&self.ctx.cfg.name)
                .unwrap_or_default();
            return self.ctx.publish(last.health(), last.detail);
        }
        if result.outcome() == pb::Outcome::Succeeded && !self.ctx.cfg.watch_after_commit.is_zero()
        {
            self.ctx.watch_until = Some(Instant::now() + self.ctx.cfg.watch_after_commit);
        }
        // The update drove the service itself; from here on it is supervised again.
        self.down_reason = None;
        self.restart_at = None;
        if !self.ctx.backend.is_up() && matches!(self.ctx.dir.current(), Ok(Some(_))) {
            if self.ctx.backend.agent_restarts() {
                self.schedule_restart(format!("{}; restarting", result.reason));
            } else {
                self.went_down(result.reason.clone());
            }
        } else {
            let health = result.health();
            let detail = if health == Health::Healthy {
                String::new()
            } else {
                result.reason.clone()
            };
            self.ctx.publish(health, detail);
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        if self.ctx.backend.agent_restarts() {
            tracing::warn!(
                release = %exit.release,
                "{} {}; restarting it in {}",
                self.ctx.cfg.name,
                exit.description,
                human(self.ctx.cfg.restart_delay)
            );
            self.schedule_restart(exit.description);
        } else {
            tracing::warn!(release = %exit.release, "{}", exit.description);
            self.went_down(exit.description);
        }
    }

    /// The service is down. The agent restarts it after `restart_delay` if its backend
    /// leaves that to the agent; otherwise (systemd's `Restart=`) it only reports it.
    fn went_down(&mut self, why: String) {
        if self.ctx.backend.agent_restarts() {
            return self.schedule_restart(why);
        }
        self.down_reason = Some(why);
        self.ctx.publish(
            Health::Stopped,
            self.down_reason.clone().unwrap_or_default(),
        );
    }

    fn schedule_restart(&mut self, why: String) {
        let delay = self.ctx.cfg.restart_delay;
        self.restart_at = Some(Instant::now() + delay);
        self.down_reason = Some(format!("{why}; restarting in {}", human(delay)));
        self.ctx.publish(
            Health::Stopped,
            self.down_reason.clone().unwrap_or_default(),
        );
    }

    async fn restart(&mut self) {
        self.restart_at = None;
        if !self.tree_intact().await {
            return;
        }
        match self.ctx.backend.restart(SUPERVISED_RESTART_WAIT).await {
            Ok(_) => self.down_reason = None,
            Err(BackendError::NotInstalled(_)) => {
                self.down_reason = None;
                self.ctx
                    .publish(Health::Stopped, "no release installed".into());
            }
            Err(e) => {
                tracing::warn!("cannot restart {}: {e}", self.ctx.cfg.name);
                self.schedule_restart(format!("cannot start: {e}"));
            }
        }
    }

    /// S8 before the agent starts `current` on its own (after the service crashed, or at
    /// agent start): its files must be as installed. If not, the service stays down, not
    /// restarted again, with the reason (naming the file) as its status, until an order
    /// installs a release.
    async fn tree_intact(&mut self) -> bool {
        let Ok(Some(name)) = self.ctx.dir.current_dir() else {
            // Nothing installed, or unreadable: the start itself says so.
            return true;
        };
        let Err(why) = staging::check_tree(&self.ctx.dir, &name).await else {
            return true;
        };
        tracing::warn!("{}: {why}", self.ctx.cfg.name);
        self.restart_at = None;
        self.down_reason = Some(why);
        // Often STOPPED already ("restarting in ..."): the reason must reach the coordinator.
        self.ctx.shared.board.resend(&self.ctx.cfg.name);
        self.ctx.publish(
            Health::Stopped,
            self.down_reason.clone().unwrap_or_default(),
        );
        false
    }

    /// One idle health round: probes if the process runs, then report any transition.
    async fn watch_health(&mut self) {
        let (health, detail) = match self.ctx.dir.current() {
            Err(e) => (Health::Unhealthy, e.to_string()),
            Ok(None) => (Health::Stopped, "no release installed".to_string()),
            Ok(Some(_)) if !self.ctx.backend.is_up() => (
                Health::Stopped,
                self.down_reason
                    .clone()
                    .unwrap_or_else(|| "the service is not running".into()),
            ),
            Ok(Some(_)) if self.ctx.prober.is_empty() => {
                (Health::Healthy, "running; no probes configured".into())
            }
            Ok(Some(_)) => {
                let checked = tokio::select! {
                    exit = self.ctx.backend.exited() => Err(exit),
                    r = self.ctx.prober.check() => Ok(r),
                };
                match checked {
                    Err(exit) => return self.on_exit(exit),
                    Ok(Ok(())) => (Health::Healthy, String::new()),
                    Ok(Err(e)) => (Health::Unhealthy, e),
                }
            }
        };
        self.ctx.publish(health, detail);
    }
}
