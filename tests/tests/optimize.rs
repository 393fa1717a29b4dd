//! `veil optimize` end to end, against a loopback registry, with runc and Veil's FUSE.
//!
//! The two-layer busybox test image (tests/src/image.rs) with a few small files and an
//! 8 MiB file added to the top layer is pushed as an ordinary tar+gzip image (skopeo).
//! `veil optimize --cmd WORKLOAD --encrypt --recipient jwe:…` runs the workload once with
//! runc against the image mounted lazily, records the files it opened and read, and
//! writes the encrypted eStargz image with them first. The test then checks what a user
//! would:
//!
//! 1. the recorded list (`--record-to`) holds the files the workload read, in the order
//!    it read them, and not the files it never touched;
//! 2. in the converted image (decrypted with skopeo, each layer's tar read in order), the
//!    regular files before the prefetch landmark are exactly the recorded files of that
//!    layer, in the recorded order, and the landmark follows them;
//! 3. the encrypted image mounts lazily with `veil mount --keys-dir` and reads exactly;
//! 4. `veil optimize --access-list` with the recorded list places the same files first.
//!
//! And that bad input fails clearly: a SRC that is not in the registry, a workload that
//! fails, an OCI layout SRC without a list, a list file that does not exist.
//! Needs root, umoci, skopeo, busybox-static, docker-registry, runc, FUSE, openssl.
//! Run with `cargo test -p veil-tests --test optimize -- --nocapture`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use veil_tests::encrypted_support::{registry_manifest, stored_blob, Keys};
use veil_tests::image::{build_test_image_with, TestImage};
use veil_tests::lazy_image::random_bytes;
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::mount_cli::{expect_success, read_file, VeilMount, READ_TIMEOUT};
use veil_tests::process::run_with_timeout;

/// Small files the top layer adds: path and contents.
const SMALL: [(&str, &str); 4] = [
    ("/data/a.txt", "alpha\n"),
    ("/data/b.txt", "bravo\n"),
    ("/data/c.txt", "charlie\n"),
    ("/data/unread.txt", "never read\n"),
];
/// A big file the workload never reads.
const BIG_PATH: &str = "/data/big.bin";
/// The workload: reads c, a, then b (and prints b).
const WORKLOAD: &str = "cat /data/c.txt /data/a.txt > /dev/null; cat /data/b.txt";
/// The files it reads, in order.
const READ_ORDER: [&str; 3] = ["/data/c.txt", "/data/a.txt", "/data/b.txt"];
/// Files it never touches.
const UNREAD: [&str; 2] = ["/data/unread.txt", BIG_PATH];
/// eStargz's prefetch landmark.
const LANDMARK: &str = ".prefetch.landmark";
const TIMEOUT: Duration = Duration::from_secs(300);

/// `PROGRAM ARGS`, bounded, its output kept under the stack's directory as `name`.
fn run(stack: &LazyStack, name: &str, program: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("TMPDIR", stack.dir.join("tmp"));
    std::fs::create_dir_all(stack.dir.join("tmp"))?;
    run_with_timeout(cmd, TIMEOUT, &stack.dir.join(name))
}

fn veil(stack: &LazyStack, name: &str, args: &[&str]) -> anyhow::Result<Output> {
    run(stack, name, &veil_tests::veil_binary("veil"), args)
}

fn skopeo(stack: &LazyStack, name: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec![
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ];
    all.extend_from_slice(args);
    let out = run(stack, name, Path::new("skopeo"), &all)?;
    expect_success(&format!("skopeo {}", all.join(" ")), &out)
}

/// Builds the test image and pushes it as an ordinary tar+gzip image `optimize-src:v1`.
fn push_source(stack: &LazyStack) -> anyhow::Result<(TestImage, String)> {
    let work = stack.dir.join("image");
    std::fs::create_dir_all(&work)?;
    let big = random_bytes(8 << 20, 0x0b7);
    let mut extra: Vec<(&str, &[u8])> = SMALL.iter().map(|(p, t)| (*p, t.as_bytes())).collect();
    extra.push((BIG_PATH, &big));
    let image = build_test_image_with(&work, "veil.test/optimize", "v1", &extra)?;
    let src = stack.image_ref("optimize-src", "v1");
    skopeo(
        stack,
        "skopeo-push",
        &[
            &format!("oci:{}:{}", image.layout.display(), image.tag),
            &format!("docker://{src}"),
        ],
    )?;
    Ok((image, src))
}

/// The paths of a list file, comments left out.
fn list_paths(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The tar entries of a (gzip, possibly multi-member) layer blob, in order: name
/// (absolute) and whether it is a regular file.
fn tar_order(blob: &[u8]) -> anyhow::Result<Vec<(String, bool)>> {
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob));
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let name = format!("/{}", name.trim_start_matches("./").trim_start_matches('/'));
        let regular = entry.header().entry_type().is_file();
        std::io::copy(&mut entry.by_ref().take(u64::MAX), &mut std::io::sink())?;
        out.push((name.trim_end_matches('/').to_string(), regular));
    }
    Ok(out)
}

/// Checks that in each layer of `repo:tag` the regular files before the landmark are the
/// listed files that layer has, in list order, and that the landmark follows them.
/// Returns how many files each layer has first.
fn check_prioritized(stack: &LazyStack, repo: &str, list: &[String]) -> anyhow::Result<Vec<usize>> {
    let (_, layers) = registry_manifest(stack, repo, "v1")?;
    let mut counts = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let entries = tar_order(&stored_blob(stack, &layer.digest)?)
            .with_context(|| format!("reading layer {i} of {repo} as tar+gzip"))?;
        let regular: std::collections::HashSet<&str> = entries
            .iter()
            .filter(|(_, reg)| *reg)
            .map(|(n, _)| n.as_str())
            .collect();
        let want: Vec<&str> = list
            .iter()
            .map(String::as_str)
            .filter(|p| regular.contains(p))
            .collect();
        let landmark = entries
            .iter()
            .position(|(n, _)| n.trim_start_matches('/') == LANDMARK)
            .with_context(|| format!("layer {i} of {repo} has no {LANDMARK}"))?;
        let first: Vec<&str> = entries[..landmark]
            .iter()
            .filter(|(_, reg)| *reg)
            .map(|(n, _)| n.as_str())
            .collect();
        if first != want {
            bail!(
                "layer {i} of {repo}: files before the landmark are {first:?}, the recorded \
                 files of the layer are {want:?}"
            );
        }
        counts.push(first.len());
    }
    Ok(counts)
}

#[test]
fn optimize_puts_the_workloads_files_first_and_the_encrypted_image_reads_lazily() {
    with_stack("optimize", |stack| {
        let (_image, src) = push_source(stack)?;
        let keys = Keys::make(&stack.dir)?;
        let dst = stack.image_ref("optimize-enc", "v1");
        let recorded = stack.dir.join("recorded.txt");
        let recipient = format!("jwe:{}", keys.public.display());
        let out = veil(
            stack,
            "veil-optimize",
            &[
                "optimize",
                "--plain-http",
                "--json",
                &src,
                &dst,
                "--cmd",
                WORKLOAD,
                "--encrypt",
                "--recipient",
                &recipient,
                "--record-to",
                &recorded.to_string_lossy(),
            ],
        )?;
        expect_success("veil optimize", &out)?;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("veil optimize --json printed {}", text(&out.stdout)))?;
        eprintln!(
            "veil optimize: recorded {} files in {:.2} s, {} bytes fetched; {}",
            report["recorded"]["files"],
            report["recorded"]["workload_seconds"]
                .as_f64()
                .unwrap_or(0.0),
            report["recorded"]["fetched"],
            text(&out.stderr).lines().last().unwrap_or_default()
        );

        // 1. The list: the files read, in the order read; nothing untouched.
        let list = list_paths(&recorded)?;
        let positions: Vec<usize> = READ_ORDER
            .iter()
            .map(|p| list.iter().position(|l| l == p))
            .collect::<Option<_>>()
            .with_context(|| {
                format!("the recorded list misses some of {READ_ORDER:?}: {list:?}")
            })?;
        if !positions.windows(2).all(|w| w[0] < w[1]) {
            bail!("the recorded list has {READ_ORDER:?} out of order: {list:?}");
        }
        if let Some(p) = UNREAD.iter().find(|p| list.iter().any(|l| l == *p)) {
            bail!("the recorded list holds {p}, which the workload never touched: {list:?}");
        }
        if report["listed"].as_u64() != Some(list.len() as u64) {
            bail!(
                "the report lists {} paths, the file {}",
                report["listed"],
                list.len()
            );
        }

        // 2. The converted image, decrypted: recorded files first, then the landmark.
        skopeo(
            stack,
            "skopeo-decrypt",
            &[
                "--decryption-key",
                &keys.private().to_string_lossy(),
                &format!("docker://{dst}"),
                &format!("docker://{}", stack.image_ref("optimize-dec", "v1")),
            ],
        )?;
        let counts = check_prioritized(stack, "optimize-dec", &list)?;
        eprintln!(
            "prioritized files per layer: {counts:?} (recorded list: {} paths)",
            list.len()
        );
        if counts.iter().sum::<usize>() != list.len() {
            bail!("{counts:?} files placed first for a list of {}", list.len());
        }

        // 3. The encrypted image mounts lazily and reads exactly.
        let mut m = VeilMount::new(
            &stack.dir.join("mnt"),
            &stack.dir.join("state"),
            &stack.dir.join("cli"),
        )?;
        let out = m.mount_with(&dst, &["--keys-dir".as_ref(), keys.keys_dir.as_os_str()])?;
        expect_success("veil mount --keys-dir", &out)?;
        for (path, want) in SMALL {
            let got = read_file(&m.dir.join(path.trim_start_matches('/')), READ_TIMEOUT)?
                .with_context(|| format!("reading {path} through the mount"))?;
            if got != want.as_bytes() {
                bail!("{path} reads {:?} through the mount", text(&got));
            }
        }
        expect_success("veil umount", &m.umount()?)?;
        if !m.wait_serving_exit(Duration::from_secs(10)) {
            bail!("the serving process outlived veil umount by 10 s");
        }
        let left = m.cleanup();
        if !left.is_empty() {
            bail!("veil umount left {left:?}");
        }

        // 4. The same list given back with --access-list: the same files first.
        let out = veil(
            stack,
            "veil-optimize-list",
            &[
                "optimize",
                "--plain-http",
                &src,
                &stack.image_ref("optimize-list", "v1"),
                "--access-list",
                &recorded.to_string_lossy(),
            ],
        )?;
        expect_success("veil optimize --access-list", &out)?;
        let again = check_prioritized(stack, "optimize-list", &list)?;
        if again != counts {
            bail!("--access-list placed {again:?} files first, the recording run {counts:?}");
        }
        Ok(())
    });
}

#[test]
fn optimize_names_a_bad_source_a_failing_workload_and_a_missing_list() {
    with_stack("optimize-bad", |stack| {
        let (image, src) = push_source(stack)?;
        let dst = stack.image_ref("optimize-bad-out", "v1");
        let absent = stack.image_ref("no-such-image", "v1");
        let layout = format!("oci:{}:{}", image.layout.display(), image.tag);
        let missing = stack.dir.join("no-such-list.txt");
        let cases: [(&str, Vec<&str>, &[&str]); 4] = [
            (
                "absent source",
                vec!["--cmd", "true", &absent, &dst],
                &["no-such-image"],
            ),
            (
                "failing workload",
                vec!["--cmd", "cat /data/absent-file", &src, &dst],
                &["exited with", "--cmd", "/data/absent-file"],
            ),
            (
                "layout source without a list",
                vec![&layout, &dst],
                &["OCI layout", "--access-list"],
            ),
            (
                "missing list",
                vec![
                    "--access-list",
                    missing.to_str().unwrap_or_default(),
                    &src,
                    &dst,
                ],
                &["no-such-list.txt"],
            ),
        ];
        for (what, args, needles) in cases {
            let mut all = vec!["optimize", "--plain-http"];
            all.extend(args);
            let out = veil(stack, &format!("veil-{}", what.replace(' ', "-")), &all)?;
            let stderr = text(&out.stderr);
            eprintln!("[{what}] {}", stderr.trim_end());
            if out.status.success() {
                bail!("veil optimize succeeded with {what}");
            }
            if let Some(n) = needles.iter().find(|n| !stderr.contains(*n)) {
                bail!("[{what}] the error does not name {n:?}: {stderr}");
            }
            if stderr.contains("panicked") {
                bail!("[{what}] veil optimize panicked: {stderr}");
            }
        }
        // Nothing was stored under the destination tag.
        if registry_manifest(stack, "optimize-bad-out", "v1").is_ok() {
            bail!("a failed veil optimize stored {dst}");
        }
        Ok(())
    });
}
