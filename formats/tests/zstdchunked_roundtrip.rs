//! zstd:chunked writer → reader round trips (current and legacy variants), tar-split
//! reconstruction, validity as a tar.zst, and tampered blobs.

mod common;

use std::io::{Cursor, Read};
use std::process::Command;

use base64::Engine as _;
use futures::executor::block_on;
use veil_blob::MemoryBlob;
use veil_formats::codec::sha256_digest;
use veil_formats::estargz::FormatError;
use veil_formats::toc::{EntryKind, Format};
use veil_formats::zstdchunked::{self, ManifestInfo, Variant, ZstdBuildOptions};

fn build(tar: &[u8], variant: Variant) -> (Vec<u8>, zstdchunked::ZstdBuildOutput) {
    let opts = ZstdBuildOptions {
        chunk_size: 1 << 20,
        variant,
        ..ZstdBuildOptions::default()
    };
    zstdchunked::build_to_vec(Cursor::new(tar), &opts).unwrap()
}

fn decompress(blob: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(blob)
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    plain
}

#[test]
fn current_variant_round_trip() {
    let (tar, files) = common::sample_layer_tar();
    let (blob, out) = build(&tar, Variant::Current);
    assert_eq!(out.blob_size, blob.len() as u64);
    assert_eq!(out.blob_digest, sha256_digest(&blob));
    assert_eq!(
        out.annotations
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        [
            zstdchunked::MANIFEST_CHECKSUM_ANNOTATION,
            zstdchunked::MANIFEST_POSITION_ANNOTATION,
            zstdchunked::TARSPLIT_POSITION_ANNOTATION
        ]
    );
    let info = ManifestInfo::from_annotations(&out.annotations).unwrap();
    assert_eq!(
        info.checksum.as_deref(),
        Some(out.manifest_checksum.as_str())
    );
    let toc = block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &info)).unwrap();
    assert_eq!(toc.format, Format::ZstdChunked);
    assert_eq!(common::decode_all(&toc, &blob), files);
    assert!(toc.entries.iter().all(|e| !e.name.contains("landmark")));
    let find = |name: &str| toc.entries.iter().find(|e| e.name == name).unwrap();
    assert_eq!(find("usr/bin/tool").chunks.len(), 10);
    assert_eq!(find("etc/hostname.hard").kind, EntryKind::Hardlink);
    assert_eq!(find("var/.wh.removed").kind, EntryKind::Reg);
    assert_eq!(find("etc/with-xattr").xattrs["user.veil"], b"yes");

    // Without annotations, the footer leads to the same TOC.
    let from_footer = block_on(zstdchunked::read_toc(
        &MemoryBlob(blob.clone()),
        &ManifestInfo::default(),
    ))
    .unwrap();
    assert_eq!(from_footer, toc);

    // The whole blob is one valid zstd stream of the tar, and the diff ID is its digest.
    let plain = decompress(&blob);
    assert_eq!(out.diff_id, sha256_digest(&plain));
    assert_eq!(out.uncompressed_size, plain.len() as u64);
    let mut archive = tar::Archive::new(&plain[..]);
    let mut seen = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if let Some(want) = files.get(&name) {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(&data, want, "{name}");
            seen += 1;
        }
    }
    assert_eq!(seen, files.len());
    assert_eq!(
        &plain[..tar.len() - 1024],
        &tar[..tar.len() - 1024],
        "headers and payloads copied as they were"
    );

    // tar-split rebuilds the exact uncompressed stream from the file contents.
    let pos: Vec<u64> = out.annotations[zstdchunked::TARSPLIT_POSITION_ANNOTATION]
        .split(':')
        .map(|p| p.parse().unwrap())
        .collect();
    let frame = &blob[pos[0] as usize..(pos[0] + pos[1]) as usize];
    let lines = decompress(frame);
    assert_eq!(lines.len() as u64, pos[2]);
    let mut rebuilt = Vec::new();
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        match v["type"].as_u64().unwrap() {
            2 => rebuilt.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(v["payload"].as_str().unwrap())
                    .unwrap(),
            ),
            1 => {
                let name = v["name"].as_str().unwrap();
                if v["size"].as_u64().unwrap_or(0) > 0 {
                    rebuilt.extend(&files[name]);
                }
            }
            t => panic!("type {t}"),
        }
    }
    assert_eq!(rebuilt, plain);
}

#[test]
fn legacy_variant_round_trip() {
    let (tar, files) = common::sample_layer_tar();
    let (blob, out) = build(&tar, Variant::Legacy);
    assert!(out
        .annotations
        .contains_key(zstdchunked::LEGACY_MANIFEST_POSITION_ANNOTATION));
    assert_eq!(&blob[blob.len() - 8..], b"GnUlInUx");
    let mut info = ManifestInfo::from_annotations(&out.annotations).unwrap();
    info.toc_digest = Some(out.toc_digest.clone());
    let toc = block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &info)).unwrap();
    assert_eq!(common::decode_all(&toc, &blob), files);
    let from_footer = block_on(zstdchunked::read_toc(
        &MemoryBlob(blob.clone()),
        &ManifestInfo::default(),
    ))
    .unwrap();
    assert_eq!(from_footer, toc);
}

#[test]
fn deterministic_and_a_valid_tar_zst_for_system_tools() {
    let (tar, files) = common::sample_layer_tar();
    let a = build(&tar, Variant::Current);
    assert_eq!(a, build(&tar, Variant::Current));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar.zst");
    std::fs::write(&path, &a.0).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -t", path.display()))
        .output()
        .expect("running zstd and tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    for name in files.keys() {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} not in\n{listing}"
        );
    }
}

#[test]
fn prioritized_files_and_landmark() {
    let (tar, files) = common::sample_layer_tar();
    let opts = ZstdBuildOptions {
        prioritized_files: vec!["etc/hostname".into()],
        ..ZstdBuildOptions::default()
    };
    let (blob, out) = zstdchunked::build_to_vec(Cursor::new(&tar), &opts).unwrap();
    let info = ManifestInfo::from_annotations(&out.annotations).unwrap();
    let toc = block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &info)).unwrap();
    assert_eq!(toc.entries[0].name, "etc");
    assert_eq!(toc.entries[1].name, "etc/hostname");
    let end = toc.prefetch_end.expect("landmark");
    assert!(toc.entries[1].chunks[0].blob_end <= end);
    assert_eq!(common::decode_all(&toc, &blob), files);
}

#[test]
fn tampered_toc_and_wrong_checksums_are_rejected() {
    let (tar, _) = common::sample_layer_tar();
    let (blob, out) = build(&tar, Variant::Current);
    let info = ManifestInfo::from_annotations(&out.annotations).unwrap();

    let wrong = format!("sha256:{}", "cd".repeat(32));
    let mut bad_info = info.clone();
    bad_info.checksum = Some(wrong.clone());
    let err = block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &bad_info)).unwrap_err();
    assert!(
        matches!(err, FormatError::TocDigestMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&wrong) && err.to_string().contains(&out.manifest_checksum));

    let mut bad_info = info.clone();
    bad_info.toc_digest = Some(wrong.clone());
    assert!(block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &bad_info)).is_err());

    // Any flipped byte of the compressed TOC fails the checksum.
    let pos = info.position.unwrap();
    for i in (pos.offset..pos.offset + pos.compressed_len).step_by(11) {
        let mut bad = blob.clone();
        bad[i as usize] ^= 0x04;
        let err = block_on(zstdchunked::read_toc(&MemoryBlob(bad.clone()), &info)).unwrap_err();
        assert!(
            matches!(err, FormatError::TocDigestMismatch { .. }),
            "{err}"
        );
        // Without a checksum it may parse, but never into a different TOC silently
        // passing off other chunk digests: either an error or JSON that still validates.
        let _ = block_on(zstdchunked::read_toc(
            &MemoryBlob(bad),
            &ManifestInfo::default(),
        ));
    }

    // Positions outside the blob, wrong types and garbage are errors.
    for bad_pos in [
        format!("{}:{}:{}:1", blob.len(), 10, 10),
        format!("{}:{}:{}:1", pos.offset, u64::MAX, 10),
        format!(
            "{}:{}:{}:2",
            pos.offset, pos.compressed_len, pos.uncompressed_len
        ),
        format!("{}:{}:{}:1", pos.offset, pos.compressed_len, 1u64 << 40),
        format!("3:{}:{}:1", pos.compressed_len, pos.uncompressed_len),
    ] {
        let ann = [(zstdchunked::MANIFEST_POSITION_ANNOTATION, bad_pos.as_str())];
        let info = ManifestInfo::from_annotations(ann).unwrap();
        assert!(
            block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &info)).is_err(),
            "{bad_pos}"
        );
    }
    for garbage in [
        Vec::new(),
        vec![0u8; 10],
        vec![0u8; 200],
        blob[..blob.len() - 3].to_vec(),
    ] {
        assert!(block_on(zstdchunked::read_toc(
            &MemoryBlob(garbage),
            &ManifestInfo::default()
        ))
        .is_err());
    }
}
