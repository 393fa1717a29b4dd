//! The format-neutral index of a lazily readable layer.
//!
//! eStargz and zstd:chunked each have their own table of contents (TOC); their readers
//! turn it into a [`LayerToc`]: every tar entry with its metadata and, for regular files,
//! the chunks that hold its bytes, each with where it lies in the (compressed) blob and
//! the digest its uncompressed bytes must have. Everything downstream (the filesystem
//! tree, the chunk pipeline, FUSE) works on this model only.

use std::collections::BTreeMap;

/// Which layer format a TOC came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// eStargz: gzip members, TOC in a gzip member before a 51-byte footer.
    Estargz,
    /// zstd:chunked: zstd frames, TOC in a skippable frame before a footer.
    ZstdChunked,
    /// A tar stream (plain, gzip or zstd) indexed while it was read whole
    /// ([`crate::stream`]): chunk offsets are offsets in the uncompressed tar stream.
    Streamed,
}

/// How a chunk's bytes are compressed in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A gzip member (eStargz).
    Gzip,
    /// A zstd frame (zstd:chunked).
    Zstd,
    /// Not compressed: the chunk's blob bytes are its plaintext (the uncompressed tar
    /// stream of a streamed layer, [`crate::stream`]).
    None,
}

/// The kind of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Directory.
    Dir,
    /// Regular file.
    Reg,
    /// Symbolic link (target in `link_name`).
    Symlink,
    /// Hard link to the entry named `link_name`.
    Hardlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// One piece of a regular file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk starts in the file.
    pub file_offset: u64,
    /// Its length, uncompressed.
    pub size: u64,
    /// Where the compressed member or frame holding it starts in the blob.
    pub blob_offset: u64,
    /// Where that member or frame ends in the blob (exclusive).
    pub blob_end: u64,
    /// Offset of the chunk inside the decompressed member (eStargz `innerOffset`).
    pub inner_offset: u64,
    /// `sha256:<hex>` of the chunk's uncompressed bytes.
    pub digest: String,
    /// How the member or frame is compressed.
    pub compression: Compression,
}

/// One tar entry of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the layer, relative, without a leading `./` or `/` or a trailing `/`.
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes (regular files).
    pub size: u64,
    /// Permission bits, including setuid, setgid and sticky (not the file type).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Symlink target or hard-link target path.
    pub link_name: String,
    /// Device major number (char and block devices).
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// `sha256:<hex>` of the whole file, when the format records it.
    pub digest: Option<String>,
    /// The file's chunks in file order, covering `0..size` without gaps (regular files).
    pub chunks: Vec<Chunk>,
}

impl Entry {
    /// An entry of `kind` named `name` with everything else zero or empty.
    pub fn new(name: impl Into<String>, kind: EntryKind) -> Self {
        Self {
            name: name.into(),
            kind,
            size: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            link_name: String::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: BTreeMap::new(),
            digest: None,
            chunks: Vec::new(),
        }
    }
}

/// A layer's index, as its TOC describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerToc {
    /// The format it was read from.
    pub format: Format,
    /// Entries in the order the TOC lists them.
    pub entries: Vec<Entry>,
    /// Blob offset where the prioritized files end (`.prefetch.landmark`), if marked.
    pub prefetch_end: Option<u64>,
    /// Total blob size.
    pub blob_size: u64,
}
