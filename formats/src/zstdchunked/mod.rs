//! zstd:chunked: a tar.zst whose files are split into independently decompressible zstd
//! frames, indexed by a TOC kept in zstd skippable frames at the end of the blob.
//!
//! Layout (PROTOCOLS.md 6.2, containers/storage): zstd frames holding tar headers and
//! payloads (each payload chunk its own frame); a skippable frame holding the
//! zstd-compressed TOC JSON; a skippable frame holding the compressed tar-split stream; a
//! skippable frame holding a 64-byte footer ending in `GNUlInUx`. The layer descriptor
//! carries `io.github.containers.zstd-chunked.manifest-checksum` (sha256 of the
//! COMPRESSED TOC) and `...manifest-position` (`offset:compressedLen:uncompressedLen:1`).
//!
//! The legacy variant written by stargz-snapshotter (and old containers/storage) is also
//! read and can be written: annotation keys without `github.`, a 40-byte footer ending in
//! `GnUlInUx`, no tar-split, eStargz-style TOC entries.
//!
//! - [`read_toc`] reads and authenticates the TOC, from the annotations when the caller
//!   has them ([`ManifestInfo`]) or else from the footer.
//! - [`build`] converts a tar stream into a blob and returns the annotations to put on
//!   the layer descriptor.

mod annotations;
mod footer;
mod reader;
mod tarsplit;
mod writer;

pub use annotations::{ManifestInfo, ManifestPosition};
pub use footer::{FOOTER_SIZE, LEGACY_FOOTER_SIZE, SKIPPABLE_HEADER};
pub use reader::{read_toc, read_toc_with_limits, read_toc_with_tail};
pub use writer::{build, build_to_vec, Variant, ZstdBuildOptions, ZstdBuildOutput};

/// Annotation: `sha256:` of the compressed TOC (current containers/storage).
pub const MANIFEST_CHECKSUM_ANNOTATION: &str =
    "io.github.containers.zstd-chunked.manifest-checksum";
/// Annotation: `offset:compressedLen:uncompressedLen:type` of the TOC (current).
pub const MANIFEST_POSITION_ANNOTATION: &str =
    "io.github.containers.zstd-chunked.manifest-position";
/// Annotation: `offset:compressedLen:uncompressedLen` of the tar-split data (current).
pub const TARSPLIT_POSITION_ANNOTATION: &str =
    "io.github.containers.zstd-chunked.tarsplit-position";
/// Annotation: `sha256:` of the compressed TOC (legacy).
pub const LEGACY_MANIFEST_CHECKSUM_ANNOTATION: &str =
    "io.containers.zstd-chunked.manifest-checksum";
/// Annotation: TOC position (legacy).
pub const LEGACY_MANIFEST_POSITION_ANNOTATION: &str =
    "io.containers.zstd-chunked.manifest-position";

/// The only manifest type defined: a CRFS-style JSON TOC.
pub const MANIFEST_TYPE_CRFS: u64 = 1;
