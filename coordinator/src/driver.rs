//! The rollout driver: runs on the elected leader only. It re-reads every active rollout from
//! etcd whenever something under the prefix changes (or a gate or deadline the planner named
//! comes due), asks the planner what to do, and carries the decisions out as transactions
//! fenced by the leader's election key (S3). A restart re-derives everything from etcd.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, LeaderKey, Txn, TxnOp, WatchOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::{self, ControlError};
use crate::handover::{self, Carry};
use crate::metrics::{HaltLabels, HaltReason, RolloutGauges};
use crate::planner::{self, explain, Decision, Plan, Verdict, WaveStamp};
use crate::sessions::limits::{LogLimit, LOG_EVERY};
use crate::store::{
    self, decode, encode, now_ms, FleetView, HistoryRecord, Phase, RolloutRecord, RolloutView,
    StoreError, WaveDone, WaveGate,
};
use crate::Ctx;

/// How etcd refuses a key bound to a lease that no longer exists (joining the election line).
const LEASE_NOT_FOUND: &str = "requested lease not found";
/// Pause before campaigning again after losing leadership or an etcd error.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Longest sleep between rounds when nothing is due (a safety net, not the trigger).
const IDLE_ROUND: Duration = Duration::from_secs(60);

/// Campaigns for leadership and drives rollouts while leader, until `cancel`.
pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    loop {
        let Some(leader) = campaign(&ctx, &cancel).await else {
            return;
        };
        info!(
            epoch = leader.rev(),
            "this replica is the leader; driving rollouts"
        );
        ctx.metrics.elections.inc();
        ctx.metrics.leader.set(1);
        // The event log is written by the leader only, for as long as it leads.
        let recording = cancel.child_token();
        let recorder = tokio::spawn(crate::events::recorder::run(
            ctx.clone(),
            leader.clone(),
            recording.clone(),
        ));
        let notifier = tokio::spawn(crate::notify::deliver::run(
            ctx.clone(),
            leader.clone(),
            recording.clone(),
        ));
        let led = lead(&ctx, &leader, &cancel).await;
        recording.cancel();
        let _ = recorder.await;
        let _ = notifier.await;
        ctx.metrics.leader.set(0);
        ctx.metrics.set_rollouts(&[]);
        match led {
            Ok(()) => {}
            Err(e @ LeadError::Deposed { .. }) => warn!("{e}"),
            Err(LeadError::Store(e)) => warn!("leading stopped: {e}; campaigning again"),
        }
        if cancel.is_cancelled() {
            let _ = ctx
                .etcd
                .clone()
                .resign(Some(etcd_client::ResignOptions::new().with_leader(leader)))
                .await;
            return;
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// Waits in line until this replica leads; `None` at shutdown. Waiting is a follower's normal
/// state, so it logs nothing until something fails; its election key, bound to its kept-alive
/// lease, keeps its place in line across failures ([`crate::election`]).
async fn campaign(ctx: &Ctx, cancel: &CancellationToken) -> Option<LeaderKey> {
    loop {
        info!("campaigning for leadership: this replica leads when the replicas ahead of it in line are gone");
        let mut etcd = ctx.etcd.clone();
        let (name, id) = (ctx.keys.leader(), &ctx.config.replica_id);
        let call = crate::election::campaign(&mut etcd, &name, id, ctx.lease);
        let resp = tokio::select! {
            r = call => r,
            _ = cancel.cancelled() => return None,
        };
        match resp {
            Ok(leader) => return Some(leader),
            Err(e) if e.to_string().contains(LEASE_NOT_FOUND) => warn!(
                lease = format_args!("{:x}", ctx.lease),
                "cannot campaign for leadership: this replica's etcd lease expired (it was paused \
                 or cut off from etcd for longer than lease_ttl {:?}); it exits so that its \
                 supervisor restarts it with a new lease",
                ctx.config.etcd.lease_ttl
            ),
            Err(e) => warn!(
                "waiting in line for leadership was interrupted: {e}; this replica keeps its \
                 place (its election key lives as long as its lease) and waits again in \
                 {RETRY_DELAY:?}"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_DELAY) => {}
            _ = cancel.cancelled() => return None,
        }
    }
}

/// Why this replica stopped leading.
#[derive(Debug, thiserror::Error)]
enum LeadError {
    /// Its election key is gone or was replaced: another replica may lead now.
    #[error(
        "this replica lost leadership: its election key {key} is gone (its etcd lease expired: \
         the process was paused, or cut off from etcd, for longer than lease_ttl {ttl:?}); it \
         grants nothing more and campaigns again (a replica whose lease expired exits, and its \
         supervisor restarts it)"
    )]
    Deposed {
        /// The election key this replica won with.
        key: String,
        /// `etcd.lease_ttl`.
        ttl: Duration,
    },
    /// etcd failed or holds something this version cannot read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn lead(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    cancel: &CancellationToken,
) -> Result<(), LeadError> {
    let mut etcd = ctx.etcd.clone();
    let mut watch = crate::etcd_conn::watch(
        &mut etcd,
        ctx.keys.all(),
        Some(WatchOptions::new().with_prefix()),
    )
    .await
    .map_err(StoreError::from)?;
    let mut complaints = Complaints::default();
    let mut clock = ProgressClock::default();
    let mut inbox = Leading::open(ctx);
    let mut carried = Vec::new();
    loop {
        let began = Instant::now();
        let round = Round {
            complaints: &mut complaints,
            clock: &mut clock,
            carried: std::mem::take(&mut carried),
        };
        let wake = drive_once(ctx, leader, round).await?;
        ctx.metrics
            .planning_round
            .observe(began.elapsed().as_secs_f64());
        let sleep = wake
            .map(|at| Duration::from_millis((at - now_ms()).max(0) as u64))
            .unwrap_or(IDLE_ROUND)
            .min(IDLE_ROUND);
        let due = tokio::time::Instant::now() + sleep;
        // Waits for what calls for the next round; the event log's own writes do not.
        loop {
            tokio::select! {
                m = watch.message() => match m {
                    // Every round reads etcd afresh: the changes queued behind this one are
                    // covered by the same next round.
                    Ok(Some(first)) => {
                        let plans = |r: &etcd_client::WatchResponse| for_planning(ctx, r);
                        match watch.drain_ready_where(plans) {
                            Ok(Some(more)) if more || plans(&first) => break,
                            Ok(Some(_)) => continue,
                            Ok(None) => return Ok(()),
                            Err(e) => return Err(StoreError::from(e).into()),
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(StoreError::from(e).into()),
                },
                // A result this replica recorded: plan now, the watch's report of it follows.
                _ = ctx.results_recorded.notified() => break,
                // Results offered to this round, to be written with the grants they free room for.
                Some(first) = inbox.rx.recv() => {
                    carried.push(first);
                    while let Ok(more) = inbox.rx.try_recv() {
                        carried.push(more);
                    }
                    break;
                }
                _ = tokio::time::sleep_until(due) => break,
                _ = cancel.cancelled() => return Ok(()),
            }
        }
    }
}

/// Whether a watch response changes anything a planning round reads: every key but the event
/// log's and the webhook deliveries' own (the leader's recorder and notifier write those after
/// each change; a round for them would re-read the fleet for nothing).
fn for_planning(ctx: &Ctx, r: &etcd_client::WatchResponse) -> bool {
    let prefix = &ctx.config.etcd.prefix;
    let own = [
        format!("{prefix}events/"),
        crate::events::cursor_key(prefix),
        format!("{prefix}notify/"),
    ];
    r.events().iter().any(|e| {
        let key = e.kv().map(|kv| kv.key()).unwrap_or_default();
        !own.iter().any(|o| key.starts_with(o.as_bytes()))
    })
}

/// The leader's inbox of results ([`handover`]), open for as long as it leads.
struct Leading<'a> {
    ctx: &'a Ctx,
    rx: tokio::sync::mpsc::Receiver<Carry>,
}

impl<'a> Leading<'a> {
    fn open(ctx: &'a Ctx) -> Leading<'a> {
        let rx = ctx.handover.open();
        Leading { ctx, rx }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.ctx.handover.close();
    }
}

/// What one planning round carries from the last: the leader's memory, and the results offered
/// to it since.
struct Round<'a> {
    complaints: &'a mut Complaints,
    clock: &'a mut ProgressClock,
    carried: Vec<Carry>,
}

mod grants;
use grants::{grant, GrantBasis};

/// What the leader logs about records it cannot read, rate-limited per rollout (or per fleet
/// record): every round meets them again until an operator repairs them.
#[derive(Debug, Default)]
struct Complaints(BTreeMap<String, LogLimit>);

impl Complaints {
    fn warn(&mut self, about: &str, what: impl std::fmt::Display) {
        let limit = self
            .0
            .entry(about.to_string())
            .or_insert_with(|| LogLimit::new(LOG_EVERY, 1));
        if let Some(held_back) = limit.admit(Instant::now()) {
            warn!(held_back, "{what}");
        }
    }
}

/// When this leader first saw each active rollout's latest progress, on its own clock (the
/// progress deadline counts from it, whichever replica's clock stamped the steps). A new
/// leader starts afresh: after a failover the deadline may come up to one deadline late,
/// never early.
#[derive(Debug, Default)]
struct ProgressClock(BTreeMap<String, (u64, i64)>);

impl ProgressClock {
    /// The leader's time of the progress `mark` stands for: `now` if it is new.
    fn seen(&mut self, rollout: &str, mark: u64, now: i64) -> i64 {
        let entry = self.0.entry(rollout.to_string()).or_insert((mark, now));
        if entry.0 != mark {
            *entry = (mark, now);
        }
        entry.1
    }
}

/// One planning round over every active rollout; returns when the planner wants to run again.
/// A rollout that cannot be read (or planned) is skipped and logged; the others go on (S9).
async fn drive_once(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    round_in: Round<'_>,
) -> Result<Option<i64>, LeadError> {
    let Round {
        complaints,
        clock,
        carried,
    } = round_in;
    let mut carried = by_rollout(carried);
    // One read-only transaction for everything but the rollouts: a freed slot is handed on
    // after this, one read per active rollout, and the grant itself.
    let mut etcd = ctx.etcd.clone();
    // The rollouts active last round are read with the round (one round trip when unchanged).
    let expected: Vec<String> = clock.0.keys().cloned().collect();
    let mut round = store::read_round(&mut etcd, &ctx.keys, Some(leader.key()), &expected).await?;
    if round.leader_rev != Some(leader.rev()) {
        return Err(LeadError::Deposed {
            key: String::from_utf8_lossy(leader.key()).into_owned(),
            ttl: ctx.config.etcd.lease_ttl,
        });
    }
    let mut fleet = round.fleet;
    for e in &fleet.unreadable {
        complaints.warn(e, format_args!("left out of planning: {e}"));
    }
    // The token counter as read, then as this round's grants move it.
    let mut token = round.token;
    let mut wake: Option<i64> = None;
    let mut gauges = Vec::new();
    // Rollouts no longer active are forgotten by the progress clock.
    clock.0.retain(|rid, _| round.active.contains(rid));
    for rid in round.active {
        let read = match round.views.remove(&rid) {
            Some(read) => read,
            None => store::read_rollout(&mut etcd, &ctx.keys, &rid, fleet.revision).await,
        };
        let mut view = match read {
            Ok(Some(view)) => view,
            Ok(None) => continue,
            Err(e @ StoreError::Corrupt { .. }) => {
                let what = format_args!(
                    "rollout {rid}: cannot read it, skipping it (the other rollouts go on): \
                     {e}; repair or delete that key"
                );
                complaints.warn(&rid, what);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let carry = carried.remove(&rid).unwrap_or_default();
        let driven = if carry.is_empty() {
            drive_rollout(ctx, leader, &fleet, &view, &mut token, &mut gauges, clock).await
        } else {
            let mut with = Carried {
                fleet: &mut fleet,
                view: &mut view,
                token: &mut token,
                gauges: &mut gauges,
                clock,
            };
            drive_carrying(ctx, leader, &mut with, carry).await
        };
        match driven {
            Ok(Some(at)) => wake = Some(wake.map_or(at, |w: i64| w.min(at))),
            Ok(None) => {}
            Err(e) => complaints.warn(
                &rid,
                format_args!("rollout {rid}: planning round failed: {e}"),
            ),
        }
    }
    ctx.metrics.set_rollouts(&gauges);
    Ok(wake)
}

/// Results offered to a round, by rollout.
fn by_rollout(carried: Vec<Carry>) -> BTreeMap<String, Vec<Carry>> {
    let mut by = BTreeMap::<String, Vec<Carry>>::new();
    for c in carried {
        by.entry(c.offer.rollout.clone()).or_default().push(c);
    }
    by
}

/// What planning a rollout with carried results changes: the round's fleet and token, the
/// rollout's view, the gauges and the progress clock.
struct Carried<'a> {
    fleet: &'a mut FleetView,
    view: &'a mut RolloutView,
    token: &'a mut (u64, i64),
    gauges: &'a mut Vec<RolloutGauges>,
    clock: &'a mut ProgressClock,
}

/// Plans a rollout with the results offered to this round applied, and when the plan grants,
/// writes those results in the grants' first transaction ([`handover`]). Any other decision is
/// not acted on: it rests on results not written yet. They are handed back (dropped), their
/// sessions write them, and the next round plans from what etcd holds.
async fn drive_carrying(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    w: &mut Carried<'_>,
    carry: Vec<Carry>,
) -> Result<Option<i64>, StoreError> {
    let undo = handover::apply(&carry, &mut w.view.steps, w.fleet);
    let now = now_ms();
    let seen = w
        .clock
        .seen(&w.view.rollout.id, planner::progress_mark(w.view), now);
    let Plan { decision, report } = planner::plan_view(w.view, w.fleet, now, Some(seen));
    w.gauges
        .push(RolloutGauges::of(w.view, w.fleet, &report, now));
    if let Decision::Grant {
        hosts,
        recheck_at_ms,
    } = decision
    {
        if handover::can_carry(&carry, &hosts) {
            let basis = GrantBasis {
                fleet: w.fleet,
                view: w.view,
                unavailable: &report.unavailable,
            };
            if let Some(rev) = grant(ctx, leader, &basis, &hosts, w.token, &carry).await? {
                for c in carry {
                    c.written(rev);
                }
                return Ok(recheck_at_ms);
            }
        }
    }
    undo.undo(w.fleet);
    Ok(None)
}

/// The leader's fence: its election key must still be the one it won with.
pub fn fence(leader: &LeaderKey) -> Compare {
    Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev())
}

/// Plans one rollout and carries the decision out; returns when to plan it again if nothing
/// changes before.
async fn drive_rollout(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    fleet: &FleetView,
    view: &RolloutView,
    token: &mut (u64, i64),
    gauges: &mut Vec<RolloutGauges>,
    clock: &mut ProgressClock,
) -> Result<Option<i64>, StoreError> {
    let r = &view.rollout;
    if r.phase.is_terminal() {
        finish(ctx, leader, r).await?;
        return Ok(None);
    }
    let now = now_ms();
    let seen = clock.seen(&r.id, planner::progress_mark(view), now);
    let Plan { decision, report } = planner::plan_view(view, fleet, now, Some(seen));
    gauges.push(RolloutGauges::of(view, fleet, &report, now));
    count_halt(ctx, r, &decision);
    match decision {
        Decision::Wait => Ok(None),
        Decision::WaitUntil(at) => Ok(Some(at)),
        Decision::Grant {
            hosts,
            recheck_at_ms,
        } => {
            let basis = GrantBasis {
                fleet,
                view,
                unavailable: &report.unavailable,
            };
            grant(ctx, leader, &basis, &hosts, token, &[]).await?;
            Ok(recheck_at_ms)
        }
        Decision::StampWave(stamp) => {
            stamp_wave(ctx, leader, view, stamp).await?;
            Ok(None)
        }
        Decision::OpenWave(wave) => {
            open_wave(ctx, leader, view, wave).await?;
            Ok(None)
        }
        Decision::SetPhase(phase, why) => {
            set_phase(ctx, leader, view, phase, &explain::verdict(&why)).await?;
            Ok(None)
        }
        Decision::StartRollback(why) => {
            let basis = control::Basis {
                view,
                fleet,
                token_rev: token.1,
            };
            start_rollback(ctx, leader, &basis, &explain::verdict(&why)).await?;
            Ok(None)
        }
    }
}

/// Counts a decision that stops the rollout rolling forward (`rollgate_rollout_halts_total`).
fn count_halt(ctx: &Ctx, r: &RolloutRecord, decision: &Decision) {
    let why = match decision {
        Decision::SetPhase(Phase::Failed | Phase::Paused, why) | Decision::StartRollback(why) => {
            why
        }
        _ => return,
    };
    let reason = match why {
        Verdict::TooManyFailures(_) => HaltReason::failures,
        Verdict::Stalled { .. } => HaltReason::progress_deadline,
        Verdict::Completed { .. } => return,
    };
    let labels = HaltLabels {
        service: r.spec.service.clone(),
        reason,
    };
    ctx.metrics.halts.get_or_create(&labels).inc();
}

/// Starts the rollback the failure policy asks for; halts the rollout if it cannot.
async fn start_rollback(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    basis: &control::Basis<'_>,
    reason: &str,
) -> Result<(), StoreError> {
    let r = &basis.view.rollout;
    match control::start_rollback(ctx, basis, reason, Some(fence(leader)), None).await {
        Ok(Some(new)) => {
            info!(rollout = %r.id, rollback = %new.id, "failure policy started a rollback")
        }
        Ok(None) => {}
        Err(ControlError::Conflict(e)) => {
            // A grant or an operator got in between: the watch brings the next round.
            info!(rollout = %r.id, "rollback not started yet: {e}");
        }
        Err(e) => {
            warn!(rollout = %r.id, "cannot roll back: {e}; halting instead");
            let why = format!("{reason}; but {e}");
            set_phase(ctx, leader, basis.view, Phase::Failed, &why).await?;
        }
    }
    Ok(())
}

/// Stamps the end of a wave with the leader's clock: its timed gate counts from now; a manual
/// gate's stamp is what the event log announces (`gate_waiting`).
async fn stamp_wave(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    view: &RolloutView,
    stamp: WaveStamp,
) -> Result<(), StoreError> {
    let mut next = view.rollout.clone();
    let WaveStamp { wave, gate } = stamp;
    next.wave_done = Some(WaveDone {
        wave,
        at_ms: now_ms(),
        gate,
    });
    if put_rollout(ctx, leader, view, &next).await? {
        match gate {
            WaveGate::Timed => {
                info!(rollout = %next.id, wave = wave + 1, "wave finished; its gate starts now (leader's clock)")
            }
            WaveGate::Manual => {
                info!(rollout = %next.id, wave = wave + 1, "wave finished; waiting for `rollgate rollout promote`")
            }
        }
    }
    Ok(())
}

/// Opens a wave: its gate passed.
async fn open_wave(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    view: &RolloutView,
    wave: u32,
) -> Result<(), StoreError> {
    let mut next = view.rollout.clone();
    next.wave = wave;
    next.updated_at_ms = now_ms();
    if put_rollout(ctx, leader, view, &next).await? {
        info!(rollout = %next.id, wave, "gate passed; wave {wave} is open");
    }
    Ok(())
}

/// Writes a rollout record the leader changed, fenced and compared with what it read.
async fn put_rollout(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    view: &RolloutView,
    next: &RolloutRecord,
) -> Result<bool, StoreError> {
    let key = ctx.keys.rollout(&next.id);
    let txn = Txn::new()
        .when(vec![
            fence(leader),
            Compare::mod_revision(key.clone(), CompareOp::Equal, view.rollout_rev),
        ])
        .and_then(vec![TxnOp::put(key, encode(next), None)]);
    Ok(ctx.etcd.clone().txn(txn).await?.succeeded())
}

async fn set_phase(
    ctx: &Arc<Ctx>,
    leader: &LeaderKey,
    view: &RolloutView,
    phase: Phase,
    reason: &str,
) -> Result<(), StoreError> {
    let keys = &ctx.keys;
    let r = &view.rollout;
    let mut next = r.clone();
    next.phase = phase;
    next.reason = reason.to_string();
    next.updated_at_ms = now_ms();
    let mut ops = vec![TxnOp::put(keys.rollout(&r.id), encode(&next), None)];
    if phase == Phase::Succeeded {
        let entry = HistoryRecord {
            release: r.spec.release.clone(),
            rollout_id: r.id.clone(),
            at_ms: next.updated_at_ms,
        };
        ops.push(TxnOp::put(
            keys.history_entry(&r.spec.service, entry.at_ms, &r.id),
            encode(&entry),
            None,
        ));
    }
    let txn = Txn::new()
        .when(vec![
            fence(leader),
            Compare::mod_revision(keys.rollout(&r.id), CompareOp::Equal, view.rollout_rev),
        ])
        .and_then(ops);
    if ctx.etcd.clone().txn(txn).await?.succeeded() {
        info!(rollout = %r.id, %phase, %reason, "rollout {phase}");
    }
    Ok(())
}

/// A rollout that ended releases its service; a rollback that ended settles the rollout it
/// rolled back.
async fn finish(ctx: &Arc<Ctx>, leader: &LeaderKey, r: &RolloutRecord) -> Result<(), StoreError> {
    let keys = &ctx.keys;
    let mut etcd = ctx.etcd.clone();
    let mut compares = vec![
        fence(leader),
        Compare::value(keys.active(&r.spec.service), CompareOp::Equal, r.id.clone()),
    ];
    let mut ops = vec![TxnOp::delete(keys.active(&r.spec.service), None)];
    if let Some(parent_id) = &r.rollback_of {
        let resp = etcd.get(keys.rollout(parent_id), None).await?;
        if let Some(kv) = resp.kvs().first() {
            let mut parent: RolloutRecord = decode(kv)?;
            if parent.phase == Phase::RollingBack {
                let ok = r.phase == Phase::Succeeded;
                parent.phase = if ok { Phase::RolledBack } else { Phase::Failed };
                parent.reason = if ok {
                    format!(
                        "{}; rolled back by {}: every host is on {} again",
                        parent.reason, r.id, r.spec.release.version
                    )
                } else {
                    format!(
                        "{}; its rollback {} {}: {}",
                        parent.reason, r.id, r.phase, r.reason
                    )
                };
                parent.updated_at_ms = now_ms();
                compares.push(Compare::mod_revision(
                    keys.rollout(parent_id),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
                ops.push(TxnOp::put(keys.rollout(parent_id), encode(&parent), None));
            }
        }
    }
    let txn = Txn::new().when(compares).and_then(ops);
    if etcd.txn(txn).await?.succeeded() {
        info!(rollout = %r.id, phase = %r.phase, "rollout ended; service {} is free for the next rollout", r.spec.service);
    }
    Ok(())
}
