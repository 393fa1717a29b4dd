//! The checks of a lazily served layer that need all of its bytes: the ocicrypt HMAC
//! (encrypted layers) and the layer's `diff_id`, run once the background fetch has
//! brought the whole blob into the disk cache.
//!
//! Chunk digests guard every read of a lazily served layer, but they come from the TOC,
//! which only says what the layer's *author* put in it: nothing ties the layer to the
//! image config's `diff_ids`, which is what containerd names snapshots by (chainIDs). Once
//! the whole blob is on disk, [`spawn_whole_layer_checks`] reads it once more (from disk,
//! decrypted for an encrypted layer), decompresses it and hashes the tar stream
//! ([`veil_formats::diff_id`]). A mismatch marks the layer bad: every later read of it
//! fails (`EIO`), the log names the layer, the expected and the actual `diff_id`, `veil
//! status` lists the layer as bad, and snapshots stacked on it are refused. The pass runs
//! on a blocking thread, at most [`DIFF_ID_CHECKS_AT_ONCE`] at a time.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use veil_blob::BlobSource;
use veil_formats::classify::LazyFormat;
use veil_formats::diff_id::uncompressed_digest;
use veil_formats::stream::reader::BlobReader;
use veil_formats::stream::StreamCompression;
use veil_fusefs::disk_cache::CachedBlob;
use veil_fusefs::pipeline::ChunkReader;
use veil_fusefs::prefetch::{BackgroundFetch, FetchState};
use veil_keyprovider::stream_cipher::HmacCheck;

/// Whole-layer `diff_id` passes running at once (each decompresses one layer on a
/// blocking thread; the others wait for a slot).
pub const DIFF_ID_CHECKS_AT_ONCE: usize = 1;

/// Where the `diff_id` check of one layer stands, as `veil status` shows it.
#[derive(Debug, Default)]
pub struct DiffIdState(Mutex<String>);

/// [`DiffIdState`] before the whole blob is there.
pub const DIFF_ID_PENDING: &str = "pending";
/// [`DiffIdState`] once the layer's stream matched the config.
pub const DIFF_ID_VERIFIED: &str = "verified";
/// [`DiffIdState`] once it did not (the layer is marked bad).
pub const DIFF_ID_MISMATCH: &str = "mismatch";
/// [`DiffIdState`] when the whole layer did not decompress (the layer is marked bad).
pub const DIFF_ID_FAILED: &str = "failed";
/// [`DiffIdState`] of a layer that is not checked: no background fetch (no disk cache, or
/// `background_fetch = false`), or a streamed layer (authenticated whole by its HMAC).
pub const DIFF_ID_OFF: &str = "off";

impl DiffIdState {
    /// A state starting as `state`.
    pub fn new(state: &str) -> Arc<Self> {
        Arc::new(Self(Mutex::new(state.to_string())))
    }

    /// The current state.
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, state: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = state.into();
    }
}

/// The `diff_id` check of one layer.
pub struct DiffIdCheck {
    /// The layer's `diff_id` as the image config lists it.
    pub expected: String,
    /// How the (decrypted) blob is compressed.
    pub compression: StreamCompression,
    /// The blob's plaintext (decrypting an encrypted layer over the disk cache).
    pub plain: Arc<dyn BlobSource>,
    /// Shared by every check: at most [`DIFF_ID_CHECKS_AT_ONCE`] passes run at once.
    pub slots: Arc<Semaphore>,
    /// Where the check stands, for status.
    pub state: Arc<DiffIdState>,
}

/// How a lazily servable format's blob is compressed, for its `diff_id` pass.
pub fn compression_of(format: &LazyFormat) -> StreamCompression {
    match format {
        LazyFormat::Estargz { .. } => StreamCompression::Gzip,
        LazyFormat::ZstdChunked(_) => StreamCompression::Zstd,
    }
}

impl DiffIdCheck {
    /// Runs the pass; `Err`: why the layer must not be served (mismatch, or a stream that
    /// does not decompress).
    async fn run(self, layer: &str) -> Result<(), String> {
        let _permit = self.slots.clone().acquire_owned().await;
        let (compression, plain) = (self.compression, self.plain.clone());
        let handle = tokio::runtime::Handle::current();
        let started = std::time::Instant::now();
        let pass = tokio::task::spawn_blocking(move || {
            uncompressed_digest(compression, BlobReader::new(plain, handle, 0))
        })
        .await
        .map_err(|e| format!("the diff_id pass failed: {e}"))?;
        let found = match pass {
            Ok(found) => found,
            Err(e) => {
                self.state.set(DIFF_ID_FAILED);
                return Err(format!(
                    "diff_id check: the whole layer does not decompress ({e}); the image \
                     config says {}",
                    self.expected
                ));
            }
        };
        if found.digest != self.expected {
            self.state.set(DIFF_ID_MISMATCH);
            return Err(format!(
                "diff_id mismatch: the image config says {}, the layer's uncompressed stream \
                 ({} bytes) is {}",
                self.expected, found.size, found.digest
            ));
        }
        self.state.set(DIFF_ID_VERIFIED);
        tracing::info!(layer, diff_id = %found.digest, uncompressed = found.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "layer diff_id verified against the image config");
        Ok(())
    }
}

/// Once `fetch` completes (the whole blob of `reader`'s layer in the disk cache as
/// `source`), checks the ocicrypt HMAC (`hmac`, encrypted layers) and then the
/// `diff_id`, marking the layer bad on the first failure. Does nothing if the fetch
/// does not complete (the layer then stays chunk-verified only).
pub fn spawn_whole_layer_checks(
    runtime: &tokio::runtime::Handle,
    fetch: BackgroundFetch,
    source: Arc<CachedBlob>,
    hmac: Option<HmacCheck>,
    diff_id: Option<DiffIdCheck>,
    reader: Arc<ChunkReader>,
) {
    if hmac.is_none() && diff_id.is_none() {
        return;
    }
    let key = source.key().to_string();
    runtime.spawn(async move {
        if fetch.wait().await != FetchState::Complete {
            return;
        }
        if let Some(hmac) = hmac {
            match hmac.verify(source.as_ref()).await {
                Ok(()) => tracing::info!(layer = %key, "whole-layer HMAC verified"),
                Err(why) => {
                    // The disk copy is not what was encrypted: drop it too.
                    source.forget(0..source.size());
                    reader.mark_bad(format!("ocicrypt HMAC check failed: {why}"));
                    return;
                }
            }
        }
        if let Some(check) = diff_id {
            if let Err(why) = check.run(&key).await {
                // Nothing of it is served again: the disk copy goes too.
                source.forget(0..source.size());
                reader.mark_bad(why);
            }
        }
    });
}
