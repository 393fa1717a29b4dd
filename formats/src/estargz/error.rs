//! Errors of the layer format readers and writers (eStargz and zstd:chunked).

use std::io;

use crate::tar_index::TarIndexError;

/// Why a layer's TOC could not be read, authenticated or understood.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Fetching bytes from the blob failed.
    #[error("reading the {what} (blob bytes {start}..{end}) failed: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// First byte.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
        /// The source's error.
        #[source]
        source: io::Error,
    },
    /// The source returned a different number of bytes than asked for.
    #[error("reading the {what}: asked for {expected} bytes, got {actual}")]
    ShortRead {
        /// What was being read.
        what: &'static str,
        /// How many were asked for.
        expected: u64,
        /// How many came.
        actual: u64,
    },
    /// The blob is too small to hold a footer.
    #[error("blob is {size} bytes, too small for a {format} footer of {needed} bytes")]
    TooSmall {
        /// The blob size.
        size: u64,
        /// The smallest footer.
        needed: u64,
        /// The format looked for.
        format: &'static str,
    },
    /// The footer is not one this format defines.
    #[error("bad {format} footer: {reason}")]
    BadFooter {
        /// The format looked for.
        format: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The footer or annotations place the TOC outside the blob.
    #[error(
        "TOC at blob offset {offset} with length {len} does not fit in the {blob_size}-byte blob"
    )]
    TocOutOfRange {
        /// Claimed TOC offset.
        offset: u64,
        /// Claimed TOC length.
        len: u64,
        /// The blob size.
        blob_size: u64,
    },
    /// The TOC is larger than the limit.
    #[error("TOC is {size} bytes, more than the {max}-byte limit")]
    TocTooLarge {
        /// Its (claimed or actual) size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The compressed TOC could not be decompressed.
    #[error("TOC is corrupt or truncated: {0}")]
    TocCorrupt(#[source] io::Error),
    /// The TOC member's tar does not start with the TOC file.
    #[error("TOC tar entry is named {found:?}, expected \"stargz.index.json\"")]
    TocTarName {
        /// The name found.
        found: String,
    },
    /// The TOC does not have the expected digest.
    #[error("TOC digest mismatch: expected {expected}, TOC has {actual}")]
    TocDigestMismatch {
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// The expected digest passed in is not a sha256 digest.
    #[error("expected TOC digest {0:?} is not of the form sha256:<64 hex digits>")]
    BadExpectedDigest(String),
    /// The TOC is not valid JSON of the expected shape.
    #[error("TOC JSON is invalid: {0}")]
    TocJson(#[from] serde_json::Error),
    /// The TOC declares a version this reader does not know.
    #[error("TOC version {0} is not supported (only 1)")]
    UnsupportedVersion(i64),
    /// One TOC entry is inconsistent.
    #[error("TOC entry {index} ({name:?}): {reason}")]
    BadEntry {
        /// Its position in the TOC.
        index: usize,
        /// Its name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// One TOC entry exceeds a limit of [`crate::limits`]: the TOC is authentic, but
    /// serving it would cost more memory or CPU than any layer may.
    #[error(
        "TOC entry {index} ({name:?}) exceeds the {limit} limit ([limits] {}): {reason}",
        crate::limits::config_key(.limit)
    )]
    Limit {
        /// Its position in the TOC.
        index: usize,
        /// Its name (shortened when long).
        name: String,
        /// Which limit: the name of its constant in [`crate::limits`].
        limit: &'static str,
        /// What the entry claims, against the limit's value.
        reason: String,
    },
    /// A descriptor annotation has an unusable value.
    #[error("annotation {name} = {value:?} is invalid: {reason}")]
    BadAnnotation {
        /// The annotation's key.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Why a layer blob could not be built from a tar stream.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The input is not a tar archive the writer accepts.
    #[error(transparent)]
    Tar(#[from] TarIndexError),
    /// Reading the input or writing the output failed.
    #[error("{what} failed: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A prioritized path is not in the tar stream.
    #[error("prioritized file {0:?} is not in the tar stream")]
    PrioritizedNotFound(String),
    /// The chunk size is zero or too large.
    #[error("chunk size {size} is invalid: it must be between 1 and {max} bytes")]
    BadChunkSize {
        /// The chunk size asked for.
        size: u64,
        /// The largest accepted.
        max: u64,
    },
    /// The TOC JSON could not be serialized.
    #[error("serializing the TOC failed: {0}")]
    TocJson(#[from] serde_json::Error),
}

impl BuildError {
    /// An I/O error while doing `what`.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> BuildError {
        move |source| BuildError::Io { what, source }
    }
}
