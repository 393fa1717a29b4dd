//! Tests of `prefetch.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::cache::ChunkCache;
use crate::disk_cache::tests::{open_cache, pattern, Counting};
use crate::disk_cache::{CachedBlob, DiskCache};
use crate::pipeline::tests::append_gzip_file;
use crate::pipeline::ReaderOptions;
use crate::tree::{LayerTree, ROOT_INO};
use veil_formats::toc::{Compression, Format, LayerToc};

/// A layer of files cut into `chunk_size` chunks, one gzip member each, with 100
/// bytes of filler (a tar header, say) before each file; `prefetch_end` after the
/// first `prioritized` files.
fn layer(files: &[(&str, Vec<u8>)], chunk_size: usize, prioritized: usize) -> (LayerToc, Vec<u8>) {
    let mut blob = Vec::new();
    let mut entries = Vec::new();
    let mut prefetch_end = None;
    for (n, (name, data)) in files.iter().enumerate() {
        if n == prioritized {
            prefetch_end = Some(blob.len() as u64);
        }
        blob.extend_from_slice(&[0x55; 100]);
        entries.push(append_gzip_file(&mut blob, name, data, chunk_size));
    }
    blob.extend_from_slice(&[0x55; 1000]); // the TOC, say
    let toc = LayerToc {
        format: Format::Estargz,
        entries,
        prefetch_end,
        blob_size: blob.len() as u64,
    };
    (toc, blob)
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("bin", pattern(50_000, 1)),
        ("lib", pattern(30_000, 2)),
        ("data", pattern(40_000, 3)),
    ]
}

struct Fixture {
    reader: ChunkReader,
    tree: Arc<LayerTree>,
    toc: LayerToc,
    counting: Arc<Counting>,
    cached: Option<Arc<CachedBlob>>,
    _dir: tempfile::TempDir,
    _disk: Option<Arc<DiskCache>>,
}

fn fixture(disk: bool, plaintext_budget: u64, tamper: Option<usize>) -> Fixture {
    let (toc, mut blob) = layer(&files(), 8192, 2);
    if let Some(at) = tamper {
        blob[at] ^= 0x40;
    }
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let counting = Counting::new(blob);
    let dir = tempfile::tempdir().unwrap();
    let (disk, cached, source): (_, _, Arc<dyn BlobSource>) = if disk {
        let disk = open_cache(dir.path(), 1 << 20).unwrap();
        let cached = disk.wrap("sha256:layer", counting.clone());
        (Some(disk), Some(cached.clone()), cached)
    } else {
        (None, None, counting.clone())
    };
    let reader = ChunkReader::new(
        "sha256:layer",
        tree.clone(),
        source,
        Arc::new(ChunkCache::new(plaintext_budget)),
        ReaderOptions::default(),
    );
    Fixture {
        reader,
        tree,
        toc,
        counting,
        cached,
        _dir: dir,
        _disk: disk,
    }
}

impl Fixture {
    fn source(&self) -> &dyn BlobSource {
        match &self.cached {
            Some(c) => c.as_ref(),
            None => self.counting.as_ref(),
        }
    }

    async fn read_file(&self, name: &str) -> Vec<u8> {
        let node = self.tree.lookup(ROOT_INO, name).unwrap();
        self.reader.read(node.ino, 0, node.size).await.unwrap()
    }
}

#[test]
fn plan_coalesces_without_splitting_chunks() {
    let chunk = |blob_offset, blob_end| Chunk {
        file_offset: 0,
        size: 1,
        blob_offset,
        blob_end,
        inner_offset: 0,
        digest: String::new(),
        compression: Compression::Gzip,
    };
    let chunks = vec![
        chunk(0, 100),
        chunk(100, 250),
        chunk(100, 250), // a second chunk in the same member
        chunk(300, 400),
        chunk(10_000_000, 10_000_100), // far away
    ];
    let order: Vec<(usize, bool)> = (0..5).map(|i| (i, true)).collect();
    let pieces = plan(&chunks, &order, 300);
    let ranges: Vec<_> = pieces.iter().map(|p| p.range.clone()).collect();
    assert_eq!(ranges, vec![0..250, 300..400, 10_000_000..10_000_100]);
    assert_eq!(pieces[0].chunks, vec![0, 1, 2]);
    let pieces = plan(&chunks, &order, 1 << 20);
    assert_eq!(pieces[0].range, 0..400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prioritized_reads_need_no_network_after_prefetch() {
    let f = fixture(true, 64 << 20, None);
    let end = f.toc.prefetch_end.unwrap();
    let options = PrefetchOptions {
        fetch_all: true,
        ..PrefetchOptions::default()
    };
    let report = prefetch(&f.reader, f.source(), end, &options)
        .await
        .unwrap();
    assert_eq!(report.ranges, 1, "{report:?}");
    assert_eq!(report.chunks_cached, 7 + 4);
    assert_eq!(report.plaintext_bytes, 80_000);
    assert!(report.verify_failures.is_empty());
    let requests = f.counting.requests();
    assert!(requests.iter().all(|r| r.end <= end), "{requests:?}");
    for (name, data) in &files()[..2] {
        assert_eq!(&f.read_file(name).await, data);
    }
    assert_eq!(
        f.counting.requests(),
        requests,
        "no request for prioritized files"
    );
    let stats = f.reader.stats();
    assert_eq!((stats.range_requests, stats.chunk_hits), (0, 11));
    // The rest of the layer is fetched on demand as usual.
    assert_eq!(f.read_file("data").await, files()[2].1);
    assert_eq!(f.counting.requests().len(), requests.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_warms_the_disk_cache_beyond_the_plaintext_limit() {
    let f = fixture(true, 64 << 20, None);
    let end = f.toc.prefetch_end.unwrap();
    let options = PrefetchOptions {
        fetch_all: true,
        plaintext_limit: Some(20_000),
        range_size: 20_000,
        ..PrefetchOptions::default()
    };
    let report = prefetch(&f.reader, f.source(), end, &options)
        .await
        .unwrap();
    assert_eq!(report.chunks_cached, 2);
    assert_eq!(report.chunks_skipped, 9);
    assert!(report.ranges > 1);
    let n = f.counting.requests().len();
    for (name, data) in &files()[..2] {
        assert_eq!(&f.read_file(name).await, data);
    }
    assert_eq!(f.counting.requests().len(), n, "served by the disk cache");
    assert!(f.reader.stats().range_requests > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_disk_cache_only_what_fits_is_fetched() {
    let f = fixture(false, 64 << 20, None);
    let end = f.toc.prefetch_end.unwrap();
    let options = PrefetchOptions {
        plaintext_limit: Some(50_000),
        ..PrefetchOptions::default()
    };
    let report = prefetch(&f.reader, f.source(), end, &options)
        .await
        .unwrap();
    assert_eq!((report.chunks_cached, report.chunks_skipped), (7, 4));
    let bin_end = f.toc.entries[0].chunks.last().unwrap().blob_end;
    assert_eq!(f.counting.requests(), vec![100..bin_end]);
    assert_eq!(f.read_file("bin").await, files()[0].1);
    assert_eq!(f.counting.requests().len(), 1);
    // Default limit: half the plaintext budget.
    let f = fixture(false, 100_000, None);
    let report = prefetch(&f.reader, f.source(), end, &PrefetchOptions::default())
        .await
        .unwrap();
    assert_eq!(report.plaintext_bytes, 50_000);
    // Nothing marked: nothing to do.
    let report = prefetch(&f.reader, f.source(), 0, &PrefetchOptions::default())
        .await
        .unwrap();
    assert_eq!(report, PrefetchReport::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunks_are_reported_not_cached() {
    let (toc, _) = layer(&files(), 8192, 2);
    let bad = toc.entries[1].chunks[1].clone();
    let f = fixture(true, 64 << 20, Some(bad.blob_offset as usize + 20));
    let options = PrefetchOptions {
        fetch_all: true,
        ..PrefetchOptions::default()
    };
    let end = f.toc.prefetch_end.unwrap();
    let report = prefetch(&f.reader, f.source(), end, &options)
        .await
        .unwrap();
    assert_eq!(report.verify_failures, vec![bad.blob_offset..bad.blob_end]);
    assert_eq!(report.chunks_cached, 10);
    let cached = f.cached.as_ref().unwrap();
    assert_eq!(
        cached.forget(bad.blob_offset..bad.blob_end),
        bad.blob_end - bad.blob_offset
    );
    let node = f.tree.lookup(ROOT_INO, "lib").unwrap();
    assert!(f.reader.read(node.ino, 0, node.size).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_errors_are_returned() {
    let f = fixture(true, 64 << 20, None);
    f.counting_fail(1);
    let end = f.toc.prefetch_end.unwrap();
    assert!(
        prefetch(&f.reader, f.source(), end, &PrefetchOptions::default())
            .await
            .is_err()
    );
}

impl Fixture {
    fn counting_fail(&self, n: usize) {
        self.counting.fail(n);
    }
}

/// A source that holds back every request longer than `gate_above` bytes starting at or
/// after `gate_from` until released, and then fails it if told to. With `split`, such a
/// request streamed hands up its first half at once and holds back only the rest.
struct Gated {
    inner: Arc<Counting>,
    gate_above: u64,
    gate_from: u64,
    open: tokio::sync::Semaphore,
    fail: std::sync::atomic::AtomicBool,
    split: std::sync::atomic::AtomicBool,
    /// Every range asked for, when asked (held back or not).
    asked: std::sync::Mutex<Vec<Range<u64>>>,
}

impl Gated {
    fn new(inner: Arc<Counting>, gate_above: u64, gate_from: u64) -> Arc<Self> {
        Arc::new(Self {
            inner,
            gate_above,
            gate_from,
            open: tokio::sync::Semaphore::new(0),
            fail: Default::default(),
            split: Default::default(),
            asked: Default::default(),
        })
    }
}

impl BlobSource for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_range(&self, range: Range<u64>) -> futures::future::BoxFuture<'_, io::Result<Vec<u8>>> {
        self.asked.lock().unwrap().push(range.clone());
        Box::pin(async move {
            if range.end - range.start > self.gate_above && range.start >= self.gate_from {
                let _permit = self.open.acquire().await;
                if self.fail.load(Ordering::SeqCst) {
                    return Err(io::Error::other("registry unavailable"));
                }
            }
            self.inner.read_range(range).await
        })
    }

    fn stream_range(&self, range: Range<u64>) -> veil_blob::RangeStream<'_> {
        let gated = range.end - range.start > self.gate_above && range.start >= self.gate_from;
        if !(gated && self.split.load(Ordering::SeqCst)) {
            return veil_blob::stream::whole(self, range);
        }
        self.asked.lock().unwrap().push(range.clone());
        veil_blob::stream::generate(move |mut out| async move {
            let all = match self.inner.read_range(range).await {
                Ok(all) => all,
                Err(err) => {
                    out.send(Err(err)).await;
                    return;
                }
            };
            let (front, rest) = all.split_at(all.len() / 2);
            if !out.send(Ok(bytes::Bytes::copy_from_slice(front))).await {
                return;
            }
            let _permit = self.open.acquire().await;
            if self.fail.load(Ordering::SeqCst) {
                out.send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "registry went away",
                )))
                .await;
                return;
            }
            out.send(Ok(bytes::Bytes::copy_from_slice(rest))).await;
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_prefetch_is_ready_after_the_first_bytes_and_reads_do_not_wait_for_the_rest() {
    // 40 prioritized files of 16 KB (incompressible), then one more.
    let files: Vec<(String, Vec<u8>)> = (0..41)
        .map(|i| (format!("f{i:02}"), crate::window::tests::noise(16_000, i)))
        .collect();
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let (toc, blob) = layer(&named, 8192, 40);
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let gated = Gated::new(Counting::new(blob), 64 << 10, 0);
    let reader = Arc::new(ChunkReader::new(
        "sha256:layer",
        tree.clone(),
        gated.clone(),
        Arc::new(ChunkCache::new(64 << 20)),
        ReaderOptions::default(),
    ));
    // The rest in pieces of 128 KiB, two in flight: the last file's piece is not
    // requested yet while the first two are held back.
    let options = PrefetchOptions {
        range_size: 128 << 10,
        concurrency: 2,
        wait_bytes: 128 << 10,
        ..PrefetchOptions::default()
    };
    let cancel = CancellationToken::new();
    let mut running = spawn_prefetch(
        &tokio::runtime::Handle::current(),
        reader.clone(),
        gated.clone(),
        toc.prefetch_end.unwrap(),
        options,
        cancel.clone(),
    );
    // Ready while the rest (in pieces above the gate) is held back.
    tokio::time::timeout(Duration::from_secs(10), running.ready())
        .await
        .expect("ready after the first bytes, not after all of them");
    let read = |name: &str| {
        let node = tree.lookup(ROOT_INO, name).unwrap().clone();
        let reader = reader.clone();
        async move { reader.read(node.ino, 0, node.size).await.unwrap() }
    };
    // The first file is there: no request.
    let before = gated.inner.requests().len();
    assert_eq!(read("f00").await, files[0].1);
    assert_eq!(gated.inner.requests().len(), before, "f00 was prefetched");
    // A prioritized file whose piece has not been requested: its own request, at once.
    let last = tokio::time::timeout(Duration::from_secs(10), read("f39"))
        .await
        .expect("a read does not wait for the prefetch");
    assert_eq!(last, files[39].1);
    assert!(gated.inner.requests().len() > before);
    // Released, the prefetch finishes; dropped early, it would have stopped.
    gated.open.add_permits(1000);
    let report = running.finish().await.unwrap();
    assert!(report.chunks_cached > 0 && report.ranges > 1, "{report:?}");
    for (name, data) in &files[..40] {
        assert_eq!(&read(name).await, data);
    }

    // Cancelled while held back: it ends, with Interrupted.
    let held: Arc<dyn BlobSource> = Gated::new(gated.inner.clone(), 0, 0);
    let reader2 = Arc::new(ChunkReader::new(
        "sha256:layer2",
        tree.clone(),
        held.clone(),
        Arc::new(ChunkCache::new(64 << 20)),
        ReaderOptions::default(),
    ));
    let cancel = CancellationToken::new();
    let mut stuck = spawn_prefetch(
        &tokio::runtime::Handle::current(),
        reader2,
        held,
        toc.prefetch_end.unwrap(),
        PrefetchOptions::default(),
        cancel.clone(),
    );
    cancel.cancel();
    stuck.ready().await;
    let err = stuck.finish().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Interrupted);
}

/// A spawned prefetch of 40 prioritized files of 16 KB (incompressible, two chunks
/// each; a 41st after them) whose pieces after the first one are held back.
struct Streaming {
    files: Vec<(String, Vec<u8>)>,
    tree: Arc<LayerTree>,
    gated: Arc<Gated>,
    reader: Arc<ChunkReader>,
    end: u64,
}

/// A hang guard (the tests assert no timing): 10 s.
const HANG: Duration = Duration::from_secs(10);

fn streaming() -> Streaming {
    let files: Vec<(String, Vec<u8>)> = (0..41)
        .map(|i| (format!("f{i:02}"), crate::window::tests::noise(16_000, i)))
        .collect();
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let (toc, blob) = layer(&named, 8192, 40);
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    // Reads ask for one file (about 16 KB) at a time: never held back.
    let gated = Gated::new(Counting::new(blob), 20_000, 1 << 10);
    let reader = Arc::new(ChunkReader::new(
        "sha256:layer",
        tree.clone(),
        gated.clone(),
        Arc::new(ChunkCache::new(64 << 20)),
        ReaderOptions::default(),
    ));
    Streaming {
        files,
        tree,
        gated,
        reader,
        end: toc.prefetch_end.unwrap(),
    }
}

impl Streaming {
    /// Starts the prefetch (the rest in 128 KiB pieces, `concurrency` in flight) and
    /// waits until it is ready.
    async fn start(&self, concurrency: usize, cancel: CancellationToken) -> RunningPrefetch {
        let options = PrefetchOptions {
            range_size: 128 << 10,
            concurrency,
            wait_bytes: 64 << 10,
            ..PrefetchOptions::default()
        };
        let mut running = spawn_prefetch(
            &tokio::runtime::Handle::current(),
            self.reader.clone(),
            self.gated.clone(),
            self.end,
            options,
            cancel,
        );
        tokio::time::timeout(HANG, running.ready()).await.unwrap();
        // The piece after the waited-for bytes (f04 onward) goes out right after.
        self.until_asked(5).await;
        running
    }

    /// Reads file `n` whole, as its own task.
    fn read(
        &self,
        n: usize,
    ) -> tokio::task::JoinHandle<Result<Vec<u8>, crate::pipeline::ReadError>> {
        let node = self
            .tree
            .lookup(ROOT_INO, &self.files[n].0)
            .unwrap()
            .clone();
        let reader = self.reader.clone();
        tokio::spawn(async move { reader.read(node.ino, 0, node.size).await })
    }

    /// Waits until reads wait for `n` chunks fetched by someone else.
    async fn until_waiting(&self, n: u64) {
        let cache = self.reader.cache().clone();
        let waiting = async move {
            while cache.stats().shared_waits < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(HANG, waiting).await.unwrap();
    }

    /// Waits until the prefetch piece holding file `n` has been asked of the source (its
    /// chunks are claimed before), and returns its range.
    async fn until_asked(&self, n: usize) -> Range<u64> {
        let file = self.blob_range(n);
        let asked = async {
            loop {
                let piece = self
                    .gated
                    .asked
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|r| {
                        r.start <= file.start && file.end <= r.end && r.end - r.start > 20_000
                    })
                    .cloned();
                match piece {
                    Some(piece) => break piece,
                    None => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        };
        tokio::time::timeout(HANG, asked)
            .await
            .expect("the file's prefetch piece is never asked for")
    }

    /// The blob range of file `n`'s chunks.
    fn blob_range(&self, n: usize) -> Range<u64> {
        let node = self.tree.lookup(ROOT_INO, &self.files[n].0).unwrap();
        let chunks = self.tree.file_chunks(node);
        chunks[0].blob_offset..chunks[chunks.len() - 1].blob_end
    }

    /// Every file reads back right.
    async fn all_read_right(&self) {
        for n in 0..self.files.len() {
            let data = tokio::time::timeout(HANG, self.read(n)).await.unwrap();
            assert_eq!(
                data.unwrap().unwrap(),
                self.files[n].1,
                "{}",
                self.files[n].0
            );
        }
    }

    /// Asserts that no blob byte was requested twice.
    fn each_byte_requested_once(&self) {
        let mut requests = self.gated.inner.requests();
        requests.sort_by_key(|r| r.start);
        for pair in requests.windows(2) {
            assert!(pair[0].end <= pair[1].start, "fetched twice: {requests:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_chunk_on_the_way_waits_for_the_prefetch_piece() {
    let s = streaming();
    // The first piece after the waited-for bytes (f04 onward) is in flight, held back.
    let running = s.start(2, CancellationToken::new()).await;
    let read = s.read(5);
    s.until_waiting(2).await;
    let f05 = s.blob_range(5);
    let overlaps = |r: &Range<u64>| r.start < f05.end && f05.start < r.end;
    assert!(
        !s.gated.inner.requests().iter().any(overlaps),
        "the read made no request of its own"
    );
    s.gated.open.add_permits(1000);
    let data = tokio::time::timeout(HANG, read).await.unwrap().unwrap();
    assert_eq!(data.unwrap(), s.files[5].1);
    let stats = s.reader.stats();
    assert_eq!((stats.range_requests, stats.chunk_waits), (0, 2));
    let report = running.finish().await.unwrap();
    assert_eq!(report.chunks_cached, 80, "{report:?}");
    s.all_read_right().await;
    s.each_byte_requested_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_chunk_not_yet_requested_fetches_it_and_the_prefetch_leaves_it_out() {
    let s = streaming();
    // One piece in flight (held back), those holding f15 (amid its piece) and f39 (at
    // the end of its piece) not requested yet.
    let running = s.start(1, CancellationToken::new()).await;
    for n in [15, 39] {
        let data = tokio::time::timeout(HANG, s.read(n))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(data.unwrap(), s.files[n].1);
    }
    assert_eq!(s.reader.stats().range_requests, 2);
    s.gated.open.add_permits(1000);
    let report = running.finish().await.unwrap();
    assert_eq!(
        report.chunks_cached, 76,
        "their four chunks left out: {report:?}"
    );
    s.all_read_right().await;
    s.each_byte_requested_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_prefetch_piece_makes_the_waiting_read_fetch_itself() {
    let s = streaming();
    let running = s.start(2, CancellationToken::new()).await;
    let read = s.read(5);
    s.until_waiting(2).await;
    s.gated.fail.store(true, Ordering::SeqCst);
    s.gated.open.add_permits(1000);
    let data = tokio::time::timeout(HANG, read).await.unwrap().unwrap();
    assert_eq!(data.unwrap(), s.files[5].1);
    assert!(s.reader.stats().range_requests > 0, "fetched by the read");
    assert!(running.finish().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_prefetch_releases_its_claims() {
    let s = streaming();
    let cancel = CancellationToken::new();
    let running = s.start(2, cancel.clone()).await;
    let read = s.read(5);
    s.until_waiting(2).await;
    // Never released: the read gets its bytes only if the claims are let go.
    cancel.cancel();
    let data = tokio::time::timeout(HANG, read).await.unwrap().unwrap();
    assert_eq!(data.unwrap(), s.files[5].1);
    let err = running.finish().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Interrupted);
    // Nothing of the cancelled pieces stays claimed.
    let f06 = s.tree.lookup(ROOT_INO, "f06").unwrap().chunks.start;
    let key = ChunkKey {
        layer: s.reader.layer_id(),
        chunk: f06 as u64,
    };
    assert!(s.reader.cache().claim(key).is_some());
}

impl Streaming {
    /// Starts the prefetch (one piece in flight, `stream` as given) with the gated
    /// pieces handing up their first half at once when streamed.
    async fn start_split(&self, stream: bool) -> RunningPrefetch {
        self.gated.split.store(true, Ordering::SeqCst);
        let options = PrefetchOptions {
            range_size: 128 << 10,
            concurrency: 1,
            wait_bytes: 64 << 10,
            stream,
            ..PrefetchOptions::default()
        };
        let mut running = spawn_prefetch(
            &tokio::runtime::Handle::current(),
            self.reader.clone(),
            self.gated.clone(),
            self.end,
            options,
            CancellationToken::new(),
        );
        tokio::time::timeout(HANG, running.ready()).await.unwrap();
        // Ready says the first pieces are in; the next one (f04 onward) is asked for
        // right after.
        let (f05, f10) = (self.blob_range(5), self.blob_range(10));
        let piece = self.until_asked(5).await;
        // The set-up the tests rely on: f05 in the first half of the piece (handed up
        // at once when streamed), f10 in its rest (held back).
        let middle = piece.start + (piece.end - piece.start) / 2;
        assert!(f05.end <= middle && f10.start >= middle && f10.end <= piece.end);
        running
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_piece_serves_its_first_chunks_before_its_end() {
    let s = streaming();
    let running = s.start_split(true).await;
    // f05's bytes are in, the rest of its piece is held back: it is served now.
    let f05 = tokio::time::timeout(HANG, s.read(5))
        .await
        .expect("a chunk of a piece is served as soon as its bytes are in")
        .unwrap();
    assert_eq!(f05.unwrap(), s.files[5].1);
    // f10's bytes are held back: its read waits for the piece, and asks for nothing.
    let waits = s.reader.cache().stats().shared_waits;
    let f10 = s.read(10);
    s.until_waiting(waits + 2).await;
    assert!(!f10.is_finished());
    s.gated.open.add_permits(1000);
    let data = tokio::time::timeout(HANG, f10).await.unwrap().unwrap();
    assert_eq!(data.unwrap(), s.files[10].1);
    let stats = s.reader.stats();
    assert_eq!(
        stats.range_requests, 0,
        "every read was served by the prefetch"
    );
    let report = running.finish().await.unwrap();
    assert_eq!(report.chunks_cached, 80, "{report:?}");
    s.all_read_right().await;
    s.each_byte_requested_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstreamed_piece_serves_nothing_before_its_end() {
    // The same with `stream` off: f05's read waits for the whole piece.
    let s = streaming();
    let running = s.start_split(false).await;
    let f05 = s.read(5);
    s.until_waiting(2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!f05.is_finished(), "served before its piece was in");
    s.gated.open.add_permits(1000);
    let data = tokio::time::timeout(HANG, f05).await.unwrap().unwrap();
    assert_eq!(data.unwrap(), s.files[5].1);
    assert_eq!(running.finish().await.unwrap().chunks_cached, 80);
    s.each_byte_requested_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_piece_that_breaks_keeps_what_came_and_its_readers_fetch_the_rest() {
    let s = streaming();
    let running = s.start_split(true).await;
    let f10 = s.read(10);
    s.until_waiting(2).await;
    s.gated.fail.store(true, Ordering::SeqCst);
    s.gated.open.add_permits(1000);
    // The piece broke after its first half: f10's read fetches it itself.
    let data = tokio::time::timeout(HANG, f10).await.unwrap().unwrap();
    assert_eq!(data.unwrap(), s.files[10].1);
    assert!(
        s.reader.stats().range_requests > 0,
        "f10 was fetched by its read"
    );
    assert!(
        running.finish().await.is_err(),
        "a broken piece fails the prefetch"
    );
    // The chunks of the first half stay cached: f05 needs no request.
    let before = s.reader.stats().range_requests;
    let f05 = tokio::time::timeout(HANG, s.read(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f05.unwrap(), s.files[5].1);
    assert_eq!(s.reader.stats().range_requests, before);
}
