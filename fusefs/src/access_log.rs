//! The access recorder: which files of a layer were opened or read, in the order they
//! were first touched. `veil optimize` runs a workload against a freshly mounted image
//! and writes the converted image with these files first; `veil status --access-order`
//! dumps it from the running daemon; `veil bench` takes a workload's read set from it.
//!
//! [`LayerFs`](crate::fs::LayerFs) calls [`AccessLog::record`] on every `open` and `read`
//! of a regular file. Only the first touch of an inode counts: a bitmap with one bit per
//! inode answers "seen already" without a lock, so the read path pays one atomic
//! `fetch_or`. The order itself is a list of at most [`MAX_RECORDED_FILES`] entries
//! (later first touches are counted in [`AccessLog::dropped`]), so memory is bounded by
//! the tree's inode count / 8 + that list, whatever the workload does.
//!
//! Entries carry a process-wide sequence number, so the orders of several layers of one
//! image (each with its own log) merge into the order the workload saw. The log holds
//! inode numbers only; paths are rebuilt from the tree when it is dumped
//! ([`accessed_files`]). An encrypted layer's file names are plaintext: callers show them
//! only to root and never log them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::tree::{LayerTree, NodeKind};

/// The most first touches one layer's log keeps in order (more are counted, not kept).
pub const MAX_RECORDED_FILES: usize = 65_536;

/// Process-wide order of first touches across all logs.
static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// One first touch: the inode and its place in the process-wide order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The inode first touched.
    pub ino: u64,
    /// Its place in the process-wide order of first touches (smaller: earlier).
    pub sequence: u64,
}

/// The first-touch order of one layer's files.
#[derive(Debug)]
pub struct AccessLog {
    /// One bit per inode (inode `n` is bit `n`): touched already.
    seen: Vec<AtomicU64>,
    order: Mutex<Vec<Access>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// A log for a layer whose inode numbers are below `inodes + 1` (inodes count from 1).
    pub fn new(inodes: usize) -> Self {
        let words = (inodes + 1).div_ceil(64);
        Self {
            seen: (0..words).map(|_| AtomicU64::new(0)).collect(),
            order: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// A log sized for `tree`.
    pub fn for_tree(tree: &LayerTree) -> Self {
        Self::new(tree.len())
    }

    /// Records a touch of `ino`; only the first one is kept. Inode numbers beyond the
    /// log's size are ignored.
    pub fn record(&self, ino: u64) {
        let Some(word) = usize::try_from(ino / 64)
            .ok()
            .and_then(|w| self.seen.get(w))
        else {
            return;
        };
        let bit = 1u64 << (ino % 64);
        if word.load(Ordering::Relaxed) & bit != 0 {
            return;
        }
        if word.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return;
        }
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        if order.len() >= MAX_RECORDED_FILES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sequence = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        order.push(Access { ino, sequence });
    }

    /// The first touches so far, earliest first.
    pub fn order(&self) -> Vec<Access> {
        self.order.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// First touches that were not kept (the list was full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One file a workload touched, as a dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessedFile {
    /// Its path in the layer (relative, no leading `/`).
    pub path: String,
    /// Its size, uncompressed.
    pub size: u64,
    /// The bytes of the blob its chunks lie in (each compressed member or frame once).
    pub compressed_bytes: u64,
    /// Its place in the process-wide order of first touches.
    pub sequence: u64,
}

/// The files `log` recorded for `tree`'s layer, earliest first, with their paths and
/// sizes. Inodes the tree does not have, and anything but regular files, are left out.
pub fn accessed_files(log: &AccessLog, tree: &LayerTree) -> Vec<AccessedFile> {
    log.order()
        .into_iter()
        .filter_map(|access| {
            let node = tree.node(access.ino)?;
            if node.kind != NodeKind::Reg {
                return None;
            }
            let mut members = HashSet::new();
            let compressed_bytes = tree
                .file_chunks(node)
                .iter()
                .filter(|c| members.insert(c.blob_offset))
                .map(|c| c.blob_end.saturating_sub(c.blob_offset))
                .sum();
            Some(AccessedFile {
                path: tree.path(access.ino),
                size: node.size,
                compressed_bytes,
                sequence: access.sequence,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_touches_in_order_and_once() {
        let log = AccessLog::new(200);
        for ino in [5, 3, 5, 64, 3, 130, 200] {
            log.record(ino);
        }
        let order: Vec<u64> = log.order().iter().map(|a| a.ino).collect();
        assert_eq!(order, [5, 3, 64, 130, 200]);
        let seq: Vec<u64> = log.order().iter().map(|a| a.sequence).collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "{seq:?}");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn inodes_beyond_the_tree_are_ignored() {
        let log = AccessLog::new(10);
        log.record(10_000);
        log.record(u64::MAX);
        log.record(10);
        assert_eq!(log.order().iter().map(|a| a.ino).collect::<Vec<_>>(), [10]);
    }

    #[test]
    fn memory_is_bounded() {
        let n = MAX_RECORDED_FILES + 10;
        let log = AccessLog::new(n);
        for ino in 1..=n as u64 {
            log.record(ino);
        }
        assert_eq!(log.order().len(), MAX_RECORDED_FILES);
        assert_eq!(log.dropped(), 10);
        // Touching them again adds nothing.
        for ino in 1..=n as u64 {
            log.record(ino);
        }
        assert_eq!(log.dropped(), 10);
    }

    #[test]
    fn logs_of_two_layers_merge_into_one_order() {
        let (a, b) = (AccessLog::new(10), AccessLog::new(10));
        a.record(1);
        b.record(2);
        a.record(3);
        let mut all: Vec<(u64, char)> = a
            .order()
            .iter()
            .map(|x| (x.sequence, 'a'))
            .chain(b.order().iter().map(|x| (x.sequence, 'b')))
            .collect();
        all.sort();
        assert_eq!(
            all.iter().map(|x| x.1).collect::<String>(),
            "aba",
            "{all:?}"
        );
    }

    #[test]
    fn concurrent_touches_record_each_inode_once() {
        let log = std::sync::Arc::new(AccessLog::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for ino in 1..=1000 {
                        log.record(ino);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut inos: Vec<u64> = log.order().iter().map(|a| a.ino).collect();
        assert_eq!(inos.len(), 1000);
        inos.sort_unstable();
        inos.dedup();
        assert_eq!(inos.len(), 1000);
    }
}
