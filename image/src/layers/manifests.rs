//! The manifests read so far, by reference: fetched once each, also when several
//! requests for the same image arrive at once (a Prepare and the look-ahead it
//! started wait for one fetch instead of making two).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use veil_registry::{Digest, Manifest, Reference, RegistryClient};

use crate::error::{ImageError, RegistryContext};
use crate::resolver::RemoteLayer;

/// Manifests by reference (with the manifest digest, when the layer names it).
#[derive(Default)]
pub(crate) struct ManifestCache(Mutex<HashMap<String, Arc<OnceCell<Arc<Manifest>>>>>);

impl ManifestCache {
    /// The reference `layer` names (pinned to its manifest digest when it gives one) and
    /// its manifest, fetched through `registry` unless already fetched or being fetched.
    /// A failed fetch is not kept: the next request tries again.
    pub async fn get(
        &self,
        registry: &RegistryClient,
        layer: &RemoteLayer,
    ) -> Result<(Reference, Arc<Manifest>), ImageError> {
        let mut reference = Reference::parse(&layer.image_ref)
            .registry_context(|| format!("image reference {:?}", layer.image_ref))?;
        if let Some(md) = &layer.manifest_digest {
            let digest =
                Digest::parse(md).registry_context(|| format!("manifest digest {md:?}"))?;
            reference = reference.with_digest(digest);
        }
        let cell = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reference.to_string())
            .or_default()
            .clone();
        let manifest = cell
            .get_or_try_init(|| async {
                let image = registry
                    .resolve(&reference)
                    .await
                    .registry_context(|| format!("resolving {reference}"))?;
                Ok::<_, ImageError>(Arc::new(image.manifest))
            })
            .await?
            .clone();
        Ok((reference, manifest))
    }
}
