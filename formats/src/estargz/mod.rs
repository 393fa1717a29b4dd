//! eStargz: a tar.gz whose files are split into independently decompressible gzip
//! members, indexed by a table of contents (TOC) stored near the end of the blob.
//!
//! Layout (PROTOCOLS.md 6.1): gzip members holding tar headers and file payloads (each
//! payload chunk starts a new member), then a gzip member holding a tar with the single
//! file `stargz.index.json` (the TOC), then a 51-byte footer (an empty gzip member whose
//! extra field records the TOC member's offset). The whole blob is still a valid tar.gz.
//!
//! - [`read_toc`] fetches the footer and the TOC through a [`veil_blob::BlobSource`],
//!   authenticates it against the expected TOC digest and returns a
//!   [`crate::toc::LayerToc`].
//! - [`build`] converts a tar stream into an eStargz blob, deterministically.
//!
//! The JSON model, its normalization and the chunked-layout writer core also serve the
//! zstd:chunked module, whose TOC descends from eStargz's.

mod error;
pub(crate) mod footer;
pub(crate) mod layout;
pub(crate) mod reader;
pub(crate) mod toc_json;
pub(crate) mod writer;

pub use error::{BuildError, FormatError};
pub use footer::{footer_bytes, parse_footer, FOOTER_SIZE, LEGACY_FOOTER_SIZE};
pub use reader::{read_toc, read_toc_with_limits, read_toc_with_tail};
pub use writer::{build, build_to_vec, BuildOptions, BuildOutput};

/// Name of the tar entry inside the TOC member that holds the TOC JSON.
pub const TOC_TAR_NAME: &str = "stargz.index.json";

/// Descriptor annotation carrying the TOC digest (forwarded to snapshotters as a label).
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

/// Descriptor annotation carrying the uncompressed size (used by containers/storage).
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// Landmark file marking the end of the prioritized (prefetch) files.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";

/// Landmark file saying the layer has no prioritized files.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";

/// The one-byte content of a landmark file.
pub const LANDMARK_CONTENTS: u8 = 0x0f;

/// The largest uncompressed TOC JSON accepted (64 MiB).
pub const MAX_TOC_SIZE: u64 = 64 << 20;

/// Bytes read from a layer's end in the first request for its TOC (`[lazy]
/// toc_tail_bytes`): the footer and, when the TOC fits, the TOC too, so that one round
/// trip finds both; a bigger TOC costs one more request for its front part only. Small
/// against a round trip's worth of bandwidth (128 KiB: 5 ms at 200 Mbit/s).
pub const DEFAULT_TOC_TAIL_BYTES: u64 = 128 << 10;
/// The most `[lazy] toc_tail_bytes` may ask for (what one speculative read may hold in
/// memory).
pub const MAX_TOC_TAIL_BYTES: u64 = 16 << 20;

/// The default size of a payload chunk (4 MiB), as in the reference implementation.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
