//! An order as intake accepted it and as its service task carries it out: which order
//! ([`OrderRef`]), what it asks ([`Accepted`]) and how it ended ([`Finished`]).

use std::time::Duration;

use rollgate_proto::pb::{self, Health, Outcome, Step};

use crate::release::fetch::Artifact;
use crate::state::journal::InFlight;

/// Which order a message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderRef {
    pub rollout_id: String,
    pub token: u64,
    pub service: String,
}

impl OrderRef {
    pub(crate) fn of(order: &pb::UpdateOrder) -> OrderRef {
        OrderRef {
            rollout_id: order.rollout_id.clone(),
            token: order.token,
            service: order.service.clone(),
        }
    }

    pub(crate) fn progress(&self, step: Step, message: String) -> pb::OrderProgress {
        pb::OrderProgress {
            rollout_id: self.rollout_id.clone(),
            token: self.token,
            service: self.service.clone(),
            step: step as i32,
            message,
        }
    }

    pub(crate) fn result(
        &self,
        outcome: Outcome,
        running_version: &str,
        health: Health,
        reason: String,
    ) -> pb::OrderResult {
        pb::OrderResult {
            rollout_id: self.rollout_id.clone(),
            token: self.token,
            service: self.service.clone(),
            outcome: outcome as i32,
            running_version: running_version.to_string(),
            reason,
            health: health as i32,
            ..Default::default()
        }
    }
}

impl From<&InFlight> for OrderRef {
    fn from(f: &InFlight) -> OrderRef {
        OrderRef {
            rollout_id: f.rollout_id.clone(),
            token: f.token,
            service: f.service.clone(),
        }
    }
}

/// An order that passed intake and is journaled; its service task carries it out.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub id: OrderRef,
    pub artifact: Artifact,
    pub min_healthy: Duration,
    pub deadline: Duration,
    /// Release dir the update installs.
    pub target_dir: String,
}

/// How an order (or the undo of one) ended, for the service task to commit.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub result: pb::OrderResult,
    /// The release dir that became current and passed verification, if any.
    pub committed: Option<String>,
    /// The release dir to keep as the one to go back to.
    pub previous: Option<String>,
}
