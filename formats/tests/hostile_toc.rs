//! Hostile eStargz TOCs, authentic (their digest is right) but built to cost: each is
//! refused when the TOC is loaded, with an error naming the entry and the limit
//! (`veil_formats::limits`), before any chunk is fetched.
//!
//! - a file of 1 GiB of zeros in one chunk, its digest correct (the blob really holds
//!   those zeros, as 1024 concatenated gzip members of 1 MiB): refused by
//!   `MAX_CHUNK_SIZE`; the same zeros cut into chunks of the limit load and decode;
//! - a one-byte chunk at `innerOffset` 10 GiB: refused by `MAX_CHUNK_SIZE`;
//! - a one-byte chunk whose compressed range spans 40 MiB of the blob (every read of it
//!   would fetch them): refused by `MAX_COMPRESSED_CHUNK_SIZE`; the same file with a
//!   range of the limit loads;
//! - an entry 30,000 directories deep: refused by `MAX_PATH_DEPTH`, quickly, with an
//!   error that does not repeat the 60 KB name; an entry exactly at the limit loads;
//! - a TOC the default limits accept is refused, naming the limit, once a smaller limit
//!   is configured (`veil_formats::limits::Limits`, the daemon's `[limits]` keys), and a
//!   chunk over the configured limit is refused by the decoder too;
//! - and a real layer's index stays well inside its memory budget.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use sha2::{Digest as _, Sha256};
use veil_blob::MemoryBlob;
use veil_formats::classify::{read_layer_toc, LazyFormat};
use veil_formats::codec::{decode_chunk, sha256_digest, CodecError};
use veil_formats::estargz::{self, footer_bytes, BuildOptions, FormatError, TOC_TAR_NAME};
use veil_formats::limits::{
    index_bytes, Limits, MAX_CHUNK_SIZE, MAX_COMPRESSED_CHUNK_SIZE, MAX_INDEX_BYTES_PER_TOC_BYTE,
    MAX_PATH_DEPTH,
};
use veil_formats::toc::LayerToc;

/// `sha256:` of 1 GiB of zero bytes (`head -c 1G /dev/zero | sha256sum`).
const ONE_GIB_OF_ZEROS: &str =
    "sha256:49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// An eStargz blob: `payload` (gzip members), then a TOC member holding `toc_json`, then
/// the footer. Returns the blob and the TOC digest its annotation would carry.
fn estargz_blob(payload: &[u8], toc_json: &str) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(toc_json.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, TOC_TAR_NAME, toc_json.as_bytes())
        .unwrap();
    let member = gzip(&tar.into_inner().unwrap());
    let mut blob = payload.to_vec();
    let toc_offset = blob.len() as u64;
    blob.extend_from_slice(&member);
    blob.extend_from_slice(&footer_bytes(toc_offset));
    (blob, sha256_digest(toc_json.as_bytes()))
}

/// Reads the TOC of `blob` as the daemon does, against its (correct) digest, and how
/// long that took.
fn load(blob: Vec<u8>, digest: &str) -> (Result<LayerToc, FormatError>, Duration) {
    let start = Instant::now();
    let toc = block_on(estargz::read_toc(&MemoryBlob(blob), Some(digest)));
    (toc, start.elapsed())
}

/// The limit named by a refused TOC, and the entry it names; panics otherwise.
fn refused(toc: Result<LayerToc, FormatError>) -> (&'static str, String, String) {
    match toc {
        Err(e @ FormatError::Limit { .. }) => {
            let shown = e.to_string();
            let FormatError::Limit { limit, name, .. } = e else {
                unreachable!()
            };
            (limit, name, shown)
        }
        other => panic!("expected the TOC to be refused by a limit, got {other:?}"),
    }
}

fn toc_of(entries: &[String]) -> String {
    format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","))
}

#[test]
fn a_gigabyte_chunk_of_zeros_is_refused_at_toc_load() {
    // 1 GiB of zeros as 1024 concatenated 1 MiB gzip members (one member decompresses
    // to 1 MiB; a gzip decoder reads concatenated members as one stream).
    let one_mib = gzip(&vec![0u8; 1 << 20]);
    let payload: Vec<u8> = one_mib.repeat(1024);
    assert!(
        payload.len() < 2 << 20,
        "the bomb is small: {}",
        payload.len()
    );
    let gib = 1u64 << 30;
    let json = toc_of(&[
        r#"{"name":"data/","type":"dir","mode":493}"#.into(),
        format!(
            r#"{{"name":"data/zeros","type":"reg","size":{gib},"mode":420,"offset":0,"digest":"{ONE_GIB_OF_ZEROS}","chunkDigest":"{ONE_GIB_OF_ZEROS}"}}"#
        ),
    ]);
    let (blob, digest) = estargz_blob(&payload, &json);
    let (toc, took) = load(blob, &digest);
    let (limit, name, shown) = refused(toc);
    eprintln!("refused in {took:.2?}: {shown}");
    assert_eq!((limit, name.as_str()), ("MAX_CHUNK_SIZE", "data/zeros"));
    assert!(shown.contains("data/zeros") && shown.contains(&gib.to_string()));

    // The same zeros in chunks of the limit (16 members each) load, and a chunk decodes.
    let per_chunk = (MAX_CHUNK_SIZE >> 20) as usize;
    let chunk_digest = sha256_digest(&vec![0u8; MAX_CHUNK_SIZE as usize]);
    let mut entries = vec![format!(
        r#"{{"name":"data/zeros","type":"reg","size":{gib},"offset":0,"chunkSize":{MAX_CHUNK_SIZE},"digest":"{ONE_GIB_OF_ZEROS}","chunkDigest":"{chunk_digest}"}}"#
    )];
    for k in 1..(gib / MAX_CHUNK_SIZE) as usize {
        entries.push(format!(
            r#"{{"name":"data/zeros","type":"chunk","offset":{},"chunkOffset":{},"chunkSize":{MAX_CHUNK_SIZE},"chunkDigest":"{chunk_digest}"}}"#,
            k * per_chunk * one_mib.len(),
            k as u64 * MAX_CHUNK_SIZE
        ));
    }
    let (blob, digest) = estargz_blob(&payload, &toc_of(&entries));
    let (toc, _) = load(blob.clone(), &digest);
    let toc = toc.expect("chunks of the limit are accepted");
    let chunk = &toc.entries[0].chunks[5];
    let member = &blob[chunk.blob_offset as usize..chunk.blob_end as usize];
    let data = decode_chunk(chunk, member, &Limits::default()).unwrap();
    assert_eq!(data.len() as u64, MAX_CHUNK_SIZE);
}

#[test]
fn an_inner_offset_of_ten_gigabytes_is_refused_at_toc_load() {
    let payload = gzip(b"x");
    let ten_gib = 10u64 << 30;
    let json = toc_of(&[format!(
        r#"{{"name":"one","type":"reg","size":1,"offset":0,"innerOffset":{ten_gib},"chunkDigest":"{}"}}"#,
        sha256_digest(b"x")
    )]);
    let (blob, digest) = estargz_blob(&payload, &json);
    let (limit, name, shown) = refused(load(blob, &digest).0);
    eprintln!("{shown}");
    assert_eq!((limit, name.as_str()), ("MAX_CHUNK_SIZE", "one"));
    assert!(shown.contains("innerOffset") && shown.contains(&ten_gib.to_string()));
}

/// A TOC of file `one` (the byte `x`, at offset 0) and file `two` (the byte `y`) whose
/// member starts `gap` bytes after `one`'s: `one`'s compressed range is that long.
fn spread_blob(gap: usize) -> (Vec<u8>, String) {
    let (x, y) = (gzip(b"x"), gzip(b"y"));
    assert!(gap >= x.len());
    let mut payload = x;
    payload.resize(gap, 0);
    payload.extend_from_slice(&y);
    let json = toc_of(&[
        format!(
            r#"{{"name":"one","type":"reg","size":1,"offset":0,"chunkDigest":"{}"}}"#,
            sha256_digest(b"x")
        ),
        format!(
            r#"{{"name":"two","type":"reg","size":1,"offset":{gap},"chunkDigest":"{}"}}"#,
            sha256_digest(b"y")
        ),
    ]);
    estargz_blob(&payload, &json)
}

#[test]
fn a_chunk_spanning_forty_mebibytes_of_the_blob_is_refused_at_toc_load() {
    let gap = 40 << 20;
    let (blob, digest) = spread_blob(gap);
    let (toc, took) = load(blob, &digest);
    let (limit, name, shown) = refused(toc);
    eprintln!("refused in {took:.2?}: {shown}");
    assert_eq!((limit, name.as_str()), ("MAX_COMPRESSED_CHUNK_SIZE", "one"));
    assert!(shown.contains(&format!("0..{gap}")), "{shown}");

    // At the limit, it loads.
    let (blob, digest) = spread_blob(MAX_COMPRESSED_CHUNK_SIZE as usize);
    let toc = load(blob, &digest)
        .0
        .expect("a range of the limit is accepted");
    assert_eq!(toc.entries[0].chunks[0].blob_end, MAX_COMPRESSED_CHUNK_SIZE);
}

#[test]
fn a_path_thirty_thousand_directories_deep_is_refused_at_toc_load() {
    let deep = vec!["d"; 30_000].join("/");
    let json = toc_of(&[
        r#"{"name":"etc/","type":"dir","mode":493}"#.into(),
        format!(r#"{{"name":"{deep}/f","type":"reg","size":0,"mode":420}}"#),
    ]);
    let (blob, digest) = estargz_blob(&gzip(b""), &json);
    let (toc, took) = load(blob, &digest);
    let (limit, name, shown) = refused(toc);
    eprintln!("refused in {took:.2?}: {shown}");
    assert_eq!(limit, "MAX_PATH_DEPTH");
    assert!(name.starts_with("d/d/d/") && name.len() < 300, "{name}");
    assert!(shown.contains("30001 components") && shown.len() < 600);
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // At the limit: loaded.
    let at_limit = vec!["d"; MAX_PATH_DEPTH - 1].join("/");
    let json = toc_of(&[format!(
        r#"{{"name":"{at_limit}/f","type":"reg","size":0}}"#
    )]);
    let (blob, digest) = estargz_blob(&gzip(b""), &json);
    let toc = load(blob, &digest)
        .0
        .expect("a path at the depth limit loads");
    assert_eq!(toc.entries.len(), 1);
}

#[test]
fn a_real_layers_index_is_well_inside_its_budget() {
    let (tar, _) = common::sample_layer_tar();
    let (blob, out) = estargz::build_to_vec(
        std::io::Cursor::new(tar),
        &BuildOptions {
            chunk_size: 1 << 20,
            ..BuildOptions::default()
        },
    )
    .unwrap();
    // The TOC JSON's length, from the TOC member the footer points at.
    let tail = &blob[blob.len() - estargz::FOOTER_SIZE as usize..];
    let (offset, footer) = estargz::parse_footer(tail).unwrap();
    let member = &blob[offset as usize..blob.len() - footer as usize];
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(member));
    let mut json = Vec::new();
    archive
        .entries()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .read_to_end(&mut json)
        .unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&json))),
        out.toc_digest
    );
    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    let used: u64 = toc.entries.iter().map(index_bytes).sum();
    let ratio = used as f64 / json.len() as f64;
    eprintln!(
        "{} entries: {used} bytes of index for {} bytes of TOC ({ratio:.2}x; budget {MAX_INDEX_BYTES_PER_TOC_BYTE}x)",
        toc.entries.len(),
        json.len()
    );
    assert!(ratio * 2.0 < MAX_INDEX_BYTES_PER_TOC_BYTE as f64);
}

/// Reads the TOC of `blob` through [`read_layer_toc`] (the daemon's path) under `limits`.
fn load_with(blob: &[u8], digest: &str, limits: &Limits) -> Result<LayerToc, FormatError> {
    let format = LazyFormat::Estargz {
        toc_digest: digest.to_owned(),
    };
    block_on(read_layer_toc(
        &MemoryBlob(blob.to_vec()),
        &format,
        limits,
        veil_formats::estargz::DEFAULT_TOC_TAIL_BYTES,
    ))
}

#[test]
fn smaller_configured_limits_refuse_what_the_defaults_accept() {
    let defaults = Limits::default();
    // A 64 KiB file in one chunk, three directories deep, whose member spans 80 KiB.
    let data = vec![b'v'; 64 << 10];
    let mut payload = gzip(&data);
    payload.resize(80 << 10, 0);
    let json = toc_of(&[format!(
        r#"{{"name":"a/b/c/f","type":"reg","size":{},"offset":0,"chunkDigest":"{}"}}"#,
        data.len(),
        sha256_digest(&data)
    )]);
    let (blob, digest) = estargz_blob(&payload, &json);
    let toc = load_with(&blob, &digest, &defaults).expect("the defaults accept it");
    let chunk = toc.entries[0].chunks[0].clone();
    let member = &blob[chunk.blob_offset as usize..chunk.blob_end as usize];
    assert_eq!(decode_chunk(&chunk, member, &defaults).unwrap(), data);

    let cases = [
        (
            Limits {
                max_chunk_size: 32 << 10,
                ..defaults
            },
            "MAX_CHUNK_SIZE",
            "more than 32768",
        ),
        (
            Limits {
                max_compressed_chunk_size: 64 << 10,
                ..defaults
            },
            "MAX_COMPRESSED_CHUNK_SIZE",
            "more than 65536",
        ),
        (
            Limits {
                max_path_depth: 3,
                ..defaults
            },
            "MAX_PATH_DEPTH",
            "4 components deep, more than 3",
        ),
    ];
    for (limits, want, says) in cases {
        let (limit, name, shown) = refused(load_with(&blob, &digest, &limits));
        assert_eq!((limit, name.as_str()), (want, "a/b/c/f"), "{shown}");
        assert!(shown.contains(says), "{shown}");
    }

    // Index memory: 20,000 tiny entries cost about five bytes of index per TOC byte,
    // inside the default eight, over a configured one (a few MiB, past the 1 MiB floor).
    let entries: Vec<String> = (0..20_000)
        .map(|i| format!(r#"{{"name":"{i:x}","type":"fifo"}}"#))
        .collect();
    let json = toc_of(&entries);
    let (blob, digest) = estargz_blob(&gzip(b""), &json);
    assert!(load_with(&blob, &digest, &defaults).is_ok());
    let tight = Limits {
        max_index_bytes_per_toc_byte: 1,
        ..defaults
    };
    let (limit, _, shown) = refused(load_with(&blob, &digest, &tight));
    assert_eq!(limit, "MAX_INDEX_BYTES_PER_TOC_BYTE", "{shown}");

    // The decoder applies the configured chunk limit too, whatever the TOC said.
    let small = Limits {
        max_chunk_size: 32 << 10,
        ..defaults
    };
    match decode_chunk(&chunk, member, &small) {
        Err(CodecError::TooLarge { size, max, .. }) => {
            assert_eq!((size, max), (64 << 10, 32 << 10))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}
