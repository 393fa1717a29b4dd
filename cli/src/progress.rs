//! Progress of a conversion (`veil convert`): one bar per layer (stage, bytes, rate,
//! ETA) on a terminal; one plain line per finished stage otherwise (logs, CI), so output
//! stays readable. Implements `veil_convert::progress`.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use veil_blob::display::human_bytes as human;
use veil_convert::progress::{LayerProgress, Progress};

/// The progress display of one run.
#[derive(Clone)]
pub struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    /// Bars (`true`) or plain lines.
    pub fn new(bars: bool) -> Self {
        Self {
            multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }
}

impl Progress for Bars {
    fn line(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn layer(&self, label: String) -> Arc<dyn LayerProgress> {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {msg:<10} [{bar:28}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Arc::new(LayerBar {
            bar,
            label,
            stage: Mutex::new(StageState {
                name: "",
                started: Instant::now(),
                position: 0,
            }),
        })
    }
}

struct StageState {
    name: &'static str,
    started: Instant,
    position: u64,
}

/// The progress of one layer; usable from any thread.
struct LayerBar {
    bar: Option<ProgressBar>,
    label: String,
    stage: Mutex<StageState>,
}

impl LayerProgress for LayerBar {
    /// Starts stage `name` of `total` bytes.
    fn stage(&self, name: &'static str, total: u64) {
        if let Ok(mut s) = self.stage.lock() {
            *s = StageState {
                name,
                started: Instant::now(),
                position: 0,
            };
        }
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(total);
            bar.set_position(0);
            bar.set_message(name);
        }
    }

    /// Bytes done in the current stage.
    fn set(&self, position: u64) {
        if let Ok(mut s) = self.stage.lock() {
            s.position = position;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
    }

    /// Ends the current stage: a plain line `LABEL: STAGE SIZE in T (RATE)` without bars.
    fn end_stage(&self, note: &str) {
        if self.bar.is_some() {
            return;
        }
        let (name, took, position) = match self.stage.lock() {
            Ok(s) => (s.name, s.started.elapsed(), s.position),
            Err(_) => return,
        };
        eprintln!(
            "{}: {name} {} in {:.2?} ({}/s){}{note}",
            self.label,
            human(position),
            took,
            human((position as f64 / took.as_secs_f64().max(1e-6)) as u64),
            if note.is_empty() { "" } else { "; " },
        );
    }

    /// The layer is done: `summary` replaces the bar (or is printed).
    fn finish(&self, summary: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{prefix} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.finish_with_message(summary.to_string());
            }
            None => eprintln!("{}: {summary}", self.label),
        }
    }

    /// The layer failed.
    fn fail(&self, why: &str) {
        match &self.bar {
            Some(bar) => bar.abandon_with_message(format!("FAILED: {why}")),
            None => eprintln!("{}: FAILED: {why}", self.label),
        }
    }
}
