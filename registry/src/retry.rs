//! Retrying with exponential backoff: connection errors, timeouts, 5xx, 408 and 429 are
//! tried again, a bounded number of times within a bounded time; anything else fails at
//! once.
//!
//! Blob reads (what a container's `read()` waits on) ride out outages on top of that
//! ([`ride_out`]): when every host of a registry failed with such an error, the whole
//! round (remembered storage URL, mirrors, then the origin) is tried again with backoff
//! for [`DEFAULT_READ_RETRY`] (`ClientOptions::read_retry`) before the read fails; a
//! transfer that sends no bytes for [`DEFAULT_STALL_TIMEOUT`]
//! (`ClientOptions::stall_timeout`) is abandoned as a retryable error, so it is tried again
//! on a fresh connection instead of holding the read until the request timeout.

use std::future::Future;
use std::time::{Duration, Instant};

use super::error::{Operation, RegistryError};
use super::metrics::RegistryMetrics;

/// How long a blob read keeps retrying through an outage (registry down, 5xx, stalls)
/// before it fails: long enough to ride out a registry restart.
pub const DEFAULT_READ_RETRY: Duration = Duration::from_secs(60);

/// How long a blob transfer may go without a byte (before its answer, or between body
/// bytes) before it is abandoned and tried again on a fresh connection.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait between two rounds of an outage ([`ride_out`]); doubled each round.
pub const OUTAGE_FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between two rounds of an outage.
pub const OUTAGE_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// After a read of a blob spent its whole outage budget, later reads of that blob within
/// this long get one round only (no second budget for the kernel's immediate re-read of
/// the same page); the first success ends it.
pub const OUTAGE_MEMORY: Duration = Duration::from_secs(10);

/// How often and how long to retry one operation on one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub initial_backoff: Duration,
    /// The longest single wait.
    pub max_backoff: Duration,
    /// No new attempt starts when the wait would end later than this after the first one
    /// started.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(3),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the policy's budget is spent.
/// After more than one attempt, a final failure is [`RegistryError::RetriesExhausted`].
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    metrics: &RegistryMetrics,
    op: &Operation,
    mut attempt: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let wait = policy.backoff(attempts);
        let out_of_budget =
            attempts >= policy.max_attempts.max(1) || started.elapsed() + wait > policy.max_elapsed;
        if !err.is_retryable() || out_of_budget {
            if attempts == 1 {
                return Err(err);
            }
            return Err(RegistryError::RetriesExhausted {
                op: op.clone(),
                attempts,
                elapsed: started.elapsed(),
                last: Box::new(err),
            });
        }
        tracing::info!(%op, attempt = attempts, ?wait, error = %err, "retrying registry request");
        metrics.add_retry();
        tokio::time::sleep(wait).await;
    }
}

/// Runs `round` (one try of every host, with [`with_retries`] each) until it succeeds,
/// fails with an error that is not an outage ([`RegistryError::is_outage`]), or
/// `budget` would be spent by the next wait. Rounds after the first are logged once, with
/// how long the outage lasted when it ends. The final failure after several rounds is
/// [`RegistryError::RetriesExhausted`] (attempts = rounds) naming the last error.
pub(crate) async fn ride_out<T, F, Fut>(
    budget: Duration,
    metrics: &RegistryMetrics,
    op: &Operation,
    mut round: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let started = Instant::now();
    let mut rounds = 0u32;
    let mut wait = OUTAGE_FIRST_BACKOFF;
    loop {
        rounds += 1;
        let err = match round().await {
            Ok(value) => {
                if rounds > 1 {
                    tracing::info!(%op, rounds, elapsed_ms = started.elapsed().as_millis() as u64,
                        "registry read succeeded after an outage");
                }
                return Ok(value);
            }
            Err(err) => err,
        };
        if !err.is_outage() || started.elapsed() + wait > budget {
            if rounds == 1 {
                return Err(err);
            }
            return Err(RegistryError::RetriesExhausted {
                op: op.clone(),
                attempts: rounds,
                elapsed: started.elapsed(),
                last: Box::new(err),
            });
        }
        if rounds == 1 {
            tracing::warn!(%op, error = %err, budget_secs = budget.as_secs(),
                "registry read failed; retrying until it answers or the budget is spent");
        }
        metrics.add_retry();
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(OUTAGE_MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorDetail;
    use std::cell::Cell;

    fn op() -> Operation {
        Operation::new("reg", "repo", "blob x")
    }

    fn status(code: u16) -> RegistryError {
        RegistryError::Status {
            op: op(),
            status: code,
            detail: ErrorDetail::default(),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(5), Duration::from_secs(3));
        assert_eq!(p.backoff(100), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn retries_transient_errors_then_gives_up() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_elapsed: Duration::from_secs(5),
        };
        let metrics = RegistryMetrics::default();
        let calls = Cell::new(0);
        let result: Result<(), _> = with_retries(&policy, &metrics, &op(), || {
            calls.set(calls.get() + 1);
            async { Err(status(503)) }
        })
        .await;
        assert_eq!(calls.get(), 3);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, RegistryError::RetriesExhausted { attempts: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("HTTP 503"), "{err}");
        assert_eq!(metrics.snapshot().retries, 2);

        calls.set(0);
        let result: Result<(), _> = with_retries(&policy, &metrics, &op(), || {
            calls.set(calls.get() + 1);
            async { Err(status(404)) }
        })
        .await;
        assert_eq!(calls.get(), 1);
        assert!(matches!(
            result,
            Err(RegistryError::Status { status: 404, .. })
        ));

        calls.set(0);
        let result = with_retries(&policy, &metrics, &op(), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 2 {
                    Err(status(502))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2);
    }

    #[tokio::test]
    async fn rides_out_an_outage_within_its_budget_only() {
        let metrics = RegistryMetrics::default();
        let calls = Cell::new(0);
        let result = ride_out(Duration::from_secs(5), &metrics, &op(), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(status(503))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);

        calls.set(0);
        let result: Result<(), _> = ride_out(Duration::from_secs(5), &metrics, &op(), || {
            calls.set(calls.get() + 1);
            async { Err(status(404)) }
        })
        .await;
        assert_eq!(calls.get(), 1, "not found is no outage");
        assert!(matches!(
            result,
            Err(RegistryError::Status { status: 404, .. })
        ));

        calls.set(0);
        let started = Instant::now();
        let result: Result<(), _> = ride_out(Duration::from_secs(2), &metrics, &op(), || {
            calls.set(calls.get() + 1);
            async { Err(status(502)) }
        })
        .await;
        let err = result.unwrap_err();
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(calls.get() >= 2, "{}", calls.get());
        assert!(
            matches!(err, RegistryError::RetriesExhausted { .. }),
            "{err}"
        );
    }
}
