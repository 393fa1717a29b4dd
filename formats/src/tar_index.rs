//! Indexing an uncompressed tar stream for the layer writers.
//!
//! [`index_tar`] walks a tar archive once and records, for every real entry, its metadata
//! (a [`crate::toc::Entry`] without chunks), where its raw header blocks lie in the stream
//! (including any PAX or GNU long-name records that precede it, so they can be copied
//! byte for byte) and where its payload lies. The eStargz and zstd:chunked writers then
//! reorder entries if asked and copy headers and payloads into compressed members.
//!
//! Only what a container layer needs is accepted: regular files, directories, symlinks,
//! hard links, character and block devices and FIFOs, with PAX (`x`, `g`) and GNU long
//! name / long link records. Sparse files and unknown types are refused with an error.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek};
use std::ops::Range;

use tar::{EntryType, PaxExtensions};

use crate::toc::{Entry, EntryKind};

/// The largest PAX or GNU long-name record accepted (1 MiB).
pub const MAX_EXTENSION_RECORD: u64 = 1 << 20;

/// Why a tar stream could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum TarIndexError {
    /// Reading the stream failed, or it is not a well-formed tar archive.
    #[error("reading the tar stream failed: {0}")]
    Io(#[from] io::Error),
    /// An entry has a type layers do not use.
    #[error("tar entry {name:?} has unsupported type {typeflag:?}")]
    UnsupportedType {
        /// The entry's name.
        name: String,
        /// Its type flag byte, as a character.
        typeflag: char,
    },
    /// A PAX or GNU long-name record is larger than [`MAX_EXTENSION_RECORD`].
    #[error("tar extension record at stream offset {offset} is {size} bytes, more than the {max}-byte limit")]
    ExtensionTooLarge {
        /// Where its header is.
        offset: u64,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A name, link target or PAX value is not valid UTF-8 or holds a NUL.
    #[error("tar entry at stream offset {offset}: {what} is not valid UTF-8 text")]
    BadText {
        /// Where the entry's header is.
        offset: u64,
        /// Which field.
        what: &'static str,
    },
    /// A PAX record could not be parsed.
    #[error("tar entry at stream offset {offset}: bad PAX record {key:?}: {reason}")]
    BadPax {
        /// Where the entry's header is.
        offset: u64,
        /// The record's key.
        key: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A header field could not be parsed.
    #[error("tar entry {name:?}: bad header field {field}: {source}")]
    BadField {
        /// The entry's name.
        name: String,
        /// Which field.
        field: &'static str,
        /// The parser's complaint.
        #[source]
        source: io::Error,
    },
    /// Extension records were not followed by an entry.
    #[error("tar stream ends after extension records without the entry they describe")]
    DanglingExtension,
}

/// One real entry of a tar stream.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Metadata, with `name` normalized (see [`clean_name`]) and no chunks.
    pub meta: Entry,
    /// The entry's name exactly as the tar stream spells it (after PAX / GNU long names).
    pub raw_name: String,
    /// Owner's user name, if recorded.
    pub uname: String,
    /// Owner's group name, if recorded.
    pub gname: String,
    /// Stream offsets of the raw header blocks, extension records included.
    pub header_span: Range<u64>,
    /// Stream offset of the payload.
    pub data_offset: u64,
    /// Payload length (without padding).
    pub data_size: u64,
}

impl TarEntry {
    /// Where the next entry's header starts: the payload padded to 512 bytes.
    pub fn end(&self) -> u64 {
        self.data_offset + padded(self.data_size)
    }
}

/// `len` rounded up to the next multiple of 512.
pub fn padded(len: u64) -> u64 {
    len.div_ceil(512) * 512
}

/// A path made relative and clean, as eStargz readers see names: no leading `/` or `./`,
/// no trailing `/`, no `.` components, `..` resolved (never above the root). The root
/// itself is the empty string.
pub fn clean_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Extension records that apply to the next real entry.
#[derive(Default)]
struct Pending {
    start: Option<u64>,
    long_name: Option<String>,
    long_link: Option<String>,
    pax: BTreeMap<String, Vec<u8>>,
}

/// Index every real entry of the tar archive `reader` (positioned at its start).
pub fn index_tar<R: Read + Seek>(reader: R) -> Result<Vec<TarEntry>, TarIndexError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries_with_seek()?.raw(true);
    walk(entries, |_, _| Ok(()))
}

/// Like [`index_tar`], for a stream that cannot seek (one being decompressed as it is
/// read): each real entry is handed to `visit` with a reader of its payload; what `visit`
/// leaves unread is skipped. Reading stops at the end-of-archive blocks.
pub fn index_tar_stream<R: Read>(
    reader: R,
    mut visit: impl FnMut(&TarEntry, &mut dyn Read) -> io::Result<()>,
) -> Result<Vec<TarEntry>, TarIndexError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries()?.raw(true);
    walk(entries, |entry, data| {
        visit(entry, data).map_err(TarIndexError::Io)
    })
}

/// The entries of `entries`, extension records applied; `visit` sees each real entry.
fn walk<'a, R: Read + 'a>(
    entries: tar::Entries<'a, R>,
    mut visit: impl FnMut(&TarEntry, &mut tar::Entry<'a, R>) -> Result<(), TarIndexError>,
) -> Result<Vec<TarEntry>, TarIndexError> {
    let mut out = Vec::new();
    let mut pending = Pending::default();
    for item in entries {
        let mut entry = item?;
        let header_pos = entry.raw_header_position();
        let data_offset = entry.raw_file_position();
        let size = entry.size();
        let etype = entry.header().entry_type();
        if etype.is_pax_local_extensions()
            || etype.is_pax_global_extensions()
            || etype.is_gnu_longname()
            || etype.is_gnu_longlink()
        {
            if size > MAX_EXTENSION_RECORD {
                return Err(TarIndexError::ExtensionTooLarge {
                    offset: header_pos,
                    size,
                    max: MAX_EXTENSION_RECORD,
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data)?;
            pending.start.get_or_insert(header_pos);
            if etype.is_pax_local_extensions() {
                parse_pax(&data, header_pos, &mut pending.pax)?;
            } else if etype.is_gnu_longname() {
                pending.long_name = Some(gnu_text(&data, header_pos, "GNU long name")?);
            } else if etype.is_gnu_longlink() {
                pending.long_link = Some(gnu_text(&data, header_pos, "GNU long link")?);
            }
            // Global PAX records are copied through but not applied.
            continue;
        }
        let pend = std::mem::take(&mut pending);
        let described = describe(&entry, pend, header_pos, data_offset, size)?;
        visit(&described, &mut entry)?;
        out.push(described);
    }
    if pending.start.is_some() {
        return Err(TarIndexError::DanglingExtension);
    }
    Ok(out)
}

fn gnu_text(data: &[u8], offset: u64, what: &'static str) -> Result<String, TarIndexError> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    text(&data[..end], offset, what)
}

fn text(bytes: &[u8], offset: u64, what: &'static str) -> Result<String, TarIndexError> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\0') => Ok(s.to_owned()),
        _ => Err(TarIndexError::BadText { offset, what }),
    }
}

fn parse_pax(
    data: &[u8],
    offset: u64,
    into: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), TarIndexError> {
    for ext in PaxExtensions::new(data) {
        let ext = ext.map_err(|_| TarIndexError::BadPax {
            offset,
            key: String::new(),
            reason: "malformed record",
        })?;
        let key = text(ext.key_bytes(), offset, "PAX key")?;
        into.insert(key, ext.value_bytes().to_vec());
    }
    Ok(())
}

fn pax_text(
    pax: &BTreeMap<String, Vec<u8>>,
    key: &str,
    offset: u64,
) -> Result<Option<String>, TarIndexError> {
    pax.get(key)
        .map(|v| text(v, offset, "PAX value"))
        .transpose()
}

fn pax_u64(
    pax: &BTreeMap<String, Vec<u8>>,
    key: &str,
    offset: u64,
) -> Result<Option<u64>, TarIndexError> {
    let Some(value) = pax_text(pax, key, offset)? else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| TarIndexError::BadPax {
        offset,
        key: key.to_owned(),
        reason: "not a decimal number",
    })
}

/// A PAX time `secs[.frac]` as seconds and nanoseconds.
fn pax_time(value: &str, offset: u64) -> Result<(i64, u32), TarIndexError> {
    let bad = || TarIndexError::BadPax {
        offset,
        key: "mtime".to_owned(),
        reason: "not a decimal time",
    };
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut nanos = 0u32;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    // "-1.5" means 1.5 s before the epoch.
    if value.starts_with('-') && nanos > 0 {
        return Ok((secs.checked_sub(1).ok_or_else(bad)?, 1_000_000_000 - nanos));
    }
    Ok((secs, nanos))
}

/// A numeric header field, where an empty field (all NULs or spaces) reads as zero.
fn lenient<T: Default>(parsed: io::Result<T>, raw: &[u8]) -> io::Result<T> {
    match parsed {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(T::default()),
        other => other,
    }
}

fn describe<R: Read>(
    entry: &tar::Entry<'_, R>,
    pend: Pending,
    header_pos: u64,
    data_offset: u64,
    size: u64,
) -> Result<TarEntry, TarIndexError> {
    let header = entry.header();
    let pax = &pend.pax;
    let raw_name = match (pax_text(pax, "path", header_pos)?, pend.long_name) {
        (Some(p), _) => p,
        (None, Some(l)) => l,
        (None, None) => text(&header.path_bytes(), header_pos, "name")?,
    };
    let link_name = match (pax_text(pax, "linkpath", header_pos)?, pend.long_link) {
        (Some(p), _) => p,
        (None, Some(l)) => l,
        (None, None) => match header.link_name_bytes() {
            Some(b) => text(&b, header_pos, "link name")?,
            None => String::new(),
        },
    };
    let field = |field: &'static str| {
        let name = raw_name.clone();
        move |source: io::Error| TarIndexError::BadField {
            name,
            field,
            source,
        }
    };
    let etype = header.entry_type();
    let kind = match etype {
        EntryType::Regular | EntryType::Continuous => EntryKind::Reg,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::Hardlink,
        EntryType::Char => EntryKind::Char,
        EntryType::Block => EntryKind::Block,
        EntryType::Fifo => EntryKind::Fifo,
        other => {
            return Err(TarIndexError::UnsupportedType {
                name: raw_name,
                typeflag: other.as_byte() as char,
            })
        }
    };
    if let Some(pax_size) = pax_u64(pax, "size", header_pos)? {
        if pax_size != size {
            return Err(TarIndexError::BadPax {
                offset: header_pos,
                key: "size".to_owned(),
                reason: "PAX size overrides are not supported",
            });
        }
    }
    let mut meta = Entry::new(clean_name(&raw_name), kind);
    meta.size = if kind == EntryKind::Reg { size } else { 0 };
    let old = header.as_old();
    meta.mode = lenient(header.mode(), &old.mode).map_err(field("mode"))? & 0o7777;
    let uid = match pax_u64(pax, "uid", header_pos)? {
        Some(v) => v,
        None => lenient(header.uid(), &old.uid).map_err(field("uid"))?,
    };
    let gid = match pax_u64(pax, "gid", header_pos)? {
        Some(v) => v,
        None => lenient(header.gid(), &old.gid).map_err(field("gid"))?,
    };
    let too_big = |what: &'static str| {
        field(what)(io::Error::new(
            io::ErrorKind::InvalidData,
            "does not fit 32 bits",
        ))
    };
    meta.uid = u32::try_from(uid).map_err(|_| too_big("uid"))?;
    meta.gid = u32::try_from(gid).map_err(|_| too_big("gid"))?;
    (meta.mtime, meta.mtime_nsec) = match pax_text(pax, "mtime", header_pos)? {
        Some(t) => pax_time(&t, header_pos)?,
        None => {
            let secs = lenient(header.mtime(), &old.mtime).map_err(field("mtime"))?;
            (i64::try_from(secs).map_err(|_| too_big("mtime"))?, 0)
        }
    };
    if matches!(kind, EntryKind::Symlink | EntryKind::Hardlink) {
        meta.link_name = link_name;
    }
    if matches!(kind, EntryKind::Char | EntryKind::Block) {
        meta.dev_major = header
            .device_major()
            .map_err(field("devmajor"))?
            .unwrap_or(0);
        meta.dev_minor = header
            .device_minor()
            .map_err(field("devminor"))?
            .unwrap_or(0);
    }
    for (key, value) in pax {
        if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
            meta.xattrs.insert(xattr.to_owned(), value.clone());
        }
    }
    let uname = match pax_text(pax, "uname", header_pos)? {
        Some(u) => u,
        None => String::from_utf8_lossy(header.username_bytes().unwrap_or_default()).into_owned(),
    };
    let gname = match pax_text(pax, "gname", header_pos)? {
        Some(g) => g,
        None => String::from_utf8_lossy(header.groupname_bytes().unwrap_or_default()).into_owned(),
    };
    Ok(TarEntry {
        meta,
        raw_name,
        uname,
        gname,
        header_span: pend.start.unwrap_or(header_pos)..data_offset,
        data_offset,
        data_size: size,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o40755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, "./etc/", io::empty()).unwrap();
        let long = format!("etc/{}", "x".repeat(150));
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o4755);
        h.set_size(5);
        h.set_uid(1000);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v\x00w"[..]), ("mtime", b"12.5")])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "etc/link", "../target").unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn indexes_names_metadata_and_positions() {
        let bytes = sample_tar();
        let entries = index_tar(Cursor::new(&bytes)).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].meta.name, "etc");
        assert_eq!(entries[0].raw_name, "etc/");
        assert_eq!(entries[0].meta.mode, 0o755);
        assert_eq!(entries[0].meta.mtime, 1_700_000_000);
        let file = &entries[1];
        assert_eq!(file.meta.name.len(), 154);
        assert_eq!(file.meta.mode, 0o4755);
        assert_eq!(file.meta.uid, 1000);
        assert_eq!(file.meta.size, 5);
        assert!(
            file.header_span.end - file.header_span.start > 512,
            "long name record included"
        );
        let range = file.data_offset as usize..(file.data_offset + file.data_size) as usize;
        assert_eq!(&bytes[range], b"hello");
        let link = &entries[2];
        assert_eq!(link.meta.kind, EntryKind::Symlink);
        assert_eq!(link.meta.link_name, "../target");
        assert_eq!(link.meta.xattrs["user.k"], b"v\x00w");
        assert_eq!((link.meta.mtime, link.meta.mtime_nsec), (12, 500_000_000));
        assert_eq!(link.header_span.start, file.end());
    }

    #[test]
    fn clean_names() {
        assert_eq!(clean_name("./a/b/"), "a/b");
        assert_eq!(clean_name("/a//./b"), "a/b");
        assert_eq!(clean_name("../../a/../b"), "b");
        assert_eq!(clean_name("./"), "");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut bytes = sample_tar();
        bytes[100] ^= 0xff; // breaks the first header's checksum
        assert!(index_tar(Cursor::new(&bytes)).is_err());
        assert!(index_tar(Cursor::new(vec![7u8; 4096])).is_err());
        assert!(index_tar(Cursor::new(Vec::new())).unwrap().is_empty());
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time("5", 0).unwrap(), (5, 0));
        assert_eq!(pax_time("5.000000001", 0).unwrap(), (5, 1));
        assert_eq!(pax_time("-1.5", 0).unwrap(), (-2, 500_000_000));
        assert!(pax_time("x", 0).is_err());
        assert!(pax_time("-9223372036854775808.5", 0).is_err());
    }
}
