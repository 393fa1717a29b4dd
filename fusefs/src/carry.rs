//! Promoted files carried over a restart: the record kept beside each promoted file's
//! memfd, and the checks a resumed process makes before it trusts one.
//!
//! A promoted file ([`crate::promote`]) is a sealed memfd registered on the layer's FUSE
//! connection under a backing id. The id belongs to the connection, not to the process:
//! it stays registered in the kernel while the connection lives, unless someone closes
//! it (`FUSE_DEV_IOC_BACKING_CLOSE`). A process that dies without closing it (a restart)
//! leaves it there, and the kernel keeps the memfd alive through it. The process that
//! resumes the connection ([`crate::resume`]) must answer opens of that inode with
//! passthrough and the *same* id while a passthrough handle from before is open: the
//! kernel refuses (`EIO` for the reader) an open in the cached mode beside one by
//! passthrough, and an open by passthrough with another backing file beside one with
//! this one.
//!
//! So each promoted file is kept, like the connection, in the keeper of fds that outlives
//! the process: its memfd, with a [`PromotedRecord`] (inode, size, backing id) as the
//! kept data, under [`entry_name`] of the connection's own name. The resumed process
//! checks each record ([`PromotedRecord::decode`], [`check_memfd`], [`check_node`])
//! before it maps and locks the memfd again and charges its bytes to the cache. A record
//! that fails a check is not trusted: its inode is answered normally, which never serves
//! bytes from an unchecked file (while a passthrough handle from before is still open
//! the kernel fails such an open with `EIO`; once it is closed, opens work again).
//!
//! This module knows nothing of where the fds are kept.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::tree::{Node, NodeKind};

/// The seals of a promoted file's memfd: its size and contents can no longer change,
/// nor its seals.
pub const PROMOTED_SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;

/// The `kind` of a record: data kept with any other fd is not mistaken for one.
pub const RECORD_KIND: &str = "veil-promoted-file/1";

/// What separates a connection's name from the inode in [`entry_name`].
const ENTRY_INFIX: &str = ".promoted.";

/// Longest record accepted, in bytes (a real one is well under 100).
pub const MAX_RECORD_BYTES: usize = 512;

/// Why a carried promoted file is not trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CarryError {
    /// The kept data is not a record of a promoted file.
    #[error("not a promoted file's record: {0}")]
    Record(String),
    /// The fd kept with it is not the sealed memfd the record describes.
    #[error("the promoted file's memfd does not match its record: {0}")]
    Memfd(String),
    /// The layer has no regular file of that inode and size.
    #[error("the promoted file does not match the layer: {0}")]
    Node(String),
}

/// One promoted file, as kept with its memfd across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromotedRecord {
    /// Its inode.
    pub ino: u64,
    /// Its size in bytes (the memfd's).
    pub size: u64,
    /// Its backing id on the layer's connection.
    pub backing_id: u32,
}

/// The record as kept (JSON).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    kind: String,
    ino: u64,
    size: u64,
    backing_id: u32,
}

impl PromotedRecord {
    /// The data kept with the memfd.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            kind: RECORD_KIND.to_string(),
            ino: self.ino,
            size: self.size,
            backing_id: self.backing_id,
        };
        // A struct of a string and numbers always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The record in kept `data`; refused unless it is one, whole, with plausible
    /// values (no root inode, no empty file, no backing id 0: the kernel's start at 1).
    pub fn decode(data: &[u8]) -> Result<Self, CarryError> {
        let bad = |why: String| CarryError::Record(why);
        if data.len() > MAX_RECORD_BYTES {
            return Err(bad(format!(
                "{} bytes, more than {MAX_RECORD_BYTES}",
                data.len()
            )));
        }
        let wire: Wire = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        if wire.kind != RECORD_KIND {
            return Err(bad(format!("kind {:?}", wire.kind)));
        }
        if wire.ino <= 1 || wire.size == 0 || wire.backing_id == 0 {
            return Err(bad(format!(
                "inode {}, size {}, backing id {}",
                wire.ino, wire.size, wire.backing_id
            )));
        }
        Ok(Self {
            ino: wire.ino,
            size: wire.size,
            backing_id: wire.backing_id,
        })
    }
}

/// Keeps the promoted files of one mount beside its connection (the daemon's fd store).
pub trait PromotedKeeper: Send + Sync {
    /// Keeps a copy of `memfd`, the promoted file of inode `ino`, with `data` (an encoded
    /// [`PromotedRecord`]), replacing one kept for `ino`. Called before any open is
    /// answered by passthrough with it: an error leaves the file unpromoted.
    fn keep(&self, ino: u64, data: &[u8], memfd: BorrowedFd<'_>) -> Result<(), String>;

    /// Closes the copy kept for `ino`, if any. Called before the backing id is closed.
    fn forget(&self, ino: u64);
}

/// Where a mount's [`PromotedKeeper`] is attached (once its connection is kept): shared
/// by the mount's owner and its filesystem.
pub type KeeperSlot = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn PromotedKeeper>>>;

/// A promoted file handed over by an earlier process: the data kept with it and its fd.
#[derive(Debug)]
pub struct CarriedFile {
    /// Its inode, as the name it was kept under says ([`parse_entry_name`]).
    pub ino: u64,
    /// The data kept with it (an encoded [`PromotedRecord`], unchecked).
    pub data: Vec<u8>,
    /// The fd kept with it (its memfd, unchecked).
    pub fd: OwnedFd,
}

/// The name a promoted file of inode `ino` is kept under, beside the connection kept
/// under `connection`.
pub fn entry_name(connection: &str, ino: u64) -> String {
    format!("{connection}{ENTRY_INFIX}{ino}")
}

/// The connection's name and the inode in a name made by [`entry_name`]; `None` for any
/// other name (a connection's own among them).
pub fn parse_entry_name(name: &str) -> Option<(&str, u64)> {
    let (connection, ino) = name.rsplit_once(ENTRY_INFIX)?;
    if connection.is_empty() || ino.is_empty() || !ino.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((connection, ino.parse().ok()?))
}

/// Checks that `fd` is a regular file of the record's size carrying every one of
/// [`PROMOTED_SEALS`] (so neither its size nor its contents can have changed since it
/// was sealed).
pub fn check_memfd(fd: BorrowedFd<'_>, record: &PromotedRecord) -> Result<(), CarryError> {
    let bad = |why: String| CarryError::Memfd(why);
    // SAFETY: fstat into a zeroed stat, on an fd we borrow.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(bad(format!("fstat: {}", std::io::Error::last_os_error())));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(bad("not a regular file".to_string()));
    }
    if u64::try_from(st.st_size).ok() != Some(record.size) {
        return Err(bad(format!(
            "{} bytes, the record says {}",
            st.st_size, record.size
        )));
    }
    // SAFETY: fcntl F_GET_SEALS on an fd we borrow (EINVAL for a file that cannot be
    // sealed: not a memfd).
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(bad(format!(
            "reading its seals: {}",
            std::io::Error::last_os_error()
        )));
    }
    if seals & PROMOTED_SEALS != PROMOTED_SEALS {
        return Err(bad(format!(
            "seals {seals:#x}, not all of {PROMOTED_SEALS:#x}"
        )));
    }
    Ok(())
}

/// Checks that the layer's inode of the record (`node`, as the layer's tree has it) is a
/// regular file of the record's size.
pub fn check_node(node: Option<&Node>, record: &PromotedRecord) -> Result<(), CarryError> {
    let node = node.ok_or_else(|| CarryError::Node(format!("no inode {}", record.ino)))?;
    if node.kind != NodeKind::Reg || node.size != record.size {
        return Err(CarryError::Node(format!(
            "inode {} is a {:?} of {} bytes, the record says a file of {}",
            record.ino, node.kind, node.size, record.size
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "carry_tests.rs"]
mod tests;
