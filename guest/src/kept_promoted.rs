//! The files a layer mount promoted to FUSE passthrough, kept beside its connection by
//! the [`ConnectionKeeper`] (each memfd under `veil_fusefs::carry::entry_name` of the
//! layer directory's name and the inode, with its mount's record), so that a restart
//! serves them on with the same backing ids. They go with the connection.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use veil_image::resolver::{entry_name, PromotedKeeper};

use crate::keeper::ConnectionKeeper;

/// The promoted files kept, by connection name (the layer directory's name).
#[derive(Clone, Default)]
pub(crate) struct KeptPromoted {
    held: Arc<Mutex<HashMap<String, BTreeSet<u64>>>>,
}

impl KeptPromoted {
    /// A keeper of the promoted files of the connection kept under `name`.
    pub fn keeper(&self, keeper: Arc<dyn ConnectionKeeper>, name: &str) -> Arc<dyn PromotedKeeper> {
        Arc::new(OneMount {
            keeper,
            name: name.to_string(),
            kept: self.clone(),
        })
    }

    /// Notes that the keeper holds promoted files `inos` of connection `name`.
    pub fn note(&self, name: &str, inos: impl IntoIterator<Item = u64>) {
        self.lock()
            .entry(name.to_string())
            .or_default()
            .extend(inos);
    }

    /// Has `keeper` close every promoted file of connection `name`.
    pub fn forget_all(&self, keeper: &dyn ConnectionKeeper, name: &str) {
        let inos = self.lock().remove(name).unwrap_or_default();
        for ino in inos {
            if let Err(e) = keeper.forget(&entry_name(name, ino)) {
                tracing::warn!(name, ino, error = %e, "could not close a kept promoted file");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<u64>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps one mount's promoted files.
struct OneMount {
    keeper: Arc<dyn ConnectionKeeper>,
    name: String,
    kept: KeptPromoted,
}

impl PromotedKeeper for OneMount {
    fn keep(&self, ino: u64, data: &[u8], memfd: BorrowedFd<'_>) -> Result<(), String> {
        // Noted first: a connection closed meanwhile closes it too.
        self.kept.note(&self.name, [ino]);
        self.keeper.keep(&entry_name(&self.name, ino), data, memfd)
    }

    fn forget(&self, ino: u64) {
        if let Some(inos) = self.kept.lock().get_mut(&self.name) {
            inos.remove(&ino);
        }
        if let Err(e) = self.keeper.forget(&entry_name(&self.name, ino)) {
            tracing::warn!(name = %self.name, ino, error = %e, "could not close a kept promoted file");
        }
    }
}
