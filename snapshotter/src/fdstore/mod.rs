//! The fd store: a tiny supervisor process that holds file descriptors for
//! veil-snapshotter across its restarts, the way nydus keeps its FUSE fds.
//!
//! A FUSE connection lives as long as some process holds its `/dev/fuse` fd. The daemon
//! stores a copy of each layer's fd here right after mounting it ([`FdStoreClient::store`],
//! under the snapshot id), removes it when containerd removes the snapshot
//! ([`FdStoreClient::remove`]), and on start takes them all back
//! ([`FdStoreClient::take_all`]; the store keeps holding them) to serve the same
//! connections again. The store itself ([`server::serve`], `veil fd-store --socket PATH`)
//! knows nothing of FUSE or snapshots and never needs upgrading.
//!
//! Under systemd the service manager's own fd store can hold them instead
//! ([`systemd::SystemdFdStore`], `FDSTORE=1`); both are an [`FdKeeper`].
//!
//! The protocol ([`wire`]): one request per connection on a unix `SOCK_SEQPACKET` socket;
//! every message is one datagram, a big-endian `u32` length and that many bytes; an fd
//! rides with its message as `SCM_RIGHTS`. Names, opaque data and the number of entries
//! are bounded ([`MAX_NAME_BYTES`], [`MAX_DATA_BYTES`], [`MAX_ENTRIES`]).

pub mod client;
pub mod server;
pub mod systemd;
pub mod wire;

use std::os::fd::BorrowedFd;

pub use client::{FdStoreClient, StoredFd};
pub use systemd::SystemdFdStore;

/// Whatever holds layers' FUSE fds while the daemon restarts: Veil's fd store
/// ([`FdStoreClient`]) or systemd's ([`SystemdFdStore`]).
pub trait FdKeeper: Send + Sync + std::fmt::Debug {
    /// Has the keeper hold a copy of `fd` under `name` (replacing one held under it),
    /// with `data`.
    fn store(&self, name: &str, data: &[u8], fd: BorrowedFd<'_>) -> Result<(), FdStoreError>;

    /// Has the keeper close the fd held under `name`, if any.
    fn remove(&self, name: &str) -> Result<(), FdStoreError>;

    /// Copies of every fd the keeper holds for this process (it keeps holding them).
    fn take_all(&self) -> Result<Vec<StoredFd>, FdStoreError>;

    /// What the keeper is, for logs.
    fn describe(&self) -> String;
}

/// Longest name of a stored fd.
pub const MAX_NAME_BYTES: usize = 255;

/// Most opaque bytes stored with an fd.
pub const MAX_DATA_BYTES: usize = 16 * 1024;

/// Most fds the store holds.
pub const MAX_ENTRIES: usize = 65_536;

/// Why talking to the fd store failed.
#[derive(Debug, thiserror::Error)]
pub enum FdStoreError {
    /// The socket could not be reached or used.
    #[error("fd store {path}: {cause}")]
    Io {
        /// The store's socket.
        path: String,
        /// What failed.
        #[source]
        cause: std::io::Error,
    },
    /// A message broke the protocol.
    #[error("fd store protocol: {0}")]
    Protocol(String),
    /// The store refused the request.
    #[error("fd store refused: {0}")]
    Refused(String),
}
