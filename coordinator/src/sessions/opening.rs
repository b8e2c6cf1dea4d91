//! Opening a session: its turn (how many sessions may be doing their opening etcd reads and
//! writes at once) and its admission (the ban check, the token counter, the host's pin, read
//! in one transaction). After a restart every agent of the fleet reconnects within seconds;
//! unbounded, their opens queue thousands of requests on etcd, each waits past its timeout, and
//! the agents retry into the same queue. Bounded, the rest wait their turn here (cheaply, in
//! order) or are told to come back, and the replica's own etcd traffic (election, planning)
//! keeps flowing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{KeyValue, Txn, TxnOp, TxnOpResponse};
use rollgate_proto::pb;
use rollgate_proto::tls::Identity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tracing::warn;

use super::limits::LogLimit;
use super::{refuse, tokens, AgentTx};
use crate::Ctx;

/// Session opens doing their etcd work at once. Each open is four or five etcd round trips
/// that, in a storm, take ~100 ms each while neither etcd nor the coordinator is busy (swarm
/// bench at 3000 agents): 32 at a time brought 3000 back in 31 s. Few enough that a storm never
/// queues past a request's timeout.
pub const MAX_OPENING: usize = 128;
/// How long a new session waits for its turn before it is refused; the agent retries after its
/// backoff (a few seconds at most). Waiting is cheap (the connection is already up), a refusal
/// costs the agent a backoff and both sides a new TLS handshake: long enough for a fleet's
/// worth of turns, short of the agent's session-silence limits.
pub const OPENING_WAIT: Duration = Duration::from_secs(15);

/// The turns; one per replica, in its [`super::Hub`].
#[derive(Debug)]
pub struct OpeningTurns {
    turns: Arc<Semaphore>,
    /// How many there are ([`MAX_OPENING`]).
    max: usize,
    /// How long a session waits for one ([`OPENING_WAIT`]).
    wait: Duration,
    /// Sessions waiting for a turn, for the refusal and the log.
    waiting: AtomicUsize,
    /// A storm refuses thousands: a few lines a minute say so.
    refusals: Mutex<LogLimit>,
}

impl Default for OpeningTurns {
    fn default() -> Self {
        OpeningTurns::new(MAX_OPENING, OPENING_WAIT)
    }
}

impl OpeningTurns {
    /// `max` turns, each waited for up to `wait`.
    pub fn new(max: usize, wait: Duration) -> Self {
        OpeningTurns {
            turns: Arc::new(Semaphore::new(max)),
            max,
            wait,
            waiting: AtomicUsize::new(0),
            refusals: Mutex::new(LogLimit::default()),
        }
    }
}

/// Why a session got no turn.
#[derive(Debug, thiserror::Error)]
#[error(
    "this coordinator is busy opening other agents' sessions (no turn within {wait:?}, {max} at \
     a time, {waiting} waiting); the agent retries after its backoff"
)]
pub struct Busy {
    /// How long it waited.
    pub wait: Duration,
    /// The turns there are.
    pub max: usize,
    /// Sessions waiting for a turn (this one included) when this one started waiting.
    pub waiting: usize,
}

impl OpeningTurns {
    /// Waits (first come, first served) up to its wait ([`OPENING_WAIT`]) for a turn; the turn ends when
    /// the returned permit drops.
    pub async fn take(&self) -> Result<OwnedSemaphorePermit, Busy> {
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        let waited = tokio::time::timeout(self.wait, self.turns.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(Ok(turn)) => Ok(turn),
            // The semaphore is never closed; treat it as busy all the same.
            Ok(Err(_)) | Err(_) => Err(Busy {
                wait: self.wait,
                max: self.max,
                waiting,
            }),
        }
    }

    /// Logs (rate-limited) that a session got no turn.
    pub fn refused(&self, busy: &Busy) {
        let admitted = self
            .refusals
            .lock()
            .expect("refusal log lock")
            .admit(std::time::Instant::now());
        if let Some(held_back) = admitted {
            warn!(
                held_back,
                "refused an agent session: {busy}; if this lasts beyond a restart, this replica \
                 has more agents than it can admit: add a replica or check etcd's latency"
            );
        }
    }

    /// Sessions in their turn right now.
    pub fn opening(&self) -> usize {
        self.max - self.turns.available_permits()
    }
}

/// A session admitted to open: its turn, and what the admission read for the opening.
pub(super) struct Admitted {
    /// Held until the session is open and caught up.
    pub(super) turn: tokio::sync::OwnedSemaphorePermit,
    /// The host's pin, as read with the ban check (`None`: no pin).
    pub(super) pin: Option<KeyValue>,
}

/// Waits for a turn at opening a session, then checks the host's certificate against `host
/// forget`'s ban and raises the token counter to the host's highest token; `None` (the agent
/// told why) when the session is not to open. The ban check, the token counter and the host's
/// pin are one etcd transaction (a reconnect storm is thousands of these).
pub(super) async fn admit_in_turn(
    ctx: &Arc<Ctx>,
    peer: Option<&Identity>,
    leaf: Option<&[u8]>,
    hello: &pb::Hello,
    tx: &AgentTx,
) -> Option<Admitted> {
    let turn = match ctx.hub.opening.take().await {
        Ok(turn) => turn,
        Err(busy) => {
            ctx.hub.opening.refused(&busy);
            ctx.metrics.sessions_busy.inc();
            refuse(tx, &busy.to_string()).await;
            return None;
        }
    };
    let holding = format!("host {} holds an opening turn", hello.host_id);
    crate::fault::pause(crate::fault::PausePoint::SessionOpening, &holding).await;
    let reads = vec![
        TxnOp::get(ctx.keys.token(), None),
        TxnOp::get(ctx.keys.pin(&hello.host_id), None),
    ];
    let read = match (peer, leaf) {
        (Some(id), Some(leaf)) => crate::roles::admit_host(ctx, &id.name, leaf, reads).await,
        _ => read_for_opening(ctx, reads).await,
    };
    let read = match read {
        Ok(read) => read,
        Err(refused) => {
            refuse(tx, refused.message()).await;
            return None;
        }
    };
    let mut firsts = read.into_iter().map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    let (counter, pin) = (firsts.next().flatten(), firsts.next().flatten());
    // Before the session exists (no grant can reach this host until then), so that a grant
    // after an etcd restore is never below a token the host has acted on.
    let raised = match tokens::Counter::of(counter.as_ref()) {
        Ok(seen) => tokens::raise_token_from(ctx, hello.highest_token, Some(seen)).await,
        Err(e) => Err(e),
    };
    if let Some(why) = tokens::refusal(&raised, hello.highest_token) {
        warn!("refusing the session: {why}");
        refuse(tx, &why).await;
        return None;
    }
    Some(Admitted { turn, pin })
}

/// The opening's reads without a certificate to check (insecure development mode).
async fn read_for_opening(ctx: &Ctx, reads: Vec<TxnOp>) -> Result<Vec<TxnOpResponse>, Status> {
    let resp = ctx
        .etcd
        .clone()
        .txn(Txn::new().and_then(reads))
        .await
        .map_err(|e| Status::unavailable(format!("cannot read the host's token and pin: {e}")))?;
    Ok(resp.op_responses())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_bounded_and_a_late_one_is_refused() {
        let turns = OpeningTurns::new(3, Duration::from_millis(20));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(turns.take().await.expect("a free turn"));
        }
        assert_eq!(turns.opening(), 3);
        let busy = turns.take().await.expect_err("no turn while all are held");
        assert_eq!(busy.waiting, 1);
        held.pop();
        assert!(turns.take().await.is_ok(), "a released turn is taken");
    }
}
