//! FUSE operations as Prometheus metrics, through the `metrics` facade: a count and a
//! latency histogram per operation (label `op`, one of the fixed operation names below),
//! and failed reads. Without an installed recorder (tests, `veil mount`) they cost a
//! clock read and nothing else.

use std::time::Instant;

/// Prometheus name: FUSE operations answered, by `op`.
pub const OPS_METRIC: &str = "veil_fuse_operations_total";
/// Prometheus name: time from a FUSE request to its answer, by `op` (histogram).
pub const OP_SECONDS_METRIC: &str = "veil_fuse_operation_duration_seconds";
/// Prometheus name: FUSE reads answered with an error (EIO and the like).
pub const READ_ERRORS_METRIC: &str = "veil_fuse_read_errors_total";

/// Times one FUSE operation; counted and recorded when dropped (after the reply).
#[must_use = "the operation is recorded when the timer is dropped"]
pub(crate) struct OpTimer {
    op: &'static str,
    started: Instant,
}

/// Starts timing operation `op` (a fixed name: `lookup`, `getattr`, `read`, ...).
pub(crate) fn op(op: &'static str) -> OpTimer {
    OpTimer {
        op,
        started: Instant::now(),
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        metrics::counter!(OPS_METRIC, "op" => self.op).increment(1);
        metrics::histogram!(OP_SECONDS_METRIC, "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Counts one read answered with an error.
pub(crate) fn read_failed() {
    metrics::counter!(READ_ERRORS_METRIC).increment(1);
}
