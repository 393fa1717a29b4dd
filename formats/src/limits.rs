//! The limits that bound what any layer, however hostile, can cost to index and to read.
//!
//! A TOC is authenticated, but authentic is not the same as harmless: an image author
//! may write a valid, correctly digested TOC whose entries would make a reader inflate a
//! gigabyte per 4 KiB read, skip ten gigabytes of output before the first useful byte,
//! or build a tree whose size grows with the square of a path's depth (DESIGN.md, trust
//! rules: "a hostile image costs bounded memory and CPU"). Every TOC is checked against
//! these limits when it is loaded, before anything is mounted, and a TOC that exceeds one
//! is refused with an error naming the entry and the limit ([`crate::estargz::FormatError::Limit`]).
//! The chunk codec applies the chunk limit again to every chunk it decodes
//! ([`crate::codec::decode_chunk`]), whatever the chunk's origin.
//!
//! The limits in force are a [`Limits`] value passed to every place that checks them
//! (TOC loading, chunk decoding, the streamed indexer, the filesystem tree); its
//! [`Default`] is the constants below. The daemon's `[limits]` config section builds
//! another; [`Limits::validate`] refuses values that would disable a bound or make every
//! layer unreadable, naming the field.
//!
//! [`index_bytes`] estimates the memory of the format-neutral model; the filesystem tree
//! built on top of it has its own budget, proportional to this estimate (`veil-fusefs`).

use std::ops::RangeInclusive;

use crate::toc::{Chunk, Entry};

/// The largest uncompressed chunk accepted (16 MiB), and the most bytes a chunk may need
/// inflated from its member or frame (`innerOffset + size`).
///
/// Four times [`crate::estargz::DEFAULT_CHUNK_SIZE`] (4 MiB), the largest chunk the
/// reference eStargz writer, `ctr-remote` and `veil convert` use by default;
/// zstd:chunked writers cut far smaller chunks, and streamed layers use 1 MiB. It bounds
/// the memory and CPU of one chunk decode: a chunk or an inner offset beyond it would let
/// a 15 MB image cost a gigabyte and a minute of CPU per read. Veil's writers refuse to
/// write chunks larger than this, so everything Veil writes, it reads.
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;

/// The largest compressed range of one chunk accepted (32 MiB): the bytes Veil fetches and
/// holds to decode one chunk (from its offset to the next chunk's, or to the end of its
/// file's payload).
///
/// Twice [`MAX_CHUNK_SIZE`]: a member or frame holds at most that many uncompressed bytes,
/// and gzip or zstd never grow incompressible data by more than a fraction of a percent;
/// the slack covers the tar headers that may share the range. Without it, a TOC could
/// point a one-byte chunk at a range spanning the whole blob, and every read of it would
/// fetch and buffer gigabytes.
pub const MAX_COMPRESSED_CHUNK_SIZE: u64 = 2 * MAX_CHUNK_SIZE;

/// The deepest path accepted, in components (1024).
///
/// Linux resolves at most `PATH_MAX` (4096) bytes in one call, that is at most 2048
/// components; real layers stay below a hundred. Each component of an entry's path may
/// become an (implied) directory inode, so depth is bounded before anything is built.
pub const MAX_PATH_DEPTH: usize = 1024;

/// How many bytes of index memory ([`index_bytes`]) one byte of TOC JSON may cost (8).
///
/// A real TOC's model takes one to three times the JSON's size: names, digests and chunk
/// records are the same text, and the fixed-size records are about as large as the JSON
/// keys that describe them (even a bare `{"name":"a","type":"fifo"}` costs under six
/// times its length). Eight leaves room for the densest legitimate entries and refuses
/// TOCs built to amplify, such as thousands of tiny entries each carrying an xattr map.
pub const MAX_INDEX_BYTES_PER_TOC_BYTE: u64 = 8;

/// Index memory any TOC may use whatever its size (1 MiB), so that small TOCs are never
/// refused for the fixed overhead of their records.
pub const INDEX_BUDGET_FLOOR: u64 = 1 << 20;

/// How many bytes of filesystem tree memory (`veil_fusefs::tree::LayerTree::memory`) one
/// byte of the TOC model ([`index_bytes`]) may cost (8).
///
/// A tree of a TOC that lists its directories is about as large as the model (a node per
/// entry, a name per node); eight leaves room for layers whose files sit in several
/// levels of directories the TOC never lists. The model itself is bounded by the TOC's
/// size ([`MAX_INDEX_BYTES_PER_TOC_BYTE`]), so the tree is too.
pub const MAX_TREE_BYTES_PER_INDEX_BYTE: u64 = 8;

/// The values [`Limits::max_chunk_size`] may be configured to: 4 KiB to 1 GiB. Below,
/// ordinary layers become unreadable; above, one read could cost gigabytes.
pub const CHUNK_SIZE_RANGE: RangeInclusive<u64> = 4096..=(1 << 30);

/// The values [`Limits::max_compressed_chunk_size`] may be configured to: 4 KiB to 2 GiB.
pub const COMPRESSED_CHUNK_SIZE_RANGE: RangeInclusive<u64> = 4096..=(2 << 30);

/// The values [`Limits::max_path_depth`] may be configured to: 1 to 2048 components
/// (a 4096-byte `PATH_MAX` holds no more).
pub const PATH_DEPTH_RANGE: RangeInclusive<u64> = 1..=2048;

/// The values the two memory ratios ([`Limits::max_index_bytes_per_toc_byte`],
/// [`Limits::max_tree_bytes_per_index_byte`]) may be configured to: 1 to 1024.
pub const BYTES_PER_BYTE_RANGE: RangeInclusive<u64> = 1..=1024;

/// The limits in force: what one chunk, one path and one layer's index may cost.
///
/// [`Default`] is the constants of this module; a configured value replaces one of them
/// for every layer read with this value. Field names are the daemon's `[limits]` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest uncompressed chunk, and the most bytes a chunk may need inflated from
    /// its member or frame (`innerOffset + size`), in bytes ([`MAX_CHUNK_SIZE`]). Also
    /// bounds the zstd window a chunk's frame may ask for.
    pub max_chunk_size: u64,
    /// The largest compressed blob range of one chunk, in bytes
    /// ([`MAX_COMPRESSED_CHUNK_SIZE`]).
    pub max_compressed_chunk_size: u64,
    /// The deepest path (and hard-link target), in components ([`MAX_PATH_DEPTH`]).
    pub max_path_depth: usize,
    /// Bytes of TOC model memory allowed per byte of TOC JSON
    /// ([`MAX_INDEX_BYTES_PER_TOC_BYTE`]; at least [`INDEX_BUDGET_FLOOR`] in all).
    pub max_index_bytes_per_toc_byte: u64,
    /// Bytes of filesystem tree memory allowed per byte of TOC model
    /// ([`MAX_TREE_BYTES_PER_INDEX_BYTE`]).
    pub max_tree_bytes_per_index_byte: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_chunk_size: MAX_CHUNK_SIZE,
            max_compressed_chunk_size: MAX_COMPRESSED_CHUNK_SIZE,
            max_path_depth: MAX_PATH_DEPTH,
            max_index_bytes_per_toc_byte: MAX_INDEX_BYTES_PER_TOC_BYTE,
            max_tree_bytes_per_index_byte: MAX_TREE_BYTES_PER_INDEX_BYTE,
        }
    }
}

/// A [`Limits`] field set outside the range it may take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is out of range: it must be between {min} and {max}")]
pub struct LimitsError {
    /// The field (the `[limits]` config key).
    pub field: &'static str,
    /// The value given.
    pub value: u64,
    /// The smallest value accepted.
    pub min: u64,
    /// The largest value accepted.
    pub max: u64,
}

impl Limits {
    /// Checks every field against its range ([`CHUNK_SIZE_RANGE`], ...): zero would
    /// refuse every layer, a huge value would remove the bound. The first field out of
    /// range is named.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let check = |field: &'static str, value: u64, range: RangeInclusive<u64>| {
            if range.contains(&value) {
                Ok(())
            } else {
                Err(LimitsError {
                    field,
                    value,
                    min: *range.start(),
                    max: *range.end(),
                })
            }
        };
        check("max_chunk_size", self.max_chunk_size, CHUNK_SIZE_RANGE)?;
        check(
            "max_compressed_chunk_size",
            self.max_compressed_chunk_size,
            COMPRESSED_CHUNK_SIZE_RANGE,
        )?;
        check(
            "max_path_depth",
            u64::try_from(self.max_path_depth).unwrap_or(u64::MAX),
            PATH_DEPTH_RANGE,
        )?;
        check(
            "max_index_bytes_per_toc_byte",
            self.max_index_bytes_per_toc_byte,
            BYTES_PER_BYTE_RANGE,
        )?;
        check(
            "max_tree_bytes_per_index_byte",
            self.max_tree_bytes_per_index_byte,
            BYTES_PER_BYTE_RANGE,
        )
    }

    /// The index memory budget of a TOC whose JSON is `toc_size` bytes:
    /// [`Limits::max_index_bytes_per_toc_byte`] per byte, at least [`INDEX_BUDGET_FLOOR`].
    pub fn index_budget(&self, toc_size: u64) -> u64 {
        toc_size
            .saturating_mul(self.max_index_bytes_per_toc_byte)
            .max(INDEX_BUDGET_FLOOR)
    }

    /// The largest zstd window (log2) a chunk's frame may ask for: the smallest power of
    /// two that holds [`Limits::max_chunk_size`] (24, 16 MiB, by default).
    pub fn zstd_window_log(&self) -> u32 {
        u64::BITS - self.max_chunk_size.saturating_sub(1).leading_zeros()
    }
}

/// The daemon's `[limits]` config key of the limit whose constant is named `limit`
/// (`MAX_CHUNK_SIZE` -> `max_chunk_size`), as errors name it; `"?"` for another name.
pub fn config_key(limit: &str) -> &'static str {
    match limit {
        "MAX_CHUNK_SIZE" => "max_chunk_size",
        "MAX_COMPRESSED_CHUNK_SIZE" => "max_compressed_chunk_size",
        "MAX_PATH_DEPTH" => "max_path_depth",
        "MAX_INDEX_BYTES_PER_TOC_BYTE" => "max_index_bytes_per_toc_byte",
        "MAX_TREE_BYTES_PER_INDEX_BYTE" => "max_tree_bytes_per_index_byte",
        _ => "?",
    }
}

/// How many components `path` has (`a/b/c`: 3; empty parts and `.` do not count).
pub fn path_depth(path: &str) -> usize {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .count()
}

/// Estimated memory of one entry of the model: its record, its strings, its xattrs and
/// its chunks (records and digests). An estimate, not an allocator's count: it counts
/// what the entry holds, not the allocator's rounding.
pub fn index_bytes(entry: &Entry) -> u64 {
    /// Entries in one node of a `BTreeMap`, and what a node of the xattr map takes:
    /// room for that many keys and values, whether used or not, and its header.
    const MAP_NODE_ENTRIES: usize = 11;
    const MAP_NODE: usize =
        MAP_NODE_ENTRIES * (std::mem::size_of::<String>() + std::mem::size_of::<Vec<u8>>()) + 16;
    let xattrs = entry.xattrs.len().div_ceil(MAP_NODE_ENTRIES) * MAP_NODE
        + entry
            .xattrs
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    let chunks: usize = entry.chunks.iter().map(chunk_bytes).sum();
    (std::mem::size_of::<Entry>()
        + entry.name.len()
        + entry.link_name.len()
        + entry.digest.as_ref().map_or(0, String::len)
        + xattrs
        + chunks) as u64
}

/// Estimated memory of one chunk: its record and its digest text.
pub fn chunk_bytes(chunk: &Chunk) -> usize {
    std::mem::size_of::<Chunk>() + chunk.digest.len()
}

/// `name` cut to at most 200 bytes (on a character boundary) with the total length noted,
/// for error messages about entries whose names are themselves the attack.
pub fn shorten(name: &str) -> String {
    const KEEP: usize = 200;
    if name.len() <= KEEP {
        return name.to_owned();
    }
    let mut end = KEEP;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &name[..end], name.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toc::EntryKind;

    #[test]
    fn every_limit_names_its_config_key() {
        assert_eq!(config_key("MAX_CHUNK_SIZE"), "max_chunk_size");
        assert_eq!(config_key("MAX_PATH_DEPTH"), "max_path_depth");
        assert_eq!(config_key("MAX_NOTHING"), "?");
    }

    #[test]
    fn depth_counts_real_components() {
        assert_eq!(path_depth(""), 0);
        assert_eq!(path_depth("./"), 0);
        assert_eq!(path_depth("a"), 1);
        assert_eq!(path_depth("/a//./b/c/"), 3);
    }

    #[test]
    fn budget_has_a_floor_and_grows_with_the_toc() {
        let limits = Limits::default();
        assert_eq!(limits.index_budget(0), INDEX_BUDGET_FLOOR);
        assert_eq!(
            limits.index_budget(1 << 30),
            (1 << 30) * MAX_INDEX_BYTES_PER_TOC_BYTE
        );
        assert_eq!(limits.index_budget(u64::MAX), u64::MAX);
        let tight = Limits {
            max_index_bytes_per_toc_byte: 2,
            ..limits
        };
        assert_eq!(tight.index_budget(1 << 30), 2 << 30);
    }

    #[test]
    fn defaults_are_valid_and_zero_or_huge_is_not() {
        let limits = Limits::default();
        assert_eq!(limits.validate(), Ok(()));
        assert_eq!(limits.zstd_window_log(), 24);
        let zero = Limits {
            max_path_depth: 0,
            ..limits
        };
        let err = zero.validate().unwrap_err();
        assert_eq!((err.field, err.value), ("max_path_depth", 0));
        assert!(err.to_string().contains("max_path_depth = 0"), "{err}");
        let huge = Limits {
            max_chunk_size: u64::MAX,
            ..limits
        };
        assert_eq!(huge.validate().unwrap_err().field, "max_chunk_size");
        let ratio = Limits {
            max_tree_bytes_per_index_byte: 0,
            ..limits
        };
        assert_eq!(
            ratio.validate().unwrap_err().field,
            "max_tree_bytes_per_index_byte"
        );
    }

    #[test]
    fn entry_estimate_counts_strings_and_chunks() {
        let mut e = Entry::new("abc", EntryKind::Reg);
        let bare = index_bytes(&e);
        assert_eq!(bare, (std::mem::size_of::<Entry>() + 3) as u64);
        e.xattrs.insert("user.k".into(), vec![1, 2]);
        assert!(index_bytes(&e) >= bare + 11 * 48);
    }

    #[test]
    fn shorten_keeps_short_names_and_cuts_long_ones() {
        assert_eq!(shorten("a/b"), "a/b");
        let long = "é/".repeat(1000);
        let s = shorten(&long);
        assert!(s.len() < 240 && s.ends_with("(3000 bytes)"), "{s}");
    }
}
