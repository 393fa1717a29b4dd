//! A resolved layer's status: the [`LayerStatus`] of `veil status`, and the
//! [`LayerStatusFile`] an unencrypted layer's mount serves at `/.veil/<digest>.json`
//! (through `veil_fusefs::status_dir`, which knows nothing of what the bytes say).
//!
//! The file is rendered afresh on every open from the same counters `veil status`
//! reads. It names no file of the layer; still, an encrypted layer gets no such file
//! (its mount shows nothing that is not the image's).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use veil_formats::classify::LazyFormat;
use veil_fusefs::prefetch::FetchProgress;
use veil_fusefs::status_dir::{RenderStatus, StatusFile};

use super::LayerEntry;
use crate::status::{LayerStatus, LayerStatusFile};

/// The background fetches by layer digest, as [`super::LazyLayers`] keeps them.
pub(super) type Fetches = Arc<Mutex<HashMap<String, Arc<FetchProgress>>>>;

/// The name `veil status` and the status file give a lazily served layer's format.
pub(super) fn format_name(format: &LazyFormat) -> &'static str {
    match format {
        LazyFormat::Estargz { .. } => "estargz",
        LazyFormat::ZstdChunked(_) => "zstd:chunked",
    }
}

/// What `veil status` shows of layer `digest`.
pub(super) fn layer_status(
    digest: &str,
    entry: &LayerEntry,
    background: Option<&Arc<FetchProgress>>,
) -> LayerStatus {
    let stats = entry.reader.stats();
    let prefetch_bytes = entry.prefetch_bytes.load(Ordering::Relaxed);
    LayerStatus {
        digest: digest.to_string(),
        image: entry.image.clone(),
        seq: entry.reader.layer_id(),
        mode: entry.mode.into(),
        blob_size: entry.blob_size,
        // With a disk cache, the reader's bytes may have come from disk: count only what
        // the registry sent.
        bytes_fetched: match &entry.cached {
            Some(c) => c.traffic().1,
            // A streamed layer without a disk cache: the bytes its pass read (its reads
            // fetch ranges again, not counted here).
            None if entry.mode == "streamed" => entry.streamed_bytes,
            // The prefetch reads the source directly, not through the reader.
            None => stats.bytes_fetched + prefetch_bytes,
        },
        prefetch_bytes,
        background_bytes: background.map(|b| b.fetched()).unwrap_or(0),
        range_requests: stats.range_requests,
        fetch_failures: stats.fetch_failures,
        chunk_hits: stats.chunk_hits,
        chunks_fetched: stats.chunks_fetched,
        verify_failures: stats.verify_failures,
        background_done: background.map(|b| b.done()).unwrap_or(0),
        background_state: background
            .map(|b| format!("{:?}", b.state()).to_lowercase())
            .unwrap_or_else(|| "off".into()),
        diff_id: entry.diff_id.get(),
        bad: entry.reader.bad_reason().map(str::to_string),
    }
}

/// The status file of layer `digest` as it stands now.
fn status_file_of(digest: &str, entry: &LayerEntry, fetches: &Fetches) -> LayerStatusFile {
    let background = fetches
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(digest)
        .cloned();
    let status = layer_status(digest, entry, background.as_ref());
    let fully_fetched = entry
        .cached
        .as_ref()
        .is_some_and(|c| c.present_bytes() >= entry.blob_size);
    LayerStatusFile {
        digest: status.digest,
        format: entry.format.to_string(),
        mode: status.mode,
        state: match status.bad {
            Some(_) => "bad".into(),
            None => "serving".into(),
        },
        fully_fetched,
        bytes_fetched: status.bytes_fetched,
        blob_size: status.blob_size,
        range_requests: status.range_requests,
        fetch_failures: status.fetch_failures,
        verify_failures: status.verify_failures,
        background_state: status.background_state,
        diff_id: status.diff_id,
        bad: status.bad,
    }
}

/// The `/.veil/<digest>.json` file of an unencrypted layer (named by digest so that the
/// files of all layers show side by side in a container's merged `/.veil`); `None`, with
/// a warning, if the digest makes no file name (a parsed digest always does).
pub(super) fn status_file(digest: &str, entry: LayerEntry, fetches: Fetches) -> Option<StatusFile> {
    let name = format!("{digest}.json");
    let layer = digest.to_string();
    let render: RenderStatus = Arc::new(move || {
        let file = status_file_of(&layer, &entry, &fetches);
        let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    });
    StatusFile::new(name, render)
        .inspect_err(|why| tracing::warn!(layer = digest, %why, "no status file for the layer"))
        .ok()
}
