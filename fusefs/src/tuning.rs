//! How the kernel's side of a layer mount is tuned for fast reads: the `FUSE_INIT`
//! answer ([`answer_init`]) and the mount's readahead ([`set_read_ahead`]).
//!
//! Every figure here was chosen with `veil bench --fuse-read` (a cached 1 GiB file read
//! with the page cache dropped, against tmpfs; the README's "FUSE read path" section has
//! the table):
//!
//! * **Readahead** is what sizes a sequential reader's FUSE requests. The kernel offers
//!   128 KiB in `FUSE_INIT` (its default for a new backing device) and a filesystem cannot
//!   ask for more there, so after mounting, [`set_read_ahead`] raises the mount's own
//!   `read_ahead_kb` in sysfs (root only; otherwise the default stays and that is
//!   logged): a request then carries up to `max_pages` (the kernel's
//!   `fs.fuse.max_pages_limit`, 1 MiB by default) and several are in flight at once.
//! * **Background requests** (readahead is sent as background requests) may be in flight
//!   up to [`MAX_BACKGROUND`] before the kernel makes readers wait, and the connection
//!   counts as congested from [`CONGESTION_THRESHOLD`].
//!
//! The answer to `FUSE_INIT` depends on the kernel's offer and on whether the mount
//! promotes files to passthrough, nothing else: a restarted daemon replays the recorded
//! offer to a new session ([`crate::resume`]) and the kernel keeps what the first answer
//! said (a resumed session's own answer, passthrough bit included, goes nowhere: it
//! promotes only when the first answer had `FUSE_PASSTHROUGH`, else the kernel refuses
//! its backing files and it reads normally, [`crate::promote`]).

use std::io;
use std::path::Path;

use fuser::{InitFlags, KernelConfig};

/// Readahead of a layer mount, KiB: with 1 MiB requests, four in flight.
pub const READ_AHEAD_KB: u32 = 4096;

/// Most background (readahead) requests in flight on one connection.
pub const MAX_BACKGROUND: u16 = 64;

/// Background requests in flight from which the connection counts as congested.
pub const CONGESTION_THRESHOLD: u16 = 48;

/// Stack depth asked for with `FUSE_PASSTHROUGH`: backing files on a filesystem of depth
/// 0 (a memfd), and room for overlayfs on top (the kernel's maximum is 2).
pub const PASSTHROUGH_STACK_DEPTH: u32 = 1;

/// Answers the kernel's `FUSE_INIT` offer in `config`: the capabilities a read-only,
/// immutable layer wants (each only if offered; `FUSE_PASSTHROUGH` with
/// [`PASSTHROUGH_STACK_DEPTH`] only for a mount that promotes, `passthrough`), the
/// kernel's largest readahead and the background limits above.
pub fn answer_init(config: &mut KernelConfig, passthrough: bool) {
    for flag in [
        InitFlags::FUSE_DO_READDIRPLUS,
        InitFlags::FUSE_READDIRPLUS_AUTO,
        InitFlags::FUSE_CACHE_SYMLINKS,
        InitFlags::FUSE_PARALLEL_DIROPS,
        InitFlags::FUSE_ASYNC_READ,
    ] {
        let _ = config.add_capabilities(flag);
    }
    // Passthrough (promoted files, crate::promote) only for a mount that promotes: it
    // makes the mount a stacked filesystem of depth 1, which leaves room for one overlay
    // on top (containerd's, the guest's root) but not for an overlay over an overlay of
    // layers (`veil optimize`'s container over its image: EINVAL). Depth 1: the backing
    // memfd is on a filesystem of depth 0. A resumed session's answer never reaches the
    // kernel (it kept the first one).
    if passthrough && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
        let _ = config.set_max_stack_depth(PASSTHROUGH_STACK_DEPTH);
    }
    // "Too much" is answered with the most the kernel offered: take that.
    if let Err(max) = config.set_max_readahead(u32::MAX) {
        let _ = config.set_max_readahead(max);
    }
    let _ = config.set_max_background(MAX_BACKGROUND);
    let _ = config.set_congestion_threshold(CONGESTION_THRESHOLD);
}

/// Sets the readahead of the FUSE mount whose device is `major:minor` (from
/// `/proc/self/mountinfo`) to `kb` KiB, in `sysfs_bdi` (normally `/sys/class/bdi`).
pub fn set_read_ahead(sysfs_bdi: &Path, device: &str, kb: u32) -> io::Result<()> {
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_digit() || b == b':') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{device:?} is not a major:minor device number"),
        ));
    }
    std::fs::write(
        sysfs_bdi.join(device).join("read_ahead_kb"),
        format!("{kb}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_is_written_for_the_device_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("0:55")).unwrap();
        set_read_ahead(dir.path(), "0:55", 1024).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("0:55/read_ahead_kb")).unwrap(),
            "1024\n"
        );
        for bad in ["", "../x", "0:55/.."] {
            let err = set_read_ahead(dir.path(), bad, 1).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
