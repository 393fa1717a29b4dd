//! zstd skippable frames and the zstd:chunked footers (current 64-byte, legacy 40-byte).

use crate::estargz::FormatError;

/// Magic of a zstd skippable frame (the first of the 16 allowed values), little endian.
pub(crate) const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];

/// Length of a skippable frame's header (magic and u32 length).
pub const SKIPPABLE_HEADER: u64 = 8;

/// Size of the current footer's data (inside its skippable frame).
pub const FOOTER_SIZE: u64 = 64;

/// Size of the legacy footer's data (inside its skippable frame).
pub const LEGACY_FOOTER_SIZE: u64 = 40;

const MAGIC: &[u8; 8] = b"GNUlInUx";
const LEGACY_MAGIC: &[u8; 8] = b"GnUlInUx";

/// What a footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    /// Offset of the compressed TOC (after its skippable frame header).
    pub offset: u64,
    /// Compressed TOC length.
    pub compressed_len: u64,
    /// Uncompressed TOC length.
    pub uncompressed_len: u64,
    /// Manifest type (1).
    pub manifest_type: u64,
    /// Tar-split position (current footer only; zero otherwise).
    pub tar_split: [u64; 3],
    /// Whether it was the legacy footer.
    pub legacy: bool,
}

/// `data` wrapped in a skippable frame.
pub(crate) fn skippable_frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(&SKIPPABLE_MAGIC);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(v)
}

/// The footer's bytes (without the skippable frame header).
pub(crate) fn footer_bytes(f: &Footer) -> Vec<u8> {
    let mut words = vec![
        f.offset,
        f.compressed_len,
        f.uncompressed_len,
        f.manifest_type,
    ];
    if !f.legacy {
        words.extend_from_slice(&f.tar_split);
    }
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.extend_from_slice(if f.legacy { LEGACY_MAGIC } else { MAGIC });
    out
}

fn bad(reason: String) -> FormatError {
    FormatError::BadFooter {
        format: "zstd:chunked",
        reason,
    }
}

/// Parse the footer from the blob's last bytes (`tail`, up to 72 of them).
pub(crate) fn parse_footer(tail: &[u8]) -> Result<Footer, FormatError> {
    let n = tail.len();
    if n >= FOOTER_SIZE as usize && &tail[n - 8..] == MAGIC {
        let b = &tail[n - FOOTER_SIZE as usize..];
        return Ok(Footer {
            offset: u64_at(b, 0),
            compressed_len: u64_at(b, 1),
            uncompressed_len: u64_at(b, 2),
            manifest_type: u64_at(b, 3),
            tar_split: [u64_at(b, 4), u64_at(b, 5), u64_at(b, 6)],
            legacy: false,
        });
    }
    if n >= LEGACY_FOOTER_SIZE as usize && &tail[n - 8..] == LEGACY_MAGIC {
        let b = &tail[n - LEGACY_FOOTER_SIZE as usize..];
        return Ok(Footer {
            offset: u64_at(b, 0),
            compressed_len: u64_at(b, 1),
            uncompressed_len: u64_at(b, 2),
            manifest_type: u64_at(b, 3),
            tar_split: [0; 3],
            legacy: true,
        });
    }
    Err(bad(format!(
        "the last 8 bytes are {:02x?}, neither \"GNUlInUx\" nor \"GnUlInUx\"",
        &tail[n.saturating_sub(8)..]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for legacy in [false, true] {
            let f = Footer {
                offset: 1,
                compressed_len: 2,
                uncompressed_len: 3,
                manifest_type: 1,
                tar_split: if legacy { [0; 3] } else { [4, 5, 6] },
                legacy,
            };
            let bytes = footer_bytes(&f);
            assert_eq!(
                bytes.len() as u64,
                if legacy {
                    LEGACY_FOOTER_SIZE
                } else {
                    FOOTER_SIZE
                }
            );
            let framed = skippable_frame(&bytes);
            assert_eq!(parse_footer(&framed).unwrap(), f);
        }
        assert!(parse_footer(&[0u8; 72]).is_err());
        assert!(parse_footer(b"GNUlInUx").is_err());
    }
}
