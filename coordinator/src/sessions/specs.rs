//! What recording a host's result needs of its rollout (the service and the release), kept by
//! the replica: a rollout's spec never changes and rollouts are never deleted, while its record
//! (every target listed) grows with the fleet. Thousands of hosts reporting, or replaying their
//! last result in the hello after a restart, then cost etcd one read of it, not one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rollgate_proto::spec::ReleaseSpec;

use crate::store::{decode, RolloutRecord, StoreError};
use crate::Ctx;

/// Rollouts whose spec is kept; past it the cache starts over (only rollouts a host has a
/// step in are looked up, so hosts cannot grow it, S9).
pub const MAX_KEPT: usize = 64;

/// A rollout's service and release, as its immutable spec says.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutTarget {
    /// The service it updates.
    pub service: String,
    /// The release it installs.
    pub release: ReleaseSpec,
}

/// The kept specs, by rollout id.
#[derive(Debug, Default)]
pub struct RolloutSpecs {
    kept: Mutex<HashMap<String, Arc<RolloutTarget>>>,
}

impl RolloutSpecs {
    /// The rollout's service and release; `None` when there is no such rollout.
    pub async fn get(
        &self,
        ctx: &Ctx,
        rid: &str,
    ) -> Result<Option<Arc<RolloutTarget>>, StoreError> {
        if let Some(kept) = self.kept.lock().expect("specs lock").get(rid) {
            return Ok(Some(kept.clone()));
        }
        let resp = ctx.etcd.clone().get(ctx.keys.rollout(rid), None).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let record: RolloutRecord = decode(kv)?;
        let target = Arc::new(RolloutTarget {
            service: record.spec.service,
            release: record.spec.release,
        });
        let mut kept = self.kept.lock().expect("specs lock");
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(rid.to_string(), target.clone());
        Ok(Some(target))
    }
}
