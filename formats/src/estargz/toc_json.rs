//! The TOC JSON shared by eStargz and zstd:chunked, and its normalization into a
//! [`LayerToc`].
//!
//! [`JsonToc`] is the union of both formats' fields (eStargz `innerOffset`; zstd:chunked
//! `endOffset`, `chunkType`, `tarSplitDigest`). [`normalize`] checks every entry and turns
//! the TOC into the format-neutral model: clean names, kinds, permission bits, parsed
//! times, decoded xattrs, and for each regular file the list of chunks covering its bytes
//! with the blob range of each chunk's compressed member or frame.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::FormatError;
use super::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
use crate::codec::parse_sha256;
use crate::limits::{chunk_bytes, index_bytes, path_depth, shorten, Limits};
use crate::tar_index::clean_name;
use crate::toc::{Chunk, Compression, Entry, EntryKind, Format, LayerToc};

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The TOC document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct JsonToc {
    /// Always 1.
    pub version: i64,
    /// The entries, in blob order.
    #[serde(default)]
    pub entries: Option<Vec<JsonEntry>>,
    /// zstd:chunked: digest of the compressed tar-split data.
    #[serde(
        rename = "tarSplitDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub tar_split_digest: String,
}

/// One TOC entry, as either format writes it (unknown keys are ignored).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct JsonEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(rename = "modtime", skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(rename = "userName", skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(rename = "groupName", skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(rename = "endOffset", skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    #[serde(rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    #[serde(rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(rename = "chunkDigest", skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    #[serde(rename = "chunkType", skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
}

/// What [`normalize`] needs to know besides the JSON.
pub(crate) struct Layout {
    /// The format the TOC came from.
    pub format: Format,
    /// How payload members or frames are compressed.
    pub compression: Compression,
    /// Where the payload region ends (the TOC's start): no chunk may extend past it.
    pub payload_end: u64,
    /// The blob size.
    pub blob_size: u64,
    /// Length of the (uncompressed) TOC JSON: the index memory budget is proportional
    /// to it ([`Limits::index_budget`]).
    pub toc_size: u64,
    /// The limits every entry is checked against.
    pub limits: Limits,
}

/// A [`FormatError::Limit`] about entry `index` named `name`.
fn over_limit(index: usize, name: &str, limit: &'static str, reason: String) -> FormatError {
    FormatError::Limit {
        index,
        name: shorten(name),
        limit,
        reason,
    }
}

/// The index memory a TOC has used so far, against its budget.
struct Budget {
    used: u64,
    max: u64,
    toc_size: u64,
}

impl Budget {
    fn new(toc_size: u64, limits: &Limits) -> Self {
        Self {
            used: 0,
            max: limits.index_budget(toc_size),
            toc_size,
        }
    }

    /// Counts `bytes` more for entry `index`; an error once the budget is exceeded.
    fn charge(&mut self, index: usize, name: &str, bytes: u64) -> Result<(), FormatError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.max {
            return Err(over_limit(
                index,
                name,
                "MAX_INDEX_BYTES_PER_TOC_BYTE",
                format!(
                    "the index would take more than {} bytes of memory, the budget of a \
                     {}-byte TOC",
                    self.max, self.toc_size
                ),
            ));
        }
        Ok(())
    }
}

/// Refuses a path deeper than `max` ([`Limits::max_path_depth`]) components.
fn check_depth(
    (index, name): (usize, &str),
    what: &str,
    path: &str,
    max: usize,
) -> Result<(), FormatError> {
    let depth = path_depth(path);
    if depth > max {
        return Err(over_limit(
            index,
            name,
            "MAX_PATH_DEPTH",
            format!("{what} is {depth} components deep, more than {max}"),
        ));
    }
    Ok(())
}

/// The TOC type name of an entry kind.
pub(crate) fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir => "dir",
        EntryKind::Reg => "reg",
        EntryKind::Symlink => "symlink",
        EntryKind::Hardlink => "hardlink",
        EntryKind::Char => "char",
        EntryKind::Block => "block",
        EntryKind::Fifo => "fifo",
    }
}

fn parse_kind(s: &str) -> Option<EntryKind> {
    Some(match s {
        "dir" => EntryKind::Dir,
        "reg" => EntryKind::Reg,
        "symlink" => EntryKind::Symlink,
        "hardlink" => EntryKind::Hardlink,
        "char" => EntryKind::Char,
        "block" => EntryKind::Block,
        "fifo" => EntryKind::Fifo,
        _ => return None,
    })
}

/// RFC 3339 in UTC, with a fraction only when `nsec` is not zero.
pub(crate) fn format_time(secs: i64, nsec: u32) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.replace_nanosecond(nsec).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A chunk as the TOC records it, before its blob range is known.
struct RawChunk {
    index: usize,
    offset: u64,
    chunk_offset: u64,
    chunk_size: u64,
    inner_offset: u64,
    digest: String,
}

/// The regular file whose chunks are being collected.
struct OpenFile {
    entry: usize,
    end_offset: Option<u64>,
    chunks: Vec<RawChunk>,
}

/// Check and convert a TOC into a [`LayerToc`].
///
/// Besides consistency, every entry is checked against `layout.limits`: chunk sizes
/// and inner offsets against [`Limits::max_chunk_size`], compressed ranges against
/// [`Limits::max_compressed_chunk_size`], path and hard-link target depth against
/// [`Limits::max_path_depth`], and the memory of the whole model against the budget of
/// a TOC of `layout.toc_size` bytes. The first entry over a limit is named in the error.
pub(crate) fn normalize(toc: JsonToc, layout: &Layout) -> Result<LayerToc, FormatError> {
    if toc.version != 1 {
        return Err(FormatError::UnsupportedVersion(toc.version));
    }
    let json_entries = toc.entries.unwrap_or_default();
    let err = |index: usize, name: &str, reason: String| FormatError::BadEntry {
        index,
        name: name.to_owned(),
        reason,
    };
    let non_negative = |index: usize, name: &str, field: &str, v: i64| {
        u64::try_from(v).map_err(|_| err(index, name, format!("{field} {v} is negative")))
    };

    // Every payload start, plus the end of the payload region: a member ends where the
    // next one begins.
    let mut starts = vec![layout.payload_end];
    for (i, je) in json_entries.iter().enumerate() {
        let has_data = je.kind == "chunk" || (je.kind == "reg" && je.size > 0);
        if has_data {
            let off = non_negative(i, &je.name, "offset", je.offset)?;
            if off >= layout.payload_end {
                return Err(err(
                    i,
                    &je.name,
                    format!(
                        "offset {off} is not before the end of the payload region ({})",
                        layout.payload_end
                    ),
                ));
            }
            starts.push(off);
        }
    }
    starts.sort_unstable();
    starts.dedup();

    let mut budget = Budget::new(layout.toc_size, &layout.limits);
    let max_depth = layout.limits.max_path_depth;
    let mut entries: Vec<Entry> = Vec::with_capacity(json_entries.len());
    let mut prefetch_end = None;
    let mut open: Option<OpenFile> = None;
    let mut skipping_chunks = false;
    for (i, je) in json_entries.into_iter().enumerate() {
        if je.kind == "chunk" {
            if skipping_chunks {
                continue;
            }
            let Some(file) = open.as_mut() else {
                return Err(err(
                    i,
                    &je.name,
                    "chunk entry does not follow a regular file".into(),
                ));
            };
            file.chunks.push(raw_chunk(i, &je, non_negative)?);
            continue;
        }
        if let Some(file) = open.take() {
            finish_file(file, &mut entries, &starts, layout, &mut budget)?;
        }
        skipping_chunks = false;
        let kind = parse_kind(&je.kind)
            .ok_or_else(|| err(i, &je.name, format!("unknown type {:?}", je.kind)))?;
        if je.name.contains('\0') || je.link_name.contains('\0') {
            return Err(err(
                i,
                &je.name,
                "name or link name contains a NUL byte".into(),
            ));
        }
        check_depth((i, &je.name), "the path", &je.name, max_depth)?;
        let name = clean_name(&je.name);
        if kind == EntryKind::Reg && (name == PREFETCH_LANDMARK || name == NO_PREFETCH_LANDMARK) {
            if name == PREFETCH_LANDMARK {
                prefetch_end = Some(non_negative(i, &je.name, "offset", je.offset)?);
            }
            skipping_chunks = true;
            continue;
        }
        let mut e = Entry::new(name, kind);
        let mode = non_negative(i, &je.name, "mode", je.mode)?;
        e.mode = (mode & 0o7777) as u32;
        e.uid = u32::try_from(je.uid)
            .map_err(|_| err(i, &je.name, format!("uid {} is out of range", je.uid)))?;
        e.gid = u32::try_from(je.gid)
            .map_err(|_| err(i, &je.name, format!("gid {} is out of range", je.gid)))?;
        if !je.mod_time.is_empty() {
            let t = OffsetDateTime::parse(&je.mod_time, &Rfc3339).map_err(|e| {
                err(
                    i,
                    &je.name,
                    format!("modtime {:?} is not RFC 3339: {e}", je.mod_time),
                )
            })?;
            e.mtime = t.unix_timestamp();
            e.mtime_nsec = t.nanosecond();
        }
        match kind {
            EntryKind::Hardlink => {
                check_depth(
                    (i, &je.name),
                    "the hard link's target",
                    &je.link_name,
                    max_depth,
                )?;
                e.link_name = clean_name(&je.link_name);
            }
            EntryKind::Symlink => e.link_name = je.link_name.clone(),
            EntryKind::Char | EntryKind::Block => {
                e.dev_major = u32::try_from(je.dev_major).map_err(|_| {
                    err(
                        i,
                        &je.name,
                        format!("devMajor {} is out of range", je.dev_major),
                    )
                })?;
                e.dev_minor = u32::try_from(je.dev_minor).map_err(|_| {
                    err(
                        i,
                        &je.name,
                        format!("devMinor {} is out of range", je.dev_minor),
                    )
                })?;
            }
            _ => {}
        }
        for (key, value) in je.xattrs.iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| err(i, &je.name, format!("xattr {key:?} is not base64: {e}")))?;
            e.xattrs.insert(key.clone(), bytes);
        }
        if !je.digest.is_empty() {
            if parse_sha256(&je.digest).is_none() {
                return Err(err(
                    i,
                    &je.name,
                    format!("digest {:?} is not sha256:<hex>", je.digest),
                ));
            }
            e.digest = Some(je.digest.clone());
        }
        if kind == EntryKind::Reg {
            e.size = non_negative(i, &je.name, "size", je.size)?;
            if e.size > 0 {
                let end_offset = match je.end_offset {
                    0 => None,
                    v => Some(non_negative(i, &je.name, "endOffset", v)?),
                };
                let first = raw_chunk(i, &je, non_negative)?;
                open = Some(OpenFile {
                    entry: entries.len(),
                    end_offset,
                    chunks: vec![first],
                });
            }
        }
        budget.charge(i, &je.name, index_bytes(&e))?;
        entries.push(e);
    }
    if let Some(file) = open.take() {
        finish_file(file, &mut entries, &starts, layout, &mut budget)?;
    }
    Ok(LayerToc {
        format: layout.format,
        entries,
        prefetch_end,
        blob_size: layout.blob_size,
    })
}

fn raw_chunk(
    index: usize,
    je: &JsonEntry,
    non_negative: impl Fn(usize, &str, &str, i64) -> Result<u64, FormatError>,
) -> Result<RawChunk, FormatError> {
    Ok(RawChunk {
        index,
        offset: non_negative(index, &je.name, "offset", je.offset)?,
        chunk_offset: non_negative(index, &je.name, "chunkOffset", je.chunk_offset)?,
        chunk_size: non_negative(index, &je.name, "chunkSize", je.chunk_size)?,
        inner_offset: non_negative(index, &je.name, "innerOffset", je.inner_offset)?,
        digest: je.chunk_digest.clone(),
    })
}

/// Resolve a file's chunks: sizes, blob ranges, digests; check they tile `0..size`.
fn finish_file(
    file: OpenFile,
    entries: &mut [Entry],
    starts: &[u64],
    layout: &Layout,
    budget: &mut Budget,
) -> Result<(), FormatError> {
    let entry = &mut entries[file.entry];
    let err = |index: usize, reason: String| FormatError::BadEntry {
        index,
        name: entry.name.clone(),
        reason,
    };
    let single = file.chunks.len() == 1;
    let max_chunk = layout.limits.max_chunk_size;
    let max_compressed = layout.limits.max_compressed_chunk_size;
    // Members of one file come in blob order; the next larger start of a member in this
    // file, found in one backward pass (several chunks may share a member).
    let mut next_in_file: Vec<Option<u64>> = vec![None; file.chunks.len()];
    for k in (0..file.chunks.len().saturating_sub(1)).rev() {
        let (here, next) = (file.chunks[k].offset, file.chunks[k + 1].offset);
        if next < here {
            return Err(err(
                file.chunks[k + 1].index,
                format!("chunk's blob offset {next} is before the previous chunk's ({here})"),
            ));
        }
        next_in_file[k] = if next > here {
            Some(next)
        } else {
            next_in_file[k + 1]
        };
    }
    let mut chunks = Vec::with_capacity(file.chunks.len());
    let mut expected = 0u64;
    for (k, raw) in file.chunks.iter().enumerate() {
        if raw.chunk_offset != expected {
            return Err(err(
                raw.index,
                format!(
                    "chunk starts at file offset {}, expected {expected} (gap or overlap)",
                    raw.chunk_offset
                ),
            ));
        }
        let size = match raw.chunk_size {
            0 => entry.size.saturating_sub(raw.chunk_offset),
            s => s,
        };
        if size == 0 {
            return Err(err(raw.index, "chunk is empty".into()));
        }
        if size > max_chunk {
            return Err(over_limit(
                raw.index,
                &entry.name,
                "MAX_CHUNK_SIZE",
                format!(
                    "a chunk of {size} uncompressed bytes at file offset {}, more than \
                     {max_chunk}",
                    raw.chunk_offset
                ),
            ));
        }
        if raw.inner_offset.saturating_add(size) > max_chunk {
            return Err(over_limit(
                raw.index,
                &entry.name,
                "MAX_CHUNK_SIZE",
                format!(
                    "innerOffset {} puts the chunk beyond any chunk: reading its {size} \
                     bytes would inflate {} bytes of its member, more than {max_chunk}",
                    raw.inner_offset,
                    raw.inner_offset.saturating_add(size)
                ),
            ));
        }
        expected = expected
            .checked_add(size)
            .ok_or_else(|| err(raw.index, "chunk size overflows".into()))?;
        let later = next_in_file[k];
        let global = starts
            .get(starts.partition_point(|&o| o <= raw.offset))
            .copied();
        let blob_end = match (later, file.end_offset, global) {
            (Some(next), _, _) => next,
            (None, Some(end), _) if end > raw.offset => end,
            (None, _, Some(next)) => next,
            _ => layout.payload_end,
        };
        if blob_end <= raw.offset || blob_end > layout.payload_end {
            return Err(err(
                raw.index,
                format!(
                    "chunk's blob range {}..{blob_end} is empty or runs past the payload region (ends at {})",
                    raw.offset, layout.payload_end
                ),
            ));
        }
        if blob_end - raw.offset > max_compressed {
            return Err(over_limit(
                raw.index,
                &entry.name,
                "MAX_COMPRESSED_CHUNK_SIZE",
                format!(
                    "the chunk at file offset {} spans blob range {}..{blob_end}: {} compressed \
                     bytes to fetch for one chunk, more than {max_compressed}",
                    raw.chunk_offset,
                    raw.offset,
                    blob_end - raw.offset
                ),
            ));
        }
        let digest = if !raw.digest.is_empty() {
            raw.digest.clone()
        } else if single && entry.digest.is_some() {
            entry.digest.clone().unwrap_or_default()
        } else {
            return Err(err(raw.index, "chunk has no chunkDigest".into()));
        };
        if parse_sha256(&digest).is_none() {
            return Err(err(
                raw.index,
                format!("chunk digest {digest:?} is not sha256:<hex>"),
            ));
        }
        let chunk = Chunk {
            file_offset: raw.chunk_offset,
            size,
            blob_offset: raw.offset,
            blob_end,
            inner_offset: raw.inner_offset,
            digest,
            compression: layout.compression,
        };
        budget.charge(raw.index, &entry.name, chunk_bytes(&chunk) as u64)?;
        chunks.push(chunk);
    }
    if expected != entry.size {
        return Err(err(
            file.chunks.last().map_or(0, |c| c.index),
            format!(
                "chunks cover {expected} bytes but the file has {}",
                entry.size
            ),
        ));
    }
    entry.chunks = chunks;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MAX_CHUNK_SIZE, MAX_PATH_DEPTH};

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn layout(toc_size: usize) -> Layout {
        Layout {
            format: Format::Estargz,
            compression: Compression::Gzip,
            payload_end: 1000,
            blob_size: 1100,
            toc_size: toc_size as u64,
            limits: Limits::default(),
        }
    }

    fn parse(json: &str) -> Result<LayerToc, FormatError> {
        normalize(serde_json::from_str(json).unwrap(), &layout(json.len()))
    }

    #[test]
    fn chunks_landmarks_and_metadata() {
        let toc = parse(&format!(
            r#"{{"version":1,"entries":[
            {{"name":"./","type":"dir","mode":16877,"modtime":"2023-11-14T22:13:20Z"}},
            {{"name":"bin/big","type":"reg","size":10,"mode":35309,"offset":100,"chunkSize":4,"chunkDigest":"{D}","uid":5,"xattrs":{{"user.a":"aGk="}}}},
            {{"name":"bin/big","type":"chunk","offset":200,"chunkOffset":4,"chunkDigest":"{D}"}},
            {{"name":".prefetch.landmark","type":"reg","size":1,"offset":300,"chunkDigest":"{D}"}},
            {{"name":"small","type":"reg","size":3,"offset":400,"digest":"{D}"}},
            {{"name":"hl","type":"hardlink","linkName":"./small"}}
            ]}}"#
        ))
        .unwrap();
        assert_eq!(toc.prefetch_end, Some(300));
        let names: Vec<_> = toc.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["", "bin/big", "small", "hl"]);
        assert_eq!(toc.entries[0].mode, 0o755);
        assert_eq!(toc.entries[0].mtime, 1_700_000_000);
        let big = &toc.entries[1];
        assert_eq!(big.mode, 0o4755);
        assert_eq!(big.uid, 5);
        assert_eq!(big.xattrs["user.a"], b"hi");
        assert_eq!(
            big.chunks
                .iter()
                .map(|c| (c.file_offset, c.size, c.blob_offset, c.blob_end))
                .collect::<Vec<_>>(),
            [(0, 4, 100, 200), (4, 6, 200, 300)]
        );
        assert_eq!(toc.entries[2].chunks[0].blob_end, 1000);
        assert_eq!(toc.entries[3].link_name, "small");
    }

    #[test]
    fn rejects_inconsistent_entries() {
        let cases = [
            (
                format!(
                    r#"{{"name":"f","type":"reg","size":10,"offset":100,"chunkSize":4,"chunkDigest":"{D}"}}"#
                ),
                "cover",
            ),
            (
                format!(
                    r#"{{"name":"f","type":"reg","size":4,"offset":100,"chunkOffset":1,"chunkDigest":"{D}"}}"#
                ),
                "gap",
            ),
            (
                format!(
                    r#"{{"name":"f","type":"reg","size":4,"offset":1000,"chunkDigest":"{D}"}}"#
                ),
                "payload region",
            ),
            (
                r#"{"name":"f","type":"reg","size":4,"offset":100}"#.to_string(),
                "chunkDigest",
            ),
            (
                format!(r#"{{"name":"f","type":"chunk","offset":100,"chunkDigest":"{D}"}}"#),
                "follow",
            ),
            (
                r#"{"name":"f","type":"whiteout"}"#.to_string(),
                "unknown type",
            ),
            (r#"{"name":"f","type":"dir","uid":-1}"#.to_string(), "uid"),
            (
                r#"{"name":"f","type":"dir","modtime":"yesterday"}"#.to_string(),
                "RFC 3339",
            ),
            (
                r#"{"name":"f","type":"dir","xattrs":{"k":"!!"}}"#.to_string(),
                "base64",
            ),
            (
                r#"{"name":"f","type":"reg","size":-1}"#.to_string(),
                "negative",
            ),
        ];
        for (entry, want) in cases {
            let err = parse(&format!(r#"{{"version":1,"entries":[{entry}]}}"#))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{entry}: {err}");
        }
        assert!(matches!(
            parse(r#"{"version":2,"entries":[]}"#),
            Err(FormatError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn end_offset_bounds_the_last_chunk() {
        let json = format!(
            r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":4,"offset":100,"endOffset":150,"chunkDigest":"{D}"}},{{"name":"g","type":"reg","size":4,"offset":500,"endOffset":600,"chunkDigest":"{D}"}}]}}"#
        );
        let toc = parse(&json).unwrap();
        assert_eq!(toc.entries[0].chunks[0].blob_end, 150);
        assert_eq!(toc.entries[1].chunks[0].blob_end, 600);
    }

    #[test]
    fn many_chunks_sharing_members_is_linear() {
        let n = 200_000;
        let mut entries = vec![format!(
            r#"{{"name":"f","type":"reg","size":{n},"offset":100,"chunkSize":1,"chunkDigest":"{D}"}}"#
        )];
        for i in 1..n {
            let off = 100 + i / 1000;
            entries.push(format!(
                r#"{{"type":"chunk","offset":{off},"innerOffset":{},"chunkOffset":{i},"chunkSize":1,"chunkDigest":"{D}"}}"#,
                i % 1000
            ));
        }
        let json = format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","));
        let start = std::time::Instant::now();
        let toc = parse(&json).unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        let chunks = &toc.entries[0].chunks;
        assert_eq!(chunks.len(), n);
        assert_eq!((chunks[0].blob_offset, chunks[0].blob_end), (100, 101));
        assert_eq!(chunks[n - 1].blob_end, 1000);
        assert_eq!(chunks[1500].inner_offset, 500);
    }

    /// The limit a [`FormatError::Limit`] names, and the entry it names.
    fn limit_of(result: Result<LayerToc, FormatError>) -> (&'static str, usize, String) {
        match result {
            Err(FormatError::Limit {
                limit, index, name, ..
            }) => (limit, index, name),
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn chunk_and_inner_offset_limits() {
        let over = MAX_CHUNK_SIZE + 1;
        // A single chunk (implied by the file's size) over the limit.
        let json = format!(
            r#"{{"version":1,"entries":[{{"name":"d","type":"dir"}},{{"name":"zeros","type":"reg","size":{over},"offset":100,"digest":"{D}"}}]}}"#
        );
        let err = parse(&json).unwrap_err();
        assert!(err.to_string().contains("MAX_CHUNK_SIZE"), "{err}");
        assert_eq!(limit_of(Err(err)), ("MAX_CHUNK_SIZE", 1, "zeros".into()));
        // Exactly the limit is fine.
        let json = json.replace(&over.to_string(), &MAX_CHUNK_SIZE.to_string());
        assert!(parse(&json).is_ok());
        // A one-byte chunk far inside its member.
        let json = format!(
            r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":1,"offset":100,"innerOffset":{},"chunkDigest":"{D}"}}]}}"#,
            10u64 << 30
        );
        let err = parse(&json).unwrap_err();
        assert!(err.to_string().contains("innerOffset"), "{err}");
        assert_eq!(limit_of(Err(err)), ("MAX_CHUNK_SIZE", 0, "f".into()));
    }

    #[test]
    fn path_depth_limit() {
        let at_limit = vec!["d"; MAX_PATH_DEPTH].join("/");
        let json = format!(r#"{{"version":1,"entries":[{{"name":"{at_limit}","type":"dir"}}]}}"#);
        assert!(parse(&json).is_ok());
        let deep = vec!["d"; 30_000].join("/");
        let json = format!(
            r#"{{"version":1,"entries":[{{"name":"ok","type":"dir"}},{{"name":"{deep}/f","type":"fifo"}}]}}"#
        );
        let err = parse(&json).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("30001 components") && shown.len() < 500,
            "{shown}"
        );
        assert_eq!(limit_of(Err(err)).0, "MAX_PATH_DEPTH");
        // A hard link whose target is too deep.
        let json = format!(
            r#"{{"version":1,"entries":[{{"name":"l","type":"hardlink","linkName":"{deep}"}}]}}"#
        );
        assert_eq!(limit_of(parse(&json)), ("MAX_PATH_DEPTH", 0, "l".into()));
    }

    #[test]
    fn index_memory_budget() {
        // Tiny entries each with an xattr: the model costs far more than the JSON.
        let n = 200_000;
        let entries: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"name":"{i:x}","type":"fifo","xattrs":{{"a":"AA=="}}}}"#))
            .collect();
        let json = format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","));
        let (limit, index, _) = limit_of(parse(&json));
        assert_eq!(limit, "MAX_INDEX_BYTES_PER_TOC_BYTE");
        assert!(index > 1000 && index < n, "refused at entry {index}");
        // The same entries without the xattr fit.
        let plain = json.replace(r#","xattrs":{"a":"AA=="}"#, "");
        assert_eq!(parse(&plain).unwrap().entries.len(), n);
    }

    #[test]
    fn formats_times() {
        assert_eq!(format_time(1_700_000_000, 0), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(1, 500_000_000), "1970-01-01T00:00:01.5Z");
    }
}
