//! Pushing the benchmark's sample image through Veil's own registry client: chunked
//! uploads for large layers, retries with backoff, a deadline per request, and an error
//! naming the blob and the registry's answer — a multi-GiB sample must push or fail
//! clearly, never panic.

use std::time::Duration;

use anyhow::Context;
use veil_registry::manifest::OCI_MANIFEST;
use veil_registry::push::BlobBody;
use veil_registry::{ClientOptions, Digest, Reference, RegistryClient};
use veil_tests::lazy_image::{image_documents, Layer};

/// How long one blob upload may take: generous, a multi-GiB layer on a shaped link.
const PUSH_DEADLINE: Duration = Duration::from_secs(3600);

/// Pushes `layers` (a config listing their diff IDs, then the manifest) to `reference`
/// on a plain-HTTP registry; returns the manifest digest.
pub async fn push_layers(reference: &str, layers: &[Layer]) -> anyhow::Result<Digest> {
    let reference =
        Reference::parse(reference).with_context(|| format!("image reference {reference:?}"))?;
    let client = RegistryClient::new(ClientOptions {
        plain_http: true,
        operation_timeout: PUSH_DEADLINE,
        ..ClientOptions::default()
    })
    .context("setting up the registry client")?;
    let (config, manifest) = image_documents(layers)?;
    let blobs = std::iter::once(&config[..]).chain(layers.iter().map(|l| &l.blob[..]));
    for blob in blobs {
        let digest = Digest::sha256_of(blob);
        if client.blob_exists(&reference, &digest).await? {
            continue;
        }
        client
            .push_blob(&reference, &digest, BlobBody::Bytes(blob), &|_| {})
            .await
            .with_context(|| {
                format!(
                    "pushing blob {digest} ({} bytes) to {reference}",
                    blob.len()
                )
            })?;
    }
    client
        .push_manifest(&reference, OCI_MANIFEST, &manifest)
        .await
        .with_context(|| format!("pushing the manifest of {reference}"))
}
