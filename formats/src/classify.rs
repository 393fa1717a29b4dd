//! Whether a layer can be served lazily, and how its TOC is found and authenticated.
//!
//! A layer is lazily servable when it is eStargz (gzip) with a TOC digest the image
//! vouches for, or zstd:chunked with its manifest checksum. The digest comes from the
//! layer descriptor's annotations, or, for an encrypted layer, from the TOC digest sealed
//! in its wrapped private options, which takes precedence (the annotations are not
//! covered by the layer key). Used by the image service (to open a layer) and by
//! `veil inspect` (to say whether, and why not).

use std::collections::BTreeMap;
use std::ops::Range;

use veil_blob::BlobSource;

use crate::estargz::{self, FormatError};
use crate::limits::Limits;
use crate::toc::LayerToc;
use crate::zstdchunked;

/// How a layer's TOC is found and authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazyFormat {
    /// eStargz with the TOC digest from the manifest annotation.
    Estargz {
        /// `sha256:` of the uncompressed TOC JSON.
        toc_digest: String,
    },
    /// zstd:chunked with the manifest annotations.
    ZstdChunked(zstdchunked::ManifestInfo),
}

/// Why a layer cannot be served lazily.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotLazy {
    /// The layer is encrypted and was classified without its key.
    #[error("encrypted layer ({0}) without its key")]
    Encrypted(String),
    /// A gzip layer without an authenticated TOC digest.
    #[error(
        "gzip layer without the {} annotation: not eStargz, or its TOC is not authenticated",
        estargz::TOC_DIGEST_ANNOTATION
    )]
    NoTocDigest,
    /// A zstd layer whose zstd:chunked annotations do not parse.
    #[error("zstd layer with bad zstd:chunked annotations: {0}")]
    BadZstdAnnotations(String),
    /// A zstd layer without a zstd:chunked manifest checksum.
    #[error("zstd layer without a zstd:chunked manifest checksum")]
    NoZstdChecksum,
    /// A media type no lazy format uses.
    #[error("media type {0:?} cannot be served lazily")]
    MediaType(String),
}

/// Decides from a layer's media type and annotations whether Veil can serve it lazily.
pub fn classify(
    media_type: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<LazyFormat, NotLazy> {
    classify_sealed(media_type, annotations, None)
}

/// Like [`classify`], with a TOC digest sealed in an encrypted layer's private options:
/// it takes precedence over the manifest's annotations (for zstd:chunked it is the
/// manifest checksum, over the compressed TOC).
pub fn classify_sealed(
    media_type: &str,
    annotations: &BTreeMap<String, String>,
    sealed: Option<&str>,
) -> Result<LazyFormat, NotLazy> {
    let mt = media_type;
    if mt.ends_with("+encrypted") {
        return Err(NotLazy::Encrypted(mt.to_string()));
    }
    if is_gzip(mt) {
        let digest = sealed.or(annotations
            .get(estargz::TOC_DIGEST_ANNOTATION)
            .map(String::as_str));
        return match digest {
            Some(d) => Ok(LazyFormat::Estargz {
                toc_digest: d.to_string(),
            }),
            None => Err(NotLazy::NoTocDigest),
        };
    }
    if is_zstd(mt) {
        let mut info = zstdchunked::ManifestInfo::from_annotations(annotations)
            .map_err(|e| NotLazy::BadZstdAnnotations(e.to_string()))?;
        if let Some(sealed) = sealed {
            info.checksum = Some(sealed.to_string());
        }
        if info.checksum.is_none() && info.toc_digest.is_none() {
            return Err(NotLazy::NoZstdChecksum);
        }
        return Ok(LazyFormat::ZstdChunked(info));
    }
    Err(NotLazy::MediaType(mt.to_string()))
}

/// Whether `media_type` is a gzip layer's (eStargz's).
fn is_gzip(media_type: &str) -> bool {
    media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip")
}

/// Whether `media_type` is a zstd layer's (zstd:chunked's).
fn is_zstd(media_type: &str) -> bool {
    media_type.ends_with("tar+zstd")
}

/// The blob range [`read_layer_toc`] asks for first, for a layer of `media_type` (an
/// `+encrypted` one: its ciphertext has the same layout) and `size` bytes: the last
/// `tail_bytes` of an eStargz (or zstd:chunked without a position annotation) blob, the
/// manifest frame of a zstd:chunked blob whose annotations give its position. `None`:
/// not a layer whose TOC is read (not gzip or zstd), or a range over `tail_bytes` (a
/// position annotation is not trusted to size a fetch).
pub fn first_toc_range(
    media_type: &str,
    size: u64,
    annotations: &BTreeMap<String, String>,
    tail_bytes: u64,
) -> Option<Range<u64>> {
    let media_type = media_type.trim_end_matches("+encrypted");
    let tail = size.saturating_sub(tail_bytes)..size;
    let range = if is_gzip(media_type) {
        tail
    } else if is_zstd(media_type) {
        match zstdchunked::ManifestInfo::from_annotations(annotations)
            .ok()
            .and_then(|info| info.position)
        {
            Some(p) => {
                p.offset.checked_sub(zstdchunked::SKIPPABLE_HEADER)?
                    ..p.offset.checked_add(p.compressed_len)?
            }
            None => tail,
        }
    } else {
        return None;
    };
    (range.start < range.end && range.end <= size && range.end - range.start <= tail_bytes)
        .then_some(range)
}

/// Reads and authenticates the TOC of a lazily servable layer, checking every entry
/// against `limits`; the first request reads the blob's last `tail_bytes`
/// ([`estargz::DEFAULT_TOC_TAIL_BYTES`]; 0: the footer alone), so that a TOC within them
/// costs one round trip.
pub async fn read_layer_toc(
    source: &dyn BlobSource,
    format: &LazyFormat,
    limits: &Limits,
    tail_bytes: u64,
) -> Result<LayerToc, FormatError> {
    match format {
        LazyFormat::Estargz { toc_digest } => {
            estargz::read_toc_with_tail(source, Some(toc_digest), limits, tail_bytes).await
        }
        LazyFormat::ZstdChunked(info) => {
            zstdchunked::read_toc_with_tail(source, info, limits, tail_bytes).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_authenticated_tocs_are_lazy() {
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        let none = annotations(&[]);
        assert!(classify(gz, &none).is_err());
        let annotated = annotations(&[(estargz::TOC_DIGEST_ANNOTATION, "sha256:aa")]);
        assert_eq!(
            classify(gz, &annotated),
            Ok(LazyFormat::Estargz {
                toc_digest: "sha256:aa".into()
            })
        );
        // A sealed digest wins over the (forgeable) manifest annotation.
        assert_eq!(
            classify_sealed(gz, &annotated, Some("sha256:bb")),
            Ok(LazyFormat::Estargz {
                toc_digest: "sha256:bb".into()
            })
        );
        assert!(classify(&format!("{gz}+encrypted"), &none).is_err());
        assert!(classify("application/vnd.oci.image.layer.v1.tar", &none).is_err());
        assert!(classify("application/vnd.oci.image.layer.v1.tar+zstd", &none).is_err());
    }
}
