//! What a lazily served layer is checked against beyond its chunk digests (issue 16), with
//! real parts: Debian's `docker-registry`, containerd 1.6 and Veil's snapshotter on
//! loopback, images built here.
//!
//! 1. **diff_id once the whole blob is there.** `liar:1`'s config gives its second layer
//!    a diff_id that is not its content's (the layer itself is a valid, digest-correct
//!    eStargz layer). With the background fetch on, once the whole blob is in the disk
//!    cache Veil decompresses it, finds the mismatch, and marks the layer bad: `veil
//!    status` shows it (`diff_id: mismatch`, the reason naming the expected and actual
//!    diff_id, not healthy), reads of its files fail with EIO, the log names the layer and
//!    both digests, and no container starts on it. The control, `honest:1` (correct
//!    diff_ids), is `verified` and its container prints its file.
//! 2. **The TOC recorded with a snapshot survives a restart.** A layer is prepared with
//!    the labels `ctr-remote`/nerdctl send (image reference by tag, no manifest digest),
//!    straight on Veil's snapshots socket. The registry then swaps the tag: a manifest with
//!    the same layer digest but another TOC digest, and the stored blob replaced by a valid
//!    eStargz blob of that TOC (same size). After Veil restarts, the layer is not mounted
//!    again with the new TOC: its mount point answers EIO, `veil status` lists it as
//!    failed naming both TOC digests, and a view on it is refused; the running
//!    container's files never change to the attacker's.
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test lazy_integrity -- --test-threads=1 --nocapture`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, ViewSnapshotRequest};
use veil_formats::estargz::TOC_DIGEST_ANNOTATION;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::encrypted_support::{pull_ok, stored_blob_path};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, Entry, Layer, LayerFormat,
};
use veil_tests::lazy_stack::{status_layer, with_stack, LazyStack};

/// The file of the second layer.
const FILE: &str = "etc/veil-integrity.txt";

/// How long the background fetch and the diff_id pass may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// A layer holding [`FILE`] with `text` and a random file (so it is more than a chunk).
fn top(text: &str, seed: u64) -> anyhow::Result<Layer> {
    pack(
        tar_of(&[
            Entry::Dir("etc", 0o755),
            Entry::File(FILE.into(), text.as_bytes().to_vec(), 0o644),
            Entry::File(
                "etc/veil-noise.bin".into(),
                random_bytes(64 << 10, seed),
                0o644,
            ),
        ])?,
        LayerFormat::Estargz,
    )
}

/// Veil's config: plain HTTP to the registry, the disk cache and background fetch on.
fn write_config(stack: &LazyStack) -> anyhow::Result<()> {
    std::fs::write(
        stack.dir.join("veil-config.toml"),
        format!(
            "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = true\n",
            stack.registry.host()
        ),
    )?;
    Ok(())
}

/// Waits until `veil status` shows layer `digest` with a diff_id state other than
/// `pending`; returns its status entry.
fn wait_diff_id(stack: &LazyStack, digest: &str) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    loop {
        let status = stack.status_json()?;
        if let Ok(layer) = status_layer(&status, digest) {
            let state = layer["diff_id"].as_str().unwrap_or_default();
            if !state.is_empty() && state != "pending" {
                return Ok(layer.clone());
            }
        }
        if start.elapsed() > CHECK_TIMEOUT {
            bail!("layer {digest}'s diff_id was not checked within {CHECK_TIMEOUT:?}: {status:#}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// FUSE mount points below `root` (from /proc/self/mountinfo).
fn fuse_mounts_below(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter(|l| l.contains(" - fuse"))
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect())
}

/// Reads `FILE` below each FUSE mount of Veil's root that has it: (mount, result).
fn read_in_layers(stack: &LazyStack) -> anyhow::Result<Vec<(PathBuf, std::io::Result<Vec<u8>>)>> {
    Ok(fuse_mounts_below(&stack.dir.join("veil"))?
        .into_iter()
        .map(|m| {
            let r = std::fs::read(m.join(FILE));
            (m, r)
        })
        .filter(|(_, r)| !matches!(r, Err(e) if e.kind() == std::io::ErrorKind::NotFound))
        .collect())
}

#[test]
fn a_layer_whose_diff_id_is_not_its_configs_is_marked_bad_once_fetched() {
    let name = "integrity-diff-id";
    with_stack(name, |stack| {
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let honest_top = top("the honest file\n", 1)?;
        let liar_top = top("a file the config does not vouch for\n", 2)?;
        let mut liar_layers = vec![base.clone(), liar_top.clone()];
        // The attack: the config's diff_id is not the layer's (another chainID than the
        // honest image's, so the two do not meet in the identity rule).
        let claimed = format!("sha256:{}", sha256_hex(b"a tar stream this layer is not"));
        liar_layers[1].diff_id = claimed.clone();
        stack.push("honest", "1", &[base.clone(), honest_top.clone()])?;
        stack.push("liar", "1", &liar_layers)?;
        write_config(stack)?;
        stack.start()?;

        // The control: a correct diff_id is verified and served.
        let honest = stack.image_ref("honest", "1");
        pull_ok(stack, name, &honest)?;
        let layer = wait_diff_id(stack, &honest_top.digest)?;
        if layer["diff_id"] != "verified" || !layer["bad"].is_null() {
            bail!("the honest layer was not verified: {layer:#}");
        }
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &honest,
            &format!("{name}-honest"),
            &["/bin/cat", &format!("/{FILE}")],
        )?;
        if printed != "the honest file\n" {
            bail!("the honest container printed {printed:?}");
        }

        let liar = stack.image_ref("liar", "1");
        pull_ok(stack, name, &liar)?;
        let layer = wait_diff_id(stack, &liar_top.digest)?;
        eprintln!("[{name}] the liar's layer in veil status: {layer:#}");
        let bad = layer["bad"].as_str().unwrap_or_default();
        if layer["diff_id"] != "mismatch"
            || !bad.contains(&claimed)
            || !bad.contains(&liar_top.diff_id)
        {
            bail!("the liar's layer is not reported bad naming both diff_ids: {layer:#}");
        }
        let status = stack.status_json()?;
        if status["layers"]
            .as_array()
            .is_some_and(|l| l.iter().all(|l| l["bad"].is_null()))
        {
            bail!("no layer is bad in {status:#}");
        }
        let shown = stack.veil_status(false)?;
        let shown = String::from_utf8_lossy(&shown.stdout).to_string();
        if !shown.contains("NOT HEALTHY: 1 layers marked bad") {
            bail!("veil status does not say the daemon is not healthy:\n{shown}");
        }
        let log = stack.veil.log_text();
        if !log.lines().any(|l| {
            l.contains("layer marked bad")
                && l.contains(&liar_top.digest)
                && l.contains(&liar_top.diff_id)
                && l.contains(&claimed)
        }) {
            bail!("no log line names the layer, the expected and the actual diff_id");
        }

        // Its files: EIO, never the content the config does not vouch for.
        let reads = read_in_layers(stack)?;
        let mut eio = 0;
        for (mount, read) in &reads {
            match read {
                Ok(bytes) if bytes.starts_with(b"a file the config") => {
                    bail!("{} served the unvouched file", mount.display())
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EIO) => eio += 1,
                Err(e) => bail!("reading {FILE} in {}: {e}", mount.display()),
            }
        }
        if eio != 1 {
            bail!("expected exactly one layer answering EIO, got {reads:?}");
        }
        // No container starts on it.
        let run = stack.cd().run_container(
            SNAPSHOTTER,
            &liar,
            &format!("{name}-liar"),
            &["/bin/cat", &format!("/{FILE}")],
        );
        match run {
            Ok(printed) => bail!("a container ran on the bad layer and printed {printed:?}"),
            Err(e) => eprintln!("[{name}] the liar's container did not start: {e:#}"),
        }
        Ok(())
    });
}

/// `Prepare` on Veil's snapshots socket with the labels `ctr-remote` and nerdctl send:
/// the image by tag, the layer digest, no manifest digest. ALREADY_EXISTS: served.
async fn prepare_remote(
    socket: &Path,
    target: &str,
    image: &str,
    layer: &str,
) -> anyhow::Result<()> {
    let channel = containerd_client::connect(socket).await?;
    let labels: HashMap<String, String> = [
        ("containerd.io/snapshot.ref", target),
        ("containerd.io/snapshot/remote/stargz.reference", image),
        ("containerd.io/snapshot/remote/stargz.digest", layer),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let got = SnapshotsClient::new(channel)
        .prepare(PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: format!("extract-{target}"),
            parent: String::new(),
            labels,
        })
        .await;
    match got {
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        other => bail!("Prepare of a remote layer: expected ALREADY_EXISTS, got {other:?}"),
    }
}

/// `View` of `parent` on Veil's snapshots socket: the directory of its (bind) mount, or
/// the gRPC status.
async fn view(
    socket: &Path,
    key: &str,
    parent: &str,
) -> anyhow::Result<Result<PathBuf, tonic::Status>> {
    let channel = containerd_client::connect(socket).await?;
    let got = SnapshotsClient::new(channel)
        .view(ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        })
        .await;
    Ok(match got {
        Ok(r) => {
            let mounts = r.into_inner().mounts;
            let bind = mounts
                .iter()
                .find(|m| m.r#type == "bind")
                .with_context(|| format!("the view has no bind mount: {mounts:?}"))?;
            Ok(PathBuf::from(&bind.source))
        }
        Err(s) => Err(s),
    })
}

#[test]
fn a_tag_swapped_to_another_toc_is_not_mounted_again_after_a_restart() {
    let name = "integrity-toc-swap";
    with_stack(name, |stack| {
        let original = top("the original file\n", 10)?;
        // The attacker's layer: other content, a valid eStargz blob of the same size (so
        // the registry serves it whole under the original digest).
        let mut swapped = None;
        for seed in 11..400 {
            let t = top("the swapped-in file\n", seed)?;
            if t.blob.len() == original.blob.len() {
                swapped = Some(t);
                break;
            }
        }
        let swapped = swapped.context("no same-size eStargz layer found")?;
        let (toc_a, toc_b) = (
            original.annotations[TOC_DIGEST_ANNOTATION].clone(),
            swapped.annotations[TOC_DIGEST_ANNOTATION].clone(),
        );
        stack.push("swap", "1", std::slice::from_ref(&original))?;
        stack.start()?;
        let socket = stack.veil.socket().to_path_buf();
        let image = stack.image_ref("swap", "1");
        let target = "chain-swap";
        stack
            .runtime
            .block_on(prepare_remote(&socket, target, &image, &original.digest))?;
        let dir = stack
            .runtime
            .block_on(view(&socket, "view-1", target))?
            .map_err(|s| anyhow::anyhow!("view before the swap: {s:?}"))?;
        let before = std::fs::read(dir.join(FILE))?;
        if before != b"the original file\n" {
            bail!(
                "before the swap the layer gave {:?}",
                String::from_utf8_lossy(&before)
            );
        }

        // The swap: the tag's manifest names the same layer digest with the attacker's TOC
        // digest (and diff_id), and the stored blob is the attacker's.
        let forged = Layer {
            annotations: swapped.annotations.clone(),
            diff_id: swapped.diff_id.clone(),
            ..original.clone()
        };
        stack.push("swap", "1", &[forged])?;
        std::fs::write(stored_blob_path(stack, &original.digest)?, &swapped.blob)?;
        eprintln!(
            "[{name}] swapped {image}: TOC {toc_a} -> {toc_b} under {}",
            original.digest
        );

        stack.restart_veil()?;
        let status = stack.status_json()?;
        let failed = status["failed"].as_array().cloned().unwrap_or_default();
        let entry = failed
            .iter()
            .find(|f| f["digest"] == original.digest.as_str())
            .with_context(|| format!("the swapped layer is not listed as failed: {status:#}"))?;
        let reason = entry["reason"].as_str().unwrap_or_default();
        if !reason.contains(&toc_a) || !reason.contains(&toc_b) {
            bail!("the failure does not name both TOC digests: {reason}");
        }
        match std::fs::read(dir.join(FILE)) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
            other => bail!("after the swap the layer's mount point gave {other:?}, not EIO"),
        }
        match stack.runtime.block_on(view(&socket, "view-2", target))? {
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            other => bail!("a view on the swapped layer was not refused: {other:?}"),
        }
        let log = stack.veil.log_text();
        if !log.contains("its snapshot was made for TOC digest") {
            bail!("the log does not say why the layer was not mounted again");
        }
        Ok(())
    });
}
