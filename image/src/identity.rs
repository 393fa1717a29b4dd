//! A lazily served layer's identity beyond its blob digest: the TOC digest it is served
//! with, and the rule that a layer recorded with one is never served with another.

use veil_formats::classify::LazyFormat;

use crate::resolver::RemoteLayer;

/// A layer recorded with a TOC digest (a snapshot made for it, mounted again after a
/// restart; or a Prepare authorized just before) is served only with that TOC: a
/// registry that now gives another TOC digest for the same layer digest (a tag moved to
/// a manifest with another annotation, a blob swapped under its digest) must not change
/// what a running container reads. `Err`: why not.
pub(crate) fn check_recorded_toc(layer: &RemoteLayer, now: Option<String>) -> Result<(), String> {
    match &layer.toc_digest {
        Some(recorded) if now.as_ref() != Some(recorded) => Err(format!(
            "layer {} of {}: the registry now gives TOC digest {}, but its snapshot was made \
             for TOC digest {recorded}; the layer is not served with another TOC",
            layer.layer_digest,
            layer.image_ref,
            now.as_deref().unwrap_or("(none)")
        )),
        _ => Ok(()),
    }
}

/// The TOC digest a lazily servable format is authenticated by.
pub(crate) fn toc_digest(format: Option<LazyFormat>) -> Option<String> {
    match format? {
        LazyFormat::Estargz { toc_digest } => Some(toc_digest),
        LazyFormat::ZstdChunked(info) => info.checksum.or(info.toc_digest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(toc: Option<&str>) -> RemoteLayer {
        RemoteLayer {
            image_ref: "r/x:1".into(),
            layer_digest: "sha256:l".into(),
            manifest_digest: None,
            toc_digest: toc.map(str::to_string),
        }
    }

    #[test]
    fn a_recorded_toc_must_be_the_one_given_now() {
        assert!(check_recorded_toc(&layer(None), Some("sha256:new".into())).is_ok());
        assert!(check_recorded_toc(&layer(Some("sha256:t")), Some("sha256:t".into())).is_ok());
        let err =
            check_recorded_toc(&layer(Some("sha256:t")), Some("sha256:new".into())).unwrap_err();
        assert!(err.contains("sha256:new") && err.contains("made for TOC digest sha256:t"));
        let err = check_recorded_toc(&layer(Some("sha256:t")), None).unwrap_err();
        assert!(err.contains("(none)"), "{err}");
    }
}
