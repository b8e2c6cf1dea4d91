//! The one-transaction hand-over (issue 17): a host's result, taken by a session of the
//! replica that leads, rides the leader's next planning round. The leader plans with the
//! result applied and, when that plan grants slots, writes the result and the grants in one
//! fenced transaction: the result's own compares (the host's step and slot as the session read
//! them, the session still the host's) and the grants' (fence, rollout, token, each granted
//! host's step, slot and session) all hold, or nothing is written. One commit and one fsync
//! less between one host's "done" and the next host's order.
//!
//! Anything else (no grant planned, a conflict, a refused transaction, a leader that stops
//! leading) hands the result back by dropping it: its session then writes it alone, exactly
//! as on a replica that does not lead, and its [`crate::Ctx::results_recorded`] bell starts
//! the leader's next round. A result written by both is impossible: both transactions compare
//! the same step revision, and the second finds it changed and reads again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Compare, TxnOp};
use tokio::sync::{mpsc, oneshot};

use crate::store::{FleetView, HostStep, ServiceState, SlotRecord};

/// Results waiting for the leader's next round, at most; a session that finds the inbox full
/// writes its result itself.
const INBOX: usize = 256;
/// Results one round writes with its grants, at most: each adds three compares and up to three
/// operations to a transaction etcd caps at 128 of each.
pub const MAX_CARRIED: usize = 8;
/// How long a session waits for the leader to carry its result before it writes it itself.
pub const CARRY_WAIT: Duration = Duration::from_secs(2);

/// A result a session offered to the leader, with the channel that tells the session.
#[derive(Debug)]
pub struct Carry {
    /// The result, with the writes and compares that record it.
    pub offer: Offer,
    /// Told the revision the result was written at; dropped when it was not.
    reply: oneshot::Sender<i64>,
}

impl Carry {
    /// Tells the session its result was written at `revision`.
    pub fn written(self, revision: i64) {
        let _ = self.reply.send(revision);
    }
}

/// A result a session offers to the leader, with the writes and compares that record it.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The rollout the result is of.
    pub rollout: String,
    /// The reporting host.
    pub host: String,
    /// The rollout's service.
    pub service: String,
    /// The host's step as the result leaves it.
    pub step: HostStep,
    /// The host record's service states as the result leaves them.
    pub services: BTreeMap<String, ServiceState>,
    /// Whether the result drops the host's slot of `service`.
    pub drops_slot: bool,
    /// What must hold for the result to be written.
    pub compares: Vec<Compare>,
    /// The writes that record it.
    pub ops: Vec<TxnOp>,
}

/// The leader's inbox of results, open while this replica leads.
#[derive(Debug, Default)]
pub struct Inbox(Mutex<Option<mpsc::Sender<Carry>>>);

impl Inbox {
    /// Opens the inbox (the leader, when it starts leading).
    pub fn open(&self) -> mpsc::Receiver<Carry> {
        let (tx, rx) = mpsc::channel(INBOX);
        *self.0.lock().expect("inbox lock") = Some(tx);
        rx
    }

    /// Closes it (the leader, when it stops leading): later offers are refused.
    pub fn close(&self) {
        *self.0.lock().expect("inbox lock") = None;
    }

    /// Offers a result to the leader; `None` when this replica does not lead or its inbox is
    /// full (the session writes the result itself). The receiver yields the revision the
    /// result was written at, or an error when the leader handed it back.
    pub fn offer(&self, o: Offer) -> Option<oneshot::Receiver<i64>> {
        let tx = self.0.lock().expect("inbox lock").clone()?;
        let (reply, rx) = oneshot::channel();
        let carry = Carry { offer: o, reply };
        tx.try_send(carry).ok()?;
        Some(rx)
    }
}

/// What [`apply`] changed in the fleet, to put back when the results are not written.
#[derive(Debug, Default)]
pub struct Undo {
    services: Vec<(String, BTreeMap<String, ServiceState>)>,
    slots: Vec<((String, String), SlotRecord)>,
}

impl Undo {
    /// Puts the fleet back as it was read.
    pub fn undo(self, fleet: &mut FleetView) {
        for (host, services) in self.services {
            if let Some(h) = fleet.hosts.get_mut(&host) {
                h.services = services;
            }
        }
        fleet.slots.extend(self.slots);
    }
}

/// Applies the carried results to a rollout's steps and to the fleet as the planner sees them:
/// each host's step, its service states, and its slot when the result drops it.
pub fn apply(
    carried: &[Carry],
    steps: &mut BTreeMap<String, HostStep>,
    fleet: &mut FleetView,
) -> Undo {
    let mut undo = Undo::default();
    for Carry { offer: c, .. } in carried {
        steps.insert(c.host.clone(), c.step.clone());
        if let Some(h) = fleet.hosts.get_mut(&c.host) {
            let before = std::mem::replace(&mut h.services, c.services.clone());
            undo.services.push((c.host.clone(), before));
        }
        if c.drops_slot {
            let key = (c.service.clone(), c.host.clone());
            if let Some(slot) = fleet.slots.remove(&key) {
                undo.slots.push((key, slot));
            }
        }
    }
    undo
}

/// Whether a round's grants can carry these results in their first transaction: few enough,
/// no host both reporting and granted, and no host reporting twice (a new session's result
/// beside its old session's): one transaction cannot write a key twice.
pub fn can_carry(carried: &[Carry], granted: &[String]) -> bool {
    let hosts: std::collections::BTreeSet<&str> =
        carried.iter().map(|c| c.offer.host.as_str()).collect();
    carried.len() <= MAX_CARRIED
        && hosts.len() == carried.len()
        && !granted.iter().any(|g| hosts.contains(g.as_str()))
}

#[cfg(test)]
mod tests;
