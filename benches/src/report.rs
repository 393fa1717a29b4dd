//! The table on the terminal.

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

fn median(m: &ModeResult) -> Option<f64> {
    m.total().map(|t| t.0)
}

/// The table of one shaping point.
pub fn point_table(o: &Outcome, p: &PointResult) -> String {
    let mut s = format!(
        "cold start (pull start → workload end), RTT {} ms, {} Mbit/s, {} run(s) each, cold caches{}\n\
         image: {} of files ({} files, {} sample); workload reads {} files, {} ({} gzip)\n\
         physical limit (workload's files ÷ bandwidth + 2 RTT): {:.2} s\n\n",
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
    );
    s.push_str(&format!(
        "{:<31} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>10} {:>7} {:>9}\n",
        "mode", "median", "min", "max", "pull", "run", "fetched", "image", "fetch%", "speed-up"
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
            "{:<31} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>10} {:>7} {:>9}{}{}\n",
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
         registry sent through the proxy; pull/run: medians of the two parts.\n",
    );
    s
}

/// Every point's table, and the failures.
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
    s
}
