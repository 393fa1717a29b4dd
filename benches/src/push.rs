//! Pushing the benchmark's sample image through Veil's own registry client: chunked
//! uploads for large layers, retries with backoff, a deadline per request, and an error
//! naming the blob and the registry's answer — a multi-GiB sample must push or fail
//! clearly, never panic.

use std::time::Duration;

use anyhow::Context;
use veil_registry::manifest::OCI_MANIFEST;
use veil_registry::push::BlobBody;
use veil_registry::{ClientOptions, Digest, Reference, RegistryClient};
use veil_tests::lazy_image::{image_documents_of, LayerEntry};

use crate::sample::LayerFile;

/// How long one blob upload may take: generous, a multi-GiB layer on a shaped link.
const PUSH_DEADLINE: Duration = Duration::from_secs(3600);

/// Pushes the layer files `layers` (read from disk a chunk at a time, never whole), a
/// config listing their diff IDs and the manifest to `reference` on a plain-HTTP
/// registry; `progress` is told the bytes of layer data sent so far. Returns the manifest
/// digest.
pub async fn push_layer_files(
    reference: &str,
    layers: &[LayerFile],
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<Digest> {
    let entries: Vec<LayerEntry<'_>> = layers
        .iter()
        .map(|l| LayerEntry {
            digest: &l.digest,
            diff_id: &l.diff_id,
            media_type: l.media_type,
            size: l.size,
            annotations: &NO_ANNOTATIONS,
        })
        .collect();
    let (config, manifest) = image_documents_of(&entries)?;
    let blobs: Vec<(Digest, BlobBody<'_>)> = layers
        .iter()
        .map(|l| {
            Ok((
                parse_digest(&l.digest)?,
                BlobBody::File {
                    path: &l.path,
                    size: l.size,
                },
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    push_image(reference, &config, &manifest, &blobs, progress).await
}

/// No layer annotations.
static NO_ANNOTATIONS: std::collections::BTreeMap<String, String> =
    std::collections::BTreeMap::new();

fn parse_digest(digest: &str) -> anyhow::Result<Digest> {
    Digest::parse(digest).with_context(|| format!("layer digest {digest:?}"))
}

/// Pushes the config, the blobs (unless the registry has them) and, last, the manifest.
async fn push_image(
    reference: &str,
    config: &[u8],
    manifest: &[u8],
    blobs: &[(Digest, BlobBody<'_>)],
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<Digest> {
    let reference =
        Reference::parse(reference).with_context(|| format!("image reference {reference:?}"))?;
    let client = RegistryClient::new(ClientOptions {
        plain_http: true,
        operation_timeout: PUSH_DEADLINE,
        ..ClientOptions::default()
    })
    .context("setting up the registry client")?;
    let config_blob = (Digest::sha256_of(config), BlobBody::Bytes(config));
    let mut done = 0u64;
    for (digest, body) in std::iter::once(&config_blob).chain(blobs) {
        let size = match body {
            BlobBody::Bytes(b) => b.len() as u64,
            BlobBody::File { size, .. } => *size,
        };
        let exists = client
            .blob_exists(&reference, digest)
            .await
            .with_context(|| format!("asking {reference} whether it has blob {digest}"))?;
        if !exists {
            let sent = |n: u64| progress(done + n);
            client
                .push_blob(&reference, digest, *body, &sent)
                .await
                .with_context(|| format!("pushing blob {digest} ({size} bytes) to {reference}"))?;
        }
        done += size;
        progress(done);
    }
    client
        .push_manifest(&reference, OCI_MANIFEST, manifest)
        .await
        .with_context(|| format!("pushing the manifest of {reference}"))
}
