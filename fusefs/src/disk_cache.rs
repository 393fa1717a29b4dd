//! The persistent cache of blob bytes: what the registry served, kept on local disk.
//!
//! [`DiskCache`] keeps, under one directory, byte ranges of layer blobs exactly as the
//! registry serves them (compressed, and for encrypted layers still encrypted: wrap the
//! registry's source, never a decrypting one, so no plaintext reaches the disk). It has
//! its own byte budget and evicts least recently used whole blobs to stay within it.
//! [`DiskCache::wrap`] puts it in front of a blob's [`BlobSource`]: the returned
//! [`CachedBlob`] answers a read from disk when every byte of the range is present, and
//! otherwise fetches what is missing from the inner source (the span from the first to
//! the last missing byte, in one request), records it and answers.
//!
//! **Storage.** One sparse data file per blob (`<name>.blob`, the blob's size, holes where
//! nothing is cached) and a sidecar (`<name>.ranges`) listing the byte ranges present,
//! with a SHA-256 of its own text; `<name>` is derived from a hash of the blob key (the
//! digest), which the sidecar also records. A lock file keeps a second process out.
//!
//! **Never garbage.** A range counts as present only after its bytes were fully written.
//! The sidecar on disk only ever lists ranges whose bytes were flushed first: a persist
//! takes the in-memory set, `fdatasync`s the data file, writes the sidecar to a temporary
//! file, `fsync`s it and renames it into place. Persisting runs on a blocking thread after
//! a store (at most one per blob at a time, repeated while more arrived meanwhile), on
//! [`DiskCache::flush`], when a [`CachedBlob`] is dropped and when the cache is dropped. A
//! crash loses at most the ranges recorded since the last persist. On open, sidecars that
//! do not parse or check, whose data file is missing or has the wrong size, and data
//! files without a sidecar are deleted (logged).
//!
//! **Failures degrade.** Every cache error (disk full, unreadable file, corrupt sidecar)
//! is logged and counted, and the read is served by the inner source: the cache never
//! fails a read the network could serve. A disk read that fails drops the range (or the
//! whole blob, when its file is gone) from the cache.
//!
//! **Verification.** The cache cannot check bytes itself: chunks are verified after
//! decoding by the pipeline, so bytes corrupted on disk surface there as a digest
//! mismatch (EIO). To let the next read fetch them again, whoever detects the mismatch
//! calls [`CachedBlob::forget`] (or [`DiskCache::invalidate`] by key) with the blob range;
//! the prefetcher does so for what it verifies. (The chunk reader has no such hook yet.)
//!
//! **Concurrency.** Reads take two short locks (the index for recency, the blob's state
//! for the present set) and read the data file without any lock held. Writers write only
//! the ranges still missing, so readers never see bytes change under them.
//!
//! Locks are taken in the order index → blob `io` → blob `state` (a persist takes the
//! blob's `persist` lock before `io`); none is held across an `await`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::BlobSource;

/// Default byte budget of the disk cache: 1 GiB.
pub const DEFAULT_DISK_BUDGET: u64 = 1 << 30;

const LOCK_FILE: &str = "lock";
const DATA_SUFFIX: &str = ".blob";
const SIDECAR_SUFFIX: &str = ".ranges";
const TMP_MARKER: &str = ".tmp-";
const SIDECAR_VERSION: u32 = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A set of disjoint, non-adjacent byte ranges, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RangeSet(Vec<Range<u64>>);

impl RangeSet {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// The parts of `range` not in the set, in order.
    fn gaps(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if range.start >= range.end {
            return out;
        }
        let mut pos = range.start;
        let first = self.0.partition_point(|r| r.end <= range.start);
        for r in &self.0[first..] {
            if r.start >= range.end {
                break;
            }
            if r.start > pos {
                out.push(pos..r.start);
            }
            pos = pos.max(r.end);
            if pos >= range.end {
                break;
            }
        }
        if pos < range.end {
            out.push(pos..range.end);
        }
        out
    }

    fn contains(&self, range: Range<u64>) -> bool {
        self.gaps(range).is_empty()
    }

    /// Adds `range`; returns how many bytes were new.
    fn insert(&mut self, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        let added = self
            .gaps(range.clone())
            .iter()
            .map(|g| g.end - g.start)
            .sum();
        let lo = self.0.partition_point(|r| r.end < range.start);
        let hi = self.0.partition_point(|r| r.start <= range.end);
        let merged = if lo < hi {
            self.0[lo].start.min(range.start)..self.0[hi - 1].end.max(range.end)
        } else {
            range
        };
        self.0.splice(lo..hi, [merged]);
        added
    }

    /// Removes `range`; returns how many bytes were removed.
    fn remove(&mut self, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        let mut removed = 0;
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for r in self.0.drain(..) {
            if r.end <= range.start || r.start >= range.end {
                out.push(r);
                continue;
            }
            removed += r.end.min(range.end) - r.start.max(range.start);
            if r.start < range.start {
                out.push(r.start..range.start);
            }
            if r.end > range.end {
                out.push(range.end..r.end);
            }
        }
        self.0 = out;
        removed
    }
}

/// What the sidecar file records.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    version: u32,
    key: String,
    size: u64,
    ranges: Vec<(u64, u64)>,
}

impl Sidecar {
    /// The JSON body, a newline, its SHA-256 in hex and a newline.
    fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        let sum = hex::encode(Sha256::digest(&out));
        out.push(b'\n');
        out.extend_from_slice(sum.as_bytes());
        out.push(b'\n');
        out
    }

    fn decode(bytes: &[u8]) -> Result<(Self, RangeSet), String> {
        let text = bytes
            .strip_suffix(b"\n")
            .ok_or("no final newline (truncated?)")?;
        let split = text
            .iter()
            .rposition(|&b| b == b'\n')
            .ok_or("no checksum line")?;
        let (body, sum) = (&text[..split], &text[split + 1..]);
        if hex::encode(Sha256::digest(body)).as_bytes() != sum {
            return Err("checksum mismatch".into());
        }
        let sidecar: Sidecar = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if sidecar.version != SIDECAR_VERSION {
            return Err(format!("unknown version {}", sidecar.version));
        }
        let mut set = RangeSet::default();
        let mut last_end = 0;
        for &(start, end) in &sidecar.ranges {
            if start >= end || end > sidecar.size || start < last_end {
                return Err(format!("bad range {start}..{end}"));
            }
            last_end = end;
            set.insert(start..end);
        }
        Ok((sidecar, set))
    }
}

/// The file-name stem for blob `key`.
fn stem_of(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..20])
}

/// Counters of a disk cache, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCacheStats {
    /// Bytes answered from disk.
    pub bytes_from_disk: u64,
    /// Bytes fetched from the inner sources.
    pub bytes_from_inner: u64,
    /// Reads answered wholly from disk.
    pub hits: u64,
    /// Reads that needed the inner source (partly or wholly).
    pub misses: u64,
    /// Bytes written to the cache.
    pub bytes_stored: u64,
    /// Bytes not kept because they did not fit in the budget.
    pub bytes_rejected: u64,
    /// Blobs evicted to stay within the budget.
    pub evictions: u64,
    /// Bytes dropped by [`CachedBlob::forget`], [`DiskCache::invalidate`] or after a
    /// failed disk read.
    pub bytes_forgotten: u64,
    /// Cache errors (each logged) that were worked around.
    pub errors: u64,
    /// Bytes of blob data held now.
    pub bytes: u64,
    /// Blobs with data held now.
    pub blobs: u64,
    /// The byte budget.
    pub budget: u64,
}

#[derive(Default)]
struct Counters {
    bytes_from_disk: AtomicU64,
    bytes_from_inner: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_stored: AtomicU64,
    bytes_rejected: AtomicU64,
    evictions: AtomicU64,
    bytes_forgotten: AtomicU64,
    errors: AtomicU64,
}

/// One blob's cache entry.
struct BlobEntry {
    key: String,
    stem: String,
    size: u64,
    /// Serializes creating, renaming and deleting this blob's files.
    io: Mutex<()>,
    /// Serializes persists of this blob's sidecar.
    persist: Mutex<()>,
    state: Mutex<BlobState>,
}

#[derive(Default)]
struct BlobState {
    /// Bumped whenever the data file is deleted or replaced: writes and persists begun
    /// under an older epoch must not mark anything present.
    epoch: u64,
    present: RangeSet,
    file: Option<Arc<File>>,
    /// The in-memory set differs from the sidecar on disk.
    dirty: bool,
    persist_scheduled: bool,
}

/// The index's record of one blob.
struct Slot {
    entry: Arc<BlobEntry>,
    /// Bytes present (equals the entry's present set total).
    present: u64,
    /// Bytes reserved by writes in flight.
    reserved: u64,
    last_used: u64,
}

#[derive(Default)]
struct Index {
    slots: HashMap<String, Slot>,
    /// Sum of `present + reserved` over the slots.
    total: u64,
    tick: u64,
}

/// What a store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Everything in the range is now present.
    Kept,
    /// It was present already.
    AlreadyPresent,
    /// Not kept (over budget, or a cache error, logged).
    NotKept,
}

/// A persistent cache of blob bytes under one directory; see the module documentation.
pub struct DiskCache {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    counters: Counters,
    tmp_seq: AtomicU64,
    _lock: File,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DiskCache {
    /// Opens (creating it, mode 0700) the cache directory `dir`, holding at most `budget`
    /// bytes; loads what a previous run left there, deleting anything incomplete.
    ///
    /// Fails if the directory cannot be created or another process has it open.
    pub fn open(dir: impl AsRef<Path>, budget: u64) -> io::Result<Arc<Self>> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "disk cache {} is in use by another process: {err}",
                    dir.display()
                ),
            ));
        }
        let cache = Self {
            dir,
            budget,
            index: Mutex::new(Index::default()),
            counters: Counters::default(),
            tmp_seq: AtomicU64::new(0),
            _lock: lock_file,
        };
        cache.load()?;
        Ok(Arc::new(cache))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Puts the cache in front of `inner`, the blob `blob_key` (its digest). Reads of the
    /// returned source (which coerces to `Arc<dyn BlobSource>`) are served from disk when
    /// possible and recorded otherwise.
    pub fn wrap(self: &Arc<Self>, blob_key: &str, inner: Arc<dyn BlobSource>) -> Arc<CachedBlob> {
        let size = inner.size();
        let mut index = lock(&self.index);
        let reusable = index
            .slots
            .get(blob_key)
            .map(|slot| slot.entry.size == size);
        if reusable == Some(false) {
            tracing::warn!(
                blob = blob_key,
                size,
                "disk cache held this blob with another size; dropping it"
            );
            self.evict_locked(&mut index, blob_key);
            if let Some(slot) = index.slots.remove(blob_key) {
                index.total -= slot.present + slot.reserved;
            }
        }
        index.tick += 1;
        let tick = index.tick;
        let entry = match index.slots.get_mut(blob_key) {
            Some(slot) => {
                slot.last_used = tick;
                slot.entry.clone()
            }
            None => {
                let entry = Arc::new(BlobEntry {
                    key: blob_key.to_string(),
                    stem: stem_of(blob_key),
                    size,
                    io: Mutex::new(()),
                    persist: Mutex::new(()),
                    state: Mutex::new(BlobState::default()),
                });
                index.slots.insert(
                    blob_key.to_string(),
                    Slot {
                        entry: entry.clone(),
                        present: 0,
                        reserved: 0,
                        last_used: tick,
                    },
                );
                entry
            }
        };
        drop(index);
        Arc::new(CachedBlob {
            cache: self.clone(),
            entry,
            inner,
            bytes_from_disk: AtomicU64::new(0),
            bytes_from_inner: AtomicU64::new(0),
        })
    }

    /// Drops `range` of blob `blob_key` from the cache (bytes found corrupt, say): the
    /// next read of it goes to the network. Returns the bytes dropped.
    pub fn invalidate(self: &Arc<Self>, blob_key: &str, range: Range<u64>) -> u64 {
        let entry = lock(&self.index)
            .slots
            .get(blob_key)
            .map(|s| s.entry.clone());
        match entry {
            Some(entry) => self.forget(&entry, range),
            None => 0,
        }
    }

    /// Writes every blob's pending sidecar now (blocking).
    pub fn flush(&self) {
        let entries: Vec<Arc<BlobEntry>> = lock(&self.index)
            .slots
            .values()
            .map(|s| s.entry.clone())
            .collect();
        for entry in entries {
            let _ = self.persist(&entry);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> DiskCacheStats {
        let (bytes, blobs) = {
            let index = lock(&self.index);
            let present: u64 = index.slots.values().map(|s| s.present).sum();
            let blobs = index.slots.values().filter(|s| s.present > 0).count() as u64;
            (present, blobs)
        };
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskCacheStats {
            bytes_from_disk: load(&c.bytes_from_disk),
            bytes_from_inner: load(&c.bytes_from_inner),
            hits: load(&c.hits),
            misses: load(&c.misses),
            bytes_stored: load(&c.bytes_stored),
            bytes_rejected: load(&c.bytes_rejected),
            evictions: load(&c.evictions),
            bytes_forgotten: load(&c.bytes_forgotten),
            errors: load(&c.errors),
            bytes,
            blobs,
            budget: self.budget,
        }
    }

    fn data_path(&self, entry: &BlobEntry) -> PathBuf {
        self.dir.join(format!("{}{DATA_SUFFIX}", entry.stem))
    }

    fn sidecar_path(&self, entry: &BlobEntry) -> PathBuf {
        self.dir.join(format!("{}{SIDECAR_SUFFIX}", entry.stem))
    }

    fn error(&self) {
        bump(&self.counters.errors, 1);
    }

    /// Loads the entries a previous run persisted; deletes everything else.
    fn load(&self) -> io::Result<()> {
        let mut sidecars = Vec::new();
        let mut data_files = Vec::new();
        for dirent in std::fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            let path = dirent.path();
            if name == LOCK_FILE {
                continue;
            }
            if name.contains(TMP_MARKER) {
                remove_quietly(&path);
            } else if let Some(stem) = name.strip_suffix(SIDECAR_SUFFIX) {
                sidecars.push((stem.to_string(), path));
            } else if let Some(stem) = name.strip_suffix(DATA_SUFFIX) {
                data_files.push(stem.to_string());
            } else {
                tracing::warn!(path = %path.display(), "disk cache: ignoring unknown file");
            }
        }
        let mut loaded = Vec::new();
        for (stem, path) in sidecars {
            let data = self.dir.join(format!("{stem}{DATA_SUFFIX}"));
            match check_sidecar(&stem, &path, &data) {
                Ok((sidecar, present, mtime)) => loaded.push((mtime, sidecar, present, stem)),
                Err(why) => {
                    tracing::warn!(
                        sidecar = %path.display(),
                        reason = %why,
                        "disk cache: discarding an entry that cannot be trusted"
                    );
                    self.error();
                    remove_quietly(&path);
                    remove_quietly(&data);
                }
            }
        }
        for stem in data_files {
            if !loaded.iter().any(|(_, _, _, s)| *s == stem) {
                tracing::debug!(stem, "disk cache: deleting a data file without a sidecar");
                remove_quietly(&self.dir.join(format!("{stem}{DATA_SUFFIX}")));
            }
        }
        loaded.sort_by_key(|(mtime, ..)| *mtime);
        let mut index = lock(&self.index);
        for (_, sidecar, present, stem) in loaded {
            index.tick += 1;
            let bytes = present.total();
            let entry = Arc::new(BlobEntry {
                key: sidecar.key.clone(),
                stem,
                size: sidecar.size,
                io: Mutex::new(()),
                persist: Mutex::new(()),
                state: Mutex::new(BlobState {
                    present,
                    ..BlobState::default()
                }),
            });
            index.total += bytes;
            let tick = index.tick;
            index.slots.insert(
                sidecar.key,
                Slot {
                    entry,
                    present: bytes,
                    reserved: 0,
                    last_used: tick,
                },
            );
        }
        // The budget may have shrunk since.
        let _ = self.make_room(&mut index, None, 0);
        tracing::debug!(
            dir = %self.dir.display(),
            blobs = index.slots.len(),
            bytes = index.total,
            "disk cache opened"
        );
        Ok(())
    }

    /// Evicts least recently used blobs (other than `keep`) until `extra` more bytes fit.
    fn make_room(&self, index: &mut Index, keep: Option<&str>, extra: u64) -> bool {
        while index.total + extra > self.budget {
            let victim = index
                .slots
                .iter()
                .filter(|(key, slot)| slot.present > 0 && Some(key.as_str()) != keep)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(key, _)| key.clone());
            match victim {
                Some(key) => self.evict_locked(index, &key),
                None => return false,
            }
        }
        true
    }

    /// Drops every byte of blob `key` and deletes its files.
    fn evict_locked(&self, index: &mut Index, key: &str) {
        let Some(slot) = index.slots.get_mut(key) else {
            return;
        };
        let entry = slot.entry.clone();
        index.total -= slot.present;
        slot.present = 0;
        {
            let _io = lock(&entry.io);
            let mut state = lock(&entry.state);
            state.epoch += 1;
            state.present = RangeSet::default();
            state.file = None;
            state.dirty = false;
            // Sidecar first: a data file without one is deleted at the next open.
            for path in [self.sidecar_path(&entry), self.data_path(&entry)] {
                if let Err(err) = std::fs::remove_file(&path) {
                    if err.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %err, "disk cache: deleting an evicted file failed");
                        self.error();
                    }
                }
            }
        }
        bump(&self.counters.evictions, 1);
        tracing::debug!(blob = key, "disk cache: evicted");
        // Forget the slot unless a CachedBlob or a write still uses it.
        let unused = index
            .slots
            .get(key)
            .is_some_and(|s| s.reserved == 0 && Arc::strong_count(&s.entry) == 2);
        drop(entry);
        if unused {
            index.slots.remove(key);
        }
    }

    fn touch(&self, entry: &BlobEntry) {
        let mut index = lock(&self.index);
        index.tick += 1;
        let tick = index.tick;
        if let Some(slot) = index.slots.get_mut(&entry.key) {
            slot.last_used = tick;
        }
    }

    /// The entry's data file (opened or created as needed) and the epoch it belongs to.
    fn open_file(&self, entry: &BlobEntry) -> io::Result<(Arc<File>, u64)> {
        {
            let state = lock(&entry.state);
            if let Some(file) = &state.file {
                return Ok((file.clone(), state.epoch));
            }
        }
        let _io = lock(&entry.io);
        let mut state = lock(&entry.state);
        if let Some(file) = &state.file {
            return Ok((file.clone(), state.epoch));
        }
        let path = self.data_path(entry);
        let file = if state.present.is_empty() {
            // Nothing is claimed: start a fresh file (a new inode, so that readers still
            // holding an old one keep reading what they were promised). An old sidecar
            // must be gone for good before a new data file can appear under its name.
            if std::fs::remove_file(self.sidecar_path(entry)).is_ok() {
                File::open(&self.dir)?.sync_all()?;
            }
            remove_quietly(&path);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.set_len(entry.size)?;
            // The file's name must be durable before any sidecar can point at it.
            File::open(&self.dir)?.sync_all()?;
            state.epoch += 1;
            file
        } else {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            if len != entry.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} has {len} bytes, expected {}",
                        path.display(),
                        entry.size
                    ),
                ));
            }
            file
        };
        let file = Arc::new(file);
        state.file = Some(file.clone());
        Ok((file, state.epoch))
    }

    /// Reads `range` from disk if it is all present (blocking); `None` if it is not.
    fn read_present(&self, entry: &BlobEntry, range: Range<u64>) -> io::Result<Option<Vec<u8>>> {
        if range.start >= range.end {
            return Ok(Some(Vec::new()));
        }
        if !lock(&entry.state).present.contains(range.clone()) {
            return Ok(None);
        }
        let (file, epoch) = self.open_file(entry)?;
        {
            let state = lock(&entry.state);
            if state.epoch != epoch || !state.present.contains(range.clone()) {
                return Ok(None);
            }
        }
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, range.start)?;
        Ok(Some(buf))
    }

    /// Records `data`, the blob's bytes from `at` (blocking). Only bytes still missing
    /// are written.
    fn store(self: &Arc<Self>, entry: &Arc<BlobEntry>, at: u64, data: &[u8]) -> Stored {
        let range = at..at + data.len() as u64;
        let (missing, reserved) = {
            let mut index = lock(&self.index);
            if !index
                .slots
                .get(&entry.key)
                .is_some_and(|s| Arc::ptr_eq(&s.entry, entry))
            {
                return Stored::NotKept;
            }
            let missing = lock(&entry.state).present.gaps(range);
            let n: u64 = missing.iter().map(|r| r.end - r.start).sum();
            if n == 0 {
                return Stored::AlreadyPresent;
            }
            if !self.make_room(&mut index, Some(&entry.key), n) {
                bump(&self.counters.bytes_rejected, n);
                tracing::debug!(
                    blob = %entry.key,
                    bytes = n,
                    budget = self.budget,
                    "disk cache: no room, not kept"
                );
                return Stored::NotKept;
            }
            index.total += n;
            if let Some(slot) = index.slots.get_mut(&entry.key) {
                slot.reserved += n;
            }
            (missing, n)
        };
        let written = (|| -> io::Result<u64> {
            let (file, epoch) = self.open_file(entry)?;
            for piece in &missing {
                let from = (piece.start - at) as usize;
                let to = (piece.end - at) as usize;
                file.write_all_at(&data[from..to], piece.start)?;
            }
            Ok(epoch)
        })();
        let mut kept = false;
        {
            let mut index = lock(&self.index);
            let mut added = 0;
            if let Ok(epoch) = &written {
                let mut state = lock(&entry.state);
                if state.epoch == *epoch && state.file.is_some() {
                    for piece in &missing {
                        added += state.present.insert(piece.clone());
                    }
                    state.dirty = true;
                    kept = true;
                }
            }
            let ours = index
                .slots
                .get(&entry.key)
                .is_some_and(|s| Arc::ptr_eq(&s.entry, entry));
            if ours {
                index.total = index.total - reserved + added;
                if let Some(slot) = index.slots.get_mut(&entry.key) {
                    slot.reserved -= reserved;
                    slot.present += added;
                }
            }
        }
        match written {
            Err(err) => {
                tracing::warn!(
                    blob = %entry.key,
                    range = ?(at..at + data.len() as u64),
                    error = %err,
                    "disk cache: writing failed; served from the network only"
                );
                self.error();
                Stored::NotKept
            }
            Ok(_) if kept => {
                bump(&self.counters.bytes_stored, reserved);
                self.schedule_persist(entry);
                Stored::Kept
            }
            // Evicted while writing.
            Ok(_) => Stored::NotKept,
        }
    }

    /// Drops `range` of `entry` from the cache; returns the bytes dropped.
    fn forget(self: &Arc<Self>, entry: &Arc<BlobEntry>, range: Range<u64>) -> u64 {
        let removed = {
            let mut index = lock(&self.index);
            let removed = {
                let mut state = lock(&entry.state);
                let removed = state.present.remove(range);
                if removed > 0 {
                    state.dirty = true;
                }
                removed
            };
            let ours = index
                .slots
                .get(&entry.key)
                .is_some_and(|s| Arc::ptr_eq(&s.entry, entry));
            if ours {
                index.total -= removed;
                if let Some(slot) = index.slots.get_mut(&entry.key) {
                    slot.present -= removed;
                }
            }
            removed
        };
        if removed > 0 {
            bump(&self.counters.bytes_forgotten, removed);
            self.schedule_persist(entry);
        }
        removed
    }

    /// Persists `entry`'s sidecar soon, on a blocking thread (now, without a runtime).
    fn schedule_persist(self: &Arc<Self>, entry: &Arc<BlobEntry>) {
        {
            let mut state = lock(&entry.state);
            if state.persist_scheduled || !state.dirty {
                return;
            }
            state.persist_scheduled = true;
        }
        let cache = self.clone();
        let entry = entry.clone();
        let run = move || loop {
            let result = cache.persist(&entry);
            let mut state = lock(&entry.state);
            if result.is_err() || !state.dirty {
                state.persist_scheduled = false;
                break;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(run);
            }
            Err(_) => run(),
        }
    }

    /// Writes `entry`'s sidecar if it is dirty: data flushed first, then the sidecar
    /// written aside and renamed into place (blocking).
    fn persist(&self, entry: &BlobEntry) -> io::Result<()> {
        let _persist = lock(&entry.persist);
        let (epoch, present, file) = {
            let mut state = lock(&entry.state);
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            (state.epoch, state.present.clone(), state.file.clone())
        };
        let sidecar = self.sidecar_path(entry);
        let tmp = self.dir.join(format!(
            "{}{SIDECAR_SUFFIX}{TMP_MARKER}{}",
            entry.stem,
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<()> {
            match file {
                Some(file) => file.sync_data()?,
                None if !present.is_empty() => File::open(self.data_path(entry))?.sync_data()?,
                None => {}
            }
            let text = Sidecar {
                version: SIDECAR_VERSION,
                key: entry.key.clone(),
                size: entry.size,
                ranges: present.0.iter().map(|r| (r.start, r.end)).collect(),
            }
            .encode();
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(&text)?;
            out.sync_all()?;
            drop(out);
            {
                let _io = lock(&entry.io);
                if lock(&entry.state).epoch != epoch {
                    // Evicted or replaced meanwhile: this record describes nothing.
                    remove_quietly(&tmp);
                    return Ok(());
                }
                std::fs::rename(&tmp, &sidecar)?;
            }
            // Durability of the rename only; losing it loses recent entries, no more.
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(err) = &result {
            remove_quietly(&tmp);
            let mut state = lock(&entry.state);
            if state.epoch == epoch {
                state.dirty = true;
            }
            drop(state);
            tracing::warn!(
                blob = %entry.key,
                error = %err,
                "disk cache: persisting the range record failed (will retry on the next store)"
            );
            self.error();
        }
        result
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        self.flush();
    }
}

fn remove_quietly(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %err, "disk cache: deleting failed");
        }
    }
}

/// Reads and checks one sidecar against its data file.
fn check_sidecar(
    stem: &str,
    path: &Path,
    data: &Path,
) -> Result<(Sidecar, RangeSet, std::time::SystemTime), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (sidecar, present) = Sidecar::decode(&bytes)?;
    if stem_of(&sidecar.key) != stem {
        return Err(format!("names blob {:?}, not this file's", sidecar.key));
    }
    let meta = std::fs::metadata(data).map_err(|e| format!("data file: {e}"))?;
    if meta.len() != sidecar.size {
        return Err(format!(
            "data file has {} bytes, expected {}",
            meta.len(),
            sidecar.size
        ));
    }
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    Ok((sidecar, present, mtime))
}

/// Runs blocking `f` on tokio's blocking pool (inline without a runtime).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| io::Error::other(format!("disk cache task failed: {e}"))),
        Err(_) => Ok(f()),
    }
}

/// A blob source with the disk cache in front; see [`DiskCache::wrap`].
pub struct CachedBlob {
    cache: Arc<DiskCache>,
    entry: Arc<BlobEntry>,
    inner: Arc<dyn BlobSource>,
    bytes_from_disk: AtomicU64,
    bytes_from_inner: AtomicU64,
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

    /// Fetches what of `range` is not on disk yet and stores it, without reading
    /// anything back; returns the bytes fetched.
    pub async fn warm(&self, range: Range<u64>) -> io::Result<u64> {
        let range = range.start..range.end.min(self.entry.size);
        let gaps = self.missing(range);
        let (Some(first), Some(last)) = (gaps.first(), gaps.last()) else {
            return Ok(0);
        };
        let hull = first.start..last.end;
        let data = self.fetch(hull.clone()).await?;
        let n = data.len() as u64;
        let (cache, entry) = (self.cache.clone(), self.entry.clone());
        blocking(move || cache.store(&entry, hull.start, &data)).await?;
        Ok(n)
    }

    fn note_disk(&self, n: u64) {
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
    async fn read_disk(&self, range: Range<u64>) -> Option<Vec<u8>> {
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
    fn size(&self) -> u64 {
        self.entry.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(self.read(range))
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

#[cfg(test)]
#[path = "disk_cache_tests.rs"]
pub(crate) mod tests;
