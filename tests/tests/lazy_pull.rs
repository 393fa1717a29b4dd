//! End to end lazy pulling: Debian's `docker-registry` on loopback, an image built here
//! (busybox-static and small files in one layer, a 64 MiB random file in another)
//! converted to eStargz or zstd:chunked with Veil's writers and pushed, Veil's
//! snapshotter behind a private containerd, `veil pull` putting the image into containerd
//! without downloading its layers, and containers run from it with `ctr run`. The
//! registry's access log counts the bytes it served: a container reading a small file
//! must cost well under 10 % of the layers; reading the big file must give its exact
//! SHA-256. A layer Veil cannot serve lazily (a plain tar.gz) is reported by `veil pull
//! --lazy-only`, and otherwise downloaded and unpacked by containerd.
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test lazy_pull -- --nocapture`.

use std::time::Instant;

use anyhow::bail;
use veil_tests::containerd::{Containerd, SNAPSHOTTER};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer, LayerFormat,
    BIG_PATH, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use veil_tests::lazy_stack::{lines_with, status_layer, text, with_stack, LazyStack};

/// Size of the big random file.
const BIG_SIZE: usize = 64 << 20;

/// The digests `ctr content ls` lists (its first column).
fn content_digests(cd: &Containerd) -> anyhow::Result<Vec<String>> {
    Ok(cd
        .ctr_stdout(&["content", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// `veil status --json` and `veil status` against the daemon: the JSON report counts at
/// least one remote snapshot per layer in `lazy`, lists each layer in `fallbacks` with a
/// reason, and the text form prints without error and shows those reasons. Returns the
/// JSON report.
fn check_status(
    stack: &LazyStack,
    name: &str,
    lazy: &[&Layer],
    fallbacks: &[&Layer],
) -> anyhow::Result<serde_json::Value> {
    let report = stack.status_json()?;
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    let remote = count("remote_snapshots");
    if remote < lazy.len().max(1) as u64 || count("snapshots") < remote {
        bail!(
            "veil status reports {} snapshot(s), {remote} remote; expected at least {} remote:\n{report:#}",
            count("snapshots"),
            lazy.len().max(1)
        );
    }
    let listed = report["fallbacks"].as_array().cloned().unwrap_or_default();
    for layer in fallbacks {
        let reason = listed
            .iter()
            .find(|f| f["digest"].as_str() == Some(&layer.digest))
            .and_then(|f| f["reason"].as_str())
            .unwrap_or("");
        if reason.trim().is_empty() {
            bail!(
                "veil status does not list the fallback {} with a reason:\n{report:#}",
                layer.digest
            );
        }
    }
    // Each lazily served layer, with its counters.
    for layer in lazy {
        let l = status_layer(&report, &layer.digest)?;
        let (size, fetched) = (
            l["blob_size"].as_u64().unwrap_or(0),
            l["bytes_fetched"].as_u64().unwrap_or(0),
        );
        if size != layer.size() || fetched > size || l["mode"].as_str() != Some("lazy") {
            bail!("veil status reports layer {} wrongly: {l:#}", layer.digest);
        }
    }
    if count("registry_bytes_fetched") == 0 {
        bail!("veil status reports no bytes fetched from the registry:\n{report:#}");
    }

    let out = stack.veil_status(false)?;
    let shown = text(&out.stdout);
    if !out.status.success() || !shown.contains("snapshots:") {
        bail!(
            "veil status failed or printed no summary ({}):\n{shown}{}",
            out.status,
            text(&out.stderr)
        );
    }
    for f in &listed {
        let reason = f["reason"].as_str().unwrap_or("");
        if !shown.contains(reason) {
            bail!("veil status does not show the fallback reason {reason:?}:\n{shown}");
        }
    }
    eprintln!("[{name}] veil status:\n{}", shown.trim_end());
    Ok(report)
}

/// The two-layer image in `format`, pulled lazily, run twice.
fn lazy_pull(format: LayerFormat) {
    let name = match format {
        LayerFormat::Estargz => "lazy-estargz",
        LayerFormat::ZstdChunked => "lazy-zstdchunked",
        LayerFormat::PlainGzip => unreachable!(),
    };
    with_stack(name, |stack| {
        // The image.
        let t = Instant::now();
        let big = random_bytes(BIG_SIZE, 0x5eed);
        let big_sha = sha256_hex(&big);
        let layers = vec![
            pack(tar_of(&base_entries()?)?, format)?,
            pack(tar_of(&top_entries(big))?, format)?,
        ];
        let total: u64 = layers.iter().map(Layer::size).sum();
        let manifest_digest = stack.push("lazy", "1", &layers)?;
        eprintln!(
            "[{name}] built and pushed 2 {format:?} layers ({} + {} bytes) in {:.1?}; manifest {manifest_digest}",
            layers[0].size(),
            layers[1].size(),
            t.elapsed()
        );
        stack.start()?;
        let reference = stack.image_ref("lazy", "1");

        // veil pull.
        let (out, took) = stack.veil_pull(&reference, &[])?;
        let stdout = text(&out.stdout);
        eprintln!(
            "[{name}] veil pull took {took:.2?}:\n{stdout}{}",
            text(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "veil pull failed ({}):\n{stdout}\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        for (i, layer) in layers.iter().enumerate() {
            let line = format!("layer {}/2 {}", i + 1, layer.digest);
            if lines_with(&stdout, &[&line, "lazy"]).is_empty() {
                bail!(
                    "veil pull did not report layer {} as lazy:\n{stdout}",
                    i + 1
                );
            }
            let veil_log = stack.veil.log_text();
            if lines_with(&veil_log, &["layer served lazily", &layer.digest]).is_empty() {
                bail!(
                    "the veil log does not say layer {} was served lazily",
                    layer.digest
                );
            }
        }
        if !stdout.contains("2 lazy, 0 unpacked, 0 already present") {
            bail!("unexpected summary:\n{stdout}");
        }

        // containerd has the manifest and config, not the layers.
        let content = content_digests(stack.cd())?;
        if !content.contains(&manifest_digest) {
            bail!("containerd's content store lacks the manifest: {content:?}");
        }
        for layer in &layers {
            if content.contains(&layer.digest) {
                bail!(
                    "containerd's content store has layer {}: {content:?}",
                    layer.digest
                );
            }
            if stack.cd().ctr(&["content", "get", &layer.digest]).is_ok() {
                bail!(
                    "`ctr content get {}` succeeded: the layer was downloaded",
                    layer.digest
                );
            }
        }
        let images = stack.cd().ctr_stdout(&["images", "ls", "-q"])?;
        if !images.lines().any(|l| l.trim() == reference) {
            bail!("containerd has no image {reference}:\n{images}");
        }
        let after_pull: Vec<(usize, u64)> =
            layers.iter().map(|l| stack.served(&l.digest)).collect();

        // A small file, with exact contents, for a small part of the layers.
        let hello = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-cat"),
            &["/bin/cat", HELLO_PATH, LAYER2_PATH],
        )?;
        if hello != format!("{HELLO_TEXT}{LAYER2_TEXT}") {
            bail!("the container printed {hello:?}");
        }
        let after_cat: Vec<(usize, u64)> = layers.iter().map(|l| stack.served(&l.digest)).collect();
        let served: u64 = after_cat.iter().map(|(_, b)| b).sum();
        eprintln!(
            "[{name}] registry served for the layers: after veil pull {} / {} bytes ({} / {} requests); \
             after `cat` in a container {} / {} bytes ({} / {} requests); total {served} of {total} \
             layer bytes = {:.2} %",
            after_pull[0].1, after_pull[1].1, after_pull[0].0, after_pull[1].0,
            after_cat[0].1, after_cat[1].1, after_cat[0].0, after_cat[1].0,
            served as f64 * 100.0 / total as f64
        );
        if served * 10 >= total {
            bail!("the registry served {served} of {total} layer bytes for a `cat` (10 % or more)");
        }
        if after_cat[1].1 * 10 >= layers[1].size() {
            bail!(
                "the registry served {} of the big layer's {} bytes for a `cat`",
                after_cat[1].1,
                layers[1].size()
            );
        }

        // The daemon's status shows the lazily served layers.
        check_status(stack, name, &[&layers[0], &layers[1]], &[])?;

        // The big file, read whole, is exact.
        let sum = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-sha"),
            &["/bin/sha256sum", BIG_PATH],
        )?;
        if sum.split_whitespace().next() != Some(big_sha.as_str()) {
            bail!("sha256sum in the container printed {sum:?}, expected {big_sha}");
        }
        let after_sum = stack.served(&layers[1].digest);
        eprintln!(
            "[{name}] sha256sum of the {BIG_SIZE}-byte file in a container matched; the registry has now \
             served {} bytes of the {}-byte big layer in {} requests",
            after_sum.1,
            layers[1].size(),
            after_sum.0
        );

        // Pulling again changes nothing.
        let (again, took) = stack.veil_pull(&reference, &[])?;
        let again_out = text(&again.stdout);
        if !again.status.success() || !again_out.contains("0 lazy, 0 unpacked, 2 already present") {
            bail!("second veil pull:\n{again_out}\n{}", text(&again.stderr));
        }
        eprintln!("[{name}] a second veil pull found both layers present in {took:.2?}");
        Ok(())
    });
}

#[test]
fn estargz_image_is_pulled_lazily() {
    lazy_pull(LayerFormat::Estargz);
}

#[test]
fn zstd_chunked_image_is_pulled_lazily() {
    lazy_pull(LayerFormat::ZstdChunked);
}

/// A plain tar.gz layer: `--lazy-only` refuses it by name; without it, containerd
/// downloads and unpacks it on top of a lazily served eStargz base layer.
#[test]
fn plain_layer_is_unpacked_by_containerd() {
    let name = "plain-layer";
    with_stack(name, |stack| {
        let small = random_bytes(1 << 20, 7);
        let small_sha = sha256_hex(&small);
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let plain = pack(
            tar_of(&[
                Entry::Dir("data", 0o755),
                Entry::Dir("etc", 0o755),
                Entry::File(BIG_PATH.trim_start_matches('/').into(), small, 0o644),
                Entry::File(
                    LAYER2_PATH.trim_start_matches('/').into(),
                    LAYER2_TEXT.into(),
                    0o644,
                ),
            ])?,
            LayerFormat::PlainGzip,
        )?;
        stack.push("plain", "1", std::slice::from_ref(&plain))?;
        stack.push("mixed", "1", &[base.clone(), plain.clone()])?;
        stack.start()?;

        // --lazy-only names the layer it cannot serve.
        let plain_ref = stack.image_ref("plain", "1");
        let (out, _) = stack.veil_pull(&plain_ref, &["--lazy-only"])?;
        let stderr = text(&out.stderr);
        eprintln!(
            "[{name}] veil pull --lazy-only {plain_ref}: {}\n{}{stderr}",
            out.status,
            text(&out.stdout)
        );
        if out.status.success() {
            bail!("veil pull --lazy-only of a plain layer succeeded");
        }
        if !(stderr.contains(&plain.digest) && stderr.contains("not lazily servable")) {
            bail!("veil pull --lazy-only did not name the layer clearly:\n{stderr}");
        }
        if lines_with(
            &stack.veil.log_text(),
            &["not served lazily", &plain.digest],
        )
        .is_empty()
        {
            bail!(
                "the veil log does not report the fallback for {}",
                plain.digest
            );
        }
        let snapshots =
            stack
                .cd()
                .ctr_stdout(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])?;
        if snapshots.contains("veil-pull-") {
            bail!("the failed pull left its active snapshot behind:\n{snapshots}");
        }
        if stack
            .cd()
            .ctr_stdout(&["images", "ls", "-q"])?
            .contains(&plain_ref)
        {
            bail!("a failed pull created the image record");
        }

        // Without it, the plain layer is unpacked on top of the lazy one.
        let reference = stack.image_ref("mixed", "1");
        let (out, took) = stack.veil_pull(&reference, &[])?;
        let stdout = text(&out.stdout);
        eprintln!(
            "[{name}] veil pull {reference} took {took:.2?}:\n{stdout}{}",
            text(&out.stderr)
        );
        if !out.status.success() {
            bail!("veil pull failed:\n{stdout}\n{}", text(&out.stderr));
        }
        if lines_with(&stdout, &[&format!("layer 1/2 {}", base.digest), "lazy"]).is_empty()
            || lines_with(
                &stdout,
                &[&format!("layer 2/2 {}", plain.digest), "unpacked"],
            )
            .is_empty()
        {
            bail!("veil pull did not report layer 1 lazy and layer 2 unpacked:\n{stdout}");
        }
        let content = content_digests(stack.cd())?;
        if !content.contains(&plain.digest) || content.contains(&base.digest) {
            bail!("the content store should hold the plain layer only: {content:?}");
        }
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-run"),
            &[
                "/bin/sh",
                "-c",
                &format!("cat {HELLO_PATH} {LAYER2_PATH}; sha256sum {BIG_PATH}"),
            ],
        )?;
        let expected = format!("{HELLO_TEXT}{LAYER2_TEXT}{small_sha}  {BIG_PATH}\n");
        if printed != expected {
            bail!("the container printed {printed:?}, expected {expected:?}");
        }
        // The daemon's status shows the lazy base layer and why the plain one fell back.
        let report = check_status(stack, name, &[&base], &[&plain])?;
        let reason = report["fallbacks"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|f| f["digest"].as_str() == Some(&plain.digest))
            })
            .and_then(|f| f["reason"].as_str())
            .unwrap_or("")
            .to_string();
        if !reason.contains("toc.digest") {
            bail!(
                "the fallback reason does not say the TOC digest annotation is missing: {reason:?}"
            );
        }
        let (n, bytes) = stack.served(&plain.digest);
        eprintln!(
            "[{name}] container output matched; the plain layer ({} bytes) was fetched in {n} \
             request(s), {bytes} bytes",
            plain.size()
        );
        Ok(())
    });
}
