//! The chunk pipeline: a byte range of a file in, verified plaintext out.
//!
//! [`ChunkReader::read`] maps the range to the file's chunks, takes what the plaintext
//! [`ChunkCache`] holds, waits for chunks another reader is already fetching, and fetches
//! the rest through the layer's [`BlobSource`]: chunks that are adjacent in the blob are
//! coalesced into one range request (up to [`ReaderOptions::max_request`] bytes). Fetched
//! bytes are decoded and verified by [`codec::decode_chunk`] on a blocking thread, cached,
//! and the requested bytes assembled. With [`ReaderOptions::window`] on, a read that
//! fetches also starts a neighbourhood window beside its own request ([`crate::window`]).
//!
//! Fail closed: a chunk whose digest does not match (or that does not decompress) fails
//! the read with [`ReadError::Verify`], which the filesystem answers with `EIO`, and is
//! logged with `tracing::error!` naming the layer, file and chunk. Wrong bytes are never
//! returned. The source is told to [`discard`](BlobSource::discard) the chunk's bytes (a
//! disk cache drops them, so bytes corrupted on local disk are fetched again); a chunk
//! that fails [`MAX_VERIFY_ATTEMPTS`] times is remembered, and later reads of it fail at
//! once with [`ReadError::KnownBad`] instead of fetching it again and again. Fetch errors surface after the source's own bounded retries; the pipeline
//! does not retry.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::join_all;

use crate::cache::{ChunkCache, ChunkData, ChunkKey, FetchGuard, Lookup, WaitError, Waiter};
use crate::read_data::{ReadAssembler, ReadData};
use crate::tree::{LayerTree, Node, NodeKind};
use crate::window::{self, Strikes, WindowJob, WindowOptions, WindowState};
use crate::window_plan::DIR_WINDOW_FILE_MAX;
use veil_blob::BlobSource;
use veil_formats::codec::{self, CodecError};

/// How many times one chunk may fail verification before it is not fetched any more.
pub const MAX_VERIFY_ATTEMPTS: u32 = 2;

/// Default cap on one coalesced range request: 16 MiB.
pub const DEFAULT_MAX_REQUEST: u64 = 16 << 20;

/// Tuning of a [`ChunkReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderOptions {
    /// The most bytes one coalesced range request may span (a single chunk bigger than
    /// this is still fetched, alone).
    pub max_request: u64,
    /// Name files by inode number, not path, in logs and errors: for encrypted layers,
    /// whose file names are plaintext that must not reach the journal on disk.
    pub redact_paths: bool,
    /// Neighbourhood windows fetched around misses (default: off).
    pub window: WindowOptions,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            max_request: DEFAULT_MAX_REQUEST,
            redact_paths: false,
            window: WindowOptions::OFF,
        }
    }
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No such inode.
    #[error("no inode {0}")]
    NoSuchInode(u64),
    /// The inode is not a regular file.
    #[error("inode {0} is not a regular file")]
    NotAFile(u64),
    /// The blob source failed (after its own retries) or returned the wrong length.
    #[error("layer {layer}: fetching blob bytes {range:?} for {path:?} failed: {source}")]
    Fetch {
        /// Layer name.
        layer: String,
        /// The file being read.
        path: String,
        /// The blob range requested.
        range: Range<u64>,
        /// What the source said.
        #[source]
        source: Arc<io::Error>,
    },
    /// A chunk failed decompression or digest verification.
    #[error("layer {layer}: chunk {chunk} of {path:?} failed verification: {source}")]
    Verify {
        /// Layer name.
        layer: String,
        /// The file being read.
        path: String,
        /// The chunk's layer-wide index.
        chunk: u64,
        /// What the codec said.
        #[source]
        source: Arc<CodecError>,
    },
    /// Another reader's fetch of a chunk this read needed failed.
    #[error("layer {layer}: chunk {chunk} of {path:?}: {source}")]
    Shared {
        /// Layer name.
        layer: String,
        /// The file being read.
        path: String,
        /// The chunk's layer-wide index.
        chunk: u64,
        /// The shared failure.
        #[source]
        source: WaitError,
    },
    /// The layer as a whole failed verification (e.g. the ocicrypt HMAC over the whole
    /// blob): nothing of it is served any more.
    #[error("layer {layer} is marked bad: {reason}")]
    LayerBad {
        /// Layer name.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A chunk failed verification [`MAX_VERIFY_ATTEMPTS`] times and is not fetched again.
    #[error("layer {layer}: chunk {chunk} of {path:?} failed verification {attempts} times; not fetched again")]
    KnownBad {
        /// Layer name.
        layer: String,
        /// The file being read.
        path: String,
        /// The chunk's layer-wide index.
        chunk: u64,
        /// How many times it failed.
        attempts: u32,
    },
    /// A decoding task died (panicked or was cancelled).
    #[error("layer {layer}: chunk decoding task failed: {message}")]
    Task {
        /// Layer name.
        layer: String,
        /// What happened.
        message: String,
    },
}

impl ReadError {
    /// The errno the filesystem should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            ReadError::NoSuchInode(_) => libc::ENOENT,
            ReadError::NotAFile(_) => libc::EISDIR,
            _ => libc::EIO,
        }
    }
}

/// Counters of a reader, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Range requests sent to the source (windows included).
    pub range_requests: u64,
    /// Bytes received from the source (windows included).
    pub bytes_fetched: u64,
    /// Of those, neighbourhood window requests.
    pub window_requests: u64,
    /// Of those, bytes received by windows.
    pub window_bytes: u64,
    /// Window chunks decoded into the plaintext cache.
    pub window_chunks_cached: u64,
    /// Chunks served from the cache.
    pub chunk_hits: u64,
    /// Chunks this reader fetched and decoded.
    pub chunks_fetched: u64,
    /// Chunks taken from another reader's fetch.
    pub chunk_waits: u64,
    /// Chunks that failed verification.
    pub verify_failures: u64,
    /// Range requests that failed.
    pub fetch_failures: u64,
}

#[derive(Default)]
struct Counters {
    range_requests: AtomicU64,
    bytes_fetched: AtomicU64,
    chunk_hits: AtomicU64,
    chunks_fetched: AtomicU64,
    chunk_waits: AtomicU64,
    verify_failures: AtomicU64,
    fetch_failures: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Reads file ranges of one layer.
pub struct ChunkReader {
    layer_id: u64,
    layer_name: String,
    tree: Arc<LayerTree>,
    source: Arc<dyn BlobSource>,
    cache: Arc<ChunkCache>,
    options: ReaderOptions,
    counters: Counters,
    bad: std::sync::OnceLock<String>,
    /// Verification failures per chunk (layer-wide index), shared with windows.
    pub(crate) strikes: Arc<Strikes>,
    /// Window tuning and what is in flight, shared with windows.
    pub(crate) windows: Arc<WindowState>,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("layer_id", &self.layer_id)
            .field("layer_name", &self.layer_name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// One chunk this read must fetch itself.
struct Claim<'a> {
    /// Index into the file's chunk list.
    local: usize,
    guard: FetchGuard<'a>,
}

impl ChunkReader {
    /// A reader of the layer `layer_name` (used in logs) described by `tree`, whose blob
    /// is `source`, caching in `cache` under a fresh layer id.
    pub fn new(
        layer_name: impl Into<String>,
        tree: Arc<LayerTree>,
        source: Arc<dyn BlobSource>,
        cache: Arc<ChunkCache>,
        options: ReaderOptions,
    ) -> Self {
        Self {
            layer_id: cache.new_layer_id(),
            layer_name: layer_name.into(),
            tree,
            source,
            cache,
            options,
            counters: Counters::default(),
            bad: std::sync::OnceLock::new(),
            strikes: Default::default(),
            windows: Arc::new(WindowState::new(options.window)),
        }
    }

    /// Marks the whole layer bad: every later read fails (EIO), cached chunks included.
    /// The first reason given is kept.
    pub fn mark_bad(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(layer = %self.layer_name, %reason, "layer marked bad: every read of it now fails");
        let _ = self.bad.set(reason);
    }

    /// Why the layer was marked bad, if it was.
    pub fn bad_reason(&self) -> Option<&str> {
        self.bad.get().map(String::as_str)
    }

    /// The layer's id in the cache.
    pub fn layer_id(&self) -> u64 {
        self.layer_id
    }

    /// The layer's name, as given.
    pub fn layer_name(&self) -> &str {
        &self.layer_name
    }

    /// The layer's tree.
    pub fn tree(&self) -> &Arc<LayerTree> {
        &self.tree
    }

    /// The cache it uses.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Current counters.
    pub fn stats(&self) -> ReadStats {
        let c = &self.counters;
        let w = &self.windows.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReadStats {
            range_requests: load(&c.range_requests) + load(&w.requests),
            bytes_fetched: load(&c.bytes_fetched) + load(&w.bytes),
            window_requests: load(&w.requests),
            window_bytes: load(&w.bytes),
            window_chunks_cached: load(&w.chunks_cached),
            chunk_hits: load(&c.chunk_hits),
            chunks_fetched: load(&c.chunks_fetched),
            chunk_waits: load(&c.chunk_waits),
            verify_failures: load(&c.verify_failures),
            fetch_failures: load(&c.fetch_failures),
        }
    }

    /// Tells windows that a prefetch of the blob up to `end` is running (0: none is):
    /// they leave the chunks before `end` to it.
    pub fn set_prefetching_until(&self, end: u64) {
        self.windows.prefetching_until.store(end, Ordering::Relaxed);
    }

    /// Up to `len` bytes of file `ino` from `offset` (fewer at end of file, none past it).
    ///
    /// The result is allocated whole: callers keep `len` modest (FUSE asks for at most a
    /// few hundred KiB at a time). [`ChunkReader::read_data`] avoids the copy.
    pub async fn read(&self, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        self.read_data(ino, offset, len)
            .await
            .map(ReadData::into_vec)
    }

    /// [`ChunkReader::read`] without copying: a read inside one chunk is that cached
    /// chunk's buffer and a range of it; only a read spanning chunks is copied (once).
    pub async fn read_data(&self, ino: u64, offset: u64, len: u64) -> Result<ReadData, ReadError> {
        if let Some(reason) = self.bad.get() {
            return Err(ReadError::LayerBad {
                layer: self.layer_name.clone(),
                reason: reason.clone(),
            });
        }
        let node = self.tree.node(ino).ok_or(ReadError::NoSuchInode(ino))?;
        if node.kind != NodeKind::Reg {
            return Err(ReadError::NotAFile(ino));
        }
        if offset >= node.size || len == 0 {
            return Ok(ReadData::Empty);
        }
        let end = offset.saturating_add(len).min(node.size);
        let chunks = self.tree.file_chunks(node);
        let first = chunks.partition_point(|c| c.file_offset + c.size <= offset);
        let last = chunks.partition_point(|c| c.file_offset < end);
        let wanted = first..last.max(first);

        self.refuse_known_bad(node, wanted.clone())?;
        let mut parts: Vec<Option<ChunkData>> = vec![None; wanted.len()];
        let mut waits: Vec<(usize, Waiter)> = Vec::new();
        let mut claims: Vec<Claim<'_>> = Vec::new();
        for local in wanted.clone() {
            match self.cache.lookup(self.key(node, local)) {
                Lookup::Hit(data) => {
                    bump(&self.counters.chunk_hits, 1);
                    parts[local - first] = Some(data);
                }
                Lookup::Wait(waiter) => waits.push((local, waiter)),
                Lookup::Fetch(guard) => claims.push(Claim { local, guard }),
            }
        }

        // Fetch our misses, adjacent ones coalesced, the runs concurrently; the
        // neighbourhood around them beside them.
        self.start_window(node, &claims);
        let runs = self.coalesce(node, claims);
        let mut first_error = None;
        for result in join_all(runs.into_iter().map(|run| self.fetch_run(node, run))).await {
            match result {
                Ok(done) => {
                    for (local, data) in done {
                        parts[local - first] = Some(data);
                    }
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        for (local, waiter) in waits {
            parts[local - first] = Some(self.wait_for(node, local, waiter).await?);
        }

        let mut out = ReadAssembler::new(usize::try_from(end - offset).unwrap_or(0));
        for local in wanted {
            let chunk = &chunks[local];
            let data = parts[local - first].take().unwrap_or_else(|| Arc::from([]));
            let from = offset.max(chunk.file_offset) - chunk.file_offset;
            let to = end.min(chunk.file_offset + chunk.size) - chunk.file_offset;
            let pushed = usize::try_from(from)
                .ok()
                .zip(usize::try_from(to).ok())
                .is_some_and(|(from, to)| from <= to && out.push(&data, from..to));
            if !pushed {
                return Err(ReadError::Task {
                    layer: self.layer_name.clone(),
                    message: format!(
                        "chunk {} of {:?} has {} bytes, expected {}",
                        self.global(node, local),
                        self.shown(node),
                        data.len(),
                        chunk.size
                    ),
                });
            }
        }
        Ok(out.finish())
    }

    /// How logs and errors name `node`: its path, or with
    /// [`ReaderOptions::redact_paths`] its inode number.
    fn shown(&self, node: &Node) -> String {
        if self.options.redact_paths {
            format!("<inode {}>", node.ino)
        } else {
            self.tree.path(node.ino)
        }
    }

    /// Starts a window around the blob range of `claims` (this read's misses), if
    /// windows are on and there is anything to fetch.
    fn start_window(&self, node: &Node, claims: &[Claim<'_>]) {
        if !self.windows.options.enabled() || claims.is_empty() {
            return;
        }
        let chunks = self.tree.file_chunks(node);
        let start = claims.iter().map(|c| chunks[c.local].blob_offset).min();
        let end = claims.iter().map(|c| chunks[c.local].blob_end).max();
        let (Some(start), Some(end)) = (start, end) else {
            return;
        };
        // A miss the disk cache answers costs no round trip: nothing to save.
        if self.source.held_locally(start..end) {
            return;
        }
        // A small file's miss may start its directory's window.
        let dir = (node.size <= DIR_WINDOW_FILE_MAX).then_some(node.parent);
        let planned = self.windows.plan(&self.tree, start..end, dir);
        let claims = window::claim(&self.cache, self.layer_id, &planned);
        if claims.is_empty() {
            return;
        }
        window::spawn(WindowJob {
            layer_name: self.layer_name.clone(),
            redact_paths: self.options.redact_paths,
            tree: self.tree.clone(),
            source: self.source.clone(),
            state: self.windows.clone(),
            strikes: self.strikes.clone(),
            claims,
        });
    }

    /// Fails with [`ReadError::KnownBad`] if one of the file's chunks `locals` failed
    /// verification too often.
    fn refuse_known_bad(&self, node: &Node, locals: Range<usize>) -> Result<(), ReadError> {
        let strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        if strikes.is_empty() {
            return Ok(());
        }
        for local in locals {
            let chunk = self.global(node, local);
            match strikes.get(&chunk) {
                Some(&attempts) if attempts >= MAX_VERIFY_ATTEMPTS => {
                    return Err(ReadError::KnownBad {
                        layer: self.layer_name.clone(),
                        path: self.shown(node),
                        chunk,
                        attempts,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records a verification failure of `chunk`; returns how many it has had.
    fn strike(&self, chunk: u64) -> u32 {
        window::strike(&self.strikes, chunk)
    }

    fn global(&self, node: &Node, local: usize) -> u64 {
        (node.chunks.start + local) as u64
    }

    fn key(&self, node: &Node, local: usize) -> ChunkKey {
        ChunkKey {
            layer: self.layer_id,
            chunk: self.global(node, local),
        }
    }

    /// Groups claims (in file order) into runs of chunks adjacent in the blob.
    fn coalesce<'a>(&self, node: &Node, claims: Vec<Claim<'a>>) -> Vec<Vec<Claim<'a>>> {
        let chunks = self.tree.file_chunks(node);
        let mut runs: Vec<Vec<Claim<'a>>> = Vec::new();
        let mut span = 0..0u64;
        for claim in claims {
            let chunk = &chunks[claim.local];
            let joins = runs.last().is_some_and(|_| {
                chunk.blob_offset >= span.start
                    && chunk.blob_offset <= span.end
                    && chunk.blob_end.max(span.end) - span.start <= self.options.max_request
            });
            if joins {
                span.end = span.end.max(chunk.blob_end);
                if let Some(run) = runs.last_mut() {
                    run.push(claim);
                }
            } else {
                span = chunk.blob_offset..chunk.blob_end;
                runs.push(vec![claim]);
            }
        }
        runs
    }

    /// Fetches one run with one range request, decodes, verifies and caches its chunks.
    async fn fetch_run(
        &self,
        node: &Node,
        run: Vec<Claim<'_>>,
    ) -> Result<Vec<(usize, ChunkData)>, ReadError> {
        let chunks = self.tree.file_chunks(node);
        let start = run
            .iter()
            .map(|c| chunks[c.local].blob_offset)
            .min()
            .unwrap_or(0);
        let end = run
            .iter()
            .map(|c| chunks[c.local].blob_end)
            .max()
            .unwrap_or(0);
        bump(&self.counters.range_requests, 1);
        let in_flight = &self.windows.explicit_in_flight;
        in_flight.fetch_add(1, Ordering::Relaxed);
        let fetched = self.source.read_range(start..end).await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        let fetched = fetched.and_then(|bytes| {
            bump(&self.counters.bytes_fetched, bytes.len() as u64);
            if bytes.len() as u64 == end - start {
                Ok(bytes)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "source returned {} bytes for a {}-byte range",
                        bytes.len(),
                        end - start
                    ),
                ))
            }
        });
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(err) => {
                bump(&self.counters.fetch_failures, 1);
                tracing::error!(
                    layer = %self.layer_name,
                    file = %self.shown(node),
                    ino = node.ino,
                    blob_range = ?(start..end),
                    error = %err,
                    "fetching chunks failed; the read fails with EIO"
                );
                let err = ReadError::Fetch {
                    layer: self.layer_name.clone(),
                    path: self.shown(node),
                    range: start..end,
                    source: Arc::new(err),
                };
                for claim in run {
                    claim.guard.fail(Arc::new(err.clone()));
                }
                return Err(err);
            }
        };

        // Decompress and verify off the async threads.
        let tree = self.tree.clone();
        let globals: Vec<usize> = run.iter().map(|c| node.chunks.start + c.local).collect();
        let decoded = tokio::task::spawn_blocking(move || {
            globals
                .iter()
                .map(|&global| {
                    let chunk = &tree.chunks()[global];
                    let from = (chunk.blob_offset - start) as usize;
                    let to = (chunk.blob_end - start) as usize;
                    codec::decode_chunk(chunk, &bytes[from..to], tree.limits())
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|err| ReadError::Task {
            layer: self.layer_name.clone(),
            message: err.to_string(),
        })?;

        let mut done = Vec::with_capacity(run.len());
        let mut first_error = None;
        for (claim, result) in run.into_iter().zip(decoded) {
            let global = self.global(node, claim.local);
            match result {
                Ok(data) => {
                    bump(&self.counters.chunks_fetched, 1);
                    done.push((claim.local, claim.guard.complete(data)));
                }
                Err(err) => {
                    bump(&self.counters.verify_failures, 1);
                    let chunk = &chunks[claim.local];
                    self.source.discard(chunk.blob_offset..chunk.blob_end);
                    let attempt = self.strike(global);
                    tracing::error!(
                        layer = %self.layer_name,
                        file = %self.shown(node),
                        ino = node.ino,
                        chunk = global,
                        file_offset = chunk.file_offset,
                        blob_range = ?(chunk.blob_offset..chunk.blob_end),
                        error = %err,
                        attempt,
                        "chunk failed verification; the read fails with EIO"
                    );
                    let err = ReadError::Verify {
                        layer: self.layer_name.clone(),
                        path: self.shown(node),
                        chunk: global,
                        source: Arc::new(err),
                    };
                    claim.guard.fail(Arc::new(err.clone()));
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(done),
        }
    }

    /// Waits for another reader's fetch of chunk `local`, taking it over if abandoned.
    async fn wait_for(
        &self,
        node: &Node,
        local: usize,
        mut waiter: Waiter,
    ) -> Result<ChunkData, ReadError> {
        loop {
            match waiter.wait().await {
                Ok(data) => {
                    bump(&self.counters.chunk_waits, 1);
                    return Ok(data);
                }
                Err(source @ WaitError::Failed(_)) => {
                    return Err(ReadError::Shared {
                        layer: self.layer_name.clone(),
                        path: self.shown(node),
                        chunk: self.global(node, local),
                        source,
                    })
                }
                Err(WaitError::Abandoned) => {}
            }
            match self.cache.lookup(self.key(node, local)) {
                Lookup::Hit(data) => {
                    bump(&self.counters.chunk_hits, 1);
                    return Ok(data);
                }
                Lookup::Wait(next) => waiter = next,
                Lookup::Fetch(guard) => {
                    let mut done = self.fetch_run(node, vec![Claim { local, guard }]).await?;
                    return match done.pop() {
                        Some((_, data)) => Ok(data),
                        None => Err(ReadError::Task {
                            layer: self.layer_name.clone(),
                            message: "fetch returned no chunk".to_string(),
                        }),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
pub(crate) mod tests;
