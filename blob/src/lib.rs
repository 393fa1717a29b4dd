//! `veil-blob`: where blob bytes come from, the seam at the bottom of Veil's data path.
//!
//! A [`BlobSource`] returns byte ranges of one layer blob exactly as stored (compressed,
//! and for encrypted layers still encrypted until a decrypting source wraps it). The
//! registry client (`veil-registry`) implements it over HTTP ranges, the disk cache
//! (`veil-fusefs`) wraps one, the layer cipher (`veil-keyprovider`) decrypts one; tests
//! use memory; [`prefilled`] answers reads from bytes fetched ahead; [`stream`] hands a
//! range's bytes up as they arrive ([`BlobSource::stream_range`]). This crate
//! knows no registry, no FUSE and no keys. [`display`] holds
//! the two text helpers every crate of the workspace shares (byte counts, error chains).

pub mod display;
pub mod prefilled;
pub mod stream;

use std::io;
use std::ops::Range;

use futures::future::BoxFuture;

pub use stream::RangeStream;

/// Random access to one blob's bytes.
pub trait BlobSource: Send + Sync {
    /// The blob's size in bytes.
    fn size(&self) -> u64;

    /// The bytes in `range` (which lies inside `0..size()`), all of them or an error.
    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>>;

    /// The bytes in `range` in order as they arrive ([`stream`]): pieces without gap
    /// from `range.start`, or an error after a prefix of them. A source that keeps what
    /// it reads (a disk cache) has kept each piece before handing it up. The default is
    /// one piece, [`BlobSource::read_range`]; sources that can do better (the registry,
    /// the disk cache, the decrypting source) hand up each piece as it comes.
    fn stream_range(&self, range: Range<u64>) -> RangeStream<'_> {
        stream::whole(self, range)
    }

    /// The bytes in `range` failed verification after they were read: a source that keeps
    /// copies (a cache) drops them, so the next read of the range fetches them again.
    /// Sources that keep nothing ignore it.
    fn discard(&self, range: Range<u64>) {
        let _ = range;
    }

    /// Whether every byte of `range` is held locally, so that reading it costs no
    /// network round trip (a disk cache that has it). Sources that keep nothing say no.
    fn held_locally(&self, range: Range<u64>) -> bool {
        let _ = range;
        false
    }

    /// Fetches `range` into the source's local copy without handing the bytes up (a
    /// disk cache stores them as fetched); returns how many came from further down.
    /// Sources that keep nothing read the range and drop it.
    fn fetch_ahead(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<u64>> {
        Box::pin(async move { self.read_range(range).await.map(|b| b.len() as u64) })
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
