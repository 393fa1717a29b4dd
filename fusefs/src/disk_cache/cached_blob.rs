//! [`CachedBlob`]: a blob source with the disk cache in front of it, answering from disk
//! what is present and fetching (and recording) the rest.

use super::*;

/// A blob source with the disk cache in front; see [`DiskCache::wrap`].
pub struct CachedBlob {
    pub(super) cache: Arc<DiskCache>,
    pub(super) entry: Arc<BlobEntry>,
    pub(super) inner: Arc<dyn BlobSource>,
    pub(super) bytes_from_disk: AtomicU64,
    pub(super) bytes_from_inner: AtomicU64,
}

impl std::fmt::Debug for CachedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedBlob")
            .field("key", &self.entry.key)
            .field("size", &self.entry.size)
            .field("present", &self.present_bytes())
            .finish()
    }
}

impl CachedBlob {
    /// The blob's key (digest).
    pub fn key(&self) -> &str {
        &self.entry.key
    }

    /// The cache it belongs to.
    pub fn cache(&self) -> &Arc<DiskCache> {
        &self.cache
    }

    /// The source behind the cache.
    pub fn inner(&self) -> &Arc<dyn BlobSource> {
        &self.inner
    }

    /// Bytes of this blob held on disk now.
    pub fn present_bytes(&self) -> u64 {
        lock(&self.entry.state).present.total()
    }

    /// The parts of `range` not on disk.
    pub fn missing(&self, range: Range<u64>) -> Vec<Range<u64>> {
        lock(&self.entry.state).present.gaps(range)
    }

    /// Whether the whole blob could be held within the cache's budget.
    pub fn fits(&self) -> bool {
        self.entry.size <= self.cache.budget
    }

    /// Counts `n` bytes another wrapper of the same blob fetched from the inner source
    /// on this blob's behalf (a look-ahead read before this wrapper existed), so that
    /// [`CachedBlob::traffic`] tells all the registry sent for it.
    pub fn count_fetched_elsewhere(&self, n: u64) {
        bump(&self.bytes_from_inner, n);
    }

    /// Bytes of this blob answered from disk, and fetched from the inner source.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.bytes_from_disk.load(Ordering::Relaxed),
            self.bytes_from_inner.load(Ordering::Relaxed),
        )
    }

    /// Drops `range` from the cache, so that the next read of it goes to the inner
    /// source: call it when bytes read from here failed verification. Returns the bytes
    /// dropped.
    pub fn forget(&self, range: Range<u64>) -> u64 {
        let removed = self.cache.forget(&self.entry, range.clone());
        if removed > 0 {
            tracing::warn!(
                blob = %self.entry.key,
                range = ?range,
                bytes = removed,
                "disk cache: dropped bytes that failed verification"
            );
        }
        removed
    }

    /// Writes this blob's pending range record now (blocking).
    pub fn flush(&self) {
        let _ = self.cache.persist(&self.entry);
    }

    /// Fetches what of `range` is not on disk yet (from the first gap to the end of the
    /// last) and stores it as it arrives, without reading anything back; returns the
    /// bytes fetched.
    pub async fn warm(&self, range: Range<u64>) -> io::Result<u64> {
        let range = range.start..range.end.min(self.entry.size);
        let gaps = self.missing(range);
        let (Some(first), Some(last)) = (gaps.first(), gaps.last()) else {
            return Ok(0);
        };
        // Streamed onto disk: memory stays bounded, and what arrived before a broken
        // transfer is kept.
        self.pump(first.start..last.end, None).await
    }

    pub(super) fn note_disk(&self, n: u64) {
        bump(&self.bytes_from_disk, n);
        bump(&self.cache.counters.bytes_from_disk, n);
    }

    /// Reads from the inner source, checking the length.
    async fn fetch(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        let data = self.inner.read_range(range.clone()).await?;
        bump(&self.bytes_from_inner, data.len() as u64);
        bump(&self.cache.counters.bytes_from_inner, data.len() as u64);
        if data.len() as u64 != range.end - range.start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "source returned {} bytes for the {}-byte range {range:?}",
                    data.len(),
                    range.end - range.start
                ),
            ));
        }
        Ok(data)
    }

    /// Reads `range` from disk if all present, dropping it from the cache on a disk
    /// error. `None`: not (or no longer) on disk.
    pub(super) async fn read_disk(&self, range: Range<u64>) -> Option<Vec<u8>> {
        let (cache, entry) = (self.cache.clone(), self.entry.clone());
        let r = range.clone();
        let result = blocking(move || cache.read_present(&entry, r))
            .await
            .and_then(|r| r);
        match result {
            Ok(found) => found,
            Err(err) => {
                self.disk_failed(range, &err);
                None
            }
        }
    }

    /// Logs a failed disk read of `range` and drops it from the cache: the whole blob
    /// when its file is missing or has the wrong size.
    fn disk_failed(&self, range: Range<u64>, err: &io::Error) {
        tracing::warn!(
            blob = %self.entry.key,
            range = ?range,
            error = %err,
            "disk cache: reading failed; fetching from the network instead"
        );
        self.cache.error();
        let whole = matches!(
            err.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::InvalidData
        );
        let drop = if whole { 0..self.entry.size } else { range };
        self.cache.forget(&self.entry, drop);
    }

    async fn read(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        if range.start >= range.end || range.end > self.entry.size {
            // Empty or out of bounds: the inner source answers (or refuses) as it would.
            return self.inner.read_range(range).await;
        }
        self.cache.touch(&self.entry);
        let counters = &self.cache.counters;
        let gaps = self.missing(range.clone());
        let fetch_range = match (gaps.first(), gaps.last()) {
            (Some(first), Some(last)) => first.start..last.end,
            _ => match self.read_disk(range.clone()).await {
                Some(data) => {
                    bump(&counters.hits, 1);
                    self.note_disk(data.len() as u64);
                    return Ok(data);
                }
                None => range.clone(),
            },
        };
        bump(&counters.misses, 1);
        let data = self.fetch(fetch_range.clone()).await?;
        let (cache, entry) = (self.cache.clone(), self.entry.clone());
        let at = fetch_range.start;
        let (prefix, suffix) = (range.start..fetch_range.start, fetch_range.end..range.end);
        // Store, and read what was present on either side, in one trip to the pool.
        let (data, edges) = blocking(move || {
            cache.store(&entry, at, &data);
            let edges = if prefix.is_empty() && suffix.is_empty() {
                Ok(Some((Vec::new(), Vec::new())))
            } else {
                cache
                    .read_present(&entry, prefix)
                    .and_then(|p| Ok(p.zip(cache.read_present(&entry, suffix)?)))
            };
            (data, edges)
        })
        .await?;
        match edges {
            Ok(Some((prefix, suffix))) => {
                self.note_disk((prefix.len() + suffix.len()) as u64);
                if prefix.is_empty() && suffix.is_empty() {
                    return Ok(data);
                }
                let mut out = prefix;
                out.extend_from_slice(&data);
                out.extend_from_slice(&suffix);
                Ok(out)
            }
            result => {
                if let Err(err) = result {
                    self.disk_failed(range.clone(), &err);
                }
                // The rest went away meanwhile (evicted): fetch the whole range.
                let data = self.fetch(range.clone()).await?;
                let (cache, entry) = (self.cache.clone(), self.entry.clone());
                let at = range.start;
                blocking(move || {
                    cache.store(&entry, at, &data);
                    data
                })
                .await
            }
        }
    }
}

impl BlobSource for CachedBlob {
    fn discard(&self, range: Range<u64>) {
        self.forget(range);
    }

    fn held_locally(&self, range: Range<u64>) -> bool {
        self.missing(range).is_empty()
    }

    fn fetch_ahead(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<u64>> {
        Box::pin(self.warm(range))
    }

    fn size(&self) -> u64 {
        self.entry.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(self.read(range))
    }

    /// Written to disk as it arrives, each piece before it is handed up
    /// ([`super::streamed`]).
    fn stream_range(&self, range: Range<u64>) -> veil_blob::RangeStream<'_> {
        self.stream(range)
    }
}

impl Drop for CachedBlob {
    fn drop(&mut self) {
        if let Err(err) = self.cache.persist(&self.entry) {
            tracing::debug!(blob = %self.entry.key, error = %err, "disk cache: final persist failed");
        }
        // Close the data file unless another wrapper of the same blob is using it.
        let index = lock(&self.cache.index);
        if Arc::strong_count(&self.entry) <= 2 {
            lock(&self.entry.state).file = None;
        }
        drop(index);
    }
}
