//! etcd request latency and errors, measured once at the gRPC channel every etcd call goes
//! through (not at the call sites): [`MeteredChannel`] is the `BalancedChannelBuilder` handed to
//! `etcd_client::Client::connect_with_balanced_channel`.
//!
//! What is timed: from the request leaving the client to its response headers. For unary
//! calls (Range, Put, Txn, LeaseGrant...) that is nearly the whole call. For streams (Watch,
//! LeaseKeepAlive, Observe) it is the time to open the stream, not its lifetime.
//!
//! What is an error (counted once per call): a transport failure (etcd down, connection
//! refused, timeout); a `grpc-status` other than 0 in the response headers (a trailers-only
//! response: etcd on plain http); a `grpc-status` other than 0 in the trailers (etcd over TLS
//! serves gRPC through Go's HTTP handler, which always sends headers first and the status in
//! the trailers); or the response body breaking off. A stream's error counts when it ends.
//!
//! The endpoints themselves (and their TLS settings, `[etcd.tls]`) are still built by
//! etcd-client from `ConnectOptions`; the channel only balances over them, so TLS to etcd is
//! unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etcd_client::{BalancedChannelBuilder, Channel};
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tonic::codegen::{http, Bytes};
use tower::util::BoxCloneSyncService;
use tower::Service;

/// The response header that carries a trailers-only gRPC status.
const GRPC_STATUS: &str = "grpc-status";

/// An etcd gRPC method, as a label value: a closed set, so an unexpected path cannot grow the
/// label set (it becomes `other`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EtcdMethod {
    range,
    put,
    delete_range,
    txn,
    compact,
    watch,
    lease_grant,
    lease_revoke,
    lease_keep_alive,
    lease_time_to_live,
    lease_leases,
    campaign,
    proclaim,
    leader,
    observe,
    resign,
    lock,
    unlock,
    status,
    member_list,
    member_add,
    member_remove,
    member_update,
    member_promote,
    authenticate,
    other,
}

/// `(service, method)` of each gRPC path etcd serves that rollgate may call, and its label.
const METHODS: &[(&str, &str, EtcdMethod)] = &[
    ("etcdserverpb.KV", "Range", EtcdMethod::range),
    ("etcdserverpb.KV", "Put", EtcdMethod::put),
    ("etcdserverpb.KV", "DeleteRange", EtcdMethod::delete_range),
    ("etcdserverpb.KV", "Txn", EtcdMethod::txn),
    ("etcdserverpb.KV", "Compact", EtcdMethod::compact),
    ("etcdserverpb.Watch", "Watch", EtcdMethod::watch),
    ("etcdserverpb.Lease", "LeaseGrant", EtcdMethod::lease_grant),
    (
        "etcdserverpb.Lease",
        "LeaseRevoke",
        EtcdMethod::lease_revoke,
    ),
    (
        "etcdserverpb.Lease",
        "LeaseKeepAlive",
        EtcdMethod::lease_keep_alive,
    ),
    (
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
        EtcdMethod::lease_time_to_live,
    ),
    (
        "etcdserverpb.Lease",
        "LeaseLeases",
        EtcdMethod::lease_leases,
    ),
    ("v3electionpb.Election", "Campaign", EtcdMethod::campaign),
    ("v3electionpb.Election", "Proclaim", EtcdMethod::proclaim),
    ("v3electionpb.Election", "Leader", EtcdMethod::leader),
    ("v3electionpb.Election", "Observe", EtcdMethod::observe),
    ("v3electionpb.Election", "Resign", EtcdMethod::resign),
    ("v3lockpb.Lock", "Lock", EtcdMethod::lock),
    ("v3lockpb.Lock", "Unlock", EtcdMethod::unlock),
    ("etcdserverpb.Maintenance", "Status", EtcdMethod::status),
    (
        "etcdserverpb.Cluster",
        "MemberList",
        EtcdMethod::member_list,
    ),
    ("etcdserverpb.Cluster", "MemberAdd", EtcdMethod::member_add),
    (
        "etcdserverpb.Cluster",
        "MemberRemove",
        EtcdMethod::member_remove,
    ),
    (
        "etcdserverpb.Cluster",
        "MemberUpdate",
        EtcdMethod::member_update,
    ),
    (
        "etcdserverpb.Cluster",
        "MemberPromote",
        EtcdMethod::member_promote,
    ),
    (
        "etcdserverpb.Auth",
        "Authenticate",
        EtcdMethod::authenticate,
    ),
];

impl EtcdMethod {
    /// The method of a gRPC request path (`/etcdserverpb.KV/Range` is `range`).
    pub fn of_path(path: &str) -> Self {
        let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
            return EtcdMethod::other;
        };
        METHODS
            .iter()
            .find(|(s, m, _)| *s == service && *m == method)
            .map_or(EtcdMethod::other, |(_, _, label)| *label)
    }
}

/// The `method` label of the etcd metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// The gRPC method.
    pub method: EtcdMethod,
}

/// How a call ended, as far as the channel can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
}

/// Buckets of the etcd request latency: 0.5 ms to ~8 s (requests time out after 5 s).
fn request_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 15)
}

type HistogramFamily = Family<MethodLabel, Histogram, fn() -> Histogram>;

/// The etcd request metrics (cheap to clone: every clone feeds the same series).
#[derive(Debug, Clone)]
pub struct EtcdMetrics {
    /// Time to the response headers, by method.
    duration: HistogramFamily,
    /// Failed calls, by method.
    errors: Family<MethodLabel, Counter>,
}

impl Default for EtcdMetrics {
    fn default() -> Self {
        EtcdMetrics {
            duration: Family::new_with_constructor(|| Histogram::new(request_buckets())),
            errors: Family::default(),
        }
    }
}

impl EtcdMetrics {
    /// Registers `etcd_request_duration_seconds` and `etcd_request_errors_total`.
    pub fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "etcd_request_duration",
            "etcd gRPC calls by method, to their response headers (for streams: to the \
             stream's opening)",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register(
            "etcd_request_errors",
            "etcd gRPC calls by method that failed in transport, broke off, or ended with a \
             non-zero grpc-status",
            self.errors.clone(),
        );
    }

    fn time(&self, method: EtcdMethod, took: Duration) {
        self.duration
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }

    fn count(&self, method: EtcdMethod, outcome: Outcome) {
        if outcome == Outcome::Error {
            self.errors.get_or_create(&MethodLabel { method }).inc();
        }
    }
}

/// Whether a call's result is already an error: a transport failure, or a non-zero
/// `grpc-status` in the response headers (trailers-only).
fn outcome<B, E>(result: &Result<http::Response<B>, E>) -> Outcome {
    match result {
        Err(_) => Outcome::Error,
        Ok(response) => status_outcome(response.headers()),
    }
}

/// A non-zero `grpc-status` in headers or trailers is an error; none (yet) is not.
fn status_outcome(map: &http::HeaderMap) -> Outcome {
    match map.get(GRPC_STATUS) {
        Some(code) if code.as_bytes() != b"0" => Outcome::Error,
        _ => Outcome::Ok,
    }
}

/// The balanced channel etcd-client connects through, metered: a tonic balanced channel
/// wrapped in [`Metered`].
#[derive(Debug, Clone)]
pub struct MeteredChannel {
    /// Where the calls are counted.
    pub metrics: EtcdMetrics,
}

impl BalancedChannelBuilder for MeteredChannel {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, EndpointUpdater), Self::Error> {
        let (inner, updater) = tonic::transport::Channel::balance_channel(buffer_size);
        let metered = Metered {
            inner,
            metrics: self.metrics,
        };
        Ok((Channel::Custom(BoxCloneSyncService::new(metered)), updater))
    }
}

/// What etcd-client sends its endpoints (with their TLS settings) through; the same type as
/// its `EndpointUpdater`, which the crate does not export.
type EndpointUpdater = tokio::sync::mpsc::Sender<
    tonic::transport::channel::Change<http::Uri, tonic::transport::Endpoint>,
>;
type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;
type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response, tower::BoxError>> + Send + 'static>>;

/// A tonic channel that times every call to its response headers and counts failures.
#[derive(Debug, Clone)]
struct Metered {
    inner: tonic::transport::Channel,
    metrics: EtcdMetrics,
}

impl Service<Request> for Metered {
    type Response = Response;
    type Error = tower::BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = EtcdMethod::of_path(request.uri().path());
        let started = Instant::now();
        let call = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let result = call.await;
            metrics.time(method, started.elapsed());
            if outcome(&result) == Outcome::Error {
                metrics.count(method, Outcome::Error);
                return result.map_err(Into::into);
            }
            let report = Some(Report { metrics, method });
            let response =
                result?.map(|inner| tonic::body::Body::new(StatusBody { inner, report }));
            Ok(response)
        })
    }
}

/// Where a body reports its call's outcome, once.
struct Report {
    metrics: EtcdMetrics,
    method: EtcdMethod,
}

/// A response body that reports its call's gRPC status when the trailers arrive (or an error
/// when the body breaks off). A body dropped before its end (a watch the client closed)
/// reports nothing.
struct StatusBody {
    inner: tonic::body::Body,
    report: Option<Report>,
}

impl StatusBody {
    fn finish(&mut self, outcome: Outcome) {
        if let Some(r) = self.report.take() {
            r.metrics.count(r.method, outcome);
        }
    }
}

impl http_body::Body for StatusBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(status_outcome(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Outcome::Error),
            Poll::Ready(None) => this.finish(Outcome::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_a_bounded_set_of_methods() {
        let cases = [
            ("/etcdserverpb.KV/Range", EtcdMethod::range),
            ("/etcdserverpb.KV/Txn", EtcdMethod::txn),
            ("/etcdserverpb.KV/DeleteRange", EtcdMethod::delete_range),
            (
                "/etcdserverpb.Lease/LeaseKeepAlive",
                EtcdMethod::lease_keep_alive,
            ),
            ("/etcdserverpb.Watch/Watch", EtcdMethod::watch),
            ("/v3electionpb.Election/Campaign", EtcdMethod::campaign),
            ("/etcdserverpb.Maintenance/Status", EtcdMethod::status),
            ("/etcdserverpb.Auth/Authenticate", EtcdMethod::authenticate),
            // The same method name under another service is not etcd's.
            ("/etcdserverpb.Lease/Range", EtcdMethod::other),
            ("/etcdserverpb.KV/Range/extra", EtcdMethod::other),
            ("/etcdserverpb.KV", EtcdMethod::other),
            ("", EtcdMethod::other),
            ("/x.Y/Z", EtcdMethod::other),
        ];
        for (path, want) in cases {
            assert_eq!(EtcdMethod::of_path(path), want, "{path}");
        }
    }

    #[test]
    fn errors_are_transport_failures_and_nonzero_statuses_in_headers() {
        let with = |status: Option<&str>| {
            let mut r = http::Response::builder();
            if let Some(s) = status {
                r = r.header(GRPC_STATUS, s);
            }
            Ok::<_, ()>(r.body(()).expect("response"))
        };
        assert_eq!(outcome(&with(None)), Outcome::Ok);
        assert_eq!(outcome(&with(Some("0"))), Outcome::Ok);
        // 14 UNAVAILABLE, 7 PERMISSION_DENIED: trailers-only errors.
        assert_eq!(outcome(&with(Some("14"))), Outcome::Error);
        assert_eq!(outcome(&with(Some("7"))), Outcome::Error);
        assert_eq!(outcome(&Err::<http::Response<()>, _>(())), Outcome::Error);
    }

    #[test]
    fn calls_are_counted_by_method() {
        let m = EtcdMetrics::default();
        m.time(EtcdMethod::range, Duration::from_millis(2));
        m.time(EtcdMethod::range, Duration::from_millis(3));
        m.count(EtcdMethod::range, Outcome::Ok);
        m.count(EtcdMethod::range, Outcome::Error);
        let mut r = Registry::with_prefix("rollgate");
        m.register(&mut r);
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &r).expect("encode");
        assert!(
            page.contains("rollgate_etcd_request_duration_seconds_count{method=\"range\"} 2"),
            "{page}"
        );
        assert!(
            page.contains("rollgate_etcd_request_errors_total{method=\"range\"} 1"),
            "{page}"
        );
    }
}
