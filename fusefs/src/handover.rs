//! What a FUSE connection needs to be served by another process: the kernel's INIT offer
//! ([`KernelInit`]), the synthetic `FUSE_INIT` request that replays it, and the
//! `FUSE_NOTIFY_RESEND` notification.
//!
//! A connection is initialized once: the kernel sends `FUSE_INIT` when the filesystem is
//! mounted and never again. A process that takes over the `/dev/fuse` fd of a live
//! connection (after the one that mounted it died) must therefore start its filesystem
//! session without the kernel: [`crate::resume`] gives the session a socket, writes the
//! [`init_request`] recorded here into it, and discards the reply (the kernel already has
//! one). The filesystem sees the same offer as the first time and decides the same way.
//!
//! Requests the dead process had read but not answered are lost unless the kernel sends
//! them again: [`resend_notification`] asks it to (Linux 6.9 and later).

use fuser::{InitFlags, KernelConfig};
use serde::{Deserialize, Serialize};

/// `FUSE_INIT`'s opcode.
const FUSE_INIT: u32 = 26;

/// `FUSE_DESTROY`'s opcode.
const FUSE_DESTROY: u32 = 38;

/// `FUSE_NOTIFY_RESEND`: the kernel sends again every request it is waiting on an answer
/// for (Linux 6.9+).
pub const FUSE_NOTIFY_RESEND: i32 = 7;

/// `FUSE_INIT_EXT`: the second half of the flags is in `flags2`.
const FUSE_INIT_EXT: u64 = 1 << 30;

/// Size of `fuse_in_header`.
const IN_HEADER_LEN: usize = 40;

/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;

/// Size of `fuse_init_in` (ABI 7.36 and later: with `flags2`).
const INIT_IN_LEN: usize = 64;

/// The `unique` of the synthetic INIT request (the kernel's own are never 0).
pub const SYNTHETIC_INIT_UNIQUE: u64 = 1;

/// Where a filesystem's `init` records the kernel's offer, for its mount to read.
pub type KernelInitSlot = std::sync::Arc<std::sync::Mutex<Option<KernelInit>>>;

/// What the kernel offered in `FUSE_INIT` when the connection was made: recorded by the
/// filesystem's `init`, stored with the connection's fd, replayed to the next session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInit {
    /// The kernel's FUSE ABI major version.
    pub major: u32,
    /// The kernel's FUSE ABI minor version.
    pub minor: u32,
    /// The capabilities the kernel offered (`InitFlags` bits).
    pub capabilities: u64,
    /// The largest readahead the kernel offered.
    pub max_readahead: u32,
}

impl KernelInit {
    /// What `config` (the kernel's offer, as the filesystem's `init` sees it) says.
    pub fn from_config(config: &mut KernelConfig) -> Self {
        let abi = config.kernel_abi();
        // The offered maximum is what setting "too much" answers with.
        let max_readahead = match config.set_max_readahead(u32::MAX) {
            Err(max) => max,
            Ok(previous) => {
                // Only if the kernel offered u32::MAX: put the previous value back.
                let _ = config.set_max_readahead(previous);
                u32::MAX
            }
        };
        Self {
            major: abi.0,
            minor: abi.1,
            capabilities: config.capabilities().bits(),
            max_readahead,
        }
    }

    /// The capabilities as fuser's flags.
    pub fn flags(&self) -> InitFlags {
        InitFlags::from_bits_retain(self.capabilities)
    }
}

/// The `FUSE_INIT` request the kernel sent when it offered `init` (one whole frame).
pub fn init_request(init: &KernelInit) -> Vec<u8> {
    let mut flags = init.capabilities & !FUSE_INIT_EXT;
    if init.minor >= 36 {
        flags |= FUSE_INIT_EXT;
    }
    let len = IN_HEADER_LEN + INIT_IN_LEN;
    let mut frame = Vec::with_capacity(len);
    // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding.
    frame.extend_from_slice(&(len as u32).to_ne_bytes());
    frame.extend_from_slice(&FUSE_INIT.to_ne_bytes());
    frame.extend_from_slice(&SYNTHETIC_INIT_UNIQUE.to_ne_bytes());
    frame.extend_from_slice(&0u64.to_ne_bytes());
    frame.extend_from_slice(&[0u8; 12]);
    frame.extend_from_slice(&[0u8; 4]);
    // fuse_init_in: major, minor, max_readahead, flags, flags2, unused[11].
    frame.extend_from_slice(&init.major.to_ne_bytes());
    frame.extend_from_slice(&init.minor.to_ne_bytes());
    frame.extend_from_slice(&init.max_readahead.to_ne_bytes());
    frame.extend_from_slice(&(flags as u32).to_ne_bytes());
    frame.extend_from_slice(&((flags >> 32) as u32).to_ne_bytes());
    frame.extend_from_slice(&[0u8; 44]);
    debug_assert_eq!(frame.len(), len);
    frame
}

/// A `FUSE_DESTROY` request: tells a session the connection is gone (its loop ends
/// cleanly).
pub fn destroy_request() -> [u8; IN_HEADER_LEN] {
    let mut frame = [0u8; IN_HEADER_LEN];
    frame[0..4].copy_from_slice(&(IN_HEADER_LEN as u32).to_ne_bytes());
    frame[4..8].copy_from_slice(&FUSE_DESTROY.to_ne_bytes());
    frame[8..16].copy_from_slice(&SYNTHETIC_INIT_UNIQUE.to_ne_bytes());
    frame
}

/// The `FUSE_NOTIFY_RESEND` notification (a `fuse_out_header` with `unique` 0).
pub fn resend_notification() -> [u8; OUT_HEADER_LEN] {
    let mut frame = [0u8; OUT_HEADER_LEN];
    frame[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
    frame[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    frame
}

/// The `(error, unique)` of a reply frame (`fuse_out_header`), if it is long enough.
pub fn reply_header(frame: &[u8]) -> Option<(i32, u64)> {
    let error = i32::from_ne_bytes(frame.get(4..8)?.try_into().ok()?);
    let unique = u64::from_ne_bytes(frame.get(8..16)?.try_into().ok()?);
    Some((error, unique))
}

/// The `unique` of a request frame (`fuse_in_header`), if it is long enough.
pub fn request_unique(frame: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(frame.get(8..16)?.try_into().ok()?))
}

/// An error reply (`-errno`) to request `unique`.
pub fn error_reply(unique: u64, errno: i32) -> [u8; OUT_HEADER_LEN] {
    let mut frame = [0u8; OUT_HEADER_LEN];
    frame[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
    frame[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    frame[8..16].copy_from_slice(&unique.to_ne_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_request_carries_the_offer() {
        let init = KernelInit {
            major: 7,
            minor: 41,
            capabilities: (1 << 33) | 1,
            max_readahead: 131072,
        };
        let frame = init_request(&init);
        assert_eq!(frame.len(), 104);
        assert_eq!(u32::from_ne_bytes(frame[0..4].try_into().unwrap()), 104);
        assert_eq!(u32::from_ne_bytes(frame[4..8].try_into().unwrap()), 26);
        assert_eq!(request_unique(&frame), Some(SYNTHETIC_INIT_UNIQUE));
        let flags = u32::from_ne_bytes(frame[52..56].try_into().unwrap());
        assert_eq!(u64::from(flags), 1 | FUSE_INIT_EXT);
        assert_eq!(u32::from_ne_bytes(frame[56..60].try_into().unwrap()), 2);
        assert_eq!(reply_header(&resend_notification()), Some((7, 0)));
        assert_eq!(reply_header(&error_reply(9, libc::EIO)), Some((-5, 9)));
    }
}
