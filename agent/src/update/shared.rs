//! What the executor and the services' tasks share: the journal, the status board and the
//! outbox to the coordinator.

use std::sync::{Mutex, MutexGuard};

use rollgate_proto::pb::{self, agent_message::Msg};
use tokio::sync::mpsc;

use crate::state::journal::Journal;
use crate::update::status::StatusBoard;

/// What the executor and the service tasks share. Lock order: the journal, then the board
/// (never the journal while holding the board).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) journal: Mutex<Journal>,
    /// Latest status and order in flight of each service (for statuses and hellos), and the
    /// clock that stamps observations and results.
    pub(crate) board: StatusBoard,
    pub(super) outbox: mpsc::UnboundedSender<pb::AgentMessage>,
}

/// Locks a mutex even if a task panicked while holding it: the data is plain state that every
/// writer leaves consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }

    /// Queues a message for the coordinator (dropped only when the agent is shutting down).
    pub(crate) fn send(&self, msg: Msg) {
        let _ = self.outbox.send(pb::AgentMessage { msg: Some(msg) });
    }

    pub(crate) fn status(&self, service: &str) -> Option<pb::ServiceStatus> {
        self.board.status(service)
    }

    /// Records the order's step; from the first one until [`StatusBoard::end_order`] every
    /// status of the service names the order.
    pub(crate) fn set_progress(&self, progress: pb::OrderProgress) {
        self.board.set_progress(progress);
    }
}
