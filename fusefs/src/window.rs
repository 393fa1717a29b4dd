//! Neighbourhood windows: on a read miss, fetch the part of the blob around it too.
//!
//! A container opens its files one at a time (python imports module after module), so
//! a miss per file costs one round trip per file while the bytes themselves are few.
//! Files that are read together mostly lie together in the blob (same directory, tar
//! order; eStargz puts prioritized files first). So when [`ChunkReader::read`] has to
//! fetch, it also starts a *window*: one more range request for the chunks that lie
//! around the missed ones in blob order (a share of the window before the miss, set by
//! [`WindowOptions::back_divisor`], the rest after it), which runs beside the read's
//! own request and never in front of it. On the first miss in a small file of a
//! directory the window also takes the blob region of that directory's small files, up
//! to [`WindowOptions::dir`] bytes (a *directory window*; where a window goes is
//! [`crate::window_plan`]'s business):
//!
//! - **Explicit reads first.** The read's own chunks are fetched by their own request
//!   as before; the window is a separate, spawned request for chunks nobody has claimed.
//!   A later read of a chunk the window claimed waits for the window (its bytes are on
//!   the way); a read of anything else is fetched at once, whatever windows are in
//!   flight. At most [`MAX_WINDOWS_IN_FLIGHT`] windows per layer are in flight; a miss
//!   beyond that starts none.
//! - **Adaptive size.** A window is [`WindowOptions::max`] bytes while the link is
//!   idle (no other request of the layer in flight) and [`WindowOptions::min`] while it
//!   is busy, so windows never take the bandwidth explicit reads are waiting for.
//!   Chunks inside a prefetch that is still running are left to it.
//! - **Ciphertext kept, plaintext only when read.** The window's bytes go through the
//!   layer's source; with the disk cache in front of the registry they are kept there as
//!   served (ciphertext for encrypted layers). As they arrive, only the chunks someone
//!   is already waiting for are decoded, verified and put into the plaintext cache; the
//!   rest are left on disk until read (a local read then). A source that keeps nothing
//!   (no disk cache, a streamed layer's restart points) sets
//!   [`WindowOptions::keep_plaintext`], and every chunk of the window is decoded and
//!   cached (the window is small against the cache's budget).
//! - **Chunk by chunk as the response streams in.** With [`WindowOptions::stream`] (the
//!   default) the window's range is read as a stream ([`BlobSource::stream_range`]) and
//!   each chunk is completed as soon as its bytes are in, while the rest of the window
//!   is still arriving ([`crate::window_stream`]): a read of the window's first chunk
//!   waits for that chunk, not for the window's last byte. Off, the window is one
//!   response, completed when it is all in.
//! - **Fail closed per chunk.** A window chunk that fails verification fails only the
//!   reads waiting for it (EIO), is dropped from the disk cache and counted against the
//!   chunk like any other failure; the rest of the window is served.
//!
//! Tuning: see the README ("No round trip per file") for the measurements behind
//! [`DEFAULT_WINDOW_MIN`], [`DEFAULT_WINDOW_MAX`] and [`DEFAULT_WINDOW_DIR`].

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use veil_blob::BlobSource;
use veil_formats::codec;

use crate::cache::{ChunkCache, ChunkKey, FetchGuard};
#[cfg(doc)]
use crate::pipeline::ChunkReader;
use crate::tree::LayerTree;
use crate::window_plan::{neighbourhood, BlobIndex, DirsStarted};
use crate::window_stream;

/// Default window while other requests of the layer are in flight: 128 KiB.
pub const DEFAULT_WINDOW_MIN: u64 = 128 << 10;

/// Default window while the link is idle: 2 MiB (with streamed windows; README, "No
/// round trip per file").
pub const DEFAULT_WINDOW_MAX: u64 = 2 << 20;

/// Default most bytes of a directory window (the first miss in a small file of a
/// directory fetches the blob region of the directory's small files): 4 MiB.
pub const DEFAULT_WINDOW_DIR: u64 = 4 << 20;

/// Whether windows complete each chunk as its bytes arrive by default (see
/// [`WindowOptions::stream`]).
pub const DEFAULT_WINDOW_STREAM: bool = true;

/// Default share of a window placed before the miss: a quarter.
pub const DEFAULT_WINDOW_BACK_DIVISOR: u64 = 4;

/// Windows of one layer in flight at once; a miss beyond that starts none.
pub const MAX_WINDOWS_IN_FLIGHT: usize = 2;

/// How a [`ChunkReader`] fetches around its misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOptions {
    /// Window bytes while other requests of the layer are in flight (0: none then).
    pub min: u64,
    /// Window bytes while the link is idle (0: no windows at all).
    pub max: u64,
    /// The window's share before the miss is `1 / back_divisor` (0: none before it).
    pub back_divisor: u64,
    /// Most bytes of a directory window ([`crate::window_plan`]; 0: none). Only while
    /// windows are on (`max` > 0).
    pub dir: u64,
    /// Decode and cache every chunk of a window as plaintext: set when the source
    /// keeps nothing it reads (no disk cache), else only the chunks being waited for are.
    pub keep_plaintext: bool,
    /// Complete each chunk of a window as soon as its bytes are in (the response
    /// streamed, [`crate::window_stream`]); off: when the whole window is in.
    pub stream: bool,
}

impl WindowOptions {
    /// No windows: only the chunks a read needs are fetched.
    pub const OFF: WindowOptions = WindowOptions {
        min: 0,
        max: 0,
        back_divisor: 0,
        dir: 0,
        keep_plaintext: false,
        stream: false,
    };

    /// The default sizes ([`DEFAULT_WINDOW_MIN`], [`DEFAULT_WINDOW_MAX`],
    /// [`DEFAULT_WINDOW_DIR`]), streamed ([`DEFAULT_WINDOW_STREAM`]).
    pub fn tuned(keep_plaintext: bool) -> Self {
        Self {
            min: DEFAULT_WINDOW_MIN,
            max: DEFAULT_WINDOW_MAX,
            back_divisor: DEFAULT_WINDOW_BACK_DIVISOR,
            dir: DEFAULT_WINDOW_DIR,
            keep_plaintext,
            stream: DEFAULT_WINDOW_STREAM,
        }
    }

    /// Whether windows are on.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }
}

impl Default for WindowOptions {
    /// [`WindowOptions::OFF`].
    fn default() -> Self {
        Self::OFF
    }
}

/// Counters of a reader's windows.
#[derive(Debug, Default)]
pub(crate) struct WindowCounters {
    /// Windows started (range requests).
    pub requests: AtomicU64,
    /// Bytes they received.
    pub bytes: AtomicU64,
    /// Window chunks decoded into the plaintext cache.
    pub chunks_cached: AtomicU64,
}

/// Verification failures per chunk (layer-wide index), shared by a reader and its
/// windows.
pub(crate) type Strikes = Mutex<HashMap<u64, u32>>;

/// Records a verification failure of `chunk` in `strikes`; returns how many it has had.
pub(crate) fn strike(strikes: &Strikes, chunk: u64) -> u32 {
    let mut strikes = strikes.lock().unwrap_or_else(|p| p.into_inner());
    let n = strikes.entry(chunk).or_insert(0);
    *n += 1;
    *n
}

/// What a reader shares with the windows it spawns.
pub(crate) struct WindowState {
    pub options: WindowOptions,
    /// The layer's chunks in blob order (built on first use).
    index: OnceLock<BlobIndex>,
    /// The directories whose first miss has had its directory window.
    pub(crate) dirs_started: DirsStarted,
    /// Windows in flight.
    pub in_flight: AtomicUsize,
    /// The layer's own (explicit) range requests in flight.
    pub explicit_in_flight: AtomicUsize,
    /// While a prefetch runs: the blob offset its region ends at (windows leave chunks
    /// before it alone); 0 otherwise.
    pub prefetching_until: AtomicU64,
    pub counters: WindowCounters,
}

impl WindowState {
    pub fn new(options: WindowOptions) -> Self {
        Self {
            options,
            index: OnceLock::new(),
            dirs_started: DirsStarted::default(),
            in_flight: AtomicUsize::new(0),
            explicit_in_flight: AtomicUsize::new(0),
            prefetching_until: AtomicU64::new(0),
            counters: WindowCounters::default(),
        }
    }

    /// The window size now: `max` while no other request is in flight, else `min`;
    /// 0 when too many windows are in flight already.
    fn size_now(&self) -> u64 {
        if self.in_flight.load(Ordering::Relaxed) >= MAX_WINDOWS_IN_FLIGHT {
            return 0;
        }
        let busy = self.in_flight.load(Ordering::Relaxed) > 0
            || self.explicit_in_flight.load(Ordering::Relaxed) > 0;
        if busy {
            self.options.min
        } else {
            self.options.max
        }
    }

    /// The chunks (layer-wide indices, blob order) a window around the blob range
    /// `miss` should hold: chunks lying in its neighbourhood and, on the first miss in a
    /// small file of directory `dir`, in that directory's region of the blob
    /// ([`crate::window_plan`]); not inside a running prefetch, and not `miss`'s own.
    pub fn plan(&self, tree: &LayerTree, miss: Range<u64>, dir: Option<u64>) -> Vec<usize> {
        let size = self.size_now();
        if size == 0 {
            return Vec::new();
        }
        let chunks = tree.chunks();
        let index = self.index.get_or_init(|| BlobIndex::new(tree));
        let mut range = neighbourhood(size, self.options.back_divisor, miss.clone());
        if let Some(dir) = dir.filter(|_| self.options.dir > 0) {
            if self.dirs_started.first(dir) {
                let region = index.dir_extent(chunks, dir, miss.clone(), self.options.dir);
                range = range.start.min(region.found.start)..range.end.max(region.found.end);
            }
        }
        let floor = self.prefetching_until.load(Ordering::Relaxed);
        index.chunks_in(chunks, range, miss, floor).found
    }
}

/// A window to fetch: everything it needs, owned (it runs as its own task).
pub(crate) struct WindowJob {
    pub layer_name: String,
    pub redact_paths: bool,
    pub tree: Arc<LayerTree>,
    pub source: Arc<dyn BlobSource>,
    pub state: Arc<WindowState>,
    pub strikes: Arc<Strikes>,
    /// The window's chunks (layer-wide indices, in blob order), claimed.
    pub claims: Vec<(usize, FetchGuard<'static>)>,
}

/// Why a chunk of a window failed, handed to the reads waiting for it.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: chunk {chunk} ({file}) failed verification: {message}")]
pub struct WindowVerifyError {
    /// Layer name.
    pub layer: String,
    /// The file holding the chunk (its inode on a redacted layer).
    pub file: String,
    /// The chunk's layer-wide index.
    pub chunk: u64,
    /// What the codec said.
    pub message: String,
}

/// Counts one window in flight for as long as it lives (a streamed window: while its
/// transfer runs).
pub(crate) struct InFlight(Arc<WindowState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Claims the chunks of `planned` nobody has cached or claimed yet (so that the next
/// read of one waits for this window rather than fetching it again).
pub(crate) fn claim(
    cache: &Arc<ChunkCache>,
    layer: u64,
    planned: &[usize],
) -> Vec<(usize, FetchGuard<'static>)> {
    planned
        .iter()
        .filter_map(|&i| {
            cache
                .claim(ChunkKey {
                    layer,
                    chunk: i as u64,
                })
                .map(|guard| (i, guard))
        })
        .collect()
}

/// Starts `job` on the current tokio runtime (none: its claims are dropped, nothing
/// happens). The caller has checked that it claimed something.
pub(crate) fn spawn(job: WindowJob) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    job.state.in_flight.fetch_add(1, Ordering::Relaxed);
    runtime.spawn(run(job));
}

async fn run(mut job: WindowJob) {
    let in_flight = InFlight(job.state.clone());
    let chunks = job.tree.chunks();
    let claims = std::mem::take(&mut job.claims);
    let (Some(first), Some(last)) = (claims.first(), claims.last()) else {
        return;
    };
    let start = chunks[first.0].blob_offset;
    let end = claims
        .iter()
        .map(|(i, _)| chunks[*i].blob_end)
        .max()
        .unwrap_or(chunks[last.0].blob_end);
    let range = start..end;
    if job.source.held_locally(range.clone()) {
        // Already on disk (another window got there first): nothing to fetch.
        return;
    }
    bump(&job.state.counters.requests, 1);
    if job.state.options.stream {
        // Each chunk completed as soon as its bytes are in.
        let job = Arc::new(job);
        let result = window_stream::fetch(job.clone(), range.clone(), claims, in_flight).await;
        if let Err(error) = result {
            tracing::debug!(layer = %job.layer_name, ?range, %error, "window fetch broke; its chunks not in yet are fetched when read");
        }
        return;
    }
    let _in_flight = in_flight;
    let keep_all = job.state.options.keep_plaintext;
    let fetched = if keep_all {
        // Nothing below keeps the bytes: read them all, decode them all.
        read_exact(job.source.as_ref(), range.clone())
            .await
            .map(|bytes| (bytes.len() as u64, claims, start, bytes))
    } else {
        // Into the disk cache as fetched (not decrypted, not copied up), then read
        // back only what someone waits for.
        fetch_waited_for(job.source.as_ref(), range.clone(), claims, chunks).await
    };
    let (network, decode, start, bytes) = match fetched {
        Ok(done) => done,
        Err(error) => {
            // A window is only a guess: its failure fails no read. The guards are
            // dropped unresolved, so readers waiting for them fetch them themselves.
            tracing::debug!(layer = %job.layer_name, ?range, %error, "window fetch failed; its chunks are fetched when read");
            return;
        }
    };
    bump(&job.state.counters.bytes, network);
    if decode.is_empty() {
        return;
    }
    let tree = job.tree.clone();
    let wanted: Vec<usize> = decode.iter().map(|(i, _)| *i).collect();
    let decoded = tokio::task::spawn_blocking(move || {
        wanted
            .iter()
            .map(|&i| {
                let c = &tree.chunks()[i];
                let from = (c.blob_offset - start) as usize;
                let to = (c.blob_end - start) as usize;
                codec::decode_chunk(c, &bytes[from..to], tree.limits())
            })
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(decoded) = decoded else {
        // The decoding task died: its guards are dropped, waiters fetch themselves.
        return;
    };
    for ((i, guard), result) in decode.into_iter().zip(decoded) {
        job.finish(i, guard, result);
    }
}

/// The claimed chunks of a window and bytes starting at a blob offset that hold them.
type Fetched = (u64, Vec<(usize, FetchGuard<'static>)>, u64, Vec<u8>);

/// `range` of `source`, all of it or an error.
async fn read_exact(source: &dyn BlobSource, range: Range<u64>) -> io::Result<Vec<u8>> {
    let bytes = source.read_range(range.clone()).await?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} bytes for the {}-byte range {range:?}",
                bytes.len(),
                range.end - range.start
            ),
        ));
    }
    Ok(bytes)
}

/// Fetches `range` into the source's local copy ([`BlobSource::fetch_ahead`]), then
/// reads back the chunks of `claims` someone is waiting for by now; the others are
/// dropped unresolved (a later read finds their bytes on disk). Returns the bytes that
/// came from the network, the claims to decode and the bytes holding them.
async fn fetch_waited_for(
    source: &dyn BlobSource,
    range: Range<u64>,
    claims: Vec<(usize, FetchGuard<'static>)>,
    chunks: &[veil_formats::toc::Chunk],
) -> io::Result<Fetched> {
    let network = source.fetch_ahead(range).await?;
    let (decode, leave): (Vec<_>, Vec<_>) = claims
        .into_iter()
        .partition(|(_, guard)| guard.has_waiters());
    drop(leave);
    let start = decode.iter().map(|(i, _)| chunks[*i].blob_offset).min();
    let end = decode.iter().map(|(i, _)| chunks[*i].blob_end).max();
    let (Some(start), Some(end)) = (start, end) else {
        return Ok((network, Vec::new(), 0, Vec::new()));
    };
    let bytes = read_exact(source, start..end).await?;
    Ok((network, decode, start, bytes))
}

impl WindowJob {
    /// Hands chunk `i`'s decoded bytes to its waiters and the plaintext cache, or, when
    /// it failed verification, drops its bytes from the source's copy, counts the
    /// failure and fails the reads waiting for it (EIO).
    pub(crate) fn finish(
        &self,
        i: usize,
        guard: FetchGuard<'static>,
        result: Result<Vec<u8>, codec::CodecError>,
    ) {
        match result {
            Ok(data) => {
                bump(&self.state.counters.chunks_cached, 1);
                guard.complete(data);
            }
            Err(err) => {
                let c = &self.tree.chunks()[i];
                self.source.discard(c.blob_offset..c.blob_end);
                let attempt = strike(&self.strikes, i as u64);
                let file = self.file_of(i);
                tracing::error!(
                    layer = %self.layer_name,
                    file = %file,
                    chunk = i,
                    blob_range = ?(c.blob_offset..c.blob_end),
                    error = %err,
                    attempt,
                    "chunk of a fetch window failed verification; reads of it fail with EIO"
                );
                guard.fail(Arc::new(WindowVerifyError {
                    layer: self.layer_name.clone(),
                    file,
                    chunk: i as u64,
                    message: err.to_string(),
                }));
            }
        }
    }

    /// How logs name the file holding chunk `i`.
    fn file_of(&self, i: usize) -> String {
        let node = self.tree.nodes().iter().find(|n| n.chunks.contains(&i));
        match node {
            Some(n) if self.redact_paths => format!("<inode {}>", n.ino),
            Some(n) => self.tree.path(n.ino),
            None => "<unknown>".to_string(),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[cfg(test)]
#[path = "window_tests.rs"]
pub(crate) mod tests;
