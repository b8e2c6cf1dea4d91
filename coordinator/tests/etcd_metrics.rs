//! The etcd metrics' error rule on a real etcd (the coordinator's own local etcd, TLS with
//! client certificates): a call etcd refuses with a gRPC status, here a Range at a compacted
//! revision (a trailers-only response: the status is in the headers), counts as an error of
//! its method; calls etcd carries out do not. Needs the `etcd` binary (`ETCD_BIN`).

mod common;

use etcd_client::GetOptions;
use prometheus_client::registry::Registry;
use rollgate_coordinator::metrics::EtcdMetrics;

#[tokio::test]
async fn a_call_etcd_refuses_counts_as_an_error_of_its_method() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, etcd, cancel) = common::start_etcd(dir.path()).await;
    let metrics = EtcdMetrics::default();
    let mut client = rollgate_coordinator::etcd_conn::connect(
        &etcd.connect_config(&cfg),
        std::slice::from_ref(&etcd.endpoint),
        &metrics,
    )
    .await
    .expect("connect");

    let mut revisions = Vec::new();
    for v in ["1", "2", "3"] {
        let put = client.put("k", v, None).await.expect("put");
        revisions.push(put.header().expect("header").revision());
    }
    client
        .compact(revisions[2], None)
        .await
        .expect("compaction");
    let old = GetOptions::new().with_revision(revisions[0]);
    let err = client.get("k", Some(old)).await.expect_err("compacted");
    let page = render(&metrics);
    println!("etcd said: {err}");
    for line in page
        .lines()
        .filter(|l| l.contains("_count") || l.contains("errors"))
    {
        println!("{line}");
    }
    assert!(
        matches!(&err, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange),
        "{err:?}"
    );
    let has = |sample: &str| page.lines().any(|l| l == sample);
    assert!(
        has("rollgate_etcd_request_errors_total{method=\"range\"} 1"),
        "{page}"
    );
    assert!(
        has("rollgate_etcd_request_duration_seconds_count{method=\"put\"} 3"),
        "{page}"
    );
    assert!(!page.contains("errors_total{method=\"put\"}"), "{page}");
    assert!(!page.contains("errors_total{method=\"compact\"}"), "{page}");
    cancel.cancel();
}

fn render(metrics: &EtcdMetrics) -> String {
    let mut registry = Registry::with_prefix("rollgate");
    metrics.register(&mut registry);
    let mut page = String::new();
    prometheus_client::encoding::text::encode(&mut page, &registry).expect("encode");
    page
}
