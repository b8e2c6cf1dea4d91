//! Typed reads of the fleet and of rollouts, each at one etcd revision.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};

use super::{
    decode, HistoryRecord, HostRecord, HostStep, Keys, PinRecord, RolloutRecord, SlotRecord,
    StageRecord, StoreError,
};

/// A rollout and its per-host state, read at one etcd revision.
#[derive(Debug, Clone)]
pub struct RolloutView {
    /// The rollout record.
    pub rollout: RolloutRecord,
    /// Its key's mod revision (grants and phase changes compare it).
    pub rollout_rev: i64,
    /// Each target's step (absent: pending, never granted).
    pub steps: BTreeMap<String, HostStep>,
    /// Staging reports, by host.
    pub staged: BTreeMap<String, StageRecord>,
}

/// The fleet as read at one etcd revision.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Durable host records.
    pub hosts: BTreeMap<String, HostRecord>,
    /// Hosts with a live session, and the lease their session key is bound to.
    pub connected: BTreeMap<String, i64>,
    /// Live slots: (service, host) -> grant.
    pub slots: BTreeMap<(String, String), SlotRecord>,
    /// The revision all of this was read at.
    pub revision: i64,
    /// Records under `hosts/` or `slots/` that could not be read (each error names its key):
    /// left out, so one bad record degrades one host, not every read of the fleet.
    pub unreadable: Vec<String>,
    /// Operators' pins, by host: already applied to `hosts`.
    pub pins: BTreeMap<String, PinRecord>,
    /// Per pinned host, what its agent claims that the pin overrides (empty: nothing).
    pub overridden: BTreeMap<String, Vec<String>>,
}

impl FleetView {
    /// Whether a host has a live session.
    pub fn is_connected(&self, host: &str) -> bool {
        self.connected.contains_key(host)
    }
    /// The live slot of a host for a service.
    pub fn slot(&self, service: &str, host: &str) -> Option<&SlotRecord> {
        self.slots.get(&(service.to_string(), host.to_string()))
    }
}

/// Reads all host records, sessions and slots (one consistent revision).
pub async fn read_fleet(client: &mut Client, keys: &Keys) -> Result<FleetView, StoreError> {
    Ok(read_round(client, keys, None, &[]).await?.fleet)
}

/// What a planning round reads besides the rollouts themselves.
#[derive(Debug)]
pub struct RoundView {
    /// Hosts, sessions, slots.
    pub fleet: FleetView,
    /// Ids of the active rollouts.
    pub active: Vec<String>,
    /// The token counter and its mod revision (0, 0 before the first grant).
    pub token: (u64, i64),
    /// Create revision of `leader_key`, when one was asked for and exists.
    pub leader_rev: Option<i64>,
    /// The expected rollouts, read at the same revision (`None`: no such rollout).
    pub views: BTreeMap<String, Result<Option<RolloutView>, StoreError>>,
}

/// Reads hosts, sessions, slots, the active rollouts, the token counter and (optionally) the
/// leader's election key in one read-only transaction: one round trip, one revision, no
/// write (etcd serves a read-only txn like a linearizable read). A freed slot is handed on
/// after this, one read per active rollout, and the grant.
///
/// `expected` names the rollouts the caller expects to be active (the last round's): each is
/// read in the same transaction ([`RoundView::views`]), so when the set has not changed a
/// round is this one round trip, not one more per rollout.
pub async fn read_round(
    client: &mut Client,
    keys: &Keys,
    leader_key: Option<&[u8]>,
    expected: &[String],
) -> Result<RoundView, StoreError> {
    let prefix = || Some(GetOptions::new().with_prefix());
    let mut ops = vec![
        TxnOp::get(keys.hosts(), prefix()),
        TxnOp::get(
            keys.sessions(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
        TxnOp::get(keys.all_slots(), prefix()),
        TxnOp::get(keys.services(), prefix()),
        TxnOp::get(keys.token(), None),
        TxnOp::get(keys.pins(), prefix()),
    ];
    if let Some(k) = leader_key {
        ops.push(TxnOp::get(k.to_vec(), None));
    }
    // The expected rollouts' reads follow.
    let first_view = ops.len();
    ops.extend(
        expected
            .iter()
            .map(|rid| TxnOp::get(keys.rollout(rid), prefix())),
    );
    let resp = client.txn(Txn::new().and_then(ops)).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let gets: Vec<_> = resp
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect();
    let kvs = |i: usize| gets.get(i).map(|g| g.kvs()).unwrap_or_default();

    let mut unreadable = Vec::new();
    let mut hosts = BTreeMap::new();
    for kv in kvs(0) {
        match decode::<HostRecord>(kv) {
            Ok(rec) => _ = hosts.insert(rec.host_id.clone(), rec),
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    let sp = keys.sessions();
    let connected = kvs(1)
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key_str().ok()?.strip_prefix(&sp)?.to_string(),
                kv.lease(),
            ))
        })
        .collect();
    let mut slots = BTreeMap::new();
    for kv in kvs(2) {
        match decode::<SlotRecord>(kv) {
            Ok(rec) => _ = slots.insert((rec.service.clone(), rec.host_id.clone()), rec),
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    let active = active_from(kvs(3));
    let token = match kvs(4).first() {
        Some(kv) => (decode::<u64>(kv)?, kv.mod_revision()),
        None => (0, 0),
    };
    let leader_rev = leader_key.and_then(|_| kvs(6).first().map(KeyValue::create_revision));
    let views = expected
        .iter()
        .enumerate()
        .map(|(i, rid)| (rid.clone(), rollout_view(kvs(first_view + i), keys, rid)))
        .collect();
    let (pins, overridden) = apply_pins(kvs(5), keys, &mut hosts, &mut unreadable);
    Ok(RoundView {
        fleet: FleetView {
            hosts,
            connected,
            slots,
            revision,
            unreadable,
            pins,
            overridden,
        },
        active,
        token,
        leader_rev,
        views,
    })
}

/// Reads one rollout with its steps and staging reports; `None` when it does not exist.
pub async fn read_rollout(
    client: &mut Client,
    keys: &Keys,
    rid: &str,
    revision: i64,
) -> Result<Option<RolloutView>, StoreError> {
    let mut opts = GetOptions::new().with_prefix();
    if revision > 0 {
        opts = opts.with_revision(revision);
    }
    // `rollouts/<rid>` plus `rollouts/<rid>/...`; `rollouts/<rid>x...` is filtered out below.
    let resp = client.get(keys.rollout(rid), Some(opts)).await?;
    rollout_view(resp.kvs(), keys, rid)
}

/// The view of rollout `rid` from a prefix read of `rollouts/<rid>`.
fn rollout_view(
    kvs: &[KeyValue],
    keys: &Keys,
    rid: &str,
) -> Result<Option<RolloutView>, StoreError> {
    let mut rollout = None;
    let mut steps = BTreeMap::new();
    let mut staged = BTreeMap::new();
    for kv in kvs {
        let Ok(key) = kv.key_str() else { continue };
        match keys.parse_rollout_key(key) {
            Some((r, "", _)) if r == rid => {
                rollout = Some((decode::<RolloutRecord>(kv)?, kv.mod_revision()))
            }
            Some((r, "hosts", host)) if r == rid => {
                steps.insert(host.to_string(), decode::<HostStep>(kv)?);
            }
            Some((r, "staged", host)) if r == rid => {
                staged.insert(host.to_string(), decode::<StageRecord>(kv)?);
            }
            _ => {}
        }
    }
    Ok(rollout.map(|(rollout, rollout_rev)| RolloutView {
        rollout,
        rollout_rev,
        steps,
        staged,
    }))
}

/// Every rollout record, and the ones that cannot be read.
#[derive(Debug, Default)]
pub struct RolloutList {
    /// Readable records, newest first.
    pub records: Vec<RolloutRecord>,
    /// Rollouts whose record cannot be read: (id from the key, error naming the key).
    pub unreadable: Vec<(String, StoreError)>,
}

/// Every rollout, newest first; a record that cannot be read is set aside, not an error for
/// every rollout (S9).
pub async fn list_rollouts(client: &mut Client, keys: &Keys) -> Result<RolloutList, StoreError> {
    let resp = client
        .get(keys.rollouts(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut out = RolloutList::default();
    for kv in resp.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        if let Some((rid, "", _)) = keys.parse_rollout_key(key) {
            match decode::<RolloutRecord>(kv) {
                Ok(r) => out.records.push(r),
                Err(e) => out.unreadable.push((rid.to_string(), e)),
            }
        }
    }
    out.records
        .sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
    Ok(out)
}

/// Ids of the rollouts that are active (one per service at most).
pub async fn active_rollouts(client: &mut Client, keys: &Keys) -> Result<Vec<String>, StoreError> {
    let resp = client
        .get(keys.services(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(active_from(resp.kvs()))
}

fn active_from(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .filter(|kv| {
            kv.key_str()
                .map(|k| k.ends_with("/active"))
                .unwrap_or(false)
        })
        .filter_map(|kv| kv.value_str().ok().map(str::to_string))
        .collect()
}

/// A service's release history, newest first.
pub async fn history(
    client: &mut Client,
    keys: &Keys,
    service: &str,
) -> Result<Vec<HistoryRecord>, StoreError> {
    let resp = client
        .get(keys.history(service), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut out = resp
        .kvs()
        .iter()
        .map(decode::<HistoryRecord>)
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

/// Pins by host, applied to the host records (a pin that cannot be read is named in
/// `unreadable`, and its host left out: better no host than one with labels it chose).
fn apply_pins(
    kvs: &[KeyValue],
    keys: &Keys,
    hosts: &mut BTreeMap<String, HostRecord>,
    unreadable: &mut Vec<String>,
) -> (BTreeMap<String, PinRecord>, BTreeMap<String, Vec<String>>) {
    let prefix = keys.pins();
    let mut pins = BTreeMap::new();
    let mut overridden = BTreeMap::new();
    for kv in kvs {
        let Some(host) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
            continue;
        };
        match decode::<PinRecord>(kv) {
            Ok(pin) => {
                if let Some(rec) = hosts.get_mut(host) {
                    let o = pin.apply(rec);
                    if !o.is_empty() {
                        overridden.insert(host.to_string(), o);
                    }
                }
                pins.insert(host.to_string(), pin);
            }
            Err(e) => {
                unreadable.push(e.to_string());
                hosts.remove(host);
            }
        }
    }
    (pins, overridden)
}
