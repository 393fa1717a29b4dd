//! Bytes of a blob fetched ahead, answering the reads that fall in them without
//! another round trip: how bytes fetched before a layer is resolved (its TOC's range,
//! read while the layer below was being resolved) reach its resolution
//! ([`Prefilled`]), and how a TOC that starts before the speculatively read tail is
//! completed with one request for its front part only ([`read_through`]).
//!
//! Nothing here checks the bytes: they are whatever the inner source returned, and are
//! verified by whoever reads them, as any source's bytes are.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::{BlobSource, RangeStream};

/// The bytes of `range` from `source`, where `held` holds the blob's bytes from `at` on:
/// a range inside them is copied from them; one that starts before them and ends inside
/// them costs one request for its part before them; any other goes to `source`.
pub async fn read_through(
    source: &dyn BlobSource,
    at: u64,
    held: &[u8],
    range: Range<u64>,
) -> io::Result<Vec<u8>> {
    let held_end = at + held.len() as u64;
    if range.start >= range.end || range.end > held_end || range.end <= at {
        return source.read_range(range).await;
    }
    let copy = |r: Range<u64>| &held[(r.start - at) as usize..(r.end - at) as usize];
    if range.start >= at {
        return Ok(copy(range).to_vec());
    }
    let mut out = source.read_range(range.start..at).await?;
    if out.len() as u64 != at - range.start {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "source returned {} bytes for the {}-byte range {:?}",
                out.len(),
                at - range.start,
                range.start..at
            ),
        ));
    }
    out.extend_from_slice(copy(at..range.end));
    Ok(out)
}

/// A source with some of its bytes fetched ahead: reads that reach into them are
/// answered from memory (see [`read_through`]) until [`Prefilled::release`] drops them;
/// every other read, and every read after that, goes to the inner source.
pub struct Prefilled {
    inner: Arc<dyn BlobSource>,
    at: u64,
    held: Mutex<Option<Arc<Vec<u8>>>>,
}

impl Prefilled {
    /// `inner`, with `held` its bytes from offset `at` on (bytes said to lie past the
    /// blob's end are not used).
    pub fn new(inner: Arc<dyn BlobSource>, at: u64, held: Arc<Vec<u8>>) -> Self {
        let fits = at
            .checked_add(held.len() as u64)
            .is_some_and(|end| end <= inner.size());
        Self {
            inner,
            at,
            held: Mutex::new(fits.then_some(held)),
        }
    }

    /// Drops the held bytes: from now on every read goes to the inner source.
    pub fn release(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn held(&self) -> Option<Arc<Vec<u8>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl BlobSource for Prefilled {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            match self.held() {
                Some(held) => read_through(self.inner.as_ref(), self.at, &held, range).await,
                None => self.inner.read_range(range).await,
            }
        })
    }

    /// A range reaching into the held bytes is one piece ([`read_through`]); any other
    /// streams from the inner source.
    fn stream_range(&self, range: Range<u64>) -> RangeStream<'_> {
        let held_end = self.held().map(|held| self.at + held.len() as u64);
        match held_end {
            Some(end) if range.start < end && range.end > self.at => {
                crate::stream::whole(self, range)
            }
            _ => self.inner.stream_range(range),
        }
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
    fn reads_in_the_held_bytes_cost_no_request_and_the_rest_one() {
        let source = blob();
        let all = source.0 .0.clone();
        let tail = &all[900..];
        let read = |r: Range<u64>| block_on(read_through(source.as_ref(), 900, tail, r));
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
    fn prefilled_serves_its_bytes_until_released() {
        let source = blob();
        let all = source.0 .0.clone();
        let pre = Prefilled::new(source.clone(), 872, Arc::new(all[872..].to_vec()));
        assert_eq!(pre.size(), 1000);
        assert_eq!(block_on(pre.read_range(872..1000)).unwrap(), &all[872..]);
        assert_eq!(block_on(pre.read_range(700..900)).unwrap(), &all[700..900]);
        assert_eq!(source.1.load(Ordering::Relaxed), 1);
        pre.release();
        assert_eq!(block_on(pre.read_range(950..1000)).unwrap(), &all[950..]);
        assert_eq!(source.1.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn bytes_past_the_end_are_not_used() {
        let source = blob();
        let pre = Prefilled::new(source.clone(), 0, Arc::new(vec![7u8; 2000]));
        let got = block_on(pre.read_range(990..1000)).unwrap();
        assert_eq!(got, &source.0 .0[990..]);
        assert_eq!(source.1.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn discard_drops_the_held_bytes() {
        let source = blob();
        let all = source.0 .0.clone();
        let pre = Prefilled::new(source.clone(), 900, Arc::new(all[900..].to_vec()));
        pre.discard(950..960);
        block_on(pre.read_range(950..960)).unwrap();
        assert_eq!(source.1.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn held_bytes_in_the_middle() {
        let source = blob();
        let all = source.0 .0.clone();
        let pre = Prefilled::new(source.clone(), 100, Arc::new(all[100..200].to_vec()));
        assert_eq!(block_on(pre.read_range(120..180)).unwrap(), &all[120..180]);
        assert_eq!(source.1.load(Ordering::Relaxed), 0);
        // Reaching past the held bytes: the inner source answers all of it.
        assert_eq!(block_on(pre.read_range(150..250)).unwrap(), &all[150..250]);
        assert_eq!(block_on(pre.read_range(50..150)).unwrap(), &all[50..150]);
        assert_eq!(source.1.load(Ordering::Relaxed), 2);
    }
}
