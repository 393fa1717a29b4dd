//! Fetching a whole blob into the disk cache in the background.
//!
//! The background fetch ([`background_fetch`]): after a layer is mounted, a tokio task fetches the
//! whole blob in order into the disk cache in large ranges, skipping what is present,
//! optionally held to a byte rate by a token bucket. It stops when cancelled (the layer
//! is unmounted: hold [`CancellationToken::drop_guard`] with the mount), when the blob
//! cannot fit in the disk cache, when the cache drops the blob meanwhile (evicted for a
//! more recent one), or after [`BackgroundOptions::attempts`] failed tries of one range;
//! each stop is one log line. [`FetchProgress`] counts bytes done out of the total.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::disk_cache::CachedBlob;
use veil_blob::BlobSource;

/// Default size of one background range request: 8 MiB.
pub const DEFAULT_RANGE_SIZE: u64 = 8 << 20;

/// Smallest background range when rate limited.
const MIN_BACKGROUND_RANGE: u64 = 64 << 10;

/// Tuning of [`background_fetch`].
#[derive(Debug, Clone)]
pub struct BackgroundOptions {
    /// The byte rate limit, shared by every fetch given the same limiter; `None`: as
    /// fast as the source goes.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Fetches running at once, shared by every fetch given the same semaphore: a fetch
    /// waits for a permit before it starts. `None`: no limit.
    pub slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Bytes per range request (smaller when the rate limit is below it: about one
    /// second's worth, at least 64 KiB).
    pub range_size: u64,
    /// Tries of one range before giving up.
    pub attempts: u32,
    /// Wait before the second try; doubled for each further one.
    pub retry_delay: Duration,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        Self {
            rate_limit: None,
            slots: None,
            range_size: DEFAULT_RANGE_SIZE,
            attempts: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// Where a background fetch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchState {
    /// Still fetching.
    Running,
    /// The whole blob is in the disk cache.
    Complete,
    /// Stopped by its cancellation token.
    Cancelled,
    /// Stopped on an error (logged).
    Failed,
    /// Not started: the blob cannot fit in the disk cache.
    Skipped,
}

impl FetchState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => FetchState::Running,
            1 => FetchState::Complete,
            2 => FetchState::Cancelled,
            3 => FetchState::Failed,
            _ => FetchState::Skipped,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            FetchState::Running => 0,
            FetchState::Complete => 1,
            FetchState::Cancelled => 2,
            FetchState::Failed => 3,
            FetchState::Skipped => 4,
        }
    }
}

/// Progress counters of one background fetch.
#[derive(Debug)]
pub struct FetchProgress {
    total: u64,
    done: AtomicU64,
    fetched: AtomicU64,
    state: AtomicU8,
}

impl FetchProgress {
    /// The blob's size.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes from the start of the blob known to be in the disk cache.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Bytes this fetch read from the network.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Where it stands.
    pub fn state(&self) -> FetchState {
        FetchState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// A running background fetch.
#[derive(Debug)]
pub struct BackgroundFetch {
    progress: Arc<FetchProgress>,
    task: tokio::task::JoinHandle<FetchState>,
}

impl BackgroundFetch {
    /// Its progress counters.
    pub fn progress(&self) -> &Arc<FetchProgress> {
        &self.progress
    }

    /// Waits for the task to end; its final state.
    pub async fn wait(self) -> FetchState {
        self.task.await.unwrap_or(FetchState::Failed)
    }
}

/// A token bucket: at most `rate` bytes per second on average, in bursts of up to one
/// second's worth, starting empty. Share one (`Arc`) to limit several fetches together.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    /// Tokens (may be negative: a debt the next takers wait out) and when last refilled.
    state: std::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(Self {
            rate: bytes_per_sec.max(1),
            state: std::sync::Mutex::new((0.0, Instant::now())),
        })
    }

    /// The rate, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `n` tokens, waiting as long as the debt takes to repay.
    pub async fn take(&self, n: u64) {
        let rate = self.rate as f64;
        let wait = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.duration_since(state.1).as_secs_f64() * rate;
            state.0 = (state.0 + refill).min(rate) - n as f64;
            state.1 = now;
            -state.0 / rate
        };
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// Starts fetching all of `source`'s blob into its disk cache on `runtime`; see the
/// module documentation. The task ends by itself or when `cancel` is cancelled.
pub fn background_fetch(
    runtime: &tokio::runtime::Handle,
    source: Arc<CachedBlob>,
    options: BackgroundOptions,
    cancel: CancellationToken,
) -> BackgroundFetch {
    let progress = Arc::new(FetchProgress {
        total: source.size(),
        done: AtomicU64::new(0),
        fetched: AtomicU64::new(0),
        state: AtomicU8::new(FetchState::Running.as_u8()),
    });
    let p = progress.clone();
    let task = runtime.spawn(async move {
        let state = run_background(&source, &options, &cancel, &p).await;
        p.state.store(state.as_u8(), Ordering::Relaxed);
        state
    });
    BackgroundFetch { progress, task }
}

async fn run_background(
    source: &Arc<CachedBlob>,
    options: &BackgroundOptions,
    cancel: &CancellationToken,
    progress: &FetchProgress,
) -> FetchState {
    let total = source.size();
    let blob = source.key();
    if !source.fits() {
        tracing::info!(
            blob,
            size = total,
            budget = source.cache().budget(),
            "background fetch skipped: the blob is larger than the disk cache"
        );
        return FetchState::Skipped;
    }
    let _permit = match &options.slots {
        Some(slots) => tokio::select! {
            _ = cancel.cancelled() => return cancelled(blob, progress),
            permit = slots.clone().acquire_owned() => permit.ok(),
        },
        None => None,
    };
    let step = match &options.rate_limit {
        Some(limiter) => options
            .range_size
            .min(limiter.rate().max(MIN_BACKGROUND_RANGE)),
        None => options.range_size,
    }
    .max(1);
    let started = Instant::now();
    let mut pos = 0u64;
    while pos < total {
        if cancel.is_cancelled() {
            return cancelled(blob, progress);
        }
        if pos > 0 && source.present_bytes() == 0 {
            tracing::warn!(
                blob,
                at = pos,
                "background fetch stopped: the disk cache evicted the blob meanwhile (budget too small for the layers in use)"
            );
            return FetchState::Failed;
        }
        let end = (pos + step).min(total);
        let gaps = source.missing(pos..end);
        if let (Some(first), Some(last)) = (gaps.first(), gaps.last()) {
            let need = last.end - first.start;
            if let Some(limiter) = &options.rate_limit {
                tokio::select! {
                    _ = cancel.cancelled() => return cancelled(blob, progress),
                    _ = limiter.take(need) => {}
                }
            }
            let mut attempt = 0u32;
            loop {
                let result = tokio::select! {
                    _ = cancel.cancelled() => return cancelled(blob, progress),
                    r = source.warm(pos..end) => r,
                };
                match result {
                    Ok(n) => {
                        progress.fetched.fetch_add(n, Ordering::Relaxed);
                        break;
                    }
                    Err(err) => {
                        attempt += 1;
                        if attempt >= options.attempts.max(1) {
                            tracing::warn!(
                                blob,
                                range = ?(pos..end),
                                attempts = attempt,
                                error = %err,
                                "background fetch stopped: the range could not be fetched"
                            );
                            return FetchState::Failed;
                        }
                        tracing::debug!(blob, range = ?(pos..end), attempt, error = %err, "background fetch: retrying");
                        let delay = options.retry_delay * 2u32.saturating_pow(attempt - 1);
                        tokio::select! {
                            _ = cancel.cancelled() => return cancelled(blob, progress),
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            if !source.missing(pos..end).is_empty() {
                tracing::warn!(
                    blob,
                    range = ?(pos..end),
                    "background fetch stopped: the disk cache did not keep the bytes (full, or a disk error)"
                );
                return FetchState::Failed;
            }
        }
        pos = end;
        progress.done.store(pos, Ordering::Relaxed);
    }
    let blob_source = source.clone();
    let _ = tokio::task::spawn_blocking(move || blob_source.flush()).await;
    tracing::info!(
        blob,
        size = total,
        fetched = progress.fetched(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "background fetch complete: the whole blob is in the disk cache"
    );
    FetchState::Complete
}

fn cancelled(blob: &str, progress: &FetchProgress) -> FetchState {
    tracing::debug!(
        blob,
        done = progress.done(),
        total = progress.total(),
        "background fetch cancelled"
    );
    FetchState::Cancelled
}

#[cfg(test)]
#[path = "background_tests.rs"]
mod tests;
