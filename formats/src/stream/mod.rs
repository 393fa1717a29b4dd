//! Streamed layers: tar, tar+gzip and tar+zstd layers that cannot be read lazily,
//! indexed while they are read whole once, then served by random access.
//!
//! A layer without a seekable, authenticated index (a plain `tar.gz` image, an
//! encrypted layer without a sealed TOC digest when one is required) can only be
//! trusted once it has been read from end to end: for ocicrypt layers the HMAC covers the
//! whole blob. [`index_stream`] is that one pass. It decompresses the blob as it is read
//! ([`gzip_index`], [`zstd_index`], or nothing for a plain tar), records restart points
//! in the decompressed stream, and walks the tar stream ([`tar_index`]) into a
//! [`LayerToc`] of [`Format::Streamed`]: each regular file cut into chunks whose
//! "blob" range is their range in the uncompressed tar stream
//! ([`Compression::None`](crate::toc::Compression::None)) and whose digest is the SHA-256
//! of the bytes that streamed past. The caller decides when the pass counts (after the
//! HMAC check, for encrypted layers) and only then serves the layer.
//!
//! Serving uses the ordinary chunk pipeline and FUSE filesystem over a
//! [`StreamedSource`]: the uncompressed tar stream as a [`veil_blob::BlobSource`],
//! produced by decompressing from the nearest restart point into memory only. Every
//! chunk is checked against its recorded digest before it is served, so bytes that
//! change on disk or on the wire after the pass are never served.
//!
//! Restart points: any offset for a plain tar; for gzip about every
//! [`DEFAULT_SPACING`] (4 MiB) of output, each holding a 32 KiB window and the inflater
//! state (about 1 % of the uncompressed size in memory); for zstd at frame starts at
//! least that far apart (a single-frame layer restarts only at its start).
//!
//! This module knows nothing of registries, keys or containerd: it reads bytes through
//! [`std::io::Read`] (the pass) and [`veil_blob::BlobSource`] (serving).

pub mod gzip_index;
mod input;
pub mod reader;
pub mod tar_index;
pub mod zstd_index;

use std::io::{self, Read};

pub use reader::StreamedSource;

use crate::limits::{path_depth, shorten, Limits};
use crate::tar_index::TarIndexError;
use crate::toc::{EntryKind, Format, LayerToc};

/// Default distance between restart points, in bytes of decompressed output.
pub const DEFAULT_SPACING: u64 = 4 << 20;

/// Default chunk size of streamed layers: the unit of verification and caching.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// How a streamed layer's blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCompression {
    /// An uncompressed tar stream.
    None,
    /// gzip (one member or several).
    Gzip,
    /// zstd (one frame or several).
    Zstd,
}

impl StreamCompression {
    /// The compression of an OCI or Docker layer media type (without `+encrypted`), or
    /// `None` if it is not a tar layer type.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let mt = media_type;
        if mt.ends_with("tar+gzip") || mt.ends_with("tar.gzip") {
            Some(Self::Gzip)
        } else if mt.ends_with("tar+zstd") || mt.ends_with("tar.zstd") {
            Some(Self::Zstd)
        } else if mt.ends_with(".tar") || mt.ends_with("rootfs.diff.tar") {
            Some(Self::None)
        } else {
            None
        }
    }

    /// A short name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "tar",
            Self::Gzip => "tar+gzip",
            Self::Zstd => "tar+zstd",
        }
    }
}

/// Where decompression can start again, by compression.
#[derive(Debug, Clone)]
pub enum RestartPoints {
    /// Uncompressed: every offset.
    Plain,
    /// gzip restart points, in stream order.
    Gzip(Vec<gzip_index::GzipPoint>),
    /// zstd frame starts, in stream order.
    Zstd(Vec<zstd_index::ZstdPoint>),
}

/// What serving a streamed layer needs besides its TOC.
#[derive(Debug, Clone)]
pub struct StreamIndex {
    /// How the blob is compressed.
    pub compression: StreamCompression,
    /// Its restart points.
    pub points: RestartPoints,
    /// Size of the uncompressed tar stream (the blob it decompresses to, padding and
    /// trailing data included).
    pub size: u64,
}

impl StreamIndex {
    /// How many restart points there are (0 for a plain tar: it needs none).
    pub fn restart_points(&self) -> usize {
        match &self.points {
            RestartPoints::Plain => 0,
            RestartPoints::Gzip(p) => p.len(),
            RestartPoints::Zstd(p) => p.len(),
        }
    }

    /// Bytes of memory the restart points hold.
    pub fn memory(&self) -> usize {
        match &self.points {
            RestartPoints::Plain => 0,
            RestartPoints::Gzip(p) => p.iter().map(gzip_index::GzipPoint::memory).sum(),
            RestartPoints::Zstd(p) => std::mem::size_of_val(p.as_slice()),
        }
    }
}

/// Tuning of [`index_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    /// Decompressed bytes between restart points.
    pub spacing: u64,
    /// Chunk size (at most `limits.max_chunk_size` is used, so that every chunk
    /// decodes under the same limits).
    pub chunk_size: u64,
    /// Drop eStargz bookkeeping entries (TOC, landmarks): set when the layer is an
    /// eStargz layer streamed as a plain tar.gz.
    pub drop_estargz_bookkeeping: bool,
    /// The limits in force: every entry's path depth is checked against
    /// [`Limits::max_path_depth`], and chunks are cut no larger than
    /// [`Limits::max_chunk_size`].
    pub limits: Limits,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            spacing: DEFAULT_SPACING,
            chunk_size: DEFAULT_CHUNK_SIZE,
            drop_estargz_bookkeeping: false,
            limits: Limits::default(),
        }
    }
}

/// Why a layer stream could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream did not decompress (corrupt, truncated) or could not be read.
    #[error("decompressing the layer failed: {0}")]
    Decompress(#[source] io::Error),
    /// The decompressed stream is not a tar archive a layer may be.
    #[error("the layer's tar stream is bad: {0}")]
    Tar(#[from] TarIndexError),
    /// An entry is over one of the limits ([`IndexOptions::limits`]).
    #[error(
        "entry {name:?} is over the {limit} limit ([limits] {}): {reason}",
        crate::limits::config_key(.limit)
    )]
    Limit {
        /// The entry's name (shortened when long).
        name: String,
        /// The limit's constant name (`MAX_PATH_DEPTH`).
        limit: &'static str,
        /// What exceeds it, and by how much.
        reason: String,
    },
}

/// A streamed layer's index: its TOC and restart points.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// Entries and chunks ([`Format::Streamed`]; `blob_size` is the uncompressed size).
    pub toc: LayerToc,
    /// Restart points.
    pub index: StreamIndex,
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Walks the decompressed stream `plain`, then reads it to its end; returns the
/// entries and the stream's size.
fn walk<R: Read>(
    plain: R,
    options: &IndexOptions,
) -> Result<(Vec<crate::toc::Entry>, u64), StreamError> {
    let mut counting = Counting {
        inner: plain,
        count: 0,
    };
    let skip: &[&str] = if options.drop_estargz_bookkeeping {
        tar_index::ESTARGZ_BOOKKEEPING
    } else {
        &[]
    };
    let chunk_size = options.chunk_size.min(options.limits.max_chunk_size);
    let entries = tar_index::index_entries(&mut counting, chunk_size, skip)?;
    let max_depth = options.limits.max_path_depth;
    for entry in &entries {
        let target = (entry.kind == EntryKind::Hardlink).then_some(entry.link_name.as_str());
        let paths = [
            ("the path", Some(entry.name.as_str())),
            ("the hard link's target", target),
        ];
        for (what, path) in paths {
            let depth = path.map_or(0, path_depth);
            if depth > max_depth {
                return Err(StreamError::Limit {
                    name: shorten(&entry.name),
                    limit: "MAX_PATH_DEPTH",
                    reason: format!("{what} is {depth} components deep, more than {max_depth}"),
                });
            }
        }
    }
    io::copy(&mut counting, &mut io::sink()).map_err(StreamError::Decompress)?;
    Ok((entries, counting.count))
}

/// Indexes the layer blob read from `compressed` (from its start; see the module
/// documentation). Reads the blob to its end; what follows the compressed data (if
/// anything) is left for the caller to read.
pub fn index_stream<R: Read>(
    compression: StreamCompression,
    compressed: R,
    options: &IndexOptions,
) -> Result<Indexed, StreamError> {
    let (entries, size, points) = match compression {
        StreamCompression::None => {
            let (entries, size) = walk(compressed, options)?;
            (entries, size, RestartPoints::Plain)
        }
        StreamCompression::Gzip => {
            let mut decoder = gzip_index::GzipDecoder::indexing(compressed, options.spacing);
            let (entries, size) = walk(&mut decoder, options)?;
            (entries, size, RestartPoints::Gzip(decoder.into_points()))
        }
        StreamCompression::Zstd => {
            let mut decoder = zstd_index::ZstdIndexer::new(compressed, options.spacing)
                .map_err(StreamError::Decompress)?;
            let (entries, size) = walk(&mut decoder, options)?;
            (entries, size, RestartPoints::Zstd(decoder.into_points()))
        }
    };
    Ok(Indexed {
        toc: LayerToc {
            format: Format::Streamed,
            entries,
            prefetch_end: None,
            blob_size: size,
        },
        index: StreamIndex {
            compression,
            points,
            size,
        },
    })
}

#[cfg(test)]
mod tests;
