//! The `rollgate-agent` service's task: carrying out an upgrade order up to the re-execution,
//! and, in the agent that starts next, confirming or reporting it (see the module doc).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rollgate_proto::pb::{self, agent_message::Msg, Health, Outcome, Step};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Marker, Reexec, ReexecSlot, Startup};
use crate::config::{SelfUpgradeConfig, AGENT_SERVICE};
use crate::release::fetch::Fetcher;
use crate::release::releases::ServiceDir;
use crate::state::durable;
use crate::state::journal::InFlight;
use crate::update::order::{Accepted, OrderRef};
use crate::update::shared::Shared;
use crate::update::staging;

/// How long the new binary may take to answer `--version` before it is judged broken.
const VERSION_CHECK: Duration = Duration::from_secs(10);

/// The upgrade task of the `rollgate-agent` service.
pub(crate) struct SelfUpgrade {
    pub cfg: SelfUpgradeConfig,
    pub dir: ServiceDir,
    pub fetcher: Fetcher,
    pub shared: Arc<Shared>,
    pub reexec: Arc<ReexecSlot>,
    /// Turns true when a coordinator welcomes this agent.
    pub welcomed: watch::Receiver<bool>,
}

/// The version this agent reports for `rollgate-agent`: the release it was installed from by
/// an upgrade, or its own build's.
pub(crate) fn installed_version(dir: &ServiceDir) -> (String, String) {
    match dir.current() {
        Ok(Some(r)) => (r.info.version, r.info.sha256),
        _ => (env!("CARGO_PKG_VERSION").to_string(), String::new()),
    }
}

/// The `rollgate-agent` service's status.
pub(crate) fn status(
    version: &str,
    sha256: &str,
    health: Health,
    detail: &str,
) -> pb::ServiceStatus {
    pb::ServiceStatus {
        service: AGENT_SERVICE.to_string(),
        version: version.to_string(),
        sha256: sha256.to_string(),
        health: health as i32,
        detail: detail.to_string(),
        ..Default::default()
    }
}

impl SelfUpgrade {
    /// Resolves what the previous agent left, then carries out upgrade orders until the agent
    /// stops or re-executes.
    pub(crate) async fn run(
        mut self,
        startup: Startup,
        mut orders: mpsc::Receiver<Accepted>,
        cancel: CancellationToken,
    ) {
        match startup {
            Startup::Idle => self.publish_installed("running"),
            Startup::Trial(m) => {
                if !self.confirm(m, &cancel).await {
                    return;
                }
            }
            Startup::TrialOver(m) => self.trial_over(m),
            Startup::Interrupted(f) => self.interrupted(f),
        }
        loop {
            tokio::select! {
                order = orders.recv() => match order {
                    Some(order) => {
                        if self.carry_out(order).await {
                            return;
                        }
                    }
                    None => return,
                },
                _ = cancel.cancelled() => return,
            }
        }
    }

    fn publish_installed(&self, detail: &str) {
        let (version, sha) = installed_version(&self.dir);
        self.shared
            .board
            .observe(status(&version, &sha, Health::Healthy, detail));
    }

    /// Ends the order with `result`: journaled, the order cleared from the status, sent.
    fn finish(&self, mut result: pb::OrderResult, committed: Option<&str>) {
        result.finished_at_ms = self.shared.board.stamp();
        if let Err(e) = self
            .shared
            .journal()
            .finish(AGENT_SERVICE, &result, committed)
        {
            tracing::error!("cannot record the upgrade's result durably: {e}");
        }
        self.shared.board.end_order(AGENT_SERVICE);
        self.publish_installed("running");
        self.shared.send(Msg::Result(result));
    }

    /// The new agent on trial: commit once welcomed within the deadline, else put the old one
    /// back. Returns false when the agent is re-executing.
    async fn confirm(&mut self, m: Marker, cancel: &CancellationToken) -> bool {
        let id = OrderRef {
            rollout_id: m.rollout_id.clone(),
            token: m.token,
            service: AGENT_SERVICE.into(),
        };
        let detail = format!(
            "agent {} started; waiting for a coordinator to welcome it (within {}s)",
            m.to_version,
            self.cfg.confirm_deadline.as_secs()
        );
        self.shared
            .set_progress(id.progress(Step::Verifying, detail.clone()));
        self.shared.board.observe(status(
            &m.to_version,
            &m.to_sha256,
            Health::Unknown,
            &detail,
        ));
        let deadline = self.cfg.confirm_deadline;
        let welcomed = tokio::select! {
            r = tokio::time::timeout(deadline, self.welcomed.wait_for(|w| *w)) => r.is_ok_and(|r| r.is_ok()),
            _ = cancel.cancelled() => return false,
        };
        if !welcomed {
            self.give_up(
                m,
                format!(
                    "the new agent did not get a coordinator's welcome within {}s",
                    deadline.as_secs()
                ),
            );
            return false;
        }
        match install_binary(&m.new_binary, &m.binary) {
            Ok(()) => {}
            Err(e) => {
                self.give_up(
                    m.clone(),
                    format!(
                        "cannot install the new agent over {}: {e}",
                        m.binary.display()
                    ),
                );
                return false;
            }
        }
        if let Err(e) = self.dir.point_current_at(&m.to_dir) {
            tracing::warn!(
                "the new agent is installed, but its release dir cannot be recorded: {e}"
            );
        }
        if let Err(e) = Marker::remove(self.dir.root()) {
            tracing::warn!(
                "cannot remove {}: {e}",
                Marker::path(self.dir.root()).display()
            );
        }
        tracing::info!(
            "upgraded from agent {} to {}: connected, installed at {}",
            m.from_version,
            m.to_version,
            m.binary.display()
        );
        let reason = format!("agent {} is running and connected", m.to_version);
        self.finish(
            id.result(Outcome::Succeeded, &m.to_version, Health::Healthy, reason),
            Some(&m.to_dir),
        );
        true
    }

    /// The trial failed: record why, and run the old binary again.
    fn give_up(&self, mut m: Marker, why: String) {
        tracing::error!(
            "{why}; putting agent {} back ({})",
            m.from_version,
            m.binary.display()
        );
        m.failed = Some(why);
        if let Err(e) = m.save(self.dir.root()) {
            tracing::error!("cannot record why the upgrade failed: {e}");
        }
        self.reexec.request(Reexec {
            binary: m.binary.clone(),
            trial: None,
        });
    }

    /// The old agent is back after a trial: the order rolled back.
    fn trial_over(&self, m: Marker) {
        let (version, _) = installed_version(&self.dir);
        let why = m.failed.clone().unwrap_or_else(|| {
            format!(
                "the new agent {} stopped before a coordinator welcomed it (did it crash at start? \
                 see the agent's log); the supervisor started the installed agent {} again",
                m.to_version, m.from_version
            )
        });
        tracing::warn!("upgrade to agent {} rolled back: {why}", m.to_version);
        if let Err(e) = Marker::remove(self.dir.root()) {
            tracing::warn!("cannot remove the upgrade marker: {e}");
        }
        let id = OrderRef {
            rollout_id: m.rollout_id,
            token: m.token,
            service: AGENT_SERVICE.into(),
        };
        self.finish(
            id.result(Outcome::RolledBack, &version, Health::Healthy, why),
            None,
        );
    }

    /// The agent died during an upgrade before re-executing: nothing was changed.
    fn interrupted(&self, f: InFlight) {
        let (version, _) = installed_version(&self.dir);
        let why = format!(
            "the agent restarted while preparing its upgrade to {}; nothing was changed",
            f.version
        );
        let id = OrderRef::from(&f);
        self.finish(
            id.result(Outcome::Interrupted, &version, Health::Healthy, why),
            None,
        );
    }

    /// Fetches and checks the new agent, then asks to re-execute into it. Returns true when
    /// the agent is re-executing.
    async fn carry_out(&mut self, order: Accepted) -> bool {
        let a = &order.artifact;
        let say = |step: Step, msg: String| {
            tracing::info!("{msg}");
            self.shared.set_progress(order.id.progress(step, msg));
        };
        say(Step::Fetching, format!("fetching agent {}", a.version));
        let obtained = match staging::obtain(&self.dir, &self.fetcher, a, || Ok(())).await {
            Ok(o) => o,
            Err(e) => return self.refused(&order, e),
        };
        let new_binary = self.dir.artifact_path(&obtained.dir);
        if let Err(e) = runs(&new_binary).await {
            return self.refused(&order, format!("the new agent binary does not run: {e}"));
        }
        let (from_version, _) = installed_version(&self.dir);
        let marker = Marker {
            rollout_id: order.id.rollout_id.clone(),
            token: order.id.token,
            from_version,
            to_version: a.version.clone(),
            to_sha256: a.sha256.clone(),
            to_dir: obtained.dir.clone(),
            new_binary: new_binary.clone(),
            binary: self.cfg.binary.clone(),
            failed: None,
        };
        if let Err(e) = marker.save(self.dir.root()) {
            return self.refused(&order, format!("cannot record the upgrade durably: {e}"));
        }
        say(
            Step::Starting,
            format!(
                "re-executing into agent {} (services keep running)",
                a.version
            ),
        );
        self.reexec.request(Reexec {
            binary: new_binary,
            trial: Some(order.id.token),
        });
        true
    }

    /// The upgrade cannot go ahead; nothing was changed. Returns false (keep taking orders).
    fn refused(&self, order: &Accepted, why: String) -> bool {
        tracing::warn!("upgrade to agent {} refused: {why}", order.artifact.version);
        let (version, _) = installed_version(&self.dir);
        self.finish(
            order
                .id
                .result(Outcome::Refused, &version, Health::Healthy, why),
            None,
        );
        false
    }
}

/// Whether `binary --version` runs and exits 0 in time.
async fn runs(binary: &Path) -> Result<(), String> {
    let child = tokio::process::Command::new(binary)
        .arg("--version")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(VERSION_CHECK, child).await {
        Err(_) => Err(format!(
            "`{} --version` did not answer within {}s",
            binary.display(),
            VERSION_CHECK.as_secs()
        )),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", binary.display())),
        Ok(Ok(out)) if !out.status.success() => Err(format!(
            "`{} --version` failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Copies `new` over `binary`: a sibling written and fsynced, mode 0755, renamed over it.
fn install_binary(new: &Path, binary: &Path) -> std::io::Result<()> {
    let tmp = durable::sibling(binary, ".rollgate-new");
    std::fs::copy(new, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, binary)?;
    durable::fsync_dir(binary.parent().unwrap_or(Path::new("/")))
}
