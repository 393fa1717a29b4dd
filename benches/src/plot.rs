//! The plot: cold-start time per mode (median bar, min–max whisker, label with the time
//! and the bytes fetched), the physical limit as a dashed line. PNG (plotters' bitmap
//! backend, text drawn with the pure-Rust ab_glyph renderer from a TrueType font file:
//! no fontconfig) and SVG.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::human;
use crate::run::{Outcome, PointResult};

/// TrueType fonts tried in order (Debian's fonts-dejavu-core first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers a system TrueType font as "sans-serif" (once).
pub(crate) fn register_font() -> anyhow::Result<()> {
    FONT.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered fonts live as long as the program.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no TrueType font found (tried {}): apt-get install fonts-dejavu-core",
            FONTS.join(", ")
        ))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn color(mode: &str) -> RGBColor {
    let zstd = mode.contains("zstd");
    match (
        mode == "status-quo",
        mode.ends_with("-prefetch") || mode.ends_with("-optimized"),
        mode.ends_with("-enc"),
    ) {
        (true, _, _) => RGBColor(150, 150, 150),
        // The encrypted status quo: a darker grey.
        _ if mode.starts_with("status-quo-enc") => RGBColor(100, 100, 100),
        _ if mode == "stargz-snapshotter" => RGBColor(235, 150, 50),
        (_, true, _) if zstd => RGBColor(0, 110, 60),
        (_, true, _) => RGBColor(20, 60, 150),
        (_, _, true) if zstd => RGBColor(40, 160, 90),
        (_, _, true) => RGBColor(50, 110, 210),
        _ if zstd => RGBColor(120, 200, 140),
        _ => RGBColor(120, 165, 235),
    }
}

/// The y axis's labelled values: 1, 2 and 5 times each power of ten between `min` and
/// `max` (a log axis labelled only at powers of ten says nothing about the fast modes
/// between 0.1 and 1 s).
fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    if !(min > 0.0 && max > min && max.is_finite()) {
        return ticks;
    }
    let mut decade = 10f64.powf(min.log10().floor());
    while decade <= max {
        for step in [1.0, 2.0, 5.0] {
            let tick = step * decade;
            if (min..=max).contains(&tick) {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A tick's label: whole seconds from 1 s up, two decimals at most below (0.2, 0.05).
fn tick_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let text = format!("{v:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    o: &Outcome,
    p: &PointResult,
) -> anyhow::Result<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(e)?;
    let n = p.modes.len() as i32;
    let ymax = p
        .modes
        .iter()
        .filter_map(|m| m.total().map(|t| t.2))
        .fold(p.limit_with_run_s.unwrap_or(p.limit_s), f64::max)
        .max(0.1)
        * 1.6;
    // A log scale, so that the fast modes can be told apart beside the status quo.
    let ymin = p
        .modes
        .iter()
        .filter_map(|m| m.total().map(|t| t.1))
        .fold(p.limit_s, f64::min)
        .max(0.01)
        * 0.5;
    let labels: Vec<String> = p.modes.iter().map(|m| m.label.clone()).collect();
    let caption = format!(
        "veil bench: cold start (pull → workload end), RTT {} ms, {} Mbit/s",
        p.rtt_ms, p.mbit
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0..n - 1).into_segmented(),
            (ymin..ymax)
                .log_scale()
                .with_key_points(log_ticks(ymin, ymax)),
        )
        .map_err(e)?;
    let formatter = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n as usize + 1)
        .x_label_formatter(&formatter)
        .x_label_style(("sans-serif", 16))
        .y_label_style(("sans-serif", 15))
        .y_label_formatter(&|v: &f64| tick_label(*v))
        .y_desc("seconds, log scale (bar: median, whisker: min–max)")
        .x_desc(format!(
            "{} sample, {} of files; workload: {} files / {}; {} run(s) per mode, cold caches",
            o.sample,
            human(o.content_bytes),
            o.read_set_files,
            human(o.read_set_bytes),
            o.runs_per_mode
        ))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(e)?;
    for (i, m) in p.modes.iter().enumerate() {
        let Some((med, min, max)) = m.total() else {
            continue;
        };
        let i = i as i32;
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), ymin),
                (SegmentValue::Exact(i + 1), med),
            ],
            color(&m.mode).filled(),
        );
        bar.set_margin(0, 0, 14, 14);
        chart.draw_series(std::iter::once(bar)).map_err(e)?;
        chart
            .draw_series(std::iter::once(ErrorBar::new_vertical(
                SegmentValue::CenterOf(i),
                min,
                med,
                max,
                BLACK.stroke_width(2),
                12,
            )))
            .map_err(e)?;
        let label = format!(
            "{med:.2} s · {}",
            m.fetched().map(human).unwrap_or_default()
        );
        let style = TextStyle::from(("sans-serif", 15).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (SegmentValue::CenterOf(i), max * 1.04),
                style,
            )))
            .map_err(e)?;
    }
    let limit = p.limit_s;
    chart
        .draw_series(DashedLineSeries::new(
            vec![
                (SegmentValue::Exact(0), limit),
                (SegmentValue::Exact(n), limit),
            ],
            10,
            6,
            RED.stroke_width(2),
        ))
        .map_err(e)?
        .label(format!(
            "physical limit {limit:.2} s: workload's files ({}) ÷ bandwidth + 2 RTT",
            human(o.read_set_compressed_bytes)
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], RED.stroke_width(2)));
    if let (Some(with_run), Some(run)) = (p.limit_with_run_s, p.local_run_s) {
        let colour = RGBColor(120, 40, 160);
        chart
            .draw_series(DashedLineSeries::new(
                vec![
                    (SegmentValue::Exact(0), with_run),
                    (SegmentValue::Exact(n), with_run),
                ],
                4,
                4,
                colour.stroke_width(2),
            ))
            .map_err(e)?
            .label(format!(
                "limit + the workload's local run ({run:.2} s, status quo's run): {with_run:.2} s"
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Writes `STEM.png` and `STEM.svg` for point `p`; returns both paths.
pub fn write(o: &Outcome, p: &PointResult, stem: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let size = (1400u32, 760u32);
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(BitMapBackend::new(&png, size).into_drawing_area(), o, p)?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), o, p)?;
    for f in [&png, &svg] {
        if !f.exists() {
            bail!("{} was not written", f.display());
        }
    }
    Ok(vec![png, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_one_two_five_per_decade_inside_the_range() {
        let labels: Vec<String> = log_ticks(0.18, 36.0).into_iter().map(tick_label).collect();
        assert_eq!(
            labels,
            ["0.2", "0.5", "1", "2", "5", "10", "20"].map(String::from)
        );
        assert_eq!(
            log_ticks(0.04, 0.06)
                .into_iter()
                .map(tick_label)
                .collect::<Vec<_>>(),
            ["0.05"]
        );
        assert!(log_ticks(0.0, 1.0).is_empty());
        assert!(log_ticks(2.0, 1.0).is_empty());
    }
}
