//! Tests of streamed-layer indexing: random reads at many offsets equal the plain
//! decompressed bytes, for gzip (one and several members, across restart points), zstd
//! (one frame and many) and uncompressed tar; entries come out as the tree expects.

use std::io::Write;
use std::sync::Arc;

use super::*;
use crate::toc::{Compression, EntryKind};
use veil_blob::{BlobSource, MemoryBlob};

/// Compressible but not trivial bytes: words from a small vocabulary, chosen by a
/// xorshift generator seeded with `seed`.
pub(crate) fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "veil", "layer", "chunk", "stream", "gzip", "zstd", "tar", "restart", "window", "cipher",
        "0x1f8b", "lorem", "ipsum", "\n", " ", "42", "offset",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        if x.is_multiple_of(11) {
            out.extend_from_slice(&x.to_le_bytes()[..3]);
        }
    }
    out.truncate(len);
    out
}

/// A tar with big files, a symlink, a hard link, a device, a whiteout, PAX xattrs and a
/// long name; returns it and the big files' contents by name.
fn sample_tar(big: usize) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "data/", std::io::empty()).unwrap();
    for (i, size) in [big, big / 3 + 7, 5, 0].into_iter().enumerate() {
        let name = format!("data/file{i}");
        let body = text(size, i as u64 + 1);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(size as u64);
        b.append_data(&mut h, &name, body.as_slice()).unwrap();
        files.push((name, body));
    }
    let long = format!("data/{}", "n".repeat(180));
    let body = text(3000, 99);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o600);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, &long, body.as_slice()).unwrap();
    files.push((long, body));
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "data/sym", "file0").unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "data/hard", "data/file2").unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "data/null", std::io::empty())
        .unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.color", &b"blue"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o644);
    b.append_data(&mut h, "data/.wh.gone", std::io::empty())
        .unwrap();
    (b.into_inner().unwrap(), files)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd_frames(data: &[u8], frame: usize) -> Vec<u8> {
    data.chunks(frame.max(1))
        .flat_map(|piece| zstd::stream::encode_all(piece, 3).unwrap())
        .collect()
}

/// Indexes `blob`, checks the entries, then reads many ranges of the uncompressed
/// stream and of each file's chunks.
async fn check(compression: StreamCompression, blob: Vec<u8>, tar: &[u8], min_points: usize) {
    let options = IndexOptions {
        spacing: 1 << 20,
        chunk_size: 256 << 10,
        ..IndexOptions::default()
    };
    let indexed = index_stream(compression, blob.as_slice(), &options).unwrap();
    assert_eq!(indexed.index.size, tar.len() as u64);
    assert!(
        indexed.index.restart_points() >= min_points,
        "{} restart points",
        indexed.index.restart_points()
    );
    let toc = &indexed.toc;
    let by_name = |n: &str| toc.entries.iter().find(|e| e.name == n).unwrap();
    assert_eq!(by_name("data/sym").kind, EntryKind::Symlink);
    assert_eq!(by_name("data/sym").link_name, "file0");
    assert_eq!(by_name("data/hard").kind, EntryKind::Hardlink);
    assert_eq!(by_name("data/hard").link_name, "data/file2");
    assert_eq!(by_name("data/null").kind, EntryKind::Char);
    assert_eq!(
        (
            by_name("data/null").dev_major,
            by_name("data/null").dev_minor
        ),
        (1, 3)
    );
    assert_eq!(by_name("data/.wh.gone").xattrs["user.color"], b"blue");
    // The file tree built from this TOC (veil-fusefs) resolves it; here: it is indexed.
    assert_eq!(by_name("data/file0").kind, EntryKind::Reg);

    let source = StreamedSource::new(Arc::new(MemoryBlob(blob)), indexed.index.clone());
    // Ranges of the stream, in a scrambled order, some crossing restart points.
    let size = tar.len() as u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..60u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let start = x % size;
        let len = (x >> 20) % (if i % 7 == 0 { 3 << 20 } else { 70_000 }) + 1;
        let end = (start + len).min(size);
        let got = source.read_range(start..end).await.unwrap();
        assert_eq!(
            got,
            &tar[start as usize..end as usize],
            "range {start}..{end}"
        );
    }
    // Every chunk of every file, backwards, checked against its digest.
    for entry in toc.entries.iter().filter(|e| e.kind == EntryKind::Reg) {
        let mut content = vec![0u8; entry.size as usize];
        for chunk in entry.chunks.iter().rev() {
            assert_eq!(chunk.compression, Compression::None);
            let bytes = source
                .read_range(chunk.blob_offset..chunk.blob_end)
                .await
                .unwrap();
            let decoded =
                crate::codec::decode_chunk(chunk, &bytes, &crate::limits::Limits::default())
                    .unwrap();
            content[chunk.file_offset as usize..][..decoded.len()].copy_from_slice(&decoded);
        }
        let start = entry.chunks.first().map_or(0, |c| c.blob_offset) as usize;
        assert_eq!(content, &tar[start..start + entry.size as usize]);
    }
    assert!(source.read_range(size..size + 1).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_single_member_random_reads_across_restart_points() {
    let (tar, _) = sample_tar(9 << 20);
    check(StreamCompression::Gzip, gzip(&tar), &tar, 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_several_members() {
    let (tar, _) = sample_tar(5 << 20);
    let mut blob = Vec::new();
    for piece in tar.chunks(1_234_567) {
        blob.extend_from_slice(&gzip(piece));
    }
    check(StreamCompression::Gzip, blob, &tar, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_many_frames() {
    let (tar, _) = sample_tar(6 << 20);
    check(StreamCompression::Zstd, zstd_frames(&tar, 300_000), &tar, 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_single_frame() {
    let (tar, _) = sample_tar(3 << 20);
    check(
        StreamCompression::Zstd,
        zstd_frames(&tar, usize::MAX),
        &tar,
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uncompressed_tar() {
    let (tar, _) = sample_tar(2 << 20);
    check(StreamCompression::None, tar.clone(), &tar, 0).await;
}

#[test]
fn damaged_streams_are_errors_not_panics() {
    let (tar, _) = sample_tar(1 << 20);
    let options = IndexOptions::default();
    let gz = gzip(&tar);
    assert!(index_stream(StreamCompression::Gzip, &gz[..gz.len() / 2], &options).is_err());
    let mut flipped = gz.clone();
    flipped[gz.len() / 3] ^= 0x55;
    flipped[gz.len() / 3 + 1] ^= 0x55;
    // Either the DEFLATE data or the tar stream it yields is refused.
    assert!(index_stream(StreamCompression::Gzip, flipped.as_slice(), &options).is_err());
    let zs = zstd_frames(&tar, usize::MAX);
    assert!(index_stream(StreamCompression::Zstd, &zs[..zs.len() - 10], &options).is_err());
    assert!(index_stream(StreamCompression::Gzip, &b"not gzip"[..], &options).is_err());
    assert!(index_stream(StreamCompression::None, &tar[..tar.len() / 2], &options).is_err());
}

#[test]
fn estargz_bookkeeping_is_dropped_when_asked() {
    let mut b = tar::Builder::new(Vec::new());
    for name in [
        "a",
        crate::estargz::PREFETCH_LANDMARK,
        crate::estargz::TOC_TAR_NAME,
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &b"x"[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let options = IndexOptions {
        drop_estargz_bookkeeping: true,
        ..IndexOptions::default()
    };
    let indexed = index_stream(StreamCompression::Gzip, gzip(&tar).as_slice(), &options).unwrap();
    let names: Vec<_> = indexed
        .toc
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["a"]);
}

#[test]
fn configured_limits_bound_depth_and_chunks() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(10_000);
    h.set_mode(0o644);
    b.append_data(&mut h, "a/b/c/f", &vec![7u8; 10_000][..])
        .unwrap();
    let tar = b.into_inner().unwrap();
    let defaults = IndexOptions::default();
    let indexed = index_stream(StreamCompression::None, tar.as_slice(), &defaults).unwrap();
    assert_eq!(indexed.toc.entries[0].chunks.len(), 1);
    // Chunks are cut no larger than the configured chunk limit.
    let small_chunks = IndexOptions {
        limits: crate::limits::Limits {
            max_chunk_size: 4096,
            ..crate::limits::Limits::default()
        },
        ..defaults
    };
    let indexed = index_stream(StreamCompression::None, tar.as_slice(), &small_chunks).unwrap();
    assert_eq!(indexed.toc.entries[0].chunks.len(), 3);
    // A path deeper than the configured depth is refused, naming the entry.
    let shallow = IndexOptions {
        limits: crate::limits::Limits {
            max_path_depth: 3,
            ..crate::limits::Limits::default()
        },
        ..defaults
    };
    let err = index_stream(StreamCompression::None, tar.as_slice(), &shallow).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("a/b/c/f")
            && shown.contains("MAX_PATH_DEPTH")
            && shown.contains("4 components"),
        "{shown}"
    );
}

#[test]
fn media_types() {
    let c = StreamCompression::from_media_type;
    assert_eq!(
        c("application/vnd.oci.image.layer.v1.tar+gzip"),
        Some(StreamCompression::Gzip)
    );
    assert_eq!(
        c("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Some(StreamCompression::Gzip)
    );
    assert_eq!(
        c("application/vnd.oci.image.layer.v1.tar+zstd"),
        Some(StreamCompression::Zstd)
    );
    assert_eq!(
        c("application/vnd.oci.image.layer.v1.tar"),
        Some(StreamCompression::None)
    );
    assert_eq!(c("application/vnd.wasm.content.layer.v1+wasm"), None);
}
