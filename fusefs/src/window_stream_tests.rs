//! Unit tests of streamed windows, with a source that hands a window's range up one
//! piece per permit the test gives: a read of a window chunk is answered while the rest
//! of the window is still held back (with and without the disk cache in front), and a
//! transfer that breaks midway fails only the reads of chunks not in yet.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use veil_blob::stream::generate;
use veil_blob::{BlobSource, RangeStream};

use crate::disk_cache::DiskCache;
use crate::pipeline::tests::CountingSource;
use crate::pipeline::ChunkReader;
use crate::window::tests::{ino, reader_over, settle, small_files, window};

/// Bytes per piece of a held-back stream.
const PIECE: usize = 4096;

/// A source whose reads of more than `gate_above` bytes hand up one [`PIECE`] per
/// permit (streamed; a whole read when its last piece is let through); a stream that reaches `break_at` breaks there, and from then on every read
/// fails (the registry went away).
struct Trickle {
    inner: CountingSource,
    gate_above: u64,
    permits: tokio::sync::Semaphore,
    /// The blob offset the last held-back piece handed up ended at.
    delivered: AtomicU64,
    break_at: AtomicU64,
    broken: AtomicBool,
}

impl Trickle {
    fn new(blob: Vec<u8>) -> Self {
        Self {
            inner: CountingSource::new(blob),
            gate_above: 32 << 10,
            permits: tokio::sync::Semaphore::new(0),
            delivered: AtomicU64::new(0),
            break_at: AtomicU64::new(u64::MAX),
            broken: AtomicBool::new(false),
        }
    }

    fn unavailable() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "registry went away")
    }
}

impl BlobSource for Trickle {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        if self.broken.load(Ordering::SeqCst) {
            return Box::pin(async { Err(Self::unavailable()) });
        }
        if range.end - range.start > self.gate_above {
            // Whole, it comes when its last piece does.
            let stream = self.stream_range(range.clone());
            return Box::pin(veil_blob::stream::collect(stream, range));
        }
        self.inner.read_range(range)
    }

    fn stream_range(&self, range: Range<u64>) -> RangeStream<'_> {
        if range.end - range.start <= self.gate_above {
            return veil_blob::stream::whole(self, range);
        }
        generate(move |mut out| async move {
            let all = match self.inner.read_range(range.clone()).await {
                Ok(all) => all,
                Err(err) => {
                    out.send(Err(err)).await;
                    return;
                }
            };
            let mut at = range.start;
            for piece in all.chunks(PIECE) {
                if let Ok(permit) = self.permits.acquire().await {
                    permit.forget();
                }
                if at + piece.len() as u64 > self.break_at.load(Ordering::SeqCst) {
                    self.broken.store(true, Ordering::SeqCst);
                    out.send(Err(Self::unavailable())).await;
                    return;
                }
                at += piece.len() as u64;
                self.delivered.store(at, Ordering::SeqCst);
                if !out.send(Ok(Bytes::copy_from_slice(piece))).await {
                    return;
                }
            }
        })
    }
}

/// Waits until `n` reads of `reader` wait for chunks someone else fetches.
async fn until_waiting(reader: &ChunkReader, n: u64) {
    for _ in 0..10_000 {
        if reader.cache().stats().shared_waits >= n {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the reads never started waiting");
}

/// The blob offset of `path`'s (only) chunk.
fn chunk_of(reader: &ChunkReader, path: &str) -> Range<u64> {
    let tree = reader.tree();
    let c = &tree.file_chunks(tree.resolve(path).unwrap())[0];
    c.blob_offset..c.blob_end
}

#[tokio::test]
async fn a_window_chunk_is_served_before_the_window_has_arrived() {
    for keep_plaintext in [true, false] {
        let files = small_files(40, 3000);
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(dir.path(), 64 << 20).unwrap();
        let mut trickle = None;
        let reader = Arc::new(reader_over(
            &files,
            None,
            window(64 << 10, 64 << 10, keep_plaintext),
            |blob| {
                let s = Arc::new(Trickle::new(blob));
                trickle = Some(s.clone());
                match keep_plaintext {
                    true => s,
                    // Nothing is decoded unless waited for: the disk cache keeps it.
                    false => disk.wrap("sha256:blob", s),
                }
            },
        ));
        let trickle = trickle.unwrap();
        reader
            .read(ino(&reader, "d/f000"), 0, 1 << 20)
            .await
            .unwrap();
        assert_eq!(reader.windows.in_flight.load(Ordering::Relaxed), 1);
        // f001 lies at the window's start: waits for the window.
        let next = tokio::spawn({
            let reader = reader.clone();
            let ino = ino(&reader, "d/f001");
            async move { reader.read(ino, 0, 1 << 20).await }
        });
        until_waiting(&reader, 1).await;
        let f001 = chunk_of(&reader, "d/f001");
        assert!(f001.end - f001.start <= PIECE as u64);
        // One piece of the window is let through: enough for f001, not for the window.
        trickle.permits.add_permits(1);
        let got = tokio::time::timeout(Duration::from_secs(30), next)
            .await
            .expect("the read waited for the whole window")
            .unwrap()
            .unwrap();
        assert_eq!(got, files[1].1);
        assert_eq!(
            reader.windows.in_flight.load(Ordering::Relaxed),
            1,
            "the window is still arriving"
        );
        assert!(trickle.delivered.load(Ordering::SeqCst) < chunk_of(&reader, "d/f015").start);
        // The rest comes; every file reads right, the window's chunks from it.
        trickle.permits.add_permits(1000);
        settle(&reader).await;
        for (name, data) in &files {
            assert_eq!(
                &reader.read(ino(&reader, name), 0, 1 << 20).await.unwrap(),
                data
            );
        }
    }
}

#[tokio::test]
async fn a_window_that_breaks_midway_fails_only_the_reads_of_chunks_not_in() {
    let files = small_files(40, 3000);
    let mut trickle = None;
    let reader = Arc::new(reader_over(
        &files,
        None,
        window(64 << 10, 64 << 10, true),
        |blob| {
            let s = Arc::new(Trickle::new(blob));
            trickle = Some(s.clone());
            s
        },
    ));
    let trickle = trickle.unwrap();
    // The transfer breaks before f010's chunk is complete.
    trickle
        .break_at
        .store(chunk_of(&reader, "d/f010").start, Ordering::SeqCst);
    reader
        .read(ino(&reader, "d/f000"), 0, 1 << 20)
        .await
        .unwrap();
    let read = |path: &str| {
        let reader = reader.clone();
        let ino = ino(&reader, path);
        tokio::spawn(async move { reader.read(ino, 0, 1 << 20).await })
    };
    let (near, far) = (read("d/f002"), read("d/f015"));
    until_waiting(&reader, 2).await;
    trickle.permits.add_permits(1000);
    let near = tokio::time::timeout(Duration::from_secs(30), near).await;
    assert_eq!(near.expect("hung").unwrap().unwrap(), files[2].1);
    let far = tokio::time::timeout(Duration::from_secs(30), far).await;
    let err = far
        .expect("hung")
        .unwrap()
        .expect_err("its bytes never came");
    assert_eq!(err.errno(), libc::EIO, "{err}");
    settle(&reader).await;
    // What came before the break stays served (the source is gone now).
    for name in ["d/f001", "d/f003", "d/f005"] {
        let i = name[3..].parse::<usize>().unwrap();
        assert_eq!(
            reader.read(ino(&reader, name), 0, 1 << 20).await.unwrap(),
            files[i].1,
            "{name}"
        );
    }
    assert!(reader
        .read(ino(&reader, "d/f012"), 0, 1 << 20)
        .await
        .is_err());
}
