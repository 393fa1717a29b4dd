//! Counters of what the registry client did, shared by every clone of a client: bytes
//! fetched from registries (for `veil status`, benchmarks and tests), requests, retries
//! and token fetches. Each event is also recorded through the `metrics` facade (process
//! wide, bounded labels) for the daemon's Prometheus endpoint; without an installed
//! recorder those calls do nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Prometheus name: body bytes received from registries.
pub const BYTES_METRIC: &str = "veil_registry_bytes_total";
/// Prometheus name: HTTP requests sent to registries.
pub const REQUESTS_METRIC: &str = "veil_registry_requests_total";
/// Prometheus name: blob range requests among them.
pub const RANGE_REQUESTS_METRIC: &str = "veil_registry_range_requests_total";
/// Prometheus name: attempts repeated after a retryable failure.
pub const RETRIES_METRIC: &str = "veil_registry_retries_total";
/// Prometheus name: tokens fetched from token services.
pub const TOKEN_FETCHES_METRIC: &str = "veil_registry_token_fetches_total";
/// Prometheus name: blob range reads (with their retries), by `outcome` (`ok`, `error`).
pub const RANGE_READS_METRIC: &str = "veil_registry_range_reads_total";
/// Prometheus name: latency of one blob range read, retries included (histogram).
pub const RANGE_READ_SECONDS_METRIC: &str = "veil_registry_range_read_duration_seconds";

/// Records one finished blob range read (all its retries) that started at `started`.
pub(crate) fn record_range_read(started: Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(RANGE_READS_METRIC, "outcome" => outcome).increment(1);
    metrics::histogram!(RANGE_READ_SECONDS_METRIC).record(started.elapsed().as_secs_f64());
}

/// Live counters; read them with the accessors or [`RegistryMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct RegistryMetrics {
    bytes_fetched: AtomicU64,
    requests: AtomicU64,
    range_requests: AtomicU64,
    retries: AtomicU64,
    token_fetches: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Body bytes received from registries and their storage backends (manifests, blobs,
    /// ranges; including bytes read and thrown away when a registry ignored a Range).
    pub bytes_fetched: u64,
    /// HTTP requests sent to registries (each redirect hop and auth retry counts).
    pub requests: u64,
    /// Blob range requests among them.
    pub range_requests: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Tokens fetched from token services.
    pub token_fetches: u64,
}

impl RegistryMetrics {
    /// Body bytes received so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    /// All counters at once.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            range_requests: self.range_requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            token_fetches: self.token_fetches.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_fetched.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(BYTES_METRIC).increment(n);
    }

    pub(crate) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REQUESTS_METRIC).increment(1);
    }

    pub(crate) fn add_range_request(&self) {
        self.range_requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(RANGE_REQUESTS_METRIC).increment(1);
    }

    pub(crate) fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(RETRIES_METRIC).increment(1);
    }

    pub(crate) fn add_token_fetch(&self) {
        self.token_fetches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(TOKEN_FETCHES_METRIC).increment(1);
    }
}
