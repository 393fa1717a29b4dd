//! The status report: what the daemon is serving (`veil status`).
//!
//! The image service fills in the layers, caches and bytes fetched; the snapshots API
//! adds its snapshot counts and fallbacks; the daemon serves the report as JSON on its
//! status socket and `veil status` renders it. Nothing secret is in the report: layer
//! digests, image references, counters. The access order of a layer
//! ([`AccessOrder`], `veil status --access-order`) is kept apart: it names files, which
//! are plaintext of an encrypted layer, so it is only ever asked for explicitly, on the
//! root-only status socket, and never logged.

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

/// What an unencrypted layer's mount serves at `/.veil/<digest>.json` (hidden, read-only,
/// root's): the layer's own view of [`LayerStatus`], for scripts and probes inside a
/// container. Never served for an encrypted layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStatusFile {
    /// Layer blob digest.
    pub digest: String,
    /// Layer format: `estargz`, `zstd:chunked`, or for a streamed layer its tar stream
    /// (`tar`, `tar+gzip`, `tar+zstd`).
    pub format: String,
    /// How it is served: `lazy` or `streamed` (fetched whole, verified, then served).
    pub mode: String,
    /// `serving`, or `bad` (every read fails `EIO`; see [`Self::bad`]).
    pub state: String,
    /// Whether the whole blob is on local disk (nothing left to fetch).
    pub fully_fetched: bool,
    /// Bytes of the blob fetched from the registry so far.
    pub bytes_fetched: u64,
    /// Size of the blob.
    pub blob_size: u64,
    /// Range requests sent for it.
    pub range_requests: u64,
    /// Range requests for it that failed (after their retries).
    pub fetch_failures: u64,
    /// Chunks that failed verification (served as EIO).
    pub verify_failures: u64,
    /// State of the background fetch: off, running, complete, cancelled, failed, skipped.
    pub background_state: String,
    /// Where the check of the layer's `diff_id` stands (see [`LayerStatus::diff_id`]).
    pub diff_id: String,
    /// Why the whole layer was marked bad, if it was.
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

/// One layer under an image or a container (`veil status`, per image and per container).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackedLayer {
    /// Layer blob digest (empty for a layer containerd unpacked whose digest Veil does
    /// not know).
    pub digest: String,
    /// How it is served: `lazy`, `streamed`, `unpacked` (by containerd) or `failed` (on
    /// record, not mounted).
    pub mode: String,
    /// Bytes of the blob fetched from the registry (0 for an unpacked layer).
    pub bytes_fetched: u64,
    /// Size of the blob (0 when Veil does not know it: unpacked, not mounted).
    pub blob_size: u64,
    /// `serving`, `bad` (every read fails EIO), `not mounted` (retried in the background),
    /// or `local` (unpacked).
    pub state: String,
}

/// An image whose layers Veil serves or left to containerd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    /// Image reference.
    pub image: String,
    /// Its layers Veil knows about, in no particular order.
    pub layers: Vec<StackedLayer>,
    /// Bytes of its lazy and streamed layers fetched so far.
    pub bytes_fetched: u64,
    /// Total blob size of those layers.
    pub blob_size: u64,
}

/// A container's root filesystem (an active or view snapshot) and the layers below it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// The snapshot key containerd gave (`<namespace>/<n>/<container id>`).
    pub snapshot: String,
    /// The container (the key's last part).
    pub container: String,
    /// `active` (writable root) or `view`.
    pub kind: String,
    /// The image of its lazily served layers (empty when none is).
    pub image: String,
    /// Its layers, top first.
    pub layers: Vec<StackedLayer>,
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
    /// Per image: its layers, how each is served and how much is fetched.
    #[serde(default)]
    pub images: Vec<ImageStatus>,
    /// Per container root filesystem: the layers below it.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
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
    /// How layer `digest` stands, as listed under an image or container: from
    /// [`Self::layers`], [`Self::failed`] or [`Self::fallbacks`].
    pub fn stacked_layer(&self, digest: &str) -> StackedLayer {
        if let Some(l) = self.layers.iter().find(|l| l.digest == digest) {
            return StackedLayer {
                digest: digest.to_string(),
                mode: l.mode.clone(),
                bytes_fetched: l.bytes_fetched,
                blob_size: l.blob_size,
                state: if l.bad.is_some() { "bad" } else { "serving" }.into(),
            };
        }
        if self.failed.iter().any(|f| f.digest == digest) {
            return StackedLayer {
                digest: digest.to_string(),
                mode: "failed".into(),
                bytes_fetched: 0,
                blob_size: 0,
                state: "not mounted".into(),
            };
        }
        StackedLayer {
            digest: digest.to_string(),
            mode: "unpacked".into(),
            bytes_fetched: 0,
            blob_size: 0,
            state: "local".into(),
        }
    }

    /// The per-image view of [`Self::layers`], [`Self::failed`] and [`Self::fallbacks`],
    /// sorted by image.
    pub fn image_view(&self) -> Vec<ImageStatus> {
        let mut images: std::collections::BTreeMap<&str, ImageStatus> = Default::default();
        let digests = self
            .layers
            .iter()
            .map(|l| (l.image.as_str(), l.digest.as_str()))
            .chain(
                self.failed
                    .iter()
                    .map(|f| (f.image.as_str(), f.digest.as_str())),
            )
            .chain(
                self.fallbacks
                    .iter()
                    .map(|f| (f.image.as_str(), f.digest.as_str())),
            );
        for (image, digest) in digests {
            let entry = images.entry(image).or_insert_with(|| ImageStatus {
                image: image.to_string(),
                ..ImageStatus::default()
            });
            if let Some(l) = self.layers.iter().find(|l| l.digest == digest) {
                entry.bytes_fetched += l.bytes_fetched;
                entry.blob_size += l.blob_size;
            }
            entry.layers.push(self.stacked_layer(digest));
        }
        images.into_values().collect()
    }

    /// Whether every remote layer on record is mounted and served: none failed to mount
    /// ([`Self::failed`]) and none was marked bad ([`LayerStatus::bad`]).
    pub fn healthy(&self) -> bool {
        self.failed.is_empty() && self.layers.iter().all(|l| l.bad.is_none())
    }
}

/// One file of a layer that was opened or read, in an [`AccessOrder`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessedFileStatus {
    /// Its path in the layer (relative, no leading `/`).
    pub path: String,
    /// Its size, uncompressed.
    pub size: u64,
    /// The bytes of the blob its chunks lie in (for a streamed layer: of the
    /// decompressed stream, not the blob).
    pub compressed_bytes: u64,
    /// Its place in the daemon's order of first touches across all layers (smaller:
    /// earlier), to merge the orders of an image's layers.
    pub sequence: u64,
}

/// The files of one layer that were opened or read, first touch first: what
/// `veil optimize --access-list` places first. Holds file names (plaintext of an
/// encrypted layer): served only on request, to root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessOrder {
    /// Layer blob digest.
    pub digest: String,
    /// Image the layer was resolved for.
    pub image: String,
    /// How it is served: `lazy` or `streamed`.
    pub mode: String,
    /// The files, first touch first.
    pub files: Vec<AccessedFileStatus>,
    /// First touches not kept (the list was full).
    pub dropped: u64,
}

/// A request on the status socket: a JSON line the client writes before it reads. No
/// request (the client writes nothing): the [`StatusReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Ask for the access order of these layers (digests; `"all"`: every layer)
    /// instead of the report: the answer is a JSON list of [`AccessOrder`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_order: Option<String>,
}

/// Merges the access orders of an image's layers into one list of paths (absolute),
/// first touch first, each path once.
pub fn merged_access_list(orders: &[AccessOrder]) -> Vec<String> {
    let mut all: Vec<(u64, &str)> = orders
        .iter()
        .flat_map(|o| o.files.iter().map(|f| (f.sequence, f.path.as_str())))
        .collect();
    all.sort_by_key(|(sequence, _)| *sequence);
    let mut seen = std::collections::HashSet::new();
    all.into_iter()
        .filter(|(_, path)| seen.insert(*path))
        .map(|(_, path)| format!("/{path}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, sequence: u64) -> AccessedFileStatus {
        AccessedFileStatus {
            path: path.into(),
            sequence,
            ..AccessedFileStatus::default()
        }
    }

    #[test]
    fn layers_merge_by_first_touch() {
        let lower = AccessOrder {
            files: vec![file("usr/bin/python3", 1), file("usr/lib/a.py", 4)],
            ..AccessOrder::default()
        };
        let upper = AccessOrder {
            files: vec![file("app/main.py", 2), file("usr/lib/a.py", 3)],
            ..AccessOrder::default()
        };
        assert_eq!(
            merged_access_list(&[lower, upper]),
            ["/usr/bin/python3", "/app/main.py", "/usr/lib/a.py"]
        );
    }

    #[test]
    fn image_view_groups_layers_by_image_with_their_state() {
        let report = StatusReport {
            layers: vec![
                LayerStatus {
                    digest: "sha256:a".into(),
                    image: "reg/one:1".into(),
                    mode: "lazy".into(),
                    blob_size: 100,
                    bytes_fetched: 10,
                    ..LayerStatus::default()
                },
                LayerStatus {
                    digest: "sha256:b".into(),
                    image: "reg/one:1".into(),
                    mode: "lazy".into(),
                    blob_size: 50,
                    bytes_fetched: 5,
                    bad: Some("diff_id mismatch".into()),
                    ..LayerStatus::default()
                },
            ],
            fallbacks: vec![FallbackStatus {
                digest: "sha256:c".into(),
                image: "reg/two:1".into(),
                reason: "plain tar.gz".into(),
            }],
            ..StatusReport::default()
        };
        let images = report.image_view();
        assert_eq!(images.len(), 2);
        let one = &images[0];
        assert_eq!(
            (one.image.as_str(), one.bytes_fetched, one.blob_size),
            ("reg/one:1", 15, 150)
        );
        let states: Vec<&str> = one.layers.iter().map(|l| l.state.as_str()).collect();
        assert_eq!(states, ["serving", "bad"]);
        assert_eq!(images[1].layers[0].mode, "unpacked");
        assert_eq!(images[1].layers[0].state, "local");
    }
}
