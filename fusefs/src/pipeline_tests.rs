//! Unit tests of [`super::ChunkReader`]: assembly, cache hits, coalescing of adjacent
//! misses (counted at the source), tamper detection and fetch failures.

use std::io::Write;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::*;
use veil_blob::MemoryBlob;
use veil_formats::codec::sha256_digest;
use veil_formats::toc::{Chunk, Compression, Entry, EntryKind, Format, LayerToc};

/// A memory blob that counts and records range requests, and can be told to fail.
pub(crate) struct CountingSource {
    blob: MemoryBlob,
    requests: Mutex<Vec<Range<u64>>>,
    fail: AtomicUsize,
}

impl CountingSource {
    pub(crate) fn new(blob: Vec<u8>) -> Self {
        Self {
            blob: MemoryBlob(blob),
            requests: Mutex::new(Vec::new()),
            fail: AtomicUsize::new(0),
        }
    }

    pub(crate) fn requests(&self) -> Vec<Range<u64>> {
        self.requests.lock().unwrap().clone()
    }
}

impl BlobSource for CountingSource {
    fn size(&self) -> u64 {
        self.blob.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        self.requests.lock().unwrap().push(range.clone());
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Box::pin(async { Err(io::Error::other("registry unavailable")) });
        }
        self.blob.read_range(range)
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Appends `data` to `blob` cut into `chunk_size` chunks, one gzip member each, and
/// returns the regular-file entry `name` that describes them.
pub(crate) fn append_gzip_file(
    blob: &mut Vec<u8>,
    name: &str,
    data: &[u8],
    chunk_size: usize,
) -> Entry {
    let mut entry = Entry::new(name, EntryKind::Reg);
    entry.mode = 0o644;
    entry.size = data.len() as u64;
    for (i, piece) in data.chunks(chunk_size).enumerate() {
        let member = gzip(piece);
        let blob_offset = blob.len() as u64;
        blob.extend_from_slice(&member);
        entry.chunks.push(Chunk {
            file_offset: (i * chunk_size) as u64,
            size: piece.len() as u64,
            blob_offset,
            blob_end: blob.len() as u64,
            inner_offset: 0,
            digest: sha256_digest(piece),
            compression: Compression::Gzip,
        });
    }
    entry
}

/// A layer of files, each cut into `chunk_size` chunks, one gzip member per chunk,
/// laid out back to back in the blob.
pub(crate) fn layer(files: &[(&str, Vec<u8>)], chunk_size: usize) -> (LayerToc, Vec<u8>) {
    let mut blob = Vec::new();
    let entries = files
        .iter()
        .map(|(name, data)| append_gzip_file(&mut blob, name, data, chunk_size))
        .collect();
    let toc = LayerToc {
        format: Format::Estargz,
        entries,
        prefetch_end: None,
        blob_size: blob.len() as u64,
    };
    (toc, blob)
}

pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32) as u8
        })
        .collect()
}

struct Fixture {
    reader: ChunkReader,
    source: Arc<CountingSource>,
}

fn fixture(files: &[(&str, Vec<u8>)], chunk_size: usize, tamper: Option<usize>) -> Fixture {
    fixture_with(files, chunk_size, tamper, ReaderOptions::default())
}

fn fixture_with(
    files: &[(&str, Vec<u8>)],
    chunk_size: usize,
    tamper: Option<usize>,
    options: ReaderOptions,
) -> Fixture {
    let (toc, mut blob) = layer(files, chunk_size);
    if let Some(at) = tamper {
        blob[at] ^= 0x40;
    }
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let source = Arc::new(CountingSource::new(blob));
    let cache = Arc::new(ChunkCache::new(64 << 20));
    let reader = ChunkReader::new("sha256:test", tree, source.clone(), cache, options);
    Fixture { reader, source }
}

fn ino(reader: &ChunkReader, path: &str) -> u64 {
    reader.tree().resolve(path).unwrap().ino
}

#[tokio::test]
async fn reads_assemble_across_chunks_and_clamp_at_eof() {
    let data = pattern(10_000, 3);
    let f = fixture(&[("f", data.clone())], 1024, None);
    let ino = ino(&f.reader, "f");
    for (offset, len) in [
        (0, 10_000),
        (1000, 100),
        (1020, 10),
        (1023, 2049),
        (9_990, 100),
        (5, 0),
    ] {
        let got = f.reader.read(ino, offset, len).await.unwrap();
        let end = (offset + len).min(10_000) as usize;
        assert_eq!(got, &data[offset as usize..end], "read {offset}+{len}");
    }
    assert!(f.reader.read(ino, 10_000, 10).await.unwrap().is_empty());
    assert!(f
        .reader
        .read(ino, u64::MAX, u64::MAX)
        .await
        .unwrap()
        .is_empty());
    let root = f.reader.tree().root().ino;
    assert!(matches!(
        f.reader.read(root, 0, 1).await,
        Err(ReadError::NotAFile(_))
    ));
    assert!(matches!(
        f.reader.read(999, 0, 1).await,
        Err(ReadError::NoSuchInode(999))
    ));
}

#[tokio::test]
async fn adjacent_misses_are_one_request_and_hits_none() {
    let data = pattern(64 * 1024, 1);
    let f = fixture(&[("a", pattern(100, 9)), ("big", data.clone())], 4096, None);
    let big = ino(&f.reader, "big");
    // 16 chunks, all missing, all adjacent: one request.
    assert_eq!(f.reader.read(big, 0, 64 * 1024).await.unwrap(), data);
    assert_eq!(f.source.requests().len(), 1);
    let stats = f.reader.stats();
    assert_eq!(
        (stats.range_requests, stats.chunks_fetched, stats.chunk_hits),
        (1, 16, 0)
    );
    // Everything cached now: no request.
    assert_eq!(
        f.reader.read(big, 5000, 20_000).await.unwrap(),
        &data[5000..25_000]
    );
    assert_eq!(f.source.requests().len(), 1);
    assert_eq!(f.reader.stats().chunk_hits, 6);
    // The blob bytes fetched were only those of "big".
    let blob_of_big = f
        .reader
        .tree()
        .file_chunks(f.reader.tree().resolve("big").unwrap());
    let expected = blob_of_big.last().unwrap().blob_end - blob_of_big[0].blob_offset;
    assert_eq!(f.reader.stats().bytes_fetched, expected);
}

#[tokio::test]
async fn a_cached_chunk_splits_the_misses_into_two_requests() {
    let data = pattern(5 * 1000, 2);
    let f = fixture(&[("f", data.clone())], 1000, None);
    let ino = ino(&f.reader, "f");
    // Warm the middle chunk (2).
    f.reader.read(ino, 2000, 10).await.unwrap();
    assert_eq!(f.source.requests().len(), 1);
    assert_eq!(f.reader.read(ino, 0, 5000).await.unwrap(), data);
    let requests = f.source.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let chunks = f.reader.tree().chunks();
    assert_eq!(requests[1], chunks[0].blob_offset..chunks[1].blob_end);
    assert_eq!(requests[2], chunks[3].blob_offset..chunks[4].blob_end);
}

#[tokio::test]
async fn max_request_caps_coalescing() {
    let data = pattern(8 * 1000, 4);
    let (toc, blob) = layer(&[("f", data.clone())], 1000);
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let source = Arc::new(CountingSource::new(blob));
    let biggest = tree
        .chunks()
        .iter()
        .map(|c| c.blob_end - c.blob_offset)
        .max()
        .unwrap();
    let reader = ChunkReader::new(
        "l",
        tree,
        source.clone(),
        Arc::new(ChunkCache::new(1 << 20)),
        ReaderOptions {
            max_request: biggest * 2 + 1,
            ..ReaderOptions::default()
        },
    );
    let ino = reader.tree().resolve("f").unwrap().ino;
    assert_eq!(reader.read(ino, 0, 8000).await.unwrap(), data);
    let requests = source.requests();
    assert!(requests.len() >= 3, "{requests:?}");
    assert!(requests.iter().all(|r| r.end - r.start <= biggest * 2 + 1));
}

#[tokio::test]
async fn tampered_chunk_fails_and_is_not_cached() {
    let data = pattern(4000, 5);
    // Flip a byte inside the third member's compressed data.
    let (toc, _) = layer(&[("f", data.clone())], 1000);
    let third = &toc.entries[0].chunks[2];
    let at = ((third.blob_offset + third.blob_end) / 2) as usize;
    let f = fixture(&[("f", data.clone())], 1000, Some(at));
    let ino = ino(&f.reader, "f");
    // The first two chunks are fine.
    assert_eq!(f.reader.read(ino, 0, 2000).await.unwrap(), &data[..2000]);
    // Any read touching chunk 2 fails with EIO and never returns bytes: fetched and
    // verified twice, then refused without fetching.
    for (offset, len) in [(2000, 10), (1500, 1000)] {
        let err = f.reader.read(ino, offset, len).await.unwrap_err();
        assert!(matches!(err, ReadError::Verify { chunk: 2, .. }), "{err}");
        assert_eq!(err.errno(), libc::EIO);
    }
    assert_eq!(f.reader.stats().verify_failures, 2);
    let requests = f.source.requests().len();
    for (offset, len) in [(2000, 10), (0, 4000)] {
        let err = f.reader.read(ino, offset, len).await.unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::KnownBad {
                    chunk: 2,
                    attempts: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.errno(), libc::EIO);
    }
    assert_eq!(
        f.source.requests().len(),
        requests,
        "a known-bad chunk is not fetched"
    );
    // Chunk 3 (in the same coalesced request as chunk 2) was still verified and cached.
    assert_eq!(f.reader.read(ino, 3000, 1000).await.unwrap(), &data[3000..]);
}

/// Serves a flipped byte at `at` until its range is discarded, then the right bytes.
struct CorruptUntilDiscarded {
    blob: MemoryBlob,
    at: u64,
    discarded: Mutex<Vec<Range<u64>>>,
}

impl BlobSource for CorruptUntilDiscarded {
    fn size(&self) -> u64 {
        self.blob.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let healed = self
            .discarded
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.contains(&self.at));
        Box::pin(async move {
            let mut bytes = self.blob.read_range(range.clone()).await?;
            if !healed && range.contains(&self.at) {
                bytes[(self.at - range.start) as usize] ^= 0x40;
            }
            Ok(bytes)
        })
    }

    fn discard(&self, range: Range<u64>) {
        self.discarded.lock().unwrap().push(range);
    }
}

#[tokio::test]
async fn a_chunk_that_fails_verification_is_discarded_and_fetched_again() {
    let data = pattern(4000, 9);
    let (toc, blob) = layer(&[("f", data.clone())], 1000);
    let second = toc.entries[0].chunks[1].clone();
    let source = Arc::new(CorruptUntilDiscarded {
        blob: MemoryBlob(blob),
        at: (second.blob_offset + second.blob_end) / 2,
        discarded: Mutex::new(Vec::new()),
    });
    let reader = ChunkReader::new(
        "sha256:test",
        Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap()),
        source.clone(),
        Arc::new(ChunkCache::new(64 << 20)),
        ReaderOptions::default(),
    );
    let ino = ino(&reader, "f");
    let err = reader.read(ino, 1000, 1000).await.unwrap_err();
    assert!(matches!(err, ReadError::Verify { chunk: 1, .. }), "{err}");
    assert_eq!(
        *source.discarded.lock().unwrap(),
        vec![second.blob_offset..second.blob_end]
    );
    // Like a disk cache that dropped its corrupted copy: the next read fetches it again.
    assert_eq!(reader.read(ino, 0, 4000).await.unwrap(), data);
}

#[tokio::test]
async fn fetch_errors_are_eio_and_later_reads_retry() {
    let data = pattern(3000, 6);
    let f = fixture(&[("f", data.clone())], 1000, None);
    let ino = ino(&f.reader, "f");
    f.source.fail.store(1, Ordering::SeqCst);
    let err = f.reader.read(ino, 0, 3000).await.unwrap_err();
    assert!(matches!(err, ReadError::Fetch { .. }), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(f.reader.stats().fetch_failures, 1);
    assert_eq!(f.reader.read(ino, 0, 3000).await.unwrap(), data);
}

#[tokio::test]
async fn short_source_reply_is_an_error() {
    struct Short(MemoryBlob);
    impl BlobSource for Short {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
            Box::pin(async move { Ok(vec![0; (range.end - range.start) as usize / 2]) })
        }
    }
    let (toc, blob) = layer(&[("f", pattern(100, 1))], 50);
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let reader = ChunkReader::new(
        "l",
        tree,
        Arc::new(Short(MemoryBlob(blob))),
        Arc::new(ChunkCache::default()),
        ReaderOptions::default(),
    );
    let ino = reader.tree().resolve("f").unwrap().ino;
    assert!(matches!(
        reader.read(ino, 0, 100).await,
        Err(ReadError::Fetch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_one_chunk_fetch_it_once() {
    /// A source that is slow, so readers overlap.
    struct Slow(CountingSource);
    impl BlobSource for Slow {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                self.0.read_range(range).await
            })
        }
    }
    let data = pattern(100_000, 8);
    let (toc, blob) = layer(&[("f", data.clone())], 100_000);
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let source = Arc::new(Slow(CountingSource::new(blob)));
    let reader = Arc::new(ChunkReader::new(
        "l",
        tree,
        source.clone(),
        Arc::new(ChunkCache::default()),
        ReaderOptions::default(),
    ));
    let ino = reader.tree().resolve("f").unwrap().ino;
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let reader = reader.clone();
            tokio::spawn(async move { reader.read(ino, i * 1000, 1000).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(
            task.await.unwrap().unwrap(),
            &data[i * 1000..(i + 1) * 1000]
        );
    }
    assert_eq!(source.0.requests().len(), 1);
    let stats = reader.stats();
    assert_eq!(stats.chunks_fetched, 1);
    assert_eq!(stats.chunk_waits + stats.chunk_hits, 7);
}

#[tokio::test]
async fn verification_failure_is_logged_with_layer_file_and_chunk() {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let data = pattern(2000, 7);
    let (toc, _) = layer(&[("dir/secret.bin", data.clone())], 1000);
    let second = &toc.entries[0].chunks[1];
    let at = ((second.blob_offset + second.blob_end) / 2) as usize;
    let f = fixture(&[("dir/secret.bin", data.clone())], 1000, Some(at));
    let plain = ino(&f.reader, "dir/secret.bin");
    assert!(f.reader.read(plain, 1000, 10).await.is_err());

    let log = String::from_utf8(std::mem::take(&mut *captured.0.lock().unwrap())).unwrap();
    assert!(log.contains("ERROR"), "{log}");
    assert!(log.contains("layer=sha256:test"), "{log}");
    assert!(log.contains("file=dir/secret.bin"), "{log}");
    assert!(log.contains("chunk=1"), "{log}");

    // Redacted (encrypted layers): the file is named by inode, in the log and the error.
    let options = ReaderOptions {
        redact_paths: true,
        ..ReaderOptions::default()
    };
    let f = fixture_with(&[("dir/secret.bin", data)], 1000, Some(at), options);
    let redacted = ino(&f.reader, "dir/secret.bin");
    let err = f
        .reader
        .read(redacted, 1000, 10)
        .await
        .unwrap_err()
        .to_string();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains(&format!("file=<inode {redacted}>")), "{log}");
    assert!(log.contains("chunk=1"), "{log}");
    assert!(err.contains(&format!("<inode {redacted}>")), "{err}");
    assert!(
        !log.contains("secret") && !err.contains("secret"),
        "{log}\n{err}"
    );
}

#[tokio::test]
async fn zstd_frames_and_inner_offsets_read_too() {
    // One zstd frame holding two chunks back to back (inner offsets 0 and 600).
    let data = pattern(1000, 11);
    let frame = zstd::stream::encode_all(&data[..], 3).unwrap();
    let mut entry = Entry::new("z", EntryKind::Reg);
    entry.size = 1000;
    for (file_offset, size) in [(0u64, 600u64), (600, 400)] {
        entry.chunks.push(Chunk {
            file_offset,
            size,
            blob_offset: 0,
            blob_end: frame.len() as u64,
            inner_offset: file_offset,
            digest: sha256_digest(&data[file_offset as usize..(file_offset + size) as usize]),
            compression: Compression::Zstd,
        });
    }
    let toc = LayerToc {
        format: Format::ZstdChunked,
        entries: vec![entry],
        prefetch_end: None,
        blob_size: frame.len() as u64,
    };
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let source = Arc::new(CountingSource::new(frame));
    let reader = ChunkReader::new(
        "z",
        tree,
        source.clone(),
        Arc::new(ChunkCache::default()),
        ReaderOptions::default(),
    );
    let ino = reader.tree().resolve("z").unwrap().ino;
    assert_eq!(reader.read(ino, 0, 1000).await.unwrap(), data);
    assert_eq!(reader.read(ino, 550, 100).await.unwrap(), &data[550..650]);
    // Both chunks share one frame: one request fetched it.
    assert_eq!(source.requests().len(), 1);
}

#[tokio::test]
async fn a_layer_marked_bad_serves_nothing_not_even_cached_chunks() {
    let data = pattern(4096, 9);
    let f = fixture(&[("f", data.clone())], 1024, None);
    let ino = ino(&f.reader, "f");
    assert_eq!(f.reader.read(ino, 0, 4096).await.unwrap(), data);
    f.reader.mark_bad("HMAC mismatch over the whole blob");
    f.reader.mark_bad("a second reason is ignored");
    let err = f.reader.read(ino, 0, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("HMAC mismatch"), "{err}");
    assert_eq!(
        f.reader.bad_reason(),
        Some("HMAC mismatch over the whole blob")
    );
}
