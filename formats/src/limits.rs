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
//! [`index_bytes`] estimates the memory of the format-neutral model; the filesystem tree
//! built on top of it has its own budget, proportional to this estimate (`veil-fusefs`).

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

/// The index memory budget of a TOC whose JSON is `toc_size` bytes:
/// [`MAX_INDEX_BYTES_PER_TOC_BYTE`] per byte, at least [`INDEX_BUDGET_FLOOR`].
pub fn index_budget(toc_size: u64) -> u64 {
    toc_size
        .saturating_mul(MAX_INDEX_BYTES_PER_TOC_BYTE)
        .max(INDEX_BUDGET_FLOOR)
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
    fn depth_counts_real_components() {
        assert_eq!(path_depth(""), 0);
        assert_eq!(path_depth("./"), 0);
        assert_eq!(path_depth("a"), 1);
        assert_eq!(path_depth("/a//./b/c/"), 3);
    }

    #[test]
    fn budget_has_a_floor_and_grows_with_the_toc() {
        assert_eq!(index_budget(0), INDEX_BUDGET_FLOOR);
        assert_eq!(
            index_budget(1 << 30),
            (1 << 30) * MAX_INDEX_BYTES_PER_TOC_BYTE
        );
        assert_eq!(index_budget(u64::MAX), u64::MAX);
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
