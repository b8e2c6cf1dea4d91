//! Leader election on etcd, done by the replica itself: one key per candidate,
//! `<prefix>leader/<lease hex>`, bound to the replica's kept-alive lease; the oldest key (lowest
//! create revision) leads, and each candidate waits for the one just ahead of it to go. These
//! are the keys etcd's own election API writes, so replicas of either kind share one line.
//!
//! Why not etcd's Campaign call: it blocks on the server until this replica leads, and when it
//! is cancelled (a request timeout, a broken connection) etcd deletes the candidate's key, so
//! the replica goes to the back of the line. Here a failed request changes nothing: the key
//! stays while the lease lives, and campaigning again finds its place.

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaderKey, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, WatchOptions,
};

/// Joins the line for leadership `name` (or finds this lease's place in it again) and waits
/// until every candidate ahead of it is gone; returns the key this replica leads with. Its
/// create revision fences the leader's writes. Cancel-safe: dropping it leaves the key (and
/// so the place in line) to the lease.
pub async fn campaign(
    etcd: &mut Client,
    name: &str,
    value: &str,
    lease: i64,
) -> Result<LeaderKey, etcd_client::Error> {
    let key = format!("{name}/{lease:x}");
    let rev = join(etcd, &key, value, lease).await?;
    let line = format!("{name}/");
    loop {
        // The candidate just ahead in line, if any.
        let ahead = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let resp = etcd.get(line.clone(), Some(ahead)).await?;
        let Some(kv) = resp.kvs().first() else {
            break;
        };
        let seen_at = resp.header().map_or(0, |h| h.revision());
        wait_deleted(etcd, kv.key().to_vec(), seen_at + 1).await?;
    }
    Ok(LeaderKey::new()
        .with_name(name)
        .with_key(key)
        .with_rev(rev)
        .with_lease(lease))
}

/// Puts this replica's key if it has none; returns the key's create revision (its place).
async fn join(
    etcd: &mut Client,
    key: &str,
    value: &str,
    lease: i64,
) -> Result<i64, etcd_client::Error> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = etcd.txn(txn).await?;
    if resp.succeeded() {
        return Ok(resp.header().map_or(0, |h| h.revision()));
    }
    let existing = resp.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
        _ => None,
    });
    // Gone in between (its lease just expired): the next attempt puts it again.
    existing.ok_or_else(|| {
        etcd_client::Error::ElectError(format!("the election key {key} vanished while joining"))
    })
}

/// Waits until `key` is deleted, watching from `from` (the revision it was last seen at + 1).
async fn wait_deleted(
    etcd: &mut Client,
    key: Vec<u8>,
    from: i64,
) -> Result<(), etcd_client::Error> {
    let options = WatchOptions::new().with_start_revision(from);
    let mut watch = crate::etcd_conn::watch(etcd, key, Some(options)).await?;
    while let Some(resp) = watch.message().await? {
        if resp
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return Ok(());
        }
    }
    Err(etcd_client::Error::WatchError(
        "etcd closed the watch on the candidate ahead in line".into(),
    ))
}
