//! Looking ahead: while one layer of an image is resolved, the bytes the TOC reads of
//! the layers above it will ask for first are already fetched.
//!
//! containerd prepares an image's layers one after another, base first, each Prepare
//! waiting for the one below (`veil pull` and containerd's CRI pull alike); each
//! layer's TOC costs at least a round trip. The Prepare of one layer names the layers
//! above it (`containerd.io/snapshot/cri.image-layers`), so Veil starts fetching their
//! TOC ranges right away, in parallel, and a later Prepare finds its bytes in memory
//! (or in flight: it waits for the same request). Only bytes are fetched ahead:
//! nothing is trusted until the layer's own resolution authenticates its TOC against
//! the digest its manifest (or its sealed options) vouches for, exactly as when the
//! bytes come from the registry then. Held bytes are bounded ([`AHEAD_MAX_BYTES`]),
//! handed out once, and dropped after [`AHEAD_TTL`] when no Prepare took them.
//!
//! `LazyLayers::start_look_ahead` (below) starts the fetches of one Prepare.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use veil_blob::BlobSource;
use veil_registry::{BlobDescriptor, Digest};

use crate::resolver::RemoteLayer;

/// Layers above the one being prepared whose TOC bytes are fetched ahead (`[lazy]
/// look_ahead_layers`; 0: none).
pub const DEFAULT_LOOK_AHEAD_LAYERS: usize = 16;
/// How long fetched-ahead bytes wait for their layer's Prepare before they are dropped.
pub const AHEAD_TTL: Duration = Duration::from_secs(60);
/// The most bytes held (or being fetched) ahead at once, over all layers.
pub const AHEAD_MAX_BYTES: u64 = 64 << 20;

/// Bytes of a blob from offset `at` on.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    /// Where they start in the blob.
    pub at: u64,
    /// The bytes.
    pub bytes: Arc<Vec<u8>>,
}

/// A fetch started ahead, shared by whoever waits for it.
pub(crate) type Pending = Shared<BoxFuture<'static, Option<Arc<HeldBytes>>>>;

struct Entry {
    id: u64,
    len: u64,
    pending: Pending,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    reserved: u64,
    next_id: u64,
}

impl State {
    fn remove(&mut self, key: &str, id: Option<u64>) -> Option<Pending> {
        if id.is_some_and(|id| self.entries.get(key).map(|e| e.id) != Some(id)) {
            return None;
        }
        let entry = self.entries.remove(key)?;
        self.reserved -= entry.len;
        Some(entry.pending)
    }
}

/// The fetches started ahead, by layer.
#[derive(Clone, Default)]
pub(crate) struct Ahead(Arc<Mutex<State>>);

impl Ahead {
    /// The key of layer `digest` of image `image_ref`.
    pub fn key(image_ref: &str, digest: &str) -> String {
        format!("{image_ref} {digest}")
    }

    /// Starts `fetch` (of `len` bytes at most) on `runtime` for `key`, unless one is
    /// already there or the budget is spent (`None`); it is dropped after [`AHEAD_TTL`]
    /// if not taken.
    pub fn start(
        &self,
        runtime: &tokio::runtime::Handle,
        key: String,
        len: u64,
        fetch: BoxFuture<'static, Option<Arc<HeldBytes>>>,
    ) -> Option<Pending> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if state.entries.contains_key(&key) || state.reserved + len > AHEAD_MAX_BYTES {
            return None;
        }
        let pending = fetch.shared();
        let id = state.next_id;
        state.next_id += 1;
        state.reserved += len;
        state.entries.insert(
            key.clone(),
            Entry {
                id,
                len,
                pending: pending.clone(),
            },
        );
        drop(state);
        let this = self.clone();
        let driven = pending.clone();
        runtime.spawn(async move {
            driven.await;
            tokio::time::sleep(AHEAD_TTL).await;
            let mut state = this.0.lock().unwrap_or_else(|p| p.into_inner());
            if state.remove(&key, Some(id)).is_some() {
                tracing::debug!(layer = %key, "bytes fetched ahead were not used; dropped");
            }
        });
        Some(pending)
    }

    /// The bytes fetched ahead for `key` (waiting for them if they are still coming),
    /// handed out once; `None` when nothing was fetched or the fetch failed.
    pub async fn take(&self, key: &str) -> Option<Arc<HeldBytes>> {
        let pending = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key, None)?;
        pending.await
    }

    /// Bytes held or being fetched ahead (for tests).
    #[cfg(test)]
    pub fn reserved(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).reserved
    }
}

/// The blob range a lazy layer's TOC read asks for first (the formats crate knows it:
/// [`veil_formats::classify::first_toc_range`]).
pub(crate) fn first_toc_range(desc: &BlobDescriptor, tail_bytes: u64) -> Option<Range<u64>> {
    veil_formats::classify::first_toc_range(
        &desc.media_type,
        desc.size,
        &desc.annotations,
        tail_bytes,
    )
}

impl super::LazyLayers {
    /// [`LayerResolver::look_ahead`]: fetches, in the background, the range the TOC
    /// read of `layer` will ask for first, then those of the first
    /// [`LazyOptions::look_ahead_layers`] layers of `above` (see `layers/ahead.rs`).
    /// `layer`'s own comes first, registered before its resolution looks for it (it
    /// waits for this fetch instead of making its own) and sent first, on the connection
    /// the manifest came on, ahead of the others.
    pub(super) fn start_look_ahead(&self, layer: &RemoteLayer, above: &[String]) {
        let tail_bytes = self.options.toc_tail_bytes;
        if tail_bytes == 0 || self.options.look_ahead_layers == 0 {
            return;
        }
        let first = self.fetch_ahead(layer, &layer.layer_digest, None);
        for digest in above
            .iter()
            .filter(|d| **d != layer.layer_digest)
            .take(self.options.look_ahead_layers)
        {
            self.fetch_ahead(layer, digest, first.clone());
        }
    }

    /// Registers and starts the fetch ahead of the first TOC range of layer `digest` of
    /// `layer`'s image, after `after` (when given) is done.
    fn fetch_ahead(
        &self,
        layer: &RemoteLayer,
        digest: &str,
        after: Option<Pending>,
    ) -> Option<Pending> {
        let tail_bytes = self.options.toc_tail_bytes;
        let registry = self.registry.clone();
        let manifests = self.manifests.clone();
        let disk_cache = self.options.disk_cache.clone();
        let layer = layer.clone();
        let digest = digest.to_string();
        let key = Ahead::key(&layer.image_ref, &digest);
        let fetch = async move {
            if let Some(after) = after {
                after.await;
            }
            let (reference, manifest) = match manifests.get(&registry, &layer).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(image = %layer.image_ref, error = %e, "look-ahead: no manifest");
                    return None;
                }
            };
            let desc = manifest.layer(&Digest::parse(&digest).ok()?)?.clone();
            let range = first_toc_range(&desc, tail_bytes)?;
            tracing::debug!(layer = %digest, range = ?range, "look-ahead: fetching the TOC range");
            let len = range.end - range.start;
            // Through the disk cache, which keeps the bytes as it would have kept the
            // layer's own TOC read.
            let blob: Arc<dyn BlobSource> = Arc::new(registry.blob(&reference, &desc));
            let blob: Arc<dyn BlobSource> = match &disk_cache {
                Some(disk) => disk.wrap(&digest, blob),
                None => blob,
            };
            match blob.read_range(range.clone()).await {
                Ok(bytes) if bytes.len() as u64 == len => Some(Arc::new(HeldBytes {
                    at: range.start,
                    bytes: Arc::new(bytes),
                })),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(layer = %digest, error = %e, "look-ahead: fetching the TOC range failed");
                    None
                }
            }
        }
        .boxed();
        self.ahead.start(&self.runtime, key, tail_bytes, fetch)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use veil_registry::Digest;

    use super::*;

    fn desc(media_type: &str, size: u64, annotations: &[(&str, &str)]) -> BlobDescriptor {
        BlobDescriptor {
            media_type: media_type.into(),
            digest: Digest::sha256_of(b"x"),
            size,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            urls: Vec::new(),
        }
    }

    #[test]
    fn the_first_toc_range_of_each_format() {
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert_eq!(first_toc_range(&desc(gz, 1000, &[]), 100), Some(900..1000));
        assert_eq!(first_toc_range(&desc(gz, 50, &[]), 100), Some(0..50));
        let enc = format!("{gz}+encrypted");
        assert_eq!(
            first_toc_range(&desc(&enc, 1000, &[]), 100),
            Some(900..1000)
        );
        let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
        assert_eq!(
            first_toc_range(&desc(zstd, 1000, &[]), 100),
            Some(900..1000)
        );
        let position = [(
            veil_formats::zstdchunked::MANIFEST_POSITION_ANNOTATION,
            "500:40:90:1",
        )];
        assert_eq!(
            first_toc_range(&desc(zstd, 1000, &position), 100),
            Some(492..540)
        );
        // A position claiming more than the tail size is not fetched ahead.
        let huge = [(
            veil_formats::zstdchunked::MANIFEST_POSITION_ANNOTATION,
            "500:400:900:1",
        )];
        assert_eq!(first_toc_range(&desc(zstd, 1000, &huge), 100), None);
        let beyond = [(
            veil_formats::zstdchunked::MANIFEST_POSITION_ANNOTATION,
            "990:40:90:1",
        )];
        assert_eq!(first_toc_range(&desc(zstd, 1000, &beyond), 100), None);
        assert_eq!(
            first_toc_range(
                &desc("application/vnd.oci.image.layer.v1.tar", 1000, &[]),
                100
            ),
            None
        );
    }

    #[tokio::test]
    async fn fetched_once_handed_out_once_within_budget() {
        let ahead = Ahead::default();
        let runtime = tokio::runtime::Handle::current();
        let held = Arc::new(HeldBytes {
            at: 5,
            bytes: Arc::new(vec![1, 2, 3]),
        });
        let h = held.clone();
        let started = ahead.start(&runtime, "a".into(), 3, async move { Some(h) }.boxed());
        assert!(started.is_some());
        // A second fetch of the same layer is not started.
        let again = ahead.start(&runtime, "a".into(), 3, async { None }.boxed());
        assert!(again.is_none());
        // Nor one over the budget.
        let over = ahead.start(
            &runtime,
            "b".into(),
            AHEAD_MAX_BYTES,
            async { None }.boxed(),
        );
        assert!(over.is_none());
        assert_eq!(ahead.reserved(), 3);
        let got = ahead.take("a").await.unwrap();
        assert_eq!((got.at, got.bytes.as_slice()), (5, &[1u8, 2, 3][..]));
        assert!(ahead.take("a").await.is_none());
        assert_eq!(ahead.reserved(), 0);
        assert!(ahead.take("never").await.is_none());
    }
}
