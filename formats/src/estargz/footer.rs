//! The eStargz footer: an empty gzip member whose extra field holds the TOC offset.
//!
//! Current footer (51 bytes): gzip header with FLG=FEXTRA, XLEN=26, one extra subfield
//! `SI1='S' SI2='G' LEN=22` whose data is the TOC offset as 16 lowercase hex digits
//! followed by `STARGZ`; then an empty stored deflate block and a zero trailer. The legacy
//! footer (47 bytes) has XLEN=22 and the 22 bytes directly, without the subfield header.

use super::error::FormatError;

/// Size of the current eStargz footer.
pub const FOOTER_SIZE: u64 = 51;

/// Size of the legacy (original stargz) footer.
pub const LEGACY_FOOTER_SIZE: u64 = 47;

const MAGIC: &[u8] = b"STARGZ";

fn bad(reason: impl Into<String>) -> FormatError {
    FormatError::BadFooter {
        format: "eStargz",
        reason: reason.into(),
    }
}

/// The 51-byte footer pointing at a TOC member at `toc_offset`.
pub fn footer_bytes(toc_offset: u64) -> [u8; FOOTER_SIZE as usize] {
    let mut f = [0u8; FOOTER_SIZE as usize];
    // gzip header: magic, CM=deflate, FLG=FEXTRA, MTIME=0, XFL=0, OS=255 (unknown).
    f[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12] = b'S';
    f[13] = b'G';
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..32].copy_from_slice(format!("{toc_offset:016x}").as_bytes());
    f[32..38].copy_from_slice(MAGIC);
    // Final stored block of length 0, then CRC32 = 0 and ISIZE = 0.
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// Parse a footer: `tail` is the last 51 bytes of the blob (or all of it, if shorter).
/// Returns the TOC offset and the size of the footer found (51, or 47 for a legacy one).
pub fn parse_footer(tail: &[u8]) -> Result<(u64, u64), FormatError> {
    let mut errors = Vec::new();
    if tail.len() as u64 >= FOOTER_SIZE {
        let f = &tail[tail.len() - FOOTER_SIZE as usize..];
        match parse_extra(f, 26).and_then(|extra| {
            if extra[0] != b'S' || extra[1] != b'G' {
                return Err(bad(format!(
                    "subfield id is {:?}, want \"SG\"",
                    String::from_utf8_lossy(&extra[..2])
                )));
            }
            let len = u16::from_le_bytes([extra[2], extra[3]]);
            if len != 22 {
                return Err(bad(format!("subfield length is {len}, want 22")));
            }
            parse_offset(&extra[4..])
        }) {
            Ok(off) => return Ok((off, FOOTER_SIZE)),
            Err(e) => errors.push(reason(e)),
        }
    }
    if tail.len() as u64 >= LEGACY_FOOTER_SIZE {
        let f = &tail[tail.len() - LEGACY_FOOTER_SIZE as usize..];
        match parse_extra(f, 22).and_then(parse_offset) {
            Ok(off) => return Ok((off, LEGACY_FOOTER_SIZE)),
            Err(e) => errors.push(format!("legacy: {}", reason(e))),
        }
    }
    if errors.is_empty() {
        return Err(bad(format!("only {} bytes, too short", tail.len())));
    }
    Err(bad(errors.join("; ")))
}

/// What was wrong, without the "bad eStargz footer" that the joined error says once.
fn reason(e: FormatError) -> String {
    match e {
        FormatError::BadFooter { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The extra field of a gzip header at the start of `f`, which must be `xlen` long.
fn parse_extra(f: &[u8], xlen: u16) -> Result<&[u8], FormatError> {
    if f.len() < 12 + xlen as usize {
        return Err(bad("too short"));
    }
    if f[0] != 0x1f || f[1] != 0x8b || f[2] != 0x08 {
        return Err(bad("not a gzip header"));
    }
    if f[3] & 0x04 == 0 {
        return Err(bad("gzip header has no extra field"));
    }
    let actual = u16::from_le_bytes([f[10], f[11]]);
    if actual != xlen {
        return Err(bad(format!("extra field is {actual} bytes, want {xlen}")));
    }
    Ok(&f[12..12 + xlen as usize])
}

/// `%016x` + `STARGZ` → the offset.
fn parse_offset(data: &[u8]) -> Result<u64, FormatError> {
    if data.len() != 22 || &data[16..] != MAGIC {
        return Err(bad("STARGZ magic not found"));
    }
    let hex = std::str::from_utf8(&data[..16]).map_err(|_| bad("TOC offset is not hex"))?;
    u64::from_str_radix(hex, 16).map_err(|_| bad(format!("TOC offset {hex:?} is not hex")))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn round_trip_and_is_an_empty_gzip_member() {
        let f = footer_bytes(0x1234_5678_9abc);
        assert_eq!(parse_footer(&f).unwrap(), (0x1234_5678_9abc, FOOTER_SIZE));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        let mut with_prefix = vec![9u8; 100];
        with_prefix.extend_from_slice(&f);
        assert_eq!(parse_footer(&with_prefix).unwrap().0, 0x1234_5678_9abc);
    }

    #[test]
    fn legacy_footer() {
        // Legacy: XLEN=22, extra = "%016xSTARGZ" directly.
        let mut f = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0];
        f.extend_from_slice(b"00000000000000a0STARGZ");
        f.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.len() as u64, LEGACY_FOOTER_SIZE);
        assert_eq!(parse_footer(&f).unwrap(), (0xa0, LEGACY_FOOTER_SIZE));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_footer(&[0u8; 51]).is_err());
        assert!(parse_footer(&[0u8; 3]).is_err());
        let mut f = footer_bytes(5);
        f[20] = b'z';
        let err = parse_footer(&f).unwrap_err().to_string();
        assert!(err.contains("not hex"), "{err}");
    }
}
