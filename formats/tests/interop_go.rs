//! Interoperability with the reference Go implementation
//! (github.com/containerd/stargz-snapshotter/estargz, Debian package
//! golang-github-containerd-stargz-snapshotter-dev), driven through the small program in
//! tests/go/src/veil.test/estargzcheck:
//!
//! - Go builds eStargz and (stargz-snapshotter's) zstd:chunked blobs; Veil reads their
//!   TOCs with the right digests and decodes every chunk to the tar's bytes.
//! - Veil builds eStargz and legacy zstd:chunked blobs; Go opens them, checks the TOC
//!   digest and every chunk digest, and reads identical contents.
//!
//! These tests need `go` and the Debian package; they fail (never skip) without them.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use futures::executor::block_on;
use serde_json::Value;
use veil_blob::MemoryBlob;
use veil_formats::codec::sha256_digest;
use veil_formats::estargz::{self, BuildOptions};
use veil_formats::toc::EntryKind;
use veil_formats::zstdchunked::{self, ManifestInfo, Variant, ZstdBuildOptions};

const STARGZ_PKG: &str = "/usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Build the Go checker once per test process.
fn checker() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        assert!(
            Path::new(STARGZ_PKG).is_dir(),
            "the reference eStargz Go package is missing at {STARGZ_PKG}: \
             apt-get install golang-github-containerd-stargz-snapshotter-dev"
        );
        let root = workspace();
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("estargzcheck");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("veil.test/estargzcheck")
            .env("GO111MODULE", "off")
            .env(
                "GOPATH",
                format!("/usr/share/gocode:{}", root.join("tests/go").display()),
            )
            .env("GOCACHE", root.join("target/go-cache"))
            .env("GOFLAGS", "")
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `go` ({e}): install golang-go to run the interop tests")
            });
        assert!(
            status.success(),
            "go build of veil.test/estargzcheck failed"
        );
        out
    })
}

fn run_checker(args: &[&str]) -> Value {
    let out = Command::new(checker())
        .args(args)
        .output()
        .expect("running estargzcheck");
    assert!(
        out.status.success(),
        "estargzcheck {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("estargzcheck prints JSON")
}

struct Fixture {
    dir: tempfile::TempDir,
    tar: Vec<u8>,
    files: BTreeMap<String, Vec<u8>>,
}

fn fixture() -> Fixture {
    let (tar, files) = common::sample_layer_tar();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("layer.tar"), &tar).unwrap();
    Fixture { dir, tar, files }
}

impl Fixture {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Go's view of a blob: verified file list, by name.
    fn go_verify(&self, blob: &[u8], toc_digest: &str) -> BTreeMap<String, Value> {
        let path = self.path("veil.blob");
        std::fs::write(&path, blob).unwrap();
        let v = run_checker(&["verify", &path, toc_digest]);
        assert_eq!(v["tocDigest"], toc_digest);
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap().to_owned(), f.clone()))
            .collect()
    }

    fn assert_go_sees_the_files(&self, go: &BTreeMap<String, Value>) {
        for (name, data) in &self.files {
            let f = go
                .get(name)
                .unwrap_or_else(|| panic!("Go does not list {name}"));
            assert_eq!(f["type"], "reg", "{name}");
            assert_eq!(f["size"].as_u64().unwrap(), data.len() as u64, "{name}");
            if !data.is_empty() {
                assert_eq!(f["sha256"].as_str().unwrap(), sha256_digest(data), "{name}");
            }
        }
        assert_eq!(go["usr/bin/link"]["type"], "symlink");
        assert_eq!(go["usr/bin/link"]["linkName"], "tool");
        // Go resolves hard links to their target entry.
        assert_eq!(
            go["etc/hostname.hard"]["sha256"].as_str().unwrap(),
            sha256_digest(b"veil\n")
        );
        assert_eq!(
            go["usr/bin/tool"]["chunks"].as_u64().unwrap(),
            10,
            "1 MiB chunks"
        );
        assert_eq!(go["usr/bin"]["type"], "dir");
    }
}

#[test]
fn go_estargz_is_read_by_veil() {
    let fx = fixture();
    let blob_path = fx.path("go.estargz");
    let res = run_checker(&[
        "build",
        &fx.path("layer.tar"),
        &blob_path,
        "--chunk-size",
        "1048576",
    ]);
    let toc_digest = res["tocDigest"].as_str().unwrap();
    let blob = std::fs::read(&blob_path).unwrap();

    // Byte for byte the footer Veil writes.
    let (toc_offset, footer_len) = estargz::parse_footer(&blob[blob.len() - 51..]).unwrap();
    assert_eq!(footer_len, estargz::FOOTER_SIZE);
    assert_eq!(
        &blob[blob.len() - 51..],
        &estargz::footer_bytes(toc_offset)[..]
    );

    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(toc_digest),
    ))
    .unwrap();
    assert_eq!(common::decode_all(&toc, &blob), fx.files);
    let find = |name: &str| toc.entries.iter().find(|e| e.name == name).unwrap();
    assert_eq!(find("usr/bin/tool").chunks.len(), 10);
    assert_eq!(find("usr/bin/tool").mode, 0o4755);
    assert_eq!(find("etc/hostname.hard").kind, EntryKind::Hardlink);
    assert_eq!(find("etc/hostname.hard").link_name, "etc/hostname");
    assert_eq!(find("usr/bin/link").link_name, "tool");
    assert_eq!(find("var/.wh.removed").kind, EntryKind::Reg);
    assert_eq!(find("etc/with-xattr").xattrs["user.veil"], b"yes");
    assert_eq!(find("etc/hostname").mtime, 1_700_000_001);
    assert_eq!(toc.prefetch_end, None);

    // Go's diff ID is the digest of the whole decompressed blob.
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(&blob[..]),
        &mut plain,
    )
    .unwrap();
    assert_eq!(res["diffID"], sha256_digest(&plain));

    // The wrong digest is refused.
    let wrong = format!("sha256:{}", "0".repeat(64));
    assert!(block_on(estargz::read_toc(&MemoryBlob(blob), Some(&wrong))).is_err());
}

#[test]
fn go_zstdchunked_is_read_by_veil() {
    let fx = fixture();
    let blob_path = fx.path("go.zstdchunked");
    let res = run_checker(&[
        "build",
        &fx.path("layer.tar"),
        &blob_path,
        "--zstdchunked",
        "--chunk-size",
        "1048576",
    ]);
    let blob = std::fs::read(&blob_path).unwrap();
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(res["annotations"].clone()).unwrap();
    assert!(
        annotations.contains_key(zstdchunked::LEGACY_MANIFEST_CHECKSUM_ANNOTATION),
        "stargz-snapshotter writes the legacy keys: {annotations:?}"
    );
    let mut info = ManifestInfo::from_annotations(&annotations).unwrap();
    info.toc_digest = Some(res["tocDigest"].as_str().unwrap().to_owned());
    let toc = block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &info)).unwrap();
    assert_eq!(common::decode_all(&toc, &blob), fx.files);

    // From the footer alone, too.
    let from_footer = block_on(zstdchunked::read_toc(
        &MemoryBlob(blob.clone()),
        &ManifestInfo::default(),
    ))
    .unwrap();
    assert_eq!(from_footer, toc);

    // A wrong manifest checksum is refused.
    info.checksum = Some(format!("sha256:{}", "1".repeat(64)));
    assert!(block_on(zstdchunked::read_toc(&MemoryBlob(blob), &info)).is_err());
}

#[test]
fn veil_estargz_is_verified_by_go() {
    let fx = fixture();
    let opts = BuildOptions {
        chunk_size: 1 << 20,
        ..BuildOptions::default()
    };
    let (blob, out) = estargz::build_to_vec(Cursor::new(&fx.tar), &opts).unwrap();
    let go = fx.go_verify(&blob, &out.toc_digest);
    fx.assert_go_sees_the_files(&go);
    assert_eq!(go[".no.prefetch.landmark"]["size"], 1);

    // With prioritized files, too.
    let opts = BuildOptions {
        chunk_size: 1 << 20,
        prioritized_files: vec!["usr/bin/small".into()],
        ..BuildOptions::default()
    };
    let (blob, out) = estargz::build_to_vec(Cursor::new(&fx.tar), &opts).unwrap();
    let go = fx.go_verify(&blob, &out.toc_digest);
    fx.assert_go_sees_the_files(&go);
    assert!(go.contains_key(".prefetch.landmark"));
}

#[test]
fn veil_legacy_zstdchunked_is_verified_by_go() {
    let fx = fixture();
    let opts = ZstdBuildOptions {
        chunk_size: 1 << 20,
        variant: Variant::Legacy,
        ..ZstdBuildOptions::default()
    };
    let (blob, out) = zstdchunked::build_to_vec(Cursor::new(&fx.tar), &opts).unwrap();
    let go = fx.go_verify(&blob, &out.toc_digest);
    fx.assert_go_sees_the_files(&go);
}

#[test]
fn go_refuses_a_tampered_veil_blob() {
    let fx = fixture();
    // Level 0 stores payloads, so a flipped byte reaches the chunk digest check.
    let opts = BuildOptions {
        level: Some(0),
        ..BuildOptions::default()
    };
    let (blob, out) = estargz::build_to_vec(Cursor::new(&fx.tar), &opts).unwrap();
    let go_accepts = |blob: &[u8], digest: &str| {
        let path = fx.path("tampered.blob");
        std::fs::write(&path, blob).unwrap();
        Command::new(checker())
            .args(["verify", &path, digest])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        go_accepts(&blob, &out.toc_digest),
        "the untampered blob verifies"
    );
    let wrong = format!("sha256:{}", "2".repeat(64));
    assert!(!go_accepts(&blob, &wrong), "Go accepted a wrong TOC digest");

    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    let chunk = &toc
        .entries
        .iter()
        .find(|e| e.name == "usr/bin/small")
        .unwrap()
        .chunks[0];
    let mut bad = blob.clone();
    bad[chunk.blob_offset as usize + 1000] ^= 0x01;
    assert!(
        !go_accepts(&bad, &out.toc_digest),
        "Go accepted a flipped chunk byte"
    );
}
