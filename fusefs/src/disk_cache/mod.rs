//! The persistent cache of blob bytes: what the registry served, kept on local disk.
//!
//! [`DiskCache`] keeps, under one directory, byte ranges of layer blobs exactly as the
//! registry serves them (compressed, and for encrypted layers still encrypted: wrap the
//! registry's source, never a decrypting one, so no plaintext reaches the disk). It has
//! its own byte budget and evicts least recently used whole blobs to stay within it.
//! [`DiskCache::wrap`] puts it in front of a blob's [`BlobSource`]: the returned
//! [`CachedBlob`] answers a read from disk when every byte of the range is present, and
//! otherwise fetches what is missing from the inner source (the span from the first to
//! the last missing byte, in one request), records it and answers. Its streaming reads
//! write each piece to disk as it arrives, before handing it up (`streamed.rs`).
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
//! the prefetcher does so for what it verifies, and the chunk reader through
//! [`BlobSource::discard`].
//!
//! **Concurrency.** Reads take two short locks (the index for recency, the blob's state
//! for the present set) and read the data file without any lock held. Writers write only
//! the ranges still missing, so readers never see bytes change under them.
//!
//! Locks are taken in the order index → blob `io` → blob `state` (a persist takes the
//! blob's `persist` lock before `io`); none is held across an `await`.
//!
//! Files: this one (the index, budget, eviction, storing and reading ranges),
//! `persist.rs` (sidecars: format, loading at open, persisting), `ranges.rs` (the
//! present-range set), `cached_blob.rs` ([`CachedBlob`]), `streamed.rs` (its streaming
//! reads).

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

use veil_blob::BlobSource;

mod cached_blob;
mod persist;
mod ranges;
mod streamed;

pub use cached_blob::CachedBlob;
use persist::stem_of;
use ranges::RangeSet;

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

#[cfg(test)]
pub(crate) mod tests;
