//! Building an eStargz blob from a tar stream.
//!
//! The output is deterministic: the same tar and options give the same bytes. Tar
//! headers are copied from the input as they are; each regular file's payload is split
//! into `chunk_size` pieces, each in its own gzip member; then come the TOC member (a tar
//! holding `stargz.index.json`, which also ends the tar archive) and the footer.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, Write};

use base64::Engine as _;

use super::error::BuildError;
use super::footer::footer_bytes;
use super::layout::{landmark, lay_out, plan, MemberWriter, NoObserver, Written};
use super::toc_json::{format_time, kind_name, JsonEntry, JsonToc};
use super::{
    DEFAULT_CHUNK_SIZE, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_DIGEST_ANNOTATION,
    TOC_TAR_NAME, UNCOMPRESSED_SIZE_ANNOTATION,
};
use crate::codec::{sha256_digest, MAX_CHUNK_SIZE};
use crate::tar_index::index_tar;
use crate::toc::{Compression, EntryKind};

/// How to build a blob.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Largest payload chunk, in bytes (default 4 MiB).
    pub chunk_size: u64,
    /// Compression level: gzip 0..=9 (default 6), zstd 1..=22 (default 3).
    pub level: Option<i32>,
    /// Paths to place first, in this order (with their parent directories), followed by
    /// the `.prefetch.landmark`; each must exist in the tar.
    pub prioritized_files: Vec<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: None,
            prioritized_files: Vec::new(),
        }
    }
}

impl BuildOptions {
    /// Check the chunk size.
    pub(crate) fn checked_chunk_size(&self) -> Result<u64, BuildError> {
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(BuildError::BadChunkSize {
                size: self.chunk_size,
                max: MAX_CHUNK_SIZE,
            });
        }
        Ok(self.chunk_size)
    }
}

/// What a build produced, besides the blob bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    /// `sha256:` of the uncompressed TOC JSON (the `toc.digest` annotation).
    pub toc_digest: String,
    /// `sha256:` of the whole uncompressed stream (the layer's diff ID).
    pub diff_id: String,
    /// Length of the uncompressed stream.
    pub uncompressed_size: u64,
    /// `sha256:` of the blob (the layer descriptor's digest).
    pub blob_digest: String,
    /// Length of the blob.
    pub blob_size: u64,
}

impl BuildOutput {
    /// The annotations to put on the layer descriptor: the TOC digest
    /// (`containerd.io/snapshot/stargz/toc.digest`) and the uncompressed size
    /// (`io.containers.estargz.uncompressed-size`).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TOC_DIGEST_ANNOTATION.to_owned(), self.toc_digest.clone()),
            (
                UNCOMPRESSED_SIZE_ANNOTATION.to_owned(),
                self.uncompressed_size.to_string(),
            ),
        ])
    }
}

/// Convert the tar stream `tar` into an eStargz blob written to `out`.
///
/// `tar` is an uncompressed tar archive, read twice (an index pass, then a copy pass),
/// hence `Seek`; decompress a tar.gz or tar.zst into a file first. Entries named like landmarks or `stargz.index.json` are dropped from the input; a
/// later entry with the same name as an earlier one replaces it. The diff ID covers the
/// whole uncompressed stream, which includes the `stargz.index.json` tar entry.
pub fn build<R: Read + Seek, W: Write>(
    mut tar: R,
    out: W,
    opts: &BuildOptions,
) -> Result<BuildOutput, BuildError> {
    let chunk_size = opts.checked_chunk_size()?;
    let entries = index_tar(&mut tar)?;
    let (landmark_name, prioritized) = if opts.prioritized_files.is_empty() {
        (NO_PREFETCH_LANDMARK, &[][..])
    } else {
        (PREFETCH_LANDMARK, &opts.prioritized_files[..])
    };
    let planned = plan(
        entries,
        &[PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_TAR_NAME],
        prioritized,
        Some(landmark(landmark_name)),
    )?;
    let mut mw = MemberWriter::new(out, Compression::Gzip, opts.level.unwrap_or(6));
    let written = lay_out(&mut tar, planned, &mut mw, chunk_size, &mut NoObserver)?;
    mw.close_member()
        .map_err(BuildError::io("writing the blob"))?;

    let toc = JsonToc {
        version: 1,
        entries: Some(estargz_toc_entries(&written)),
        tar_split_digest: String::new(),
    };
    let json = to_tab_indented_json(&toc)?;
    let toc_offset = mw.position();
    mw.write_plain(&toc_tar(&json))
        .map_err(BuildError::io("writing the blob"))?;
    mw.close_member()
        .map_err(BuildError::io("writing the blob"))?;
    mw.write_raw(&footer_bytes(toc_offset))
        .map_err(BuildError::io("writing the blob"))?;
    let (_, totals) = mw.finish().map_err(BuildError::io("writing the blob"))?;
    Ok(BuildOutput {
        toc_digest: sha256_digest(&json),
        diff_id: totals.diff_id,
        uncompressed_size: totals.uncompressed_size,
        blob_digest: totals.blob_digest,
        blob_size: totals.blob_size,
    })
}

/// [`build`] into memory.
pub fn build_to_vec<R: Read + Seek>(
    tar: R,
    opts: &BuildOptions,
) -> Result<(Vec<u8>, BuildOutput), BuildError> {
    let mut blob = Vec::new();
    let output = build(tar, Cursor::new(&mut blob), opts)?;
    Ok((blob, output))
}

/// JSON indented with tabs, as the reference writer produces it.
pub(crate) fn to_tab_indented_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, BuildError> {
    let mut json = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut json, formatter);
    value.serialize(&mut ser)?;
    Ok(json)
}

/// A tar holding `stargz.index.json`, ended by the end-of-archive marker.
fn toc_tar(json: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    let _ = h.set_path(TOC_TAR_NAME);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(json.len() as u64);
    h.set_mode(0);
    h.set_mtime(0);
    // Numeric fields as octal zeros (as Go's archive/tar writes them), not left NUL:
    // strict readers (Rust's tar crate) refuse an empty uid or gid field.
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(json);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// The metadata part of a TOC entry (no offsets).
pub(crate) fn meta_entry(w: &Written, seconds_only: bool) -> JsonEntry {
    let p = &w.planned;
    let m = &p.meta;
    let mod_time = if m.mtime == 0 && m.mtime_nsec == 0 {
        String::new()
    } else if seconds_only {
        // The reference writer rounds to whole seconds.
        format_time(m.mtime + i64::from(m.mtime_nsec >= 500_000_000), 0)
    } else {
        format_time(m.mtime, m.mtime_nsec)
    };
    JsonEntry {
        name: p.raw_name.clone(),
        kind: kind_name(m.kind).to_owned(),
        size: if m.kind == EntryKind::Reg {
            m.size as i64
        } else {
            0
        },
        mod_time,
        link_name: p.meta.link_name.clone(),
        mode: i64::from(m.mode),
        uid: i64::from(m.uid),
        gid: i64::from(m.gid),
        user_name: p.uname.clone(),
        group_name: p.gname.clone(),
        dev_major: i64::from(m.dev_major),
        dev_minor: i64::from(m.dev_minor),
        xattrs: (!m.xattrs.is_empty()).then(|| {
            m.xattrs
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .collect()
        }),
        digest: w.digest.clone().unwrap_or_default(),
        ..JsonEntry::default()
    }
}

/// eStargz TOC entries: a `reg` entry holding the first chunk, then `chunk` entries.
pub(crate) fn estargz_toc_entries(written: &[Written]) -> Vec<JsonEntry> {
    let mut out = Vec::new();
    for w in written {
        let mut e = meta_entry(w, true);
        let several = w.chunks.len() > 1;
        for (k, c) in w.chunks.iter().enumerate() {
            if k > 0 {
                e = JsonEntry {
                    name: w.planned.raw_name.clone(),
                    kind: "chunk".to_owned(),
                    ..JsonEntry::default()
                };
            }
            e.offset = c.offset as i64;
            e.chunk_offset = c.chunk_offset as i64;
            // As the reference: the size is recorded unless the chunk runs to the end.
            if several && k + 1 < w.chunks.len() {
                e.chunk_size = c.size as i64;
            }
            e.chunk_digest = c.digest.clone();
            out.push(std::mem::take(&mut e));
        }
        if w.chunks.is_empty() {
            out.push(e);
        }
    }
    out
}
