//! The tables on the terminal: one per shaping point (every mode's median, min, max,
//! parts, bytes, speed-up and times the two physical limits of [`crate::limit`]) and,
//! with several points, the sweep table (a column per point, every mode's median).

use crate::limit;
use crate::run::{ModeResult, Outcome, PointResult};

/// Bytes in binary units.
pub fn human(bytes: u64) -> String {
    veil_tests::lazy_scenario::human(bytes)
}

/// `a / b` as `3.2×`, or `-`.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "-".into(),
    }
}

/// The width of the mode column (the longest name, `veil-zstd-chunked-enc-prefetch-baseline`).
const NAME_WIDTH: usize = 39;

fn median(m: &ModeResult) -> Option<f64> {
    m.total().map(|t| t.0)
}

/// Seconds as `1.23 s`, or `-`.
fn secs(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2} s"))
}

/// A multiple as `4.5×`, or `-`.
fn times(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}×"))
}

/// The sweep table: a row per mode, a column per shaping point with the mode's median
/// there and its multiple of the point's limit with the local run, then the two limits'
/// rows. Empty with fewer than two points.
pub fn sweep_table(o: &Outcome) -> String {
    if o.points.len() < 2 {
        return String::new();
    }
    let heads: Vec<String> = o
        .points
        .iter()
        .map(|p| format!("{} ms, {} Mbit/s", p.rtt_ms, p.mbit))
        .collect();
    let width = 22;
    let mut s = format!(
        "sweep: median cold start per shaping point ({} run(s) each; in brackets × the limit \
         with the local run)\n{:<NAME_WIDTH$}",
        o.runs_per_mode, "mode"
    );
    for h in &heads {
        s.push_str(&format!(" {h:>width$}"));
    }
    s.push('\n');
    // Modes in the order of the first point; a mode missing at a point shows `-`.
    for name in o.points[0].modes.iter().map(|m| &m.mode) {
        s.push_str(&format!("{name:<NAME_WIDTH$}"));
        for p in &o.points {
            let m = p.modes.iter().find(|m| &m.mode == name);
            let t = m.and_then(median);
            let cell = match t {
                Some(t) => format!(
                    "{t:.2} s ({})",
                    times(limit::times(Some(t), p.limit_with_run_s))
                ),
                None => "-".into(),
            };
            s.push_str(&format!(" {cell:>width$}"));
        }
        s.push('\n');
    }
    for (label, f) in [
        (
            "physical limit",
            (|p: &PointResult| Some(p.limit_s)) as fn(&PointResult) -> Option<f64>,
        ),
        ("limit + local run", |p: &PointResult| p.limit_with_run_s),
    ] {
        s.push_str(&format!("{label:<NAME_WIDTH$}"));
        for p in &o.points {
            s.push_str(&format!(" {:>width$}", secs(f(p))));
        }
        s.push('\n');
    }
    s
}

/// The table of one shaping point.
pub fn point_table(o: &Outcome, p: &PointResult) -> String {
    let mut s = format!(
        "cold start (pull start → workload end), RTT {} ms, {} Mbit/s, {} run(s) each, cold caches{}\n\
         image: {} of files ({} files, {} sample); workload reads {} files, {} ({} gzip)\n\
         physical limit (workload's files ÷ bandwidth + 2 RTT): {:.2} s\n\
         limit + the workload's local run (status quo's run part, {}): {}\n\n",
        p.rtt_ms,
        p.mbit,
        o.runs_per_mode,
        if o.background_fetch {
            ", Veil background fetch on"
        } else {
            ""
        },
        human(o.content_bytes),
        o.files,
        o.sample,
        o.read_set_files,
        human(o.read_set_bytes),
        human(o.read_set_compressed_bytes),
        p.limit_s,
        secs(p.local_run_s),
        secs(p.limit_with_run_s),
    );
    s.push_str(&format!(
        "{:<NAME_WIDTH$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>10} {:>7} {:>9} {:>7} {:>11}\n",
        "mode",
        "median",
        "min",
        "max",
        "pull",
        "run",
        "fetched",
        "image",
        "fetch%",
        "speed-up",
        "×limit",
        "×limit+run"
    ));
    let sq = p
        .modes
        .iter()
        .find(|m| m.mode == "status-quo")
        .and_then(median);
    for m in &p.modes {
        let t = m.total();
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} s"));
        let fetched = m.fetched();
        let failed = m.runs.iter().filter(|r| r.error.is_some()).count();
        let wrong = m
            .runs
            .iter()
            .filter(|r| r.error.is_none() && !r.output_ok)
            .count();
        s.push_str(&format!(
            "{:<NAME_WIDTH$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>10} {:>7} {:>9} {:>7} {:>11}{}{}\n",
            m.mode,
            f(t.map(|t| t.0)),
            f(t.map(|t| t.1)),
            f(t.map(|t| t.2)),
            f(m.pull().map(|t| t.0)),
            f(m.run().map(|t| t.0)),
            fetched.map_or("-".into(), human),
            human(m.image_bytes),
            fetched.map_or("-".into(), |b| format!(
                "{:.1}%",
                b as f64 * 100.0 / m.image_bytes.max(1) as f64
            )),
            ratio(sq, median(m)),
            times(limit::times(median(m), Some(p.limit_s))),
            times(limit::times(median(m), p.limit_with_run_s)),
            if failed > 0 {
                format!("  ({failed} FAILED)")
            } else {
                String::new()
            },
            if wrong > 0 {
                format!("  ({wrong} WRONG OUTPUT)")
            } else {
                String::new()
            },
        ));
    }
    s.push_str(
        "\nspeed-up: status quo's median ÷ the mode's median; fetched: median bytes the \
         registry sent through the proxy; pull/run: medians of the two parts; ×limit: the \
         median ÷ the physical limit; ×limit+run: ÷ the limit with the local run.\n",
    );
    s
}

/// Every point's table, and the failures; then the sweep table (several points).
pub fn tables(o: &Outcome) -> String {
    let mut s = String::new();
    for p in &o.points {
        s.push_str(&point_table(o, p));
        s.push('\n');
        for m in &p.modes {
            for r in &m.runs {
                if let Some(e) = &r.error {
                    let first: Vec<&str> = e.lines().take(12).collect();
                    s.push_str(&format!(
                        "{} run {} failed:\n    {}\n",
                        m.mode,
                        r.round + 1,
                        first.join("\n    ")
                    ));
                } else if !r.output_ok {
                    s.push_str(&format!(
                        "{} run {}: the workload printed {:?}, expected {:?}\n",
                        m.mode,
                        r.round + 1,
                        r.output,
                        o.expect
                    ));
                }
            }
        }
    }
    s.push_str(&sweep_table(o));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunResult;

    fn mode(name: &str, status_quo: bool, totals: &[f64]) -> ModeResult {
        ModeResult {
            mode: name.into(),
            label: name.into(),
            description: String::new(),
            image_bytes: 100 << 20,
            status_quo,
            runs: totals
                .iter()
                .map(|&t| RunResult {
                    round: 0,
                    total_s: t,
                    pull_s: t - 0.5,
                    run_s: 0.5,
                    fetched_bytes: 1 << 20,
                    connections: 1,
                    requests: 1,
                    output_ok: true,
                    output: "ok".into(),
                    error: None,
                })
                .collect(),
        }
    }

    fn point(rtt_ms: f64, mbit: f64, limit_s: f64, modes: Vec<ModeResult>) -> PointResult {
        let local_run_s = limit::local_run(&modes);
        PointResult {
            rtt_ms,
            mbit,
            limit_s,
            local_run_s,
            limit_with_run_s: limit::with_run(limit_s, local_run_s),
            modes,
        }
    }

    fn outcome(points: Vec<PointResult>) -> Outcome {
        Outcome {
            sample: "python".into(),
            content_bytes: 512 << 20,
            files: 10,
            workload: "w".into(),
            expect: "ok".into(),
            read_set_files: 3,
            read_set_bytes: 9 << 20,
            read_set_compressed_bytes: 4 << 20,
            read_set_source: "measured".into(),
            runs_per_mode: 3,
            background_fetch: false,
            drop_caches: true,
            convert_s: Vec::new(),
            points,
            started: Vec::new(),
        }
    }

    #[test]
    fn point_table_shows_both_limits_and_each_modes_multiples() {
        let o = outcome(vec![point(
            20.0,
            200.0,
            0.5,
            vec![
                mode("status-quo", true, &[10.0, 11.0, 12.0]),
                mode("veil-estargz-enc", false, &[2.0, 2.0, 3.0]),
            ],
        )]);
        let t = point_table(&o, &o.points[0]);
        assert!(t.contains("physical limit (workload's files ÷ bandwidth + 2 RTT): 0.50 s"));
        // Local run 0.5 s (the status quo's run part), so the second limit is 1.00 s.
        assert!(t.contains("status quo's run part, 0.50 s): 1.00 s"), "{t}");
        let row = t
            .lines()
            .find(|l| l.starts_with("veil-estargz-enc"))
            .unwrap();
        // 2.00 s median: 4.0× the transfer limit, 2.0× the limit with the local run.
        assert!(row.contains(" 4.0× ") && row.ends_with(" 2.0×"), "{row}");
        // No sweep table for one point.
        assert_eq!(sweep_table(&o), "");
    }

    #[test]
    fn sweep_table_has_a_column_per_point_and_a_row_per_mode() {
        let o = outcome(vec![
            point(
                20.0,
                200.0,
                0.5,
                vec![
                    mode("status-quo", true, &[10.0]),
                    mode("veil-estargz-enc", false, &[2.0]),
                    mode("veil-estargz-enc-baseline", false, &[3.0]),
                ],
            ),
            point(
                100.0,
                50.0,
                1.5,
                vec![
                    mode("status-quo", true, &[40.0]),
                    mode("veil-estargz-enc", false, &[6.0]),
                ],
            ),
        ]);
        let t = sweep_table(&o);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("20 ms, 200 Mbit/s") && lines[1].contains("100 ms, 50 Mbit/s"));
        let enc = lines
            .iter()
            .find(|l| l.starts_with("veil-estargz-enc "))
            .unwrap();
        // 2.00 s against 0.5 + 0.5 s; 6.00 s against 1.5 + 0.5 s.
        assert!(
            enc.contains("2.00 s (2.0×)") && enc.contains("6.00 s (3.0×)"),
            "{enc}"
        );
        let baseline = lines
            .iter()
            .find(|l| l.starts_with("veil-estargz-enc-baseline"))
            .unwrap();
        assert!(baseline.contains("3.00 s (3.0×)") && baseline.trim_end().ends_with('-'));
        let limits = lines
            .iter()
            .find(|l| l.starts_with("limit + local run"))
            .unwrap();
        assert!(
            limits.contains("1.00 s") && limits.contains("2.00 s"),
            "{limits}"
        );
        // And it ends the full report.
        assert!(tables(&o).ends_with(&t));
    }
}
