//! The status report: what the daemon is serving (`veil status`).
//!
//! The image service fills in the layers, caches and bytes fetched; the snapshots API
//! adds its snapshot counts and fallbacks; the daemon serves the report as JSON on its
//! status socket and `veil status` renders it. Nothing secret is in the report: layer
//! digests, image references, counters.

use serde::{Deserialize, Serialize};

/// One layer Veil serves lazily.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStatus {
    /// Layer blob digest.
    pub digest: String,
    /// Image the layer was resolved for.
    pub image: String,
    /// The order layers were resolved in (larger: more recent), within this process.
    #[serde(default)]
    pub seq: u64,
    /// How it is served: `lazy` (chunks fetched on demand), or `streamed` (an encrypted
    /// layer fetched whole and verified before it is served).
    pub mode: String,
    /// Size of the layer blob.
    pub blob_size: u64,
    /// Bytes of it fetched from the registry so far.
    pub bytes_fetched: u64,
    /// Of [`Self::bytes_fetched`], those read before the layer was mounted: the prefetch
    /// of its prioritized files (for a streamed layer, the whole blob).
    #[serde(default)]
    pub prefetch_bytes: u64,
    /// Of [`Self::bytes_fetched`], those the background fetch read from the network.
    #[serde(default)]
    pub background_bytes: u64,
    /// Range requests sent for it.
    pub range_requests: u64,
    /// Range requests for it that failed (after their retries).
    #[serde(default)]
    pub fetch_failures: u64,
    /// Chunks served from the plaintext cache.
    pub chunk_hits: u64,
    /// Chunks fetched and decoded.
    pub chunks_fetched: u64,
    /// Chunks that failed verification (served as EIO).
    pub verify_failures: u64,
    /// Bytes of the blob the background fetch has in the disk cache.
    pub background_done: u64,
    /// State of the background fetch: off, running, complete, cancelled, failed, skipped.
    pub background_state: String,
    /// Where the check of the layer's `diff_id` against the image config stands:
    /// `pending` (until the whole blob is fetched), `verified`, `mismatch`, `failed` (it
    /// does not decompress), or `off` (no background fetch, or a streamed layer).
    #[serde(default)]
    pub diff_id: String,
    /// Why the whole layer was marked bad (every read of it fails `EIO`), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<String>,
}

/// A layer containerd unpacked itself because Veil could not serve it lazily.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackStatus {
    /// Layer blob digest.
    pub digest: String,
    /// Image it belongs to.
    pub image: String,
    /// Why it was not served lazily.
    pub reason: String,
}

/// A remote layer on record that could not be mounted again (after a restart): its
/// mount point answers `EIO` while it is retried in the background.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedLayerStatus {
    /// The snapshot it is the directory of.
    pub snapshot: String,
    /// The snapshot's directory, where the layer is to be mounted (now answering `EIO`).
    pub mountpoint: String,
    /// Layer blob digest.
    pub digest: String,
    /// Image it belongs to.
    pub image: String,
    /// Why the last attempt to mount it failed.
    pub reason: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Seconds since the first attempt failed.
    pub failing_for_secs: u64,
}

/// The plaintext chunk cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// Bytes held.
    pub bytes: u64,
    /// Byte budget.
    pub budget: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that missed.
    pub misses: u64,
    /// Chunks evicted to stay within the budget.
    #[serde(default)]
    pub evictions: u64,
}

/// The disk cache of blob bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCacheStatus {
    /// Bytes held.
    pub bytes: u64,
    /// Byte budget.
    pub budget: u64,
    /// Bytes read answered from disk.
    pub bytes_from_disk: u64,
    /// Bytes read that came from the network.
    pub bytes_from_network: u64,
    /// Blobs evicted to stay within the budget.
    #[serde(default)]
    pub evictions: u64,
}

/// The daemon's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Veil's version.
    pub version: String,
    /// Root directory.
    pub root: String,
    /// Snapshots on record.
    pub snapshots: usize,
    /// Of which served remotely (lazily).
    pub remote_snapshots: usize,
    /// Layers served lazily.
    pub layers: Vec<LayerStatus>,
    /// Layers left to containerd.
    pub fallbacks: Vec<FallbackStatus>,
    /// Remote layers on record that are not mounted (their mount points answer `EIO`):
    /// while this is not empty, images using them are not healthy.
    #[serde(default)]
    pub failed: Vec<FailedLayerStatus>,
    /// Bytes fetched from registries in all (manifests, TOCs, chunks).
    pub registry_bytes_fetched: u64,
    /// The plaintext cache.
    pub cache: CacheStatus,
    /// The disk cache, when enabled.
    pub disk_cache: Option<DiskCacheStatus>,
}

impl LayerStatus {
    /// Of [`Self::bytes_fetched`], those fetched because a read asked for them: neither
    /// prefetched nor fetched in the background.
    pub fn on_demand_bytes(&self) -> u64 {
        self.bytes_fetched
            .saturating_sub(self.prefetch_bytes)
            .saturating_sub(self.background_bytes)
    }
}

impl StatusReport {
    /// Whether every remote layer on record is mounted and served: none failed to mount
    /// ([`Self::failed`]) and none was marked bad ([`LayerStatus::bad`]).
    pub fn healthy(&self) -> bool {
        self.failed.is_empty() && self.layers.iter().all(|l| l.bad.is_none())
    }
}
