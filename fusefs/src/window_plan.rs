//! Where a window goes: the blob ranges around a read miss whose chunks a window
//! ([`crate::window`]) fetches.
//!
//! Two shapes, joined into one range (one range request):
//!
//! - **Neighbourhood**: the blob around the miss, [`WindowOptions::max`] or
//!   [`WindowOptions::min`] bytes, a `1 / back_divisor` share of it before the miss.
//! - **Directory**: the first miss in a file of a directory also takes the region of
//!   the blob holding that directory's other small files (at most
//!   [`WindowOptions::dir`] bytes). A program reads a directory's files together
//!   (python imports one `__pycache__/*.pyc` after another), and in tar order they lie
//!   together, so one request brings the files a directory's later reads will want,
//!   where the neighbourhood alone takes one round trip per window's worth of them.
//!   The region grows from the miss backwards (up to half the budget) and forwards, as
//!   long as the directory's small files ([`DIR_WINDOW_FILE_MAX`] bytes or less) keep
//!   coming: a stretch of [`DIR_WINDOW_GAP`] bytes without one ends it. Files that lie
//!   in between (another directory's) come along, since the request is one range.
//!
//! Bounded work on any TOC: the blob-order index is built once per layer (a sort); a
//! plan looks at no more than [`MAX_PLAN_CHUNKS`] chunks per direction and per shape,
//! whatever the size of the directory or the density of chunks in the blob.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Mutex;

use veil_formats::toc::Chunk;

use crate::tree::{LayerTree, NodeKind};
#[cfg(doc)]
use crate::window::WindowOptions;

/// A file of at most this many bytes is "small": a miss in it starts its directory's
/// window, and its chunks grow that window: 256 KiB.
pub const DIR_WINDOW_FILE_MAX: u64 = 256 << 10;

/// A directory window ends after this many blob bytes without a small file of the
/// directory: 128 KiB.
pub const DIR_WINDOW_GAP: u64 = 128 << 10;

/// Chunks a plan looks at, at most, per direction and per shape (and chunks one
/// window claims, at most).
pub const MAX_PLAN_CHUNKS: usize = 4096;

/// A layer's chunks in blob order, and the directory each small file's chunks belong to.
pub(crate) struct BlobIndex {
    /// Chunk indices (layer-wide) sorted by blob offset; empty chunks left out.
    order: Vec<u32>,
    /// Per chunk (layer-wide index): the inode of the directory of the small file it
    /// belongs to; 0 for chunks of large files.
    dir_of: Vec<u64>,
}

/// What a plan found, and how many chunks it looked at to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found<T> {
    /// The result.
    pub found: T,
    /// Chunks looked at.
    pub scanned: usize,
}

impl BlobIndex {
    /// The index of `tree` (one sort of its chunks).
    pub fn new(tree: &LayerTree) -> Self {
        let chunks = tree.chunks();
        let mut order: Vec<u32> = (0..chunks.len() as u32)
            .filter(|&i| chunks[i as usize].blob_offset < chunks[i as usize].blob_end)
            .collect();
        order.sort_by_key(|&i| (chunks[i as usize].blob_offset, i));
        let mut dir_of = vec![0; chunks.len()];
        for node in tree.nodes() {
            if node.kind != NodeKind::Reg || node.size > DIR_WINDOW_FILE_MAX {
                continue;
            }
            if let Some(slots) = dir_of.get_mut(node.chunks.clone()) {
                slots.fill(node.parent);
            }
        }
        Self { order, dir_of }
    }

    /// The blob range of directory `dir`'s small files around the blob range `miss`,
    /// at most `budget` bytes (half of it before the miss), ending where
    /// [`DIR_WINDOW_GAP`] bytes pass without one of them. At least `miss`.
    pub fn dir_extent(
        &self,
        chunks: &[Chunk],
        dir: u64,
        miss: Range<u64>,
        budget: u64,
    ) -> Found<Range<u64>> {
        let at = self.first_at(chunks, miss.start);
        let mut scanned = 0;
        // Backwards: the nearest of the directory's chunks, one after the other.
        let mut lo = miss.start;
        let floor = miss.start.saturating_sub(budget / 2);
        for &i in self.order[..at].iter().rev().take(MAX_PLAN_CHUNKS) {
            scanned += 1;
            let c = &chunks[i as usize];
            if c.blob_offset < floor || c.blob_end.saturating_add(DIR_WINDOW_GAP) < lo {
                break;
            }
            if self.dir_of[i as usize] == dir {
                lo = c.blob_offset;
            }
        }
        // Forwards, within what is left of the budget.
        let mut hi = miss.end;
        let ceiling = lo.saturating_add(budget);
        for &i in self.order[at..].iter().take(MAX_PLAN_CHUNKS) {
            scanned += 1;
            let c = &chunks[i as usize];
            if c.blob_end > ceiling || c.blob_offset > hi.saturating_add(DIR_WINDOW_GAP) {
                break;
            }
            if self.dir_of[i as usize] == dir {
                hi = hi.max(c.blob_end);
            }
        }
        Found {
            found: lo..hi.max(miss.end),
            scanned,
        }
    }

    /// The chunks (layer-wide indices, blob order) lying wholly in `range`, except
    /// those overlapping `miss` and those ending at or before `floor` (a running
    /// prefetch's): at most [`MAX_PLAN_CHUNKS`] looked at.
    pub fn chunks_in(
        &self,
        chunks: &[Chunk],
        range: Range<u64>,
        miss: Range<u64>,
        floor: u64,
    ) -> Found<Vec<usize>> {
        let first = self.first_at(chunks, range.start);
        let mut out = Vec::new();
        let mut scanned = 0;
        for &i in self.order[first..].iter().take(MAX_PLAN_CHUNKS) {
            scanned += 1;
            let c = &chunks[i as usize];
            if c.blob_offset >= range.end {
                break;
            }
            let own_miss = c.blob_offset < miss.end && c.blob_end > miss.start;
            if c.blob_end > range.end || c.blob_end <= floor || own_miss {
                continue;
            }
            out.push(i as usize);
        }
        Found {
            found: out,
            scanned,
        }
    }

    /// Position in the blob order of the first chunk starting at or after `offset`.
    fn first_at(&self, chunks: &[Chunk], offset: u64) -> usize {
        self.order
            .partition_point(|&i| chunks[i as usize].blob_offset < offset)
    }
}

/// The neighbourhood of `size` bytes around the blob range `miss`: `size / back_divisor`
/// before it when the miss is small (a big one is a sequential read, which goes on
/// forward), and at least the miss itself.
pub(crate) fn neighbourhood(size: u64, back_divisor: u64, miss: Range<u64>) -> Range<u64> {
    let back = match back_divisor {
        0 => 0,
        d if miss.end - miss.start > size / d => 0,
        d => size / d,
    };
    let start = miss.start.saturating_sub(back);
    let end = start.saturating_add(size).max(miss.end);
    start..end
}

/// The directories whose window was started (each gets one: later misses in it are
/// files its window did not reach).
#[derive(Default)]
pub(crate) struct DirsStarted(Mutex<HashSet<u64>>);

impl DirsStarted {
    /// Whether `dir` had no window yet; from now on it has.
    pub fn first(&self, dir: u64) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(dir)
    }
}

#[cfg(test)]
#[path = "window_plan_tests.rs"]
mod tests;
