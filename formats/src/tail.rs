//! The first request for a layer's TOC: the blob's last bytes, footer and (when it fits)
//! the TOC in one round trip; later reads of the TOC take from them what they can.

use std::ops::Range;

use veil_blob::BlobSource;

use crate::estargz::FormatError;

/// The last bytes of a blob, read in one request.
pub(crate) struct Tail {
    start: u64,
    bytes: Vec<u8>,
}

impl Tail {
    /// Reads the last `len` bytes of `source` (all of it when it is smaller).
    pub(crate) async fn read(
        source: &dyn BlobSource,
        len: u64,
        what: &'static str,
    ) -> Result<Self, FormatError> {
        let size = source.size();
        let start = size - len.min(size);
        let bytes = fetch(source, start..size, what).await?;
        Ok(Self { start, bytes })
    }

    /// The bytes read.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes of `range` (inside the blob): from the tail what lies in it, the part
    /// before it in one more request.
    pub(crate) async fn range(
        &self,
        source: &dyn BlobSource,
        range: Range<u64>,
        what: &'static str,
    ) -> Result<Vec<u8>, FormatError> {
        let end = self.start + self.bytes.len() as u64;
        if range.end <= self.start || range.end > end || range.start > range.end {
            return fetch(source, range, what).await;
        }
        let in_tail = |r: Range<u64>| {
            &self.bytes[(r.start - self.start) as usize..(r.end - self.start) as usize]
        };
        if range.start >= self.start {
            return Ok(in_tail(range).to_vec());
        }
        let mut front = fetch(source, range.start..self.start, what).await?;
        front.extend_from_slice(in_tail(self.start..range.end));
        Ok(front)
    }
}

/// Fetch `range` from `source`, checking that all of it came.
pub(crate) async fn fetch(
    source: &dyn BlobSource,
    range: Range<u64>,
    what: &'static str,
) -> Result<Vec<u8>, FormatError> {
    let bytes = source
        .read_range(range.clone())
        .await
        .map_err(|source| FormatError::Read {
            what,
            start: range.start,
            end: range.end,
            source,
        })?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(FormatError::ShortRead {
            what,
            expected: range.end - range.start,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}
