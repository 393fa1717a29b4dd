//! Bounded cost for any input (issue 16, attack 4; DESIGN.md trust rules: "a hostile
//! image costs bounded memory and CPU, never the node"), with real parts: each hostile
//! image is a valid eStargz layer whose TOC digest is right, pushed to Debian's
//! `docker-registry` on loopback and pulled through containerd and veil-snapshotter.
//!
//! - a file of 1 GiB of zeros in one chunk (the blob really holds those zeros, as 1024
//!   concatenated 1 MiB gzip members: a 1 MB bomb) with its correct digest;
//! - a one-byte chunk at `innerOffset` 10 GiB;
//! - a file 30,000 directories deep (written by Veil's own eStargz writer).
//!
//! Each `veil pull --lazy-only` is refused within seconds, naming the layer; the daemon
//! logs the limit (`MAX_CHUNK_SIZE`, `MAX_PATH_DEPTH`) and `veil status` lists the layer
//! as not lazily served with that reason; no hostile layer is served lazily. Afterwards
//! the same daemon, still the same process, pulls and runs another image.
//!
//! Needs root, docker-registry, busybox-static, FUSE, overlayfs, containerd 1.6 and runc.
//! Run with `cargo test -p veil-tests --test hostile_bounds -- --nocapture`.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::{Digest as _, Sha256};
use veil_formats::estargz::{footer_bytes, TOC_DIGEST_ANNOTATION, TOC_TAR_NAME};
use veil_tests::containerd::{process_alive, SNAPSHOTTER};
use veil_tests::lazy_image::{
    base_entries, pack, tar_of, top_entries, Entry, Layer, LayerFormat, GZIP_LAYER, HELLO_PATH,
    HELLO_TEXT,
};
use veil_tests::lazy_stack::{lines_with, status_layer, text, with_stack, LazyStack};

/// `sha256:` of 1 GiB of zero bytes (`head -c 1G /dev/zero | sha256sum`).
const ONE_GIB_OF_ZEROS: &str =
    "sha256:49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14";

/// A refused pull must come back within this (the attack cost a minute per read).
const REFUSED_WITHIN: Duration = Duration::from_secs(60);

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

fn hex_digest(hash: Sha256) -> String {
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// An eStargz blob written member by member, with the digest of its uncompressed
/// stream (the layer's diff ID) kept as it grows.
struct Blob {
    bytes: Vec<u8>,
    plain: Sha256,
}

impl Blob {
    fn new() -> Self {
        Self {
            bytes: Vec::new(),
            plain: Sha256::new(),
        }
    }

    /// Appends `plain` compressed as `times` identical gzip members; returns where the
    /// first starts.
    fn members(&mut self, plain: &[u8], times: usize) -> u64 {
        let start = self.bytes.len() as u64;
        let member = gzip(plain);
        for _ in 0..times {
            self.bytes.extend_from_slice(&member);
            self.plain.update(plain);
        }
        start
    }

    /// Closes the blob with the TOC member holding `toc_json` and the footer.
    fn finish(mut self, toc_json: &str) -> anyhow::Result<Layer> {
        let mut header = tar::Header::new_ustar();
        header.set_size(toc_json.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let mut toc_tar = tar::Builder::new(Vec::new());
        toc_tar.append_data(&mut header, TOC_TAR_NAME, toc_json.as_bytes())?;
        let toc_tar = toc_tar.into_inner()?;
        let toc_offset = self.members(&toc_tar, 1);
        self.bytes.extend_from_slice(&footer_bytes(toc_offset));
        let toc_digest = hex_digest(Sha256::new_with_prefix(toc_json));
        Ok(Layer {
            format: LayerFormat::Estargz,
            digest: hex_digest(Sha256::new_with_prefix(&self.bytes)),
            diff_id: hex_digest(self.plain),
            media_type: GZIP_LAYER.into(),
            annotations: [(TOC_DIGEST_ANNOTATION.to_string(), toc_digest)].into(),
            blob: self.bytes,
        })
    }
}

/// A tar header block for a regular file or directory.
fn header(path: &str, size: u64, dir: bool) -> anyhow::Result<Vec<u8>> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_mtime(1_700_000_000);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_cksum();
    Ok(h.as_bytes().to_vec())
}

/// `data/zeros`: 1 GiB of zeros in one chunk, with its right digest.
fn gigabyte_of_zeros() -> anyhow::Result<Layer> {
    let gib = 1u64 << 30;
    let mut blob = Blob::new();
    blob.members(
        &[header("data/", 0, true)?, header("data/zeros", gib, false)?].concat(),
        1,
    );
    let zeros = blob.members(&vec![0u8; 1 << 20], 1024);
    blob.finish(&format!(
        r#"{{"version":1,"entries":[{{"name":"data/","type":"dir","mode":493}},{{"name":"data/zeros","type":"reg","size":{gib},"mode":420,"offset":{zeros},"digest":"{ONE_GIB_OF_ZEROS}","chunkDigest":"{ONE_GIB_OF_ZEROS}"}}]}}"#
    ))
}

/// `one`: one byte, which the TOC places 10 GiB into its member.
fn inner_offset_far_away() -> anyhow::Result<Layer> {
    let mut blob = Blob::new();
    blob.members(&header("one", 1, false)?, 1);
    let mut data = vec![0u8; 512];
    data[0] = b'x';
    let at = blob.members(&data, 1);
    let x = hex_digest(Sha256::new_with_prefix(b"x"));
    blob.finish(&format!(
        r#"{{"version":1,"entries":[{{"name":"one","type":"reg","size":1,"mode":420,"offset":{at},"innerOffset":{},"chunkDigest":"{x}"}}]}}"#,
        10u64 << 30
    ))
}

/// A file 30,000 directories deep, through Veil's own writer (which does not judge).
fn thirty_thousand_deep() -> anyhow::Result<Layer> {
    let deep = format!("{}/f", vec!["d"; 30_000].join("/"));
    pack(
        tar_of(&[Entry::File(deep, b"deep\n".to_vec(), 0o644)])?,
        LayerFormat::Estargz,
    )
}

/// One hostile image: what it is, where it is pushed, its hostile layer, and the limit
/// that must refuse it.
struct Case {
    what: &'static str,
    repo: &'static str,
    layer: Layer,
    limit: &'static str,
}

/// `veil pull --lazy-only` of `case` is refused, quickly, and the daemon says why.
fn refused(name: &str, stack: &LazyStack, case: &Case) -> anyhow::Result<()> {
    let reference = stack.image_ref(case.repo, "1");
    let (out, took) = stack.veil_pull(&reference, &["--lazy-only"])?;
    let stderr = text(&out.stderr);
    eprintln!(
        "[{name}] {}: veil pull --lazy-only: {} after {took:.2?}\n{}",
        case.what,
        out.status,
        stderr.trim_end()
    );
    if out.status.success() || !stderr.contains(&case.layer.digest) {
        bail!(
            "veil pull --lazy-only of {reference} ({}) should fail naming layer {}",
            case.what,
            case.layer.digest
        );
    }
    if took > REFUSED_WITHIN {
        bail!("refusing {} took {took:?}", case.what);
    }
    let log = stack.veil.log_text();
    let lines = lines_with(&log, &[&case.layer.digest, case.limit]);
    let Some(line) = lines.first() else {
        bail!(
            "the daemon log does not name the {} limit for layer {} ({})",
            case.limit,
            case.layer.digest,
            case.what
        );
    };
    eprintln!("[{name}] the daemon log says:\n    {line}");
    Ok(())
}

#[test]
fn hostile_layers_are_refused_at_toc_load_and_the_daemon_serves_on() {
    let name = "hostile-bounds";
    with_stack(name, |stack| {
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let cases = [
            Case {
                what: "a 1 GiB chunk of zeros",
                repo: "zeros",
                layer: gigabyte_of_zeros()?,
                limit: "MAX_CHUNK_SIZE",
            },
            Case {
                what: "a chunk at innerOffset 10 GiB",
                repo: "inner-offset",
                layer: inner_offset_far_away()?,
                limit: "MAX_CHUNK_SIZE",
            },
            Case {
                what: "a path 30,000 directories deep",
                repo: "deep",
                layer: thirty_thousand_deep()?,
                limit: "MAX_PATH_DEPTH",
            },
        ];
        for case in &cases {
            eprintln!(
                "[{name}] {}: layer {} is {} bytes",
                case.what,
                case.layer.digest,
                case.layer.size()
            );
            stack.push(case.repo, "1", &[base.clone(), case.layer.clone()])?;
        }
        let top = pack(
            tar_of(&top_entries(b"a good image\n".to_vec()))?,
            LayerFormat::Estargz,
        )?;
        stack.push("good", "1", &[base.clone(), top.clone()])?;

        stack.start()?;
        let daemon = *stack
            .veil
            .pids
            .last()
            .context("veil-snapshotter has no PID")?;
        for case in &cases {
            refused(name, stack, case)?;
            if !process_alive(daemon) {
                bail!("veil-snapshotter died refusing {}", case.what);
            }
        }

        // veil status: no hostile layer served lazily, each listed with its limit.
        let report = stack.status_json()?;
        for case in &cases {
            if let Ok(layer) = status_layer(&report, &case.layer.digest) {
                if layer["mode"].as_str() == Some("lazy") {
                    bail!("{} is served lazily:\n{report:#}", case.what);
                }
            }
            let reason = report["fallbacks"]
                .as_array()
                .and_then(|l| {
                    l.iter()
                        .find(|f| f["digest"].as_str() == Some(case.layer.digest.as_str()))
                })
                .and_then(|f| f["reason"].as_str())
                .unwrap_or("");
            if !reason.contains(case.limit) {
                bail!(
                    "veil status does not list {} ({}) as a fallback naming {}:\n{report:#}",
                    case.layer.digest,
                    case.what,
                    case.limit
                );
            }
            eprintln!("[{name}] veil status: {} not lazy: {reason}", case.what);
        }

        // The same daemon pulls and runs another image.
        let reference = stack.image_ref("good", "1");
        let (out, took) = stack.veil_pull(&reference, &["--lazy-only"])?;
        if !out.status.success() {
            bail!(
                "veil pull --lazy-only of the good image failed after the hostile ones:\n{}",
                text(&out.stderr)
            );
        }
        let hello = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            "after-hostile",
            &["/bin/cat", HELLO_PATH],
        )?;
        if hello != HELLO_TEXT {
            bail!("cat {HELLO_PATH} in the good image printed {hello:?}");
        }
        if !process_alive(daemon) || stack.veil.pids.len() != 1 {
            bail!(
                "veil-snapshotter was restarted or died: {:?}",
                stack.veil.pids
            );
        }
        eprintln!(
            "[{name}] the same daemon (pid {daemon}) pulled the good image in {took:.2?} and \
             ran it: {}",
            hello.trim_end()
        );
        Ok(())
    });
}
