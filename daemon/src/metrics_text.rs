//! The per-layer and state metrics of `/metrics`, rendered in the Prometheus text format
//! from the daemon's [`StatusReport`] at scrape time.
//!
//! These are the counters the image service already keeps per layer (the same ones
//! `veil status` shows), so a series exists exactly while its layer is served. The
//! `layer` label is bounded: the `layer_labels` most recently resolved layers get their
//! digest, every other layer is summed under `layer="other"`. No file or path name is
//! ever a label (an encrypted layer's file names are plaintext); image references are,
//! only in `veil_layer_info`.

use std::fmt::Write as _;

use veil_image::status::{LayerStatus, StatusReport};

/// The `layer` label of the layers past the cap, summed.
pub const OTHER_LAYERS: &str = "other";

/// One metric family: its name, type and help, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value escaped as the text format wants (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A gauge or counter with no labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    Family::new(out, name, kind, help).sample(name, &[], value);
}

/// The per-layer counters exported, one value each: name, type, help, value.
type LayerValue = (
    &'static str,
    &'static str,
    &'static str,
    fn(&LayerStatus) -> u64,
);

const LAYER_VALUES: &[LayerValue] = &[
    (
        "veil_layer_blob_bytes",
        "gauge",
        "Size of the layer blob.",
        |l| l.blob_size,
    ),
    (
        "veil_layer_range_requests_total",
        "counter",
        "Range requests sent for the layer's chunks.",
        |l| l.range_requests,
    ),
    (
        "veil_layer_fetch_failures_total",
        "counter",
        "Range requests for the layer's chunks that failed after their retries.",
        |l| l.fetch_failures,
    ),
    (
        "veil_layer_chunk_hits_total",
        "counter",
        "Chunk reads answered from the plaintext cache.",
        |l| l.chunk_hits,
    ),
    (
        "veil_layer_chunk_misses_total",
        "counter",
        "Chunks fetched and decoded because the plaintext cache did not have them.",
        |l| l.chunks_fetched,
    ),
    (
        "veil_layer_verify_failures_total",
        "counter",
        "Chunks that failed verification against their digest (served as EIO).",
        |l| l.verify_failures,
    ),
    (
        "veil_layer_background_done_bytes",
        "gauge",
        "Bytes from the start of the blob the background fetch has in the disk cache.",
        |l| l.background_done,
    ),
];

/// The Prometheus text of `report`, with at most `layer_labels` layers under their own
/// `layer` label.
pub fn render(report: &StatusReport, layer_labels: usize) -> String {
    let mut out = String::new();
    let mut layers: Vec<&LayerStatus> = report.layers.iter().collect();
    layers.sort_by_key(|l| std::cmp::Reverse(l.seq));
    let (named, rest) = layers.split_at(layer_labels.min(layers.len()));
    let mut rows: Vec<(&str, LayerStatus)> = named
        .iter()
        .map(|l| (l.digest.as_str(), (*l).clone()))
        .collect();
    if !rest.is_empty() {
        rows.push((OTHER_LAYERS, sum(rest)));
    }

    let name = "veil_layer_fetched_bytes_total";
    let mut family = Family::new(
        &mut out,
        name,
        "counter",
        "Layer blob bytes fetched from the registry, by why: on_demand (a read needed them), \
         prefetch (prioritized files before the mount; a streamed layer's whole blob), \
         background (the background fetch into the disk cache).",
    );
    for (layer, l) in &rows {
        for (source, value) in [
            ("on_demand", l.on_demand_bytes()),
            ("prefetch", l.prefetch_bytes),
            ("background", l.background_bytes),
        ] {
            family.sample(name, &[("layer", layer), ("source", source)], value);
        }
    }
    for (name, kind, help, value) in LAYER_VALUES {
        let mut family = Family::new(&mut out, name, kind, help);
        for (layer, l) in &rows {
            family.sample(name, &[("layer", layer)], value(l));
        }
    }
    let name = "veil_layer_info";
    let mut family = Family::new(
        &mut out,
        name,
        "gauge",
        "1 for each layer exported under its own label: the image it was resolved for, how it \
         is served (lazy, streamed), its background fetch and diff_id check, and whether it \
         was marked bad.",
    );
    for l in named {
        let bad = if l.bad.is_some() { "true" } else { "false" };
        let labels = [
            ("layer", l.digest.as_str()),
            ("image", l.image.as_str()),
            ("mode", l.mode.as_str()),
            ("background", l.background_state.as_str()),
            ("diff_id", l.diff_id.as_str()),
            ("bad", bad),
        ];
        family.sample(name, &labels, 1);
    }
    render_state(&mut out, report);
    render_caches(&mut out, report);
    out
}

/// The counters of `layers` added up (the `other` row).
fn sum(layers: &[&LayerStatus]) -> LayerStatus {
    let mut total = LayerStatus::default();
    for l in layers {
        total.blob_size += l.blob_size;
        total.bytes_fetched += l.bytes_fetched;
        total.prefetch_bytes += l.prefetch_bytes;
        total.background_bytes += l.background_bytes;
        total.range_requests += l.range_requests;
        total.fetch_failures += l.fetch_failures;
        total.chunk_hits += l.chunk_hits;
        total.chunks_fetched += l.chunks_fetched;
        total.verify_failures += l.verify_failures;
        total.background_done += l.background_done;
    }
    total
}

/// Mounts and snapshots by state.
fn render_state(out: &mut String, report: &StatusReport) {
    let name = "veil_mounted_layers";
    let mut family = Family::new(
        out,
        name,
        "gauge",
        "Remote layers mounted, by mode (lazy, streamed) and state (serving; bad: every read \
         fails EIO).",
    );
    for mode in ["lazy", "streamed"] {
        for (state, bad) in [("serving", false), ("bad", true)] {
            let n = report
                .layers
                .iter()
                .filter(|l| l.mode == mode && l.bad.is_some() == bad)
                .count();
            family.sample(name, &[("mode", mode), ("state", state)], n as u64);
        }
    }
    single(
        out,
        "veil_failed_layers",
        "gauge",
        "Remote layers on record that could not be mounted again (their mount points answer \
         EIO while they are retried).",
        report.failed.len() as u64,
    );
    single(
        out,
        "veil_fallback_layers",
        "gauge",
        "Layers left to containerd to unpack because Veil could not serve them lazily.",
        report.fallbacks.len() as u64,
    );
    single(
        out,
        "veil_snapshots",
        "gauge",
        "Snapshots on record.",
        report.snapshots as u64,
    );
    single(
        out,
        "veil_remote_snapshots",
        "gauge",
        "Snapshots on record served remotely (lazily).",
        report.remote_snapshots as u64,
    );
}

/// The plaintext chunk cache and the disk cache.
fn render_caches(out: &mut String, report: &StatusReport) {
    let c = &report.cache;
    let values = [
        (
            "veil_chunk_cache_bytes",
            "gauge",
            "Plaintext chunk bytes held in memory.",
            c.bytes,
        ),
        (
            "veil_chunk_cache_budget_bytes",
            "gauge",
            "Byte budget of the plaintext chunk cache.",
            c.budget,
        ),
        (
            "veil_chunk_cache_hits_total",
            "counter",
            "Chunk cache lookups answered from memory.",
            c.hits,
        ),
        (
            "veil_chunk_cache_misses_total",
            "counter",
            "Chunk cache lookups that missed.",
            c.misses,
        ),
        (
            "veil_chunk_cache_evictions_total",
            "counter",
            "Chunks evicted to stay within the budget.",
            c.evictions,
        ),
    ];
    for (name, kind, help, value) in values {
        single(out, name, kind, help, value);
    }
    let Some(d) = &report.disk_cache else {
        return;
    };
    let values = [
        (
            "veil_disk_cache_bytes",
            "gauge",
            "Blob bytes held in the disk cache.",
            d.bytes,
        ),
        (
            "veil_disk_cache_budget_bytes",
            "gauge",
            "Byte budget of the disk cache.",
            d.budget,
        ),
        (
            "veil_disk_cache_evictions_total",
            "counter",
            "Blobs evicted from the disk cache to stay within the budget.",
            d.evictions,
        ),
    ];
    for (name, kind, help, value) in values {
        single(out, name, kind, help, value);
    }
    let name = "veil_disk_cache_read_bytes_total";
    let mut family = Family::new(
        out,
        name,
        "counter",
        "Blob bytes read through the disk cache, by where they came from (disk, network).",
    );
    family.sample(name, &[("from", "disk")], d.bytes_from_disk);
    family.sample(name, &[("from", "network")], d.bytes_from_network);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(digest: &str, seq: u64, fetched: u64) -> LayerStatus {
        LayerStatus {
            digest: digest.into(),
            image: "reg/img:1".into(),
            seq,
            mode: "lazy".into(),
            blob_size: 1000,
            bytes_fetched: fetched,
            prefetch_bytes: 10,
            range_requests: 2,
            ..LayerStatus::default()
        }
    }

    #[test]
    fn layers_past_the_cap_are_summed_under_other() {
        let report = StatusReport {
            layers: vec![
                layer("sha256:a", 1, 100),
                layer("sha256:b", 2, 200),
                layer("sha256:c", 3, 300),
            ],
            ..StatusReport::default()
        };
        let text = render(&report, 2);
        // The two most recent keep their digest; the oldest is "other".
        assert!(text.contains(
            "veil_layer_fetched_bytes_total{layer=\"sha256:c\",source=\"on_demand\"} 290"
        ));
        assert!(text.contains("veil_layer_range_requests_total{layer=\"sha256:b\"} 2"));
        assert!(
            text.contains("veil_layer_fetched_bytes_total{layer=\"other\",source=\"prefetch\"} 10")
        );
        assert!(!text.contains("sha256:a"));
        assert!(text.contains("veil_mounted_layers{mode=\"lazy\",state=\"serving\"} 3"));
        assert!(!text.contains("veil_disk_cache_bytes"));
        // Every family is announced once, before its samples.
        let types = text
            .lines()
            .filter(|l| l.starts_with("# TYPE veil_layer_blob_bytes "));
        assert_eq!(types.count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
