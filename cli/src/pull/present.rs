//! `veil pull`'s checks of a layer whose snapshot containerd already has in the
//! namespace: containerd would answer any Prepare of it by itself, so Veil is asked
//! explicitly.
//!
//! - **Identity.** A snapshot Veil served lazily carries the labels of the Prepare that
//!   made it, among them the layer digest. Another blob digest claiming the same chainID
//!   (the same `diff_ids`) is other content until proven otherwise: the pull is refused
//!   instead of using the other image's files.
//! - **Keys.** For an encrypted layer, an authorization probe
//!   ([`veil_snapshotter::labels::AUTHORIZE_LABEL`]): a Prepare of a throwaway key with
//!   the layer's labels and no target, which Veil refuses (FailedPrecondition naming the
//!   layer and the keys tried) unless it can unwrap the layer's key now, and otherwise
//!   answers with an empty active snapshot that is removed at once.

use std::collections::HashMap;

use anyhow::{bail, Context};
use veil_keyprovider::layer::Decryption;
use veil_registry::BlobDescriptor;
use veil_snapshotter::labels::{
    AUTHORIZE_LABEL, IMAGE_REF_LABEL, LAYER_DIGEST_LABEL, REMOTE_LABEL, TARGET_SNAPSHOT_LABEL,
};

use super::containerd::{Containerd, Prepared, SnapshotInfo};

/// Checks the present snapshot `chain_id` (`info`) may stand for the layer `desc`, whose
/// Prepare would carry `labels`; `what` names the layer in errors ("layer 2/3 sha256:…").
pub async fn check_present(
    cd: &Containerd,
    snapshotter: &str,
    info: &SnapshotInfo,
    chain_id: &str,
    desc: &BlobDescriptor,
    labels: HashMap<String, String>,
    what: &str,
) -> anyhow::Result<()> {
    let digest = desc.digest.to_string();
    if Decryption::is_encrypted(desc) {
        authorize(cd, snapshotter, chain_id, labels, what).await?;
    }
    if info.labels.contains_key(REMOTE_LABEL) {
        if let Some(made_for) = info.labels.get(LAYER_DIGEST_LABEL) {
            if *made_for != digest {
                let image = info.labels.get(IMAGE_REF_LABEL).map_or("?", String::as_str);
                bail!(
                    "{what}: snapshot {chain_id} in this namespace was served lazily for layer \
                     {made_for} of {image}; this image's layer claims the same chainID (the \
                     same diff_ids) with another blob digest: refusing to use the other \
                     image's snapshot (remove that image and its snapshots, or pull into \
                     another namespace)"
                );
            }
        }
    }
    Ok(())
}

/// The authorization probe of an encrypted layer (first: no key, no run, whatever else).
async fn authorize(
    cd: &Containerd,
    snapshotter: &str,
    chain_id: &str,
    mut labels: HashMap<String, String>,
    what: &str,
) -> anyhow::Result<()> {
    labels.remove(TARGET_SNAPSHOT_LABEL);
    labels.insert(AUTHORIZE_LABEL.to_string(), chain_id.to_string());
    let key = format!("{} {chain_id}", super::unique("veil-authorize"));
    let answer = cd
        .prepare(snapshotter, &key, "", labels)
        .await
        .with_context(|| format!("{what}: the snapshotter refused the encrypted layer"))?;
    if let Prepared::Mounts(_) = answer {
        cd.remove(snapshotter, &key)
            .await
            .with_context(|| format!("{what}: removing the probe snapshot {key:?}"))?;
    }
    Ok(())
}
