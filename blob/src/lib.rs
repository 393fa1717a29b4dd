//! `veil-blob`: where blob bytes come from, the seam at the bottom of Veil's data path.
//!
//! A [`BlobSource`] returns byte ranges of one layer blob exactly as stored (compressed,
//! and for encrypted layers still encrypted until a decrypting source wraps it). The
//! registry client (`veil-registry`) implements it over HTTP ranges, the disk cache
//! (`veil-fusefs`) wraps one, the layer cipher (`veil-keyprovider`) decrypts one; tests
//! use memory. This crate knows no registry, no FUSE and no keys.

use std::io;
use std::ops::Range;

use futures::future::BoxFuture;

/// Random access to one blob's bytes.
pub trait BlobSource: Send + Sync {
    /// The blob's size in bytes.
    fn size(&self) -> u64;

    /// The bytes in `range` (which lies inside `0..size()`), all of them or an error.
    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>>;

    /// The bytes in `range` failed verification after they were read: a source that keeps
    /// copies (a cache) drops them, so the next read of the range fetches them again.
    /// Sources that keep nothing ignore it.
    fn discard(&self, range: Range<u64>) {
        let _ = range;
    }
}

/// A blob held in memory.
pub struct MemoryBlob(pub Vec<u8>);

impl BlobSource for MemoryBlob {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let result = usize::try_from(range.end)
            .ok()
            .and_then(|end| self.0.get(range.start as usize..end))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("range {range:?} is outside the {}-byte blob", self.0.len()),
                )
            });
        Box::pin(async move { result })
    }
}

/// A byte count in binary units for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
