//! What the update procedure works on: one service's config, dir, backend, probes and
//! downloads, and how it reports (steps to the journal and the coordinator, statuses).
//! The service's task owns it and lends it to the procedure for each order.

use std::sync::Arc;

use rollgate_proto::pb::{self, agent_message::Msg, Health, Step};
use rollgate_proto::spec::human;
use rollgate_proto::telemetry::{self, Ids};
use tokio::time::Instant;

use crate::backend::{Backend, Reporter};
use crate::config::ServiceConfig;
use crate::probe::Prober;
use crate::release::fetch::Fetcher;
use crate::release::releases::ServiceDir;
use crate::update::order::OrderRef;
use crate::update::shared::Shared;
use crate::update::status;

/// One service as the update procedure sees it.
#[derive(Debug)]
pub(crate) struct ServiceContext {
    pub(crate) cfg: Arc<ServiceConfig>,
    pub(crate) dir: ServiceDir,
    /// What runs the service (process, systemd, container).
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) prober: Prober,
    pub(crate) fetcher: Fetcher,
    pub(crate) shared: Arc<Shared>,
    /// This host's id, for the hooks' environment.
    pub(crate) host_id: Arc<str>,
    /// Until when a failing health check counts as a regression of the release just
    /// committed (`watch_after_commit`).
    pub(crate) watch_until: Option<Instant>,
    /// A regression was reported and the service has not been healthy since.
    pub(crate) regressed: bool,
}

impl ServiceContext {
    /// Records a step of the order in flight (durably) and tells the coordinator. `Err` (the
    /// reason) when the journal could not record it: the step must then not be done (S5: the
    /// agent journals each step before doing it), so the caller refuses or undoes the update.
    pub(crate) fn advance(
        &self,
        id: &OrderRef,
        step: Step,
        message: String,
        previous: Option<(Option<String>, String)>,
    ) -> Result<(), String> {
        let ids = Ids {
            rollout: &id.rollout_id,
            host: &self.host_id,
            service: &id.service,
        };
        telemetry::info_with_ids(ids, &format!("{}: {message}", step.word()));
        let journaled = self.shared.journal().step(&id.service, step, previous);
        crash_point(step);
        if let Err(e) = journaled {
            let why = format!("cannot journal the {} step: {e}", step.word());
            tracing::error!("{why}");
            return Err(why);
        }
        let progress = id.progress(step, message);
        self.shared.set_progress(progress.clone());
        self.shared.send(Msg::Progress(progress));
        Ok(())
    }

    /// Where a long part of `step` (an image pull) reports its progress: to the log and the
    /// coordinator (as the order's progress, not journaled: it is no new step).
    pub(crate) fn reporter(&self, id: &OrderRef, step: Step) -> Reporter {
        let (shared, id, host) = (self.shared.clone(), id.clone(), self.host_id.clone());
        Arc::new(move |message: String| {
            let ids = Ids {
                rollout: &id.rollout_id,
                host: &host,
                service: &id.service,
            };
            telemetry::info_with_ids(ids, &format!("{}: {message}", step.word()));
            let progress = id.progress(step, message);
            shared.set_progress(progress.clone());
            shared.send(Msg::Progress(progress));
        })
    }

    /// [`ServiceContext::advance`] on the way back to the previous release: going back is safe
    /// at every step, and the order still in the journal makes a restarted agent undo it too,
    /// so a step the journal cannot record is reported and the undo goes on.
    pub(crate) fn advance_undo(&self, id: &OrderRef, step: Step, message: String) {
        if let Err(why) = self.advance(id, step, message.clone(), None) {
            tracing::warn!("{why}; undoing the update anyway (going back is always safe)");
            let progress = id.progress(step, message);
            self.shared.set_progress(progress.clone());
            self.shared.send(Msg::Progress(progress));
        }
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
            if self.backend.is_up() {
                health
            } else {
                Health::Stopped
            },
        )
    }

    /// UNHEALTHY if the service runs (it failed its probes), STOPPED if it does not.
    pub(crate) fn running_health(&self) -> Health {
        if self.backend.is_up() {
            Health::Unhealthy
        } else {
            Health::Stopped
        }
    }

    /// Records what the service is doing now (the status hellos report, stamped with the time
    /// and any order in flight), and sends it if health, release or order changed. Within
    /// `watch_after_commit` of a commit, not being healthy is reported as a regression (and
    /// stays so labelled until the service is healthy again). A release that is installed but
    /// cannot be identified makes the service UNHEALTHY whatever `health` says.
    pub(crate) fn publish(&mut self, health: Health, detail: String) {
        let (version, sha256, health, detail) = match status::current_release(&self.dir) {
            Ok(Some((v, s))) => (v, s, health, detail),
            Ok(None) => (String::new(), String::new(), health, detail),
            Err(broken) => (String::new(), String::new(), Health::Unhealthy, broken),
        };
        let detail = self.label_regression(health, detail);
        let status = pb::ServiceStatus {
            service: self.cfg.name.clone(),
            version,
            sha256,
            health: health as i32,
            detail,
            regressed: self.regressed,
            ..Default::default()
        };
        if let Some(status) = self.shared.board.observe(status) {
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
            let order = match status.in_flight_token {
                0 => String::new(),
                t => format!(" (order {t} in flight)"),
            };
            tracing::info!("{} is {}{on}{why}{order}", self.cfg.name, health.word());
        }
    }

    fn label_regression(&mut self, health: Health, detail: String) -> String {
        if health == Health::Healthy {
            self.regressed = false;
            return detail;
        }
        let watching = self.watch_until.is_some_and(|t| Instant::now() < t);
        if !self.regressed && !watching {
            return detail;
        }
        if !self.regressed {
            self.regressed = true;
            self.watch_until = None;
            tracing::warn!(
                "{} regressed within {} of its last commit: {detail}",
                self.cfg.name,
                human(self.cfg.watch_after_commit)
            );
        }
        format!("regressed after commit: {detail}")
    }
}

/// The environment variable that arms the crash points (test-only; see [`crash_point`]).
pub const CRASH_AT_ENV: &str = "ROLLGATE_TEST_CRASH_AT";

/// Test-only fault injection for the crash-safety tests (S5): with `ROLLGATE_TEST_CRASH_AT`
/// set to a step word (`fetching`, `staged`, `swapping`, `starting`, `verifying`, `rolling
/// back`), the agent aborts right after journaling that step, before doing it, as a power cut
/// or kill -9 would. Compiled only with the `fault-injection` feature (`tests/run.sh`); read on
/// every step so a test can arm it.
#[cfg(feature = "fault-injection")]
fn crash_point(step: Step) {
    if let Some(at) = std::env::var_os(CRASH_AT_ENV) {
        if at == step.word() {
            tracing::error!(
                "{CRASH_AT_ENV}={}: aborting now (fault injection)",
                step.word()
            );
            std::process::abort();
        }
    }
}

/// Without the `fault-injection` feature there are no crash points (and [`check_build`] refuses
/// to start an agent that was asked for them).
#[cfg(not(feature = "fault-injection"))]
fn crash_point(_step: Step) {}

/// Why an agent refuses to start over its fault-injection setting.
#[derive(Debug, thiserror::Error)]
#[error(
    "{CRASH_AT_ENV} is set (to {value:?}), but this rollgate-agent was built without fault \
     injection, so no crash would happen where the test expects one; the agent does not start. \
     It is a test-only setting: unset it, or build the agent with `cargo build --workspace \
     --bins --features rollgate-agent/fault-injection` (tests/run.sh does)"
)]
pub struct FaultInjectionMissing {
    /// What the variable was set to.
    pub value: String,
}

/// Checks the fault-injection setting against this build: a build without the
/// `fault-injection` feature refuses `ROLLGATE_TEST_CRASH_AT` rather than ignore it, so a test
/// run with the wrong binaries fails with the reason. A build with it says at start when a
/// crash point is armed.
pub fn check_build() -> Result<(), FaultInjectionMissing> {
    let Some(value) = std::env::var_os(CRASH_AT_ENV) else {
        return Ok(());
    };
    let value = value.to_string_lossy().into_owned();
    if cfg!(feature = "fault-injection") {
        tracing::warn!(
            "{CRASH_AT_ENV}={value:?}: fault injection armed, this agent aborts right after \
             journaling that step (test-only)"
        );
        return Ok(());
    }
    Err(FaultInjectionMissing { value })
}
