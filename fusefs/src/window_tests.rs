//! Unit tests of neighbourhood windows: range requests counted at the source (with and
//! without the disk cache in front), explicit reads never waiting for a window, the
//! window cap, and a tampered chunk inside a window.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use veil_blob::BlobSource;

use super::*;
use crate::cache::ChunkCache;
use crate::disk_cache::DiskCache;
use crate::pipeline::tests::{layer, CountingSource};
use crate::pipeline::{ChunkReader, ReaderOptions};
use crate::tree::LayerTree;

/// `n` small files `d/f000`, `d/f001`, … of `size` bytes each (incompressible), one
/// chunk each, back to back in the blob.
pub(crate) fn small_files(n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("d/f{i:03}"), noise(size, i as u64)))
        .collect()
}

/// `len` bytes that do not compress (xorshift64*).
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

pub(crate) fn reader_over(
    files: &[(String, Vec<u8>)],
    tamper: Option<&str>,
    window: WindowOptions,
    source: impl FnOnce(Vec<u8>) -> Arc<dyn BlobSource>,
) -> ChunkReader {
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let (toc, mut blob) = layer(&named, 64 << 10);
    if let Some(name) = tamper {
        let entry = toc.entries.iter().find(|e| e.name == name).unwrap();
        let c = &entry.chunks[0];
        blob[((c.blob_offset + c.blob_end) / 2) as usize] ^= 0x40;
    }
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    ChunkReader::new(
        "sha256:window-test",
        tree,
        source(blob),
        Arc::new(ChunkCache::new(64 << 20)),
        ReaderOptions {
            window,
            ..ReaderOptions::default()
        },
    )
}

pub(crate) fn ino(reader: &ChunkReader, path: &str) -> u64 {
    reader.tree().resolve(path).unwrap().ino
}

/// Waits until no window of `reader` is in flight.
pub(crate) async fn settle(reader: &ChunkReader) {
    for _ in 0..1000 {
        if reader.windows.in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("windows still in flight");
}

pub(crate) fn window(min: u64, max: u64, keep_plaintext: bool) -> WindowOptions {
    WindowOptions {
        min,
        max,
        back_divisor: DEFAULT_WINDOW_BACK_DIVISOR,
        dir: 0,
        keep_plaintext,
        stream: DEFAULT_WINDOW_STREAM,
    }
}

#[tokio::test]
async fn a_cold_read_of_many_small_adjacent_files_costs_few_requests() {
    let files = small_files(64, 3000);
    // Without windows: one request per file.
    let mut sources = Vec::new();
    for options in [WindowOptions::OFF, window(16 << 10, 64 << 10, true)] {
        let mut kept = None;
        let reader = reader_over(&files, None, options, |blob| {
            let s = Arc::new(CountingSource::new(blob));
            kept = Some(s.clone());
            s
        });
        for (name, data) in &files {
            assert_eq!(
                &reader.read(ino(&reader, name), 0, 1 << 20).await.unwrap(),
                data
            );
        }
        settle(&reader).await;
        sources.push((kept.unwrap().requests().len(), reader.stats()));
    }
    let (off, on) = (&sources[0], &sources[1]);
    assert_eq!(off.0, 64, "one request per file without windows");
    assert!(
        on.0 * 4 <= 64,
        "with windows, {} requests for 64 files: {:?}",
        on.0,
        on.1
    );
    assert!(
        on.1.window_requests > 0 && on.1.window_chunks_cached > 0,
        "{:?}",
        on.1
    );
}

#[tokio::test]
async fn through_the_disk_cache_window_bytes_are_kept_as_fetched_and_decoded_when_read() {
    let files = small_files(64, 3000);
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::open(dir.path(), 64 << 20).unwrap();
    let mut inner = None;
    let mut cached = None;
    let reader = reader_over(&files, None, window(16 << 10, 64 << 10, false), |blob| {
        let s = Arc::new(CountingSource::new(blob));
        inner = Some(s.clone());
        let c = disk.wrap("sha256:blob", s);
        cached = Some(c.clone());
        c
    });
    let (inner, cached) = (inner.unwrap(), cached.unwrap());
    // The first read starts a window; once it is in, only the read file is plaintext.
    reader
        .read(ino(&reader, "d/f000"), 0, 1 << 20)
        .await
        .unwrap();
    settle(&reader).await;
    let stats = reader.stats();
    assert_eq!(stats.window_requests, 1, "{stats:?}");
    assert_eq!(stats.window_chunks_cached, 0, "nobody waited: {stats:?}");
    assert!(cached.present_bytes() > 32 << 10, "the window is on disk");
    for (name, data) in &files {
        assert_eq!(
            &reader.read(ino(&reader, name), 0, 1 << 20).await.unwrap(),
            data
        );
    }
    settle(&reader).await;
    let requests = inner.requests().len();
    assert!(
        requests * 4 <= 64,
        "{requests} registry requests for 64 files"
    );
    // Every byte came from the registry once.
    let blob_size = cached.size();
    assert!(cached.traffic().1 <= blob_size, "{:?}", cached.traffic());
}

/// A source that holds back every request longer than `gate_above` bytes until
/// released.
struct Gated {
    inner: CountingSource,
    gate_above: u64,
    open: tokio::sync::Semaphore,
}

impl BlobSource for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            if range.end - range.start > self.gate_above {
                let _permit = self.open.acquire().await;
            }
            self.inner.read_range(range).await
        })
    }
}

#[tokio::test]
async fn an_explicit_read_is_answered_while_a_large_window_is_held_back() {
    // 400 files of 3 KB: a 512 KiB window around the first read cannot cover the last.
    let files = small_files(400, 3000);
    let mut gated = None;
    let reader = Arc::new(reader_over(
        &files,
        None,
        window(64 << 10, 512 << 10, true),
        |blob| {
            let s = Arc::new(Gated {
                inner: CountingSource::new(blob),
                gate_above: 32 << 10,
                open: tokio::sync::Semaphore::new(0),
            });
            gated = Some(s.clone());
            s
        },
    ));
    let gated = gated.unwrap();
    let first = ino(&reader, "d/f000");
    assert_eq!(
        reader.read(first, 0, 1 << 20).await.unwrap(),
        files[0].1,
        "the read itself does not wait for its window"
    );
    assert_eq!(reader.windows.in_flight.load(Ordering::Relaxed), 1);
    // A file far away, while the window is held back: its own request answers it.
    let far = ino(&reader, "d/f399");
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read(far, 0, 1 << 20));
    assert_eq!(read.await.expect("not answered").unwrap(), files[399].1);
    // A file inside the window waits for the window, then gets its bytes.
    let near = ino(&reader, "d/f005");
    let waiting = tokio::spawn({
        let reader = reader.clone();
        async move { reader.read(near, 0, 1 << 20).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "its chunk is on the way in the window"
    );
    gated.open.add_permits(1000);
    assert_eq!(waiting.await.unwrap().unwrap(), files[5].1);
    settle(&reader).await;
    // The near file came from the window: no request of its own.
    let requests = gated.inner.requests();
    assert!(
        !requests.iter().any(|r| r.end - r.start < 32 << 10 && {
            let c = &reader.tree().file_chunks(reader.tree().node(near).unwrap())[0];
            r.start <= c.blob_offset && c.blob_end <= r.end
        }),
        "{requests:?}"
    );
}

#[tokio::test]
async fn window_bytes_stay_within_the_cap() {
    let files = small_files(400, 3000);
    let max = 64 << 10;
    let mut kept = None;
    let reader = reader_over(&files, None, window(16 << 10, max, true), |blob| {
        let s = Arc::new(CountingSource::new(blob));
        kept = Some(s.clone());
        s
    });
    let middle = ino(&reader, "d/f200");
    reader.read(middle, 0, 1 << 20).await.unwrap();
    settle(&reader).await;
    let stats = reader.stats();
    assert_eq!(stats.window_requests, 1);
    assert!(stats.window_bytes > max / 2, "{stats:?}");
    assert!(stats.window_bytes <= max, "{stats:?}");
    // The window reaches both ways (a quarter before the miss).
    let requests = kept.unwrap().requests();
    let own = &reader
        .tree()
        .file_chunks(reader.tree().node(middle).unwrap())[0];
    let window = requests.iter().find(|r| r.end - r.start > 10_000).unwrap();
    assert!(
        window.start < own.blob_offset && window.end > own.blob_end,
        "{window:?}"
    );
}

#[tokio::test]
async fn a_tampered_chunk_inside_a_window_fails_that_file_only() {
    for keep_plaintext in [true, false] {
        let files = small_files(32, 3000);
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(dir.path(), 64 << 20).unwrap();
        let reader = reader_over(
            &files,
            Some("d/f010"),
            window(16 << 10, 128 << 10, keep_plaintext),
            |blob| disk.wrap("sha256:blob", Arc::new(CountingSource::new(blob))),
        );
        // Warm the window around the first file (it covers f010).
        reader
            .read(ino(&reader, "d/f000"), 0, 1 << 20)
            .await
            .unwrap();
        settle(&reader).await;
        assert!(reader.stats().window_requests > 0);
        for (name, data) in &files {
            let got = reader.read(ino(&reader, name), 0, 1 << 20).await;
            if name == "d/f010" {
                let err = got.expect_err("the tampered file must fail");
                assert_eq!(err.errno(), libc::EIO, "{err}");
            } else {
                assert_eq!(
                    &got.unwrap(),
                    data,
                    "{name} (keep_plaintext {keep_plaintext})"
                );
            }
        }
        settle(&reader).await;
        assert!(reader.stats().verify_failures + reader.strikes.lock().unwrap().len() as u64 > 0);
    }
}

#[tokio::test]
async fn windows_stay_out_of_a_running_prefetch_and_shrink_while_busy() {
    let files = small_files(100, 3000);
    let reader = reader_over(&files, None, window(8 << 10, 64 << 10, true), |blob| {
        Arc::new(CountingSource::new(blob))
    });
    let tree = reader.tree().clone();
    let c = |name: &str| tree.file_chunks(tree.resolve(name).unwrap())[0].clone();
    let miss = c("d/f050");
    // Idle: the full window.
    let idle = reader
        .windows
        .plan(&tree, miss.blob_offset..miss.blob_end, None);
    // Busy (a request of the layer in flight): the small one.
    reader
        .windows
        .explicit_in_flight
        .fetch_add(1, Ordering::Relaxed);
    let busy = reader
        .windows
        .plan(&tree, miss.blob_offset..miss.blob_end, None);
    reader
        .windows
        .explicit_in_flight
        .fetch_sub(1, Ordering::Relaxed);
    assert!(
        busy.len() * 4 <= idle.len(),
        "{} vs {}",
        busy.len(),
        idle.len()
    );
    // A prefetch running up to f060: only chunks after it.
    reader.set_prefetching_until(c("d/f060").blob_end);
    let planned = reader
        .windows
        .plan(&tree, miss.blob_offset..miss.blob_end, None);
    assert!(!planned.is_empty());
    assert!(planned
        .iter()
        .all(|&i| tree.chunks()[i].blob_offset >= c("d/f061").blob_offset));
}
