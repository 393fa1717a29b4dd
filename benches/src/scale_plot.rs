//! The scale mode's plot: cold start (left) and peak memory (right) against image size,
//! Veil beside the status quo, whose failures (out of memory, out of space) are marked
//! where they happened; the cgroup's limit as a dashed line. PNG and SVG, drawn like
//! [`crate::plot`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::cgroup_run::Verdict;
use crate::scale::{ScaleOutcome, SizeResult};

/// Veil's colour.
const VEIL: RGBColor = RGBColor(40, 160, 90);
/// Veil's daemon (RSS) colour.
const VEIL_DAEMON: RGBColor = RGBColor(20, 60, 150);
/// The status quo's colour.
const STATUS_QUO: RGBColor = RGBColor(130, 130, 130);
/// The plot's size, pixels.
const SIZE: (u32, u32) = (1500, 700);

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// (x, y) points of `f` over the sizes where it has a value.
fn points(sizes: &[SizeResult], f: impl Fn(&SizeResult) -> Option<f64>) -> Vec<(f64, f64)> {
    sizes
        .iter()
        .filter_map(|s| f(s).map(|y| (gib(s.content_bytes), y)))
        .collect()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, o: &ScaleOutcome) -> anyhow::Result<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!(
                "veil bench --scale: {} sample in a {} MiB memory cgroup (tmpfs {} MiB), RTT {} ms, {} Mbit/s",
                o.sample,
                o.memory_limit >> 20,
                o.tmpfs_size >> 20,
                o.rtt_ms,
                o.mbit
            ),
            ("sans-serif", 22),
        )
        .map_err(e)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let xmax = o
        .sizes
        .iter()
        .map(|s| gib(s.content_bytes))
        .fold(0.5, f64::max)
        * 1.08;

    // Cold start.
    let veil_t = points(&o.sizes, SizeResult::veil_total);
    let sq_t = points(&o.sizes, SizeResult::status_quo_total);
    let ymax = veil_t.iter().chain(&sq_t).map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&left)
        .caption("cold start (pull → workload end)", ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("image size, GiB")
        .y_desc("seconds (median)")
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(veil_t.clone(), VEIL.stroke_width(3)))
        .map_err(e)?
        .label(format!("Veil ({})", o.veil_mode))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], VEIL.stroke_width(3)));
    chart
        .draw_series(veil_t.iter().map(|p| Circle::new(*p, 5, VEIL.filled())))
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(sq_t.clone(), STATUS_QUO.stroke_width(3)))
        .map_err(e)?
        .label("status quo (pull + unpack to tmpfs)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], STATUS_QUO.stroke_width(3)));
    chart
        .draw_series(sq_t.iter().map(|p| Circle::new(*p, 5, STATUS_QUO.filled())))
        .map_err(e)?;
    draw_failures(&mut chart, o, ymax).map_err(e)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;

    // Peak memory.
    let limit = mib(o.memory_limit);
    let veil_peak = points(&o.sizes, |s| s.veil_cgroup_peak().map(mib));
    let veil_rss = points(&o.sizes, |s| s.veil_daemon_peak().map(mib));
    let sq_peak = points(&o.sizes, |s| s.status_quo_cgroup_peak().map(mib));
    let ymax = limit * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("peak memory in the guest's cgroup", ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("image size, GiB")
        .y_desc("MiB (largest of the runs)")
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (pts, colour, label) in [
        (&veil_peak, VEIL, "Veil: cgroup peak"),
        (&veil_rss, VEIL_DAEMON, "Veil: veil-snapshotter peak RSS"),
        (&sq_peak, STATUS_QUO, "status quo: cgroup peak"),
    ] {
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(3)))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 5, colour.filled())))
            .map_err(e)?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, limit), (xmax, limit)],
            10,
            6,
            RED.stroke_width(2),
        ))
        .map_err(e)?
        .label(format!("cgroup limit {limit:.0} MiB"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// A red cross and the verdict at each size where the status quo did not start.
fn draw_failures<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    o: &ScaleOutcome,
    ymax: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let failed: Vec<(f64, Verdict)> = o
        .sizes
        .iter()
        .filter_map(|s| match s.status_quo_verdict() {
            Some(Verdict::Ok) | None => None,
            Some(v) => Some((gib(s.content_bytes), v)),
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let y = ymax * 0.05;
    chart
        .draw_series(
            failed
                .iter()
                .map(|(x, _)| Cross::new((*x, y), 8, RED.stroke_width(3))),
        )?
        .label("status quo did not start (OOM / ENOSPC)")
        .legend(|(x, y)| Cross::new((x + 10, y), 6, RED.stroke_width(3)));
    chart.draw_series(failed.iter().map(|(x, v)| {
        Text::new(
            v.word().to_string(),
            (*x, y + ymax * 0.04),
            ("sans-serif", 14).into_font().color(&RED),
        )
    }))?;
    Ok(())
}

/// Writes `STEM.png` and `STEM.svg`; returns both paths.
pub fn write(o: &ScaleOutcome, stem: &Path) -> anyhow::Result<Vec<PathBuf>> {
    crate::plot::register_font()?;
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), o)?;
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), o)?;
    for f in [&png, &svg] {
        if !f.exists() {
            bail!("{} was not written", f.display());
        }
    }
    Ok(vec![png, svg])
}
