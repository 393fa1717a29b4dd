//! What keeps layer connections across restarts: a [`ConnectionKeeper`] (the daemon
//! supplies it: Veil's fd store over `SCM_RIGHTS`, or systemd's `FDSTORE=1`) and what it
//! gives back after a restart ([`KeptConnection`]). Used by the handover of layer
//! connections (`handover.rs`) and of promoted files (`kept_promoted.rs`).

use std::os::fd::{BorrowedFd, OwnedFd};

/// Keeps layer connections (fds) across restarts of the process.
pub trait ConnectionKeeper: Send + Sync {
    /// Keeps a copy of `fd` under `name` (replacing one kept under it), with `data`.
    fn keep(&self, name: &str, data: &[u8], fd: BorrowedFd<'_>) -> Result<(), String>;

    /// Closes the connection kept under `name`, if any.
    fn forget(&self, name: &str) -> Result<(), String>;
}

/// A connection an earlier process kept, as the keeper gave it back.
#[derive(Debug)]
pub struct KeptConnection {
    /// The name it was kept under (the layer directory's name).
    pub name: String,
    /// The data kept with it (the handover's record of the layer, JSON).
    pub data: Vec<u8>,
    /// The connection's fd.
    pub fd: OwnedFd,
}
