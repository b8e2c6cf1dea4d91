//! Staging: a verified release dir for an artifact, either ahead of its slot (a stage order)
//! or as the first step of an update. Nothing running is touched.
//!
//! A stage order runs beside the service's task, so it may overlap an update of the same
//! service. That is safe because every fetch and install holds a claim on the release's digest
//! ([`ServiceDir::claim`]): two orders for the same release take turns (the second finds the
//! first one's dir and reuses it), and pruning, which only runs when an update commits, skips
//! claimed files. A staged dir is then pinned in the journal, so pruning keeps it until the
//! next update order for the service is accepted (see [`Journal::begin`]).
//!
//! [`Journal::begin`]: crate::state::journal::Journal::begin

use std::sync::Arc;

use rollgate_proto::pb;

use crate::backend::{self, Reporter};
use crate::config::ServiceConfig;
use crate::release::fetch::{Artifact, Fetcher};
use crate::release::releases::{ReleaseClaim, ReleaseInfo, ServiceDir};
use crate::update::shared::Shared;

/// A verified release dir, still claimed: nobody else writes it and pruning leaves it alone
/// until the claim is dropped.
#[derive(Debug)]
pub(crate) struct Obtained {
    /// Dir name under `releases/`.
    pub dir: String,
    /// Whether the bytes were downloaded just now (`false`: a dir on disk was reused).
    pub downloaded: bool,
    /// Held until the caller has recorded the dir (pinned it, or swapped to it).
    pub claim: ReleaseClaim,
}

/// Gets a verified release dir for `a` in `dir`: reuses the one already on disk (its bytes are
/// hashed again, S8) or downloads, verifies and installs it; `on_fetch` runs just before a
/// download starts, and its error (the step could not be journaled) stops it. Never replaces the dir `current` points at. The error is for the operator.
pub(crate) async fn obtain(
    dir: &ServiceDir,
    fetcher: &Fetcher,
    a: &Artifact,
    on_fetch: impl FnOnce() -> Result<(), String>,
) -> Result<Obtained, String> {
    let claim = dir.claim(&a.sha256).await;
    let name = ServiceDir::release_dir_name(&a.version, &a.sha256);
    let (d, check, sha) = (dir.clone(), name.clone(), a.sha256.clone());
    let reusable = tokio::task::spawn_blocking(move || d.holds_verified(&check, &sha)).await;
    if matches!(reusable, Ok(Ok(true))) {
        // The archive is intact; the files unpacked from it must be too.
        check_tree(dir, &name).await?;
        return Ok(Obtained {
            dir: name,
            downloaded: false,
            claim,
        });
    }
    if dir.current_dir().ok().flatten().as_deref() == Some(name.as_str()) {
        // Replacing it would pull the files from under the running service.
        return Err(format!(
            "release dir {name} is the one running, but its artifact does not have sha256 {}; \
             it is left alone: check the host's disk, then deploy another release",
            a.sha256
        ));
    }
    on_fetch()?;
    let verified = fetcher
        .fetch(a, &dir.staging_dir())
        .await
        .map_err(|e| e.to_string())?;
    let info = ReleaseInfo {
        version: a.version.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
    };
    let d = dir.clone();
    let installed = tokio::task::spawn_blocking(move || d.install(&verified, &info))
        .await
        .map_err(|e| format!("staging failed: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok(Obtained {
        dir: installed,
        downloaded: true,
        claim,
    })
}

/// S8 before a start: release dir `name` still holds what was installed. The error names
/// the file that changed, for the operator (and the agent's log).
pub(crate) async fn check_tree(dir: &ServiceDir, name: &str) -> Result<(), String> {
    let (d, n) = (dir.clone(), name.to_string());
    match tokio::task::spawn_blocking(move || d.check_tree(&n)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            Err(e.to_string())
        }
        Err(e) => Err(format!("checking release dir {name} failed: {e}")),
    }
}

/// What a stage order works with; everything is owned, so the order runs as its own task.
#[derive(Debug)]
pub(crate) struct StageJob {
    pub rollout_id: String,
    pub service: String,
    pub artifact: Artifact,
    pub dir: ServiceDir,
    pub cfg: Arc<ServiceConfig>,
    pub fetcher: Fetcher,
    pub shared: Arc<Shared>,
}

impl StageJob {
    /// Stages the release and pins it for the order to come; returns the answer for the
    /// coordinator. Idempotent: a release already on disk and verified answers ok at once.
    pub(crate) async fn run(self) -> pb::StageResult {
        let a = &self.artifact;
        let fetching = || {
            tracing::info!(
                "staging: fetching {} ({} bytes) from {}",
                a.version,
                a.size,
                a.source_text
            );
            Ok(())
        };
        let outcome = match obtain(&self.dir, &self.fetcher, a, fetching).await {
            Ok(got) => match self.prepare(&got.dir).await {
                Err(why) => Err(why),
                Ok(()) => self.pin(got),
            },
            Err(reason) => Err(reason),
        };
        self.answer(outcome)
    }

    /// A release that pins an image: pulled now, ahead of the slot.
    async fn prepare(&self, release: &str) -> Result<(), String> {
        let version = self.artifact.version.clone();
        let report: Reporter = Arc::new(move |line| tracing::info!("staging {version}: {line}"));
        if let Some(note) = backend::prepare(&self.cfg, &self.dir, release, report).await? {
            tracing::info!("staging {}: {note}", self.artifact.version);
        }
        Ok(())
    }

    /// Pins the staged dir for the order to come.
    fn pin(&self, got: Obtained) -> Result<(), String> {
        let a = &self.artifact;
        let pinned = self.shared.journal().pin_staged(&self.service, &got.dir);
        drop(got.claim);
        match pinned {
            Ok(()) if got.downloaded => {
                tracing::info!(
                    "staged {} as {}: downloaded, sha256 verified; ready to swap",
                    a.version,
                    got.dir
                );
                Ok(())
            }
            Ok(()) => {
                tracing::info!(
                    "{} was already staged as {} (sha256 checked again)",
                    a.version,
                    got.dir
                );
                Ok(())
            }
            Err(e) => Err(format!(
                "it is on disk as {}, but recording it as staged failed ({e}), so pruning \
                 could remove it; check the host's disk",
                got.dir
            )),
        }
    }

    /// The answer for the coordinator.
    fn answer(self, outcome: Result<(), String>) -> pb::StageResult {
        let (ok, reason) = match outcome {
            Ok(()) => (true, String::new()),
            Err(why) => {
                let reason = format!(
                    "staging {} failed: {why}; nothing was changed",
                    self.artifact.version
                );
                tracing::warn!("{reason}");
                (false, reason)
            }
        };
        pb::StageResult {
            rollout_id: self.rollout_id,
            service: self.service,
            sha256: self.artifact.sha256,
            ok,
            reason,
        }
    }
}
