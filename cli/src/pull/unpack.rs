//! The fallback for a layer Veil cannot serve lazily: the blob is copied from the
//! registry into containerd's content store, containerd's diff service applies it to the
//! active snapshot the snapshotter returned, and the snapshot is committed under the
//! layer's chain ID — what `ctr pull` does for every layer.

use anyhow::{bail, Context};
use containerd_client::types::{Descriptor, Mount};
use futures::StreamExt as _;

use super::containerd::{Containerd, WRITE_CHUNK};
use veil_registry::{BlobDescriptor, Reference, RegistryClient};

/// How much of the blob one registry request reads.
const FETCH_CHUNK: u64 = 8 << 20;

/// Unpacks `layer` (whose uncompressed digest is `diff_id`) into the active snapshot
/// `key`, mounted as `mounts`, and commits it as `chain_id`.
#[allow(clippy::too_many_arguments)]
pub async fn unpack_layer(
    containerd: &Containerd,
    registry: &RegistryClient,
    reference: &Reference,
    layer: &BlobDescriptor,
    diff_id: &str,
    snapshotter: &str,
    key: &str,
    chain_id: &str,
    mounts: Vec<Mount>,
) -> anyhow::Result<()> {
    let digest = layer.digest.to_string();
    if !containerd.content_exists(&digest).await? {
        let blob = registry.blob(reference, layer);
        let blob = &blob;
        let size = layer.size;
        let chunks = futures::stream::unfold(0u64, move |offset| async move {
            if offset >= size {
                return None;
            }
            let end = (offset + FETCH_CHUNK).min(size);
            let read = blob
                .read(offset..end)
                .await
                .with_context(|| format!("fetching bytes {offset}..{end} of the layer"));
            Some((read, end))
        })
        .flat_map(|read: anyhow::Result<Vec<u8>>| {
            // containerd takes at most a few MiB per message.
            let parts: Vec<anyhow::Result<Vec<u8>>> = match read {
                Ok(bytes) => bytes.chunks(WRITE_CHUNK).map(|c| Ok(c.to_vec())).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(parts)
        });
        let chunks = std::pin::pin!(chunks);
        containerd
            .write_content_stream(&digest, size, chunks, Default::default())
            .await?;
    }
    let descriptor = Descriptor {
        media_type: layer.media_type.clone(),
        digest: digest.clone(),
        size: i64::try_from(layer.size).context("layer size")?,
        annotations: Default::default(),
    };
    let applied = containerd.apply(descriptor, mounts).await?;
    if applied != diff_id {
        bail!(
            "layer {digest} unpacked to content with digest {applied}, but the image config says \
             its diff ID is {diff_id}"
        );
    }
    containerd.commit(snapshotter, chain_id, key).await
}
