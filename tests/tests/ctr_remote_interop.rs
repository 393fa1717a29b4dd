//! Interop with the reference tool: images converted by `ctr-remote` mount in Veil.
//!
//! `ctr-remote` (containerd's `ctr` with stargz-snapshotter's extra commands) is built from
//! Debian's `golang-github-containerd-stargz-snapshotter-dev` sources in GOPATH mode, like
//! the snapshotter suite's harness:
//!
//! ```text
//! GO111MODULE=off GOPATH=/usr/share/gocode:tests/go GOCACHE=target/go-cache \
//!   go build -o target/go-tools/ctr-remote github.com/containerd/stargz-snapshotter/cmd/ctr-remote
//! ```
//!
//! Then, on a private containerd with Veil as the `veil` proxy snapshotter and Debian's
//! `docker-registry` on loopback:
//!
//! 1. a plain (tar+gzip) two-layer busybox image built with umoci, with a 24 MiB random file
//!    in layer 2, is imported with `ctr -n ctr-remote-src images import --no-unpack`;
//! 2. `ctr-remote -n ctr-remote-src images convert --estargz --oci SRC DST` (or
//!    `--zstdchunked --oci`; Debian's stargz 0.12 writes the legacy zstd:chunked variant)
//!    makes the lazy image, and `ctr-remote images push --plain-http DST` sends it to the
//!    registry;
//! 3. `veil pull --plain-http --lazy-only DST` (namespace `veil-test`, where containerd has
//!    never seen the layers) must serve every layer lazily; a container run with
//!    `ctr run --snapshotter veil` prints the small files exactly while the registry has
//!    served under 10 % of the layers, `veil status --json` counts one remote snapshot per
//!    layer and no fallback, and `sha256sum` of the big file in a container matches.
//!
//! Needs root, containerd 1.6, runc, docker-registry, umoci, busybox-static, golang-go,
//! the stargz-snapshotter sources and FUSE. Run with
//! `cargo test -p veil-tests --test ctr_remote_interop -- --nocapture`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_tests::containerd::{CtrOutput, NAMESPACE, SNAPSHOTTER};
use veil_tests::gosuite::{build_go_tool, go_tool_path};
use veil_tests::image::build_test_image_with;
use veil_tests::lazy_image::{random_bytes, sha256_hex, BIG_PATH};
use veil_tests::lazy_stack::{lines_with, status_layer, text, with_stack, LazyStack};

/// The Go package of the reference tool.
const CTR_REMOTE_PACKAGE: &str = "github.com/containerd/stargz-snapshotter/cmd/ctr-remote";

/// The namespace the plain image is imported and converted in; Veil pulls into
/// [`NAMESPACE`], which never sees the converted layers' blobs.
const CONVERT_NS: &str = "ctr-remote-src";

/// Size of the big random file in layer 2: big enough that the base layer (busybox, read
/// whole whenever a container runs a command) stays under 10 % of the image.
const BIG_SIZE: usize = 24 << 20;

/// How long one `ctr`/`ctr-remote` command may take.
const CTR_REMOTE_TIMEOUT: Duration = Duration::from_secs(180);

/// The TOC digest annotation ctr-remote puts on eStargz and zstd:chunked layers.
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// The annotations of the (legacy) zstd:chunked variant stargz 0.12 writes: the
/// manifest's checksum and `offset:length:uncompressed length:type`.
const ZSTD_CHUNKED_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
const ZSTD_CHUNKED_POSITION: &str = "io.containers.zstd-chunked.manifest-position";

/// The layer media types in the manifest ctr-remote writes.
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// `ctr-remote`, built once per test binary into `<target>/go-tools/ctr-remote`.
fn ctr_remote() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let t = Instant::now();
        let out = go_tool_path("ctr-remote");
        let r = build_go_tool(CTR_REMOTE_PACKAGE, &out).map_err(|e| format!("{e:#}"));
        eprintln!(
            "[ctr-remote] go build {CTR_REMOTE_PACKAGE} (GOPATH mode) took {:.1?}",
            t.elapsed()
        );
        r
    });
    match built {
        Ok(path) => path.clone(),
        Err(e) => panic!("building ctr-remote failed:\n{e}"),
    }
}

/// Which conversion.
#[derive(Debug, Clone, Copy)]
enum Format {
    Estargz,
    ZstdChunked,
}

impl Format {
    fn flag(self) -> &'static str {
        match self {
            Format::Estargz => "--estargz",
            Format::ZstdChunked => "--zstdchunked",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Estargz => "ctr-remote-estargz",
            Format::ZstdChunked => "ctr-remote-zstdchunked",
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            Format::Estargz => OCI_GZIP,
            Format::ZstdChunked => OCI_ZSTD,
        }
    }
}

/// One layer of the converted manifest.
#[derive(Debug, Clone)]
struct ConvertedLayer {
    digest: String,
    size: u64,
    media_type: String,
    annotations: serde_json::Map<String, serde_json::Value>,
}

/// `ctr-remote -a SOCK -n NS ARGS`, logged with its output.
fn ctr_remote_run(
    stack: &LazyStack,
    name: &str,
    namespace: &str,
    args: &[&str],
) -> anyhow::Result<CtrOutput> {
    let t = Instant::now();
    let out = stack
        .cd()
        .ctr_like(&ctr_remote(), namespace, args, CTR_REMOTE_TIMEOUT)?;
    eprintln!(
        "[{name}] ctr-remote -n {namespace} {} ({:.1?}):\n{}{}",
        args.join(" "),
        t.elapsed(),
        tail(&out.stdout, 12),
        tail(&out.stderr, 12)
    );
    Ok(out)
}

/// The last `n` lines of `s`, indented (ctr's push progress is long).
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// The manifest `reference` names in `namespace` (its digest and JSON), read back from
/// containerd's content store.
fn manifest_of(
    stack: &LazyStack,
    namespace: &str,
    reference: &str,
) -> anyhow::Result<(String, serde_json::Value)> {
    let cd = stack.cd();
    let ls = cd
        .ctr_like(
            std::path::Path::new("ctr"),
            namespace,
            &["images", "ls"],
            CTR_REMOTE_TIMEOUT,
        )?
        .stdout;
    // REF TYPE DIGEST SIZE PLATFORMS LABELS
    let Some(row) = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&reference))
    else {
        bail!("`ctr -n {namespace} images ls` does not list {reference}:\n{ls}");
    };
    let (media_type, digest) = (row[1], row[2].to_string());
    if !media_type.contains("manifest") || media_type.contains("list") {
        bail!("{reference} is a {media_type}, expected a single image manifest:\n{ls}");
    }
    let json = cd
        .ctr_like(
            std::path::Path::new("ctr"),
            namespace,
            &["content", "get", &digest],
            CTR_REMOTE_TIMEOUT,
        )?
        .stdout;
    let manifest: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("parsing manifest {digest}"))?;
    Ok((digest, manifest))
}

fn layers_of(manifest: &serde_json::Value) -> Vec<ConvertedLayer> {
    manifest["layers"]
        .as_array()
        .map(|layers| {
            layers
                .iter()
                .map(|l| ConvertedLayer {
                    digest: l["digest"].as_str().unwrap_or("").to_string(),
                    size: l["size"].as_u64().unwrap_or(0),
                    media_type: l["mediaType"].as_str().unwrap_or("").to_string(),
                    annotations: l["annotations"].as_object().cloned().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The digests `ctr content ls` lists in Veil's namespace (its first column).
fn content_digests(stack: &LazyStack) -> anyhow::Result<Vec<String>> {
    Ok(stack
        .cd()
        .ctr_stdout(&["content", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// `veil status --json`: one remote snapshot per layer, every layer listed as lazy with
/// sane counters, no fallback.
fn check_status(
    stack: &LazyStack,
    name: &str,
    layers: &[ConvertedLayer],
) -> anyhow::Result<serde_json::Value> {
    let report = stack.status_json()?;
    let remote = report["remote_snapshots"].as_u64().unwrap_or(0);
    if remote != layers.len() as u64 {
        bail!(
            "veil status reports {remote} remote snapshot(s), expected {} (one per layer):\n{report:#}",
            layers.len()
        );
    }
    let fallbacks = report["fallbacks"].as_array().cloned().unwrap_or_default();
    if !fallbacks.is_empty() {
        bail!("veil status reports fallbacks:\n{report:#}");
    }
    for layer in layers {
        let l = status_layer(&report, &layer.digest)?;
        let (size, fetched) = (
            l["blob_size"].as_u64().unwrap_or(0),
            l["bytes_fetched"].as_u64().unwrap_or(0),
        );
        if size != layer.size || fetched > size || l["mode"].as_str() != Some("lazy") {
            bail!("veil status reports layer {} wrongly: {l:#}", layer.digest);
        }
    }
    let shown = stack.veil_status(false)?;
    eprintln!("[{name}] veil status:\n{}", text(&shown.stdout).trim_end());
    Ok(report)
}

/// A plain image converted by `ctr-remote` to `format`, pushed, pulled lazily by Veil and
/// run.
fn convert_and_run(format: Format) {
    let name = format.name();
    with_stack(name, |stack| {
        // ctr-remote first: a build failure says which package is missing.
        ctr_remote();

        // The plain image: busybox and markers, a 24 MiB random file in layer 2.
        let t = Instant::now();
        let work = stack.dir.join("image");
        std::fs::create_dir_all(&work)?;
        let big = random_bytes(BIG_SIZE, 0xc7e_5eed);
        let big_sha = sha256_hex(&big);
        let image = build_test_image_with(
            &work,
            "veil.test/ctr-remote-src",
            "plain",
            &[(BIG_PATH, big.as_slice())],
        )?;
        drop(big);
        eprintln!(
            "[{name}] built the plain image {} ({} layers) with umoci in {:.1?}",
            image.reference,
            image.layer_count(),
            t.elapsed()
        );

        stack.start()?;
        let cd = stack.cd();
        let archive = image.archive.to_string_lossy().into_owned();
        let imported = cd.ctr_like(
            std::path::Path::new("ctr"),
            CONVERT_NS,
            &[
                "images",
                "import",
                "--no-unpack",
                "--base-name",
                &image.base_name,
                &archive,
            ],
            CTR_REMOTE_TIMEOUT,
        )?;
        eprintln!(
            "[{name}] ctr -n {CONVERT_NS} images import --no-unpack --base-name {} {archive}:\n{}",
            image.base_name,
            tail(&imported.stdout, 6)
        );
        let (_, src_manifest) = manifest_of(stack, CONVERT_NS, &image.reference)?;
        for layer in layers_of(&src_manifest) {
            if layer.media_type != OCI_GZIP || layer.annotations.contains_key(TOC_DIGEST) {
                bail!("the source image is not plain tar+gzip: {layer:?}");
            }
        }

        // Convert, push.
        let tag = match format {
            Format::Estargz => "esgz",
            Format::ZstdChunked => "zstdchunked",
        };
        let dst = stack.image_ref("ctr-remote/busybox", tag);
        ctr_remote_run(
            stack,
            name,
            CONVERT_NS,
            &[
                "images",
                "convert",
                format.flag(),
                "--oci",
                &image.reference,
                &dst,
            ],
        )?;
        let (manifest_digest, manifest) = manifest_of(stack, CONVERT_NS, &dst)?;
        let layers = layers_of(&manifest);
        eprintln!("[{name}] converted manifest {manifest_digest}:\n{manifest:#}");
        if layers.len() != image.layer_count() {
            bail!(
                "the converted image has {} layers, the source {}",
                layers.len(),
                image.layer_count()
            );
        }
        for layer in &layers {
            if layer.media_type != format.media_type() {
                bail!(
                    "ctr-remote wrote layer {} as {}, expected {}",
                    layer.digest,
                    layer.media_type,
                    format.media_type()
                );
            }
            if !layer.annotations.contains_key(TOC_DIGEST) {
                bail!(
                    "ctr-remote's layer {} has no {TOC_DIGEST} annotation",
                    layer.digest
                );
            }
            if let Format::ZstdChunked = format {
                for key in [ZSTD_CHUNKED_CHECKSUM, ZSTD_CHUNKED_POSITION] {
                    if !layer.annotations.contains_key(key) {
                        bail!(
                            "ctr-remote's zstd:chunked layer {} has no {key} annotation",
                            layer.digest
                        );
                    }
                }
            }
            if image.layer_digests.contains(&layer.digest) {
                bail!("layer {} was not converted", layer.digest);
            }
        }
        let total: u64 = layers.iter().map(|l| l.size).sum();
        ctr_remote_run(
            stack,
            name,
            CONVERT_NS,
            &["images", "push", "--plain-http", &dst],
        )?;
        for layer in &layers {
            let (n, bytes) = stack.served(&layer.digest);
            if n != 0 || bytes != 0 {
                bail!(
                    "the registry already served layer {} before veil pull",
                    layer.digest
                );
            }
        }

        // veil pull, in a namespace that never saw the converted layers.
        let (out, took) = stack.veil_pull(&dst, &["--lazy-only"])?;
        let stdout = text(&out.stdout);
        eprintln!(
            "[{name}] veil pull --plain-http --lazy-only {dst} took {took:.2?}:\n{stdout}{}",
            text(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "veil pull failed ({}):\n{stdout}\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        let n = layers.len();
        for (i, layer) in layers.iter().enumerate() {
            let line = format!("layer {}/{n} {}", i + 1, layer.digest);
            if lines_with(&stdout, &[&line, "lazy"]).is_empty() {
                bail!(
                    "veil pull did not report layer {} as lazy:\n{stdout}",
                    i + 1
                );
            }
            if lines_with(
                &stack.veil.log_text(),
                &["layer served lazily", &layer.digest],
            )
            .is_empty()
            {
                bail!(
                    "the veil log does not say layer {} was served lazily",
                    layer.digest
                );
            }
        }
        if !stdout.contains(&format!("{n} lazy, 0 unpacked, 0 already present")) {
            bail!("unexpected summary:\n{stdout}");
        }
        let content = content_digests(stack)?;
        if !content.contains(&manifest_digest) {
            bail!("containerd's content store (namespace {NAMESPACE}) lacks the manifest: {content:?}");
        }
        for layer in &layers {
            if content.contains(&layer.digest) {
                bail!(
                    "containerd's content store (namespace {NAMESPACE}) has layer {}",
                    layer.digest
                );
            }
        }
        let after_pull: Vec<(usize, u64)> =
            layers.iter().map(|l| stack.served(&l.digest)).collect();

        // Small files, exactly, for a small part of the layers.
        let script = image.check_script();
        let printed = cd.run_container(
            SNAPSHOTTER,
            &dst,
            &format!("{name}-cat"),
            &["/bin/sh", "-c", &script],
        )?;
        if printed != image.expected_output() {
            bail!(
                "the container printed {printed:?}, expected {:?}",
                image.expected_output()
            );
        }
        let after_cat: Vec<(usize, u64)> = layers.iter().map(|l| stack.served(&l.digest)).collect();
        let served: u64 = after_cat.iter().map(|(_, b)| b).sum();
        eprintln!(
            "[{name}] container printed the small files exactly; registry served for the layers: \
             after veil pull {after_pull:?}, after `cat` {after_cat:?} (requests, bytes); \
             {served} of {total} layer bytes = {:.2} %",
            served as f64 * 100.0 / total as f64
        );
        if served * 10 >= total {
            bail!("the registry served {served} of {total} layer bytes for a `cat` (10 % or more)");
        }
        // The shell is busybox, so the base layer may be read whole; the big layer not.
        let big_layer = &layers[layers.len() - 1];
        let big_served = after_cat[layers.len() - 1].1;
        if big_served * 10 >= big_layer.size {
            bail!(
                "the registry served {big_served} of the big layer's {} bytes for a `cat`",
                big_layer.size
            );
        }

        check_status(stack, name, &layers)?;

        // The big file, whole and exact.
        let sum = cd.run_container(
            SNAPSHOTTER,
            &dst,
            &format!("{name}-sha"),
            &["/bin/busybox", "sha256sum", BIG_PATH],
        )?;
        if sum.split_whitespace().next() != Some(big_sha.as_str()) {
            bail!("sha256sum in the container printed {sum:?}, expected {big_sha}");
        }
        let after_sum: Vec<(usize, u64)> = layers.iter().map(|l| stack.served(&l.digest)).collect();
        eprintln!(
            "[{name}] sha256sum of the {BIG_SIZE}-byte file in a container matched; the registry \
             has now served {after_sum:?} (requests, bytes) of layers of {:?} bytes",
            layers.iter().map(|l| l.size).collect::<Vec<_>>()
        );
        check_status(stack, name, &layers)?;
        Ok(())
    });
}

#[test]
fn ctr_remote_estargz_image_mounts_lazily() {
    convert_and_run(Format::Estargz);
}

#[test]
fn ctr_remote_zstd_chunked_image_mounts_lazily() {
    convert_and_run(Format::ZstdChunked);
}
