//! What the daemon keeps in the fd store for each remote snapshot, and reading it back
//! after a restart.
//!
//! Each layer's FUSE connection is stored under its snapshot id with a small JSON record:
//! the layer digest (a snapshot id handed out again after a removal the store missed must
//! not resume another layer's connection) and the image service's opaque state. Each file
//! the layer's mount promoted to FUSE passthrough is stored beside it, its memfd under
//! [`entry_name`] of the snapshot id and its inode, with the record its mount made
//! ([`PromotedEntries`]); they go with the snapshot.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use veil_image::resolver::{entry_name, parse_entry_name, CarriedFile, Handover, PromotedKeeper};

use crate::fdstore::{FdKeeper, StoredFd};

/// The record stored with a connection's fd.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    layer: String,
    state: String,
}

/// The data stored with the connection of layer `layer_digest`.
pub fn encode(layer_digest: &str, state: &str) -> Vec<u8> {
    let record = Record {
        layer: layer_digest.to_string(),
        state: state.to_string(),
    };
    // Serializing two strings cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// A connection handed over by an earlier process.
#[derive(Debug)]
pub struct HandedLayer {
    /// The layer it served.
    pub layer_digest: String,
    /// The connection, with the promoted files kept beside it.
    pub handover: Handover,
}

/// The fd store's entries by snapshot id (each connection with its promoted files);
/// entries that are not Veil's records, and promoted files of no connection, are logged
/// and returned by name, for the caller to remove.
pub fn decode(stored: Vec<StoredFd>) -> (HashMap<u64, HandedLayer>, Vec<String>) {
    let mut layers = HashMap::new();
    let mut foreign = Vec::new();
    let mut promoted = Vec::new();
    for entry in stored {
        if let Some((id, ino)) =
            parse_entry_name(&entry.name).and_then(|(id, ino)| Some((id.parse::<u64>().ok()?, ino)))
        {
            promoted.push((id, ino, entry));
            continue;
        }
        let id = entry.name.parse::<u64>().ok();
        let record = serde_json::from_slice::<Record>(&entry.data).ok();
        match (id, record) {
            (Some(id), Some(r)) => {
                layers.insert(
                    id,
                    HandedLayer {
                        layer_digest: r.layer,
                        handover: Handover {
                            fd: entry.fd,
                            state: r.state,
                            carried: Vec::new(),
                        },
                    },
                );
            }
            _ => {
                tracing::warn!(name = %entry.name, "the fd store holds an entry that is not a layer's; removing it");
                foreign.push(entry.name);
            }
        }
    }
    for (id, ino, entry) in promoted {
        match layers.get_mut(&id) {
            Some(layer) => layer.handover.carried.push(CarriedFile {
                ino,
                data: entry.data,
                fd: entry.fd,
            }),
            None => {
                tracing::warn!(name = %entry.name, "the fd store holds a promoted file of no layer connection; removing it");
                foreign.push(entry.name);
            }
        }
    }
    (layers, foreign)
}

/// Where the promoted files of remote snapshots are kept beside their connections
/// ([`veil_image::resolver::LiveMount::keep_promoted`]), by snapshot id: the names held,
/// so that removing a snapshot removes them all.
#[derive(Debug, Clone, Default)]
pub struct PromotedEntries {
    held: Arc<Mutex<HashMap<u64, BTreeSet<u64>>>>,
}

impl PromotedEntries {
    /// A keeper of snapshot `id`'s promoted files in `store`.
    pub fn keeper(&self, store: Arc<dyn FdKeeper>, id: u64) -> Arc<dyn PromotedKeeper> {
        Arc::new(SnapshotPromoted {
            store,
            id,
            held: self.held.clone(),
        })
    }

    /// Notes that the store holds snapshot `id`'s promoted files of `inos` (handed over
    /// by an earlier process).
    pub fn note(&self, id: u64, inos: impl IntoIterator<Item = u64>) {
        self.lock().entry(id).or_default().extend(inos);
    }

    /// Removes from `store` every promoted file of snapshot `id`.
    pub fn remove_all(&self, store: &dyn FdKeeper, id: u64) {
        let inos = self.lock().remove(&id).unwrap_or_default();
        for ino in inos {
            if let Err(e) = store.remove(&entry_name(&id.to_string(), ino)) {
                tracing::warn!(id, ino, error = %e, "could not remove a promoted file from the fd store");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, BTreeSet<u64>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps one snapshot's promoted files in the fd store.
struct SnapshotPromoted {
    store: Arc<dyn FdKeeper>,
    id: u64,
    held: Arc<Mutex<HashMap<u64, BTreeSet<u64>>>>,
}

impl PromotedKeeper for SnapshotPromoted {
    fn keep(&self, ino: u64, data: &[u8], memfd: BorrowedFd<'_>) -> Result<(), String> {
        let name = entry_name(&self.id.to_string(), ino);
        // Noted first: a snapshot removed meanwhile removes it too.
        let entries = PromotedEntries {
            held: self.held.clone(),
        };
        entries.note(self.id, [ino]);
        self.store
            .store(&name, data, memfd)
            .map_err(|e| e.to_string())
    }

    fn forget(&self, ino: u64) {
        if let Some(inos) = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
        {
            inos.remove(&ino);
        }
        if let Err(e) = self.store.remove(&entry_name(&self.id.to_string(), ino)) {
            tracing::warn!(id = self.id, ino, error = %e, "could not remove a promoted file from the fd store");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, data: &[u8]) -> StoredFd {
        StoredFd {
            name: name.to_string(),
            data: data.to_vec(),
            fd: std::fs::File::open("/dev/null").unwrap().into(),
        }
    }

    #[test]
    fn promoted_files_go_with_their_connection_and_orphans_are_foreign() {
        let stored = vec![
            entry("12.promoted.7", b"seven"),
            entry("12", &encode("sha256:a", "{}")),
            entry("12.promoted.9", b"nine"),
            entry("13.promoted.7", b"orphan"),
            entry("x.promoted.7", b"not an id"),
            entry("junk", b"?"),
        ];
        let (layers, mut foreign) = decode(stored);
        foreign.sort();
        assert_eq!(foreign, ["13.promoted.7", "junk", "x.promoted.7"]);
        assert_eq!(layers.len(), 1);
        let layer = &layers[&12];
        assert_eq!(layer.layer_digest, "sha256:a");
        let mut carried: Vec<(u64, &[u8])> = layer
            .handover
            .carried
            .iter()
            .map(|c| (c.ino, c.data.as_slice()))
            .collect();
        carried.sort();
        assert_eq!(carried, [(7, &b"seven"[..]), (9, &b"nine"[..])]);
    }
}
