//! The KBS client's exchanges as Prometheus metrics, through the `metrics` facade:
//! attestations (the RCAR handshake) and resource requests, each counted by `outcome`
//! (`ok`, `error`) and timed (histogram). Nothing about the resource (kid, bytes) is
//! recorded.

use std::future::Future;
use std::time::Instant;

/// Prometheus name: KBS exchanges, by `step` (`attestation`, `resource`) and `outcome`.
pub const REQUESTS_METRIC: &str = "veil_kbs_requests_total";
/// Prometheus name: latency of KBS exchanges, by `step` (histogram).
pub const SECONDS_METRIC: &str = "veil_kbs_request_duration_seconds";

/// Runs `exchange` (the KBS step `step`) and records its outcome and latency.
pub(crate) async fn timed<T, E>(
    step: &'static str,
    exchange: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = exchange.await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(REQUESTS_METRIC, "step" => step, "outcome" => outcome).increment(1);
    metrics::histogram!(SECONDS_METRIC, "step" => step).record(started.elapsed().as_secs_f64());
    result
}
