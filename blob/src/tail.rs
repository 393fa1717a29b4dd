//! A blob's last bytes, fetched ahead in one request, answering the reads that fall in
//! them without another round trip: how a layer's footer and TOC (both at the end of
//! the blob) are read in one request instead of two ([`read_through_tail`]), and how
//! bytes fetched before a layer is resolved are handed to its resolution
//! ([`TailPrefilled`]).
//!
//! Nothing here checks the bytes: they are whatever the inner source returned, and are
//! verified by whoever reads them, as any source's bytes are.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::BlobSource;

/// The bytes of `range` from `source`, where `tail` holds the blob's bytes from
/// `tail_start` on: what lies in the tail is copied from it, only what lies before it
/// is read from `source` (one request).
pub async fn read_through_tail(
    source: &dyn BlobSource,
    tail_start: u64,
    tail: &[u8],
    range: Range<u64>,
) -> io::Result<Vec<u8>> {
    let tail_end = tail_start + tail.len() as u64;
    if range.start >= range.end || range.end > tail_end || range.end <= tail_start {
        return source.read_range(range).await;
    }
    let from_tail =
        |r: Range<u64>| &tail[(r.start - tail_start) as usize..(r.end - tail_start) as usize];
    if range.start >= tail_start {
        return Ok(from_tail(range).to_vec());
    }
    let mut out = source.read_range(range.start..tail_start).await?;
    if out.len() as u64 != tail_start - range.start {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "source returned {} bytes for the {}-byte range {:?}",
                out.len(),
                tail_start - range.start,
                range.start..tail_start
            ),
        ));
    }
    out.extend_from_slice(from_tail(tail_start..range.end));
    Ok(out)
}

/// A source whose last bytes were fetched ahead: reads that reach into them are
/// answered from memory (the part before them from the inner source) until
/// [`TailPrefilled::release`] drops them; every other read, and every read after that,
/// goes to the inner source.
pub struct TailPrefilled {
    inner: Arc<dyn BlobSource>,
    tail: Mutex<Option<Arc<Vec<u8>>>>,
}

impl TailPrefilled {
    /// `inner`, with `tail` its last `tail.len()` bytes (a tail longer than the blob is
    /// not used).
    pub fn new(inner: Arc<dyn BlobSource>, tail: Arc<Vec<u8>>) -> Self {
        let usable = tail.len() as u64 <= inner.size();
        Self {
            inner,
            tail: Mutex::new(usable.then_some(tail)),
        }
    }

    /// Drops the tail's bytes: from now on every read goes to the inner source.
    pub fn release(&self) {
        *self.tail.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn tail(&self) -> Option<Arc<Vec<u8>>> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl BlobSource for TailPrefilled {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            match self.tail() {
                Some(tail) => {
                    let start = self.inner.size() - tail.len() as u64;
                    read_through_tail(self.inner.as_ref(), start, &tail, range).await
                }
                None => self.inner.read_range(range).await,
            }
        })
    }

    fn discard(&self, range: Range<u64>) {
        // Bytes that failed verification are not served from memory again.
        self.release();
        self.inner.discard(range);
    }

    fn held_locally(&self, range: Range<u64>) -> bool {
        self.inner.held_locally(range)
    }

    fn fetch_ahead(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<u64>> {
        self.inner.fetch_ahead(range)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::executor::block_on;

    use super::*;
    use crate::MemoryBlob;

    /// A memory blob that counts the reads that reach it.
    struct Counting(MemoryBlob, AtomicUsize);

    impl BlobSource for Counting {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.read_range(range)
        }
    }

    fn blob() -> Arc<Counting> {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        Arc::new(Counting(MemoryBlob(bytes), AtomicUsize::new(0)))
    }

    #[test]
    fn reads_in_the_tail_cost_no_request_and_the_rest_one() {
        let source = blob();
        let all = source.0 .0.clone();
        let tail = &all[900..];
        let read = |r: Range<u64>| block_on(read_through_tail(source.as_ref(), 900, tail, r));
        assert_eq!(read(950..1000).unwrap(), &all[950..1000]);
        assert_eq!(read(900..901).unwrap(), &all[900..901]);
        assert_eq!(source.1.load(Ordering::Relaxed), 0);
        // Straddling: the part before the tail in one request.
        assert_eq!(read(800..950).unwrap(), &all[800..950]);
        assert_eq!(source.1.load(Ordering::Relaxed), 1);
        // Wholly before the tail, empty, or past the end: the source answers.
        assert_eq!(read(10..20).unwrap(), &all[10..20]);
        assert_eq!(source.1.load(Ordering::Relaxed), 2);
        assert!(read(990..1001).is_err());
    }

    #[test]
    fn prefilled_serves_its_tail_until_released() {
        let source = blob();
        let all = source.0 .0.clone();
        let pre = TailPrefilled::new(source.clone(), Arc::new(all[872..].to_vec()));
        assert_eq!(pre.size(), 1000);
        assert_eq!(block_on(pre.read_range(872..1000)).unwrap(), &all[872..]);
        assert_eq!(block_on(pre.read_range(700..900)).unwrap(), &all[700..900]);
        assert_eq!(source.1.load(Ordering::Relaxed), 1);
        pre.release();
        assert_eq!(block_on(pre.read_range(950..1000)).unwrap(), &all[950..]);
        assert_eq!(source.1.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_tail_longer_than_the_blob_is_not_used() {
        let source = blob();
        let pre = TailPrefilled::new(source.clone(), Arc::new(vec![7u8; 2000]));
        let got = block_on(pre.read_range(990..1000)).unwrap();
        assert_eq!(got, &source.0 .0[990..]);
        assert_eq!(source.1.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn discard_drops_the_tail() {
        let source = blob();
        let all = source.0 .0.clone();
        let pre = TailPrefilled::new(source.clone(), Arc::new(all[900..].to_vec()));
        pre.discard(950..960);
        block_on(pre.read_range(950..960)).unwrap();
        assert_eq!(source.1.load(Ordering::Relaxed), 1);
    }
}
