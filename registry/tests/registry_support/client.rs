//! The registry client's options for tests against loopback servers: short timeouts and
//! few retries, so that a failure shows in seconds.

use std::time::Duration;

use veil_registry::{ClientOptions, CredentialsSource, RetryPolicy};

/// Plain HTTP, anonymous, 2 s to connect, 5 s a request, 30 s an operation, 3 attempts
/// 50–200 ms apart, and one round per read: these tests bound how a single round fails;
/// riding out an outage over rounds is tested with real parts in tests/tests/outages.rs.
pub fn fast_options() -> ClientOptions {
    ClientOptions {
        plain_http: true,
        credentials: CredentialsSource::Anonymous,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(10),
        },
        read_retry: Duration::ZERO,
        ..Default::default()
    }
}
