//! The byte ranges of a blob the disk cache holds: a sorted set of disjoint ranges.

use std::ops::Range;

/// A set of disjoint, non-adjacent byte ranges, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RangeSet(pub(super) Vec<Range<u64>>);

impl RangeSet {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn total(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// The parts of `range` not in the set, in order.
    pub(super) fn gaps(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if range.start >= range.end {
            return out;
        }
        let mut pos = range.start;
        let first = self.0.partition_point(|r| r.end <= range.start);
        for r in &self.0[first..] {
            if r.start >= range.end {
                break;
            }
            if r.start > pos {
                out.push(pos..r.start);
            }
            pos = pos.max(r.end);
            if pos >= range.end {
                break;
            }
        }
        if pos < range.end {
            out.push(pos..range.end);
        }
        out
    }

    pub(super) fn contains(&self, range: Range<u64>) -> bool {
        self.gaps(range).is_empty()
    }

    /// Adds `range`; returns how many bytes were new.
    pub(super) fn insert(&mut self, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        let added = self
            .gaps(range.clone())
            .iter()
            .map(|g| g.end - g.start)
            .sum();
        let lo = self.0.partition_point(|r| r.end < range.start);
        let hi = self.0.partition_point(|r| r.start <= range.end);
        let merged = if lo < hi {
            self.0[lo].start.min(range.start)..self.0[hi - 1].end.max(range.end)
        } else {
            range
        };
        self.0.splice(lo..hi, [merged]);
        added
    }

    /// Removes `range`; returns how many bytes were removed.
    pub(super) fn remove(&mut self, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        let mut removed = 0;
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for r in self.0.drain(..) {
            if r.end <= range.start || r.start >= range.end {
                out.push(r);
                continue;
            }
            removed += r.end.min(range.end) - r.start.max(range.start);
            if r.start < range.start {
                out.push(r.start..range.start);
            }
            if r.end > range.end {
                out.push(range.end..r.end);
            }
        }
        self.0 = out;
        removed
    }
}
