//! The physical limits a cold start is compared with, at one shaping point:
//!
//! - the **transfer limit**: the workload's read set (compressed bytes, as measured)
//!   over the bandwidth, plus two round trips (the manifest, then the data): no pull can
//!   be faster, however it fetches;
//! - the **limit with the local run**: the transfer limit plus the workload's own run
//!   time from a local snapshot: the median `run` part of the status-quo modes (encrypted
//!   or not) at the same point, i.e. `ctr run` of the workload on overlayfs after the
//!   whole image was unpacked (page cache warm from the unpack). Even with every byte
//!   instantly local, the container still takes that long to start and run.

use crate::proxy::Shaping;
use crate::run::{stats, ModeResult};

/// The transfer limit: `compressed_bytes` over the bandwidth plus two RTTs.
pub fn transfer(shaping: &Shaping, compressed_bytes: u64) -> f64 {
    shaping.transfer_secs(compressed_bytes) + 2.0 * shaping.rtt.as_secs_f64()
}

/// The workload's run time from a local snapshot: the median `run` part of every
/// successful run of the status-quo modes in `modes` (pooled); None without any.
pub fn local_run(modes: &[ModeResult]) -> Option<f64> {
    let runs: Vec<f64> = modes
        .iter()
        .filter(|m| m.status_quo)
        .flat_map(|m| m.runs.iter())
        .filter(|r| r.error.is_none() && r.output_ok)
        .map(|r| r.run_s)
        .collect();
    stats(&runs).map(|(median, _, _)| median)
}

/// The limit with the local run: `transfer` + `local_run`, when there is a local run.
pub fn with_run(transfer: f64, local_run: Option<f64>) -> Option<f64> {
    local_run.map(|r| transfer + r)
}

/// `time ÷ limit` (how many times the limit a cold start took); None without both.
pub fn times(time: Option<f64>, limit: Option<f64>) -> Option<f64> {
    match (time, limit) {
        (Some(t), Some(l)) if l > 0.0 => Some(t / l),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunResult;

    fn run(run_s: f64, ok: bool) -> RunResult {
        RunResult {
            round: 0,
            total_s: run_s + 1.0,
            pull_s: 1.0,
            run_s,
            fetched_bytes: 0,
            connections: 0,
            requests: 0,
            output_ok: ok,
            output: String::new(),
            error: None,
        }
    }

    fn mode(status_quo: bool, runs: Vec<RunResult>) -> ModeResult {
        ModeResult {
            mode: "m".into(),
            label: "m".into(),
            description: String::new(),
            image_bytes: 0,
            status_quo,
            runs,
        }
    }

    #[test]
    fn transfer_limit_is_bytes_over_bandwidth_plus_two_rtts() {
        // 25 MB at 200 Mbit/s (25 MB/s) is one second, plus 2 × 20 ms.
        let s = Shaping::new(20.0, 200.0);
        let t = transfer(&s, 25_000_000);
        assert!((t - 1.04).abs() < 1e-9, "{t}");
        // 100 ms, 50 Mbit/s: four times slower, plus 2 × 100 ms.
        let t = transfer(&Shaping::new(100.0, 50.0), 25_000_000);
        assert!((t - 4.2).abs() < 1e-9, "{t}");
    }

    #[test]
    fn local_run_pools_the_status_quo_modes_good_runs_only() {
        let modes = [
            mode(true, vec![run(0.5, true), run(0.7, true), run(9.0, false)]),
            mode(true, vec![run(0.6, true)]),
            // A lazy mode's run part includes its fetching: not a local run.
            mode(false, vec![run(0.1, true), run(0.1, true), run(0.1, true)]),
        ];
        assert_eq!(local_run(&modes), Some(0.6));
        assert_eq!(local_run(&modes[2..]), None);
        assert_eq!(with_run(0.4, local_run(&modes)), Some(1.0));
        assert_eq!(with_run(0.4, None), None);
    }

    #[test]
    fn times_the_limit() {
        assert_eq!(times(Some(2.0), Some(0.5)), Some(4.0));
        assert_eq!(times(None, Some(0.5)), None);
        assert_eq!(times(Some(2.0), None), None);
        assert_eq!(times(Some(2.0), Some(0.0)), None);
    }
}
