//! The chunk codec: compressed blob bytes in, verified plaintext chunk out.
//!
//! A [`Chunk`] of a [`crate::toc::LayerToc`] names a compressed gzip member or zstd frame
//! in the blob (`blob_offset..blob_end`), where the chunk's bytes start inside the
//! decompressed stream (`inner_offset`), how many there are (`size`) and the SHA-256 they
//! must have. [`decode_chunk`] decompresses just enough of the member to get those bytes
//! and checks the digest; bytes that do not match are never returned.
//!
//! The digest helpers here ([`sha256_digest`], [`parse_sha256`]) are shared by the format
//! readers and writers.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::limits::Limits;
use crate::toc::{Chunk, Compression};

pub use crate::limits::MAX_CHUNK_SIZE;

/// The largest zstd window a chunk's frame may ask for under the default limits: the
/// smallest power of two that holds [`MAX_CHUNK_SIZE`] (2^24 = 16 MiB); with other
/// limits, [`Limits::zstd_window_log`]. A frame's header names the window its
/// decoder must allocate; without this bound a hostile frame of a few bytes would make
/// every decode allocate zstd's default maximum (128 MiB) however small the chunk.
pub const MAX_ZSTD_WINDOW_LOG: u32 = u64::BITS - (MAX_CHUNK_SIZE - 1).leading_zeros();

/// Why a chunk could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The caller passed a byte slice whose length is not `blob_end - blob_offset`.
    #[error(
        "chunk at blob offset {blob_offset}: expected {expected} compressed bytes \
         (blob range {blob_offset}..{blob_end}), got {actual}"
    )]
    WrongLength {
        /// Start of the chunk's member in the blob.
        blob_offset: u64,
        /// End of the chunk's member in the blob.
        blob_end: u64,
        /// The length the range implies.
        expected: u64,
        /// The length actually passed.
        actual: u64,
    },
    /// The chunk's blob range is empty or reversed.
    #[error("chunk has an invalid blob range {blob_offset}..{blob_end}")]
    BadRange {
        /// Start of the range.
        blob_offset: u64,
        /// End of the range.
        blob_end: u64,
    },
    /// The chunk is larger than [`Limits::max_chunk_size`].
    #[error(
        "chunk at blob offset {blob_offset} claims {size} bytes, more than the MAX_CHUNK_SIZE \
         limit of {max} bytes"
    )]
    TooLarge {
        /// Start of the chunk's member in the blob.
        blob_offset: u64,
        /// The size the TOC claims.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The chunk starts so far inside its member or frame that reaching it would inflate
    /// more than [`Limits::max_chunk_size`] bytes.
    #[error(
        "chunk at blob offset {blob_offset} starts {inner_offset} bytes into its member and \
         needs {inner_offset} + {size} bytes inflated, more than the MAX_CHUNK_SIZE limit \
         of {max} bytes"
    )]
    InnerOffsetTooLarge {
        /// Start of the chunk's member in the blob.
        blob_offset: u64,
        /// Where the chunk starts inside the decompressed member (`innerOffset`).
        inner_offset: u64,
        /// The chunk's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The chunk's digest is not `sha256:` followed by 64 hex digits.
    #[error("chunk digest {0:?} is not of the form sha256:<64 hex digits>")]
    BadDigest(String),
    /// The member or frame could not be decompressed (corrupt or truncated).
    #[error("{compression:?} data at blob offset {blob_offset} is corrupt or truncated: {source}")]
    Decompress {
        /// How it was compressed.
        compression: Compression,
        /// Start of the member in the blob.
        blob_offset: u64,
        /// What the decompressor said.
        #[source]
        source: io::Error,
    },
    /// The member or frame decompressed to fewer bytes than the chunk needs.
    #[error(
        "{compression:?} data at blob offset {blob_offset} decompresses to {available} bytes, \
         but the chunk needs bytes {inner_offset}..{needed_end}"
    )]
    Short {
        /// How it was compressed.
        compression: Compression,
        /// Start of the member in the blob.
        blob_offset: u64,
        /// How many bytes it decompressed to.
        available: u64,
        /// Where the chunk starts inside the decompressed data.
        inner_offset: u64,
        /// Where it would end.
        needed_end: u64,
    },
    /// The decompressed bytes do not have the digest the TOC records.
    #[error("chunk digest mismatch: TOC says {expected}, data has {actual}")]
    DigestMismatch {
        /// The digest in the TOC.
        expected: String,
        /// The digest of the bytes that were decoded.
        actual: String,
    },
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The 32 raw bytes of a `sha256:<64 hex>` digest, or `None` if it is not one.
///
/// Hex digits may be upper or lower case.
pub fn parse_sha256(digest: &str) -> Option<[u8; 32]> {
    let hex_part = digest.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Decompress and verify one chunk.
///
/// `compressed` must be exactly the blob bytes `chunk.blob_offset..chunk.blob_end`. The
/// member (gzip, possibly several concatenated) or frame (zstd, possibly several) is
/// decompressed only as far as `inner_offset + size`; the `size` bytes after
/// `inner_offset` are returned if their SHA-256 equals `chunk.digest`.
///
/// Cost is bounded by `limits.max_chunk_size` ([`Limits::max_chunk_size`]) whatever the
/// input: a chunk claiming more, or
/// starting so deep in its member that more would have to be inflated, is refused
/// before anything is decompressed or allocated; decompression stops at
/// `inner_offset + size` however far the member would inflate (a compression bomb
/// costs at most the limit); a zstd frame may not ask for a window larger than
/// 2^[`Limits::zstd_window_log`].
pub fn decode_chunk(
    chunk: &Chunk,
    compressed: &[u8],
    limits: &Limits,
) -> Result<Vec<u8>, CodecError> {
    let max = limits.max_chunk_size;
    if chunk.blob_end <= chunk.blob_offset {
        return Err(CodecError::BadRange {
            blob_offset: chunk.blob_offset,
            blob_end: chunk.blob_end,
        });
    }
    let expected_len = chunk.blob_end - chunk.blob_offset;
    if compressed.len() as u64 != expected_len {
        return Err(CodecError::WrongLength {
            blob_offset: chunk.blob_offset,
            blob_end: chunk.blob_end,
            expected: expected_len,
            actual: compressed.len() as u64,
        });
    }
    if chunk.size > max {
        return Err(CodecError::TooLarge {
            blob_offset: chunk.blob_offset,
            size: chunk.size,
            max,
        });
    }
    if chunk.inner_offset.saturating_add(chunk.size) > max {
        return Err(CodecError::InnerOffsetTooLarge {
            blob_offset: chunk.blob_offset,
            inner_offset: chunk.inner_offset,
            size: chunk.size,
            max,
        });
    }
    let expected =
        parse_sha256(&chunk.digest).ok_or_else(|| CodecError::BadDigest(chunk.digest.clone()))?;

    let decompress_err = |source: io::Error| CodecError::Decompress {
        compression: chunk.compression,
        blob_offset: chunk.blob_offset,
        source,
    };
    let reader: Box<dyn Read + '_> = match chunk.compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(compressed).map_err(decompress_err)?;
            decoder
                .window_log_max(limits.zstd_window_log())
                .map_err(decompress_err)?;
            Box::new(decoder)
        }
        Compression::None => Box::new(compressed),
    };
    let needed_end = chunk.inner_offset.saturating_add(chunk.size);
    let mut reader = reader.take(needed_end);

    let skipped = io::copy(&mut (&mut reader).take(chunk.inner_offset), &mut io::sink())
        .map_err(decompress_err)?;
    // `size` is at most the chunk limit (checked above): the one allocation a chunk needs.
    let mut data = Vec::with_capacity(usize::try_from(chunk.size).unwrap_or(0));
    let read = reader.read_to_end(&mut data).map_err(decompress_err)? as u64;
    if skipped < chunk.inner_offset || read < chunk.size {
        return Err(CodecError::Short {
            compression: chunk.compression,
            blob_offset: chunk.blob_offset,
            available: skipped + read,
            inner_offset: chunk.inner_offset,
            needed_end,
        });
    }

    let actual = Sha256::digest(&data);
    if actual.as_slice() != expected {
        return Err(CodecError::DigestMismatch {
            expected: chunk.digest.clone(),
            actual: format!("sha256:{}", hex::encode(actual)),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd_frame(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn chunk_for(
        compressed: &[u8],
        inner_offset: u64,
        plain: &[u8],
        compression: Compression,
    ) -> Chunk {
        Chunk {
            file_offset: 0,
            size: plain.len() as u64,
            blob_offset: 100,
            blob_end: 100 + compressed.len() as u64,
            inner_offset,
            digest: sha256_digest(plain),
            compression,
        }
    }

    #[test]
    fn gzip_chunk_with_inner_offset() {
        let member = gzip(b"headerPAYLOADtrailer");
        let chunk = chunk_for(&member, 6, b"PAYLOAD", Compression::Gzip);
        assert_eq!(
            decode_chunk(&chunk, &member, &Limits::default()).unwrap(),
            b"PAYLOAD"
        );
    }

    #[test]
    fn zstd_chunk() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let frame = zstd_frame(&data);
        let chunk = chunk_for(&frame, 0, &data, Compression::Zstd);
        assert_eq!(
            decode_chunk(&chunk, &frame, &Limits::default()).unwrap(),
            data
        );
    }

    #[test]
    fn concatenated_zstd_frames() {
        let mut frames = zstd_frame(b"abc");
        frames.extend(zstd_frame(b"def"));
        let chunk = chunk_for(&frames, 1, b"bcde", Compression::Zstd);
        assert_eq!(
            decode_chunk(&chunk, &frames, &Limits::default()).unwrap(),
            b"bcde"
        );
    }

    #[test]
    fn digest_mismatch() {
        let member = gzip(b"hello");
        let mut chunk = chunk_for(&member, 0, b"hello", Compression::Gzip);
        chunk.digest = sha256_digest(b"other");
        match decode_chunk(&chunk, &member, &Limits::default()) {
            Err(CodecError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, sha256_digest(b"other"));
                assert_eq!(actual, sha256_digest(b"hello"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn corrupt_and_truncated_data_are_errors() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let member = match compression {
                Compression::Gzip => gzip(&data),
                Compression::Zstd | Compression::None => zstd_frame(&data),
            };
            // Truncated.
            let cut = &member[..member.len() / 2];
            let chunk = chunk_for(cut, 0, &data, compression);
            assert!(
                decode_chunk(&chunk, cut, &Limits::default()).is_err(),
                "{compression:?} truncated"
            );
            // Every single flipped byte: an error, never a panic, never wrong bytes.
            for i in (0..member.len()).step_by(97) {
                let mut bad = member.clone();
                bad[i] ^= 0x5a;
                let chunk = chunk_for(&bad, 0, &data, compression);
                if let Ok(out) = decode_chunk(&chunk, &bad, &Limits::default()) {
                    assert_eq!(out, data);
                }
            }
            // Garbage.
            let garbage = vec![0xffu8; 64];
            let chunk = chunk_for(&garbage, 0, &data, compression);
            assert!(decode_chunk(&chunk, &garbage, &Limits::default()).is_err());
        }
    }

    #[test]
    fn short_member() {
        let member = gzip(b"tiny");
        let mut chunk = chunk_for(&member, 2, b"tiny", Compression::Gzip);
        chunk.size = 4;
        assert!(matches!(
            decode_chunk(&chunk, &member, &Limits::default()),
            Err(CodecError::Short { available: 4, .. })
        ));
    }

    #[test]
    fn wrong_length_bad_range_bad_digest_too_large() {
        let member = gzip(b"x");
        let chunk = chunk_for(&member, 0, b"x", Compression::Gzip);
        assert!(matches!(
            decode_chunk(&chunk, &member[1..], &Limits::default()),
            Err(CodecError::WrongLength { .. })
        ));
        let mut c = chunk.clone();
        c.blob_end = c.blob_offset;
        assert!(matches!(
            decode_chunk(&c, &[], &Limits::default()),
            Err(CodecError::BadRange { .. })
        ));
        let mut c = chunk.clone();
        c.digest = "sha256:xyz".into();
        assert!(matches!(
            decode_chunk(&c, &member, &Limits::default()),
            Err(CodecError::BadDigest(_))
        ));
        let mut c = chunk.clone();
        c.size = MAX_CHUNK_SIZE + 1;
        assert!(matches!(
            decode_chunk(&c, &member, &Limits::default()),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn parse_sha256_accepts_only_sha256() {
        assert!(parse_sha256(&sha256_digest(b"")).is_some());
        assert!(parse_sha256("sha512:00").is_none());
        assert!(parse_sha256("sha256:").is_none());
        assert!(parse_sha256(&format!("sha256:{}", "A".repeat(64))).is_some());
    }
}
