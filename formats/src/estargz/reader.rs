//! Reading an eStargz blob's TOC: footer, TOC member, digest check, normalization.

use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::error::FormatError;
use super::footer::{parse_footer, FOOTER_SIZE, LEGACY_FOOTER_SIZE};
use super::toc_json::{normalize, JsonToc, Layout};
use super::{DEFAULT_TOC_TAIL_BYTES, MAX_TOC_SIZE, TOC_TAR_NAME};
use crate::codec::parse_sha256;
use crate::limits::Limits;
use crate::tail::Tail;
use crate::tar_index::clean_name;
use crate::toc::{Compression, Format, LayerToc};
use veil_blob::BlobSource;

/// Check `json`'s SHA-256 against `expected` (`sha256:<hex>`), if given.
pub(crate) fn check_digest(actual: &[u8; 32], expected: Option<&str>) -> Result<(), FormatError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let want = parse_sha256(expected)
        .ok_or_else(|| FormatError::BadExpectedDigest(expected.to_owned()))?;
    if &want != actual {
        return Err(FormatError::TocDigestMismatch {
            expected: expected.to_owned(),
            actual: format!("sha256:{}", hex::encode(actual)),
        });
    }
    Ok(())
}

/// Read, authenticate and normalize the TOC of the eStargz blob behind `source`.
///
/// `expected_toc_digest` (`sha256:<hex>` of the uncompressed TOC JSON, as in the
/// `containerd.io/snapshot/stargz/toc.digest` annotation) is checked when given; a TOC
/// that does not match is rejected. Both the current 51-byte and the legacy 47-byte
/// footers are accepted. Landmark files are not listed in the result; the
/// `.prefetch.landmark` offset becomes [`LayerToc::prefetch_end`].
///
/// Entries are checked against the default [`Limits`]; [`read_toc_with_limits`] takes
/// the limits in force.
pub async fn read_toc(
    source: &dyn BlobSource,
    expected_toc_digest: Option<&str>,
) -> Result<LayerToc, FormatError> {
    read_toc_with_limits(source, expected_toc_digest, &Limits::default()).await
}

/// [`read_toc`] with every entry checked against `limits` (a TOC over one of them is
/// refused with [`FormatError::Limit`]).
pub async fn read_toc_with_limits(
    source: &dyn BlobSource,
    expected_toc_digest: Option<&str>,
    limits: &Limits,
) -> Result<LayerToc, FormatError> {
    read_toc_with_tail(source, expected_toc_digest, limits, DEFAULT_TOC_TAIL_BYTES).await
}

/// [`read_toc_with_limits`], reading the blob's last `tail_bytes` (at least the footer)
/// in the first request: a TOC that lies within them costs no second request, a bigger
/// one a second request for its part before them only. 0 reads the footer alone first.
pub async fn read_toc_with_tail(
    source: &dyn BlobSource,
    expected_toc_digest: Option<&str>,
    limits: &Limits,
    tail_bytes: u64,
) -> Result<LayerToc, FormatError> {
    if let Some(expected) = expected_toc_digest {
        parse_sha256(expected)
            .ok_or_else(|| FormatError::BadExpectedDigest(expected.to_owned()))?;
    }
    let size = source.size();
    if size < LEGACY_FOOTER_SIZE {
        return Err(FormatError::TooSmall {
            size,
            needed: LEGACY_FOOTER_SIZE,
            format: "eStargz",
        });
    }
    let tail = Tail::read(source, tail_bytes.max(FOOTER_SIZE), "eStargz footer").await?;
    let (toc_offset, footer_len) = parse_footer(tail.bytes())?;
    let toc_end = size - footer_len;
    if toc_offset >= toc_end {
        return Err(FormatError::TocOutOfRange {
            offset: toc_offset,
            len: 0,
            blob_size: size,
        });
    }
    let toc_len = toc_end - toc_offset;
    if toc_len > MAX_TOC_SIZE {
        return Err(FormatError::TocTooLarge {
            size: toc_len,
            max: MAX_TOC_SIZE,
        });
    }
    let member = tail
        .range(source, toc_offset..toc_end, "eStargz TOC")
        .await?;
    let json = toc_json_from_member(&member)?;
    let digest: [u8; 32] = Sha256::digest(&json).into();
    check_digest(&digest, expected_toc_digest)?;
    let toc: JsonToc = serde_json::from_slice(&json)?;
    normalize(
        toc,
        &Layout {
            format: Format::Estargz,
            compression: Compression::Gzip,
            payload_end: toc_offset,
            blob_size: size,
            toc_size: json.len() as u64,
            limits: *limits,
        },
    )
}

/// The bytes of `stargz.index.json` inside a TOC gzip member.
pub(crate) fn toc_json_from_member(member: &[u8]) -> Result<Vec<u8>, FormatError> {
    // Bound what is decompressed: a tar header, the JSON and padding.
    let gz = flate2::read::GzDecoder::new(member).take(MAX_TOC_SIZE + 4096);
    let mut archive = tar::Archive::new(gz);
    let mut entries = archive.entries().map_err(FormatError::TocCorrupt)?;
    let mut entry = match entries.next() {
        Some(entry) => entry.map_err(FormatError::TocCorrupt)?,
        None => {
            return Err(FormatError::TocTarName {
                found: String::new(),
            })
        }
    };
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if clean_name(&name) != TOC_TAR_NAME {
        return Err(FormatError::TocTarName { found: name });
    }
    let size = entry.size();
    if size > MAX_TOC_SIZE {
        return Err(FormatError::TocTooLarge {
            size,
            max: MAX_TOC_SIZE,
        });
    }
    let mut json = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut json)
        .map_err(FormatError::TocCorrupt)?;
    if json.len() as u64 != size {
        return Err(FormatError::TocCorrupt(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "TOC JSON is {} bytes, its tar header says {size}",
                json.len()
            ),
        )));
    }
    Ok(json)
}
