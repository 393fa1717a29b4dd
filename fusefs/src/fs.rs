//! The FUSE filesystem of one layer: [`LayerFs`] implements [`fuser::Filesystem`].
//!
//! Metadata comes from the immutable [`LayerTree`], file contents from the
//! [`ChunkReader`]. Because nothing ever changes, the kernel is told to cache hard: long
//! attribute and entry TTLs, negative lookups cached too, `FOPEN_KEEP_CACHE` on files
//! (the page cache survives close/open) and `FOPEN_CACHE_DIR` on directories.
//!
//! Reads never block a FUSE session thread: a read is run on the thread that took it
//! until it first waits; one whose chunks are all cached is answered right there (no
//! hop to another thread), from the cached chunk's own buffer when it lies inside one
//! chunk ([`crate::read_data`]); one that must wait for a fetch is handed to the tokio
//! runtime and answered from its task, so a cached chunk is never stuck behind a slow
//! fetch. Several session threads take requests at once ([`crate::mount`]). A read
//! that fails (fetch error, digest mismatch) is answered with `EIO`.
//!
//! The filesystem is read-only: opening for writing and every modifying operation gets
//! `EROFS`. It knows nothing of registries, keys or containerd. Mounted with promotion on
//! ([`crate::mount::MountOptions::promote`]), a large file whole in the cache is opened by
//! FUSE passthrough from a memfd instead ([`crate::promote`]). Given a
//! [`StatusFile`], it also serves the hidden `/.veil/<name>` ([`crate::status_dir`]).

use std::ffi::OsStr;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::access_log::AccessLog;
pub use crate::attr::file_attr;
use crate::attr::{file_type, may_access, BLOCK_SIZE};
use crate::backing::BackingRegistrar;
use crate::carry::{CarriedFile, KeeperSlot};
use crate::handover::{KernelInit, KernelInitSlot};
use crate::pipeline::{ChunkReader, ReadError};
use crate::promote::{PromoteOptions, Promoter};
use crate::read_data::ReadData;
use crate::status_dir::{Hidden, HiddenStatus, StatusFile};
use crate::tree::{LayerTree, Node, NodeKind};

/// How long the kernel may cache what this filesystem tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsOptions {
    /// Attribute TTL.
    pub attr_ttl: Duration,
    /// Name-to-inode TTL.
    pub entry_ttl: Duration,
    /// TTL of "no such name" answers; zero disables negative caching.
    pub negative_ttl: Duration,
}

impl Default for FsOptions {
    /// A year for everything: layers are immutable.
    fn default() -> Self {
        let year = Duration::from_secs(365 * 24 * 3600);
        Self {
            attr_ttl: year,
            entry_ttl: year,
            negative_ttl: year,
        }
    }
}

/// One mounted layer.
pub struct LayerFs {
    tree: Arc<LayerTree>,
    reader: Arc<ChunkReader>,
    runtime: Handle,
    options: FsOptions,
    /// The kernel's INIT offer, once `init` has seen it (for a handover).
    kernel_init: KernelInitSlot,
    /// Where first opens and reads of files are recorded, if anywhere.
    access: Option<Arc<AccessLog>>,
    /// The hidden status directory, if one is served.
    status: Option<HiddenStatus>,
    /// Promotion of files whole in the cache to passthrough, when on.
    promoter: Option<Arc<Promoter>>,
    /// Where its promoted files are kept for restarts, once attached.
    keeper: KeeperSlot,
}

impl std::fmt::Debug for LayerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerFs")
            .field("reader", &self.reader)
            .field("options", &self.options)
            .finish()
    }
}

impl LayerFs {
    /// A filesystem serving `reader`'s layer, running reads on `runtime`.
    pub fn new(reader: Arc<ChunkReader>, runtime: Handle, options: FsOptions) -> Self {
        Self {
            tree: reader.tree().clone(),
            reader,
            runtime,
            options,
            kernel_init: KernelInitSlot::default(),
            access: None,
            status: None,
            promoter: None,
            keeper: KeeperSlot::default(),
        }
    }

    /// The same, promoting as `options` say ([`crate::promote`]; by default nothing is):
    /// [`crate::mount::mount`] calls this with [`crate::mount::MountOptions::promote`].
    pub fn with_promotion(mut self, options: PromoteOptions) -> Self {
        let (reader, keeper) = (self.reader.clone(), self.keeper.clone());
        self.promoter = (options.enabled).then(|| Arc::new(Promoter::new(reader, options, keeper)));
        self
    }

    /// The same, promoted files kept for restarts by what `slot` is given ([`crate::carry`]).
    pub fn with_keeper_slot(mut self, slot: KeeperSlot) -> Self {
        self.keeper = slot;
        self
    }

    /// The same, for a session resumed on a live connection after a restart
    /// ([`crate::resume`]): serving the promoted files an earlier process kept
    /// (`carried`, never dropped to make room), and promoting new files as `options` say,
    /// registered with the kernel through `dev` (a copy of the connection's `/dev/fuse`
    /// fd: fuser's channel is a socket there, [`crate::backing`]). Without `dev` nothing
    /// new is promoted. Call [`Self::with_keeper_slot`] first when promoted files are
    /// kept for restarts. Returns how many carried files were taken over.
    pub fn with_resumed_promotion(
        mut self,
        options: PromoteOptions,
        dev: Option<OwnedFd>,
        carried: Vec<CarriedFile>,
    ) -> (Self, usize) {
        let (reader, keeper) = (self.reader.clone(), self.keeper.clone());
        let promoter = match dev {
            Some(dev) if options.enabled => Promoter::new(reader, options, keeper)
                .registering_through(BackingRegistrar::new(dev)),
            _ => Promoter::new(reader, PromoteOptions::off(), keeper),
        };
        let adopted = promoter.adopt(carried);
        let needed = adopted > 0 || promoter.promotes();
        self.promoter = needed.then(|| Arc::new(promoter));
        (self, adopted)
    }

    /// The same, serving `file` in the hidden, read-only `/.veil` directory (not when the
    /// layer has a `/.veil` of its own: the layer's wins).
    pub fn with_status_file(mut self, file: StatusFile) -> Self {
        self.status = HiddenStatus::new(file, &self.tree);
        if self.status.is_none() {
            tracing::info!(
                layer = self.reader.layer_name(),
                "the layer has its own /.veil: its status file is not served"
            );
        }
        self
    }

    /// The same, recording the files opened and read in `log` (first touch order).
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Self {
        self.access = Some(log);
        self
    }

    fn record_access(&self, ino: INodeNo) {
        if let Some(log) = self
            .access
            .as_ref()
            .filter(|_| self.tree.node(ino.0).is_some())
        {
            log.record(ino.0);
        }
    }

    /// The hidden status entry `ino` is, if it is one.
    fn hidden(&self, ino: u64) -> Option<Hidden<'_>> {
        self.status.as_ref()?.entry(ino)
    }

    /// The hidden status directory, when `ino` is the status file.
    fn status_file(&self, ino: INodeNo) -> Option<&HiddenStatus> {
        match self.hidden(ino.0)? {
            Hidden::File(_) => self.status.as_ref(),
            Hidden::Dir(_) => None,
        }
    }

    /// The attributes of `node` and how long the kernel may cache them (not at all for
    /// the status file: its size changes).
    fn attr_of(&self, node: &Node) -> (Duration, FileAttr) {
        let mut attr = file_attr(node);
        match self.status_file(INodeNo(node.ino)) {
            Some(status) => {
                attr.size = status.size();
                attr.blocks = attr.size.div_ceil(512);
                (Duration::ZERO, attr)
            }
            None => (self.options.attr_ttl, attr),
        }
    }

    /// Where `init` records the kernel's INIT offer.
    pub(crate) fn kernel_init_slot(&self) -> KernelInitSlot {
        self.kernel_init.clone()
    }

    /// The reader behind it (for stats).
    pub fn reader(&self) -> &Arc<ChunkReader> {
        &self.reader
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        if let Some(node) = self.tree.node(ino.0) {
            return Ok(node);
        }
        match self.hidden(ino.0) {
            Some(Hidden::Dir(node) | Hidden::File(node)) => Ok(node),
            None => Err(Errno::ENOENT),
        }
    }

    fn dir(&self, ino: INodeNo) -> Result<&Node, Errno> {
        let node = self.node(ino)?;
        if node.is_dir() {
            Ok(node)
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    /// Directory entries from index `start`: `.`, `..`, then the children.
    fn dir_entries<'a>(
        &'a self,
        dir: &'a Node,
        start: u64,
    ) -> Box<dyn Iterator<Item = (u64, &'a str, &'a Node)> + 'a> {
        if let (Some(Hidden::Dir(_)), Some(status)) = (self.hidden(dir.ino), &self.status) {
            return Box::new(status.dir_entries(self.tree.root(), start));
        }
        let dots = [(".", dir.ino), ("..", dir.parent)];
        let children = dir
            .children()
            .iter()
            .map(|(name, ino)| (name.as_str(), *ino));
        Box::new(
            dots.into_iter()
                .chain(children)
                .enumerate()
                .skip(usize::try_from(start).unwrap_or(usize::MAX))
                .filter_map(|(index, (name, ino))| {
                    let node = self.tree.node(ino)?;
                    Some((index as u64 + 1, name, node))
                }),
        )
    }
}

/// Runs `work` until it first waits, on this thread (inside `runtime`'s context): when it
/// completes at once (a read whose chunks are all cached) `answer` gets its output here,
/// without a hop to another thread; otherwise the rest runs as a task on `runtime` and
/// `answer` is called from there. Either way this thread is free for the next request.
fn answer_now_or_later<W, A>(runtime: &Handle, work: W, answer: A)
where
    W: Future + Send + 'static,
    W::Output: Send,
    A: FnOnce(W::Output) + Send + 'static,
{
    let mut work = Box::pin(work);
    let first = {
        let _context = runtime.enter();
        // A waker that does nothing: if the work waits, the task below polls it again
        // with its own waker before anything could have woken this one.
        work.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    match first {
        Poll::Ready(output) => answer(output),
        Poll::Pending => {
            runtime.spawn(async move { answer(work.await) });
        }
    }
}

/// Answers an xattr request: the size when `size` is 0, else the bytes (or `ERANGE`).
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        *self.kernel_init.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(KernelInit::from_config(config));
        crate::tuning::answer_init(config, self.promoter.is_some());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = crate::metrics::op("lookup");
        if let Err(err) = self.dir(parent) {
            return reply.error(err);
        }
        let found = std::str::from_utf8(name.as_bytes()).ok().and_then(|name| {
            self.tree.lookup(parent.0, name).or_else(|| {
                let root = self.tree.root().ino;
                self.status.as_ref()?.lookup(root, parent.0, name)
            })
        });
        match found {
            Some(node) => {
                let (attr_ttl, attr) = self.attr_of(node);
                reply.entry_with_ttls(&attr_ttl, &self.options.entry_ttl, &attr, Generation(0))
            }
            None if !self.options.negative_ttl.is_zero() => {
                // Node id 0 with a TTL: the kernel caches the name as absent.
                let mut attr = file_attr(self.tree.root());
                attr.ino = INodeNo(0);
                reply.entry(&self.options.negative_ttl, &attr, Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inodes live as long as the tree; nothing to release.
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = crate::metrics::op("getattr");
        match self.node(ino) {
            Ok(node) => {
                let (ttl, attr) = self.attr_of(node);
                reply.attr(&ttl, &attr)
            }
            Err(err) => reply.error(err),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = crate::metrics::op("readlink");
        match self.node(ino) {
            Ok(node) if node.kind == NodeKind::Symlink => reply.data(node.link_target.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(err) => reply.error(err),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = crate::metrics::op("open");
        match self.node(ino) {
            Ok(_) if flags.acc_mode() != OpenAccMode::O_RDONLY => reply.error(Errno::EROFS),
            Ok(_) if flags.0 & libc::O_TRUNC != 0 => reply.error(Errno::EROFS),
            Ok(node) if node.is_dir() => reply.error(Errno::EISDIR),
            Ok(node) => match self.status_file(ino) {
                // Rendered now; read past the page cache (its size changes).
                Some(status) => {
                    reply.opened(FileHandle(status.open()), FopenFlags::FOPEN_DIRECT_IO)
                }
                None => {
                    self.record_access(ino);
                    match &self.promoter {
                        Some(promoter) => promoter.open(node, &self.runtime, reply),
                        None => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
                    }
                }
            },
            Err(err) => reply.error(err),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(status) = self.status_file(ino) {
            return reply.data(&status.read(fh.0, offset, size));
        }
        self.record_access(ino);
        let (reader, op) = (self.reader.clone(), crate::metrics::op("read"));
        let read = async move { reader.read_data(ino.0, offset, u64::from(size)).await };
        let answer = move |result: Result<ReadData, ReadError>| match result {
            Ok(data) => {
                reply.data(data.as_slice());
                drop(op);
            }
            Err(err) => {
                tracing::debug!(ino = ino.0, offset, size, error = %err, "read failed");
                crate::metrics::read_failed();
                reply.error(Errno::from_i32(err.errno()));
                drop(op);
            }
        };
        answer_now_or_later(&self.runtime, read, answer);
    }

    /// Nothing is buffered for writing: a flush (every close) has nothing to do.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(status) = self.status_file(ino) {
            status.release(fh.0);
        } else if let Some(promoter) = &self.promoter {
            promoter.release(ino.0, fh.0);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = crate::metrics::op("opendir");
        match self.dir(ino) {
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(err) => reply.error(err),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = crate::metrics::op("readdir");
        let dir = match self.dir(ino) {
            Ok(dir) => dir,
            Err(err) => return reply.error(err),
        };
        for (next, name, node) in self.dir_entries(dir, offset) {
            if reply.add(INodeNo(node.ino), next, file_type(node.kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = crate::metrics::op("readdirplus");
        let dir = match self.dir(ino) {
            Ok(dir) => dir,
            Err(err) => return reply.error(err),
        };
        for (next, name, node) in self.dir_entries(dir, offset) {
            let (ttl, attr) = self.attr_of(node);
            if reply.add(
                INodeNo(node.ino),
                next,
                name,
                &ttl.min(self.options.entry_ttl),
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = crate::metrics::op("statfs");
        let blocks = self.tree.file_bytes().div_ceil(u64::from(BLOCK_SIZE));
        let files = self.tree.len() as u64;
        reply.statfs(blocks, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = crate::metrics::op("getxattr");
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(err) => return reply.error(err),
        };
        let value = std::str::from_utf8(name.as_bytes())
            .ok()
            .and_then(|name| node.xattrs.get(name));
        match value {
            Some(value) => reply_xattr(reply, size, value),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = crate::metrics::op("listxattr");
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(err) => return reply.error(err),
        };
        let mut names = Vec::new();
        for name in node.xattrs.keys() {
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        reply_xattr(reply, size, &names);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _op = crate::metrics::op("access");
        match self.node(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(node) if may_access(node, req.uid(), req.gid(), mask) => reply.ok(),
            Ok(_) => reply.error(Errno::EACCES),
            Err(err) => reply.error(err),
        }
    }

    // Everything that would change the layer: read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
