//! HTTP byte ranges (RFC 9110 section 14): the `Range` request header, `Content-Range`,
//! `multipart/byteranges` bodies, and assembling the ranges asked for from whatever the
//! server sent: one 206 part, several parts, or (when it ignored `Range`) the whole blob.
//!
//! Ranges are half-open (`start..end`) in Rust and inclusive on the wire.

use std::ops::Range;

/// A parsed `Content-Range` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRange {
    /// The bytes in the body (half-open); `None` for the unsatisfied form `bytes */total`.
    pub range: Option<Range<u64>>,
    /// The full length of the resource, when the server gave it (`*` otherwise).
    pub total: Option<u64>,
}

/// A `Range` header value for `ranges` (each non-empty, half-open): `bytes=0-9,20-29`.
pub fn range_header(ranges: &[Range<u64>]) -> String {
    let specs: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end.saturating_sub(1)))
        .collect();
    format!("bytes={}", specs.join(","))
}

/// Parses `bytes a-b/total`, `bytes a-b/*` or `bytes */total`.
pub fn parse_content_range(value: &str) -> Result<ContentRange, String> {
    let bad = |why: &str| format!("malformed Content-Range {value:?}: {why}");
    let value = value.trim();
    let (unit, rest) = value
        .split_once([' ', '\t'])
        .ok_or_else(|| bad("expected `bytes <range>/<length>`"))?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(bad("unit is not bytes"));
    }
    let (spec, total) = rest
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("missing /length"))?;
    let number = |s: &str| -> Result<u64, String> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("not a number"));
        }
        s.parse::<u64>().map_err(|_| bad("number too large"))
    };
    let total = match total.trim() {
        "*" => None,
        t => Some(number(t)?),
    };
    let range = match spec.trim() {
        "*" => {
            if total.is_none() {
                return Err(bad("neither range nor length"));
            }
            None
        }
        spec => {
            let (first, last) = spec.split_once('-').ok_or_else(|| bad("missing -"))?;
            let (first, last) = (number(first)?, number(last)?);
            if first > last {
                return Err(bad("first byte after last byte"));
            }
            if total.is_some_and(|t| last >= t) {
                return Err(bad("last byte beyond the length"));
            }
            let end = last.checked_add(1).ok_or_else(|| bad("number too large"))?;
            Some(first..end)
        }
    };
    Ok(ContentRange { range, total })
}

/// The boundary of a `multipart/byteranges` content type; `None` for other types.
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let media = parts.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// One part of a `multipart/byteranges` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    /// The bytes of the blob this part holds (from its `Content-Range`).
    pub range: Range<u64>,
    /// The part's data.
    pub data: &'a [u8],
}

const MAX_PART_HEADERS: usize = 32;

/// Splits a `multipart/byteranges` body. Each part's length comes from its
/// `Content-Range`, so data that happens to contain the boundary is read correctly.
pub fn parse_multipart_byteranges<'a>(
    body: &'a [u8],
    boundary: &str,
) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut pos = find(body, &delimiter, 0)
        .ok_or_else(|| format!("multipart body has no boundary {boundary:?}"))?;
    let mut parts = Vec::new();
    loop {
        pos += delimiter.len();
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        while matches!(body.get(pos), Some(b' ' | b'\t')) {
            pos += 1;
        }
        pos = skip_newline(body, pos).ok_or("multipart boundary line not ended by a newline")?;
        let mut content_range = None;
        let mut headers = 0;
        loop {
            let line_end = find(body, b"\n", pos).ok_or("multipart part headers are truncated")?;
            let line = trim_cr(&body[pos..line_end]);
            pos = line_end + 1;
            if line.is_empty() {
                break;
            }
            headers += 1;
            if headers > MAX_PART_HEADERS {
                return Err("too many headers in a multipart part".into());
            }
            let line = String::from_utf8_lossy(line);
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-range") {
                    content_range = Some(parse_content_range(value)?);
                }
            }
        }
        let range = content_range
            .and_then(|c| c.range)
            .ok_or("a multipart part has no Content-Range")?;
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| "multipart part too large".to_string())?;
        let data = body
            .get(pos..pos.saturating_add(len))
            .ok_or_else(|| format!("multipart part {range:?} is truncated"))?;
        parts.push(Part { range, data });
        pos += len;
        pos = skip_newline(body, pos).ok_or("multipart part data not followed by a newline")?;
        if !body[pos..].starts_with(&delimiter) {
            return Err("multipart part data not followed by the boundary".into());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn skip_newline(body: &[u8], pos: usize) -> Option<usize> {
    if body[pos..].starts_with(b"\r\n") {
        Some(pos + 2)
    } else if body[pos..].starts_with(b"\n") {
        Some(pos + 1)
    } else {
        None
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Fills the ranges asked for from pieces of the blob as they arrive (in increasing offset
/// order within each range), whichever way the server cut them.
#[derive(Debug)]
pub struct RangeAssembler {
    wanted: Vec<Range<u64>>,
    bufs: Vec<Vec<u8>>,
}

impl RangeAssembler {
    /// Starts assembling `wanted` (each half-open and non-empty).
    pub fn new(wanted: &[Range<u64>]) -> Self {
        RangeAssembler {
            wanted: wanted.to_vec(),
            bufs: wanted
                .iter()
                .map(|r| Vec::with_capacity(usize::try_from(r.end - r.start).unwrap_or(0)))
                .collect(),
        }
    }

    /// Offers the bytes `data` found at blob offset `offset`.
    pub fn offer(&mut self, offset: u64, data: &[u8]) {
        let piece_end = offset.saturating_add(data.len() as u64);
        for (range, buf) in self.wanted.iter().zip(self.bufs.iter_mut()) {
            let next = range.start + buf.len() as u64;
            if next >= range.end || offset > next || piece_end <= next {
                continue;
            }
            let take_end = piece_end.min(range.end);
            let from = (next - offset) as usize;
            let to = (take_end - offset) as usize;
            buf.extend_from_slice(&data[from..to]);
        }
    }

    /// Whether every range is complete.
    pub fn is_complete(&self) -> bool {
        self.wanted
            .iter()
            .zip(&self.bufs)
            .all(|(r, b)| b.len() as u64 == r.end - r.start)
    }

    /// The end of the furthest range: bytes past it are not needed.
    pub fn needed_end(&self) -> u64 {
        self.wanted.iter().map(|r| r.end).max().unwrap_or(0)
    }

    /// The assembled ranges, in the order asked for; on a gap, the first range with
    /// missing bytes.
    pub fn finish(self) -> Result<Vec<Vec<u8>>, Range<u64>> {
        for (range, buf) in self.wanted.iter().zip(&self.bufs) {
            if buf.len() as u64 != range.end - range.start {
                return Err(range.clone());
            }
        }
        Ok(self.bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        let one = 0..10;
        assert_eq!(range_header(std::slice::from_ref(&one)), "bytes=0-9");
        assert_eq!(range_header(&[5..6, 100..200]), "bytes=5-5,100-199");
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-9/100").unwrap(),
            ContentRange {
                range: Some(0..10),
                total: Some(100)
            }
        );
        assert_eq!(
            parse_content_range(" BYTES 5-5/*").unwrap(),
            ContentRange {
                range: Some(5..6),
                total: None
            }
        );
        assert_eq!(
            parse_content_range("bytes */42").unwrap(),
            ContentRange {
                range: None,
                total: Some(42)
            }
        );
        for bad in [
            "",
            "bytes",
            "bytes 0-9",
            "items 0-9/10",
            "bytes 9-0/10",
            "bytes 0-10/10",
            "bytes -1-5/10",
            "bytes 0-99999999999999999999999/*",
            "bytes */*",
            "bytes a-b/c",
            "bytes 0-18446744073709551615/*",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            multipart_boundary("multipart/byteranges; boundary=3d6b6a416f9b5").as_deref(),
            Some("3d6b6a416f9b5")
        );
        assert_eq!(
            multipart_boundary("Multipart/ByteRanges;charset=x; Boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(multipart_boundary("application/octet-stream"), None);
        assert_eq!(multipart_boundary("multipart/byteranges"), None);
    }

    #[test]
    fn multipart_body_with_boundary_inside_data() {
        let body = b"preamble\r\n--XYZ\r\nContent-Type: application/octet-stream\r\n\
Content-Range: bytes 0-9/50\r\n\r\n--XYZ--abc\r\n--XYZ\r\ncontent-range: bytes 40-44/50\r\n\r\nhello\r\n--XYZ--\r\n";
        let parts = parse_multipart_byteranges(body, "XYZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].range, 0..10);
        assert_eq!(parts[0].data, b"--XYZ--abc");
        assert_eq!(parts[1].range, 40..45);
        assert_eq!(parts[1].data, b"hello");
        // LF-only line endings are accepted too.
        let lf = b"--b\nContent-Range: bytes 1-2/3\n\nxy\n--b--";
        assert_eq!(parse_multipart_byteranges(lf, "b").unwrap()[0].data, b"xy");
    }

    #[test]
    fn broken_multipart_bodies_are_errors() {
        let cases: [&[u8]; 6] = [
            b"no boundary here",
            b"--XYZ\r\nContent-Range: bytes 0-9/50\r\n\r\nshort",
            b"--XYZ\r\nContent-Type: x\r\n\r\n0123456789\r\n--XYZ--",
            b"--XYZ\r\nContent-Range: bytes 0-1/50\r\n\r\n01garbage--XYZ--",
            b"--XYZ\r\nContent-Range: bytes 0-1/50\r\n",
            b"--XYZjunk",
        ];
        for body in cases {
            assert!(
                parse_multipart_byteranges(body, "XYZ").is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn assembles_from_whole_blob_stream_and_parts() {
        let blob: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let wanted = [10..20, 990..1000, 500..501];
        let mut whole = RangeAssembler::new(&wanted);
        for (i, chunk) in blob.chunks(7).enumerate() {
            whole.offer(i as u64 * 7, chunk);
        }
        assert!(whole.is_complete());
        assert_eq!(whole.needed_end(), 1000);
        let out = whole.finish().unwrap();
        assert_eq!(out[0], &blob[10..20]);
        assert_eq!(out[1], &blob[990..1000]);
        assert_eq!(out[2], &blob[500..501]);

        // One coalesced part covering two ranges.
        let mut coalesced = RangeAssembler::new(&[10..20, 15..30]);
        coalesced.offer(10, &blob[10..30]);
        let out = coalesced.finish().unwrap();
        assert_eq!(out[1], &blob[15..30]);

        // A gap is reported, not filled with zeros.
        let one = 0..10;
        let mut gap = RangeAssembler::new(std::slice::from_ref(&one));
        gap.offer(0, &blob[0..4]);
        gap.offer(6, &blob[6..10]);
        assert_eq!(gap.finish().unwrap_err(), 0..10);
    }
}
