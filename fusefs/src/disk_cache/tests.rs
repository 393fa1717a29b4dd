//! Tests of the disk cache (`disk_cache/`).

use std::sync::atomic::AtomicUsize;

use super::persist::Sidecar;
use super::*;
use veil_blob::MemoryBlob;

/// A memory blob that records range requests and can be told to fail.
pub(crate) struct Counting {
    blob: MemoryBlob,
    requests: Mutex<Vec<Range<u64>>>,
    fail: AtomicUsize,
    /// A streamed request breaks after this many bytes (u64::MAX: never).
    cut_after: AtomicU64,
}

impl Counting {
    pub(crate) fn new(data: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            blob: MemoryBlob(data),
            requests: Mutex::new(Vec::new()),
            fail: AtomicUsize::new(0),
            cut_after: AtomicU64::new(u64::MAX),
        })
    }

    pub(crate) fn requests(&self) -> Vec<Range<u64>> {
        lock(&self.requests).clone()
    }

    /// The next `n` requests fail (0: none does).
    pub(crate) fn fail(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// Streamed requests break after `n` bytes (u64::MAX: never).
    pub(crate) fn cut_after(&self, n: u64) {
        self.cut_after.store(n, Ordering::SeqCst);
    }

    fn data(&self) -> &[u8] {
        &self.blob.0
    }

    fn slice(&self, r: Range<u64>) -> &[u8] {
        &self.blob.0[r.start as usize..r.end as usize]
    }
}

impl BlobSource for Counting {
    fn size(&self) -> u64 {
        self.blob.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        lock(&self.requests).push(range.clone());
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Box::pin(async { Err(io::Error::other("registry unavailable")) });
        }
        self.blob.read_range(range)
    }

    /// In 1000-byte pieces, broken after [`Counting::cut_after`] bytes.
    fn stream_range(&self, range: Range<u64>) -> veil_blob::RangeStream<'_> {
        lock(&self.requests).push(range.clone());
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Box::pin(futures::stream::once(async {
                Err(io::Error::other("registry unavailable"))
            }));
        }
        let cut = self.cut_after.load(Ordering::SeqCst);
        let bytes = self.slice(range);
        let mut items: Vec<io::Result<bytes::Bytes>> = bytes
            .chunks(1000)
            .scan(0u64, |sent, piece| {
                *sent += piece.len() as u64;
                Some((*sent, piece))
            })
            .take_while(|(sent, _)| *sent <= cut)
            .map(|(_, piece)| Ok(bytes::Bytes::copy_from_slice(piece)))
            .collect();
        if cut < bytes.len() as u64 {
            items.push(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection cut",
            )));
        }
        Box::pin(futures::stream::iter(items))
    }
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

/// Opens the cache at `dir`, waiting a little for a previous instance to go away:
/// its last persist may still be running on a blocking thread, holding it.
pub(crate) fn open_cache(dir: &Path, budget: u64) -> io::Result<Arc<DiskCache>> {
    let mut tries = 0;
    loop {
        match DiskCache::open(dir, budget) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE)
        .collect();
    names.sort();
    names
}

fn data_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{}{DATA_SUFFIX}", stem_of(key)))
}

fn sidecar_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{}{SIDECAR_SUFFIX}", stem_of(key)))
}

#[test]
fn range_set() {
    let mut s = RangeSet::default();
    assert_eq!(s.insert(10..20), 10);
    assert_eq!(s.insert(30..40), 10);
    assert_eq!(s.gaps(0..50), vec![0..10, 20..30, 40..50]);
    assert_eq!(s.gaps(12..18), Vec::<Range<u64>>::new());
    assert_eq!(s.insert(15..35), 10);
    assert_eq!(s.0, vec![10..40]);
    assert_eq!(s.insert(40..45), 5, "adjacent ranges merge");
    assert_eq!(s.0, vec![10..45]);
    assert_eq!(s.remove(20..25), 5);
    assert_eq!(s.0, vec![10..20, 25..45]);
    assert_eq!(s.remove(0..100), 30);
    assert!(s.is_empty());
    assert_eq!(s.insert(5..5), 0);
    assert!(s.contains(5..5));
}

#[test]
fn sidecar_round_trip_and_checks() {
    let sc = Sidecar {
        version: SIDECAR_VERSION,
        key: "sha256:x".into(),
        size: 100,
        ranges: vec![(0, 10), (20, 30)],
    };
    let bytes = sc.encode();
    let (back, set) = Sidecar::decode(&bytes).unwrap();
    assert_eq!(back.key, "sha256:x");
    assert_eq!(set.0, vec![0..10, 20..30]);
    let mut bad = bytes.clone();
    bad[5] ^= 1;
    assert!(Sidecar::decode(&bad).is_err());
    assert!(Sidecar::decode(&bytes[..bytes.len() - 3]).is_err());
    let out_of_range = Sidecar {
        ranges: vec![(0, 101)],
        ..sc
    };
    assert!(Sidecar::decode(&out_of_range.encode()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    let src = Counting::new(pattern(10_000, 1));
    let blob = cache.wrap("sha256:a", src.clone());
    assert_eq!(blob.size(), 10_000);
    assert_eq!(
        blob.read_range(100..2000).await.unwrap(),
        src.slice(100..2000)
    );
    assert_eq!(src.requests(), vec![100..2000]);
    assert_eq!(
        blob.read_range(100..2000).await.unwrap(),
        src.slice(100..2000)
    );
    assert_eq!(
        blob.read_range(500..1000).await.unwrap(),
        src.slice(500..1000)
    );
    assert_eq!(src.requests().len(), 1, "hits do not reach the source");
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (2, 1));
    assert_eq!(s.bytes_from_disk, 1900 + 500);
    assert_eq!(s.bytes_from_inner, 1900);
    assert_eq!((s.bytes, s.blobs), (1900, 1));
    assert_eq!(blob.traffic(), (2400, 1900));
    assert_eq!(blob.present_bytes(), 1900);
    // Empty reads are answered without the cache.
    assert!(blob.read_range(5..5).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_ranges_fetch_only_the_missing_span() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    let src = Counting::new(pattern(1000, 2));
    let blob = cache.wrap("sha256:p", src.clone());
    for r in [100..200, 300..400] {
        assert_eq!(blob.read_range(r.clone()).await.unwrap(), src.slice(r));
    }
    // One gap in the middle: only it is fetched; both sides come from disk.
    assert_eq!(
        blob.read_range(150..350).await.unwrap(),
        src.slice(150..350)
    );
    assert_eq!(src.requests().last(), Some(&(200..300)));
    // Gaps at both ends: the span between them is fetched.
    assert_eq!(blob.read_range(50..450).await.unwrap(), src.slice(50..450));
    assert_eq!(src.requests().last(), Some(&(50..450)));
    // A gap at the start only.
    assert_eq!(blob.read_range(0..300).await.unwrap(), src.slice(0..300));
    assert_eq!(src.requests().last(), Some(&(0..50)));
    assert_eq!(blob.missing(0..1000), vec![450..1000]);
    assert_eq!(blob.read_range(0..450).await.unwrap(), src.slice(0..450));
    assert_eq!(src.requests().len(), 5);
    assert_eq!(cache.stats().bytes, 450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Counting::new(pattern(50_000, 3));
    {
        let cache = open_cache(tmp.path(), 1 << 20).unwrap();
        let blob = cache.wrap("sha256:r", src.clone());
        blob.read_range(1000..9000).await.unwrap();
        blob.read_range(20_000..30_000).await.unwrap();
    }
    assert_eq!(src.requests().len(), 2);
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    assert_eq!(cache.stats().bytes, 18_000);
    let blob = cache.wrap("sha256:r", src.clone());
    assert_eq!(
        blob.read_range(2000..8000).await.unwrap(),
        src.slice(2000..8000)
    );
    assert_eq!(
        blob.read_range(20_000..30_000).await.unwrap(),
        src.slice(20_000..30_000)
    );
    assert_eq!(src.requests().len(), 2, "served from disk after reopening");
    assert_eq!(
        blob.missing(0..50_000),
        vec![0..1000, 9000..20_000, 30_000..50_000]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_state_is_consistent_at_any_moment() {
    // A copy of the directory taken while the cache is open (as after a crash) holds
    // only what was flushed, and it reads back correctly.
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let copy = tmp.path().join("copy");
    let src = Counting::new(pattern(20_000, 4));
    let cache = open_cache(&live, 1 << 20).unwrap();
    let blob = cache.wrap("sha256:c", src.clone());
    blob.read_range(0..5000).await.unwrap();
    cache.flush();
    std::fs::create_dir(&copy).unwrap();
    for name in files(&live) {
        std::fs::copy(live.join(&name), copy.join(&name)).unwrap();
    }
    let copied = open_cache(&copy, 1 << 20).unwrap();
    let src2 = Counting::new(pattern(20_000, 4));
    let blob2 = copied.wrap("sha256:c", src2.clone());
    assert_eq!(blob2.read_range(0..5000).await.unwrap(), src.slice(0..5000));
    assert!(src2.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_sidecar_is_discarded_and_reads_fall_back() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Counting::new(pattern(8000, 5));
    for junk in [b"not a sidecar".to_vec(), Vec::new()] {
        {
            let cache = open_cache(tmp.path(), 1 << 20).unwrap();
            cache
                .wrap("sha256:k", src.clone())
                .read_range(0..4000)
                .await
                .unwrap();
        }
        let sidecar = sidecar_file(tmp.path(), "sha256:k");
        std::fs::write(&sidecar, &junk).unwrap();
        let before = src.requests().len();
        let cache = open_cache(tmp.path(), 1 << 20).unwrap();
        let s = cache.stats();
        assert_eq!((s.bytes, s.errors), (0, 1));
        assert!(files(tmp.path()).is_empty(), "{:?}", files(tmp.path()));
        let blob = cache.wrap("sha256:k", src.clone());
        assert_eq!(blob.read_range(0..4000).await.unwrap(), src.slice(0..4000));
        assert_eq!(src.requests().len(), before + 1);
        assert_eq!(blob.read_range(0..4000).await.unwrap(), src.slice(0..4000));
        assert_eq!(src.requests().len(), before + 1, "cached again");
    }
    // A sidecar whose checksum no longer matches (one flipped byte) goes too.
    {
        let cache = open_cache(tmp.path(), 1 << 20).unwrap();
        cache
            .wrap("sha256:k", src.clone())
            .read_range(0..6000)
            .await
            .unwrap();
    }
    let sidecar = sidecar_file(tmp.path(), "sha256:k");
    let mut bytes = std::fs::read(&sidecar).unwrap();
    let at = bytes.iter().position(|&b| b == b'4').unwrap();
    bytes[at] = b'5';
    std::fs::write(&sidecar, bytes).unwrap();
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    assert_eq!(cache.stats().bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_files_are_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Counting::new(pattern(8000, 6));
    // Wrong size at open: discarded.
    {
        let cache = open_cache(tmp.path(), 1 << 20).unwrap();
        cache
            .wrap("sha256:d", src.clone())
            .read_range(0..8000)
            .await
            .unwrap();
    }
    let data = data_file(tmp.path(), "sha256:d");
    OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(100)
        .unwrap();
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    assert_eq!(cache.stats().bytes, 0);
    // Truncated while open: the read fails on disk, is served by the source, and the
    // blob's entry is dropped.
    let blob = cache.wrap("sha256:d", src.clone());
    blob.read_range(0..8000).await.unwrap();
    OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(100)
        .unwrap();
    let n = src.requests().len();
    assert_eq!(
        blob.read_range(1000..2000).await.unwrap(),
        src.slice(1000..2000)
    );
    assert_eq!(src.requests().len(), n + 1);
    assert!(cache.stats().errors >= 1);
    // A data file deleted behind the cache's back.
    drop(blob);
    std::fs::remove_file(&data).unwrap();
    let blob = cache.wrap("sha256:d", src.clone());
    assert_eq!(blob.read_range(0..8000).await.unwrap(), src.data());
    // Data files without a sidecar are removed at open.
    drop(blob);
    drop(cache);
    std::fs::remove_file(sidecar_file(tmp.path(), "sha256:d")).unwrap();
    let _cache = open_cache(tmp.path(), 1 << 20).unwrap();
    assert!(files(tmp.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_drops_bad_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    let src = Counting::new(pattern(4000, 7));
    let blob = cache.wrap("sha256:f", src.clone());
    blob.read_range(0..4000).await.unwrap();
    // Corrupt the cached copy: the cache cannot tell (the pipeline's digest check
    // does), until told to forget it.
    let file = OpenOptions::new()
        .write(true)
        .open(data_file(tmp.path(), "sha256:f"))
        .unwrap();
    file.write_all_at(b"XXXX", 1000).unwrap();
    assert_ne!(
        blob.read_range(900..1100).await.unwrap(),
        src.slice(900..1100)
    );
    assert_eq!(blob.forget(900..1100), 200);
    assert_eq!(
        blob.read_range(900..1100).await.unwrap(),
        src.slice(900..1100)
    );
    assert_eq!(src.requests().last(), Some(&(900..1100)));
    assert_eq!(blob.read_range(0..4000).await.unwrap(), src.data());
    assert_eq!(cache.invalidate("sha256:f", 0..10), 10);
    assert_eq!(cache.invalidate("sha256:nope", 0..10), 0);
    assert_eq!(cache.stats().bytes_forgotten, 210);
    // What was forgotten stays forgotten after a restart.
    drop(blob);
    drop(cache);
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    assert_eq!(
        cache.wrap("sha256:f", src.clone()).missing(0..4000),
        vec![0..10]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicts_least_recently_used_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), 1000).unwrap();
    let srcs: Vec<_> = (0..3).map(|i| Counting::new(pattern(400, i))).collect();
    let blobs: Vec<_> = srcs
        .iter()
        .enumerate()
        .map(|(i, s)| cache.wrap(&format!("sha256:{i}"), s.clone()))
        .collect();
    blobs[0].read_range(0..400).await.unwrap();
    blobs[1].read_range(0..400).await.unwrap();
    blobs[0].read_range(0..10).await.unwrap(); // 0 is now more recent than 1
    blobs[2].read_range(0..400).await.unwrap();
    let s = cache.stats();
    assert_eq!((s.bytes, s.blobs, s.evictions), (800, 2, 1));
    assert_eq!(blobs[1].present_bytes(), 0);
    assert!(!data_file(tmp.path(), "sha256:1").exists());
    assert!(!sidecar_file(tmp.path(), "sha256:1").exists());
    assert_eq!(blobs[0].present_bytes(), 400);
    // Evicted: back to the source, and now 0 is the oldest.
    assert_eq!(blobs[1].read_range(0..400).await.unwrap(), srcs[1].data());
    assert_eq!(srcs[1].requests().len(), 2);
    assert_eq!(blobs[0].present_bytes(), 0);
    assert!(cache.stats().bytes <= 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_budget_is_kept_in_part() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), 1000).unwrap();
    let src = Counting::new(pattern(5000, 8));
    let blob = cache.wrap("sha256:big", src.clone());
    assert!(!blob.fits());
    blob.read_range(0..800).await.unwrap();
    assert_eq!(
        blob.read_range(800..1600).await.unwrap(),
        src.slice(800..1600)
    );
    let s = cache.stats();
    assert_eq!((s.bytes, s.bytes_rejected), (800, 800));
    assert_eq!(blob.read_range(0..800).await.unwrap(), src.slice(0..800));
    assert_eq!(src.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_with_a_smaller_budget_evicts() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Counting::new(pattern(400, 1));
    let b = Counting::new(pattern(400, 2));
    {
        let cache = open_cache(tmp.path(), 1000).unwrap();
        cache
            .wrap("sha256:a", a.clone())
            .read_range(0..400)
            .await
            .unwrap();
        // Sidecar modification times order the blobs across restarts.
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache
            .wrap("sha256:b", b.clone())
            .read_range(0..400)
            .await
            .unwrap();
    }
    let cache = open_cache(tmp.path(), 500).unwrap();
    let s = cache.stats();
    assert_eq!((s.bytes, s.blobs), (400, 1));
    assert_eq!(cache.wrap("sha256:b", b.clone()).present_bytes(), 400);
    assert_eq!(cache.wrap("sha256:a", a.clone()).present_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_errors_propagate_and_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), 1 << 20).unwrap();
    let src = Counting::new(pattern(1000, 9));
    let blob = cache.wrap("sha256:e", src.clone());
    src.fail.store(1, Ordering::SeqCst);
    assert!(blob.read_range(0..100).await.is_err());
    assert_eq!(blob.present_bytes(), 0);
    assert_eq!(blob.read_range(0..100).await.unwrap(), src.slice(0..100));
    // Out of bounds is the source's business.
    assert!(blob.read_range(900..1001).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_is_kept_out() {
    let tmp = tempfile::tempdir().unwrap();
    let _cache = DiskCache::open(tmp.path(), 1000).unwrap();
    let err = DiskCache::open(tmp.path(), 1000).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_see_the_right_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    // Three blobs of 256 KiB in a 512 KiB budget: reads race with stores and with
    // evictions.
    let cache = open_cache(tmp.path(), 512 << 10).unwrap();
    let srcs: Vec<_> = (0..3)
        .map(|i| Counting::new(pattern(256 << 10, i + 10)))
        .collect();
    let blobs: Vec<_> = srcs
        .iter()
        .enumerate()
        .map(|(i, s)| cache.wrap(&format!("sha256:{i}"), s.clone()))
        .collect();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let blobs = blobs.clone();
        let srcs = srcs.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = t.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            for _ in 0..200 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let which = ((x >> 60) % 3) as usize;
                let start = (x >> 20) % (256 << 10);
                let len = 1 + (x >> 8) % (32 << 10);
                let end = (start + len).min(256 << 10);
                let got = blobs[which].read_range(start..end).await.unwrap();
                assert_eq!(
                    got,
                    srcs[which].slice(start..end),
                    "blob {which} {start}..{end}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = cache.stats();
    assert!(s.bytes <= 512 << 10);
    let present: u64 = blobs.iter().map(|b| b.present_bytes()).sum();
    assert_eq!(s.bytes, present);
    assert!(s.hits > 0);
    assert_eq!(s.errors, 0);
    // What is on disk after all that reads back right after a restart.
    drop(blobs);
    drop(cache);
    let cache = open_cache(tmp.path(), 512 << 10).unwrap();
    for (i, src) in srcs.iter().enumerate() {
        let blob = cache.wrap(&format!("sha256:{i}"), src.clone());
        let n = src.requests().len();
        let gaps = blob.missing(0..256 << 10);
        let mut pos = 0;
        for gap in gaps
            .iter()
            .chain(std::iter::once(&((256 << 10)..(256 << 10))))
        {
            if pos < gap.start {
                assert_eq!(
                    blob.read_range(pos..gap.start).await.unwrap(),
                    src.slice(pos..gap.start)
                );
            }
            pos = gap.end;
        }
        assert_eq!(src.requests().len(), n);
    }
}

#[tokio::test]
async fn a_streamed_read_is_written_as_it_arrives_and_a_break_keeps_what_came() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path(), 1 << 20).unwrap();
    let data = pattern(10_000, 5);
    let inner = Counting::new(data.clone());
    let blob = cache.wrap("sha256:streamed", inner.clone());
    // The transfer breaks after 6000 bytes: the reader gets them, then the error.
    inner.cut_after(6000);
    let mut stream = blob.stream_range(0..10_000);
    let mut got = Vec::new();
    let mut error = None;
    while let Some(piece) = futures::StreamExt::next(&mut stream).await {
        match piece {
            Ok(piece) => {
                // Every piece handed up is on disk already.
                assert!(blob
                    .missing(0..got.len() as u64 + piece.len() as u64)
                    .is_empty());
                got.extend_from_slice(&piece);
            }
            Err(err) => error = Some(err),
        }
    }
    drop(stream);
    assert_eq!(got, &data[..6000]);
    assert_eq!(error.unwrap().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        blob.missing(0..10_000),
        vec![6000..10_000],
        "what came is kept"
    );
    // The next read fetches only the rest.
    inner.cut_after(u64::MAX);
    let all = veil_blob::stream::collect(blob.stream_range(0..10_000), 0..10_000).await;
    assert_eq!(all.unwrap(), data);
    assert_eq!(inner.requests(), vec![0..10_000, 6000..10_000]);
    assert!(blob.held_locally(0..10_000));
    // Bytes on either side of a gap come from disk, the gap in one request.
    blob.forget(3000..4000);
    let all = veil_blob::stream::collect(blob.stream_range(1000..9000), 1000..9000).await;
    assert_eq!(all.unwrap(), &data[1000..9000]);
    assert_eq!(inner.requests().last(), Some(&(3000..4000)));
}
