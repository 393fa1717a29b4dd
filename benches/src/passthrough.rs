//! The FUSE passthrough probe of `veil bench --fuse-read`: what reading a file costs when
//! the kernel reads it from a backing file itself (`FOPEN_PASSTHROUGH`, Linux 6.9+)
//! instead of asking the FUSE server, with the plaintext in a memfd (guest memory, never
//! on disk).
//!
//! Veil does not serve layers this way (the README's "FUSE read path" says why); this
//! measures what it would give. [`mount_passthrough`] mounts a one-file filesystem whose
//! file's contents are a memfd's, registered as the backing file on open.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, MountOption, OpenFlags, ReplyAttr,
    ReplyEntry, ReplyOpen, Request,
};

/// The root directory's inode.
const ROOT: INodeNo = INodeNo(1);
/// The file's inode.
const FILE: INodeNo = INodeNo(2);
/// TTL of everything the probe tells the kernel.
const TTL: Duration = Duration::from_secs(3600);

/// A filesystem of one file, `name`, served by passthrough from `backing`.
struct Probe {
    name: String,
    size: u64,
    backing: OwnedFd,
    /// The backing id, registered on the first open and kept for every later one.
    id: Mutex<Option<BackingId>>,
}

impl Probe {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else {
            (FileType::RegularFile, 0o444, self.size, 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for Probe {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .map_err(|_| io::Error::other("the kernel offers no FUSE passthrough"))?;
        // Depth 1: the memfd is on a filesystem of depth 0; overlayfs may still stack on us.
        config
            .set_max_stack_depth(1)
            .map_err(|_| io::Error::other("stack depth 1 refused"))?;
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == OsStr::new(&self.name) {
            reply.entry(&TTL, &self.attr(FILE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == ROOT || ino == FILE {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        let mut id = self.id.lock().unwrap_or_else(|p| p.into_inner());
        if id.is_none() {
            match reply.open_backing(self.backing.as_fd()) {
                Ok(new) => *id = Some(new),
                Err(e) => {
                    eprintln!("fuse-read: registering the memfd as a backing file: {e}");
                    return reply.error(Errno::EIO);
                }
            }
        }
        match id.as_ref() {
            Some(id) => reply.opened_passthrough(FileHandle(0), FopenFlags::empty(), id),
            None => reply.error(Errno::EIO),
        }
    }
}

/// A memfd (anonymous, in memory) holding what `fill` writes.
pub fn memfd(fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and valid flags; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(c"veil-bench-passthrough".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh fd nobody else owns.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    fill(&mut file)?;
    Ok(file.into())
}

/// Mounts at `mountpoint` a filesystem of one file, `name` (`size` bytes), whose reads
/// the kernel serves from `backing` by passthrough. Dropping the result unmounts.
pub fn mount_passthrough(
    mountpoint: &Path,
    name: &str,
    size: u64,
    backing: OwnedFd,
) -> io::Result<BackgroundSession> {
    let probe = Probe {
        name: name.to_string(),
        size,
        backing,
        id: Mutex::new(None),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("veil-bench-passthrough".to_string()),
    ];
    fuser::Session::new(probe, mountpoint, &config)?.spawn()
}
