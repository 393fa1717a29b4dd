//! The per-container view of `veil status`: each container's root filesystem (an active
//! or view snapshot) with the layers of its parent chain and how each is served.
//!
//! containerd's metadata layer names the snapshots it asks for `<namespace>/<n>/<key>`,
//! and a container's root is prepared under the container's ID; the committed snapshots
//! of its chain are layers, served lazily (their record names the remote layer) or
//! unpacked by containerd. Snapshots containerd makes while unpacking a layer
//! (`extract-…`) are not containers and are left out.

use std::collections::HashMap;

use veil_image::status::{ContainerStatus, StackedLayer, StatusReport};

use crate::labels::LAYER_DIGEST_LABEL;
use crate::metadata::Kind;
use crate::overlay::Snapshot;

/// The key prefix of the snapshots containerd's unpacker prepares.
pub const UNPACK_KEY_PREFIX: &str = "extract-";

/// The containers among `snapshots`, with their layers as `report` has them, sorted by
/// snapshot key.
pub fn containers(snapshots: &[Snapshot], report: &StatusReport) -> Vec<ContainerStatus> {
    let by_key: HashMap<&str, &Snapshot> = snapshots.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut out: Vec<ContainerStatus> = snapshots
        .iter()
        .filter(|s| s.record.kind != Kind::Committed)
        .filter_map(|s| {
            let container = s.key.rsplit('/').next().unwrap_or(&s.key);
            if container.starts_with(UNPACK_KEY_PREFIX) {
                return None;
            }
            let mut layers = Vec::new();
            let mut image = String::new();
            let mut parent = s.record.parent.as_str();
            // Bounded by the number of snapshots: a cycle in a corrupt store ends it.
            while let Some(p) = by_key
                .get(parent)
                .filter(|_| layers.len() < snapshots.len())
            {
                let layer = match &p.record.remote {
                    Some(remote) => {
                        if image.is_empty() {
                            image = remote.image_ref.clone();
                        }
                        report.stacked_layer(&remote.layer_digest)
                    }
                    None => StackedLayer {
                        digest: p
                            .record
                            .labels
                            .get(LAYER_DIGEST_LABEL)
                            .cloned()
                            .unwrap_or_default(),
                        mode: "unpacked".into(),
                        bytes_fetched: 0,
                        blob_size: 0,
                        state: "local".into(),
                    },
                };
                layers.push(layer);
                parent = p.record.parent.as_str();
            }
            Some(ContainerStatus {
                snapshot: s.key.clone(),
                container: container.to_string(),
                kind: s.record.kind.as_str().to_string(),
                image,
                layers,
            })
        })
        .collect();
    out.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
    out
}
