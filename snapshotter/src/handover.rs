//! What the daemon keeps in the fd store for each remote snapshot, and reading it back
//! after a restart.
//!
//! Each layer's FUSE connection is stored under its snapshot id with a small JSON record:
//! the layer digest (a snapshot id handed out again after a removal the store missed must
//! not resume another layer's connection) and the image service's opaque state. Each file
//! the layer's mount promoted to FUSE passthrough is stored beside it, its memfd under
//! [`entry_name`] of the snapshot id and its inode, with the record its mount made
//! ([`KeptEntries`]); they go with the snapshot.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;

use serde::{Deserialize, Serialize};
#[cfg(doc)]
use veil_image::resolver::{entry_name, KeptEntries};
use veil_image::resolver::{parse_entry_name, CarriedFile, EntryStore, Handover};

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
/// ([`veil_image::resolver::LiveMount::keep_promoted`]): the fd store, under
/// [`entry_name`] of the snapshot id ([`KeptEntries`] holds which, so that removing a
/// snapshot removes them all).
impl EntryStore for dyn FdKeeper {
    fn keep_entry(&self, name: &str, data: &[u8], memfd: BorrowedFd<'_>) -> Result<(), String> {
        self.store(name, data, memfd).map_err(|e| e.to_string())
    }

    fn forget_entry(&self, name: &str) -> Result<(), String> {
        self.remove(name).map_err(|e| e.to_string())
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
