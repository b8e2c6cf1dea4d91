//! One service's task: supervision, health transitions, and its orders one at a time.

use std::sync::Arc;

use rollgate_proto::pb::{self, agent_message::Msg, Health, Step};
use rollgate_proto::spec::human;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ServiceConfig;
use crate::executor::{self, Accepted, Finished, OrderRef, Shared, KEEP_RELEASES};
use crate::fetch::Fetcher;
use crate::journal::InFlight;
use crate::probe::Prober;
use crate::process::{Exit, ProcessError, Supervisor};
use crate::releases::ServiceDir;

/// Everything one service's task owns.
#[derive(Debug)]
pub(crate) struct ServiceUnit {
    pub(crate) cfg: Arc<ServiceConfig>,
    pub(crate) dir: ServiceDir,
    pub(crate) supervisor: Supervisor,
    pub(crate) prober: Prober,
    pub(crate) fetcher: Fetcher,
    pub(crate) shared: Arc<Shared>,
    /// (health, version, sha256) last reported, so only transitions are sent.
    last_sent: Option<(i32, String, String)>,
    /// Why the process is down (shown as STOPPED's detail).
    down_reason: Option<String>,
    /// When to restart a process that exited on its own.
    restart_at: Option<Instant>,
}

impl ServiceUnit {
    pub(crate) fn new(
        cfg: Arc<ServiceConfig>,
        dir: ServiceDir,
        prober: Prober,
        fetcher: Fetcher,
        shared: Arc<Shared>,
    ) -> ServiceUnit {
        let supervisor = Supervisor::new(dir.clone(), cfg.clone());
        ServiceUnit {
            cfg,
            dir,
            supervisor,
            prober,
            fetcher,
            shared,
            last_sent: None,
            down_reason: None,
            restart_at: None,
        }
    }

    /// The task: start (or undo an interrupted update), then supervise, probe and take orders
    /// until `cancel`; then stop the process.
    /// `interrupted` is the order a previous agent left unfinished, read from the journal before
    /// any new order could be accepted.
    pub(crate) async fn run(
        mut self,
        interrupted: Option<InFlight>,
        mut orders: mpsc::Receiver<Accepted>,
        cancel: CancellationToken,
    ) {
        let span = tracing::info_span!("service", service = %self.cfg.name);
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
                        let span =
                            tracing::info_span!("order", rollout = %id.rollout_id, token = id.token);
                        let update = executor::carry_out(&mut self, &order).instrument(span);
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
                        next_probe = Instant::now() + self.prober.interval();
                    }
                    exit = self.supervisor.exited() => self.on_exit(exit),
                    _ = tokio::time::sleep_until(restart_at.unwrap_or(next_probe)),
                        if restart_at.is_some() => {
                        self.restart().await
                    }
                    _ = tokio::time::sleep_until(next_probe) => {
                        self.watch_health().await;
                        next_probe = Instant::now() + self.prober.interval();
                    }
                }
            }
            if self.supervisor.is_running() {
                tracing::info!("stopping {} (the agent is shutting down)", self.cfg.name);
            }
            self.supervisor.stop().await;
        }
        .instrument(span)
        .await
    }

    /// Frees the port from a process a previous agent left, then either undoes an update that
    /// agent left unfinished or starts the installed release.
    async fn startup(&mut self, interrupted: Option<InFlight>) {
        if let Some(pid) = self.supervisor.stop_leftover().await {
            tracing::info!("stopped process {pid}, left running by a previous agent");
        }
        if let Some(f) = interrupted {
            let span = tracing::info_span!("order", rollout = %f.rollout_id, token = f.token);
            let done = executor::recover(self, &f).instrument(span).await;
            self.finish(done);
            return;
        }
        match self.supervisor.start().await {
            Ok(_) => {}
            Err(ProcessError::NotInstalled(_)) => {
                tracing::info!(
                    "no release of {} is installed yet; waiting for an order",
                    self.cfg.name
                );
            }
            Err(e) => self.schedule_restart(format!("cannot start: {e}")),
        }
    }

    /// Commits how an order ended: journal (durable), old releases, the result, the status.
    fn finish(&mut self, f: Finished) {
        let service = self.cfg.name.clone();
        let keep = {
            let mut journal = self.shared.journal();
            if let Err(e) = journal.finish(&service, &f.result, f.committed.as_deref()) {
                tracing::error!("{e}; the result is sent but will not survive an agent restart");
            }
            let mut keep: Vec<String> = journal
                .history(&service)
                .iter()
                .rev()
                .take(KEEP_RELEASES)
                .cloned()
                .collect();
            keep.extend(f.previous.clone());
            // Staged for an order still to come (see `staging`).
            keep.extend(journal.staged(&service).iter().cloned());
            keep
        };
        if f.committed.is_some() {
            match self.dir.prune(&keep) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!("removed old releases: {}", removed.join(", "))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot remove old releases: {e}"),
            }
        }
        self.shared.clear_progress(&service);
        let r = &f.result;
        let line = format!("order finished: {} ({})", r.outcome().word(), r.reason);
        match r.outcome() {
            pb::Outcome::Succeeded | pb::Outcome::RolledBack => tracing::info!("{line}"),
            _ => tracing::warn!("{line}"),
        }
        self.shared.send(Msg::Result(f.result.clone()));

        if f.result.outcome() == pb::Outcome::Refused {
            // A refusal touched nothing: supervision and health reports carry on as before.
            return;
        }
        // The update drove the process itself; from here on it is supervised again.
        self.down_reason = None;
        self.restart_at = None;
        if !self.supervisor.is_running() && matches!(self.dir.current(), Ok(Some(_))) {
            self.schedule_restart(format!("{}; restarting", f.result.reason));
        } else {
            let health = f.result.health();
            let detail = if health == Health::Healthy {
                String::new()
            } else {
                f.result.reason.clone()
            };
            self.publish(health, detail);
        }
    }

    /// Records a step of the order in flight (durably) and tells the coordinator.
    pub(crate) fn advance(
        &self,
        id: &OrderRef,
        step: Step,
        message: String,
        previous: Option<(Option<String>, String)>,
    ) {
        tracing::info!("{}: {message}", step.word());
        if let Err(e) = self.shared.journal().step(&id.service, step, previous) {
            tracing::error!("{e}; continuing");
        }
        let progress = id.progress(step, message);
        self.shared.set_progress(progress.clone());
        self.shared.send(Msg::Progress(progress));
    }

    /// Version `current` names ("" if none) and the health the service last showed.
    pub(crate) fn running_state(&self) -> (String, Health) {
        let version = match self.dir.current() {
            Ok(Some(r)) => r.info.version,
            _ => String::new(),
        };
        let health = self
            .shared
            .status(&self.cfg.name)
            .map_or(Health::Unknown, |s| s.health());
        (
            version,
            if self.supervisor.is_running() {
                health
            } else {
                Health::Stopped
            },
        )
    }

    /// UNHEALTHY if the process runs (it failed its probes), STOPPED if it does not.
    pub(crate) fn running_health(&self) -> Health {
        if self.supervisor.is_running() {
            Health::Unhealthy
        } else {
            Health::Stopped
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        tracing::warn!(
            release = %exit.release,
            "{} {}; restarting it in {}",
            self.cfg.name,
            exit.description,
            human(self.cfg.restart_delay)
        );
        self.schedule_restart(exit.description);
    }

    fn schedule_restart(&mut self, why: String) {
        let delay = self.cfg.restart_delay;
        self.restart_at = Some(Instant::now() + delay);
        self.down_reason = Some(format!("{why}; restarting in {}", human(delay)));
        self.publish(
            Health::Stopped,
            self.down_reason.clone().unwrap_or_default(),
        );
    }

    async fn restart(&mut self) {
        self.restart_at = None;
        match self.supervisor.start().await {
            Ok(_) => self.down_reason = None,
            Err(ProcessError::NotInstalled(_)) => {
                self.down_reason = None;
                self.publish(Health::Stopped, "no release installed".into());
            }
            Err(e) => {
                tracing::warn!("cannot restart {}: {e}", self.cfg.name);
                self.schedule_restart(format!("cannot start: {e}"));
            }
        }
    }

    /// One idle health round: probes if the process runs, then report any transition.
    async fn watch_health(&mut self) {
        let (health, detail) = match self.dir.current() {
            Err(e) => (Health::Unknown, e.to_string()),
            Ok(None) => (Health::Stopped, "no release installed".to_string()),
            Ok(Some(_)) if !self.supervisor.is_running() => (
                Health::Stopped,
                self.down_reason
                    .clone()
                    .unwrap_or_else(|| "process is not running".into()),
            ),
            Ok(Some(_)) if self.prober.is_empty() => (
                Health::Healthy,
                "process running; no probes configured".into(),
            ),
            Ok(Some(_)) => {
                let checked = tokio::select! {
                    exit = self.supervisor.exited() => Err(exit),
                    r = self.prober.check() => Ok(r),
                };
                match checked {
                    Err(exit) => return self.on_exit(exit),
                    Ok(Ok(())) => (Health::Healthy, String::new()),
                    Ok(Err(e)) => (Health::Unhealthy, e),
                }
            }
        };
        self.publish(health, detail);
    }

    /// Updates the status hellos report, and sends it if health or version changed.
    fn publish(&mut self, health: Health, detail: String) {
        let (version, sha256) = match self.dir.current() {
            Ok(Some(r)) => (r.info.version, r.info.sha256),
            _ => (String::new(), String::new()),
        };
        let status = pb::ServiceStatus {
            service: self.cfg.name.clone(),
            version,
            sha256,
            health: health as i32,
            detail,
        };
        self.shared.set_status(status.clone());
        let key = (status.health, status.version.clone(), status.sha256.clone());
        if self.last_sent.as_ref() != Some(&key) {
            let on = if status.version.is_empty() {
                String::new()
            } else {
                format!(" on {}", status.version)
            };
            let why = if status.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", status.detail)
            };
            tracing::info!("{} is {}{on}{why}", self.cfg.name, health.word());
            self.last_sent = Some(key);
            self.shared.send(Msg::Status(status));
        }
    }
}
