//! Which promoted files of each connection a keeper of fds holds ([`KeptEntries`]), so
//! that a promoted file is kept and forgotten under its [`entry_name`] and removing the
//! connection removes them all. The daemons supply the store ([`EntryStore`]: Veil's fd
//! store, systemd's, the guest's keeper); the names and the bookkeeping are here, once.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::carry::{entry_name, PromotedKeeper};

/// Where promoted files are kept by name, beside their connections (a keeper of fds
/// that outlives the process).
pub trait EntryStore: Send + Sync {
    /// Keeps a copy of `memfd` under `name` with `data`, replacing one kept under it.
    fn keep_entry(&self, name: &str, data: &[u8], memfd: BorrowedFd<'_>) -> Result<(), String>;

    /// Closes what is kept under `name`, if anything.
    fn forget_entry(&self, name: &str) -> Result<(), String>;
}

/// The inodes of the promoted files kept for each connection (by the connection's name).
#[derive(Debug, Clone, Default)]
pub struct KeptEntries {
    held: Arc<Mutex<HashMap<String, BTreeSet<u64>>>>,
}

impl KeptEntries {
    /// A keeper of the promoted files of the connection kept under `connection` in
    /// `store`.
    pub fn keeper<S: EntryStore + ?Sized + 'static>(
        &self,
        store: Arc<S>,
        connection: &str,
    ) -> Arc<dyn PromotedKeeper> {
        Arc::new(ConnectionEntries {
            store,
            connection: connection.to_string(),
            kept: self.clone(),
        })
    }

    /// Notes that the store holds the promoted files of `inos` of `connection` (kept by
    /// an earlier process, or being kept now).
    pub fn note(&self, connection: &str, inos: impl IntoIterator<Item = u64>) {
        self.lock()
            .entry(connection.to_string())
            .or_default()
            .extend(inos);
    }

    /// Has `store` close every promoted file of `connection`.
    pub fn forget_all<S: EntryStore + ?Sized>(&self, store: &S, connection: &str) {
        let inos = self.lock().remove(connection).unwrap_or_default();
        for ino in inos {
            forget(store, connection, ino);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, BTreeSet<u64>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Has `store` close promoted file `ino` of `connection`, logging a failure.
fn forget<S: EntryStore + ?Sized>(store: &S, connection: &str, ino: u64) {
    if let Err(e) = store.forget_entry(&entry_name(connection, ino)) {
        tracing::warn!(connection, ino, error = %e, "could not close a kept promoted file");
    }
}

/// Keeps one connection's promoted files.
struct ConnectionEntries<S: ?Sized> {
    store: Arc<S>,
    connection: String,
    kept: KeptEntries,
}

impl<S: EntryStore + ?Sized> PromotedKeeper for ConnectionEntries<S> {
    fn keep(&self, ino: u64, data: &[u8], memfd: BorrowedFd<'_>) -> Result<(), String> {
        // Noted first: a connection removed meanwhile removes it too.
        self.kept.note(&self.connection, [ino]);
        self.store
            .keep_entry(&entry_name(&self.connection, ino), data, memfd)
    }

    fn forget(&self, ino: u64) {
        if let Some(inos) = self.kept.lock().get_mut(&self.connection) {
            inos.remove(&ino);
        }
        forget(self.store.as_ref(), &self.connection, ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that records what it holds by name.
    #[derive(Default)]
    struct Names(Mutex<BTreeSet<String>>);

    impl EntryStore for Names {
        fn keep_entry(&self, name: &str, _: &[u8], _: BorrowedFd<'_>) -> Result<(), String> {
            self.0.lock().unwrap().insert(name.to_string());
            Ok(())
        }

        fn forget_entry(&self, name: &str) -> Result<(), String> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
    }

    #[test]
    fn a_connection_removed_takes_its_promoted_files_with_it() {
        let store = Arc::new(Names::default());
        let kept = KeptEntries::default();
        let null = std::fs::File::open("/dev/null").unwrap();
        let (a, b) = (
            kept.keeper(store.clone(), "12"),
            kept.keeper(store.clone(), "13"),
        );
        for ino in [7, 9] {
            a.keep(ino, b"record", std::os::fd::AsFd::as_fd(&null))
                .unwrap();
        }
        b.keep(7, b"record", std::os::fd::AsFd::as_fd(&null))
            .unwrap();
        a.forget(9);
        // Kept by an earlier process: noted, never kept through this one.
        kept.note("12", [11]);
        store.0.lock().unwrap().insert(entry_name("12", 11));
        kept.forget_all(store.as_ref(), "12");
        let left: Vec<String> = store.0.lock().unwrap().iter().cloned().collect();
        assert_eq!(left, [entry_name("13", 7)]);
    }
}
