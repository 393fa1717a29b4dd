//! What the daemon keeps in the fd store for each remote snapshot, and reading it back
//! after a restart.
//!
//! Each layer's FUSE connection is stored under its snapshot id with a small JSON record:
//! the layer digest (a snapshot id handed out again after a removal the store missed must
//! not resume another layer's connection) and the image service's opaque state.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use veil_image::resolver::Handover;

use crate::fdstore::StoredFd;

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
    /// The connection.
    pub handover: Handover,
}

/// The fd store's entries by snapshot id; entries that are not Veil's records are logged
/// and returned by name, for the caller to remove.
pub fn decode(stored: Vec<StoredFd>) -> (HashMap<u64, HandedLayer>, Vec<String>) {
    let mut layers = HashMap::new();
    let mut foreign = Vec::new();
    for entry in stored {
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
    (layers, foreign)
}
