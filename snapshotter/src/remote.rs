//! Remote (lazily served) layers: the labels containerd sends, and the seams through
//! which the snapshotter asks for a layer to be resolved and mounted.
//!
//! containerd's unpacker calls `Prepare(key, parent, labels)` for each layer; when the
//! labels name the target snapshot (`containerd.io/snapshot.ref`) and the layer
//! (`containerd.io/snapshot/cri.*`), Veil tries to serve the layer lazily: a
//! [`LayerResolver`] finds the layer and its index, the result is mounted (FUSE) as the
//! committed target snapshot, and containerd is told ALREADY_EXISTS so it neither
//! downloads nor unpacks the blob. The snapshotter knows only these traits; the registry
//! client and the FUSE filesystem behind them live elsewhere.

use std::collections::HashMap;
use std::path::Path;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

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
/// stargz-snapshotter's equivalents, sent by `ctr-remote` and nerdctl.
const STARGZ_REFERENCE_LABEL: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_DIGEST_LABEL: &str = "containerd.io/snapshot/remote/stargz.digest";

/// Which layer of which image a remote snapshot serves; recorded with the snapshot so a
/// restarted daemon can mount it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// Image reference (`host/repo:tag` or `host/repo@digest`).
    pub image_ref: String,
    /// Digest of the layer blob.
    pub layer_digest: String,
    /// Digest of the manifest that lists the layer, when known.
    #[serde(default)]
    pub manifest_digest: Option<String>,
}

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
        let target = labels.get(TARGET_SNAPSHOT_LABEL)?.clone();
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
            },
        })
    }
}

/// A mounted layer filesystem. Dropping it unmounts.
pub trait LiveMount: Send {}

/// A layer that has been resolved and can be mounted.
pub trait MountableLayer: Send {
    /// Mounts the layer's filesystem at `dir` (an empty directory).
    fn mount(self: Box<Self>, dir: &Path) -> anyhow::Result<Box<dyn LiveMount>>;
}

/// What resolving a layer found.
pub enum Resolved {
    /// The layer can be served lazily.
    Lazy(Box<dyn MountableLayer>),
    /// It cannot (with the reason, for the log); containerd should unpack it.
    NotLazy(String),
    /// It cannot, and containerd cannot unpack it either (an encrypted layer whose key
    /// Veil cannot unwrap): Prepare fails with this reason.
    Fail(String),
}

/// Finds a layer and prepares it for lazy serving.
pub trait LayerResolver: Send + Sync {
    /// Resolves `layer`: fetches what is needed to index it (manifest, TOC).
    fn resolve<'a>(&'a self, layer: &'a RemoteLayer) -> BoxFuture<'a, anyhow::Result<Resolved>>;

    /// Adds what the resolver knows (layers served, bytes fetched, cache use) to a status
    /// report.
    fn fill_status(&self, _report: &mut crate::status::StatusReport) {}
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
        labels.remove(TARGET_SNAPSHOT_LABEL);
        assert_eq!(RemoteRequest::from_labels(&labels), None);
    }
}
