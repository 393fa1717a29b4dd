//! Building a zstd:chunked blob from a tar stream.
//!
//! Deterministic like the eStargz writer. Tar headers are copied as they are; each
//! payload chunk is its own zstd frame, closed right after it; the stream ends with the
//! tar end-of-archive marker. Then the skippable frames: TOC, tar-split (current variant
//! only) and footer.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, Write};

use super::footer::{footer_bytes, skippable_frame, Footer, SKIPPABLE_HEADER};
use super::tarsplit::TarSplit;
use super::{
    ManifestPosition, LEGACY_MANIFEST_CHECKSUM_ANNOTATION, LEGACY_MANIFEST_POSITION_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION, MANIFEST_POSITION_ANNOTATION, MANIFEST_TYPE_CRFS,
    TARSPLIT_POSITION_ANNOTATION,
};
use crate::codec::{sha256_digest, MAX_CHUNK_SIZE};
use crate::estargz::layout::{
    landmark, lay_out, plan, MemberWriter, NoObserver, StreamObserver, Written,
};
use crate::estargz::toc_json::{JsonEntry, JsonToc};
use crate::estargz::writer::{estargz_toc_entries, meta_entry, to_tab_indented_json};
use crate::estargz::{
    BuildError, DEFAULT_CHUNK_SIZE, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME,
};
use crate::tar_index::index_tar;
use crate::toc::Compression;

/// Which zstd:chunked layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// containers/storage today: 64-byte footer, tar-split, `io.github.containers.` keys.
    #[default]
    Current,
    /// stargz-snapshotter's: 40-byte footer, no tar-split, `io.containers.` keys,
    /// eStargz-style TOC with landmarks (readable by `estargz.Open`).
    Legacy,
}

/// How to build a zstd:chunked blob.
#[derive(Debug, Clone)]
pub struct ZstdBuildOptions {
    /// Largest payload chunk, in bytes (default 4 MiB).
    pub chunk_size: u64,
    /// zstd level (default 3).
    pub level: Option<i32>,
    /// Paths to place first (with parents), followed by `.prefetch.landmark`.
    pub prioritized_files: Vec<String>,
    /// Layout variant.
    pub variant: Variant,
}

impl Default for ZstdBuildOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: None,
            prioritized_files: Vec::new(),
            variant: Variant::Current,
        }
    }
}

/// What a zstd:chunked build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZstdBuildOutput {
    /// Annotations to put on the layer descriptor (position and checksum).
    pub annotations: BTreeMap<String, String>,
    /// `sha256:` of the compressed TOC (manifest-checksum).
    pub manifest_checksum: String,
    /// `sha256:` of the uncompressed TOC JSON.
    pub toc_digest: String,
    /// Where the TOC is.
    pub position: ManifestPosition,
    /// `sha256:` of the uncompressed stream (the layer's diff ID).
    pub diff_id: String,
    /// Length of the uncompressed stream.
    pub uncompressed_size: u64,
    /// `sha256:` of the blob.
    pub blob_digest: String,
    /// Length of the blob.
    pub blob_size: u64,
}

/// Convert the tar stream `tar` into a zstd:chunked blob written to `out`.
///
/// `tar` is an uncompressed tar archive, read twice (hence `Seek`).
/// Landmark entries in the input are dropped; later duplicates replace earlier entries.
/// The current variant adds a `.prefetch.landmark` only when files are prioritized; the
/// legacy one always adds a landmark, as stargz-snapshotter does.
pub fn build<R: Read + Seek, W: Write>(
    mut tar: R,
    out: W,
    opts: &ZstdBuildOptions,
) -> Result<ZstdBuildOutput, BuildError> {
    if opts.chunk_size == 0 || opts.chunk_size > MAX_CHUNK_SIZE {
        return Err(BuildError::BadChunkSize {
            size: opts.chunk_size,
            max: MAX_CHUNK_SIZE,
        });
    }
    let level = opts.level.unwrap_or(3);
    let legacy = opts.variant == Variant::Legacy;
    let entries = index_tar(&mut tar)?;
    let landmark_entry = if !opts.prioritized_files.is_empty() {
        Some(landmark(PREFETCH_LANDMARK))
    } else if legacy {
        Some(landmark(NO_PREFETCH_LANDMARK))
    } else {
        None
    };
    let mut skip = vec![PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK];
    if legacy {
        skip.push(TOC_TAR_NAME);
    }
    let planned = plan(entries, &skip, &opts.prioritized_files, landmark_entry)?;

    let io_err = BuildError::io("writing the blob");
    let mut mw = MemberWriter::new(out, Compression::Zstd, level);
    let mut tar_split = TarSplit::new();
    let mut no_observer = NoObserver;
    let observer: &mut dyn StreamObserver = if legacy {
        &mut no_observer
    } else {
        &mut tar_split
    };
    let written = lay_out(&mut tar, planned, &mut mw, opts.chunk_size, observer)?;
    let end_of_archive = [0u8; 1024];
    observer.segment(&end_of_archive);
    mw.write_plain(&end_of_archive)
        .map_err(BuildError::io("writing the blob"))?;
    mw.close_member()
        .map_err(BuildError::io("writing the blob"))?;

    let toc = JsonToc {
        version: 1,
        entries: Some(if legacy {
            estargz_toc_entries(&written)
        } else {
            current_toc_entries(&written)
        }),
        tar_split_digest: String::new(),
    };
    let (tar_split_data, tar_split_len) = if legacy {
        (Vec::new(), 0)
    } else {
        tar_split
            .finish_compressed(level)
            .map_err(BuildError::io("compressing tar-split"))?
    };
    let toc = JsonToc {
        tar_split_digest: if legacy {
            String::new()
        } else {
            sha256_digest(&tar_split_data)
        },
        ..toc
    };
    let json = if legacy {
        to_tab_indented_json(&toc)?
    } else {
        serde_json::to_vec(&toc)?
    };
    let compressed = zstd::stream::encode_all(&json[..], level)
        .map_err(BuildError::io("compressing the TOC"))?;

    let toc_offset = mw.position() + SKIPPABLE_HEADER;
    mw.write_raw(&skippable_frame(&compressed))
        .map_err(io_err)?;
    let mut tar_split_pos = [0u64; 3];
    if !legacy {
        tar_split_pos = [
            mw.position() + SKIPPABLE_HEADER,
            tar_split_data.len() as u64,
            tar_split_len,
        ];
        mw.write_raw(&skippable_frame(&tar_split_data))
            .map_err(BuildError::io("writing the blob"))?;
    }
    let footer = Footer {
        offset: toc_offset,
        compressed_len: compressed.len() as u64,
        uncompressed_len: json.len() as u64,
        manifest_type: MANIFEST_TYPE_CRFS,
        tar_split: tar_split_pos,
        legacy,
    };
    mw.write_raw(&skippable_frame(&footer_bytes(&footer)))
        .map_err(BuildError::io("writing the blob"))?;
    let (_, totals) = mw.finish().map_err(BuildError::io("writing the blob"))?;

    let position = ManifestPosition {
        offset: toc_offset,
        compressed_len: compressed.len() as u64,
        uncompressed_len: json.len() as u64,
        manifest_type: MANIFEST_TYPE_CRFS,
    };
    let manifest_checksum = sha256_digest(&compressed);
    let mut annotations = BTreeMap::new();
    let (pos_key, sum_key) = if legacy {
        (
            LEGACY_MANIFEST_POSITION_ANNOTATION,
            LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
        )
    } else {
        (MANIFEST_POSITION_ANNOTATION, MANIFEST_CHECKSUM_ANNOTATION)
    };
    annotations.insert(pos_key.to_owned(), position.to_string());
    annotations.insert(sum_key.to_owned(), manifest_checksum.clone());
    if !legacy {
        annotations.insert(
            TARSPLIT_POSITION_ANNOTATION.to_owned(),
            format!(
                "{}:{}:{}",
                tar_split_pos[0], tar_split_pos[1], tar_split_pos[2]
            ),
        );
    }
    Ok(ZstdBuildOutput {
        annotations,
        manifest_checksum,
        toc_digest: sha256_digest(&json),
        position,
        diff_id: totals.diff_id,
        uncompressed_size: totals.uncompressed_size,
        blob_digest: totals.blob_digest,
        blob_size: totals.blob_size,
    })
}

/// [`build`] into memory.
pub fn build_to_vec<R: Read + Seek>(
    tar: R,
    opts: &ZstdBuildOptions,
) -> Result<(Vec<u8>, ZstdBuildOutput), BuildError> {
    let mut blob = Vec::new();
    let output = build(tar, Cursor::new(&mut blob), opts)?;
    Ok((blob, output))
}

/// containers/storage-style entries: the `reg` entry carries the first chunk and the
/// end of the file's last frame (`endOffset`); `chunk` entries follow.
fn current_toc_entries(written: &[Written]) -> Vec<JsonEntry> {
    let mut out = Vec::new();
    for w in written {
        let mut e = meta_entry(w, false);
        if let Some(first) = w.chunks.first() {
            e.offset = first.offset as i64;
            e.end_offset = w.end_offset as i64;
            e.chunk_size = first.size as i64;
            e.chunk_digest = first.digest.clone();
        }
        out.push(e);
        for c in w.chunks.iter().skip(1) {
            out.push(JsonEntry {
                name: w.planned.raw_name.clone(),
                kind: "chunk".to_owned(),
                offset: c.offset as i64,
                chunk_offset: c.chunk_offset as i64,
                chunk_size: c.size as i64,
                chunk_digest: c.digest.clone(),
                ..JsonEntry::default()
            });
        }
    }
    out
}
