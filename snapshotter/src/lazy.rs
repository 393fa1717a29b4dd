//! Veil's [`LayerResolver`]: registry + layer formats + FUSE, glued.
//!
//! Resolving a layer finds its descriptor in the image manifest (fetched once per
//! manifest), decides whether it can be served lazily (an eStargz or zstd:chunked layer
//! whose TOC digest the manifest vouches for), reads and authenticates the TOC through
//! ranged registry reads, and builds the layer's file tree. Mounting it starts a FUSE
//! session whose reads fetch, decompress and verify chunks on demand through the shared
//! plaintext cache. Layers that cannot be served lazily are reported as such, so the
//! snapshotter lets containerd unpack them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::future::BoxFuture;
use veil_fusefs::cache::ChunkCache;
use veil_fusefs::fs::{FsOptions, LayerFs};
use veil_fusefs::mount::{mount, LayerMount, MountOptions};
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::source::BlobSource;
use veil_fusefs::toc::LayerToc;
use veil_fusefs::tree::LayerTree;
use veil_fusefs::{estargz, zstdchunked};

use crate::registry::{BlobDescriptor, Digest, Manifest, Reference, RegistryClient};
use crate::remote::{LayerResolver, LiveMount, MountableLayer, RemoteLayer, Resolved};

/// How a layer's TOC is found and authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazyFormat {
    /// eStargz with the TOC digest from the manifest annotation.
    Estargz {
        /// `sha256:` of the uncompressed TOC JSON.
        toc_digest: String,
    },
    /// zstd:chunked with the manifest annotations.
    ZstdChunked(zstdchunked::ManifestInfo),
}

/// Decides from a layer descriptor whether Veil can serve it lazily; `Err` carries the
/// reason it cannot.
pub fn classify(desc: &BlobDescriptor) -> Result<LazyFormat, String> {
    let mt = desc.media_type.as_str();
    if mt.ends_with("+encrypted") {
        return Err(format!("encrypted layer ({mt}): not supported yet"));
    }
    let gzip = mt.ends_with("tar+gzip") || mt.ends_with("tar.gzip");
    let zstd = mt.ends_with("tar+zstd");
    if gzip {
        return match desc.annotations.get(estargz::TOC_DIGEST_ANNOTATION) {
            Some(d) => Ok(LazyFormat::Estargz {
                toc_digest: d.clone(),
            }),
            None => Err(format!(
                "gzip layer without the {} annotation: not eStargz, or its TOC is not authenticated",
                estargz::TOC_DIGEST_ANNOTATION
            )),
        };
    }
    if zstd {
        let info = zstdchunked::ManifestInfo::from_annotations(&desc.annotations)
            .map_err(|e| format!("zstd layer with bad zstd:chunked annotations: {e}"))?;
        if info.checksum.is_none() && info.toc_digest.is_none() {
            return Err("zstd layer without a zstd:chunked manifest checksum".into());
        }
        return Ok(LazyFormat::ZstdChunked(info));
    }
    Err(format!("media type {mt:?} cannot be served lazily"))
}

/// Reads and authenticates the TOC of a lazily servable layer.
pub async fn read_layer_toc(
    source: &dyn BlobSource,
    format: &LazyFormat,
) -> anyhow::Result<LayerToc> {
    Ok(match format {
        LazyFormat::Estargz { toc_digest } => estargz::read_toc(source, Some(toc_digest)).await?,
        LazyFormat::ZstdChunked(info) => zstdchunked::read_toc(source, info).await?,
    })
}

/// Resolves layers from registries and mounts them through FUSE.
pub struct LazyLayers {
    registry: RegistryClient,
    cache: Arc<ChunkCache>,
    runtime: tokio::runtime::Handle,
    mount_options: MountOptions,
    manifests: Mutex<HashMap<String, Arc<Manifest>>>,
    readers: Mutex<HashMap<String, Arc<ChunkReader>>>,
}

impl LazyLayers {
    /// A resolver fetching through `registry`, caching plaintext chunks in `cache`,
    /// running reads on `runtime`.
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
            manifests: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
        }
    }

    /// The registry client (for its byte counters).
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The readers of the layers resolved so far, by layer digest (for status).
    pub fn readers(&self) -> Vec<(String, Arc<ChunkReader>)> {
        let map = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    async fn manifest(&self, layer: &RemoteLayer) -> anyhow::Result<(Reference, Arc<Manifest>)> {
        let mut reference = Reference::parse(&layer.image_ref)
            .with_context(|| format!("image reference {:?}", layer.image_ref))?;
        if let Some(md) = &layer.manifest_digest {
            let digest = Digest::parse(md).with_context(|| format!("manifest digest {md:?}"))?;
            reference = reference.with_digest(digest);
        }
        let key = reference.to_string();
        if let Some(m) = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok((reference, m.clone()));
        }
        let image = self
            .registry
            .resolve(&reference)
            .await
            .with_context(|| format!("resolving {reference}"))?;
        let manifest = Arc::new(image.manifest);
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, manifest.clone());
        Ok((reference, manifest))
    }

    async fn resolve_layer(&self, layer: &RemoteLayer) -> anyhow::Result<Resolved> {
        let digest = Digest::parse(&layer.layer_digest)
            .with_context(|| format!("layer digest {:?}", layer.layer_digest))?;
        let (reference, manifest) = self.manifest(layer).await?;
        let desc = manifest.layer(&digest).with_context(|| {
            format!(
                "layer {digest} is not in manifest {} of {reference}",
                manifest.digest
            )
        })?;
        let format = match classify(desc) {
            Ok(f) => f,
            Err(why) => return Ok(Resolved::NotLazy(why)),
        };
        let blob = self.registry.blob(&reference, desc);
        let toc = read_layer_toc(&blob, &format)
            .await
            .with_context(|| format!("reading the TOC of layer {digest}"))?;
        let tree =
            Arc::new(LayerTree::build(&toc).with_context(|| format!("indexing layer {digest}"))?);
        let reader = Arc::new(ChunkReader::new(
            layer.layer_digest.clone(),
            tree,
            Arc::new(blob),
            self.cache.clone(),
            ReaderOptions::default(),
        ));
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(layer.layer_digest.clone(), reader.clone());
        Ok(Resolved::Lazy(Box::new(ReadyLayer {
            reader,
            runtime: self.runtime.clone(),
            options: self.mount_options.clone(),
        })))
    }
}

impl LayerResolver for LazyLayers {
    fn resolve<'a>(&'a self, layer: &'a RemoteLayer) -> BoxFuture<'a, anyhow::Result<Resolved>> {
        Box::pin(self.resolve_layer(layer))
    }
}

/// A resolved layer, ready to mount.
struct ReadyLayer {
    reader: Arc<ChunkReader>,
    runtime: tokio::runtime::Handle,
    options: MountOptions,
}

struct Mounted(#[allow(dead_code)] LayerMount);

impl LiveMount for Mounted {}

impl MountableLayer for ReadyLayer {
    fn mount(self: Box<Self>, dir: &Path) -> anyhow::Result<Box<dyn LiveMount>> {
        let fs = LayerFs::new(self.reader, self.runtime, FsOptions::default());
        Ok(Box::new(Mounted(mount(fs, dir, &self.options)?)))
    }
}
