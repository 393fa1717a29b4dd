//! eStargz writer → reader round trips, determinism, tar.gz validity, prioritized files,
//! and tampered or hostile blobs.

mod common;

use std::io::{Cursor, Write};
use std::process::{Command, Stdio};

use futures::executor::block_on;
use veil_blob::MemoryBlob;
use veil_formats::codec::{decode_chunk, CodecError};
use veil_formats::estargz::{self, BuildOptions, FormatError};
use veil_formats::limits::Limits;
use veil_formats::toc::{EntryKind, Format};

fn build(tar: &[u8], opts: &BuildOptions) -> (Vec<u8>, estargz::BuildOutput) {
    estargz::build_to_vec(Cursor::new(tar), opts).unwrap()
}

#[test]
fn round_trip_every_entry_and_byte() {
    let (tar, files) = common::sample_layer_tar();
    let opts = BuildOptions {
        chunk_size: 1 << 20,
        ..BuildOptions::default()
    };
    let (blob, out) = build(&tar, &opts);
    assert_eq!(out.blob_size, blob.len() as u64);
    assert_eq!(out.blob_digest, veil_formats::codec::sha256_digest(&blob));
    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    assert_eq!(toc.format, Format::Estargz);
    assert_eq!(toc.blob_size, blob.len() as u64);
    assert_eq!(toc.prefetch_end, None, "no prioritized files");
    assert_eq!(common::decode_all(&toc, &blob), files);

    let find = |name: &str| toc.entries.iter().find(|e| e.name == name).unwrap();
    let tool = find("usr/bin/tool");
    assert_eq!(tool.chunks.len(), 10);
    assert_eq!(tool.mode, 0o4755);
    assert_eq!(
        (tool.uid, tool.gid, tool.mtime),
        (1000, 1000, 1_700_000_001)
    );
    assert_eq!(find("usr/bin").kind, EntryKind::Dir);
    assert_eq!(find("usr/bin/link").kind, EntryKind::Symlink);
    assert_eq!(find("usr/bin/link").link_name, "tool");
    let hard = find("etc/hostname.hard");
    assert_eq!(
        (hard.kind, hard.link_name.as_str()),
        (EntryKind::Hardlink, "etc/hostname")
    );
    assert_eq!(find("var/.wh.removed").kind, EntryKind::Reg);
    assert_eq!(find("usr/.wh..wh..opq").kind, EntryKind::Reg);
    assert_eq!(find("etc/with-xattr").xattrs["user.veil"], b"yes");
    assert!(toc.entries.iter().all(|e| !e.name.contains("landmark")));

    let ann = out.annotations();
    assert_eq!(ann[estargz::TOC_DIGEST_ANNOTATION], out.toc_digest);
    assert_eq!(
        ann[estargz::UNCOMPRESSED_SIZE_ANNOTATION],
        out.uncompressed_size.to_string()
    );

    // The diff ID is the digest of the whole uncompressed stream.
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(&blob[..]),
        &mut plain,
    )
    .unwrap();
    assert_eq!(out.diff_id, veil_formats::codec::sha256_digest(&plain));
    assert_eq!(out.uncompressed_size, plain.len() as u64);
}

#[test]
fn deterministic() {
    let (tar, _) = common::sample_layer_tar();
    let a = build(&tar, &BuildOptions::default());
    let b = build(&tar, &BuildOptions::default());
    assert_eq!(a, b);
}

#[test]
fn system_tar_lists_it_as_a_tar_gz() {
    let (tar, files) = common::sample_layer_tar();
    let (blob, _) = build(&tar, &BuildOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar.gz");
    std::fs::write(&path, &blob).unwrap();
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .expect("running the system tar");
    assert!(out.status.success(), "tar -tzf failed");
    let listing = String::from_utf8(out.stdout).unwrap();
    for name in files.keys() {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} not in\n{listing}"
        );
    }
    assert!(listing.lines().any(|l| l == "stargz.index.json"));
    // Extract and compare contents too.
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&path)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success());
    for (name, data) in &files {
        assert_eq!(
            &std::fs::read(dir.path().join(name)).unwrap(),
            data,
            "{name}"
        );
    }
}

#[test]
fn prioritized_files_come_first() {
    let (tar, files) = common::sample_layer_tar();
    let opts = BuildOptions {
        prioritized_files: vec!["usr/bin/small".into(), "etc/hostname.hard".into()],
        ..BuildOptions::default()
    };
    let (blob, out) = build(&tar, &opts);
    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    let names: Vec<_> = toc
        .entries
        .iter()
        .take(5)
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["usr", "usr/bin", "usr/bin/small", "etc", "etc/hostname"]
    );
    let end = toc.prefetch_end.expect("prefetch landmark");
    let small = &toc.entries[2];
    assert!(small.chunks.iter().all(|c| c.blob_end <= end));
    assert_eq!(common::decode_all(&toc, &blob), files);

    let missing = BuildOptions {
        prioritized_files: vec!["nope".into()],
        ..BuildOptions::default()
    };
    let err = estargz::build_to_vec(Cursor::new(&tar), &missing).unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[test]
fn tampered_toc_and_wrong_digest_are_rejected() {
    let (tar, _) = common::sample_layer_tar();
    let (blob, out) = build(&tar, &BuildOptions::default());
    let toc_offset = estargz::parse_footer(&blob[blob.len() - 51..]).unwrap().0 as usize;

    // A wrong expected digest names both digests.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let err = block_on(estargz::read_toc(&MemoryBlob(blob.clone()), Some(&wrong))).unwrap_err();
    match &err {
        FormatError::TocDigestMismatch { expected, actual } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &out.toc_digest);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains(&wrong) && err.to_string().contains(&out.toc_digest));

    // A malformed expected digest.
    assert!(matches!(
        block_on(estargz::read_toc(&MemoryBlob(blob.clone()), Some("md5:00"))),
        Err(FormatError::BadExpectedDigest(_))
    ));

    // Re-compress the TOC JSON with one byte changed: decompresses fine, digest differs.
    let mut json = Vec::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&blob[toc_offset..]));
    std::io::Read::read_to_end(
        &mut archive.entries().unwrap().next().unwrap().unwrap(),
        &mut json,
    )
    .unwrap();
    let pos = json
        .windows(6)
        .position(|w| w == b"veil\n\"")
        .unwrap_or(json.len() / 2);
    json[pos] ^= 0x01;
    let mut toc_tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    toc_tar
        .append_data(&mut h, "stargz.index.json", &json[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&toc_tar.into_inner().unwrap()).unwrap();
    let mut tampered = blob[..toc_offset].to_vec();
    tampered.extend(gz.finish().unwrap());
    tampered.extend_from_slice(&blob[blob.len() - 51..]);
    let err = block_on(estargz::read_toc(
        &MemoryBlob(tampered),
        Some(&out.toc_digest),
    ))
    .unwrap_err();
    assert!(
        matches!(err, FormatError::TocDigestMismatch { .. }),
        "{err}"
    );

    // Flipping any byte of the stored TOC member: an error, or (for bytes that do not
    // carry the JSON, such as the gzip header's OS byte) the very same TOC. A small
    // layer keeps this loop quick.
    let mut small = tar::Builder::new(Vec::new());
    for (i, name) in ["a", "b/c", "d"].iter().enumerate() {
        let mut h = tar::Header::new_ustar();
        h.set_size(3 + i as u64);
        h.set_mode(0o644);
        small.append_data(&mut h, name, &b"hello"[..3 + i]).unwrap();
    }
    let (blob, out) = build(&small.into_inner().unwrap(), &BuildOptions::default());
    let toc_offset = estargz::parse_footer(&blob[blob.len() - 51..]).unwrap().0 as usize;
    let good = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    let mut rejected = 0;
    for i in toc_offset..blob.len() - 51 {
        let mut bad = blob.clone();
        bad[i] ^= 0x20;
        match block_on(estargz::read_toc(&MemoryBlob(bad), Some(&out.toc_digest))) {
            Ok(toc) => assert_eq!(toc, good, "flip at {i} changed the TOC"),
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 0);
}

#[test]
fn flipped_chunk_byte_is_a_digest_mismatch() {
    let (tar, _) = common::sample_layer_tar();
    // Level 0 stores the payload, so a flipped byte survives decompression.
    let opts = BuildOptions {
        level: Some(0),
        ..BuildOptions::default()
    };
    let (mut blob, out) = build(&tar, &opts);
    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    let e = toc
        .entries
        .iter()
        .find(|e| e.name == "usr/bin/small")
        .unwrap();
    let c = &e.chunks[0];
    blob[c.blob_offset as usize + 100] ^= 0x01;
    let err = decode_chunk(
        c,
        &blob[c.blob_offset as usize..c.blob_end as usize],
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, CodecError::DigestMismatch { .. }), "{err}");
}

#[test]
fn hostile_blobs_are_errors() {
    let (tar, _) = common::sample_layer_tar();
    let (blob, _) = build(&tar, &BuildOptions::default());
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0u8; 10],
        vec![0u8; 4096],
        blob[..blob.len() - 1].to_vec(),
        blob[blob.len() / 2..].to_vec(),
        {
            // Footer pointing past the end.
            let mut b = blob[..blob.len() - 51].to_vec();
            b.extend_from_slice(&footer_for(u64::MAX / 2));
            b
        },
        {
            // Footer pointing at offset 0: a payload member, not a TOC.
            let mut b = blob[..blob.len() - 51].to_vec();
            b.extend_from_slice(&footer_for(0));
            b
        },
    ];
    for (i, bad) in cases.into_iter().enumerate() {
        assert!(
            block_on(estargz::read_toc(&MemoryBlob(bad), None)).is_err(),
            "case {i}"
        );
    }
}

fn footer_for(offset: u64) -> Vec<u8> {
    // Build a real blob from an empty tar and patch its footer's offset.
    let (blob, _) =
        estargz::build_to_vec(Cursor::new(vec![0u8; 1024]), &BuildOptions::default()).unwrap();
    let mut f = blob[blob.len() - 51..].to_vec();
    f[16..32].copy_from_slice(format!("{offset:016x}").as_bytes());
    f
}
