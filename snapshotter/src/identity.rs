//! Whether an existing lazily served snapshot may answer for another request's layer.
//!
//! containerd names a layer's snapshot by its chainID, which only the image config's
//! `diff_ids` determine: any image can claim any chainID. Veil commits a lazily served
//! layer under that chainID, so before it answers ALREADY_EXISTS for a Prepare whose
//! target exists it compares the content identity the snapshot was made for (layer blob
//! digest, TOC digest) with the requested layer's ([`LayerIdentity`]). A mismatch is a
//! [`Conflict`]: the snapshot is not shared (see `service.rs` for what happens instead).

use veil_image::resolver::{LayerIdentity, RemoteLayer};

/// An existing snapshot made for other content than the layer a request names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "snapshot {target} is served lazily for layer {existing_layer} of {existing_image}; \
     layer {wanted_layer} of {wanted_image} claims the same chainID (the same diff_ids) \
     with other content ({what}): Veil does not share the snapshot"
)]
pub struct Conflict {
    /// The chainID both claim.
    pub target: String,
    /// The layer the snapshot was made for.
    pub existing_layer: String,
    /// The image it was made for.
    pub existing_image: String,
    /// The layer requested.
    pub wanted_layer: String,
    /// The image requested.
    pub wanted_image: String,
    /// What differs.
    pub what: String,
}

/// The conflict between the snapshot `target`, made for `existing` (`None`: not a
/// lazily served snapshot, nothing to compare), and the requested layer `wanted` of
/// `wanted_image`; `None` when they are the same content.
pub fn conflict(
    target: &str,
    existing: Option<&RemoteLayer>,
    wanted: &LayerIdentity,
    wanted_image: &str,
) -> Option<Conflict> {
    let existing = existing?;
    let what = if existing.layer_digest != wanted.layer_digest {
        "another blob digest".to_string()
    } else {
        match (&existing.toc_digest, &wanted.toc_digest) {
            (Some(a), Some(b)) if a != b => format!("TOC digest {b}, the snapshot's is {a}"),
            _ => return None,
        }
    };
    Some(Conflict {
        target: target.to_string(),
        existing_layer: existing.layer_digest.clone(),
        existing_image: existing.image_ref.clone(),
        wanted_layer: wanted.layer_digest.clone(),
        wanted_image: wanted_image.to_string(),
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made_for(digest: &str, toc: Option<&str>) -> RemoteLayer {
        RemoteLayer {
            image_ref: "reg/victim:1".into(),
            layer_digest: digest.into(),
            manifest_digest: None,
            toc_digest: toc.map(str::to_string),
        }
    }

    fn wanted(digest: &str, toc: Option<&str>) -> LayerIdentity {
        LayerIdentity {
            layer_digest: digest.into(),
            toc_digest: toc.map(str::to_string),
            encrypted: false,
        }
    }

    #[test]
    fn same_content_is_shared() {
        let rec = made_for("sha256:a", Some("sha256:t"));
        assert_eq!(
            conflict("c", Some(&rec), &wanted("sha256:a", Some("sha256:t")), "x"),
            None
        );
        // Snapshots recorded before TOC digests were kept compare by blob digest.
        let old = made_for("sha256:a", None);
        assert_eq!(
            conflict("c", Some(&old), &wanted("sha256:a", Some("sha256:t")), "x"),
            None
        );
        assert_eq!(conflict("c", None, &wanted("sha256:b", None), "x"), None);
    }

    #[test]
    fn other_content_is_a_conflict() {
        let rec = made_for("sha256:a", Some("sha256:t"));
        let c = conflict(
            "sha256:c",
            Some(&rec),
            &wanted("sha256:b", None),
            "reg/evil:1",
        )
        .unwrap();
        let msg = c.to_string();
        assert!(
            msg.contains("sha256:a") && msg.contains("sha256:b"),
            "{msg}"
        );
        assert!(
            msg.contains("reg/victim:1") && msg.contains("reg/evil:1"),
            "{msg}"
        );
        let c = conflict("c", Some(&rec), &wanted("sha256:a", Some("sha256:u")), "x").unwrap();
        assert!(c.what.contains("sha256:u"), "{}", c.what);
    }
}
