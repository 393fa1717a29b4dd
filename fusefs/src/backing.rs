//! Registering backing files for FUSE passthrough on a `/dev/fuse` fd directly, without
//! fuser's channel: a session resumed after a restart ([`crate::resume`]) is served
//! through a socketpair, on which fuser's `ReplyOpen::open_backing` cannot work, but it
//! holds the connection's real fd, and a copy of it registers backing files as well.
//!
//! The two ioctls, as the kernel's `include/uapi/linux/fuse.h` has them (Linux 6.9+):
//!
//! ```text
//! #define FUSE_DEV_IOC_MAGIC          229
//! #define FUSE_DEV_IOC_BACKING_OPEN   _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
//! #define FUSE_DEV_IOC_BACKING_CLOSE  _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)
//! struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; };
//! ```
//!
//! `BACKING_OPEN` answers the new backing id (at least 1); it fails with `EPERM` when the
//! connection's INIT answer did not have `FUSE_PASSTHROUGH` or the caller lacks
//! `CAP_SYS_ADMIN`, and with `EOPNOTSUPP` on a kernel built without passthrough. An id
//! belongs to the connection, not to the fd or process that registered it: it stays
//! until closed or until the connection ends.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// `FUSE_DEV_IOC_MAGIC`: the ioctl type of `/dev/fuse`.
const FUSE_DEV_IOC_MAGIC: u32 = 229;

/// `struct fuse_backing_map`: what `FUSE_DEV_IOC_BACKING_OPEN` takes.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// `FUSE_DEV_IOC_BACKING_OPEN`.
pub const FUSE_DEV_IOC_BACKING_OPEN: libc::Ioctl = libc::_IOW::<BackingMap>(FUSE_DEV_IOC_MAGIC, 1);

/// `FUSE_DEV_IOC_BACKING_CLOSE`.
pub const FUSE_DEV_IOC_BACKING_CLOSE: libc::Ioctl = libc::_IOW::<u32>(FUSE_DEV_IOC_MAGIC, 2);

/// Registers and closes backing files on one FUSE connection, through a `/dev/fuse` fd
/// of it (the connection's own or a copy).
#[derive(Debug)]
pub struct BackingRegistrar {
    dev: OwnedFd,
}

impl BackingRegistrar {
    /// Registering through `dev`, a `/dev/fuse` fd of the connection.
    pub fn new(dev: OwnedFd) -> Self {
        Self { dev }
    }

    /// Registers `file` as a backing file of the connection (`FUSE_DEV_IOC_BACKING_OPEN`)
    /// and returns its backing id. The error carries the kernel's errno
    /// ([`io::Error::raw_os_error`]): `EPERM` when the connection did not negotiate
    /// passthrough or without `CAP_SYS_ADMIN`.
    pub fn open(&self, file: BorrowedFd<'_>) -> io::Result<u32> {
        let map = BackingMap {
            fd: file.as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: the ioctl reads a `struct fuse_backing_map` through the pointer, which
        // is valid for the duration of the call; the fds are open.
        let rc = unsafe {
            libc::ioctl(
                self.dev.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_OPEN,
                &map as *const BackingMap,
            )
        };
        match rc {
            id if id > 0 => Ok(id as u32),
            0 => Err(io::Error::other("the kernel answered backing id 0")),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Closes backing id `id` of the connection (`FUSE_DEV_IOC_BACKING_CLOSE`). Files
    /// open by passthrough with it keep reading; new opens cannot use it.
    pub fn close(&self, id: u32) -> io::Result<()> {
        // SAFETY: the ioctl reads a u32 through the pointer, valid for the call.
        let rc = unsafe {
            libc::ioctl(
                self.dev.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE,
                &id as *const u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A backing id registered through a [`BackingRegistrar`], closed through it when
/// dropped (a failure is logged: the connection may be gone already).
#[derive(Debug)]
pub struct RegisteredBacking {
    registrar: Arc<BackingRegistrar>,
    id: u32,
}

impl RegisteredBacking {
    /// Registers `file` through `registrar`.
    pub fn open(registrar: Arc<BackingRegistrar>, file: BorrowedFd<'_>) -> io::Result<Self> {
        let id = registrar.open(file)?;
        Ok(Self { registrar, id })
    }

    /// Its backing id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for RegisteredBacking {
    fn drop(&mut self) {
        if let Err(e) = self.registrar.close(self.id) {
            // ENODEV: the connection ended (unmounted); its ids went with it.
            if e.raw_os_error() != Some(libc::ENODEV) {
                tracing::warn!(id = self.id, error = %e, "closing a FUSE backing id failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // `libc::Ioctl` is u64 on glibc, i32 on musl: the casts are needed on one of them.
    #[allow(clippy::unnecessary_cast)]
    fn the_ioctl_numbers_are_the_kernels() {
        // _IOW(229, 1, 16 bytes) and _IOW(229, 2, 4 bytes), asm-generic encoding (x86-64,
        // arm64): direction write (1) << 30 | size << 16 | type << 8 | number.
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(FUSE_DEV_IOC_BACKING_OPEN as u64, 0x4010_e501);
            assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE as u64, 0x4004_e502);
        }
        assert_eq!(std::mem::size_of::<BackingMap>(), 16);
    }

    #[test]
    fn a_file_that_is_not_a_fuse_device_is_refused_with_an_errno() {
        let not_fuse: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let registrar = BackingRegistrar::new(not_fuse);
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let err = registrar.open(file.as_fd()).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        assert!(registrar.close(1).unwrap_err().raw_os_error().is_some());
    }
}
