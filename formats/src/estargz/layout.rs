//! The chunked-layout writer core shared by the eStargz and zstd:chunked writers.
//!
//! [`MemberWriter`] writes a sequence of compressed members (gzip) or frames (zstd),
//! tracking the compressed position, the blob digest, and the digest and length of the
//! uncompressed stream (the layer's diff ID). [`plan`] orders the entries of an indexed
//! tar (deduplicated, prioritized paths first, landmark), and [`lay_out`] writes them:
//! raw tar headers as they were, and each regular file's payload split into chunks, each
//! chunk starting a new member, the member closed right after the file's last chunk.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};

use super::error::BuildError;
use crate::codec::MAX_ZSTD_WINDOW_LOG;
use crate::tar_index::{clean_name, padded, TarEntry};
use crate::toc::{Compression, Entry, EntryKind};

/// The first zstd level whose default window is larger than a reader accepts (level 20:
/// 2^25; level 19 uses 2^23).
const ZSTD_FIRST_LEVEL_OVER_WINDOW: i32 = 20;

/// Where an entry's bytes come from.
pub(crate) enum Bytes {
    /// A span of the input tar stream.
    Span(u64, u64),
    /// Bytes made up by the writer (landmarks).
    Owned(Vec<u8>),
}

/// One entry to write, in output order.
pub(crate) struct Planned {
    /// Its metadata (name cleaned).
    pub meta: Entry,
    /// The name as the tar spells it.
    pub raw_name: String,
    /// Owner name.
    pub uname: String,
    /// Group name.
    pub gname: String,
    /// Raw header blocks.
    pub header: Bytes,
    /// Payload (unpadded).
    pub data: Bytes,
    /// Payload length.
    pub data_size: u64,
}

/// A chunk as written.
pub(crate) struct WrittenChunk {
    pub chunk_offset: u64,
    pub size: u64,
    pub offset: u64,
    pub digest: String,
}

/// An entry as written, with where its payload went.
pub(crate) struct Written {
    pub planned: Planned,
    pub chunks: Vec<WrittenChunk>,
    /// `sha256:` of the whole payload (regular files).
    pub digest: Option<String>,
    /// End of the member holding the last chunk.
    pub end_offset: u64,
}

/// Sees the uncompressed stream as the writer produces it (for tar-split).
pub(crate) trait StreamObserver {
    /// Bytes that are not file payload (headers, padding, end of archive).
    fn segment(&mut self, bytes: &[u8]);
    /// Part of the current entry's payload.
    fn file_data(&mut self, bytes: &[u8]);
    /// The current entry's payload is complete.
    fn file_end(&mut self, raw_name: &str, size: u64);
}

/// A [`StreamObserver`] that ignores everything.
pub(crate) struct NoObserver;

impl StreamObserver for NoObserver {
    fn segment(&mut self, _: &[u8]) {}
    fn file_data(&mut self, _: &[u8]) {}
    fn file_end(&mut self, _: &str, _: u64) {}
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Totals of a finished blob.
pub(crate) struct Totals {
    pub blob_size: u64,
    pub blob_digest: String,
    pub diff_id: String,
    pub uncompressed_size: u64,
}

/// Writes compressed members to `out`.
pub(crate) struct MemberWriter<W: Write> {
    out: W,
    position: u64,
    blob_hash: Sha256,
    plain_hash: Sha256,
    plain_len: u64,
    compression: Compression,
    level: i32,
    member: Option<Encoder>,
}

impl<W: Write> MemberWriter<W> {
    /// A writer compressing with `compression` at `level`.
    pub fn new(out: W, compression: Compression, level: i32) -> Self {
        Self {
            out,
            position: 0,
            blob_hash: Sha256::new(),
            plain_hash: Sha256::new(),
            plain_len: 0,
            compression,
            level,
            member: None,
        }
    }

    /// Compressed bytes written so far (members not yet closed excluded).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Append uncompressed bytes to the current member, starting one if none is open.
    pub fn write_plain(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.plain_hash.update(data);
        self.plain_len += data.len() as u64;
        let member = match &mut self.member {
            Some(m) => m,
            None => self.member.insert(match self.compression {
                // Uncompressed members are never written; gzip is the safe reading.
                Compression::Gzip | Compression::None => {
                    Encoder::Gzip(flate2::write::GzEncoder::new(
                        Vec::new(),
                        flate2::Compression::new(self.level.clamp(0, 9) as u32),
                    ))
                }
                Compression::Zstd => {
                    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), self.level)?;
                    enc.include_checksum(true)?;
                    // Levels 20..=22 ask for windows of 2^25..2^27, which readers refuse
                    // (crate::codec::MAX_ZSTD_WINDOW_LOG); a frame holds at most one
                    // chunk, so the smaller window loses nothing. Lower levels keep theirs.
                    if self.level >= ZSTD_FIRST_LEVEL_OVER_WINDOW {
                        enc.window_log(MAX_ZSTD_WINDOW_LOG)?;
                    }
                    Encoder::Zstd(enc)
                }
            }),
        };
        match member {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Finish the current member, if any, and write it out.
    pub fn close_member(&mut self) -> io::Result<()> {
        let bytes = match self.member.take() {
            None => return Ok(()),
            Some(Encoder::Gzip(e)) => e.finish()?,
            Some(Encoder::Zstd(e)) => e.finish()?,
        };
        self.write_raw(&bytes)
    }

    /// Write bytes to the blob as they are (footers, skippable frames). No member may be
    /// open.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(self.member.is_none());
        self.out.write_all(bytes)?;
        self.blob_hash.update(bytes);
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// Close the last member, flush, and return the output and the totals.
    pub fn finish(mut self) -> io::Result<(W, Totals)> {
        self.close_member()?;
        self.out.flush()?;
        let totals = Totals {
            blob_size: self.position,
            blob_digest: format!("sha256:{}", hex::encode(self.blob_hash.finalize())),
            diff_id: format!("sha256:{}", hex::encode(self.plain_hash.finalize())),
            uncompressed_size: self.plain_len,
        };
        Ok((self.out, totals))
    }
}

/// The tar header (512 bytes) and contents of a landmark file.
pub(crate) fn landmark(name: &str) -> Planned {
    let mut h = tar::Header::new_ustar();
    // Names of landmarks are short ASCII; set_path cannot fail for them.
    let _ = h.set_path(name);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0);
    h.set_mtime(0);
    // Numeric fields as octal zeros (as Go's archive/tar writes them), not left NUL:
    // strict readers (Rust's tar crate) refuse an empty uid or gid field.
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    let mut meta = Entry::new(name, EntryKind::Reg);
    meta.size = 1;
    Planned {
        meta,
        raw_name: name.to_owned(),
        uname: String::new(),
        gname: String::new(),
        header: Bytes::Owned(h.as_bytes().to_vec()),
        data: Bytes::Owned(vec![super::LANDMARK_CONTENTS]),
        data_size: 1,
    }
}

fn from_input(e: TarEntry) -> Planned {
    Planned {
        raw_name: e.raw_name,
        uname: e.uname,
        gname: e.gname,
        header: Bytes::Span(e.header_span.start, e.header_span.end),
        data: Bytes::Span(e.data_offset, e.data_offset + e.data_size),
        data_size: e.data_size,
        meta: e.meta,
    }
}

/// Order `entries` for writing: later duplicates replace earlier ones, names in `skip`
/// are dropped, the `prioritized` paths (with their parent directories and hard-link
/// targets) come first, then `landmark` if given, then everything else in input order.
pub(crate) fn plan(
    entries: Vec<TarEntry>,
    skip: &[&str],
    prioritized: &[String],
    landmark_entry: Option<Planned>,
) -> Result<Vec<Planned>, BuildError> {
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        last.insert(e.meta.name.clone(), i);
    }
    let mut slots: Vec<Option<TarEntry>> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            (last.get(&e.meta.name) == Some(&i) && !skip.contains(&e.meta.name.as_str()))
                .then_some(e)
        })
        .collect();
    let by_name: BTreeMap<String, usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.as_ref().map(|e| (e.meta.name.clone(), i)))
        .collect();

    let mut first = Vec::new();
    let mut moved = BTreeSet::new();
    for path in prioritized {
        let name = clean_name(path);
        if !by_name.contains_key(&name) {
            return Err(BuildError::PrioritizedNotFound(path.clone()));
        }
        move_rec(&name, &by_name, &mut slots, &mut moved, &mut first, 0);
    }
    let mut out: Vec<Planned> = first.into_iter().map(from_input).collect();
    out.extend(landmark_entry);
    out.extend(slots.into_iter().flatten().map(from_input));
    Ok(out)
}

/// Move `name`'s parents, its hard-link target and itself into `first`.
fn move_rec(
    name: &str,
    by_name: &BTreeMap<String, usize>,
    slots: &mut [Option<TarEntry>],
    moved: &mut BTreeSet<String>,
    first: &mut Vec<TarEntry>,
    depth: usize,
) {
    if depth > 4096 || moved.contains(name) {
        return;
    }
    if let Some((parent, _)) = name.rsplit_once('/') {
        move_rec(parent, by_name, slots, moved, first, depth + 1);
    } else if !name.is_empty() {
        move_rec("", by_name, slots, moved, first, depth + 1);
    }
    let Some(&i) = by_name.get(name) else { return };
    if let Some(e) = &slots[i] {
        if e.meta.kind == EntryKind::Hardlink {
            let target = e.meta.link_name.clone();
            moved.insert(name.to_owned());
            move_rec(
                &clean_name(&target),
                by_name,
                slots,
                moved,
                first,
                depth + 1,
            );
        }
    }
    if let Some(e) = slots[i].take() {
        moved.insert(name.to_owned());
        first.push(e);
    }
}

/// Copies `len` bytes at `offset` of the input (or owned bytes) to `sink`, in pieces.
fn copy_bytes<R: Read + Seek>(
    input: &mut R,
    bytes: &Bytes,
    skip: u64,
    len: u64,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), BuildError> {
    match bytes {
        Bytes::Owned(v) => {
            let start = usize::try_from(skip).unwrap_or(usize::MAX).min(v.len());
            let end = usize::try_from(skip + len)
                .unwrap_or(usize::MAX)
                .min(v.len());
            sink(&v[start..end]).map_err(BuildError::io("writing the blob"))
        }
        Bytes::Span(start, _) => {
            input
                .seek(SeekFrom::Start(start + skip))
                .map_err(BuildError::io("seeking in the tar stream"))?;
            let mut remaining = len;
            let mut buf = vec![0u8; len.min(1 << 20) as usize];
            while remaining > 0 {
                let n = remaining.min(buf.len() as u64) as usize;
                input
                    .read_exact(&mut buf[..n])
                    .map_err(BuildError::io("reading the tar stream"))?;
                sink(&buf[..n]).map_err(BuildError::io("writing the blob"))?;
                remaining -= n as u64;
            }
            Ok(())
        }
    }
}

fn bytes_len(b: &Bytes) -> u64 {
    match b {
        Bytes::Owned(v) => v.len() as u64,
        Bytes::Span(s, e) => e - s,
    }
}

/// Write `planned` entries into `mw`: headers as they are, payloads chunked.
pub(crate) fn lay_out<R: Read + Seek, W: Write>(
    input: &mut R,
    planned: Vec<Planned>,
    mw: &mut MemberWriter<W>,
    chunk_size: u64,
    observer: &mut dyn StreamObserver,
) -> Result<Vec<Written>, BuildError> {
    let mut written = Vec::with_capacity(planned.len());
    for p in planned {
        let header_len = bytes_len(&p.header);
        copy_bytes(input, &p.header, 0, header_len, |b| {
            observer.segment(b);
            mw.write_plain(b)
        })?;
        let mut chunks = Vec::new();
        let mut digest = None;
        let mut end_offset = 0;
        if p.meta.kind == EntryKind::Reg {
            let mut file_hash = Sha256::new();
            let mut done = 0;
            while done < p.data_size {
                let size = chunk_size.min(p.data_size - done);
                mw.close_member()
                    .map_err(BuildError::io("writing the blob"))?;
                let offset = mw.position();
                let mut chunk_hash = Sha256::new();
                copy_bytes(input, &p.data, done, size, |b| {
                    chunk_hash.update(b);
                    file_hash.update(b);
                    observer.file_data(b);
                    mw.write_plain(b)
                })?;
                chunks.push(WrittenChunk {
                    chunk_offset: done,
                    size,
                    offset,
                    digest: format!("sha256:{}", hex::encode(chunk_hash.finalize())),
                });
                done += size;
            }
            if !chunks.is_empty() {
                mw.close_member()
                    .map_err(BuildError::io("writing the blob"))?;
                end_offset = mw.position();
            }
            digest = Some(format!("sha256:{}", hex::encode(file_hash.finalize())));
        } else if p.data_size > 0 {
            copy_bytes(input, &p.data, 0, p.data_size, |b| {
                observer.file_data(b);
                mw.write_plain(b)
            })?;
        }
        observer.file_end(&p.raw_name, p.data_size);
        let pad = vec![0u8; (padded(p.data_size) - p.data_size) as usize];
        observer.segment(&pad);
        mw.write_plain(&pad)
            .map_err(BuildError::io("writing the blob"))?;
        written.push(Written {
            planned: p,
            chunks,
            digest,
            end_offset,
        });
    }
    Ok(written)
}
