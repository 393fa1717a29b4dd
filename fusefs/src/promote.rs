//! Promotion: a file whole in the plaintext cache is copied into a memfd and served by
//! FUSE passthrough, so the kernel reads it like a tmpfs file (one copy, no round trip
//! to Veil).
//!
//! When a regular file of at least [`PromoteOptions::min_size`] bytes is opened, no
//! handle of it is open in the normal (cached) mode, and every one of its chunks is
//! verified plaintext in the [`ChunkCache`], the open is answered by passthrough:
//!
//! 1. a memfd is made (`MFD_CLOEXEC | MFD_ALLOW_SEALING`: anonymous memory, no path on
//!    any filesystem) and registered with the kernel as a backing file
//!    (`FUSE_DEV_IOC_BACKING_OPEN`: needs the `/dev/fuse` fd, `CAP_SYS_ADMIN` and
//!    `FUSE_PASSTHROUGH` in the INIT answer, [`crate::tuning::answer_init`]);
//! 2. the file's chunks are taken out of the cache and its size charged against the
//!    cache's budget in one step ([`ChunkCache::take_for_promotion`]: the cache evicts
//!    to make room; the plaintext is never held twice in the accounting);
//! 3. the memfd is mapped `MAP_SHARED`, marked `MADV_DONTDUMP` (out of core dumps) and
//!    locked with `mlock` (never swapped: its pages cannot reach a swap device), then
//!    filled from the chunks;
//! 4. the mapping is made read-only and the memfd sealed (`F_SEAL_SHRINK | F_SEAL_GROW |
//!    F_SEAL_FUTURE_WRITE | F_SEAL_SEAL`);
//! 5. this open and every later open of the inode are answered with
//!    `FOPEN_PASSTHROUGH` and the same backing id.
//!
//! `veil bench --fuse-read` (1 GiB, page cache dropped, loaded 2-core machine): 84–96 %
//! of tmpfs promoted, against 24–48 % for Veil's own read path in the same run (the
//! README's "FUSE read path").
//!
//! **Kernel rules.** An inode cannot be open in the cached mode and by passthrough at
//! once (the kernel fails the second open with `EIO`). Veil counts the handles of each
//! inode in both modes (a passthrough handle has the file handle [`PASSTHROUGH_FH`]) and
//! decrements on `RELEASE`, which the kernel sends after its own count dropped: Veil's
//! counts are never below the kernel's. So an inode with a normal handle open is not
//! promoted, and a promoted inode gets passthrough for every open.
//!
//! **Bounded.** Promoted files of all mounts sharing a cache take at most
//! [`MAX_PROMOTED_PERCENT`] of its budget. When a promotion would pass that, this
//! mount's promoted files with no open handle are dropped, least recently opened first;
//! if that is not enough, the file is not promoted. Dropping a promoted file (or the
//! filesystem) unmaps the memfd and gives its bytes back to the cache's budget.
//!
//! **A layer marked bad** ([`ChunkReader::mark_bad`]) serves nothing: an open of one of
//! its promoted files drops the file (or fails with `EIO` while passthrough handles of
//! it are still open, which cannot be revoked), and nothing more is promoted.
//!
//! **Fallback.** Anything that fails (no passthrough capability, no `CAP_SYS_ADMIN`,
//! `memfd_create`, `mmap`, `mlock` over `RLIMIT_MEMLOCK`, keeping the file for restarts)
//! leaves the open answered normally and reads served by Veil as before; the first such
//! failure turns promotion off for the mount and is logged once.
//!
//! **Restarts.** With [`PromoteOptions::keep_for_restart`] (the mount's connection is
//! kept for a restart), each promoted file is kept beside the connection before any open
//! is answered with it, and forgotten before its backing id is closed
//! ([`crate::carry`]); nothing is promoted until a keeper is attached. A session served
//! through a socket after a restart ([`crate::resume`]) takes over the files the
//! previous process kept ([`Promoter::adopt`]): re-mapped, locked, charged to the cache,
//! answered by passthrough with the same backing id (the kernel refuses a normal open,
//! or one with another backing file, beside a passthrough handle still open from
//! before), never dropped to make room. It promotes new files as any mount does, but
//! fuser's `ReplyOpen::open_backing` cannot work on its socket: their backing files are
//! registered, and closed, through a copy of the connection's `/dev/fuse` fd
//! ([`Promoter::registering_through`], [`crate::backing`]). Its keeper is attached
//! again after the resume, so a file promoted there is carried over the next restart.
//! A connection whose first INIT answer had no `FUSE_PASSTHROUGH` refuses the
//! registration: the usual fallback, logged once, reads served by Veil.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use fuser::{BackingId, Errno, FileHandle, FopenFlags, ReplyOpen};

use crate::backing::{BackingRegistrar, RegisteredBacking};
use crate::cache::{ChunkCache, ChunkKey, PromotionRefused};
use crate::carry::{
    check_memfd, check_node, CarriedFile, CarryError, KeeperSlot, PromotedKeeper, PromotedRecord,
    PROMOTED_SEALS,
};
use crate::pipeline::ChunkReader;
use crate::tree::{Node, NodeKind};

/// Smallest file promoted by default: smaller files gain little (a few FUSE round trips
/// at most), and each promoted file costs a memfd and a backing id.
pub const DEFAULT_MIN_SIZE: u64 = 1 << 20;

/// Most of the plaintext cache's budget promoted files may take, in percent: the rest
/// stays for the chunks of files being read lazily.
pub const MAX_PROMOTED_PERCENT: u64 = 50;

/// The file handle of an open answered by passthrough (normal opens have 0).
pub const PASSTHROUGH_FH: u64 = 1 << 63;

/// Whether and from which size files whole in the cache are promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromoteOptions {
    /// Promote at all.
    pub enabled: bool,
    /// Smallest file promoted, in bytes.
    pub min_size: u64,
    /// The mount's connection is kept for restarts: each promoted file is kept beside it
    /// ([`crate::carry`]), and nothing is promoted until a keeper is attached.
    pub keep_for_restart: bool,
}

impl Default for PromoteOptions {
    /// On, from [`DEFAULT_MIN_SIZE`].
    fn default() -> Self {
        Self {
            enabled: true,
            min_size: DEFAULT_MIN_SIZE,
            keep_for_restart: false,
        }
    }
}

impl PromoteOptions {
    /// Promotion off.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// Why a promotion did not happen.
#[derive(Debug, thiserror::Error)]
enum PromoteError {
    /// The mount cannot promote at all (logged once, promotion turned off).
    #[error("{0}")]
    Cannot(String),
    /// This file, now: not whole in the cache, or no room.
    #[error("{0}")]
    Skipped(PromotionRefused),
}

/// A file's plaintext in a sealed memfd, mapped, locked and left out of core dumps.
struct MemFile {
    fd: OwnedFd,
    /// Start of the mapping (an address; 0 for an empty file).
    map: usize,
    len: usize,
}

impl MemFile {
    /// An empty memfd of `len` bytes, not yet mapped.
    fn create(len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        // SAFETY: a NUL-terminated name and valid flags; the fd returned is ours.
        let fd = unsafe {
            libc::memfd_create(
                c"veil-promoted".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, map: 0, len })
    }

    /// A promoted file's sealed memfd of `len` bytes, handed over, not yet mapped.
    fn carried(fd: OwnedFd, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        Ok(Self { fd, map: 0, len })
    }

    /// Maps it shared (writable when `writable`), out of core dumps, locked in memory.
    fn map_locked(&mut self, writable: bool) -> io::Result<()> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of our memfd, `len` bytes long.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                prot,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.map = map as usize;
        // SAFETY: the mapping just made; these change what dumps hold and residency only.
        unsafe {
            if libc::madvise(map, self.len, libc::MADV_DONTDUMP) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::mlock(map, self.len) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The mapping, for filling.
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: map_locked made a writable mapping of `len` bytes that lives as long as
        // self, and nothing else writes it.
        unsafe { std::slice::from_raw_parts_mut(self.map as *mut u8, self.len) }
    }

    /// Makes the mapping read-only and seals the memfd against writes and resizes.
    fn seal(&self) -> io::Result<()> {
        // SAFETY: the mapping of `len` bytes we own; only its protection changes.
        if unsafe { libc::mprotect(self.map as *mut libc::c_void, self.len, libc::PROT_READ) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_ADD_SEALS, PROMOTED_SEALS) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        if self.map != 0 {
            // SAFETY: unmapping the mapping we made (munmap also unlocks it).
            unsafe { libc::munmap(self.map as *mut libc::c_void, self.len) };
        }
    }
}

/// Who closes a promoted file's backing id.
enum Backing {
    /// Registered through fuser's channel (a session reading `/dev/fuse` itself): closed
    /// when dropped.
    Session(BackingId),
    /// Registered through a copy of the connection's `/dev/fuse` fd (a resumed session,
    /// [`Promoter::registering_through`]): closed through it when dropped.
    Device(RegisteredBacking),
    /// Carried over a restart: this process never closes it (handles from before may use
    /// it; it lives as long as the connection).
    Carried,
}

/// A promoted file: its memfd and backing id, its bytes charged against the cache.
struct Promoted {
    ino: u64,
    /// Its backing id on the connection.
    id: u32,
    /// The id, closed when dropped unless carried.
    backing: Backing,
    /// Dropped after the backing id (declaration order): the kernel holds its own
    /// reference to the memfd for as long as it uses it.
    file: MemFile,
    cache: Arc<ChunkCache>,
    /// Where it is kept for restarts, once it is: told to forget it first when dropped
    /// (a record must never outlive its backing id).
    kept: Option<Arc<dyn PromotedKeeper>>,
    /// When it was last opened ([`Promoter::clock`]).
    last_open: u64,
}

impl Promoted {
    /// Answers `reply` by passthrough with this file.
    fn answer(&self, reply: ReplyOpen) {
        let fh = FileHandle(PASSTHROUGH_FH);
        let id = match &self.backing {
            Backing::Session(backing) => {
                return reply.opened_passthrough(fh, FopenFlags::empty(), backing)
            }
            Backing::Device(registered) => registered.id(),
            Backing::Carried => self.id,
        };
        // SAFETY: the id is registered on this connection (through its device fd, by this
        // process or the one before a restart) and stays so while `self` lives; the
        // wrapper is given back with into_raw, so it never closes it.
        let backing = unsafe { reply.wrap_backing(id) };
        reply.opened_passthrough(fh, FopenFlags::empty(), &backing);
        let _ = backing.into_raw();
    }
}

impl Drop for Promoted {
    fn drop(&mut self) {
        if let Some(keeper) = &self.kept {
            keeper.forget(self.ino);
        }
        self.cache.release_promoted(self.file.len as u64);
    }
}

/// What Veil knows of one inode's opens.
#[derive(Default)]
struct InodeOpens {
    /// Handles open in the normal (cached) mode.
    normal: u64,
    /// Handles open by passthrough.
    passthrough: u64,
    /// The promoted file, once there is one.
    promoted: Option<Promoted>,
    /// While a promotion runs: the opens waiting for its outcome.
    waiting: Option<Vec<ReplyOpen>>,
    /// Its promoted file was carried over a restart: passthrough handles from before
    /// (not counted here) may use it, so it is never dropped to make room.
    carried: bool,
}

impl InodeOpens {
    fn is_idle(&self) -> bool {
        self.normal == 0 && self.passthrough == 0 && self.waiting.is_none()
    }
}

/// The promotions of one mounted layer.
pub(crate) struct Promoter {
    options: PromoteOptions,
    reader: Arc<ChunkReader>,
    inodes: Mutex<HashMap<u64, InodeOpens>>,
    /// Why promotion was turned off for this mount, once it was.
    off: OnceLock<String>,
    clock: AtomicU64,
    /// Where promoted files are kept for restarts ([`PromoteOptions::keep_for_restart`]).
    keeper: KeeperSlot,
    /// Registers backing files through the connection's device fd instead of fuser's
    /// channel (a resumed session, whose channel is a socket).
    registrar: Option<Arc<BackingRegistrar>>,
}

impl Promoter {
    /// Promotions of `reader`'s files as `options` say.
    pub(crate) fn new(
        reader: Arc<ChunkReader>,
        options: PromoteOptions,
        keeper: KeeperSlot,
    ) -> Self {
        Self {
            options,
            reader,
            inodes: Mutex::new(HashMap::new()),
            off: OnceLock::new(),
            clock: AtomicU64::new(0),
            keeper,
            registrar: None,
        }
    }

    /// The same, registering the backing files it promotes through `registrar` (a copy
    /// of the connection's `/dev/fuse` fd) and closing them through it: for a session
    /// resumed after a restart ([`crate::resume`]), served through a socket on which
    /// fuser's `ReplyOpen::open_backing` cannot work.
    pub(crate) fn registering_through(mut self, registrar: BackingRegistrar) -> Self {
        self.registrar = Some(Arc::new(registrar));
        self
    }

    /// Whether it promotes new files (promotion on in its options).
    pub(crate) fn promotes(&self) -> bool {
        self.options.enabled
    }

    /// Takes over the promoted files an earlier process kept (after a restart): each one
    /// whose record, memfd and inode pass the checks ([`crate::carry`]) is mapped,
    /// locked and left out of core dumps again, charged to the cache's budget, and
    /// answered by passthrough with its recorded backing id. The others are logged and
    /// their inodes answered normally. Returns how many were taken over.
    pub(crate) fn adopt(&self, carried: Vec<CarriedFile>) -> usize {
        let mut adopted = 0;
        for file in carried {
            match self.adopt_one(file) {
                Ok(promoted) => {
                    let mut inodes = self.inodes();
                    let opens = inodes.entry(promoted.ino).or_default();
                    opens.carried = true;
                    opens.promoted = Some(promoted);
                    adopted += 1;
                }
                Err(e) => tracing::warn!(layer = self.reader.layer_name(), error = %e,
                    "a promoted file handed over is not trusted: its opens are answered normally"),
            }
        }
        adopted
    }

    fn adopt_one(&self, file: CarriedFile) -> Result<Promoted, CarryError> {
        let record = PromotedRecord::decode(&file.data)?;
        if record.ino != file.ino {
            return Err(CarryError::Record(format!(
                "kept for inode {} but records inode {}",
                file.ino, record.ino
            )));
        }
        check_node(self.reader.tree().node(record.ino), &record)?;
        check_memfd(file.fd.as_fd(), &record)?;
        let bad = |e: io::Error| CarryError::Memfd(format!("mapping and locking it: {e}"));
        let mut mem = MemFile::carried(file.fd, record.size).map_err(bad)?;
        mem.map_locked(false).map_err(bad)?;
        let cache = self.reader.cache();
        cache.charge_promoted(record.size);
        Ok(Promoted {
            ino: record.ino,
            id: record.backing_id,
            backing: Backing::Carried,
            file: mem,
            cache: cache.clone(),
            kept: None,
            last_open: self.clock.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Answers the open of regular file `node` (read-only, checked by the caller):
    /// by passthrough when it is or can now be promoted, normally otherwise. A
    /// promotion runs on a blocking thread of `runtime`; opens of the inode meanwhile
    /// wait for it.
    pub(crate) fn open(
        self: &Arc<Self>,
        node: &Node,
        runtime: &tokio::runtime::Handle,
        reply: ReplyOpen,
    ) {
        let ino = node.ino;
        let mut inodes = self.inodes();
        let opens = inodes.entry(ino).or_default();
        if self.reader.bad_reason().is_some() && opens.promoted.is_some() {
            // A layer marked bad serves nothing: its promoted files go (those still
            // open by passthrough cannot be revoked; a new open of them fails).
            if opens.passthrough > 0 {
                return reply.error(Errno::EIO);
            }
            opens.promoted = None;
        }
        if let Some(promoted) = opens.promoted.as_mut() {
            promoted.last_open = self.clock.fetch_add(1, Ordering::Relaxed);
            opens.passthrough += 1;
            return promoted.answer(reply);
        }
        if let Some(waiting) = opens.waiting.as_mut() {
            return waiting.push(reply);
        }
        if opens.normal == 0 && self.worth_trying(node) {
            opens.waiting = Some(Vec::new());
            drop(inodes);
            let this = self.clone();
            runtime.spawn_blocking(move || this.promote(ino, reply));
            return;
        }
        opens.normal += 1;
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    /// Forgets the handle `fh` of `ino` (on `RELEASE`).
    pub(crate) fn release(&self, ino: u64, fh: u64) {
        let mut inodes = self.inodes();
        let Some(opens) = inodes.get_mut(&ino) else {
            return;
        };
        if fh == PASSTHROUGH_FH {
            opens.passthrough = opens.passthrough.saturating_sub(1);
        } else {
            opens.normal = opens.normal.saturating_sub(1);
        }
        if opens.is_idle() && opens.promoted.is_none() && !opens.carried {
            inodes.remove(&ino);
        }
    }

    /// Whether `node` may be promoted now (cheap checks, then: whole in the cache?).
    fn worth_trying(&self, node: &Node) -> bool {
        let cache = self.reader.cache();
        self.options.enabled
            && (!self.options.keep_for_restart || self.keeper.get().is_some())
            && self.off.get().is_none()
            && node.kind == NodeKind::Reg
            && node.size >= self.options.min_size.max(1)
            && node.size <= self.cap()
            && self.reader.bad_reason().is_none()
            && cache.contains_all(self.keys(node))
    }

    /// Most bytes promoted files may take.
    fn cap(&self) -> u64 {
        let share = u128::from(self.reader.cache().budget()) * u128::from(MAX_PROMOTED_PERCENT);
        u64::try_from(share / 100).unwrap_or(u64::MAX)
    }

    fn keys(&self, node: &Node) -> impl Iterator<Item = ChunkKey> {
        let layer = self.reader.layer_id();
        node.chunks.clone().map(move |chunk| ChunkKey {
            layer,
            chunk: chunk as u64,
        })
    }

    /// Promotes `ino` and answers `reply` and the opens that waited meanwhile.
    fn promote(&self, ino: u64, reply: ReplyOpen) {
        let result = match self.reader.tree().node(ino) {
            Some(node) => self.build(node, &reply),
            None => Err(PromoteError::Skipped(PromotionRefused::NotWhole)),
        };
        let mut inodes = self.inodes();
        let opens = inodes.entry(ino).or_default();
        let waiting = opens.waiting.take().unwrap_or_default();
        let replies = std::iter::once(reply).chain(waiting);
        match result {
            Ok(promoted) => {
                for reply in replies {
                    opens.passthrough += 1;
                    promoted.answer(reply);
                }
                opens.promoted = Some(promoted);
            }
            Err(err) => {
                match err {
                    PromoteError::Cannot(reason) => self.turn_off(reason),
                    PromoteError::Skipped(why) => {
                        tracing::debug!(layer = self.reader.layer_name(), ino, %why, "file not promoted")
                    }
                }
                for reply in replies {
                    opens.normal += 1;
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
                }
            }
        }
    }

    /// Makes the promoted file of `node` (registering it through the registrar when
    /// there is one, else through `reply`'s channel).
    fn build(&self, node: &Node, reply: &ReplyOpen) -> Result<Promoted, PromoteError> {
        let cannot = |what: &str, e: io::Error| PromoteError::Cannot(format!("{what}: {e}"));
        let mut file = MemFile::create(node.size).map_err(|e| cannot("memfd_create", e))?;
        let registering = "registering a backing file with the kernel";
        let (id, backing) = match &self.registrar {
            Some(registrar) => {
                let backing = RegisteredBacking::open(registrar.clone(), file.fd.as_fd())
                    .map_err(|e| cannot(registering, e))?;
                (backing.id(), Backing::Device(backing))
            }
            None => {
                let backing = reply
                    .open_backing(&file.fd)
                    .map_err(|e| cannot(registering, e))?;
                let id = backing.into_raw();
                // SAFETY: the id was just registered on this connection and is owned by
                // nothing else: the wrapper closes it when dropped.
                (id, Backing::Session(unsafe { reply.wrap_backing(id) }))
            }
        };
        let keys: Vec<ChunkKey> = self.keys(node).collect();
        let cache = self.reader.cache();
        let chunks = loop {
            match cache.take_for_promotion(&keys, node.size, self.cap()) {
                Ok(chunks) => break chunks,
                Err(PromotionRefused::OverCap) if self.drop_idle_promoted() => continue,
                Err(why) => return Err(PromoteError::Skipped(why)),
            }
        };
        // From here the file's bytes are charged to the cache; `promoted` gives them back.
        if let Err(e) = file.map_locked(true) {
            cache.undo_promotion(&keys, chunks, node.size);
            return Err(cannot("mapping and locking a memfd (RLIMIT_MEMLOCK?)", e));
        }
        let chunk_list = self.reader.tree().file_chunks(node);
        let fits = chunks.len() == chunk_list.len()
            && chunk_list.iter().zip(&chunks).all(|(c, data)| {
                data.len() as u64 == c.size && c.file_offset.saturating_add(c.size) <= node.size
            });
        if !fits {
            cache.undo_promotion(&keys, chunks, node.size);
            return Err(PromoteError::Skipped(PromotionRefused::NotWhole));
        }
        let mut promoted = Promoted {
            ino: node.ino,
            id,
            backing,
            file,
            cache: cache.clone(),
            kept: None,
            last_open: self.clock.fetch_add(1, Ordering::Relaxed),
        };
        let bytes = promoted.file.bytes_mut();
        for (chunk, data) in chunk_list.iter().zip(chunks) {
            let at = chunk.file_offset as usize;
            bytes[at..at + data.len()].copy_from_slice(&data);
        }
        promoted
            .file
            .seal()
            .map_err(|e| cannot("sealing a memfd", e))?;
        if self.options.keep_for_restart {
            // Kept before any open is answered with it: a restart finds every file that
            // passthrough handles may use.
            let keeper = self.keeper.get().cloned().ok_or_else(|| {
                PromoteError::Cannot("no keeper of promoted files for restarts".to_string())
            })?;
            let record = PromotedRecord {
                ino: node.ino,
                size: node.size,
                backing_id: id,
            };
            keeper
                .keep(node.ino, &record.encode(), promoted.file.fd.as_fd())
                .map_err(|e| {
                    PromoteError::Cannot(format!("keeping a promoted file for restarts: {e}"))
                })?;
            promoted.kept = Some(keeper);
        }
        Ok(promoted)
    }

    /// Drops this mount's least recently opened promoted file that has no open handle;
    /// whether there was one.
    fn drop_idle_promoted(&self) -> bool {
        let mut inodes = self.inodes();
        let victim = inodes
            .iter()
            .filter(|(_, o)| o.is_idle() && !o.carried)
            .filter_map(|(ino, o)| Some((*ino, o.promoted.as_ref()?.last_open)))
            .min_by_key(|(_, last_open)| *last_open)
            .map(|(ino, _)| ino);
        let Some(ino) = victim else {
            return false;
        };
        let dropped = inodes.remove(&ino);
        drop(inodes);
        drop(dropped);
        true
    }

    /// Turns promotion off for this mount, logging why the first time.
    fn turn_off(&self, reason: String) {
        if self.off.set(reason.clone()).is_ok() {
            tracing::warn!(layer = self.reader.layer_name(), %reason,
                "files whole in the cache cannot be served by FUSE passthrough on this mount: \
                 served by Veil's reads instead");
        }
    }

    fn inodes(&self) -> MutexGuard<'_, HashMap<u64, InodeOpens>> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}
