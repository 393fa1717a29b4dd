//! The "failed layer" filesystem: what a layer's mount point serves while the layer
//! itself cannot be mounted (its registry is down, its blob fails, ...).
//!
//! Left unmounted, the mount point would be an empty directory, and a container stacked
//! on it would run on an incomplete root filesystem without anyone noticing. Mounted with
//! [`FailedFs`] instead, every lookup, `getattr`, `opendir`, `readdir`, `open`, `access`
//! and xattr request answers `EIO`: the layer is visibly broken (never `ENOENT`, never an
//! empty listing), and an overlay mount using it as a lower directory fails. Nothing is
//! cached by the kernel (errors are not), so the real layer mounted in its place later is
//! seen at once. This file knows nothing of why the layer failed beyond a reason string
//! for the log.

use std::ffi::OsStr;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, INodeNo, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};

/// A filesystem whose root answers `EIO` to everything: the stand-in for a layer that
/// could not be mounted.
#[derive(Debug, Clone)]
pub struct FailedFs {
    layer: String,
    reason: String,
}

impl FailedFs {
    /// The stand-in for `layer` (a name for the log, e.g. its digest), failed because of
    /// `reason`.
    pub fn new(layer: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            layer: layer.into(),
            reason: reason.into(),
        }
    }

    /// The layer it stands in for.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// Why the layer failed.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn refused(&self, op: &'static str) -> Errno {
        tracing::debug!(layer = %self.layer, op, reason = %self.reason,
            "request on a failed layer: EIO");
        Errno::EIO
    }
}

impl Filesystem for FailedFs {
    fn lookup(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        reply.error(self.refused("lookup"));
    }

    fn getattr(&self, _req: &Request, _ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.error(self.refused("getattr"));
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(self.refused("readlink"));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(self.refused("open"));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(self.refused("opendir"));
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        reply: ReplyDirectory,
    ) {
        reply.error(self.refused("readdir"));
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        reply.error(self.refused("readdirplus"));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.error(self.refused("access"));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(self.refused("getxattr"));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(self.refused("listxattr"));
    }
}
