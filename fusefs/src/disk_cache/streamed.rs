//! [`CachedBlob`]'s streaming reads ([`BlobSource::stream_range`]): what is on disk is
//! handed up from disk, what is missing streams from the inner source and is written to
//! disk piece by piece as it arrives, *before* it is handed up. So whatever a reader has
//! seen is on disk (a later read of it costs no request), and when the inner stream
//! breaks midway, what arrived before the break is kept.
//!
//! As for a whole read, the missing part is fetched in one request (from the first gap
//! to the end of the last), the bytes on disk before and after it are read from disk.

use futures::StreamExt;
use veil_blob::stream::{generate, Exact, Pieces};
use veil_blob::RangeStream;

use super::*;

/// Pieces of the inner stream already in are written to disk together (one trip to
/// the blocking pool) up to this many at a time.
const STORE_BATCH_PIECES: usize = 32;

impl CachedBlob {
    /// `range` as a stream: see the module documentation.
    pub(super) fn stream(&self, range: Range<u64>) -> RangeStream<'_> {
        if range.start >= range.end || range.end > self.entry.size {
            return self.inner.stream_range(range);
        }
        generate(move |mut out| async move {
            if let Err(err) = self.stream_to(range, &mut out).await {
                out.send(Err(err)).await;
            }
        })
    }

    async fn stream_to(&self, range: Range<u64>, out: &mut Pieces) -> io::Result<()> {
        self.cache.touch(&self.entry);
        let gaps = self.missing(range.clone());
        let mut hull = match (gaps.first(), gaps.last()) {
            (Some(first), Some(last)) => first.start..last.end,
            _ => {
                if let Some(data) = self.read_disk(range.clone()).await {
                    bump(&self.cache.counters.hits, 1);
                    self.note_disk(data.len() as u64);
                    out.send(Ok(data.into())).await;
                    return Ok(());
                }
                range.clone()
            }
        };
        bump(&self.cache.counters.misses, 1);
        if hull.start > range.start {
            match self.read_disk(range.start..hull.start).await {
                Some(data) => {
                    self.note_disk(data.len() as u64);
                    if !out.send(Ok(data.into())).await {
                        return Ok(());
                    }
                }
                // Gone meanwhile (evicted): fetched with the rest.
                None => hull.start = range.start,
            }
        }
        self.pump(hull.clone(), Some(out)).await?;
        if hull.end < range.end {
            let suffix = hull.end..range.end;
            match self.read_disk(suffix.clone()).await {
                Some(data) => {
                    self.note_disk(data.len() as u64);
                    out.send(Ok(data.into())).await;
                }
                None => {
                    self.pump(suffix, Some(out)).await?;
                }
            }
        }
        Ok(())
    }

    /// Streams `range` from the inner source onto disk, handing each batch up to `out`
    /// (when given) once it is written; returns the bytes fetched. Stops early (no
    /// error) when `out`'s reader has gone.
    pub(super) async fn pump(
        &self,
        range: Range<u64>,
        mut out: Option<&mut Pieces>,
    ) -> io::Result<u64> {
        let mut stream = Exact::new(self.inner.stream_range(range.clone()), range)
            .ready_chunks(STORE_BATCH_PIECES);
        let mut fetched = 0u64;
        while let Some(batch) = stream.next().await {
            let mut pieces = Vec::with_capacity(batch.len());
            let mut failed = None;
            for item in batch {
                match item {
                    Ok(piece) => pieces.push(piece),
                    Err(err) => {
                        failed = Some(err);
                        break;
                    }
                }
            }
            let at = stream.get_ref().at() - pieces.iter().map(|p| p.len() as u64).sum::<u64>();
            let data: bytes::Bytes = match pieces.len() {
                0 => bytes::Bytes::new(),
                1 => pieces.pop().unwrap_or_default(),
                _ => pieces.concat().into(),
            };
            if !data.is_empty() {
                let n = data.len() as u64;
                fetched += n;
                bump(&self.bytes_from_inner, n);
                bump(&self.cache.counters.bytes_from_inner, n);
                let (cache, entry, kept) = (self.cache.clone(), self.entry.clone(), data.clone());
                blocking(move || cache.store(&entry, at, &kept)).await?;
                if let Some(out) = out.as_deref_mut() {
                    if !out.send(Ok(data)).await {
                        return Ok(fetched);
                    }
                }
            }
            if let Some(err) = failed {
                return Err(err);
            }
        }
        Ok(fetched)
    }
}
