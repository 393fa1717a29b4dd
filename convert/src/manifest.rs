//! The converted image's config and manifest: the config keeps everything but
//! `rootfs.diff_ids` (the new layers' uncompressed digests); the manifest is an OCI image
//! manifest (zstd layers cannot be described by a Docker one) listing the new layer
//! descriptors, with the source manifest's annotations. Both are serialized
//! deterministically (no timestamps are added).

use std::collections::BTreeMap;

use crate::error::{bail, Context, Result};
use serde_json::{json, Map, Value};

use veil_registry::manifest::OCI_MANIFEST;
use veil_registry::Digest;

/// The OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The `rootfs.diff_ids` of an image config.
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>> {
    let value: Value = serde_json::from_slice(config).context("the image config is not JSON")?;
    let ids = value["rootfs"]["diff_ids"]
        .as_array()
        .context("the image config has no rootfs.diff_ids")?;
    ids.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .context("a rootfs.diff_ids entry is not a string")
        })
        .collect()
}

/// The config with `rootfs.diff_ids` replaced by `new_diff_ids`.
pub fn rewrite_config(config: &[u8], new_diff_ids: &[String]) -> Result<Vec<u8>> {
    let mut value: Value =
        serde_json::from_slice(config).context("the image config is not JSON")?;
    let old = diff_ids(config)?;
    if old.len() != new_diff_ids.len() {
        bail!(
            "the image config lists {} diff_ids for {} layers",
            old.len(),
            new_diff_ids.len()
        );
    }
    value["rootfs"]["diff_ids"] = Value::from(new_diff_ids.to_vec());
    Ok(serde_json::to_vec(&value)?)
}

/// A descriptor for the new manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn to_json(&self) -> Value {
        let mut d = Map::new();
        d.insert("mediaType".into(), Value::from(self.media_type.clone()));
        d.insert("digest".into(), Value::from(self.digest.to_string()));
        d.insert("size".into(), Value::from(self.size));
        if !self.annotations.is_empty() {
            d.insert("annotations".into(), json!(self.annotations));
        }
        Value::Object(d)
    }
}

/// The OCI image manifest for `config` and `layers`.
pub fn build_manifest(
    config: &Descriptor,
    layers: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("schemaVersion".into(), Value::from(2));
    m.insert("mediaType".into(), Value::from(OCI_MANIFEST));
    m.insert("config".into(), config.to_json());
    m.insert(
        "layers".into(),
        Value::Array(layers.iter().map(Descriptor::to_json).collect()),
    );
    if !annotations.is_empty() {
        m.insert("annotations".into(), json!(annotations));
    }
    serde_json::to_vec(&Value::Object(m)).expect("a manifest always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_registry::Manifest;

    #[test]
    fn config_and_manifest() {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:a","sha256:b"]},"history":[{"created_by":"x"}]}"#;
        assert_eq!(diff_ids(config).unwrap(), ["sha256:a", "sha256:b"]);
        let new = rewrite_config(config, &["sha256:c".into(), "sha256:d".into()]).unwrap();
        assert_eq!(diff_ids(&new).unwrap(), ["sha256:c", "sha256:d"]);
        let v: Value = serde_json::from_slice(&new).unwrap();
        assert_eq!(v["history"][0]["created_by"], "x");
        assert!(rewrite_config(config, &["sha256:c".into()]).is_err());
        assert!(diff_ids(b"{}").is_err());

        let cfg = Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: Digest::sha256_of(&new),
            size: new.len() as u64,
            annotations: BTreeMap::new(),
        };
        let layer = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::sha256_of(b"layer"),
            size: 5,
            annotations: BTreeMap::from([("k".into(), "v".into())]),
        };
        let bytes = build_manifest(&cfg, std::slice::from_ref(&layer), &BTreeMap::new());
        assert_eq!(bytes, build_manifest(&cfg, &[layer], &BTreeMap::new()));
        let m = Manifest::parse(bytes.clone(), Digest::sha256_of(&bytes)).unwrap();
        assert_eq!(m.layers[0].annotations["k"], "v");
        assert_eq!(m.config.media_type, OCI_CONFIG);
        assert_eq!(m.media_type, OCI_MANIFEST);
    }
}
