//! The Prometheus endpoint both daemons serve: `[metrics] listen` in their configs, `GET
//! /metrics` in the OpenMetrics text format (from a `prometheus-client` registry), on a listener of its own.
//!
//! Off by default. Plain http has no authentication of its own: bind it to loopback (the
//! default when only a port is wanted is `127.0.0.1:PORT`) or to an address that only the
//! Prometheus server can reach. Or serve https (`tls_cert`, `tls_key`) and require scrapers to
//! present a client certificate (`client_ca`): see [`crate::metrics_tls`]. Metric values carry
//! no secrets (no spec, no tokens' meaning, no keys), but host and service names are visible.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics_tls::{MetricsTlsError, TlsListener};

/// The OpenMetrics text format, which `prometheus_client::encoding::text::encode` writes and
/// Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The older Prometheus text format (0.0.4), for every other client (curl, promtool).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `[metrics]` in the coordinator's and the agent's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `"127.0.0.1:9464"` (unset: no endpoint).
    pub listen: Option<SocketAddr>,
    /// Serve https with this certificate chain (PEM); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Require every scraper to present a client certificate signed by a CA in this file
    /// (PEM); needs `tls_cert` and `tls_key`.
    pub client_ca: Option<PathBuf>,
}

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is taken or not ours.
    #[error(
        "cannot serve metrics on {addr}: {source}; change `[metrics] listen` in the config \
         (or remove it to turn the endpoint off)"
    )]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS settings or files are not usable.
    #[error(transparent)]
    Tls(#[from] MetricsTlsError),
}

/// Binds `[metrics] listen` (if set) and serves `registry` there until `cancel` fires.
/// Returns the bound address (a port of 0 picks one).
pub async fn serve(
    config: &MetricsConfig,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) -> Result<Option<SocketAddr>, MetricsError> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    // Bad TLS files stop the start before anything is bound.
    let tls = crate::metrics_tls::acceptor(config)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = router(registry);
    match tls {
        None => {
            spawn_server(listener, app, bound, cancel);
            tracing::info!("serving Prometheus metrics on http://{bound}/metrics");
        }
        Some(acceptor) => {
            let listener = TlsListener::spawn(listener, acceptor, cancel.clone())
                .map_err(|source| MetricsError::Bind { addr, source })?;
            spawn_server(listener, app, bound, cancel);
            let who = if config.client_ca.is_some() {
                "scrapers with a client certificate signed by [metrics] client_ca"
            } else {
                "any scraper (no client_ca)"
            };
            tracing::info!("serving Prometheus metrics on https://{bound}/metrics to {who}");
        }
    }
    Ok(Some(bound))
}

/// `GET /metrics`, in the format the scraper asks for.
fn router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let registry = registry.clone();
            async move {
                let open = headers
                    .get(axum::http::header::ACCEPT)
                    .and_then(|a| a.to_str().ok())
                    .is_some_and(|a| a.contains("application/openmetrics-text"));
                render(&registry, open)
            }
        }),
    )
}

/// Serves `app` on `listener` (plain or TLS) until `cancel` fires.
fn spawn_server<L>(listener: L, app: axum::Router, bound: SocketAddr, cancel: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    tokio::spawn(async move {
        let stop = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!("the metrics endpoint on {bound} stopped: {e}");
        }
    });
}

/// The registry in the OpenMetrics text format, or (`open` false) the Prometheus text format.
fn render(registry: &Registry, open: bool) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) if open => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Ok(()) => (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            prometheus_text(&body),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
            .into_response(),
    }
}

/// OpenMetrics text (as `prometheus-client` writes it) in the Prometheus text format 0.0.4:
/// a counter's family takes its samples' `_total` name, an info metric becomes a gauge named
/// `_info`, and the `# UNIT` and `# EOF` lines go (0.0.4 has neither).
pub fn prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // `# HELP` comes before `# TYPE`, which says what the family is called in 0.0.4.
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').map_or("", |(_, text)| text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some(text) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::prometheus_text;

    #[test]
    fn openmetrics_families_get_their_sample_names() {
        let open = "# HELP x_grants Slots granted.\n# TYPE x_grants counter\nx_grants_total 3\n\
                    # HELP x_wait Waits.\n# TYPE x_wait histogram\n# UNIT x_wait seconds\n\
                    x_wait_count 0\n# HELP x_build Build.\n# TYPE x_build info\n\
                    x_build_info{version=\"1\"} 1\n# EOF\n";
        assert_eq!(
            prometheus_text(open),
            "# HELP x_grants_total Slots granted.\n# TYPE x_grants_total counter\nx_grants_total 3\n\
             # HELP x_wait Waits.\n# TYPE x_wait histogram\nx_wait_count 0\n\
             # HELP x_build_info Build.\n# TYPE x_build_info gauge\nx_build_info{version=\"1\"} 1\n"
        );
    }
}
