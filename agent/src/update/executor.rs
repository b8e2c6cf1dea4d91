//! Orders: token fencing at intake, stage orders, hellos; the services' tasks (see `service`)
//! carry accepted orders out (see `update`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use rollgate_proto::pb::{self, agent_message::Msg, Health, Outcome, Step};
use rollgate_proto::spec::{human, DEFAULT_HEALTHY_DEADLINE};
use rollgate_proto::telemetry::{self, Ids};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, ServiceConfig, AGENT_SERVICE};
use crate::probe::{ProbeSetupError, Prober};
use crate::release::fetch::{Artifact, Fetcher};
use crate::release::releases::{DiskError, ServiceDir};
use crate::release::trust::{Past, Trust};
use crate::state::journal::{InFlight, Journal, JournalError};
use crate::update::order::{Accepted, OrderRef};
use crate::update::procedure;
use crate::update::service::ServiceUnit;
use crate::update::shared::{lock, Shared};
use crate::update::staging::StageJob;
use crate::update::status::{self, StatusBoard};
use crate::upgrade::{self, Marker, Reexec, ReexecSlot, SelfUpgrade};

/// Orders queued per service; intake refuses a second order while one is in flight, so one
/// slot would do; a few give room for the moment between intake and the task picking it up.
const ORDER_QUEUE: usize = 4;
/// File in the state dir that an agent holds locked while it runs.
const LOCK_FILE: &str = "agent.lock";

/// Messages for the coordinator, produced by the executor and the service tasks. The session
/// forwards them while connected; while disconnected they may be dropped, because everything
/// they say is also in the next hello (statuses, in-flight progress, durable results).
pub type Outbox = mpsc::UnboundedReceiver<pb::AgentMessage>;

/// Why the executor could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The state dir cannot be created or used.
    #[error(
        "cannot use the state dir {}: {source}; check that it exists and is writable by the agent",
        path.display()
    )]
    StateDir {
        /// The state dir.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another agent holds the state dir.
    #[error(
        "another rollgate-agent is already running with the state dir {}; stop it, or give this \
         agent its own state_dir",
        path.display()
    )]
    Locked {
        /// The state dir.
        path: PathBuf,
    },
    /// The journal cannot be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A service dir cannot be created.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A service's probes cannot be set up.
    #[error(transparent)]
    Probe(#[from] ProbeSetupError),
}

/// What intake decides about an order.
#[derive(Debug)]
enum Admission {
    /// A repeat of the order being carried out: nothing to do.
    Ignore(String),
    /// A repeat of a finished order: send its result again.
    Resend(pb::OrderResult),
    /// Refused before anything was touched.
    Refuse(String),
    /// Refused because the token is not above `highest`, the highest this host has acted on
    /// for the service: reported as `OUTCOME_STALE_TOKEN` so the coordinator can raise its
    /// counter and grant again (its counter went back: an etcd restore).
    Stale { highest: u64, reason: String },
    /// To be carried out.
    Accept(Box<Accepted>),
}

fn unknown_service(service: &str, host_id: &str) -> String {
    format!(
        "service {service:?} is not configured on host {host_id}; add a [[services]] table for \
         it to the agent's config"
    )
}

/// Decides what to do with an order, from the journal alone (no side effects).
fn admit(
    order: &pb::UpdateOrder,
    journal: &Journal,
    host_id: &str,
    known: &dyn Fn(&str) -> bool,
) -> Admission {
    let token = order.token;
    if token == 0 {
        // S4: 0 is what proto3 sends when the field is unset; no grant ever has it.
        return Admission::Refuse(
            "no fencing token: the order carries token 0, and an update is only carried out \
             under a slot grant's token (is the coordinator older than this agent?)"
                .into(),
        );
    }
    if let Some(f) = journal.in_flight(&order.service) {
        if f.token == token && f.rollout_id == order.rollout_id {
            return Admission::Ignore(format!("token {token} is already being carried out"));
        }
    }
    if let Some(r) = journal.result_for(token, &order.service) {
        // The same token under another rollout is not a repeat: a coordinator restored from
        // an old backup (or otherwise confused) is reusing tokens. S4: refuse it.
        if r.rollout_id == order.rollout_id {
            return Admission::Resend(r);
        }
        let highest = journal.highest_token_for(&order.service).unwrap_or(token);
        return Admission::Stale {
            highest: highest.max(token),
            reason: format!(
            "stale order: token {token} was already used by rollout {}, not {}; the coordinator \
             is handing out old tokens (restored from a backup?)",
                r.rollout_id, order.rollout_id
            ),
        };
    }
    // Per service: grants for different services are independent, and a late order for one
    // must not be refused because another service acted on a newer grant.
    let service = &order.service;
    match journal.highest_token_for(service) {
        Some(h) if token < h => {
            return Admission::Stale {
                highest: h,
                reason: format!(
                    "stale order: token {token} is older than {h}, the highest this host has \
                     acted on for service {service}"
                ),
            }
        }
        Some(h) if token == h => {
            return Admission::Stale {
                highest: h,
                reason: format!(
                    "stale order: token {token} was already acted on for service {service}, and \
                     its result is no longer kept"
                ),
            }
        }
        _ => {}
    }
    if !known(&order.service) {
        return Admission::Refuse(unknown_service(&order.service, host_id));
    }
    if let Some(f) = journal.in_flight(&order.service) {
        return Admission::Refuse(format!(
            "another order (rollout {}, token {}) is still in progress for service {}; send this \
             one again when it has finished",
            f.rollout_id, f.token, f.service
        ));
    }
    let Some(release) = &order.release else {
        return Admission::Refuse("the order carries no release".into());
    };
    let artifact = match Artifact::try_from(release) {
        Ok(a) => a,
        Err(e) => return Admission::Refuse(e.to_string()),
    };
    let min_healthy = Duration::from_millis(order.min_healthy_time_ms);
    // proto3 cannot tell "unset" from 0, and a zero deadline could never be met.
    let deadline = match order.healthy_deadline_ms {
        0 => DEFAULT_HEALTHY_DEADLINE,
        ms => Duration::from_millis(ms),
    };
    if min_healthy > deadline {
        return Admission::Refuse(format!(
            "min_healthy_time {} is longer than healthy_deadline {}; no release could pass",
            human(min_healthy),
            human(deadline)
        ));
    }
    let target_dir = ServiceDir::release_dir_name(&artifact.version, &artifact.sha256);
    Admission::Accept(Box::new(Accepted {
        id: OrderRef::of(order),
        artifact,
        min_healthy,
        deadline,
        target_dir,
    }))
}

/// Takes orders from the session, fences them, and hands them to each service's task, which
/// carries them out. Also owns the services' tasks (supervision and health) and builds hellos.
#[derive(Debug)]
pub struct Executor {
    host_id: String,
    labels: BTreeMap<String, String>,
    /// Service names in config order (hellos list services in that order).
    order: Vec<String>,
    dirs: BTreeMap<String, ServiceDir>,
    /// Each service's config, for stage orders (an image release is pulled when staged).
    configs: BTreeMap<String, Arc<ServiceConfig>>,
    queues: BTreeMap<String, mpsc::Sender<Accepted>>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Stage orders run beside the services' tasks (staging must not wait for an update).
    stages: Mutex<JoinSet<()>>,
    /// For stage orders (the services' tasks hold their own clones).
    fetcher: Fetcher,
    /// Pinned keys, the size cap and the downgrade rule, checked before anything is touched.
    trust: Trust,
    cancel: CancellationToken,
    /// Held for the executor's lifetime so a second agent cannot share the state dir.
    _lock: Flock<fs::File>,
    /// Told when a coordinator welcomes this agent (a new agent on trial waits for it).
    welcomed: watch::Sender<bool>,
    /// Where the self-upgrade task asks [`crate::run`] to re-execute the agent.
    reexec: Arc<ReexecSlot>,
}

impl Executor {
    /// Opens the state dir and journal, and starts one task per configured service (which
    /// first undoes an update interrupted by an agent restart, then starts the service).
    /// Must be called inside a tokio runtime. Returns the executor and the stream of messages
    /// for the coordinator.
    pub fn start(config: &Config, fetcher: Fetcher) -> Result<(Executor, Outbox), StartError> {
        let state_err = |source| StartError::StateDir {
            path: config.state_dir.clone(),
            source,
        };
        fs::create_dir_all(&config.state_dir).map_err(state_err)?;
        // Canonical, so the pidfile check can compare a process's cwd with our release dirs.
        let state_dir = fs::canonicalize(&config.state_dir).map_err(state_err)?;
        let lock_path = state_dir.join(LOCK_FILE);
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(state_err)?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            StartError::Locked {
                path: state_dir.clone(),
            }
        })?;
        let journal = Journal::open(&state_dir)?;

        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            board: StatusBoard::new(tx.clone(), journal.latest_finish_ms()),
            journal: Mutex::new(journal),
            outbox: tx,
        });
        let cancel = CancellationToken::new();
        let mut dirs = BTreeMap::new();
        let mut configs = BTreeMap::new();
        let mut queues = BTreeMap::new();
        let mut units = Vec::new();
        for svc in &config.services {
            let dir = ServiceDir::new(&state_dir, &svc.name, &svc.binary)
                .with_format(svc.format, svc.unpack_limits);
            dir.create()?;
            let prober = Prober::new(svc)?;
            // First the order a previous agent left in flight, so the first status names it.
            let interrupted = shared.journal().in_flight(&svc.name).cloned();
            if let Some(f) = &interrupted {
                shared
                    .set_progress(f.progress("the agent restarted during this update; undoing it"));
            }
            shared.board.observe(status::initial(&svc.name, &dir));
            let (qtx, qrx) = mpsc::channel(ORDER_QUEUE);
            queues.insert(svc.name.clone(), qtx);
            dirs.insert(svc.name.clone(), dir.clone());
            let cfg = Arc::new(svc.clone());
            configs.insert(svc.name.clone(), cfg.clone());
            units.push((
                ServiceUnit::new(
                    cfg,
                    dir,
                    prober,
                    fetcher.clone(),
                    shared.clone(),
                    Arc::from(config.host_id.as_str()),
                ),
                interrupted,
                qrx,
            ));
        }
        let mut tasks: Vec<JoinHandle<()>> = units
            .into_iter()
            .map(|(unit, interrupted, qrx)| {
                tokio::spawn(unit.run(interrupted, qrx, cancel.child_token()))
            })
            .collect();
        let (welcomed, welcomed_rx) = watch::channel(false);
        let reexec = Arc::new(ReexecSlot::default());
        let mut order: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
        if let Some(cfg) = &config.self_upgrade {
            let dir = ServiceDir::new(&state_dir, AGENT_SERVICE, AGENT_SERVICE);
            dir.create()?;
            let in_flight = shared.journal().in_flight(AGENT_SERVICE).cloned();
            let trial = std::env::var(upgrade::TRIAL_ENV).ok();
            let startup = upgrade::startup(Marker::load(dir.root()), in_flight, trial.as_deref());
            let (qtx, qrx) = mpsc::channel(ORDER_QUEUE);
            queues.insert(AGENT_SERVICE.to_string(), qtx);
            dirs.insert(AGENT_SERVICE.to_string(), dir.clone());
            order.push(AGENT_SERVICE.to_string());
            let task = SelfUpgrade {
                cfg: cfg.clone(),
                dir,
                fetcher: fetcher.clone(),
                shared: shared.clone(),
                reexec: reexec.clone(),
                welcomed: welcomed_rx,
            };
            tasks.push(tokio::spawn(task.run(startup, qrx, cancel.child_token())));
        }
        Ok((
            Executor {
                host_id: config.host_id.clone(),
                labels: config.labels.clone(),
                order,
                dirs,
                configs,
                queues,
                shared,
                tasks,
                stages: Mutex::new(JoinSet::new()),
                fetcher,
                trust: Trust::new(config),
                cancel,
                _lock: lock,
                welcomed,
                reexec,
            },
            rx,
        ))
    }

    /// Takes one order from the coordinator. Returns at once: refusals and repeated results
    /// go to the outbox, accepted orders are journaled and handed to the service's task.
    pub fn handle_order(&self, order: pb::UpdateOrder) {
        let span = tracing::info_span!(
            "order",
            rollout = %order.rollout_id,
            token = order.token,
            service = %order.service
        );
        let _enter = span.enter();
        let journal = self.shared.journal();
        let known = |s: &str| self.dirs.contains_key(s);
        match admit(&order, &journal, &self.host_id, &known) {
            Admission::Ignore(why) => tracing::debug!("ignoring a repeated order: {why}"),
            Admission::Resend(result) => {
                tracing::info!(
                    "order already finished ({}); sending its result again",
                    result.outcome().word()
                );
                self.shared.send(Msg::Result(result));
            }
            Admission::Refuse(reason) => {
                drop(journal);
                self.refuse(&order, reason);
            }
            Admission::Stale { highest, reason } => {
                drop(journal);
                self.refuse_stale(&order, highest, reason);
            }
            Admission::Accept(accepted) => self.accept(&order, *accepted, journal),
        }
    }

    /// Journals an order intake accepted and hands it to the service's task, after the checks
    /// that need the disk (the installed release) and the trust rules; refuses it if they fail.
    fn accept(
        &self,
        order: &pb::UpdateOrder,
        accepted: Accepted,
        mut journal: MutexGuard<'_, Journal>,
    ) {
        let Some(dir) = self.dirs.get(&order.service) else {
            return;
        };
        let (previous_dir, previous_version, previous_sha) = match procedure::previous_release(dir)
        {
            Ok(p) => (p.dir, p.version, p.sha256),
            Err(e) => {
                drop(journal);
                self.refuse(order, format!("cannot read the installed release: {e}"));
                return;
            }
        };
        // S8: signature, size cap and downgrade rule, before the order is journaled
        // and before any byte is fetched.
        if let Some(release) = &order.release {
            // A release whose metadata cannot be read is judged as the last one this
            // service committed to: a damaged file must not open the way to a downgrade.
            let last_ran = journal.ran(&order.service).last();
            let current = match previous_dir {
                None => None,
                Some(_) if previous_version.is_empty() => last_ran,
                Some(_) => Some((previous_version.as_str(), previous_sha.as_str())),
            };
            let ordered = (release.version.as_str(), release.sha256.as_str());
            let past = Past {
                ran_before: journal.ran_before(&order.service, ordered.0, ordered.1),
                in_window: current.is_some_and(|cur| {
                    journal.within_rollback_window(
                        &order.service,
                        ordered,
                        cur,
                        self.trust.rollback_window(),
                    )
                }),
            };
            let checked = self
                .trust
                .check_release(&order.service, release, SystemTime::now())
                .and_then(|()| {
                    self.trust.check_downgrade(
                        &order.service,
                        release,
                        order.rollback,
                        current,
                        past,
                    )
                });
            if let Err(reason) = checked {
                drop(journal);
                self.refuse(order, reason);
                return;
            }
        }
        let a = &accepted.artifact;
        let record = InFlight {
            rollout_id: order.rollout_id.clone(),
            token: order.token,
            service: order.service.clone(),
            version: a.version.clone(),
            sha256: a.sha256.clone(),
            target_dir: accepted.target_dir.clone(),
            previous_dir,
            previous_version,
            min_healthy_time_ms: accepted.min_healthy.as_millis() as u64,
            healthy_deadline_ms: accepted.deadline.as_millis() as u64,
            step: Step::Accepted.as_str_name().to_string(),
        };
        // S4/S5: the token and the order are on disk before anything is touched.
        if let Err(e) = journal.begin(record) {
            drop(journal);
            self.refuse(order, format!("cannot record the order durably: {e}"));
            return;
        }
        let ids = Ids {
            rollout: &order.rollout_id,
            host: &self.host_id,
            service: &order.service,
        };
        let line = format!("accepted order to install {} {}", order.service, a.version);
        telemetry::info_with_ids(ids, &line);
        let progress = accepted.id.progress(
            Step::Accepted,
            format!(
                "accepted: install {} {} (token {})",
                order.service, a.version, order.token
            ),
        );
        self.shared.send(Msg::Progress(progress.clone()));
        // Still under the journal's lock: a hello sees the order both journaled and named by
        // the service's status, or neither. The status goes out after the progress.
        self.shared.set_progress(progress);
        drop(journal);
        let queued = self
            .queues
            .get(&order.service)
            .is_some_and(|q| q.try_send(accepted).is_ok());
        if !queued {
            // Only while shutting down; the journal entry makes the next start undo it.
            tracing::warn!("the service task is not taking orders (agent shutting down?)");
        }
    }

    /// Takes one stage order: download and verify a release ahead of its slot, touching
    /// nothing running (no token needed). Returns at once; the answer goes to the outbox when
    /// staging ends. May run while the service has an update in flight.
    pub fn handle_stage(&self, order: pb::StageOrder) {
        let span = tracing::info_span!(
            "stage",
            rollout = %order.rollout_id,
            service = %order.service
        );
        let _enter = span.enter();
        let answer = |ok: bool, reason: String| pb::StageResult {
            rollout_id: order.rollout_id.clone(),
            service: order.service.clone(),
            sha256: order
                .release
                .as_ref()
                .map(|r| r.sha256.clone())
                .unwrap_or_default(),
            ok,
            reason,
        };
        let refuse = |reason: String| {
            tracing::warn!("stage order refused: {reason}");
            self.shared.send(Msg::Staged(answer(false, reason)));
        };
        let (Some(dir), Some(cfg)) = (
            self.dirs.get(&order.service),
            self.configs.get(&order.service),
        ) else {
            return refuse(unknown_service(&order.service, &self.host_id));
        };
        let artifact = match order.release.as_ref().map(Artifact::try_from) {
            None => return refuse("the stage order carries no release".into()),
            Some(Err(e)) => return refuse(e.to_string()),
            Some(Ok(a)) => a,
        };
        if let Some(release) = &order.release {
            if let Err(reason) =
                self.trust
                    .check_release(&order.service, release, SystemTime::now())
            {
                return refuse(reason);
            }
        }
        if self.cancel.is_cancelled() {
            return refuse("the agent is shutting down; send the stage order again later".into());
        }
        tracing::info!("stage order: {} {}", order.service, artifact.version);
        let job = StageJob {
            rollout_id: order.rollout_id.clone(),
            service: order.service.clone(),
            artifact,
            dir: dir.clone(),
            cfg: cfg.clone(),
            fetcher: self.fetcher.clone(),
            shared: self.shared.clone(),
        };
        let shared = self.shared.clone();
        let cancel = self.cancel.child_token();
        let task = async move {
            tokio::select! {
                // A partial download stays for the next try to resume; the next hello says
                // what is staged.
                _ = cancel.cancelled() => tracing::info!("shutting down: staging abandoned"),
                result = job.run() => shared.send(Msg::Staged(result)),
            }
        };
        let mut stages = lock(&self.stages);
        // Forget the stage orders that have ended (their answers are already sent).
        while stages.try_join_next().is_some() {}
        stages.spawn(task.instrument(span.clone()));
    }

    fn refuse(&self, order: &pb::UpdateOrder, reason: String) {
        tracing::warn!("refused: {reason}");
        let result = self.refusal(order, Outcome::Refused, reason);
        self.shared.send(Msg::Result(result));
    }

    /// A stale token: nothing touched; the result names the highest token acted on, so the
    /// coordinator can raise its counter above it and grant again.
    fn refuse_stale(&self, order: &pb::UpdateOrder, highest: u64, reason: String) {
        tracing::warn!(
            "refused: {reason}; the coordinator is told the highest token ({highest}) so it \
             can grant again above it"
        );
        let mut result = self.refusal(order, Outcome::StaleToken, reason);
        result.highest_token = highest;
        self.shared.send(Msg::Result(result));
    }

    fn refusal(
        &self,
        order: &pb::UpdateOrder,
        outcome: Outcome,
        reason: String,
    ) -> pb::OrderResult {
        let status = self.shared.status(&order.service);
        let (version, health) = status.map_or((String::new(), Health::Unknown), |s| {
            (s.version.clone(), s.health())
        });
        let mut result = OrderRef::of(order).result(outcome, &version, health, reason);
        result.finished_at_ms = self.shared.board.stamp();
        result
    }

    /// The hello for a new session: statuses, highest token, recent results, order in flight,
    /// and the releases on disk ready to swap to without a download. The statuses are the
    /// agent's current state, whatever was sent before (including changes while disconnected),
    /// each observed after every kept result of its service; the highest token is the maximum
    /// over all services.
    pub fn hello(&self) -> pb::Hello {
        let staged = self.staged_releases();
        // The journal first (the lock order): an order being accepted or finished is seen
        // whole, in the results and statuses alike.
        let journal = self.shared.journal();
        let (services, in_flight) = self.shared.board.snapshot(&self.order);
        pb::Hello {
            host_id: self.host_id.clone(),
            labels: self.labels.clone().into_iter().collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            services,
            highest_token: journal.highest_token().unwrap_or(0),
            protocol_version: rollgate_proto::version::PROTOCOL_VERSION,
            recent_results: journal.recent_results(),
            in_flight,
            staged,
        }
    }

    /// Every complete release dir of every service (including the one running): each was
    /// digest-verified when installed, and is hashed again before a swap.
    fn staged_releases(&self) -> Vec<pb::StagedRelease> {
        let mut out = Vec::new();
        for service in &self.order {
            let Some(dir) = self.dirs.get(service) else {
                continue;
            };
            let installed = match dir.installed() {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!("cannot list the staged releases of {service}: {e}");
                    continue;
                }
            };
            let mut seen = BTreeSet::new();
            for r in installed {
                if seen.insert(r.info.sha256.clone()) {
                    out.push(pb::StagedRelease {
                        service: service.clone(),
                        sha256: r.info.sha256,
                    });
                }
            }
        }
        out
    }

    /// A coordinator welcomed this agent.
    pub fn welcomed(&self) {
        self.welcomed.send_replace(true);
    }

    /// Completes when the self-upgrade asks to re-execute the agent, with what to run.
    pub async fn reexec_wanted(&self) -> Reexec {
        self.reexec.wanted().await
    }

    /// Stops the services' tasks and stage orders: an order in flight is abandoned (the journal
    /// makes the next start undo it), staging stops (a partial download is resumed by the
    /// next try); services are left running for the next agent (except `stop_with_agent`
    /// ones, unless the agent is re-executing itself).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        drop(self.queues);
        let mut stages = self.stages.into_inner().unwrap_or_else(|e| e.into_inner());
        while let Some(done) = stages.join_next().await {
            if let Err(e) = done {
                tracing::error!("a stage order's task failed: {e}");
            }
        }
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!("a service task failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
