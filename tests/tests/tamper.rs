//! Veil's trust rules, tested against tampered images and a failing registry
//! (DESIGN.md, "Trust rules"): every byte served has been verified, else the read fails
//! with EIO; lazy mode needs an authenticated TOC; bad input gets a clear error, never a
//! hang.
//!
//! The images are built here with Veil's eStargz writer and changed before they are
//! pushed to Debian's `docker-registry` on loopback:
//!
//! - one byte of a chunk's compressed payload flipped (the TOC untouched, so the
//!   manifest's `toc.digest` annotation is still right): reading that chunk through
//!   `veil mount` fails with EIO and the serving log names the layer and chunk; every
//!   other chunk and file reads exactly; wrong bytes are never returned;
//! - one byte inside the TOC flipped, and a forged layer (other contents, with a TOC
//!   that matches them) under the original annotation: `veil mount` fails with a TOC
//!   error, and the daemon does not serve the layer lazily and logs why;
//! - a wrong or malformed `containerd.io/snapshot/stargz/toc.digest` annotation: the
//!   same;
//! - the registry killed while an image is mounted: a read of bytes not fetched yet fails
//!   with EIO within a bounded time, the serving process stays up, and once the registry
//!   is back (same port, same storage) the same read succeeds.
//!
//! Needs root, docker-registry, busybox-static, FUSE, overlayfs, containerd 1.6 and runc.
//! Run with `cargo test -p veil-tests --test tamper -- --nocapture`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_blob::MemoryBlob;
use veil_formats::estargz::{self, FOOTER_SIZE, TOC_DIGEST_ANNOTATION};
use veil_formats::toc::Chunk;
use veil_tests::containerd::{process_alive, SNAPSHOTTER};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer, LayerFormat,
    BIG_PATH, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use veil_tests::lazy_stack::{lines_with, status_layer, text, with_stack, LazyStack};
use veil_tests::mount_cli::{
    expect_success, read_at, read_file, read_until_error, sha256_file, VeilMount, READ_TIMEOUT,
};
use veil_tests::registry::sha256;

/// Size of the big random file: four 4 MiB chunks.
const BIG_SIZE: usize = 16 << 20;

/// How long a read may take to fail once the registry is gone.
const FAIL_TIMEOUT: Duration = Duration::from_secs(120);

/// `path` (absolute, in the image) below the mount point `root`.
fn inside(root: &Path, path: &str) -> std::path::PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// `layer` with its blob replaced by `blob` (and the digest that goes with it); the
/// annotations, TOC digest included, stay as they were.
fn with_blob(layer: &Layer, blob: Vec<u8>) -> Layer {
    let mut out = layer.clone();
    out.digest = sha256(&blob);
    out.blob = blob;
    out
}

/// The TOC digest annotation of `layer`.
fn toc_digest(layer: &Layer) -> anyhow::Result<String> {
    layer
        .annotations
        .get(TOC_DIGEST_ANNOTATION)
        .cloned()
        .context("the eStargz writer did not annotate the TOC digest")
}

/// The chunks of `path` (absolute) in the eStargz `layer`, from its authenticated TOC.
fn chunks_of(stack: &LazyStack, layer: &Layer, path: &str) -> anyhow::Result<Vec<Chunk>> {
    let digest = toc_digest(layer)?;
    let blob = MemoryBlob(layer.blob.clone());
    let toc = stack
        .runtime
        .block_on(estargz::read_toc(&blob, Some(&digest)))?;
    let name = path.trim_start_matches('/');
    let entry = toc
        .entries
        .iter()
        .find(|e| e.name == name)
        .with_context(|| format!("{path} is not in the layer's TOC"))?;
    Ok(entry.chunks.clone())
}

/// The blob range of the TOC member of the eStargz `blob` (from its footer).
fn toc_range(blob: &[u8]) -> anyhow::Result<std::ops::Range<usize>> {
    let tail = &blob[blob.len() - FOOTER_SIZE as usize..];
    let (offset, footer) = estargz::parse_footer(tail)?;
    Ok(offset as usize..blob.len() - footer as usize)
}

/// The OS error of a read that should have failed with EIO, or why it did not.
fn expect_eio(what: &str, read: std::io::Result<Vec<u8>>) -> anyhow::Result<()> {
    match read {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(()),
        Err(e) => bail!(
            "{what} failed with {e} ({:?}), expected EIO",
            e.raw_os_error()
        ),
        Ok(bytes) => bail!("{what} returned {} bytes, expected EIO", bytes.len()),
    }
}

/// `veil mount` of `reference` at a fresh directory named `name`.
fn mount(stack: &LazyStack, name: &str, reference: &str) -> anyhow::Result<VeilMount> {
    let mut m = VeilMount::new(
        &stack.dir.join(name),
        &stack.dir.join("state"),
        &stack.dir.join("cli"),
    )?;
    let out = m.mount(reference)?;
    expect_success(&format!("veil mount {reference}"), &out)?;
    Ok(m)
}

/// `veil umount`, then the serving process must exit and nothing may be left.
fn umount(m: &mut VeilMount) -> anyhow::Result<()> {
    expect_success("veil umount", &m.umount()?)?;
    if !m.wait_serving_exit(Duration::from_secs(10)) {
        bail!("the serving process did not exit within 10 s of veil umount");
    }
    let left = m.cleanup();
    if !left.is_empty() {
        bail!("left behind after veil umount: {left:?}");
    }
    Ok(())
}

/// (a) One byte of one chunk's compressed payload flipped.
#[test]
fn tampered_chunk_fails_with_eio_and_the_rest_reads_exactly() {
    let name = "tamper-chunk";
    with_stack(name, |stack| {
        let big = random_bytes(BIG_SIZE, 0x7a3);
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let top = pack(tar_of(&top_entries(big.clone()))?, LayerFormat::Estargz)?;
        let chunks = chunks_of(stack, &top, BIG_PATH)?;
        if chunks.len() < 4 {
            bail!(
                "{BIG_PATH} has {} chunks, expected at least 4",
                chunks.len()
            );
        }
        let bad = chunks[2].clone();
        let flip = (bad.blob_offset + (bad.blob_end - bad.blob_offset) / 2) as usize;
        let mut blob = top.blob.clone();
        blob[flip] ^= 0x5a;
        let tampered = with_blob(&top, blob);
        stack.push("tampered", "1", &[base, tampered.clone()])?;
        eprintln!(
            "[{name}] flipped blob byte {flip} of layer {} (was {}): inside chunk 2 of {BIG_PATH} \
             (file bytes {}..{}, blob bytes {}..{}); the TOC and its annotation are untouched",
            tampered.digest,
            top.digest,
            bad.file_offset,
            bad.file_offset + bad.size,
            bad.blob_offset,
            bad.blob_end
        );

        let mut m = mount(stack, "rootfs", &stack.image_ref("tampered", "1"))?;
        let root = m.dir.clone();
        let file = inside(&root, BIG_PATH);

        // The other files read exactly.
        for (path, want) in [(HELLO_PATH, HELLO_TEXT), (LAYER2_PATH, LAYER2_TEXT)] {
            let got = read_file(&inside(&root, path), READ_TIMEOUT)??;
            if got != want.as_bytes() {
                bail!("{path} reads {:?}, expected {want:?}", text(&got));
            }
        }
        // Every other chunk of the same file reads exactly.
        for (i, c) in chunks.iter().enumerate().filter(|(i, _)| *i != 2) {
            let got = read_at(&file, c.file_offset, c.size as usize, READ_TIMEOUT)?
                .with_context(|| format!("reading chunk {i} of {BIG_PATH}"))?;
            let want = &big[c.file_offset as usize..(c.file_offset + c.size) as usize];
            if got != want {
                bail!("chunk {i} of {BIG_PATH} reads wrong bytes");
            }
        }
        // The tampered chunk: EIO, every time, in part or whole.
        for (offset, len) in [
            (bad.file_offset + 100, 4096),
            (bad.file_offset, bad.size as usize),
            (bad.file_offset + bad.size - 10, 10),
        ] {
            expect_eio(
                &format!("reading {len} bytes of {BIG_PATH} at {offset}"),
                read_at(&file, offset, len, READ_TIMEOUT)?,
            )?;
        }
        // Reading the file from the start stops with EIO at the tampered chunk, after
        // nothing but right bytes.
        let (got, err) = read_until_error(&file, READ_TIMEOUT)?;
        expect_eio(
            &format!("reading {BIG_PATH} from the start"),
            err.map_or(Ok(got.clone()), Err),
        )?;
        if got.len() as u64 > bad.file_offset || got[..] != big[..got.len()] {
            bail!(
                "reading {BIG_PATH} from the start returned {} bytes before EIO (the tampered \
                 chunk starts at {}), {}",
                got.len(),
                bad.file_offset,
                if got[..] == big[..got.len().min(big.len())] {
                    "all right"
                } else {
                    "some WRONG"
                }
            );
        }
        eprintln!(
            "[{name}] the tampered chunk reads EIO; a sequential read stopped with EIO after {} \
             right bytes; the other {} chunks and files read exactly",
            got.len(),
            chunks.len() - 1
        );

        // The serving log names the layer and the chunk.
        let log = m.log_text();
        let blob_range = format!("{}..{}", bad.blob_offset, bad.blob_end);
        let lines = lines_with(
            &log,
            &[
                "failed verification",
                &tampered.digest,
                "chunk=",
                &blob_range,
                BIG_PATH.trim_start_matches('/'),
            ],
        );
        let Some(line) = lines.first() else {
            bail!("the serving log does not name the layer and chunk ({blob_range}):\n{log}");
        };
        eprintln!("[{name}] the serving log says:\n    {line}");
        if !process_alive(m.serving_pid().unwrap_or(0)) {
            bail!("the serving process died");
        }
        umount(&mut m)?;

        // Through the daemon and containerd: a container reading the file gets an I/O
        // error, never the file's (wrong) digest; `veil status` counts the failure.
        stack.start()?;
        let reference = stack.image_ref("tampered", "1");
        let (out, _) = stack.veil_pull(&reference, &["--lazy-only"])?;
        expect_success("veil pull --lazy-only", &out)?;
        let cd = stack.cd();
        let hello = cd.run_container(
            SNAPSHOTTER,
            &reference,
            "tamper-cat",
            &["/bin/cat", HELLO_PATH],
        )?;
        if hello != HELLO_TEXT {
            bail!("cat {HELLO_PATH} in a container printed {hello:?}");
        }
        let sum = cd.run_container(
            SNAPSHOTTER,
            &reference,
            "tamper-sha",
            &["/bin/sha256sum", BIG_PATH],
        );
        let shown = match &sum {
            Ok(out) => bail!("sha256sum of the tampered file in a container succeeded: {out:?}"),
            Err(e) => format!("{e:#}"),
        };
        let eio = |l: &str| l.contains("Input/output error") || l.contains("I/O error");
        if !eio(&shown) || shown.contains(&sha256_hex(&big)) {
            bail!("sha256sum of the tampered file in a container did not fail with an I/O error:\n{shown}");
        }
        let err_line = shown.lines().find(|l| eio(l)).unwrap_or("");
        eprintln!("[{name}] in a container: {}", err_line.trim());
        let report = stack.status_json()?;
        let failures = status_layer(&report, &tampered.digest)?["verify_failures"]
            .as_u64()
            .unwrap_or(0);
        if failures == 0 {
            bail!(
                "veil status counts no verification failure for {}:\n{report:#}",
                tampered.digest
            );
        }
        let log = stack.veil.log_text();
        let Some(line) = lines_with(
            &log,
            &["failed verification", &tampered.digest, &blob_range],
        )
        .into_iter()
        .next() else {
            bail!("the daemon log does not name the layer and chunk ({blob_range})");
        };
        eprintln!(
            "[{name}] veil status counts {failures} verification failure(s) for the layer; the \
             daemon log says:\n    {line}"
        );
        Ok(())
    });
}

/// How `veil mount` and the daemon must refuse a layer whose TOC is not authentic.
struct Refused {
    /// What was done to the image.
    what: &'static str,
    /// The repository it was pushed as (tag `1`).
    repo: &'static str,
    /// The layer that must not be served lazily.
    layer: Layer,
    /// What every error message about it must contain (one of these).
    says: &'static [&'static str],
}

/// Whether `text` contains one of `alternatives`.
fn says(text: &str, alternatives: &[&str]) -> bool {
    alternatives.iter().any(|a| text.contains(a))
}

/// Pushes every case, checks `veil mount` refuses each, then starts Veil and containerd
/// and checks `veil pull --lazy-only` is refused, the daemon logs why, and `veil status`
/// lists the layer as a fallback with that reason.
fn refused_everywhere(name: &str, stack: &mut LazyStack, cases: &[Refused]) -> anyhow::Result<()> {
    for case in cases {
        stack.push(case.repo, "1", std::slice::from_ref(&case.layer))?;
    }
    for case in cases {
        let reference = stack.image_ref(case.repo, "1");
        let mut m = VeilMount::new(
            &stack.dir.join(format!("mnt-{}", case.repo)),
            &stack.dir.join("state"),
            &stack.dir.join("cli"),
        )?;
        let t = Instant::now();
        let out = m.mount(&reference)?;
        let stderr = text(&out.stderr);
        eprintln!(
            "[{name}] {}: veil mount {}: {} after {:.2?}\n{}",
            case.what,
            reference,
            out.status,
            t.elapsed(),
            stderr.trim_end()
        );
        if out.status.success() || m.is_mounted() {
            bail!("veil mount of {} ({}) succeeded", reference, case.what);
        }
        if !(says(&stderr, case.says) && stderr.contains(&case.layer.digest)) {
            bail!(
                "veil mount of {} ({}) did not fail with {:?} naming layer {}:\n{stderr}",
                reference,
                case.what,
                case.says,
                case.layer.digest
            );
        }
        let left = m.cleanup();
        if !left.is_empty() {
            bail!("the failed veil mount left behind: {left:?}");
        }
    }

    // The daemon, through containerd.
    stack.start()?;
    for case in cases {
        let reference = stack.image_ref(case.repo, "1");
        let (out, took) = stack.veil_pull(&reference, &["--lazy-only"])?;
        let stderr = text(&out.stderr);
        eprintln!(
            "[{name}] {}: veil pull --lazy-only: {} after {took:.2?}\n{}{}",
            case.what,
            out.status,
            text(&out.stdout),
            stderr.trim_end()
        );
        if out.status.success()
            || !stderr.contains(&case.layer.digest)
            || !stderr.contains("not lazily servable")
        {
            bail!(
                "veil pull --lazy-only of {} ({}) should fail: the layer is not lazily servable",
                reference,
                case.what
            );
        }
        let log = stack.veil.log_text();
        let lines = lines_with(&log, &[&case.layer.digest]);
        let Some(line) = lines.iter().find(|l| says(l, case.says)) else {
            bail!(
                "the daemon log does not say why layer {} ({}) was not served lazily",
                case.layer.digest,
                case.what
            );
        };
        eprintln!("[{name}] the daemon log says:\n    {line}");
    }
    let report = stack.status_json()?;
    if report["remote_snapshots"].as_u64() != Some(0) {
        bail!("a tampered layer is served lazily:\n{report:#}");
    }
    for case in cases {
        let listed = report["fallbacks"].as_array().and_then(|l| {
            l.iter()
                .find(|f| f["digest"].as_str() == Some(&case.layer.digest))
        });
        let reason = listed.and_then(|f| f["reason"].as_str()).unwrap_or("");
        if !says(reason, case.says) {
            bail!(
                "veil status does not list {} ({}) as a fallback saying {:?}:\n{report:#}",
                case.layer.digest,
                case.what,
                case.says
            );
        }
    }
    Ok(())
}

/// (b) The TOC changed: one byte of it flipped; a forged layer whose TOC matches its
/// own (other) contents, under the original annotation.
#[test]
fn tampered_toc_is_refused() {
    let name = "tamper-toc";
    with_stack(name, |stack| {
        let entries = base_entries()?;
        let base = pack(tar_of(&entries)?, LayerFormat::Estargz)?;

        let toc = toc_range(&base.blob)?;
        let flip = toc.start + (toc.end - toc.start) / 2;
        let mut blob = base.blob.clone();
        blob[flip] ^= 0x5a;
        let flipped = with_blob(&base, blob);
        eprintln!(
            "[{name}] flipped blob byte {flip} inside the TOC member (bytes {}..{}) of layer {}",
            toc.start, toc.end, base.digest
        );

        let mut forged_entries: Vec<Entry> = entries
            .into_iter()
            .filter(
                |e| !matches!(e, Entry::File(p, _, _) if p == HELLO_PATH.trim_start_matches('/')),
            )
            .collect();
        forged_entries.push(Entry::File(
            HELLO_PATH.trim_start_matches('/').into(),
            b"hello from whoever rewrote the layer\n".to_vec(),
            0o644,
        ));
        let mut forged = pack(tar_of(&forged_entries)?, LayerFormat::Estargz)?;
        forged.annotations = base.annotations.clone();

        refused_everywhere(
            name,
            stack,
            &[
                Refused {
                    what: "a byte of the TOC flipped",
                    repo: "toc-flipped",
                    layer: flipped,
                    // Depending on the byte, inflating the changed member gives other
                    // JSON or fails: either way a TOC error.
                    says: &["TOC digest mismatch", "TOC is corrupt"],
                },
                Refused {
                    what: "a forged layer and TOC under the original annotation",
                    repo: "toc-forged",
                    layer: forged,
                    says: &["TOC digest mismatch"],
                },
            ],
        )
    });
}

/// (c) The layer intact, its `toc.digest` annotation wrong or malformed.
#[test]
fn wrong_toc_digest_annotation_is_refused() {
    let name = "tamper-annotation";
    with_stack(name, |stack| {
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let mut wrong = base.clone();
        wrong
            .annotations
            .insert(TOC_DIGEST_ANNOTATION.into(), sha256(b"not the TOC"));
        // Another layer, so that the daemon's fallbacks (one per layer digest) tell the
        // two cases apart.
        let mut malformed = pack(
            tar_of(&[
                Entry::Dir("etc", 0o755),
                Entry::File(
                    LAYER2_PATH.trim_start_matches('/').into(),
                    LAYER2_TEXT.into(),
                    0o644,
                ),
            ])?,
            LayerFormat::Estargz,
        )?;
        malformed
            .annotations
            .insert(TOC_DIGEST_ANNOTATION.into(), "sha256:not-a-digest".into());
        refused_everywhere(
            name,
            stack,
            &[
                Refused {
                    what: "a wrong toc.digest annotation",
                    repo: "wrong-annotation",
                    layer: wrong,
                    says: &["TOC digest mismatch"],
                },
                Refused {
                    what: "a malformed toc.digest annotation",
                    repo: "malformed-annotation",
                    layer: malformed,
                    says: &["is not of the form sha256:"],
                },
            ],
        )?;
        // Without --lazy-only containerd may download and unpack the intact blob; the
        // layer is never reported as served lazily either way.
        let reference = stack.image_ref("wrong-annotation", "1");
        let (out, took) = stack.veil_pull(&reference, &[])?;
        let stdout = text(&out.stdout);
        eprintln!(
            "[{name}] veil pull (fallback allowed): {} after {took:.2?}\n{stdout}{}",
            out.status,
            text(&out.stderr)
        );
        if stdout
            .lines()
            .any(|l| l.contains(&base.digest) && l.contains(" lazy"))
        {
            bail!("the layer with a wrong annotation was served lazily:\n{stdout}");
        }
        Ok(())
    });
}

/// (d) The registry killed while an image is mounted, then started again.
#[test]
fn registry_stopped_mid_run_fails_reads_with_eio_then_recovers() {
    let name = "registry-stopped";
    with_stack(name, |stack| {
        let big = random_bytes(BIG_SIZE, 0xdead);
        let layers = vec![
            pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
            pack(tar_of(&top_entries(big.clone()))?, LayerFormat::Estargz)?,
        ];
        stack.push("app", "1", &layers)?;
        let mut m = mount(stack, "rootfs", &stack.image_ref("app", "1"))?;
        let pid = m.serving_pid().context("veil mount printed no PID")?;
        let root = m.dir.clone();
        let file = inside(&root, BIG_PATH);
        let got = read_file(&inside(&root, HELLO_PATH), READ_TIMEOUT)??;
        if got != HELLO_TEXT.as_bytes() {
            bail!("{HELLO_PATH} reads {:?}", text(&got));
        }

        stack.kill_registry();
        let (offset, len) = (8 * 1024 * 1024 + 12_345, 64 * 1024);
        let t = Instant::now();
        let read = read_at(&file, offset, len, FAIL_TIMEOUT)
            .context("a read with the registry gone hung")?;
        let took = t.elapsed();
        expect_eio(
            &format!("reading {len} bytes of {BIG_PATH} at {offset} with the registry gone"),
            read,
        )?;
        eprintln!("[{name}] registry killed: the read failed with EIO after {took:.2?}");
        if took >= FAIL_TIMEOUT {
            bail!("the read took {took:?} to fail");
        }
        // The serving process stays up; what is in memory still works.
        if !process_alive(pid) || !m.is_mounted() {
            bail!(
                "after the failed read: serving process alive {}, mounted {}",
                process_alive(pid),
                m.is_mounted()
            );
        }
        let listed = std::fs::read_dir(root.join("etc"))?.count();
        let size = std::fs::metadata(&file)?.len();
        if listed == 0 || size != BIG_SIZE as u64 {
            bail!("metadata through the mount is off: /etc has {listed} entries, {BIG_PATH} {size} bytes");
        }
        let log = m.log_text();
        if lines_with(&log, &["fetching chunks failed", &layers[1].digest]).is_empty() {
            bail!("the serving log does not report the failed fetch:\n{log}");
        }

        stack.restart_registry()?;
        let t = Instant::now();
        let again = read_at(&file, offset, len, READ_TIMEOUT)?
            .context("the same read after the registry came back")?;
        if again[..] != big[offset as usize..offset as usize + len] {
            bail!("the read after the registry came back returned wrong bytes");
        }
        let sum = sha256_file(&file, READ_TIMEOUT)?;
        if sum != sha256_hex(&big) {
            bail!("sha256 of {BIG_PATH} after the registry came back is {sum}");
        }
        eprintln!(
            "[{name}] registry restarted on the same port and storage: the same read succeeded \
             and the whole file's sha256 matched ({:.2?}); the serving process ({pid}) stayed up",
            t.elapsed()
        );
        umount(&mut m)
    });
}
