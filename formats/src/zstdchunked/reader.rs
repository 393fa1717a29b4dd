//! Reading a zstd:chunked blob's TOC: position (annotations or footer), checksum,
//! bounded decompression, normalization.

use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::annotations::{ManifestInfo, ManifestPosition};
use super::footer::{parse_footer, FOOTER_SIZE, SKIPPABLE_HEADER, SKIPPABLE_MAGIC};
use super::MANIFEST_TYPE_CRFS;
use crate::estargz::reader::check_digest;
use crate::estargz::toc_json::{normalize, JsonToc, Layout};
use crate::estargz::{FormatError, DEFAULT_TOC_TAIL_BYTES, MAX_TOC_SIZE};
use crate::limits::Limits;
use crate::tail::fetch;
use crate::tail::Tail;
use crate::toc::{Compression, Format, LayerToc};
use veil_blob::BlobSource;

/// Read, authenticate and normalize the TOC of the zstd:chunked blob behind `source`.
///
/// The TOC is located by `info.position` when given (from the descriptor's
/// annotations), else by the footer (current 64-byte or legacy 40-byte). `info.checksum`
/// (`sha256:` of the compressed TOC) and `info.toc_digest` (of the uncompressed JSON) are
/// checked when given. Landmark files are not listed; `.prefetch.landmark` sets
/// [`LayerToc::prefetch_end`].
///
/// Entries are checked against the default [`Limits`]; [`read_toc_with_limits`] takes
/// the limits in force.
pub async fn read_toc(
    source: &dyn BlobSource,
    info: &ManifestInfo,
) -> Result<LayerToc, FormatError> {
    read_toc_with_limits(source, info, &Limits::default()).await
}

/// [`read_toc`] with every entry checked against `limits` (a TOC over one of them is
/// refused with [`FormatError::Limit`]).
pub async fn read_toc_with_limits(
    source: &dyn BlobSource,
    info: &ManifestInfo,
    limits: &Limits,
) -> Result<LayerToc, FormatError> {
    read_toc_with_tail(source, info, limits, DEFAULT_TOC_TAIL_BYTES).await
}

/// [`read_toc_with_limits`]; when the annotations do not give the TOC's position, the
/// first request reads the blob's last `tail_bytes` (at least the footer): a TOC that
/// lies within them costs no second request, a bigger one a second request for its
/// part before them only. 0 reads the footer alone first.
pub async fn read_toc_with_tail(
    source: &dyn BlobSource,
    info: &ManifestInfo,
    limits: &Limits,
    tail_bytes: u64,
) -> Result<LayerToc, FormatError> {
    for digest in [&info.checksum, &info.toc_digest].into_iter().flatten() {
        crate::codec::parse_sha256(digest)
            .ok_or_else(|| FormatError::BadExpectedDigest(digest.clone()))?;
    }
    let size = source.size();
    let mut tail = None;
    let position = match info.position {
        Some(p) => p,
        None => {
            let want = tail_bytes.max(FOOTER_SIZE + SKIPPABLE_HEADER);
            let read = tail.insert(Tail::read(source, want, "zstd:chunked footer").await?);
            let f = parse_footer(read.bytes())?;
            ManifestPosition {
                offset: f.offset,
                compressed_len: f.compressed_len,
                uncompressed_len: f.uncompressed_len,
                manifest_type: f.manifest_type,
            }
        }
    };
    if position.manifest_type != MANIFEST_TYPE_CRFS {
        return Err(FormatError::BadFooter {
            format: "zstd:chunked",
            reason: format!("manifest type {} is not 1 (CRFS)", position.manifest_type),
        });
    }
    if position.compressed_len > MAX_TOC_SIZE || position.uncompressed_len > MAX_TOC_SIZE {
        return Err(FormatError::TocTooLarge {
            size: position.compressed_len.max(position.uncompressed_len),
            max: MAX_TOC_SIZE,
        });
    }
    let out_of_range = || FormatError::TocOutOfRange {
        offset: position.offset,
        len: position.compressed_len,
        blob_size: size,
    };
    let frame_start = position
        .offset
        .checked_sub(SKIPPABLE_HEADER)
        .ok_or_else(out_of_range)?;
    let end = position
        .offset
        .checked_add(position.compressed_len)
        .filter(|&end| end <= size && position.compressed_len > 0)
        .ok_or_else(out_of_range)?;
    let frame = match &tail {
        Some(tail) => {
            tail.range(source, frame_start..end, "zstd:chunked TOC")
                .await?
        }
        None => fetch(source, frame_start..end, "zstd:chunked TOC").await?,
    };
    if frame[..4] != SKIPPABLE_MAGIC[..]
        || u64::from(u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]))
            < position.compressed_len
    {
        return Err(FormatError::BadFooter {
            format: "zstd:chunked",
            reason: format!(
                "no skippable frame holding {} bytes at blob offset {frame_start}",
                position.compressed_len
            ),
        });
    }
    let compressed = &frame[SKIPPABLE_HEADER as usize..];
    let checksum: [u8; 32] = Sha256::digest(compressed).into();
    check_digest(&checksum, info.checksum.as_deref())?;

    let mut json = Vec::new();
    zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(FormatError::TocCorrupt)?
        .take(MAX_TOC_SIZE + 1)
        .read_to_end(&mut json)
        .map_err(FormatError::TocCorrupt)?;
    if json.len() as u64 > MAX_TOC_SIZE {
        return Err(FormatError::TocTooLarge {
            size: json.len() as u64,
            max: MAX_TOC_SIZE,
        });
    }
    if position.uncompressed_len != 0 && json.len() as u64 != position.uncompressed_len {
        return Err(FormatError::TocCorrupt(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "TOC decompresses to {} bytes, its position says {}",
                json.len(),
                position.uncompressed_len
            ),
        )));
    }
    let digest: [u8; 32] = Sha256::digest(&json).into();
    check_digest(&digest, info.toc_digest.as_deref())?;
    let toc: JsonToc = serde_json::from_slice(&json)?;
    normalize(
        toc,
        &Layout {
            format: Format::ZstdChunked,
            compression: Compression::Zstd,
            payload_end: frame_start,
            blob_size: size,
            toc_size: json.len() as u64,
            limits: *limits,
        },
    )
}
