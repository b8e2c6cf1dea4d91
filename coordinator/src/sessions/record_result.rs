//! Recording an order's outcome from a host's session: the step, the host record and the
//! grant's slot, in one fenced etcd transaction.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use rollgate_proto::pb;
use rollgate_proto::text::printable;
use tracing::{debug, info, warn};

use super::limits::{bounded, MAX_DETAIL};
use super::{admit, tokens, Replay, Session};
use crate::handover::{Offer, CARRY_WAIT};
use crate::store::{
    decode, encode, now_ms, HostState, HostStep, ServiceState, SlotRecord, StoreError,
    MAX_INTERRUPTIONS,
};

/// How many times a result is read and written again when its transaction lost a race (the
/// step or the grant's slot changed between the reads and the write).
const RESULT_TRIES: u32 = 5;

/// What one attempt at recording a result came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Recorded, or nothing to record (a stale or repeated result).
    Settled,
    /// The step or the slot changed under it; read again and retry.
    Raced,
}

/// What recording a result reads before it writes (see [`Session::read_basis`]).
#[derive(Debug)]
struct Basis {
    /// This host's step and its key's mod revision.
    step: Option<(HostStep, i64)>,
    /// The host's slot of the rollout's service: mod revision and token.
    slot: Option<(i64, u64)>,
}

/// A slot's mod revision and token.
fn slot_of(kv: &etcd_client::KeyValue) -> Result<(i64, u64), StoreError> {
    Ok((kv.mod_revision(), decode::<SlotRecord>(kv)?.token))
}

impl Session {
    /// Records an order's outcome. Fenced by the step's token, so a stale or repeated result
    /// changes nothing. The host's share of the budget is freed by this evidence only: done
    /// (healthy on the new release), or back on the old one; a host that is not healthy again
    /// keeps counting as unavailable through its reported health (S2).
    ///
    /// The step and the grant's slot are settled in one transaction that compares both: a slot
    /// that appears between the reads and the write (re-attached by this replica's order
    /// dispatcher after an old holder's lease ran out) makes it read again, so no slot outlives
    /// its recorded result (nemesis seed 1061: such a slot held a done host's share of the
    /// budget for ever).
    pub(super) async fn apply_result(
        &mut self,
        r: &pb::OrderResult,
        replay: Replay,
    ) -> Result<(), StoreError> {
        for _ in 0..RESULT_TRIES {
            if self.try_apply_result(r, replay).await? == Attempt::Settled {
                return Ok(());
            }
        }
        warn!(rollout = %printable(&r.rollout_id), token = r.token, "this host's result could not be recorded: its step or slot changed {RESULT_TRIES} times while it was written; closing the session so the agent re-sends it");
        Err(StoreError::Contended {
            host: self.host.clone(),
            tries: RESULT_TRIES,
        })
    }

    async fn try_apply_result(
        &mut self,
        r: &pb::OrderResult,
        replay: Replay,
    ) -> Result<Attempt, StoreError> {
        let Some(rid) = self.rollout_id("order result", &r.rollout_id) else {
            return Ok(Attempt::Settled);
        };
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        let Some(target) = self.ctx.hub.specs.get(&self.ctx, rid.as_str()).await? else {
            return Ok(Attempt::Settled);
        };
        let (service, release) = (&target.service, &target.release);
        let basis = self.read_basis(rid.as_str(), service).await?;
        // Ownership: only this host's step, and only the grant it holds.
        let Some((step, step_rev)) = basis.step else {
            debug!(rollout = %rid, token = r.token, "result for a rollout this host has no step in; ignored");
            return Ok(Attempt::Settled);
        };
        let Some(settled) = admit::settle(&step, r) else {
            debug!(rollout = %rid, token = r.token, step_token = step.token, state = %step.state, "stale or repeated result ignored");
            if step.token == r.token && step.state != HostState::Updating {
                self.drop_orphan_slot(rid.as_str(), service, r.token, (step_rev, basis.slot))
                    .await?;
            }
            return Ok(Attempt::Settled);
        };
        let health = r.health();
        let admit::Settled {
            mut state,
            interruptions,
            mut reason,
            running_version,
        } = settled;
        if r.outcome() == pb::Outcome::StaleToken {
            // Above the host's highest token before the host is granted again.
            let raised = tokens::raise_token(&self.ctx, r.highest_token).await;
            if let Some(why) = tokens::refusal(&raised, r.highest_token) {
                state = HostState::Failed;
                reason = bounded(&format!("{}; {why}", r.reason), MAX_DETAIL);
            }
        }
        let new_step = HostStep {
            state,
            token: r.token,
            granted_at_ms: step.granted_at_ms,
            step: crate::store::AgentStep::None,
            message: String::new(),
            reason: reason.clone(),
            running_version: running_version.clone(),
            updated_at_ms: now_ms(),
            interruptions,
        };
        let prev = self
            .record
            .services
            .get(service)
            .cloned()
            .unwrap_or_default();
        if replay == Replay::Live && prev.superseded_by(r.finished_at_ms) {
            self.record.services.insert(
                service.clone(),
                ServiceState {
                    version: running_version.clone(),
                    sha256: if running_version == release.version {
                        release.sha256.clone()
                    } else {
                        prev.sha256
                    },
                    health: health.into(),
                    detail: if state == HostState::Done {
                        String::new()
                    } else {
                        reason.clone()
                    },
                    in_flight_token: 0,
                    in_flight_rollout: String::new(),
                    regressed: false,
                    observed_at_ms: r.finished_at_ms,
                },
            );
        }
        self.record.last_seen_ms = now_ms();
        let step_key = keys.step(rid.as_str(), &self.host);
        let mut compares = vec![
            Compare::mod_revision(step_key.clone(), CompareOp::Equal, step_rev),
            self.mine(),
        ];
        let mut ops = vec![
            TxnOp::put(step_key, encode(&new_step), None),
            TxnOp::put(keys.host(&self.host), encode(&self.record), None),
        ];
        // The grant is over: drop its live slot (if its holder still has it), and only if the
        // slot is still as read (absent included).
        let slot_key = keys.slot(service, &self.host);
        let mut drops_slot = false;
        let slot_seen = match basis.slot {
            Some((mod_rev, token)) => {
                compares.push(Compare::mod_revision(
                    slot_key.clone(),
                    CompareOp::Equal,
                    mod_rev,
                ));
                if token == r.token {
                    ops.push(TxnOp::delete(slot_key, None));
                    drops_slot = true;
                }
                format!("a slot of token {token}")
            }
            None => {
                compares.push(Compare::version(slot_key, CompareOp::Equal, 0));
                "no slot".to_string()
            }
        };
        let what = format!(
            "recording {}'s result for token {}, having read its step and {slot_seen}",
            self.host, r.token
        );
        crate::fault::pause(crate::fault::PausePoint::BeforeResultCommit, &what).await;
        let offer = Offer {
            rollout: rid.to_string(),
            host: self.host.clone(),
            service: service.clone(),
            step: new_step,
            services: self.record.services.clone(),
            drops_slot,
            compares,
            ops,
        };
        // Only a live result is worth the wait: the ones a hello re-sends are old, and their
        // sessions are still opening (in a turn others wait for).
        let carried = match replay {
            Replay::Live => self.carried_by_leader(&offer).await,
            Replay::FromHello => None,
        };
        let revision = match carried {
            Some(revision) => revision,
            None => {
                let txn = Txn::new().when(offer.compares).and_then(offer.ops);
                let resp = etcd.txn(txn).await?;
                if !resp.succeeded() {
                    if !self.still_mine().await? {
                        return Err(StoreError::Superseded {
                            host: self.host.clone(),
                        });
                    }
                    return Ok(Attempt::Raced);
                }
                self.ctx.results_recorded.notify_one();
                resp.header().map_or(0, |h| h.revision())
            }
        };
        self.wrote();
        {
            let outcome = r.outcome().word();
            match (state, health) {
                (HostState::Interrupted, _) if r.outcome() == pb::Outcome::StaleToken => {
                    warn!(rollout = %rid, token = r.token, reason = %printable(&reason), "the host refused a token below one it has acted on (attempt {interruptions} of {MAX_INTERRUPTIONS}); the counter is now above it and the host will be granted again")
                }
                (HostState::Interrupted, _) => {
                    warn!(rollout = %rid, token = r.token, reason = %printable(&reason), running = %printable(&running_version), "update interrupted by an agent restart (attempt {interruptions} of {MAX_INTERRUPTIONS}); not a failure of the release, the host will be granted again")
                }
                (HostState::Done, _) => {
                    info!(rollout = %rid, token = r.token, version = %printable(&running_version), revision, "host updated and healthy")
                }
                (_, pb::Health::Healthy) | (_, pb::Health::Stopped)
                    if r.outcome() != pb::Outcome::Failed =>
                {
                    warn!(rollout = %rid, token = r.token, %outcome, reason = %printable(&reason), "update failed; host is back on {}", printable(&running_version))
                }
                _ => {
                    warn!(rollout = %rid, token = r.token, %outcome, reason = %printable(&reason), "update failed and the host is not healthy; it counts as unavailable until it reports healthy or an operator fences it")
                }
            }
        }
        Ok(Attempt::Settled)
    }

    /// Offers the result to the leader when this replica leads, to be written with the grants
    /// it frees room for ([`crate::handover`]); hands it back when the leader did not write it
    /// (not leading, no grant planned, a conflict) or did not answer within [`CARRY_WAIT`].
    /// Returns the revision it was written at.
    async fn carried_by_leader(&self, offer: &Offer) -> Option<i64> {
        let written = self.ctx.handover.offer(offer.clone())?;
        tokio::time::timeout(CARRY_WAIT, written).await.ok()?.ok()
    }

    /// Reads, at one revision (one round trip to etcd), what recording a result compares:
    /// this host's step in the rollout and its slot of the rollout's `service`.
    async fn read_basis(&self, rid: &str, service: &str) -> Result<Basis, StoreError> {
        let keys = &self.ctx.keys;
        let txn = Txn::new().and_then(vec![
            TxnOp::get(keys.step(rid, &self.host), None),
            TxnOp::get(keys.slot(service, &self.host), None),
        ]);
        let resp = self.ctx.etcd.clone().txn(txn).await?;
        let mut firsts = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let (step, slot) = (firsts.next(), firsts.next());
        Ok(Basis {
            step: step
                .flatten()
                .map(|kv| Ok::<_, StoreError>((decode::<HostStep>(&kv)?, kv.mod_revision())))
                .transpose()?,
            slot: slot.flatten().as_ref().map(slot_of).transpose()?,
        })
    }

    /// A repeated result of a grant whose result is already recorded, while a slot of that
    /// grant still exists (left by a race older versions lost): the slot is dropped, since
    /// the result is the evidence that frees it (S2). `read` is the step's mod revision and the
    /// slot (mod revision, token) as the result's basis read them together: the delete
    /// compares both, so a slot changed since is left alone.
    async fn drop_orphan_slot(
        &self,
        rid: &str,
        service: &str,
        token: u64,
        read: (i64, Option<(i64, u64)>),
    ) -> Result<(), StoreError> {
        let (step_rev, slot) = read;
        let Some((slot_rev, slot_token)) = slot else {
            return Ok(());
        };
        if slot_token != token {
            return Ok(());
        }
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        let slot_key = keys.slot(service, &self.host);
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(keys.step(rid, &self.host), CompareOp::Equal, step_rev),
                Compare::mod_revision(slot_key.clone(), CompareOp::Equal, slot_rev),
            ])
            .and_then(vec![TxnOp::delete(slot_key, None)]);
        if etcd.txn(txn).await?.succeeded() {
            info!(rollout = %rid, token, "dropped the slot of a grant whose result was already recorded");
        }
        Ok(())
    }
}
