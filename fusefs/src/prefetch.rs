//! Fetching ahead of reads: the prioritized files, before a layer is mounted and while
//! it starts. The whole blob into the disk cache afterwards is [`crate::background`]'s
//! (re-exported here).
//!
//! **Prefetch** ([`prefetch`]). eStargz and zstd:chunked put the files a container reads
//! first at the start of the blob and mark where they end ([`LayerToc::prefetch_end`]).
//! Before the mount is handed out, [`prefetch`] fetches the chunks lying in
//! `[0, prefetch_end)` in a few large range requests (adjacent chunks coalesced up to
//! [`PrefetchOptions::range_size`], several in flight), so that the first reads wait for
//! no network:
//!
//! - through the layer's source, which with a disk cache in front keeps every byte (so
//!   all prioritized reads are at worst a local disk read), and
//! - decoded and verified into the plaintext [`ChunkCache`] in blob order as long as they
//!   fit in [`PrefetchOptions::plaintext_limit`] (by default half the plaintext budget, so
//!   that a big prioritized set does not evict itself or every other layer's chunks).
//!
//! **Not blocking the start** ([`spawn_prefetch`]). The same prefetch as its own task:
//! the caller waits only until the first [`PrefetchOptions::wait_bytes`] of the region
//! are in (those are fetched in smaller pieces, so that they come first), hands the
//! layer out, and the rest streams on in blob order (the priority order) while the
//! container starts, in pieces of [`PrefetchOptions::range_size`]. Reads and the
//! prefetch never fetch the same bytes twice:
//!
//! - **A chunk on the way is waited for.** A piece claims its chunks in the plaintext
//!   [`ChunkCache`] when its request is sent ([`ChunkCache::claim`], as windows do), so a
//!   read of one of them waits for the piece instead of fetching it again; the piece
//!   completes every claim with the verified chunk (also a chunk past the plaintext
//!   limit, when a read waits for it) or releases it. A piece that fails (fetch error,
//!   a chunk failing verification, the prefetch cancelled or dropped) releases its
//!   claims unresolved, and the waiting reads fetch the chunks themselves (and fail
//!   with their own error if that fails too): no read hangs on a prefetch.
//! - **A chunk not yet asked for is read at once.** A read of a chunk whose piece has
//!   not been requested yet is not queued behind the prefetch: it fetches the chunk
//!   with its own request, and the piece later leaves it out (a piece sends one
//!   request per run of chunks it could claim, so none spans bytes a read fetched).
//!
//! - **A piece is handed on as it streams in** ([`PrefetchOptions::stream`], on by
//!   default). A piece's request is read as a stream (`crate::chunk_stream`, as windows
//!   do): each chunk is decoded, verified and its waiting reads woken as soon as its own
//!   bytes are in, while the rest of the piece is still arriving. A read thus waits for
//!   its chunk's bytes, not for the piece's last byte; off, it waits for the rest of the
//!   piece's transfer. Smaller pieces shorten that wait too, but take more of the link
//!   from the start (the trade-off, measured, is at [`DEFAULT_PIECE_SIZE`]; `[lazy]
//!   prefetch_piece_bytes` sets it).
//!
//! [`PrefetchOptions::claim_in_flight`] off restores the previous behaviour (a piece
//! claims its chunks only once its bytes are in; a read meanwhile fetches them again),
//! for comparing the two. Windows ([`crate::window`]) leave the region to the prefetch
//! while it runs.
//!
//! Without a disk cache ([`PrefetchOptions::fetch_all`] false) only the chunks that go to
//! the plaintext cache are fetched, since nothing else would keep the rest. Chunks that
//! fail verification are not cached and reported by blob range
//! ([`PrefetchReport::verify_failures`]) so that the caller can drop them from the disk
//! cache ([`CachedBlob::forget`]); the read that needs them then fails (EIO) as it would
//! have anyway.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};
pub use tokio_util::sync::{CancellationToken, DropGuard};

pub use crate::background::{
    background_fetch, BackgroundFetch, BackgroundOptions, FetchProgress, FetchState, RateLimiter,
    DEFAULT_RANGE_SIZE,
};

use crate::cache::{ChunkKey, FetchGuard};
use crate::chunk_stream;
use crate::pipeline::ChunkReader;
use veil_blob::BlobSource;
use veil_formats::codec;
use veil_formats::toc::Chunk;
#[cfg(doc)]
use {crate::cache::ChunkCache, crate::disk_cache::CachedBlob, veil_formats::toc::LayerToc};

/// Default size of one prefetch range request (a piece; the pieces of the bytes waited
/// for are smaller): 8 MiB. A read of a chunk in a piece in flight waits for the whole
/// piece; smaller pieces shorten that wait, but the more of them are in flight, the more
/// of the link they take from what the start still waits for (the next layers' TOCs and
/// first bytes while an image is prepared). Measured (eStargz, encrypted, prefetch
/// landmark, 100 ms / 50 Mbit/s): 1 MiB pieces cut the cold start from 2.36 to 2.23 s
/// but made the pull 0.33 s longer (1.15 -> 1.48 s); 2 and 4 MiB likewise (1.53, 1.37 s).
pub const DEFAULT_PIECE_SIZE: u64 = 8 << 20;

/// Chunks further apart than this go in separate prefetch requests rather than fetching
/// the bytes between them.
const MAX_PREFETCH_GAP: u64 = 256 << 10;

/// Default bytes of the prioritized region fetched before [`spawn_prefetch`] says the
/// layer is ready: none. With pieces served as they stream in
/// ([`PrefetchOptions::stream`]) a read of a file on the way waits for its own bytes
/// only, so holding the mount back gains nothing. Measured (eStargz, encrypted, prefetch
/// landmark, 3 runs, one run of `veil bench`): 0.58 s against 0.61 s for 1 MiB (the
/// previous default) at 20 ms / 200 Mbit/s, and 2.23 s for both at 100 ms / 50 Mbit/s.
pub const DEFAULT_WAIT_BYTES: u64 = 0;

/// Whether prefetch pieces hand their chunks on as they stream in by default (see
/// [`PrefetchOptions::stream`]).
pub const DEFAULT_PREFETCH_STREAM: bool = true;

/// Smallest prefetch piece while fetching the bytes waited for.
const MIN_FIRST_PIECE: u64 = 64 << 10;

/// Tuning of [`prefetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchOptions {
    /// The most bytes one range request (piece) spans (a single larger chunk is fetched
    /// alone).
    pub range_size: u64,
    /// Range requests in flight at once.
    pub concurrency: usize,
    /// The most plaintext bytes put into the chunk cache; `None`: half its budget.
    pub plaintext_limit: Option<u64>,
    /// Fetch every chunk of the prioritized range, also those not kept as plaintext:
    /// set it when the source keeps what it reads (a disk cache).
    pub fetch_all: bool,
    /// For [`spawn_prefetch`]: bytes of the region (from its start) to fetch before the
    /// layer counts as ready; fetched in pieces of a `concurrency`th of it, so they
    /// arrive first. `u64::MAX`: all of it.
    pub wait_bytes: u64,
    /// Claim a piece's chunks when its request is sent, so that a read of one waits
    /// for the piece rather than fetching it again; off: claim them once the bytes are
    /// in (a read meanwhile fetches them itself), as before.
    pub claim_in_flight: bool,
    /// With `claim_in_flight`: read each piece as a stream and complete each chunk as
    /// soon as its bytes are in; off: when the whole piece is in.
    pub stream: bool,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        Self {
            range_size: DEFAULT_PIECE_SIZE,
            concurrency: 4,
            plaintext_limit: None,
            fetch_all: false,
            wait_bytes: DEFAULT_WAIT_BYTES,
            claim_in_flight: true,
            stream: DEFAULT_PREFETCH_STREAM,
        }
    }
}

/// What [`prefetch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Range requests sent.
    pub ranges: u64,
    /// Bytes read from the source.
    pub bytes_fetched: u64,
    /// Chunks decoded, verified and put into the plaintext cache.
    pub chunks_cached: u64,
    /// Plaintext bytes of those chunks.
    pub plaintext_bytes: u64,
    /// Prioritized chunks left out of the plaintext cache (over the limit, or cached
    /// already).
    pub chunks_skipped: u64,
    /// Blob ranges of chunks that failed decompression or verification.
    pub verify_failures: Vec<Range<u64>>,
}

/// One range request of a prefetch and the chunks (layer-wide indices) it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    range: Range<u64>,
    chunks: Vec<usize>,
    /// Which of `chunks` go to the plaintext cache.
    decode: Vec<bool>,
}

/// Groups `order` (chunk indices sorted by blob offset) into range requests of at most
/// `range_size` bytes (unless one chunk is bigger), never splitting a chunk and never
/// spanning a gap wider than [`MAX_PREFETCH_GAP`].
fn plan(chunks: &[Chunk], order: &[(usize, bool)], range_size: u64) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut reach = 0u64;
    for &(i, decode) in order {
        let c = &chunks[i];
        let joins = pieces.last().is_some_and(|p| {
            c.blob_offset < reach
                || (c.blob_offset - reach <= MAX_PREFETCH_GAP
                    && c.blob_end.max(reach) - p.range.start <= range_size)
        });
        if joins {
            if let Some(p) = pieces.last_mut() {
                reach = reach.max(c.blob_end);
                p.range.end = reach;
                p.chunks.push(i);
                p.decode.push(decode);
            }
        } else {
            reach = c.blob_end;
            pieces.push(Piece {
                range: c.blob_offset..c.blob_end,
                chunks: vec![i],
                decode: vec![decode],
            });
        }
    }
    pieces
}

/// Fetches the chunks in `[0, upto_blob_offset)` of `reader`'s layer from `source` (the
/// reader's own source) and caches them; see the module documentation. Returns what it
/// did, or the first fetch error (everything fetched before it stays cached).
pub async fn prefetch(
    reader: &ChunkReader,
    source: &dyn BlobSource,
    upto_blob_offset: u64,
    options: &PrefetchOptions,
) -> io::Result<PrefetchReport> {
    prefetch_signalling(reader, source, upto_blob_offset, options, None).await
}

/// A prefetch running as its own task; see [`spawn_prefetch`].
#[derive(Debug)]
pub struct RunningPrefetch {
    ready: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<io::Result<PrefetchReport>>,
}

impl RunningPrefetch {
    /// Waits until the first [`PrefetchOptions::wait_bytes`] are in, or the prefetch
    /// ended (done, failed or cancelled), whichever comes first.
    pub async fn ready(&mut self) {
        let _ = self.ready.wait_for(|ready| *ready).await;
    }

    /// Waits for the whole prefetch: its report, or why it failed (a cancelled one
    /// fails with [`io::ErrorKind::Interrupted`]).
    pub async fn finish(self) -> io::Result<PrefetchReport> {
        self.task
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("prefetch task failed: {e}"))))
    }
}

/// Starts [`prefetch`] on `runtime` as its own task; see the module documentation. It
/// stops when `cancel` is cancelled (the layer is unmounted). Wait for
/// [`RunningPrefetch::ready`] before handing the layer out.
pub fn spawn_prefetch(
    runtime: &tokio::runtime::Handle,
    reader: Arc<ChunkReader>,
    source: Arc<dyn BlobSource>,
    upto_blob_offset: u64,
    options: PrefetchOptions,
    cancel: CancellationToken,
) -> RunningPrefetch {
    let (tx, ready) = tokio::sync::watch::channel(false);
    let task = runtime.spawn(async move {
        reader.set_prefetching_until(upto_blob_offset);
        let work = prefetch_signalling(&reader, source.as_ref(), upto_blob_offset, &options, Some(&tx));
        let result = tokio::select! {
            _ = cancel.cancelled() => Err(io::Error::new(io::ErrorKind::Interrupted, "prefetch cancelled: the layer went away")),
            r = work => r,
        };
        reader.set_prefetching_until(0);
        tx.send_replace(true);
        result
    });
    RunningPrefetch { ready, task }
}

async fn prefetch_signalling(
    reader: &ChunkReader,
    source: &dyn BlobSource,
    upto_blob_offset: u64,
    options: &PrefetchOptions,
    ready: Option<&tokio::sync::watch::Sender<bool>>,
) -> io::Result<PrefetchReport> {
    let started = Instant::now();
    let tree = reader.tree();
    let chunks = tree.chunks();
    let upto = upto_blob_offset.min(source.size());
    let mut order: Vec<usize> = (0..chunks.len())
        .filter(|&i| {
            let c = &chunks[i];
            c.blob_offset < c.blob_end && c.blob_end <= upto
        })
        .collect();
    order.sort_by_key(|&i| (chunks[i].blob_offset, i));

    // The plaintext cache takes the chunks in blob order up to the first that does not
    // fit (the order is the priority).
    let limit = options
        .plaintext_limit
        .unwrap_or(reader.cache().budget() / 2);
    let mut plaintext = 0u64;
    let mut full = false;
    let mut order: Vec<(usize, bool)> = order
        .into_iter()
        .map(|i| {
            full = full || plaintext + chunks[i].size > limit;
            if !full {
                plaintext += chunks[i].size;
            }
            (i, !full)
        })
        .collect();
    let prioritized = order.len() as u64;
    let mut report = PrefetchReport::default();
    if !options.fetch_all {
        order.retain(|(_, decode)| *decode);
    }
    // The bytes waited for come first, in smaller pieces (all of them in flight at
    // once), then the rest in full-size ones.
    let region_start = order
        .first()
        .map(|&(i, _)| chunks[i].blob_offset)
        .unwrap_or(0);
    let wait_until = region_start.saturating_add(options.wait_bytes);
    let split = order.partition_point(|&(i, _)| chunks[i].blob_end <= wait_until);
    let concurrency = options.concurrency.max(1);
    let first_size = (options.wait_bytes / concurrency as u64)
        .max(MIN_FIRST_PIECE)
        .min(options.range_size.max(1));
    let mut pieces = plan(chunks, &order[..split], first_size);
    let first_pieces = pieces.len();
    pieces.extend(plan(chunks, &order[split..], options.range_size.max(1)));
    let signal = move |done: usize| {
        if let Some(tx) = ready.filter(|_| done >= first_pieces) {
            tx.send_if_modified(|r| !std::mem::replace(r, true));
        }
    };
    signal(0);

    let mut results = stream::iter(pieces)
        .map(|piece| fetch_piece(reader, source, piece, options))
        .buffered(concurrency);
    let mut pieces_done = 0;
    while let Some(result) = results.next().await {
        let done = result?;
        pieces_done += 1;
        signal(pieces_done);
        report.ranges += done.requests;
        report.bytes_fetched += done.bytes;
        report.chunks_cached += done.cached;
        report.plaintext_bytes += done.plaintext;
        report.verify_failures.extend(done.failures);
    }
    report.chunks_skipped =
        prioritized.saturating_sub(report.chunks_cached + report.verify_failures.len() as u64);
    tracing::debug!(
        layer = reader.layer_name(),
        upto,
        ranges = report.ranges,
        bytes = report.bytes_fetched,
        chunks_cached = report.chunks_cached,
        failures = report.verify_failures.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "prefetched the prioritized files"
    );
    Ok(report)
}

#[derive(Default)]
struct PieceDone {
    requests: u64,
    bytes: u64,
    cached: u64,
    plaintext: u64,
    failures: Vec<Range<u64>>,
}

/// A chunk of a piece this prefetch owns the fetch of: its index, whether it goes to
/// the plaintext cache in any case, and the claim.
type Claimed = chunk_stream::Claim;

/// Claims the chunks of `piece` nobody has cached or claimed (with `all` false only
/// those that go to the plaintext cache), in runs: a chunk someone else has ends a run,
/// so that no request spans bytes that are cached or on the way already.
fn claim_runs(reader: &ChunkReader, piece: &Piece, all: bool) -> Vec<Vec<Claimed>> {
    let mut runs: Vec<Vec<Claimed>> = vec![Vec::new()];
    for (&i, &decode) in piece.chunks.iter().zip(&piece.decode) {
        if !(all || decode) {
            continue;
        }
        let key = ChunkKey {
            layer: reader.layer_id(),
            chunk: i as u64,
        };
        match reader.cache().claim(key) {
            Some(guard) => match runs.last_mut() {
                Some(run) => run.push((i, decode, guard)),
                None => runs.push(vec![(i, decode, guard)]),
            },
            None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
            None => {}
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// The blob range holding the chunks of `run`.
fn run_range(chunks: &[Chunk], run: &[Claimed]) -> Range<u64> {
    let start = run.iter().map(|(i, _, _)| chunks[*i].blob_offset).min();
    let end = run.iter().map(|(i, _, _)| chunks[*i].blob_end).max();
    start.unwrap_or(0)..end.unwrap_or(0)
}

/// Fetches one piece and caches its chunks: with `claim_in_flight`, one request per run
/// of chunks it could claim (before the requests go out), all at once, each streamed
/// unless `stream` is off; else one for the whole piece, claiming its chunks once the bytes are
/// in. Claims are released unresolved (the reads waiting for them fetch the chunks
/// themselves) when it fails or is dropped.
async fn fetch_piece(
    reader: &ChunkReader,
    source: &dyn BlobSource,
    piece: Piece,
    options: &PrefetchOptions,
) -> io::Result<PieceDone> {
    if !options.claim_in_flight {
        let cached = |&i: &usize| {
            reader.cache().contains(ChunkKey {
                layer: reader.layer_id(),
                chunk: i as u64,
            })
        };
        if piece.chunks.iter().all(cached) {
            return Ok(PieceDone::default());
        }
        return fetch_whole(reader, source, &piece).await;
    }
    let chunks = reader.tree().chunks();
    let runs = claim_runs(reader, &piece, true);
    let fetches = runs.into_iter().map(|run| {
        let range = run_range(chunks, &run);
        stream_run(reader, source, range, run, !options.stream)
    });
    let mut done = PieceDone::default();
    for result in futures::future::join_all(fetches).await {
        let run = result?;
        done.requests += run.requests;
        done.bytes += run.bytes;
        done.cached += run.cached;
        done.plaintext += run.plaintext;
        done.failures.extend(run.failures);
    }
    Ok(done)
}

/// Fetches `piece` with one request and caches the chunks it can claim once the bytes
/// are in (without [`PrefetchOptions::claim_in_flight`]).
async fn fetch_whole(
    reader: &ChunkReader,
    source: &dyn BlobSource,
    piece: &Piece,
) -> io::Result<PieceDone> {
    let chunks = reader.tree().chunks();
    let range = piece.range.clone();
    let bytes = source.read_range(range.clone()).await?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "source returned {} bytes for the {}-byte range {range:?}",
                bytes.len(),
                range.end - range.start
            ),
        ));
    }
    let mut done = PieceDone {
        requests: 1,
        bytes: bytes.len() as u64,
        ..PieceDone::default()
    };
    // Claim now what the plaintext cache should get and nobody has (a read that could
    // not wait for this piece fetched its chunks itself).
    let claims: Vec<Claimed> = claim_runs(reader, piece, false)
        .into_iter()
        .flatten()
        .collect();
    // Decoded: the chunks the plaintext cache gets and those a read waits for; the
    // others are released (their bytes are in the source's disk cache).
    let (claims, released): (Vec<Claimed>, Vec<Claimed>) = claims
        .into_iter()
        .partition(|(_, decode, guard)| *decode || guard.has_waiters());
    drop(released);
    if claims.is_empty() {
        return Ok(done);
    }
    let tree = reader.tree().clone();
    let wanted: Vec<usize> = claims.iter().map(|(i, _, _)| *i).collect();
    let decoded = tokio::task::spawn_blocking(move || {
        wanted
            .iter()
            .map(|&i| {
                let c = &tree.chunks()[i];
                let from = (c.blob_offset - range.start) as usize;
                let to = (c.blob_end - range.start) as usize;
                codec::decode_chunk(c, &bytes[from..to], tree.limits())
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| io::Error::other(format!("prefetch decoding task failed: {e}")))?;
    let layer = reader.layer_name();
    for ((i, _, guard), result) in claims.into_iter().zip(decoded) {
        settle(&mut done, layer, chunks, i, guard, result);
    }
    Ok(done)
}

/// Fetches `range` with one request and completes each chunk of `run` (its claims) as
/// soon as its bytes are in (`crate::chunk_stream`; with `whole`, once all are in):
/// decoded and cached when it goes to the plaintext cache or a read waits for it, else
/// released (its bytes are in the source's disk cache). A break fails the piece; the
/// chunks complete by then stay cached.
async fn stream_run(
    reader: &ChunkReader,
    source: &dyn BlobSource,
    range: Range<u64>,
    run: Vec<Claimed>,
    whole: bool,
) -> io::Result<PieceDone> {
    let tree = reader.tree().clone();
    let layer: Arc<str> = reader.layer_name().into();
    let mut decodes = Vec::new();
    let (result, received) =
        chunk_stream::stream_claims(source, tree.chunks(), range, run, whole, |arrived| {
            let tree = tree.clone();
            let layer = layer.clone();
            decodes.push(tokio::task::spawn_blocking(move || {
                let mut part = PieceDone::default();
                for (i, guard, bytes) in arrived {
                    let result = codec::decode_chunk(&tree.chunks()[i], &bytes, tree.limits());
                    settle(&mut part, &layer, tree.chunks(), i, guard, result);
                }
                part
            }));
        })
        .await;
    let mut done = PieceDone {
        requests: 1,
        bytes: received,
        ..PieceDone::default()
    };
    for decode in decodes {
        // A decode task that died dropped its guards: their waiters fetch themselves.
        if let Ok(part) = decode.await {
            done.cached += part.cached;
            done.plaintext += part.plaintext;
            done.failures.extend(part.failures);
        }
    }
    result.map(|()| done)
}

/// Completes chunk `i`'s claim with its decoded bytes and counts it in `done`, or, when
/// it failed decoding or verification, logs it, counts it as a failure and releases the
/// claim unresolved (a read that waited fetches it itself).
fn settle(
    done: &mut PieceDone,
    layer: &str,
    chunks: &[Chunk],
    i: usize,
    guard: FetchGuard<'static>,
    result: Result<Vec<u8>, codec::CodecError>,
) {
    match result {
        Ok(data) => {
            done.cached += 1;
            done.plaintext += data.len() as u64;
            guard.complete(data);
        }
        Err(err) => {
            let c = &chunks[i];
            tracing::error!(
                layer,
                chunk = i,
                blob_range = ?(c.blob_offset..c.blob_end),
                error = %err,
                "prefetched chunk failed verification; not cached"
            );
            done.failures.push(c.blob_offset..c.blob_end);
            drop(guard);
        }
    }
}

#[cfg(test)]
#[path = "prefetch_tests.rs"]
mod tests;
