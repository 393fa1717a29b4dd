//! Random access to a streamed layer's uncompressed tar stream.
//!
//! [`StreamedSource`] is a [`BlobSource`] whose "blob" is the layer's uncompressed tar
//! stream, the coordinate system of a streamed layer's chunks. A range is produced by
//! decompressing the (decrypted) compressed blob from the nearest restart point at or
//! before it; a few decompressors are kept where the last reads ended ("cursors"), so
//! reading a file front to back decompresses every byte once instead of once per chunk
//! from the restart point. Uncompressed tar streams need no decompression: a range is
//! the same range of the blob. The source does not verify: the chunk pipeline checks
//! every chunk against the digest recorded while the layer streamed.
//!
//! Decompression runs on tokio's blocking pool; compressed bytes are read from the
//! blob source there with `Handle::block_on`, a piece at a time ([`PIECE`]).

use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::runtime::Handle;

use super::{gzip_index, zstd_index, RestartPoints, StreamIndex};
use veil_blob::BlobSource;

/// Compressed bytes read from the blob source at a time.
pub const PIECE: u64 = 256 << 10;

/// Decompressors kept where reads ended, per layer.
pub const MAX_CURSORS: usize = 4;

/// A synchronous reader of `source` from `pos` to `end`, for use on a blocking thread.
pub struct BlobReader {
    source: Arc<dyn BlobSource>,
    handle: Handle,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_pos: usize,
}

impl BlobReader {
    /// Reads `source` from `pos` to its end, fetching through `handle`'s runtime.
    pub fn new(source: Arc<dyn BlobSource>, handle: Handle, pos: u64) -> Self {
        let end = source.size();
        Self {
            source,
            handle,
            pos,
            end,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf_pos == self.buf.len() {
            if self.pos >= self.end || out.is_empty() {
                return Ok(0);
            }
            let to = (self.pos + PIECE).min(self.end);
            let bytes = self.handle.block_on(self.source.read_range(self.pos..to))?;
            if bytes.len() as u64 != to - self.pos {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "source returned {} bytes for range {}..{to}",
                        bytes.len(),
                        self.pos
                    ),
                ));
            }
            self.pos = to;
            self.buf = bytes;
            self.buf_pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
}

/// A decompressor positioned at `pos` of the uncompressed stream.
struct Cursor {
    pos: u64,
    reader: Box<dyn Read + Send>,
}

struct Inner {
    compressed: Arc<dyn BlobSource>,
    index: StreamIndex,
    cursors: Mutex<Vec<Cursor>>,
}

/// The uncompressed tar stream of a streamed layer, as a [`BlobSource`].
#[derive(Clone)]
pub struct StreamedSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StreamedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedSource")
            .field("index", &self.inner.index)
            .finish()
    }
}

impl StreamedSource {
    /// The uncompressed stream `index` describes, decompressed from `compressed` (the
    /// layer blob as compressed, already decrypted).
    pub fn new(compressed: Arc<dyn BlobSource>, index: StreamIndex) -> Self {
        Self {
            inner: Arc::new(Inner {
                compressed,
                index,
                cursors: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The index it reads by.
    pub fn index(&self) -> &StreamIndex {
        &self.inner.index
    }
}

impl Inner {
    /// Output offset of the restart point nearest at or before `offset`.
    fn restart_before(&self, offset: u64) -> u64 {
        match &self.index.points {
            RestartPoints::Plain => offset,
            RestartPoints::Gzip(points) => {
                let i = points.partition_point(|p| p.out_offset <= offset);
                i.checked_sub(1).map_or(0, |i| points[i].out_offset)
            }
            RestartPoints::Zstd(points) => {
                let i = points.partition_point(|p| p.out_offset <= offset);
                i.checked_sub(1).map_or(0, |i| points[i].out_offset)
            }
        }
    }

    /// A decompressor at the restart point nearest at or before `offset`.
    fn open(&self, offset: u64, handle: &Handle) -> io::Result<Cursor> {
        let blob = |at: u64| BlobReader::new(self.compressed.clone(), handle.clone(), at);
        Ok(match &self.index.points {
            RestartPoints::Plain => Cursor {
                pos: offset,
                reader: Box::new(blob(offset)),
            },
            RestartPoints::Gzip(points) => {
                let i = points.partition_point(|p| p.out_offset <= offset);
                let point = i
                    .checked_sub(1)
                    .and_then(|i| points.get(i))
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "gzip index has no start")
                    })?;
                Cursor {
                    pos: point.out_offset,
                    reader: Box::new(gzip_index::GzipDecoder::resume(
                        blob(point.in_offset),
                        point,
                    )),
                }
            }
            RestartPoints::Zstd(points) => {
                let i = points.partition_point(|p| p.out_offset <= offset);
                let point = i
                    .checked_sub(1)
                    .and_then(|i| points.get(i))
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "zstd index has no start")
                    })?;
                Cursor {
                    pos: point.out_offset,
                    reader: zstd_index::resume(blob(point.in_offset))?,
                }
            }
        })
    }

    /// A kept cursor at or before `offset` that is closer to it than any restart point.
    fn take_cursor(&self, offset: u64) -> Option<Cursor> {
        let restart = self.restart_before(offset);
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let best = cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pos <= offset && c.pos >= restart)
            .max_by_key(|(_, c)| c.pos)
            .map(|(i, _)| i)?;
        Some(cursors.remove(best))
    }

    fn keep(&self, cursor: Cursor) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        cursors.push(cursor);
        if cursors.len() > MAX_CURSORS {
            cursors.remove(0);
        }
    }

    fn read_blocking(&self, range: Range<u64>, handle: Handle) -> io::Result<Vec<u8>> {
        let mut cursor = match self.take_cursor(range.start) {
            Some(c) => c,
            None => self.open(range.start, &handle)?,
        };
        let skip = range.start - cursor.pos;
        let skipped = io::copy(&mut (&mut cursor.reader).take(skip), &mut io::sink())?;
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let mut out = vec![0u8; len];
        if skipped < skip {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("layer stream ends before offset {}", range.start),
            ));
        }
        cursor.reader.read_exact(&mut out)?;
        cursor.pos = range.end;
        self.keep(cursor);
        Ok(out)
    }
}

impl BlobSource for StreamedSource {
    fn size(&self) -> u64 {
        self.inner.index.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            if range.start > range.end || range.end > self.inner.index.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "range {range:?} is outside the {}-byte layer stream",
                        self.inner.index.size
                    ),
                ));
            }
            if let RestartPoints::Plain = self.inner.index.points {
                // An uncompressed tar stream is its own index.
                return self.inner.compressed.read_range(range).await;
            }
            let inner = self.inner.clone();
            let handle = Handle::current();
            tokio::task::spawn_blocking(move || inner.read_blocking(range, handle))
                .await
                .map_err(|e| io::Error::other(format!("decompression task failed: {e}")))?
        })
    }
}
