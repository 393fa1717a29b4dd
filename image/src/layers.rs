//! Veil's [`LayerResolver`]: registry + layer formats + FUSE, glued.
//!
//! Resolving a layer finds its descriptor in the image manifest (fetched once per
//! manifest), decides whether it can be served lazily (an eStargz or zstd:chunked layer
//! whose TOC digest the manifest vouches for), reads and authenticates the TOC through
//! ranged registry reads, and builds the layer's file tree. Mounting it starts a FUSE
//! session whose reads fetch, decompress and verify chunks on demand through the shared
//! plaintext cache. Unencrypted layers that cannot be served lazily are reported as
//! such, so the snapshotter lets containerd unpack them; encrypted ones (which containerd
//! cannot unpack) are streamed: fetched whole, authenticated by the ocicrypt HMAC and
//! indexed, then served through the same FUSE filesystem
//! (`LazyLayers::resolve_streamed`, in `layers/streamed.rs`; unencrypted plain layers too
//! with [`LazyOptions::stream_plain`]). Whether a layer is lazily servable is decided by
//! [`veil_formats::classify`]; encrypted layers are opened by
//! [`veil_keyprovider::layer::Decryption`].
//!
//! With [`LazyOptions`]: the registry blob is read through the disk cache (blob bytes as
//! the registry serves them, kept across restarts), a read miss fetches a neighbourhood
//! window around it ([`LazyOptions::window`], `veil_fusefs::window`), the prioritized
//! files are prefetched — the layer is handed out once the first
//! [`LazyOptions::prefetch_wait_bytes`] of them are in, the rest streaming on while it
//! is mounted — and once mounted the whole blob is fetched into the disk cache in the
//! background until done or until the mount is dropped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use veil_fusefs::access_log::{accessed_files, AccessLog};
use veil_fusefs::cache::ChunkCache;
use veil_fusefs::disk_cache::{CachedBlob, DiskCache};
use veil_fusefs::mount::{mount_failed, MountOptions};
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::prefetch::{
    spawn_prefetch, BackgroundOptions, CancellationToken, DropGuard, FetchProgress,
    PrefetchOptions, RateLimiter,
};
use veil_fusefs::status_dir::StatusFile;
use veil_fusefs::tree::LayerTree;
use veil_fusefs::window::WindowOptions;

use veil_blob::prefilled::Prefilled;
use veil_blob::BlobSource;
use veil_formats::classify::{classify, classify_sealed, read_layer_toc};
use veil_formats::limits::Limits;
use veil_keyprovider::layer::Decryption;
use veil_registry::{BlobDescriptor, Digest, Manifest, Reference, RegistryClient};

use crate::error::{ImageError, RegistryContext};
use crate::identity::{check_recorded_toc, toc_digest};
use crate::image_config::ConfigCache;
use crate::resolver::{
    Authorization, LayerIdentity, LayerResolver, LiveMount, RemoteLayer, Resolved,
};
use crate::status::{
    AccessOrder, AccessedFileStatus, CacheStatus, DiskCacheStatus, LayerStatus, StatusReport,
};
use crate::verify::{
    compression_of, DiffIdCheck, DiffIdState, DIFF_ID_CHECKS_AT_ONCE, DIFF_ID_OFF, DIFF_ID_PENDING,
};

mod ahead;
mod manifests;
mod ready;
mod status_file;
mod streamed;

use ahead::Ahead;
pub use ahead::{AHEAD_MAX_BYTES, AHEAD_TTL, DEFAULT_LOOK_AHEAD_LAYERS};
use manifests::ManifestCache;
use ready::{Background, Mounted, ReadyLayer};
use status_file::{format_name, layer_status, status_file, Fetches};
use streamed::{DigestPass, StreamedLayer};

/// The layer name that asks for the access order of every layer.
pub const ACCESS_ORDER_ALL: &str = "all";

/// Background fetches running at once (each waits for a slot before it starts).
const BACKGROUND_SLOTS: usize = 2;

/// How [`LazyLayers`] caches on disk and fetches ahead.
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// The disk cache of blob bytes; `None`: reads always go to the registry.
    pub disk_cache: Option<Arc<DiskCache>>,
    /// Fetch a layer's prioritized files before handing it out for mounting.
    pub prefetch: bool,
    /// Fetch whole layers into the disk cache in the background once mounted (only with
    /// a disk cache).
    pub background_fetch: bool,
    /// The byte rate all background fetches share; `None`: unlimited.
    pub background_rate: Option<Arc<RateLimiter>>,
    /// Keys for encrypted layers; `None`: encrypted layers are refused.
    pub decryption: Option<Arc<Decryption>>,
    /// Serve unencrypted layers that cannot be read lazily (plain tar, tar+gzip,
    /// tar+zstd) through the streamed path: fetched whole once, checked against the
    /// descriptor's digest, indexed, then served from restart points (see
    /// `layers/streamed.rs`). Off: they resolve to [`Resolved::NotLazy`], and the
    /// snapshotter lets containerd unpack them. The guest, which has no containerd,
    /// turns it on. Streamed rather than unpacked: unpacking costs the layer's whole
    /// uncompressed size on the writable disk (guest RAM when that is a tmpfs), the
    /// index only about 1 % of it.
    pub stream_plain: bool,
    /// The hostile-input limits every layer's TOC, tree, streamed index and chunk
    /// decodes are checked against (the daemon's `[limits]`).
    pub limits: Limits,
    /// Neighbourhood windows fetched around read misses (default: none).
    pub window: WindowSizes,
    /// Bytes of the prioritized files fetched before a layer is handed out; the rest
    /// streams on while it is mounted (`u64::MAX`: wait for all of them).
    pub prefetch_wait_bytes: u64,
    /// Bytes per prefetch range request after the first `prefetch_wait_bytes`
    /// ([`PrefetchOptions::range_size`]).
    pub prefetch_piece_bytes: u64,
    /// Reads of prioritized chunks whose prefetch request is in flight wait for it
    /// ([`PrefetchOptions::claim_in_flight`]).
    pub prefetch_reads_wait: bool,
    /// Prefetch pieces complete each chunk as its bytes stream in
    /// ([`PrefetchOptions::stream`]).
    pub prefetch_stream: bool,
    /// Bytes read from a layer's end in the first request for its TOC (footer and TOC
    /// in one round trip; 0: the footer alone, the TOC in a second request).
    pub toc_tail_bytes: u64,
    /// Layers above the one being resolved whose TOC bytes are fetched meanwhile
    /// ([`LayerResolver::look_ahead`]; 0: none).
    pub look_ahead_layers: usize,
}

/// The sizes of the neighbourhood windows (`veil_fusefs::window`); whether a window's
/// chunks are decoded at once is decided per layer (only without a disk cache, or on a
/// streamed layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowSizes {
    /// Window bytes while other requests of the layer are in flight.
    pub min: u64,
    /// Window bytes while the link is idle; 0: no windows.
    pub max: u64,
    /// Most bytes of a directory window (the first miss in a directory's small file);
    /// 0: none.
    pub dir: u64,
    /// Complete each chunk of a window as its bytes arrive (the response streamed).
    pub stream: bool,
}

impl WindowSizes {
    /// The reader's window options: `keep_plaintext` when nothing below the reader keeps
    /// what it fetched.
    pub(crate) fn options(&self, keep_plaintext: bool) -> WindowOptions {
        WindowOptions {
            min: self.min,
            max: self.max,
            dir: self.dir,
            keep_plaintext,
            stream: self.stream,
            ..WindowOptions::tuned(keep_plaintext)
        }
    }
}

impl Default for LazyOptions {
    /// Prefetch only: no disk cache, no background fetching.
    fn default() -> Self {
        Self {
            disk_cache: None,
            prefetch: true,
            background_fetch: false,
            background_rate: None,
            decryption: None,
            stream_plain: false,
            limits: Limits::default(),
            window: WindowSizes::default(),
            prefetch_wait_bytes: u64::MAX,
            prefetch_piece_bytes: veil_fusefs::prefetch::DEFAULT_PIECE_SIZE,
            prefetch_reads_wait: true,
            prefetch_stream: veil_fusefs::prefetch::DEFAULT_PREFETCH_STREAM,
            toc_tail_bytes: veil_formats::estargz::DEFAULT_TOC_TAIL_BYTES,
            look_ahead_layers: DEFAULT_LOOK_AHEAD_LAYERS,
        }
    }
}

/// A layer resolved for lazy serving, as status reports it.
#[derive(Clone)]
struct LayerEntry {
    reader: Arc<ChunkReader>,
    image: String,
    blob_size: u64,
    /// The layer's blob in the disk cache, which counts what came from the registry.
    cached: Option<Arc<CachedBlob>>,
    /// How it is served: `lazy` or `streamed`.
    mode: &'static str,
    /// Its format (`estargz`, `zstd:chunked`; a streamed layer's tar stream, `tar+gzip`).
    format: &'static str,
    /// For a streamed layer: ciphertext bytes read by the verifying pass.
    streamed_bytes: u64,
    /// Bytes the prefetch of its prioritized files read (set when it ends: it goes on
    /// after the layer is mounted).
    prefetch_bytes: Arc<AtomicU64>,
    /// Where its `diff_id` check stands.
    diff_id: Arc<DiffIdState>,
    /// Which of its files were opened or read, first touch first.
    access: Arc<AccessLog>,
}

/// The most uncompressed bytes one read of a streamed layer decompresses into memory at
/// once (coalesced chunk misses): kept small, the plaintext budget is what matters.
pub const STREAMED_MAX_REQUEST: u64 = 4 << 20;

/// Resolves layers from registries and mounts them through FUSE.
pub struct LazyLayers {
    registry: RegistryClient,
    cache: Arc<ChunkCache>,
    runtime: tokio::runtime::Handle,
    mount_options: MountOptions,
    options: LazyOptions,
    background_slots: Arc<tokio::sync::Semaphore>,
    diff_id_slots: Arc<tokio::sync::Semaphore>,
    manifests: Arc<ManifestCache>,
    ahead: Ahead,
    configs: ConfigCache,
    readers: Mutex<HashMap<String, LayerEntry>>,
    fetches: Fetches,
}

impl LazyLayers {
    /// A resolver fetching through `registry`, caching plaintext chunks in `cache`,
    /// running reads on `runtime`, with the default [`LazyOptions`] (see
    /// [`LazyLayers::with_options`]).
    pub fn new(
        registry: RegistryClient,
        cache: Arc<ChunkCache>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            registry,
            cache,
            runtime,
            mount_options: MountOptions::default(),
            options: LazyOptions::default(),
            background_slots: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_SLOTS)),
            diff_id_slots: Arc::new(tokio::sync::Semaphore::new(DIFF_ID_CHECKS_AT_ONCE)),
            manifests: Arc::default(),
            ahead: Ahead::default(),
            configs: ConfigCache::default(),
            readers: Mutex::new(HashMap::new()),
            fetches: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same, with disk cache, prefetch and background fetching as `options` say.
    pub fn with_options(mut self, options: LazyOptions) -> Self {
        self.options = options;
        self
    }

    /// The same, mounting layers with `options` (the default: [`MountOptions::default`],
    /// every user may read, as containers need).
    pub fn with_mount_options(mut self, options: MountOptions) -> Self {
        self.mount_options = options;
        self
    }

    /// How layers are mounted.
    pub fn mount_options(&self) -> &MountOptions {
        &self.mount_options
    }

    /// The disk cache, when there is one (for its counters).
    pub fn disk_cache(&self) -> Option<&Arc<DiskCache>> {
        self.options.disk_cache.as_ref()
    }

    /// Background fetches started so far, by layer digest (for status).
    pub fn background_fetches(&self) -> Vec<(String, Arc<FetchProgress>)> {
        let map = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The registry client (for its byte counters).
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The readers of the layers resolved so far, by layer digest (for status).
    pub fn readers(&self) -> Vec<(String, Arc<ChunkReader>)> {
        let map = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.clone(), v.reader.clone()))
            .collect()
    }

    /// The files of layer `digest` opened or read so far, first touch first (`None`:
    /// no such layer resolved). Holds plaintext file names: show them only to root.
    pub fn access_order(&self, digest: &str) -> Option<AccessOrder> {
        let map = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get(digest)?;
        Some(access_order_of(digest, entry))
    }

    /// [`Self::access_order`] of every layer resolved so far.
    pub fn all_access_orders(&self) -> Vec<AccessOrder> {
        let map = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(digest, entry)| access_order_of(digest, entry))
            .collect()
    }

    async fn manifest(
        &self,
        layer: &RemoteLayer,
    ) -> Result<(Reference, Arc<Manifest>), ImageError> {
        self.manifests.get(&self.registry, layer).await
    }

    /// The layer's digest, its image reference and its descriptor in the manifest.
    async fn descriptor(
        &self,
        layer: &RemoteLayer,
    ) -> Result<(Digest, Reference, BlobDescriptor), ImageError> {
        let digest = Digest::parse(&layer.layer_digest)
            .registry_context(|| format!("layer digest {:?}", layer.layer_digest))?;
        let (reference, manifest) = self.manifest(layer).await?;
        let desc = manifest.layer(&digest).ok_or_else(|| {
            ImageError::Invalid(format!(
                "layer {digest} is not in manifest {} of {reference}",
                manifest.digest
            ))
        })?;
        Ok((digest, reference, desc.clone()))
    }

    /// The `diff_id` the image config gives the layer.
    async fn expected_diff_id(&self, layer: &RemoteLayer) -> Result<String, ImageError> {
        let (reference, manifest) = self.manifest(layer).await?;
        self.configs
            .diff_id(&self.registry, &reference, &manifest, &layer.layer_digest)
            .await
    }

    /// [`LayerResolver::authorize`]: the manifest's descriptor, and for an encrypted
    /// layer its key unwrapped now (on a blocking thread: key sources may ask a KBS).
    async fn authorize_layer(&self, layer: &RemoteLayer) -> Result<Authorization, ImageError> {
        let (digest, _, desc) = self.descriptor(layer).await?;
        if !Decryption::is_encrypted(&desc) {
            return Ok(Authorization::Granted(LayerIdentity {
                layer_digest: layer.layer_digest.clone(),
                toc_digest: toc_digest(classify(&desc.media_type, &desc.annotations).ok()),
                encrypted: false,
            }));
        }
        let Some(decryption) = self.options.decryption.clone() else {
            return Ok(Authorization::Denied(format!(
                "layer {digest} is encrypted and no decryption keys are configured"
            )));
        };
        let name = layer.layer_digest.clone();
        let opened = tokio::task::spawn_blocking(move || {
            // Nothing of the blob is read: only the key is unwrapped.
            let empty: Arc<dyn BlobSource> = Arc::new(veil_blob::MemoryBlob(Vec::new()));
            decryption.open(&name, &desc, empty).map(|opened| {
                let format = classify_sealed(
                    &opened.plain.media_type,
                    &opened.plain.annotations,
                    opened.sealed_toc_digest.as_deref(),
                );
                toc_digest(format.ok())
            })
        })
        .await
        .map_err(|e| ImageError::Invalid(format!("checking the key of layer {digest}: {e}")))?;
        Ok(match opened {
            Ok(toc_digest) => Authorization::Granted(LayerIdentity {
                layer_digest: layer.layer_digest.clone(),
                toc_digest,
                encrypted: true,
            }),
            Err(why) => Authorization::Denied(why.to_string()),
        })
    }

    async fn resolve_layer(&self, layer: &RemoteLayer) -> Result<Resolved, ImageError> {
        let (digest, reference, desc) = self.descriptor(layer).await?;
        let desc = &desc;
        let encrypted = Decryption::is_encrypted(desc);
        let mut plain_not_lazy = None;
        if !encrypted {
            if let Err(why) = classify(&desc.media_type, &desc.annotations) {
                if !self.options.stream_plain {
                    return Ok(Resolved::NotLazy(why.to_string()));
                }
                plain_not_lazy = Some(why.to_string());
            }
        }
        // The disk cache sits right on the registry blob: it keeps bytes exactly as
        // served (ciphertext for encrypted layers: the decrypting source goes above it).
        let registry_blob: Arc<dyn BlobSource> = Arc::new(self.registry.blob(&reference, desc));
        let cached = self
            .options
            .disk_cache
            .as_ref()
            .map(|disk| disk.wrap(&layer.layer_digest, registry_blob.clone()));
        let mut stored: Arc<dyn BlobSource> = match &cached {
            Some(cached) => cached.clone(),
            None => registry_blob,
        };
        // Bytes fetched while a layer below was resolved (`look_ahead`): the TOC read
        // takes them from memory; they are dropped once it is done.
        let key = Ahead::key(&layer.image_ref, &layer.layer_digest);
        let prefilled = self.ahead.take(&key).await.map(|held| {
            // Fetched through another wrapper of the same disk cache: counted as this
            // layer's.
            if let Some(cached) = &cached {
                cached.count_fetched_elsewhere(held.bytes.len() as u64);
            }
            Arc::new(Prefilled::new(stored.clone(), held.at, held.bytes.clone()))
        });
        if let Some(p) = &prefilled {
            stored = p.clone();
        }
        let release = || prefilled.iter().for_each(|p| p.release());
        let mut hmac = None;
        let (source, format) = if encrypted {
            // containerd cannot decrypt layers: an encrypted layer Veil cannot open
            // fails the pull with Veil's reason instead of falling back.
            let Some(decryption) = &self.options.decryption else {
                return Ok(Resolved::Fail(format!(
                    "layer {digest} is encrypted and no decryption keys are configured"
                )));
            };
            let opened = match decryption.open(&layer.layer_digest, desc, stored.clone()) {
                Ok(o) => o,
                Err(why) => return Ok(Resolved::Fail(why.to_string())),
            };
            let sealed = classify_sealed(
                &opened.plain.media_type,
                &opened.plain.annotations,
                opened.sealed_toc_digest.as_deref(),
            );
            // The same identity authorize() computes: what the snapshot was made for.
            if let Err(why) = check_recorded_toc(layer, toc_digest(sealed.clone().ok())) {
                return Ok(Resolved::Fail(why));
            }
            let lazy = match &opened.must_stream {
                Some(why) => Err(why.clone()),
                None => sealed.map_err(|e| e.to_string()),
            };
            match lazy {
                Ok(format) => {
                    hmac = Some(opened.hmac);
                    (opened.source, format)
                }
                // Not lazily servable: fetched whole, authenticated, then served.
                Err(why) => {
                    release();
                    let pass = opened
                        .cipher
                        .reader(stored.clone(), tokio::runtime::Handle::current());
                    let what = StreamedLayer {
                        layer,
                        plain: &opened.plain,
                        blob_size: desc.size,
                        encrypted: true,
                        source: opened.source.clone(),
                        cached,
                        why_not_lazy: &why,
                    };
                    return self.resolve_streamed(what, Box::new(pass)).await;
                }
            }
        } else if let Some(why) = plain_not_lazy {
            // Unencrypted and not lazily servable, with stream_plain on: fetched whole,
            // checked against the descriptor's digest, indexed, then served.
            release();
            let pass = DigestPass::new(
                stored.clone(),
                digest.clone(),
                tokio::runtime::Handle::current(),
            );
            let what = StreamedLayer {
                layer,
                plain: desc,
                blob_size: desc.size,
                encrypted: false,
                source: stored,
                cached,
                why_not_lazy: &why,
            };
            return self.resolve_streamed(what, Box::new(pass)).await;
        } else {
            let format = classify(&desc.media_type, &desc.annotations)
                .map_err(|why| ImageError::Invalid(why.to_string()))?;
            if let Err(why) = check_recorded_toc(layer, toc_digest(Some(format.clone()))) {
                return Ok(Resolved::Fail(why));
            }
            (stored, format)
        };
        let indexed = async {
            let toc = read_layer_toc(
                source.as_ref(),
                &format,
                &self.options.limits,
                self.options.toc_tail_bytes,
            )
            .await
            .map_err(|cause| ImageError::Toc {
                layer: digest.to_string(),
                cause,
            });
            release();
            let toc = toc?;
            let tree = LayerTree::build(&toc, &self.options.limits).map_err(|cause| {
                ImageError::Index {
                    layer: digest.to_string(),
                    cause,
                }
            })?;
            Ok::<_, ImageError>((toc, Arc::new(tree)))
        }
        .await;
        let (toc, tree) = match indexed {
            Ok(t) => t,
            // containerd cannot unpack an encrypted layer: no fallback, fail with why.
            Err(e) if encrypted => return Ok(Resolved::Fail(e.to_string())),
            Err(e) => return Err(e),
        };
        let access = Arc::new(AccessLog::for_tree(&tree));
        let reader = Arc::new(ChunkReader::new(
            layer.layer_digest.clone(),
            tree,
            source.clone(),
            self.cache.clone(),
            // An encrypted layer's file names are plaintext: logs name inodes instead.
            ReaderOptions {
                redact_paths: encrypted,
                // Without a disk cache nothing keeps a window's bytes but the plaintext
                // cache.
                window: self.options.window.options(cached.is_none()),
                ..ReaderOptions::default()
            },
        ));
        let background_on = cached.is_some() && self.options.background_fetch;
        let diff_id = match background_on {
            true => Some(DiffIdCheck {
                expected: self.expected_diff_id(layer).await?,
                compression: compression_of(&format),
                plain: source.clone(),
                slots: self.diff_id_slots.clone(),
                state: DiffIdState::new(DIFF_ID_PENDING),
            }),
            false => None,
        };
        let diff_id_state = diff_id.as_ref().map(|d| d.state.clone());
        let prefetch_bytes = Arc::new(AtomicU64::new(0));
        let prefetching = match toc.prefetch_end.filter(|&end| end > 0) {
            Some(end) if self.options.prefetch => Some(
                self.prefetch(
                    &reader,
                    source.clone(),
                    cached.clone(),
                    end,
                    prefetch_bytes.clone(),
                )
                .await,
            ),
            _ => None,
        };
        let entry = LayerEntry {
            reader: reader.clone(),
            image: layer.image_ref.clone(),
            blob_size: desc.size,
            cached: cached.clone(),
            mode: "lazy",
            format: format_name(&format),
            streamed_bytes: 0,
            prefetch_bytes,
            diff_id: diff_id_state.unwrap_or_else(|| DiffIdState::new(DIFF_ID_OFF)),
            access: access.clone(),
        };
        let status = self.status_file_for(&layer.layer_digest, &entry, encrypted);
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(layer.layer_digest.clone(), entry);
        let background = cached
            .filter(|_| self.options.background_fetch)
            .map(|source| Background {
                source,
                options: BackgroundOptions {
                    rate_limit: self.options.background_rate.clone(),
                    slots: Some(self.background_slots.clone()),
                    ..BackgroundOptions::default()
                },
                fetches: self.fetches.clone(),
                hmac,
                diff_id,
            });
        Ok(Resolved::Lazy(Box::new(ReadyLayer {
            reader,
            access,
            runtime: self.runtime.clone(),
            options: self.mount_options.clone(),
            background,
            prefetching,
            status,
        })))
    }

    /// The `/.veil/<digest>.json` file of layer `digest`'s mount: none for an encrypted
    /// layer (see `layers/status_file.rs`).
    fn status_file_for(
        &self,
        digest: &str,
        entry: &LayerEntry,
        encrypted: bool,
    ) -> Option<StatusFile> {
        match encrypted {
            true => None,
            false => status_file(digest, entry.clone(), self.fetches.clone()),
        }
    }

    /// Starts prefetching the prioritized files of `reader`'s layer, up to blob offset
    /// `end`, and waits until the first [`LazyOptions::prefetch_wait_bytes`] are in; the
    /// rest goes on until done or until the returned guard is dropped (the layer is
    /// unmounted, or never mounted). Failures are logged only: the files are then
    /// fetched when read. `bytes` gets the bytes it read from the layer's source when it
    /// ends.
    async fn prefetch(
        &self,
        reader: &Arc<ChunkReader>,
        source: Arc<dyn BlobSource>,
        cached: Option<Arc<CachedBlob>>,
        end: u64,
        bytes: Arc<AtomicU64>,
    ) -> DropGuard {
        let options = PrefetchOptions {
            fetch_all: cached.is_some(),
            wait_bytes: self.options.prefetch_wait_bytes,
            range_size: self.options.prefetch_piece_bytes.max(1),
            claim_in_flight: self.options.prefetch_reads_wait,
            stream: self.options.prefetch_stream,
            ..PrefetchOptions::default()
        };
        let started = std::time::Instant::now();
        let cancel = CancellationToken::new();
        let mut running = spawn_prefetch(
            &self.runtime,
            reader.clone(),
            source,
            end,
            options,
            cancel.clone(),
        );
        running.ready().await;
        tracing::debug!(
            layer = reader.layer_name(),
            prefetch_end = end,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "the first prioritized files are in; handing the layer out"
        );
        let layer = reader.layer_name().to_string();
        self.runtime.spawn(async move {
            match running.finish().await {
                Ok(report) => {
                    bytes.store(report.bytes_fetched, Ordering::Relaxed);
                    // Bytes that failed verification may have come from the disk cache.
                    if let Some(cached) = cached {
                        for range in &report.verify_failures {
                            cached.forget(range.clone());
                        }
                    }
                    tracing::info!(
                        layer,
                        prefetch_end = end,
                        bytes = report.bytes_fetched,
                        requests = report.ranges,
                        chunks_cached = report.chunks_cached,
                        verify_failures = report.verify_failures.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "prefetched the prioritized files"
                    );
                }
                Err(e) => tracing::warn!(
                    layer,
                    prefetch_end = end,
                    error = %e,
                    "prefetch stopped; the files left will be fetched when read"
                ),
            }
        });
        cancel.drop_guard()
    }
}

impl LayerResolver for LazyLayers {
    fn authorize<'a>(
        &'a self,
        layer: &'a RemoteLayer,
    ) -> BoxFuture<'a, Result<Authorization, ImageError>> {
        Box::pin(self.authorize_layer(layer))
    }

    fn resolve<'a>(
        &'a self,
        layer: &'a RemoteLayer,
    ) -> BoxFuture<'a, Result<Resolved, ImageError>> {
        Box::pin(self.resolve_layer(layer))
    }

    fn look_ahead(&self, layer: &RemoteLayer, above: &[String]) {
        self.start_look_ahead(layer, above);
    }

    fn mount_failed(
        &self,
        layer: &RemoteLayer,
        reason: &str,
        dir: &Path,
    ) -> Result<Box<dyn LiveMount>, ImageError> {
        let stand_in = mount_failed(&layer.layer_digest, reason, dir, &self.mount_options)?;
        Ok(Box::new(Mounted {
            background: None,
            prefetching: None,
            mount: stand_in,
            reader: None,
            keeper: Default::default(),
        }))
    }

    fn access_orders(&self, digest: &str) -> Vec<AccessOrder> {
        if digest == ACCESS_ORDER_ALL {
            self.all_access_orders()
        } else {
            self.access_order(digest).into_iter().collect()
        }
    }

    fn fill_status(&self, report: &mut StatusReport) {
        let fetches: HashMap<String, Arc<FetchProgress>> =
            self.background_fetches().into_iter().collect();
        let map = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let mut layers: Vec<LayerStatus> = map
            .iter()
            .map(|(digest, entry)| layer_status(digest, entry, fetches.get(digest)))
            .collect();
        layers.sort_by(|a, b| a.digest.cmp(&b.digest));
        report.layers = layers;
        report.registry_bytes_fetched = self.registry.metrics().bytes_fetched();
        let mem = self.cache.stats();
        report.cache = CacheStatus {
            bytes: mem.bytes,
            budget: mem.budget,
            hits: mem.hits,
            misses: mem.misses,
            evictions: mem.evictions,
        };
        report.disk_cache = self.disk_cache().map(|d| {
            let st = d.stats();
            DiskCacheStatus {
                bytes: st.bytes,
                budget: st.budget,
                bytes_from_disk: st.bytes_from_disk,
                bytes_from_network: st.bytes_from_inner,
                evictions: st.evictions,
            }
        });
    }
}

/// The access order of one resolved layer.
fn access_order_of(digest: &str, entry: &LayerEntry) -> AccessOrder {
    let files = accessed_files(&entry.access, entry.reader.tree())
        .into_iter()
        .map(|f| AccessedFileStatus {
            path: f.path,
            size: f.size,
            compressed_bytes: f.compressed_bytes,
            sequence: f.sequence,
        })
        .collect();
    AccessOrder {
        digest: digest.to_string(),
        image: entry.image.clone(),
        mode: entry.mode.to_string(),
        files,
        dropped: entry.access.dropped(),
    }
}
