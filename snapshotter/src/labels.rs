//! The labels containerd puts on a Prepare that asks for a remote (lazily served) layer,
//! and the snapshot labels Veil sets on the snapshots it serves that way.
//!
//! containerd's unpacker calls `Prepare(key, parent, labels)` for each layer; when the
//! labels name the target snapshot (`containerd.io/snapshot.ref`) and the layer
//! (`containerd.io/snapshot/cri.*`), Veil tries to serve the layer lazily: the image
//! service ([`veil_image::resolver::LayerResolver`]) finds the layer and its index, the
//! result is mounted (FUSE) as the committed target snapshot, and containerd is told
//! ALREADY_EXISTS so it neither downloads nor unpacks the blob.

use std::collections::HashMap;

use veil_image::resolver::RemoteLayer;

/// Label naming the committed snapshot a Prepare wants to produce.
pub const TARGET_SNAPSHOT_LABEL: &str = "containerd.io/snapshot.ref";
/// Label Veil sets on snapshots it serves remotely (the value stargz-snapshotter uses).
pub const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";
/// Value of [`REMOTE_LABEL`].
pub const REMOTE_LABEL_VALUE: &str = "remote snapshot";
/// Image reference being pulled (CRI and `veil pull`).
pub const IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
/// Digest of this layer's blob.
pub const LAYER_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
/// Digest of the (platform) manifest.
pub const MANIFEST_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";
/// Comma-separated blob digests of this layer and the layers above it, base first (what
/// containerd's CRI plugin and `veil pull` send; Veil fetches ahead for the layers above,
/// [`veil_image::resolver::LayerResolver::look_ahead`]).
pub const IMAGE_LAYERS_LABEL: &str = "containerd.io/snapshot/cri.image-layers";
/// Label of an authorization probe: a Prepare (no target) that asks only whether this
/// node may use the layer the other labels name *now* (its key unwrapped), for a layer
/// whose snapshot containerd already has and would otherwise never ask Veil about
/// (`veil pull` sends it). The value is the chainID, for the log. Granted, the probe
/// gets an ordinary empty active snapshot, which the caller removes.
pub const AUTHORIZE_LABEL: &str = "containerd.io/snapshot/veil.authorize";
/// stargz-snapshotter's equivalents, sent by `ctr-remote` and nerdctl.
const STARGZ_REFERENCE_LABEL: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_DIGEST_LABEL: &str = "containerd.io/snapshot/remote/stargz.digest";

/// A Prepare that asks for a remote snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRequest {
    /// Name to commit the layer under.
    pub target: String,
    /// The layer.
    pub layer: RemoteLayer,
}

impl RemoteRequest {
    /// Reads the request from Prepare's labels; `None` when they do not ask for a
    /// remote snapshot or do not say which layer.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        Self::read(labels, TARGET_SNAPSHOT_LABEL)
    }

    /// Reads an authorization probe ([`AUTHORIZE_LABEL`]; `target` is the chainID it
    /// names); `None` when the labels are not one.
    pub fn probe_from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        Self::read(labels, AUTHORIZE_LABEL)
    }

    fn read(labels: &HashMap<String, String>, target_label: &str) -> Option<Self> {
        let target = labels.get(target_label)?.clone();
        let get = |a: &str, b: &str| {
            labels
                .get(a)
                .or_else(|| labels.get(b))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let image_ref = get(IMAGE_REF_LABEL, STARGZ_REFERENCE_LABEL)?;
        let layer_digest = get(LAYER_DIGEST_LABEL, STARGZ_DIGEST_LABEL)?;
        Some(Self {
            target,
            layer: RemoteLayer {
                image_ref,
                layer_digest,
                manifest_digest: labels.get(MANIFEST_DIGEST_LABEL).cloned(),
                toc_digest: None,
            },
        })
    }
}

/// The layer digests [`IMAGE_LAYERS_LABEL`] lists (none without it).
pub fn image_layers(labels: &HashMap<String, String>) -> Vec<String> {
    labels
        .get(IMAGE_LAYERS_LABEL)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_layer() {
        let mut labels = HashMap::from([
            (
                TARGET_SNAPSHOT_LABEL.to_string(),
                "sha256:chain".to_string(),
            ),
            (
                IMAGE_REF_LABEL.to_string(),
                "127.0.0.1:5000/app:1".to_string(),
            ),
        ]);
        assert_eq!(RemoteRequest::from_labels(&labels), None);
        labels.insert(LAYER_DIGEST_LABEL.into(), "sha256:layer".into());
        let req = RemoteRequest::from_labels(&labels).unwrap();
        assert_eq!(req.target, "sha256:chain");
        assert_eq!(req.layer.layer_digest, "sha256:layer");
        assert_eq!(req.layer.manifest_digest, None);
        assert_eq!(RemoteRequest::probe_from_labels(&labels), None);
        labels.remove(TARGET_SNAPSHOT_LABEL);
        assert_eq!(RemoteRequest::from_labels(&labels), None);
        labels.insert(AUTHORIZE_LABEL.into(), "sha256:chain".into());
        let probe = RemoteRequest::probe_from_labels(&labels).unwrap();
        assert_eq!(probe.target, "sha256:chain");
        assert_eq!(RemoteRequest::from_labels(&labels), None);
    }

    #[test]
    fn image_layers_are_listed() {
        let mut labels = HashMap::new();
        assert!(image_layers(&labels).is_empty());
        labels.insert(
            IMAGE_LAYERS_LABEL.to_string(),
            "sha256:a, sha256:b,,sha256:c".to_string(),
        );
        assert_eq!(image_layers(&labels), ["sha256:a", "sha256:b", "sha256:c"]);
    }
}
