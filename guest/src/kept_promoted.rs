//! The files a layer mount promoted to FUSE passthrough, kept beside its connection by
//! the [`ConnectionKeeper`] (each memfd under `veil_fusefs::carry::entry_name` of the
//! layer directory's name and the inode, with its mount's record), so that a restart
//! serves them on with the same backing ids. They go with the connection; which ones
//! are kept is [`KeptEntries`]' bookkeeping, the keeper is its store.

use std::os::fd::BorrowedFd;

use veil_image::resolver::{EntryStore, KeptEntries};

use crate::keeper::ConnectionKeeper;

/// The promoted files kept, by connection name (the layer directory's name).
pub(crate) type KeptPromoted = KeptEntries;

impl EntryStore for dyn ConnectionKeeper {
    fn keep_entry(&self, name: &str, data: &[u8], memfd: BorrowedFd<'_>) -> Result<(), String> {
        self.keep(name, data, memfd)
    }

    fn forget_entry(&self, name: &str) -> Result<(), String> {
        self.forget(name)
    }
}
