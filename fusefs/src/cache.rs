//! The plaintext chunk cache: an LRU with a byte budget and single-flight misses.
//!
//! Verified, decompressed chunks live here, in memory only (plaintext never touches
//! disk), keyed by [`ChunkKey`] = (layer id, layer-wide chunk index). The cache holds at
//! most `budget` bytes of chunk data; inserting past it evicts least recently used chunks,
//! and a chunk larger than the whole budget is handed to its readers but not kept.
//!
//! **Single flight.** [`ChunkCache::lookup`] answers one of three ways: the data
//! ([`Lookup::Hit`]); someone is already fetching it, wait for them ([`Lookup::Wait`]); or
//! nobody is, so the caller now owns the fetch ([`Lookup::Fetch`]) and must resolve its
//! [`FetchGuard`] with [`FetchGuard::complete`] or [`FetchGuard::fail`]. A guard dropped
//! unresolved (its task cancelled, say) releases its waiters with
//! [`WaitError::Abandoned`], so they can take over the fetch instead of hanging.
//! [`ChunkCache::get_or_fetch`] wraps the whole dance for one chunk.
//!
//! **Promoted files.** Bytes of whole files promoted to memfds ([`crate::promote`]) are
//! charged against the same budget: [`ChunkCache::take_for_promotion`] takes a file's
//! chunks out of the cache and reserves the file's size in one step, evicting least
//! recently used chunks until chunks plus reservations fit the budget again, and
//! [`ChunkCache::release_promoted`] gives the bytes back when the promoted file is
//! dropped. Chunks plus promoted bytes never exceed the budget.
//!
//! **Core dumps.** The pages of every chunk kept are marked `MADV_DONTDUMP`
//! ([`crate::no_dump`]; chunks of 64 KiB or more, their whole pages), so a core dump of a
//! process holding the cache leaves the cached plaintext out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use tokio::sync::watch;

/// Default byte budget: 64 MiB.
pub const DEFAULT_BUDGET: u64 = 64 << 20;

/// Why a fetch failed, shared with everyone who waited for it.
pub type FetchError = Arc<dyn std::error::Error + Send + Sync>;

/// Cached chunk bytes.
pub type ChunkData = Arc<[u8]>;

/// What a slot of an in-flight fetch holds: nothing yet, or the outcome.
type Slot = Option<Result<ChunkData, FetchError>>;

/// Identifies one chunk of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// The layer's id, from [`ChunkCache::new_layer_id`].
    pub layer: u64,
    /// The chunk's layer-wide index ([`crate::tree::LayerTree::chunks`]).
    pub chunk: u64,
}

/// Counters of a cache, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found nothing cached (whether they then waited or fetched).
    pub misses: u64,
    /// Misses that waited for a fetch already in flight.
    pub shared_waits: u64,
    /// Chunks evicted to stay within the budget.
    pub evictions: u64,
    /// Bytes of chunk data held now.
    pub bytes: u64,
    /// Chunks held now.
    pub entries: u64,
    /// The byte budget.
    pub budget: u64,
    /// Bytes of promoted files charged against the budget ([`crate::promote`]).
    pub promoted: u64,
}

/// Why [`ChunkCache::take_for_promotion`] took nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PromotionRefused {
    /// A chunk of the file is not cached (any more).
    #[error("the file is not whole in the cache")]
    NotWhole,
    /// Promoted files would take more than the cap allows.
    #[error("promoted files would exceed their share of the cache budget")]
    OverCap,
}

/// The answer of [`ChunkCache::lookup`].
pub enum Lookup<'a> {
    /// The chunk is cached.
    Hit(ChunkData),
    /// Another caller is fetching it: wait for them.
    Wait(Waiter),
    /// Nobody is fetching it: the caller must, and resolve the guard.
    Fetch(FetchGuard<'a>),
}

/// Why waiting for another caller's fetch produced no data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WaitError {
    /// The fetch failed; this is its error.
    #[error("shared chunk fetch failed: {0}")]
    Failed(FetchError),
    /// The fetcher went away without an outcome; look the chunk up again.
    #[error("shared chunk fetch was abandoned")]
    Abandoned,
}

/// A ticket to the outcome of a fetch someone else owns.
pub struct Waiter {
    rx: watch::Receiver<Slot>,
}

impl Waiter {
    /// Waits until the fetch completes, fails or is abandoned.
    pub async fn wait(mut self) -> Result<ChunkData, WaitError> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(slot) => match slot.as_ref() {
                Some(Ok(data)) => Ok(data.clone()),
                Some(Err(err)) => Err(WaitError::Failed(err.clone())),
                None => Err(WaitError::Abandoned),
            },
            Err(_) => Err(WaitError::Abandoned),
        }
    }
}

/// The cache a [`FetchGuard`] belongs to: borrowed, or shared for a guard that outlives
/// the borrow (one handed to a task of its own).
enum CacheRef<'a> {
    Borrowed(&'a ChunkCache),
    Shared(Arc<ChunkCache>),
}

impl std::ops::Deref for CacheRef<'_> {
    type Target = ChunkCache;

    fn deref(&self) -> &ChunkCache {
        match self {
            CacheRef::Borrowed(cache) => cache,
            CacheRef::Shared(cache) => cache,
        }
    }
}

/// The obligation to fetch one chunk; see the module documentation.
pub struct FetchGuard<'a> {
    cache: CacheRef<'a>,
    key: ChunkKey,
    tx: Option<watch::Sender<Slot>>,
}

impl FetchGuard<'_> {
    /// The chunk this guard fetches.
    pub fn key(&self) -> ChunkKey {
        self.key
    }

    /// Whether anyone is waiting for this fetch now (a later [`ChunkCache::lookup`] may
    /// still join it).
    pub fn has_waiters(&self) -> bool {
        // The in-flight entry holds one receiver; every waiter holds another.
        self.tx.as_ref().is_some_and(|tx| tx.receiver_count() > 1)
    }

    /// Caches `data` (budget permitting), hands it to every waiter and returns it.
    pub fn complete(mut self, data: Vec<u8>) -> ChunkData {
        let data: ChunkData = data.into();
        {
            let mut state = self.cache.state();
            state.inflight.remove(&self.key);
            self.cache.insert_locked(&mut state, self.key, data.clone());
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(Ok(data.clone())));
        }
        data
    }

    /// Hands `err` to every waiter; nothing is cached.
    pub fn fail(mut self, err: FetchError) {
        self.cache.state().inflight.remove(&self.key);
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(Err(err)));
        }
    }
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        if self.tx.take().is_some() {
            // Unresolved: forget the in-flight entry; dropping the sender tells waiters.
            self.cache.state().inflight.remove(&self.key);
        }
    }
}

/// Mutable cache state, behind one lock that is never held across an await.
struct State {
    lru: LruCache<ChunkKey, ChunkData>,
    bytes: u64,
    /// Bytes of promoted files charged against the budget.
    promoted: u64,
    inflight: HashMap<ChunkKey, watch::Receiver<Slot>>,
}

/// The plaintext chunk cache, shared by every layer of a daemon.
pub struct ChunkCache {
    budget: u64,
    state: Mutex<State>,
    next_layer: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    shared_waits: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for ChunkCache {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET)
    }
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of chunk data.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
                promoted: 0,
                inflight: HashMap::new(),
            }),
            next_layer: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            shared_waits: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// A fresh layer id, distinct from every other this cache has handed out.
    pub fn new_layer_id(&self) -> u64 {
        self.next_layer.fetch_add(1, Ordering::Relaxed)
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The cached chunk, if any (counts as a hit or miss, refreshes recency).
    pub fn get(&self, key: ChunkKey) -> Option<ChunkData> {
        let found = self.state().lru.get(&key).cloned();
        self.count(found.is_some());
        found
    }

    /// Caches `data` under `key` (budget permitting), outside any fetch.
    pub fn insert(&self, key: ChunkKey, data: ChunkData) {
        let mut state = self.state();
        self.insert_locked(&mut state, key, data);
    }

    /// Looks `key` up, joining or claiming its fetch on a miss.
    pub fn lookup(&self, key: ChunkKey) -> Lookup<'_> {
        let mut state = self.state();
        if let Some(data) = state.lru.get(&key) {
            let data = data.clone();
            drop(state);
            self.count(true);
            return Lookup::Hit(data);
        }
        self.count(false);
        if let Some(rx) = state.inflight.get(&key) {
            let rx = rx.clone();
            drop(state);
            self.shared_waits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Wait(Waiter { rx });
        }
        let (tx, rx) = watch::channel(None);
        state.inflight.insert(key, rx);
        Lookup::Fetch(FetchGuard {
            cache: CacheRef::Borrowed(self),
            key,
            tx: Some(tx),
        })
    }

    /// Whether `key` is cached (not counted, recency unchanged).
    pub fn contains(&self, key: ChunkKey) -> bool {
        self.state().lru.contains(&key)
    }

    /// Claims the fetch of `key` if it is neither cached nor being fetched; `None`
    /// otherwise. Not counted as a hit or miss: for fetching ahead of reads, by a task
    /// of its own (the guard holds on to the cache).
    pub fn claim(self: &Arc<Self>, key: ChunkKey) -> Option<FetchGuard<'static>> {
        let mut state = self.state();
        if state.lru.contains(&key) || state.inflight.contains_key(&key) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        state.inflight.insert(key, rx);
        Some(FetchGuard {
            cache: CacheRef::Shared(self.clone()),
            key,
            tx: Some(tx),
        })
    }

    /// The chunk at `key`: cached, fetched by someone else meanwhile, or fetched now by
    /// calling `fetch` (at most once). Concurrent callers share one fetch.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: ChunkKey,
        fetch: F,
    ) -> Result<ChunkData, FetchError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, FetchError>>,
    {
        let mut fetch = Some(fetch);
        loop {
            match self.lookup(key) {
                Lookup::Hit(data) => return Ok(data),
                Lookup::Wait(waiter) => match waiter.wait().await {
                    Ok(data) => return Ok(data),
                    Err(WaitError::Failed(err)) => return Err(err),
                    Err(WaitError::Abandoned) => continue,
                },
                Lookup::Fetch(guard) => {
                    let Some(fetch) = fetch.take() else {
                        // Unreachable: we return right after fetching.
                        return Err(Arc::new(WaitError::Abandoned));
                    };
                    return match fetch().await {
                        Ok(data) => Ok(guard.complete(data)),
                        Err(err) => {
                            guard.fail(err.clone());
                            Err(err)
                        }
                    };
                }
            }
        }
    }

    /// Drops every cached chunk of `layer` (when it is unmounted).
    pub fn forget_layer(&self, layer: u64) {
        let mut state = self.state();
        let mut freed = 0u64;
        state.lru.retain(|key, data| {
            let keep = key.layer != layer;
            if !keep {
                freed += data.len() as u64;
            }
            keep
        });
        state.bytes = state.bytes.saturating_sub(freed);
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let (bytes, entries, promoted) = {
            let state = self.state();
            (state.bytes, state.lru.len() as u64, state.promoted)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            shared_waits: self.shared_waits.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes,
            entries,
            budget: self.budget,
            promoted,
        }
    }

    /// Whether every chunk of `keys` is cached (not counted, recency unchanged).
    pub fn contains_all(&self, keys: impl IntoIterator<Item = ChunkKey>) -> bool {
        let state = self.state();
        keys.into_iter().all(|key| state.lru.contains(&key))
    }

    /// For promoting a file of `bytes` whose chunks are `keys`: takes every one of them
    /// out of the cache (returned in order) and charges `bytes` against the budget, in
    /// one step, evicting least recently used chunks to make room. Refused (nothing
    /// changed) when a chunk is missing, or when promoted bytes would pass `cap`.
    pub fn take_for_promotion(
        &self,
        keys: &[ChunkKey],
        bytes: u64,
        cap: u64,
    ) -> Result<Vec<ChunkData>, PromotionRefused> {
        let mut state = self.state();
        if state.promoted.saturating_add(bytes) > cap.min(self.budget) {
            return Err(PromotionRefused::OverCap);
        }
        if !keys.iter().all(|key| state.lru.contains(key)) {
            return Err(PromotionRefused::NotWhole);
        }
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(data) = state.lru.pop(key) {
                state.bytes = state.bytes.saturating_sub(data.len() as u64);
                taken.push(data);
            }
        }
        state.promoted += bytes;
        self.evict_to_budget(&mut state);
        Ok(taken)
    }

    /// Charges `bytes` of a promoted file carried over a restart against the budget,
    /// evicting least recently used chunks to make room (the file exists whether or not
    /// it fits: the kernel holds it).
    pub fn charge_promoted(&self, bytes: u64) {
        let mut state = self.state();
        state.promoted = state.promoted.saturating_add(bytes);
        self.evict_to_budget(&mut state);
    }

    /// Gives back what [`ChunkCache::take_for_promotion`] took when the promotion
    /// failed: the chunks are cached again (budget permitting) and `bytes` released.
    pub fn undo_promotion(&self, keys: &[ChunkKey], chunks: Vec<ChunkData>, bytes: u64) {
        let mut state = self.state();
        state.promoted = state.promoted.saturating_sub(bytes);
        for (key, data) in keys.iter().zip(chunks) {
            self.insert_locked(&mut state, *key, data);
        }
    }

    /// Releases `bytes` of a promoted file that is gone.
    pub fn release_promoted(&self, bytes: u64) {
        let mut state = self.state();
        state.promoted = state.promoted.saturating_sub(bytes);
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert_locked(&self, state: &mut State, key: ChunkKey, data: ChunkData) {
        let len = data.len() as u64;
        if len > self.budget.saturating_sub(state.promoted) {
            return;
        }
        crate::no_dump::exclude_from_core_dumps(&data);
        if let Some(old) = state.lru.pop(&key) {
            state.bytes = state.bytes.saturating_sub(old.len() as u64);
        }
        state.lru.push(key, data);
        state.bytes += len;
        self.evict_to_budget(state);
    }

    /// Evicts least recently used chunks until chunks and promoted files fit the budget.
    fn evict_to_budget(&self, state: &mut State) {
        while state.bytes + state.promoted > self.budget {
            let Some((_, evicted)) = state.lru.pop_lru() else {
                break;
            };
            state.bytes = state.bytes.saturating_sub(evicted.len() as u64);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn key(chunk: u64) -> ChunkKey {
        ChunkKey { layer: 1, chunk }
    }

    #[test]
    fn budget_evicts_least_recently_used() {
        let cache = ChunkCache::new(300);
        for i in 0..3 {
            cache.insert(key(i), vec![i as u8; 100].into());
        }
        assert_eq!(cache.stats().bytes, 300);
        // Touch chunk 0 so chunk 1 is the least recently used.
        assert!(cache.get(key(0)).is_some());
        cache.insert(key(3), vec![3; 100].into());
        let stats = cache.stats();
        assert_eq!(stats.bytes, 300);
        assert_eq!(stats.entries, 3);
        assert_eq!(stats.evictions, 1);
        assert!(cache.get(key(1)).is_none());
        assert!(cache.get(key(0)).is_some());
        assert!(cache.get(key(3)).is_some());
        // A big insert evicts several.
        cache.insert(key(4), vec![4; 250].into());
        assert_eq!(cache.stats().entries, 1);
        assert!(cache.stats().bytes <= 300);
    }

    #[test]
    fn chunk_larger_than_budget_is_not_kept() {
        let cache = ChunkCache::new(10);
        cache.insert(key(0), vec![0; 11].into());
        assert_eq!(cache.stats().entries, 0);
        let Lookup::Fetch(guard) = cache.lookup(key(1)) else {
            panic!("expected to own the fetch");
        };
        assert_eq!(guard.complete(vec![7; 20]).len(), 20);
        assert!(cache.get(key(1)).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn reinsert_and_forget_layer_keep_byte_count() {
        let cache = ChunkCache::new(1000);
        cache.insert(key(0), vec![0; 100].into());
        cache.insert(key(0), vec![0; 50].into());
        cache.insert(ChunkKey { layer: 2, chunk: 0 }, vec![0; 70].into());
        assert_eq!(cache.stats().bytes, 120);
        cache.forget_layer(1);
        assert_eq!(cache.stats().bytes, 70);
        assert_eq!(cache.stats().entries, 1);
        assert_ne!(cache.new_layer_id(), cache.new_layer_id());
    }

    #[test]
    fn promotion_takes_the_chunks_and_charges_the_budget() {
        let cache = ChunkCache::new(1000);
        for i in 0..4 {
            cache.insert(key(i), vec![i as u8; 200].into());
        }
        let file = [key(1), key(2)];
        // Over the cap, or a chunk missing: nothing changes.
        assert_eq!(
            cache.take_for_promotion(&file, 400, 300).unwrap_err(),
            PromotionRefused::OverCap
        );
        assert_eq!(
            cache
                .take_for_promotion(&[key(1), key(9)], 400, 500)
                .unwrap_err(),
            PromotionRefused::NotWhole
        );
        assert_eq!(cache.stats().bytes, 800);
        let taken = cache.take_for_promotion(&file, 400, 500).unwrap();
        assert_eq!((taken.len(), taken[1][0]), (2, 2));
        let stats = cache.stats();
        assert_eq!((stats.bytes, stats.promoted), (400, 400));
        assert!(!cache.contains(key(1)) && cache.contains(key(0)));
        // Inserting evicts to keep chunks and promoted bytes within the budget.
        cache.insert(key(5), vec![5; 300].into());
        let stats = cache.stats();
        assert!(stats.bytes + stats.promoted <= 1000, "{stats:?}");
        // A chunk larger than what promotion leaves is not kept.
        cache.insert(key(6), vec![6; 700].into());
        assert!(!cache.contains(key(6)));
        // Undone: chunks back, bytes released; released: bytes back.
        cache.undo_promotion(&file, taken, 400);
        assert_eq!(cache.stats().promoted, 0);
        assert!(cache.contains(key(1)) && cache.contains(key(2)));
        let _ = cache.take_for_promotion(&file, 400, 500).unwrap();
        cache.release_promoted(400);
        assert_eq!(cache.stats().promoted, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(key(9), || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(b"chunk".to_vec())
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(&*task.await.unwrap().unwrap(), b"chunk");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!(stats.shared_waits + 1, stats.misses);
        assert_eq!(stats.hits + stats.misses, 16);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failure_is_shared_and_not_cached() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let Lookup::Fetch(guard) = cache.lookup(key(1)) else {
            panic!("expected to own the fetch");
        };
        let Lookup::Wait(waiter) = cache.lookup(key(1)) else {
            panic!("expected to wait");
        };
        let waiting = tokio::spawn(waiter.wait());
        let err: FetchError = Arc::new(std::io::Error::other("registry down"));
        guard.fail(err);
        match waiting.await.unwrap() {
            Err(WaitError::Failed(e)) => assert!(e.to_string().contains("registry down")),
            other => panic!("unexpected {other:?}"),
        }
        // Not cached: the next lookup owns a new fetch.
        assert!(matches!(cache.lookup(key(1)), Lookup::Fetch(_)));
    }

    #[tokio::test]
    async fn abandoned_fetch_releases_waiters() {
        let cache = ChunkCache::new(1 << 20);
        let Lookup::Fetch(guard) = cache.lookup(key(2)) else {
            panic!("expected to own the fetch");
        };
        let Lookup::Wait(waiter) = cache.lookup(key(2)) else {
            panic!("expected to wait");
        };
        drop(guard);
        assert!(matches!(waiter.wait().await, Err(WaitError::Abandoned)));
        // get_or_fetch takes over after an abandonment.
        let Lookup::Fetch(guard) = cache.lookup(key(2)) else {
            panic!("expected to own the fetch");
        };
        let cache_ref = &cache;
        let (data, ()) = tokio::join!(
            cache_ref.get_or_fetch(key(2), || async { Ok(b"again".to_vec()) }),
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(guard);
            }
        );
        assert_eq!(&*data.unwrap(), b"again");
    }
}
