//! `veil pull`: puts an image into containerd with its layers served lazily by Veil — what
//! `ctr-remote image rpull` does for stargz-snapshotter.
//!
//! 1. Resolve the reference with Veil's registry client; fetch the image config.
//! 2. Under a containerd lease, write the manifest and config into containerd's content
//!    store, with the labels that make containerd's garbage collector keep the config,
//!    the layers and the top snapshot while the image exists.
//! 3. For each layer, base first, `Prepare` a snapshot through containerd's snapshots
//!    service with the remote-snapshot labels (target chain ID, image reference, layer
//!    and manifest digests). Veil answers ALREADY_EXISTS when it serves the layer lazily;
//!    the blob is then never downloaded. When it returns mounts instead, the layer cannot
//!    be served lazily: it is fetched into the content store and applied by containerd's
//!    diff service (or, with `lazy_only`, the pull fails naming the layer).
//! 4. Create (or update) the image record pointing at the manifest.
//!
//! Layers whose snapshot already exists are not prepared again, but checked: a snapshot
//! Veil served lazily for another blob digest is refused, and for an encrypted layer Veil
//! is asked whether this node can unwrap its key now (`present.rs`).

mod chain;
mod containerd;
mod labels;
mod present;
mod unpack;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use veil_blob::display::human_bytes;
use veil_registry::{ClientOptions, Reference, RegistryClient};
use veil_snapshotter::labels::REMOTE_LABEL;

pub use chain::{chain_ids, config_diff_ids};
use containerd::{Containerd, Prepared};
pub use labels::{layer_labels, manifest_gc_labels};

/// containerd's default socket.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";

/// What to pull and where to.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The image reference.
    pub reference: String,
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// The snapshotter (containerd's name for Veil's proxy plugin).
    pub snapshotter: String,
    /// Settings of the registry client (`plain_http` and so on).
    pub registry: ClientOptions,
    /// Fail instead of unpacking layers that cannot be served lazily.
    pub lazy_only: bool,
}

/// How a layer got into the snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    /// Served lazily by Veil: nothing downloaded.
    Lazy,
    /// Not lazily servable: downloaded and unpacked by containerd.
    Unpacked,
    /// Its snapshot was already there.
    Present,
}

/// One layer of a pull.
#[derive(Debug, Clone)]
pub struct PulledLayer {
    /// Blob size.
    pub size: u64,
    /// What happened.
    pub state: LayerState,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image name in containerd.
    pub image: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The layers, base first.
    pub layers: Vec<PulledLayer>,
    /// Bytes `veil pull` itself fetched from the registry (manifest, config, unpacked layers).
    pub registry_bytes: u64,
    /// How long the pull took.
    pub elapsed: Duration,
}

impl PullReport {
    /// Layers in `state`.
    pub fn count(&self, state: LayerState) -> usize {
        self.layers.iter().filter(|l| l.state == state).count()
    }

    /// One line summing up the pull.
    pub fn summary(&self) -> String {
        let total: u64 = self.layers.iter().map(|l| l.size).sum();
        format!(
            "pulled {} ({}): {} layer(s), {} in total: {} lazy, {} unpacked, {} already present; \
             {} fetched from the registry by veil pull in {:.2?}",
            self.image,
            self.manifest_digest,
            self.layers.len(),
            human_bytes(total),
            self.count(LayerState::Lazy),
            self.count(LayerState::Unpacked),
            self.count(LayerState::Present),
            human_bytes(self.registry_bytes),
            self.elapsed
        )
    }
}

/// A name unique to this pull (leases, snapshot keys).
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nanos}-{}-{n}", std::process::id())
}

/// Pulls `opts.reference` into containerd, telling each step to `progress`.
pub async fn pull(
    opts: &PullOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<PullReport> {
    let start = Instant::now();
    let reference = Reference::parse(&opts.reference)
        .with_context(|| format!("image reference {:?}", opts.reference))?;
    let image_name = reference.to_string();
    // Local mistakes (socket, namespace) first, before any network traffic.
    let mut cd = Containerd::connect(&opts.address, &opts.namespace).await?;
    let registry =
        RegistryClient::new(opts.registry.clone()).context("setting up the registry client")?;
    let resolved = registry
        .resolve(&reference)
        .await
        .with_context(|| format!("resolving {image_name}"))?;
    let manifest = resolved.manifest;
    let manifest_digest = manifest.digest.to_string();
    progress(&format!(
        "{image_name}: manifest {manifest_digest} ({} layer(s))",
        manifest.layers.len()
    ));
    let config = registry
        .fetch_blob(&reference, &manifest.config.digest)
        .await
        .with_context(|| format!("fetching the image config {}", manifest.config.digest))?;
    let diff_ids = config_diff_ids(&config)
        .map_err(|e| anyhow::anyhow!("image config {}: {e}", manifest.config.digest))?;
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "image config {} lists {} diff ID(s) but manifest {manifest_digest} has {} layer(s)",
            manifest.config.digest,
            diff_ids.len(),
            manifest.layers.len()
        );
    }
    if manifest.layers.is_empty() {
        bail!("manifest {manifest_digest} has no layers");
    }
    let chains = chain_ids(&diff_ids);
    let layer_digests: Vec<String> = manifest
        .layers
        .iter()
        .map(|l| l.digest.to_string())
        .collect();

    cd.begin_lease(&unique("veil-pull")).await?;
    let result = pull_into(
        &cd,
        opts,
        &registry,
        &reference,
        &image_name,
        &manifest,
        &config,
        &diff_ids,
        &chains,
        &layer_digests,
        progress,
    )
    .await;
    // The image record (if any) now holds what the lease held.
    let ended = cd.end_lease().await;
    let layers = result?;
    if let Err(e) = ended {
        progress(&format!(
            "warning: could not delete the pull's lease (it expires in an hour): {e:#}"
        ));
    }
    Ok(PullReport {
        image: image_name,
        manifest_digest,
        layers,
        registry_bytes: registry.metrics().bytes_fetched(),
        elapsed: start.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn pull_into(
    cd: &Containerd,
    opts: &PullOptions,
    registry: &RegistryClient,
    reference: &Reference,
    image_name: &str,
    manifest: &veil_registry::Manifest,
    config: &[u8],
    diff_ids: &[String],
    chains: &[String],
    layer_digests: &[String],
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<PulledLayer>> {
    let sn = opts.snapshotter.as_str();
    let manifest_digest = manifest.digest.to_string();
    let config_digest = manifest.config.digest.to_string();
    let top = chains.last().cloned().unwrap_or_default();
    cd.write_content(
        &manifest_digest,
        &manifest.bytes,
        manifest_gc_labels(&config_digest, layer_digests),
    )
    .await?;
    cd.write_content(
        &config_digest,
        config,
        [(labels::gc_snapshot_label(sn), top)].into(),
    )
    .await?;

    let count = manifest.layers.len();
    let mut layers = Vec::with_capacity(count);
    for (i, desc) in manifest.layers.iter().enumerate() {
        let chain_id = &chains[i];
        let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
        let digest = desc.digest.to_string();
        // Held by the lease before it is looked up: an existing snapshot stays until the
        // image record references it.
        cd.lease_snapshot(sn, chain_id).await?;
        let labels = layer_labels(chain_id, image_name, &manifest_digest, layer_digests, i);
        let state = if let Some(info) = cd.stat_snapshot(sn, chain_id).await? {
            let what = format!("layer {}/{count} {digest}", i + 1);
            present::check_present(cd, sn, &info, chain_id, desc, labels, &what).await?;
            LayerState::Present
        } else {
            let key = format!("{} {chain_id}", unique("veil-pull"));
            match cd
                .prepare(sn, &key, parent, labels)
                .await
                .with_context(|| format!("layer {}/{count} {digest}", i + 1))?
            {
                Prepared::Exists => {
                    let info = cd.stat_snapshot(sn, chain_id).await?.with_context(|| {
                        format!(
                            "layer {}/{count} {digest}: snapshotter {sn:?} answered that snapshot \
                             {chain_id} exists, but containerd cannot find it",
                            i + 1
                        )
                    })?;
                    if info.labels.contains_key(REMOTE_LABEL) {
                        LayerState::Lazy
                    } else {
                        LayerState::Present
                    }
                }
                Prepared::Mounts(mounts) => {
                    let outcome = if opts.lazy_only {
                        Err(anyhow::anyhow!(
                            "layer {}/{count} {digest} ({}) is not lazily servable by snapshotter \
                             {sn:?} (see its log for why), and --lazy-only forbids unpacking it",
                            i + 1,
                            desc.media_type
                        ))
                    } else {
                        unpack::unpack_layer(
                            cd,
                            registry,
                            reference,
                            desc,
                            &diff_ids[i],
                            sn,
                            &key,
                            chain_id,
                            mounts,
                        )
                        .await
                        .with_context(|| {
                            format!(
                                "layer {}/{count} {digest} is not lazily servable; unpacking it \
                                 failed",
                                i + 1
                            )
                        })
                    };
                    if let Err(e) = outcome {
                        return Err(match cd.remove(sn, &key).await {
                            Ok(()) => e,
                            Err(re) => anyhow::anyhow!(
                                "{e:#} (and removing the active snapshot {key:?} failed too: \
                                 {re:#})"
                            ),
                        });
                    }
                    LayerState::Unpacked
                }
            }
        };
        progress(&format!(
            "layer {}/{count} {digest} {:>10}  {}",
            i + 1,
            human_bytes(desc.size),
            match state {
                LayerState::Lazy => "lazy (served by Veil, not downloaded)",
                LayerState::Unpacked => "unpacked (not lazily servable: downloaded and applied)",
                LayerState::Present => "already present",
            }
        ));
        layers.push(PulledLayer {
            size: desc.size,
            state,
        });
    }

    let target = containerd_client::types::Descriptor {
        media_type: manifest.media_type.clone(),
        digest: manifest_digest,
        size: manifest.bytes.len() as i64,
        annotations: Default::default(),
    };
    cd.put_image(image_name, target).await?;
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("a"), unique("a"));
    }
}
