//! The part of an image config Veil checks layers against: `rootfs.diff_ids`, the
//! digest of each layer's uncompressed tar stream, base layer first (what containerd
//! computes chainIDs from).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use veil_registry::{Manifest, Reference, RegistryClient};

use crate::error::{ImageError, RegistryContext};

/// The `rootfs.diff_ids` of the image configs read so far, by config digest.
#[derive(Default)]
pub struct ConfigCache(Mutex<HashMap<String, Arc<Vec<String>>>>);

impl ConfigCache {
    /// The `diff_id` `manifest`'s config gives the layer `layer_digest` (by its position
    /// in the manifest). The config is fetched from `reference`'s repository once per
    /// config digest, its digest checked.
    pub async fn diff_id(
        &self,
        registry: &RegistryClient,
        reference: &Reference,
        manifest: &Manifest,
        layer_digest: &str,
    ) -> Result<String, ImageError> {
        let position = manifest
            .layers
            .iter()
            .position(|l| l.digest.to_string() == layer_digest)
            .ok_or_else(|| {
                ImageError::Invalid(format!(
                    "layer {layer_digest} is not in manifest {}",
                    manifest.digest
                ))
            })?;
        let config = &manifest.config.digest;
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&config.to_string())
            .cloned();
        let diff_ids = match cached {
            Some(d) => d,
            None => {
                let bytes = registry
                    .fetch_blob(reference, config)
                    .await
                    .registry_context(|| format!("image config {config} of {reference}"))?;
                let parsed = diff_ids(&bytes)
                    .map_err(|why| ImageError::Invalid(format!("{config}: {why}")))?;
                let parsed = Arc::new(parsed);
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(config.to_string(), parsed.clone());
                parsed
            }
        };
        diff_ids.get(position).cloned().ok_or_else(|| {
            ImageError::Invalid(format!(
                "image config {config} lists {} diff_ids, but layer {layer_digest} is layer {} \
                 of manifest {}",
                diff_ids.len(),
                position + 1,
                manifest.digest
            ))
        })
    }
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The `rootfs.diff_ids` of the image config `bytes`; `Err`: why they cannot be read.
pub fn diff_ids(bytes: &[u8]) -> Result<Vec<String>, String> {
    serde_json::from_slice::<Config>(bytes)
        .map(|c| c.rootfs.diff_ids)
        .map_err(|e| format!("the image config has no readable rootfs.diff_ids: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_diff_ids_in_order() {
        let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers",
            "diff_ids":["sha256:aa","sha256:bb"]},"config":{}}"#;
        assert_eq!(diff_ids(cfg).unwrap(), vec!["sha256:aa", "sha256:bb"]);
    }

    #[test]
    fn a_config_without_diff_ids_is_an_error() {
        let err = diff_ids(br#"{"rootfs":{"type":"layers"}}"#).unwrap_err();
        assert!(err.contains("rootfs.diff_ids"), "{err}");
        assert!(diff_ids(b"not json").is_err());
    }
}
