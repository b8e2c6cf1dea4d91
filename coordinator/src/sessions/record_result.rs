//! Recording an order's outcome from a host's session: the step, the host record and the
//! grant's slot, in one fenced etcd transaction.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rollgate_proto::pb;
use rollgate_proto::text::printable;
use tracing::{debug, info, warn};

use super::limits::{bounded, MAX_DETAIL};
use super::{admit, tokens, Replay, Session};
use crate::store::{
    decode, encode, now_ms, HostState, HostStep, ServiceState, SlotRecord, StoreError,
    MAX_INTERRUPTIONS,
};

impl Session {
    /// Records an order's outcome. Fenced by the step's token, so a stale or repeated result
    /// changes nothing. The host's share of the budget is freed by this evidence only: done
    /// (healthy on the new release), or back on the old one; a host that is not healthy again
    /// keeps counting as unavailable through its reported health (S2).
    pub(super) async fn apply_result(
        &mut self,
        r: &pb::OrderResult,
        replay: Replay,
    ) -> Result<(), StoreError> {
        let Some(rid) = self.rollout_id("order result", &r.rollout_id) else {
            return Ok(());
        };
        let keys = &self.ctx.keys;
        let mut etcd = self.ctx.etcd.clone();
        // Ownership: only this host's step, and only the grant it holds.
        let Some((step, step_rev)) = self.step(&rid).await? else {
            debug!(rollout = %rid, token = r.token, "result for a rollout this host has no step in; ignored");
            return Ok(());
        };
        let Some(settled) = admit::settle(&step, r) else {
            debug!(rollout = %rid, token = r.token, step_token = step.token, state = %step.state, "stale or repeated result ignored");
            return Ok(());
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
        let resp = etcd.get(keys.rollout(rid.as_str()), None).await?;
        let service_version = match resp.kvs().first() {
            Some(kv) => {
                let rec: crate::store::RolloutRecord = decode(kv)?;
                (rec.spec.service, rec.spec.release)
            }
            None => return Ok(()),
        };
        let (service, release) = service_version;
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
            .get(&service)
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
        // The grant is over: drop its live slot (if its holder still has it).
        let slot_key = keys.slot(&service, &self.host);
        let resp = etcd.get(slot_key.clone(), None).await?;
        if let Some(kv) = resp.kvs().first() {
            let slot: SlotRecord = decode(kv)?;
            if slot.token == r.token {
                compares.push(Compare::mod_revision(
                    slot_key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
                ops.push(TxnOp::delete(slot_key, None));
            }
        }
        let resp = etcd.txn(Txn::new().when(compares).and_then(ops)).await?;
        if resp.succeeded() {
            self.wrote();
        }
        if !resp.succeeded() && !self.still_mine().await? {
            return Err(StoreError::Superseded {
                host: self.host.clone(),
            });
        }
        if resp.succeeded() {
            let outcome = r.outcome().word();
            match (state, health) {
                (HostState::Interrupted, _) if r.outcome() == pb::Outcome::StaleToken => {
                    warn!(rollout = %rid, token = r.token, reason = %printable(&reason), "the host refused a token below one it has acted on (attempt {interruptions} of {MAX_INTERRUPTIONS}); the counter is now above it and the host will be granted again")
                }
                (HostState::Interrupted, _) => {
                    warn!(rollout = %rid, token = r.token, reason = %printable(&reason), running = %printable(&running_version), "update interrupted by an agent restart (attempt {interruptions} of {MAX_INTERRUPTIONS}); not a failure of the release, the host will be granted again")
                }
                (HostState::Done, _) => {
                    info!(rollout = %rid, token = r.token, version = %printable(&running_version), "host updated and healthy")
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
        Ok(())
    }
}
