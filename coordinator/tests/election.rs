//! Waiting in line for leadership on a real etcd (the coordinator's own local etcd, TLS and
//! all) with the coordinator's real election code: a wait cut short (a timeout, a broken
//! connection, a restart of the waiting task) keeps the candidate's place, and the oldest
//! candidate leads next. Needs the `etcd` binary (`ETCD_BIN`).

mod common;

use std::time::Duration;

use etcd_client::Client;
use rollgate_coordinator::election::campaign;

const NAME: &str = "/rollgate/leader";
/// Long enough that no lease expires during the test.
const TTL_SECS: i64 = 30;
/// How long a wait is given before it is cut short.
const CUT_AFTER: Duration = Duration::from_millis(300);
/// How long a candidate may take to lead once the line ahead of it is gone.
const LEADS_WITHIN: Duration = Duration::from_secs(5);

/// The create revision of `lease`'s key in line (its place), if it is there.
async fn place(etcd: &mut Client, lease: i64) -> Option<i64> {
    let resp = etcd
        .get(format!("{NAME}/{lease:x}"), None)
        .await
        .expect("get");
    resp.kvs().first().map(|kv| kv.create_revision())
}

#[tokio::test]
async fn a_cut_wait_keeps_the_place_in_line_and_the_oldest_leads_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, etcd, cancel) = common::start_etcd(dir.path()).await;
    let mut c = rollgate_coordinator::etcd_conn::connect(
        &etcd.connect_config(&cfg),
        std::slice::from_ref(&etcd.endpoint),
        &rollgate_coordinator::metrics::EtcdMetrics::default(),
    )
    .await
    .expect("connect");
    let lease = || {
        let mut c = c.clone();
        async move { c.lease_grant(TTL_SECS, None).await.expect("lease").id() }
    };
    let (a, b, later) = (lease().await, lease().await, lease().await);

    let leader_a = campaign(&mut c, NAME, "a", a)
        .await
        .expect("a leads at once");
    // b waits; its wait is cut short twice, as a request timeout used to do every 5 s.
    for _ in 0..2 {
        let cut = tokio::time::timeout(CUT_AFTER, campaign(&mut c.clone(), NAME, "b", b)).await;
        assert!(cut.is_err(), "b must wait while a leads");
    }
    let b_place = place(&mut c, b).await.expect("b stays in line");
    // A candidate that joins after b's first try (as a restarted leader would).
    let cut = tokio::time::timeout(CUT_AFTER, campaign(&mut c.clone(), NAME, "l", later)).await;
    assert!(cut.is_err(), "the later one must wait too");
    assert!(place(&mut c, later).await > Some(b_place));

    let (mut cb, mut cl) = (c.clone(), c.clone());
    let wait_b = tokio::spawn(async move { campaign(&mut cb, NAME, "b", b).await });
    let wait_l = tokio::spawn(async move { campaign(&mut cl, NAME, "l", later).await });
    c.lease_revoke(leader_a.lease()).await.expect("a goes");
    let leader_b = tokio::time::timeout(LEADS_WITHIN, wait_b)
        .await
        .expect("b leads once a is gone")
        .expect("task")
        .expect("campaign");
    assert_eq!(
        leader_b.rev(),
        b_place,
        "b leads with the key it joined with (its place was kept)"
    );
    assert!(!wait_l.is_finished(), "the later candidate must still wait");

    c.lease_revoke(b).await.expect("b goes");
    let leader_l = tokio::time::timeout(LEADS_WITHIN, wait_l)
        .await
        .expect("the later candidate leads once b is gone")
        .expect("task")
        .expect("campaign");
    assert_eq!(Some(leader_l.rev()), place(&mut c, later).await);
    cancel.cancel();
    etcd.stopped().await;
}
