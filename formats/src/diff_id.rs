//! A layer's `diff_id`: the SHA-256 of its whole uncompressed tar stream, as the image
//! config's `rootfs.diff_ids` list it.
//!
//! A lazily served layer is verified chunk by chunk against its TOC; its `diff_id` can
//! only be checked once every byte of the blob is there. [`uncompressed_digest`] is that
//! one pass: it decompresses the (decrypted) blob as it is read and hashes the output.
//! An eStargz blob is a series of gzip members (its TOC and footer included, as in the
//! `diff_id` every eStargz writer records); a zstd:chunked blob a series of zstd frames,
//! its TOC and tar-split in skippable frames the decoder passes over. Memory is the
//! decoders' (a zstd window is at most 2^[`MAX_ZSTD_WINDOW_LOG`]); CPU is one pass.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::codec::MAX_ZSTD_WINDOW_LOG;
use crate::stream::StreamCompression;

/// What one pass over a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncompressed {
    /// `sha256:<hex>` of the uncompressed stream.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

/// Decompresses `input` (a whole layer blob, compressed as `compression` says) and
/// returns the digest and size of what it decompresses to. Errors: the input could not
/// be read or does not decompress.
pub fn uncompressed_digest(
    compression: StreamCompression,
    input: impl Read,
) -> io::Result<Uncompressed> {
    let mut decoder: Box<dyn Read + '_> = match compression {
        StreamCompression::None => Box::new(input),
        StreamCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        StreamCompression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(input)?;
            d.window_log_max(MAX_ZSTD_WINDOW_LOG)?;
            Box::new(d)
        }
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Uncompressed {
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    #[test]
    fn gzip_members_hash_as_one_stream() {
        let mut blob = Vec::new();
        for part in [&b"first member "[..], b"", b"second member"] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(part).unwrap();
            blob.extend(enc.finish().unwrap());
        }
        let got = uncompressed_digest(StreamCompression::Gzip, &blob[..]).unwrap();
        assert_eq!(got.digest, sha(b"first member second member"));
        assert_eq!(got.size, 26);
    }

    #[test]
    fn zstd_frames_and_skippable_frames() {
        let mut blob = zstd::encode_all(&b"frame one, "[..], 3).unwrap();
        // A skippable frame (magic 0x184D2A50, length 4): no output.
        blob.extend([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
        blob.extend(zstd::encode_all(&b"frame two"[..], 3).unwrap());
        let got = uncompressed_digest(StreamCompression::Zstd, &blob[..]).unwrap();
        assert_eq!(got.digest, sha(b"frame one, frame two"));
    }

    #[test]
    fn garbage_is_an_error_not_a_digest() {
        let err = uncompressed_digest(StreamCompression::Gzip, &b"not gzip at all"[..]);
        assert!(err.is_err(), "{err:?}");
    }
}
