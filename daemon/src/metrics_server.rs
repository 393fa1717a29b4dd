//! The Prometheus endpoint (`[metrics] address`): `GET /metrics` over HTTP.
//!
//! Two sources make one page: the process-wide counters and latency histograms the
//! library crates record through the `metrics` facade (registry requests and range
//! reads, FUSE operations, KBS exchanges), held by metrics-exporter-prometheus'
//! recorder; and the per-layer, cache and mount metrics rendered at scrape time from the
//! status report ([`crate::metrics_text`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use veil_image::status::StatusReport;

use crate::error::DaemonError;

/// Upper bounds (seconds) of the latency histograms' buckets: 100 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's upkeep runs between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The endpoint's recorder and settings.
#[derive(Clone)]
pub struct MetricsEndpoint {
    /// Where it listens.
    pub address: SocketAddr,
    /// How many layers get their own `layer` label.
    pub layer_labels: usize,
    handle: PrometheusHandle,
}

impl MetricsEndpoint {
    /// Installs the process's metrics recorder (once per process) and describes every
    /// facade metric.
    pub fn install(address: SocketAddr, layer_labels: usize) -> Result<Self, DaemonError> {
        let handle = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|b| b.install_recorder())
            .map_err(|e| DaemonError::Wiring(format!("installing the metrics recorder: {e}")))?;
        describe();
        Ok(Self {
            address,
            layer_labels,
            handle,
        })
    }

    /// The whole page: the facade's metrics, then those of `report`.
    pub fn render(&self, report: &StatusReport) -> String {
        self.handle.run_upkeep();
        let mut text = self.handle.render();
        text.push_str(&crate::metrics_text::render(report, self.layer_labels));
        text
    }
}

/// The HELP text of the metrics recorded through the facade.
fn describe() {
    use veil_fusefs::metrics as fuse;
    use veil_keyprovider::kbs::metrics as kbs;
    use veil_registry::metrics as reg;
    metrics::describe_counter!(
        reg::BYTES_METRIC,
        "Body bytes received from registries (manifests, TOCs, chunks, background fetches)."
    );
    metrics::describe_counter!(
        reg::REQUESTS_METRIC,
        "HTTP requests sent to registries (each redirect hop and auth retry counts)."
    );
    metrics::describe_counter!(
        reg::RANGE_REQUESTS_METRIC,
        "Blob range requests sent to registries (each attempt)."
    );
    metrics::describe_counter!(
        reg::RETRIES_METRIC,
        "Registry requests repeated after a retryable failure."
    );
    metrics::describe_counter!(
        reg::TOKEN_FETCHES_METRIC,
        "Tokens fetched from registry token services."
    );
    metrics::describe_counter!(
        reg::RANGE_READS_METRIC,
        "Blob range reads with their retries, by outcome (ok, error)."
    );
    metrics::describe_histogram!(
        reg::RANGE_READ_SECONDS_METRIC,
        metrics::Unit::Seconds,
        "Latency of one blob range read, retries included."
    );
    metrics::describe_counter!(fuse::OPS_METRIC, "FUSE operations answered, by op.");
    metrics::describe_histogram!(
        fuse::OP_SECONDS_METRIC,
        metrics::Unit::Seconds,
        "Time from a FUSE request to its answer, by op."
    );
    metrics::describe_counter!(
        fuse::READ_ERRORS_METRIC,
        "FUSE reads answered with an error (EIO and the like)."
    );
    metrics::describe_counter!(
        kbs::REQUESTS_METRIC,
        "KBS exchanges, by step (attestation, resource) and outcome (ok, error)."
    );
    metrics::describe_histogram!(
        kbs::SECONDS_METRIC,
        metrics::Unit::Seconds,
        "Latency of KBS exchanges, by step."
    );
}

/// Binds `endpoint`'s address (before the daemon says it is ready: a port taken fails
/// the start, naming `[metrics] address`).
pub async fn listen(
    endpoint: MetricsEndpoint,
) -> Result<(tokio::net::TcpListener, MetricsEndpoint), DaemonError> {
    let listener = tokio::net::TcpListener::bind(endpoint.address)
        .await
        .map_err(|e| {
            DaemonError::Wiring(format!(
                "[metrics] address {}: cannot listen: {e}",
                endpoint.address
            ))
        })?;
    Ok((listener, endpoint))
}

/// Serves `GET /metrics` on `listener` with `endpoint`'s page for the status `report`
/// returns, until the task is dropped.
pub async fn serve<F>(listener: tokio::net::TcpListener, endpoint: MetricsEndpoint, report: F)
where
    F: Fn() -> StatusReport + Send + Sync + 'static,
{
    let upkeep = endpoint.handle.clone();
    let upkeep_task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    let state = Arc::new((endpoint, report));
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let state = state.clone();
            async move {
                let (endpoint, report) = &*state;
                ([(CONTENT_TYPE, TEXT_FORMAT)], endpoint.render(&report()))
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
    upkeep_task.abort();
}
