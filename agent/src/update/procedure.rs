//! The update procedure, run by a service's task: stage, drain, swap, restart, verify,
//! undrain, commit or roll back; and the undo of an update an agent restart interrupted.

use std::time::Duration;

use rollgate_proto::pb::{self, Health, Outcome, Step};
use rollgate_proto::spec::human;
use tokio::time::Instant;

use crate::backend;
use crate::probe::{startup_retry, HealthWindow, Verdict};
use crate::release::releases::{DiskError, ServiceDir};
use crate::state::journal::InFlight;
use crate::update::context::ServiceContext;
use crate::update::hooks::{self, HookEnv, Phase};
use crate::update::order::{Accepted, Finished, OrderRef};
use crate::update::staging;

/// Carries out an accepted order: check the backend, stage, `pre_stop` hooks, swap, `pre_start`
/// hooks, restart, verify, `post_start` hooks; on a failure after the swap, roll back to the
/// previous release. One path for every backend.
pub(crate) async fn carry_out(unit: &mut ServiceContext, order: &Accepted) -> Finished {
    let v = order.artifact.version.clone();
    if let Err(why) = unit.backend.preflight().await {
        return refused_after_accept(
            unit,
            order,
            format!("cannot update {}: {why}", unit.cfg.name),
        );
    }
    let target = match obtain_release(unit, order).await {
        Ok(t) => t,
        Err(reason) => return refused_after_accept(unit, order, reason),
    };
    let previous = match previous_release(&unit.dir) {
        Ok(p) => p,
        Err(e) => {
            return refused_after_accept(
                unit,
                order,
                format!("cannot read the installed release: {e}"),
            )
        }
    };
    if previous.dir.as_deref() == Some(target.as_str()) {
        return reverify(unit, order, target).await;
    }
    let (prev_dir, prev_version) = (previous.dir, previous.version);
    let env = hook_env(unit, order, &prev_version);

    // Drain: nothing has been touched yet, so a failure refuses the update.
    if prev_dir.is_some() {
        if let Err(why) = run_hooks(unit, &order.id, Step::Staged, Phase::PreStop, &env).await {
            return refused_after_accept(
                unit,
                order,
                format!("{why}; the update is refused and {prev_version} was not stopped"),
            );
        }
    }

    let msg = match &prev_dir {
        Some(_) => format!("switching current from {prev_version} to {v}"),
        None => format!("switching current to {v} (first install)"),
    };
    if let Err(why) = unit.advance(
        &order.id,
        Step::Swapping,
        msg,
        Some((prev_dir.clone(), prev_version.clone())),
    ) {
        // Nothing swapped or stopped: refused, and the drain of the pre_stop hooks undone.
        let why = match &prev_dir {
            Some(_) => format!("{why}; the update is refused and {prev_version} was not stopped"),
            None => format!("{why}; the install is refused"),
        };
        let mut refused = refused_after_accept(unit, order, why);
        after_rollback(unit, &order.id, &env, &mut refused.result).await;
        return refused;
    }
    // From the swap until it passes verification the service is out of service.
    unit.publish(
        Health::Stopped,
        format!("out of service for the update to {v}"),
    );
    if let Err(e) = unit.dir.point_current_at(&target) {
        return rollback(unit, order, prev_dir, prev_version, e.to_string()).await;
    }

    if let Err(why) = run_hooks(unit, &order.id, Step::Starting, Phase::PreStart, &env).await {
        return rollback(unit, order, prev_dir, prev_version, why).await;
    }
    let msg = match &prev_dir {
        Some(_) => format!(
            "restarting {} on {v} (stopping {prev_version})",
            unit.cfg.name
        ),
        None => format!("starting {v}"),
    };
    if let Err(why) = unit.advance(&order.id, Step::Starting, msg.clone(), None) {
        return rollback(unit, order, prev_dir, prev_version, why).await;
    }
    unit.publish(Health::Stopped, msg);
    if let Err(why) = staging::check_tree(&unit.dir, &target).await {
        return rollback(unit, order, prev_dir, prev_version, why).await;
    }
    let started = match unit.backend.restart(order.deadline).await {
        Ok(t) => t,
        Err(e) => return rollback(unit, order, prev_dir, prev_version, e.to_string()).await,
    };

    let verifying = unit.advance(
        &order.id,
        Step::Verifying,
        format!(
            "waiting for {v} to pass its health checks for {} (deadline {})",
            human(order.min_healthy),
            human(order.deadline)
        ),
        None,
    );
    if let Err(why) = verifying {
        return rollback(unit, order, prev_dir, prev_version, why).await;
    }
    if let Err(why) = verify(unit, started, order.min_healthy, order.deadline).await {
        return rollback(unit, order, prev_dir, prev_version, why).await;
    }
    // Undrain: a failure here fails the update like a failed health check.
    if let Err(why) = run_hooks(unit, &order.id, Step::Verifying, Phase::PostStart, &env).await {
        return rollback(unit, order, prev_dir, prev_version, why).await;
    }
    // Committed: the backend may drop what it kept for a rollback (the old container).
    unit.backend.settled().await;
    Finished {
        result: order.id.result(
            Outcome::Succeeded,
            &v,
            Health::Healthy,
            format!("{v} healthy for {}", human(order.min_healthy)),
        ),
        committed: Some(target),
        previous: prev_dir,
    }
}

/// The release an update replaces (and goes back to if the update fails).
#[derive(Debug, Default)]
pub(crate) struct Previous {
    /// Its release dir (`None`: nothing is installed).
    pub dir: Option<String>,
    /// Its version ("" when nothing is installed or its metadata cannot be read).
    pub version: String,
    /// Its digest (as `version`).
    pub sha256: String,
}

/// What `current` names before an update. A release whose metadata cannot be read is still
/// the one to go back to (S5: old or new), and an update over it is how it gets repaired.
pub(crate) fn previous_release(dir: &ServiceDir) -> Result<Previous, DiskError> {
    match dir.current() {
        Ok(Some(r)) => Ok(Previous {
            dir: Some(r.dir),
            version: r.info.version,
            sha256: r.info.sha256,
        }),
        Ok(None) => Ok(Previous::default()),
        Err(e) => {
            let Some(d) = dir.current_dir()? else {
                return Err(e);
            };
            tracing::warn!("{e}; an update replaces {d}, and goes back to it if it fails");
            Ok(Previous {
                dir: Some(d),
                ..Previous::default()
            })
        }
    }
}

/// The hooks' view of the order: service, versions, rollout, host.
fn hook_env(unit: &ServiceContext, order: &Accepted, old_version: &str) -> HookEnv {
    HookEnv {
        service: unit.cfg.name.clone(),
        old_version: old_version.to_string(),
        new_version: order.artifact.version.clone(),
        rollout: order.id.rollout_id.clone(),
        host: unit.host_id.to_string(),
    }
}

/// Runs the service's `phase` hooks, reporting them as progress of `step`; the error is the
/// failing command, how it failed and its last output.
async fn run_hooks(
    unit: &mut ServiceContext,
    id: &OrderRef,
    step: Step,
    phase: Phase,
    env: &HookEnv,
) -> Result<(), String> {
    let commands = hooks::commands(&unit.cfg.hooks, phase);
    if commands.is_empty() {
        return Ok(());
    }
    let running = format!("running {} {} hook(s)", commands.len(), phase.name());
    // The on_rollback hooks run on the way back, which goes on whatever the journal says.
    if phase == Phase::OnRollback {
        unit.advance_undo(id, step, running);
    } else {
        unit.advance(id, step, running, None)?;
    }
    let summary = hooks::run(phase, commands, env, unit.cfg.hook_timeout, unit.dir.root()).await?;
    if let Some(summary) = summary {
        unit.advance_undo(id, step, summary);
    }
    Ok(())
}

/// Gets the verified release dir for the order: reuses one already on disk (staged ahead, or
/// installed before; digest checked again), or downloads, verifies and installs it. Nothing
/// running is touched.
async fn obtain_release(unit: &mut ServiceContext, order: &Accepted) -> Result<String, String> {
    let a = &order.artifact;
    let fetching = || {
        unit.advance(
            &order.id,
            Step::Fetching,
            format!(
                "fetching {} ({} bytes) from {}",
                a.version, a.size, a.source_text
            ),
            None,
        )
    };
    let got = staging::obtain(&unit.dir, &unit.fetcher, a, fetching).await?;
    let mut msg = if got.downloaded {
        format!(
            "{} downloaded, sha256 verified, staged as {}",
            a.version, got.dir
        )
    } else {
        format!("{} is already on disk; its sha256 checked again", a.version)
    };
    // A release that pins an image: pulled now, before anything is stopped.
    let report = unit.reporter(&order.id, Step::Fetching);
    match backend::prepare(&unit.cfg, &unit.dir, &got.dir, report).await {
        Ok(Some(note)) => msg = format!("{msg}; {note}"),
        Ok(None) => {}
        Err(why) => return Err(format!("{why}; nothing was stopped")),
    }
    unit.advance(&order.id, Step::Staged, msg, None)?;
    // Only this task prunes, and only at commit: the dir stays without the claim.
    Ok(got.dir)
}

/// A failure before the swap: nothing was touched, the service runs as before.
fn refused_after_accept(unit: &ServiceContext, order: &Accepted, reason: String) -> Finished {
    let (version, health) = unit.running_state();
    Finished {
        result: order.id.result(Outcome::Refused, &version, health, reason),
        committed: None,
        previous: None,
    }
}

/// The order's release is already `current`: make sure it runs, and check its health.
async fn reverify(unit: &mut ServiceContext, order: &Accepted, target: String) -> Finished {
    let v = order.artifact.version.clone();
    if let Err(why) = unit.advance(
        &order.id,
        Step::Verifying,
        format!("{v} is already installed; checking its health"),
        None,
    ) {
        return refused_after_accept(unit, order, why);
    }
    let started = if unit.backend.is_up() {
        Ok(Instant::now())
    } else {
        unit.backend
            .restart(order.deadline)
            .await
            .map_err(|e| e.to_string())
    };
    let outcome = match started {
        Ok(t) => verify(unit, t, order.min_healthy, order.deadline).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Finished {
            result: order.id.result(
                Outcome::Succeeded,
                &v,
                Health::Healthy,
                format!(
                    "{v} was already installed; healthy for {}",
                    human(order.min_healthy)
                ),
            ),
            committed: Some(target),
            previous: None,
        },
        Err(why) => {
            let health = unit.running_health();
            Finished {
                result: order.id.result(
                    Outcome::Failed,
                    &v,
                    health,
                    format!(
                        "{v} is already installed but not healthy: {why}; there is no other \
                         release to go back to"
                    ),
                ),
                committed: None,
                previous: None,
            }
        }
    }
}

/// Undoes a failed swap: point `current` back, restart and verify the previous release (or
/// stop the service and remove `current` if nothing was installed before), then run the
/// `on_rollback` hooks.
async fn rollback(
    unit: &mut ServiceContext,
    order: &Accepted,
    prev_dir: Option<String>,
    prev_version: String,
    why: String,
) -> Finished {
    let failed = format!("{} failed: {why}", order.artifact.version);
    tracing::warn!("{failed}; rolling back");
    let msg = match &prev_dir {
        Some(_) => format!("{failed}; switching back to {prev_version}"),
        None => format!("{failed}; removing it (nothing was installed before)"),
    };
    unit.advance_undo(&order.id, Step::RollingBack, msg.clone());
    let health = unit.running_health();
    unit.publish(health, msg);
    let back = restore(unit, prev_dir.as_deref(), order.min_healthy, order.deadline).await;
    let env = hook_env(unit, order, &prev_version);
    let mut result = back.into_result(&order.id, &failed, &prev_version);
    after_rollback(unit, &order.id, &env, &mut result).await;
    Finished {
        result,
        committed: None,
        previous: prev_dir,
    }
}

/// Runs the `on_rollback` hooks once the service is back (or failed to come back); a failing
/// hook is added to the result's reason but changes nothing else.
async fn after_rollback(
    unit: &mut ServiceContext,
    id: &OrderRef,
    env: &HookEnv,
    result: &mut pb::OrderResult,
) {
    if let Err(why) = run_hooks(unit, id, Step::RollingBack, Phase::OnRollback, env).await {
        result.reason.push_str(&format!("; {why}"));
    }
}

/// Undoes an update that an agent restart interrupted (the journal still has it in flight) and
/// reports it as interrupted, not as a failure of the release: the coordinator grants the host
/// again. The rule is "always undo": the previous agent's verification of the new release was
/// cut short, so nothing is known about it, and this agent cannot prove that a process left
/// running is the one that agent started; going back to `previous` is safe at every step (S5)
/// and the retry verifies the new release from scratch under a fresh grant. Only when the
/// previous release does not come back healthy is the outcome a failure (the host needs an
/// operator either way). An agent that restarted while rolling back had a verdict already (the
/// update failed): it finishes going back and reports that, so the host is not handed the
/// failed release again as if it had only been interrupted.
pub(crate) async fn recover(unit: &mut ServiceContext, f: &InFlight) -> Finished {
    let id = OrderRef::from(f);
    let failed_before = f.step() == Step::RollingBack;
    let base = if failed_before {
        format!(
            "agent restarted while rolling back the failed update to {} (why it failed was \
             reported before the restart)",
            f.version
        )
    } else {
        format!("agent restarted during the update to {}", f.version)
    };
    let current = unit.dir.current_dir().ok().flatten();
    // Only a completed switch to the new release needs undoing; otherwise `current` still
    // names the previous release (or nothing) and that is what goes back into service.
    let swapped = current.as_deref() == Some(f.target_dir.as_str())
        && f.previous_dir.as_deref() != Some(f.target_dir.as_str());
    let back_to = if swapped {
        f.previous_dir.clone()
    } else {
        current
    };
    let back_version = back_to
        .as_deref()
        .and_then(|d| unit.dir.release_info(d).ok().flatten())
        .map(|i| i.version)
        .unwrap_or_else(|| f.previous_version.clone());
    tracing::warn!(
        "{base}; going back to {}",
        if back_version.is_empty() {
            "nothing installed"
        } else {
            &back_version
        }
    );
    // Reported as `starting` (the previous release), not `rolling back`: the planner halts on
    // a rolling-back step, and this undo is no verdict on the release (unless it was one).
    let (step, undo) = if failed_before {
        (Step::RollingBack, format!("{base}; finishing going back"))
    } else {
        (
            Step::Starting,
            format!("{base}; undoing it (not a failure of the release)"),
        )
    };
    unit.advance_undo(&id, step, undo.clone());
    let health = unit.running_health();
    unit.publish(health, undo);
    let min = Duration::from_millis(f.min_healthy_time_ms);
    let deadline = Duration::from_millis(f.healthy_deadline_ms);
    let back = restore(unit, back_to.as_deref(), min, deadline).await;
    let env = HookEnv {
        service: unit.cfg.name.clone(),
        old_version: back_version.clone(),
        new_version: f.version.clone(),
        rollout: f.rollout_id.clone(),
        host: unit.host_id.to_string(),
    };
    let mut result = back.into_result(&id, &base, &back_version);
    after_rollback(unit, &id, &env, &mut result).await;
    if result.outcome() == Outcome::RolledBack && !failed_before {
        result.set_outcome(Outcome::Interrupted);
        result
            .reason
            .push_str("; reported as interrupted, not as a failure of the release");
    }
    Finished {
        result,
        committed: None,
        previous: back_to,
    }
}

/// How going back to the previous release went.
enum Restored {
    /// The previous release runs and passed verification.
    Healthy,
    /// Nothing was installed before; `current` is gone and the service is stopped.
    NothingBefore,
    /// The previous release did not come back healthy.
    Failed {
        why: String,
        health: Health,
        running: String,
    },
}

impl Restored {
    fn into_result(self, id: &OrderRef, failed: &str, prev_version: &str) -> pb::OrderResult {
        match self {
            Restored::Healthy => id.result(
                Outcome::RolledBack,
                prev_version,
                Health::Healthy,
                format!("{failed}; back on {prev_version}, healthy"),
            ),
            Restored::NothingBefore => id.result(
                Outcome::RolledBack,
                "",
                Health::Stopped,
                format!("{failed}; nothing was installed before, so the service is stopped"),
            ),
            Restored::Failed {
                why,
                health,
                running,
            } => {
                let what = if prev_version.is_empty() {
                    "going back".to_string()
                } else {
                    format!("{prev_version} did not come back healthy either")
                };
                id.result(
                    Outcome::Failed,
                    &running,
                    health,
                    format!("{failed}; {what}: {why}"),
                )
            }
        }
    }
}

async fn restore(
    unit: &mut ServiceContext,
    prev_dir: Option<&str>,
    min: Duration,
    deadline: Duration,
) -> Restored {
    let Some(prev) = prev_dir else {
        unit.backend.stop().await;
        return match unit.dir.remove_current() {
            Ok(()) => Restored::NothingBefore,
            Err(e) => Restored::Failed {
                why: e.to_string(),
                health: Health::Stopped,
                running: unit.running_state().0,
            },
        };
    };
    let fail = |unit: &ServiceContext, why: String| Restored::Failed {
        why,
        health: unit.running_health(),
        running: unit.running_state().0,
    };
    // Going back starts the previous release again: its files must be as installed.
    if let Err(why) = staging::check_tree(&unit.dir, prev).await {
        return fail(unit, why);
    }
    if unit.dir.current_dir().ok().flatten().as_deref() != Some(prev) {
        if let Err(e) = unit.dir.point_current_at(prev) {
            return fail(unit, e.to_string());
        }
    }
    let started = match unit.backend.restart(deadline).await {
        Ok(t) => t,
        Err(e) => return fail(unit, e.to_string()),
    };
    match verify(unit, started, min, deadline).await {
        Ok(()) => {
            // Back on the previous release: the failed release's container can go.
            unit.backend.settled().await;
            Restored::Healthy
        }
        Err(why) => fail(unit, why),
    }
}

/// Probes the service until it has been healthy for `min_healthy` (counted from the first
/// all-pass, reset by any failure), or fails: at once if the service goes down (the process
/// exits; the unit fails, crash-loops or is restarted by systemd), or when `deadline` (from
/// `started`) passes. Reports what each round shows (UNKNOWN until the first round,
/// HEALTHY or UNHEALTHY by the probes, STOPPED if it went down).
pub(crate) async fn verify(
    unit: &mut ServiceContext,
    started: Instant,
    min_healthy: Duration,
    deadline: Duration,
) -> Result<(), String> {
    let mut window = HealthWindow::new(started, min_healthy, deadline);
    let interval = unit.prober.interval();
    // A new process: earlier passes of the probes say nothing about it.
    unit.prober.reset();
    let mut next = Instant::now();
    unit.publish(Health::Unknown, "started; checking its health".into());
    loop {
        tokio::select! {
            exit = unit.backend.exited() => return Err(went_down(unit, exit.description)),
            _ = tokio::time::sleep_until(next) => {}
        }
        let result = if unit.prober.is_empty() {
            Ok(())
        } else {
            tokio::select! {
                exit = unit.backend.exited() => return Err(went_down(unit, exit.description)),
                r = unit.prober.check() => r,
            }
        };
        match &result {
            Ok(()) => unit.publish(Health::Healthy, "passing its health checks".into()),
            Err(why) => unit.publish(Health::Unhealthy, why.clone()),
        }
        let now = Instant::now();
        match window.observe(now, result) {
            Verdict::Healthy => return Ok(()),
            Verdict::Failed(why) => return Err(why),
            Verdict::Waiting => {
                let pace = if unit.prober.any_passed() {
                    interval
                } else {
                    startup_retry(now.saturating_duration_since(started), interval)
                };
                next = window.next_round(now, pace);
            }
        }
    }
}

/// Reports that the service went down while it was being verified; returns why.
fn went_down(unit: &mut ServiceContext, why: String) -> String {
    unit.publish(Health::Stopped, why.clone());
    why
}
