//! The labels `veil pull` puts on what it creates in containerd: the remote-snapshot
//! labels of each layer's Prepare (what containerd's CRI plugin and `ctr-remote rpull`
//! send) and the garbage-collection references that keep an image's content and
//! snapshots alive.

use std::collections::HashMap;

pub use veil_snapshotter::labels::IMAGE_LAYERS_LABEL;
use veil_snapshotter::labels::{
    IMAGE_REF_LABEL, LAYER_DIGEST_LABEL, MANIFEST_DIGEST_LABEL, TARGET_SNAPSHOT_LABEL,
};
/// containerd's limit on one label: key and value together.
pub const MAX_LABEL_BYTES: usize = 4096;

/// Manifest → config reference for containerd's garbage collector.
pub const GC_CONFIG_LABEL: &str = "containerd.io/gc.ref.content.config";
/// Manifest → layer `i` reference (`containerd.io/gc.ref.content.l.<i>`).
pub fn gc_layer_label(i: usize) -> String {
    format!("containerd.io/gc.ref.content.l.{i}")
}
/// Config → top snapshot reference in `snapshotter`.
pub fn gc_snapshot_label(snapshotter: &str) -> String {
    format!("containerd.io/gc.ref.snapshot.{snapshotter}")
}

/// The labels of the Prepare for layer `index` of `layers` (blob digests, base first):
/// the target snapshot (`chain_id`) and what Veil needs to find the layer.
pub fn layer_labels(
    chain_id: &str,
    image_ref: &str,
    manifest_digest: &str,
    layers: &[String],
    index: usize,
) -> HashMap<String, String> {
    HashMap::from([
        (TARGET_SNAPSHOT_LABEL.to_string(), chain_id.to_string()),
        (IMAGE_REF_LABEL.to_string(), image_ref.to_string()),
        (LAYER_DIGEST_LABEL.to_string(), layers[index].clone()),
        (
            MANIFEST_DIGEST_LABEL.to_string(),
            manifest_digest.to_string(),
        ),
        (
            IMAGE_LAYERS_LABEL.to_string(),
            layers_from(&layers[index..], IMAGE_LAYERS_LABEL.len()),
        ),
    ])
}

/// `layers` joined by commas, as many as fit in one label whose key is `key_len` long
/// (containerd's `getLayers` does the same).
fn layers_from(layers: &[String], key_len: usize) -> String {
    let mut out = String::new();
    for digest in layers {
        let extra = digest.len() + usize::from(!out.is_empty());
        if key_len + out.len() + extra > MAX_LABEL_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(digest);
    }
    out
}

/// The labels of the manifest in the content store: references to the config and layers.
pub fn manifest_gc_labels(config_digest: &str, layers: &[String]) -> HashMap<String, String> {
    let mut labels = HashMap::from([(GC_CONFIG_LABEL.to_string(), config_digest.to_string())]);
    for (i, digest) in layers.iter().enumerate() {
        labels.insert(gc_layer_label(i), digest.clone());
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: usize) -> String {
        format!("sha256:{i:064x}")
    }

    #[test]
    fn prepare_labels_name_target_and_layer() {
        let layers: Vec<String> = (0..3).map(digest).collect();
        let l = layer_labels("sha256:chain", "reg/app:1", "sha256:man", &layers, 1);
        assert_eq!(l[TARGET_SNAPSHOT_LABEL], "sha256:chain");
        assert_eq!(l[IMAGE_REF_LABEL], "reg/app:1");
        assert_eq!(l[LAYER_DIGEST_LABEL], layers[1]);
        assert_eq!(l[MANIFEST_DIGEST_LABEL], "sha256:man");
        assert_eq!(
            l[IMAGE_LAYERS_LABEL],
            format!("{},{}", layers[1], layers[2])
        );
        // What Veil reads back.
        let req = veil_snapshotter::labels::RemoteRequest::from_labels(&l).unwrap();
        assert_eq!(req.target, "sha256:chain");
        assert_eq!(req.layer.layer_digest, layers[1]);
    }

    #[test]
    fn image_layers_label_fits_the_limit() {
        let layers: Vec<String> = (0..200).map(digest).collect();
        let l = layer_labels("c", "r", "m", &layers, 0);
        let v = &l[IMAGE_LAYERS_LABEL];
        assert!(IMAGE_LAYERS_LABEL.len() + v.len() <= MAX_LABEL_BYTES);
        let n = v.split(',').count();
        assert!(n > 10 && n < 200, "{n}");
        assert!(v.split(',').zip(&layers).all(|(a, b)| a == b));
    }

    #[test]
    fn gc_labels() {
        let layers: Vec<String> = (0..2).map(digest).collect();
        let l = manifest_gc_labels("sha256:cfg", &layers);
        assert_eq!(l[GC_CONFIG_LABEL], "sha256:cfg");
        assert_eq!(l["containerd.io/gc.ref.content.l.1"], layers[1]);
        assert_eq!(
            gc_snapshot_label("veil"),
            "containerd.io/gc.ref.snapshot.veil"
        );
    }
}
