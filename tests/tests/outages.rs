//! Registry outages, with real parts (issue 14): Debian's `docker-registry`, containerd,
//! runc and veil-snapshotter on loopback.
//!
//! - `failed_layer_is_eio_and_recovers`: one layer's blob is gone from the registry while
//!   veil-snapshotter restarts. That layer's mount point answers EIO (never ENOENT, never
//!   an empty listing), a container on the image is refused (UNAVAILABLE) instead of
//!   running on an incomplete root, `veil status` names the layer as failed; once the
//!   blob is back the layer is mounted in the background and the image runs, without a
//!   restart.
//!
//! - `registry_outage_of_20s_is_ridden_out`: the registry is stopped, a read of a file
//!   whose bytes were never fetched starts, the registry comes back 20 s later: the read
//!   completes with the right bytes (it waited; no EIO).
//! - `stalled_transfer_is_retried_within_seconds`: the registry's answer to a blob
//!   request never comes (a proxy holds it): the transfer is abandoned after the stall
//!   timeout and retried on a fresh connection; the read completes in seconds.
//!
//! Needs root, docker-registry, busybox-static, FUSE, overlayfs, containerd 1.6 and runc.
//! Run with `cargo test -p veil-tests --test outages -- --nocapture`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::encrypted_support::stored_blob_path;
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, LayerFormat, BIG_PATH,
    HELLO_PATH, HELLO_TEXT,
};
use veil_tests::lazy_stack::{lines_with, text, with_stack, LazyStack};
use veil_tests::proxy::{proxy, ProxyState};

/// Size of the big random file: two 4 MiB chunks.
const BIG_SIZE: usize = 8 << 20;

/// How long the background retry may take to mount a layer once its blob is back.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(90);

/// The stall timeout the stall test configures (the default is 10 s).
const TEST_STALL_SECONDS: u64 = 3;

/// How long the registry stays down in the outage test.
const OUTAGE: Duration = Duration::from_secs(20);

/// Veil's config for these tests: plain HTTP to the stack's registry (and `also`), no
/// background fetch, and no disk cache (every byte comes from the registry, so an outage
/// is felt); `extra` is appended to `[registry]`.
fn write_config(stack: &LazyStack, also: &[String], extra: &str) -> anyhow::Result<()> {
    let mut hosts = vec![format!("\"{}\"", stack.registry.host())];
    hosts.extend(also.iter().map(|h| format!("\"{h}\"")));
    std::fs::write(
        stack.dir.join("veil-config.toml"),
        format!(
            "[registry]\nplain_http = [{}]\n{extra}\n[lazy]\nbackground_fetch = false\n\n\
             [cache]\ndisk_bytes = 0\n",
            hosts.join(", ")
        ),
    )?;
    Ok(())
}

/// The two-layer eStargz image (a random file of [`BIG_SIZE`] bytes in the top layer)
/// pushed as `outage:1`; returns the layers and the big file's SHA-256.
fn push_image(stack: &LazyStack) -> anyhow::Result<(Vec<veil_tests::lazy_image::Layer>, String)> {
    let big = random_bytes(BIG_SIZE, 0x07a9e);
    let big_sha = sha256_hex(&big);
    let layers = vec![
        pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
        pack(tar_of(&top_entries(big))?, LayerFormat::Estargz)?,
    ];
    stack.push("outage", "1", &layers)?;
    Ok((layers, big_sha))
}

/// `veil pull REFERENCE`, failing with its output.
fn pull(stack: &LazyStack, reference: &str) -> anyhow::Result<()> {
    let (out, _) = stack.veil_pull(reference, &[])?;
    if !out.status.success() {
        bail!(
            "veil pull failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    Ok(())
}

/// The big file in the mounted top layer (found among the FUSE mounts below Veil's root).
fn big_file(stack: &LazyStack) -> anyhow::Result<PathBuf> {
    veil_tests::mounts::mounts_below(stack.veil.root())
        .into_iter()
        .map(|m| Path::new(&m).join(BIG_PATH.trim_start_matches('/')))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no mounted layer below {} has {BIG_PATH}",
                stack.veil.root().display()
            )
        })
}

/// Reads `path` whole in another thread; its SHA-256 and how long the read took.
fn read_in_background(
    path: PathBuf,
) -> std::thread::JoinHandle<(std::io::Result<String>, Duration)> {
    std::thread::spawn(move || {
        let t = Instant::now();
        let read = std::fs::read(&path).map(|b| sha256_hex(&b));
        (read, t.elapsed())
    })
}

/// The `failed` entries of a `veil status --json` report.
fn failed_layers(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["failed"].as_array().cloned().unwrap_or_default()
}

/// The OS error of `result`, as a number.
fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

/// Checks that `dir` (a failed layer's mount point) answers EIO to a listing, a stat of
/// a name in it and a stat of itself.
fn check_eio(dir: &Path) -> anyhow::Result<()> {
    let listing = std::fs::read_dir(dir).map(|d| d.count());
    if let Ok(n) = listing {
        bail!(
            "listing the failed layer's mount point {} worked ({n} entries)",
            dir.display()
        );
    }
    for (what, got) in [
        ("listing", errno(std::fs::read_dir(dir))),
        ("stat of data/", errno(std::fs::metadata(dir.join("data")))),
        ("stat of itself", errno(std::fs::metadata(dir))),
    ] {
        if got != Some(libc::EIO) {
            bail!(
                "{what} at the failed layer's mount point {} gave errno {got:?}, not EIO",
                dir.display()
            );
        }
    }
    Ok(())
}

#[test]
fn failed_layer_is_eio_and_recovers() {
    let name = "outage-failed-layer";
    with_stack(name, |stack| {
        write_config(stack, &[], "")?;
        let (layers, big_sha) = push_image(stack)?;
        stack.start()?;
        let reference = stack.image_ref("outage", "1");
        pull(stack, &reference)?;
        let hello = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-before"),
            &["/bin/cat", HELLO_PATH],
        )?;
        if hello != HELLO_TEXT {
            bail!("the container printed {hello:?}");
        }

        // The top layer's blob goes missing while the daemon restarts.
        let top = &layers[1];
        let blob = stored_blob_path(stack, &top.digest)?;
        let hidden = blob.with_extension("hidden");
        std::fs::rename(&blob, &hidden).with_context(|| format!("hiding {}", blob.display()))?;
        let t = Instant::now();
        stack.restart_veil()?;
        eprintln!(
            "[{name}] restarted with the top layer's blob missing; containerd reached it in {:.1?}",
            t.elapsed()
        );

        // The log names the layer and why.
        let log = stack.veil.log_text();
        let lines = lines_with(&log, &["could not mount remote layer again", &top.digest]);
        if lines.is_empty() {
            bail!("the log does not name the failed layer {}", top.digest);
        }
        eprintln!("[{name}] the daemon logged:\n    {}", lines[0]);

        // veil status names it.
        let report = stack.status_json()?;
        let failed = failed_layers(&report);
        let entry = failed
            .iter()
            .find(|f| f["digest"].as_str() == Some(top.digest.as_str()))
            .with_context(|| format!("veil status does not list the failed layer:\n{report:#}"))?;
        let shown = text(&stack.veil_status(false)?.stdout);
        if !shown.contains("NOT HEALTHY") {
            bail!("veil status does not say NOT HEALTHY:\n{shown}");
        }
        eprintln!("[{name}] veil status:\n{}", shown.trim_end());

        // Its mount point answers EIO.
        let mountpoint = PathBuf::from(entry["mountpoint"].as_str().unwrap_or_default());
        check_eio(&mountpoint)?;

        // A container on the image is refused, not run on an incomplete root.
        let refused = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-during"),
            &["/bin/ls", "/data"],
        );
        match refused {
            Ok(out) => bail!("a container ran on the half-restored image and printed {out:?}"),
            Err(e) => {
                let e = format!("{e:#}");
                if !e.contains("unavailable") && !e.contains("not mounted") {
                    bail!("the container failed, but not because of the failed layer:\n{e}");
                }
                eprintln!(
                    "[{name}] a container on the image was refused: {}",
                    e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
                );
            }
        }

        // The blob comes back: the layer is mounted in the background.
        std::fs::rename(&hidden, &blob)?;
        let t = Instant::now();
        loop {
            let report = stack.status_json()?;
            if failed_layers(&report).is_empty() {
                break;
            }
            if t.elapsed() > RECOVER_TIMEOUT {
                bail!("the layer was not mounted again within {RECOVER_TIMEOUT:?}:\n{report:#}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "[{name}] the blob is back: the layer was mounted again after {:.1?}",
            t.elapsed()
        );
        let sum = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-after"),
            &["/bin/sha256sum", BIG_PATH],
        )?;
        if sum.split_whitespace().next() != Some(big_sha.as_str()) {
            bail!("sha256sum in the container printed {sum:?}, expected {big_sha}");
        }
        eprintln!("[{name}] the big file's SHA-256 in a container is right");
        Ok(())
    });
}

#[test]
fn registry_outage_of_20s_is_ridden_out() {
    let name = "outage-20s";
    with_stack(name, |stack| {
        write_config(stack, &[], "")?;
        let (_, big_sha) = push_image(stack)?;
        stack.start()?;
        let reference = stack.image_ref("outage", "1");
        pull(stack, &reference)?;
        let path = big_file(stack)?;

        stack.kill_registry();
        let reader = read_in_background(path);
        std::thread::sleep(OUTAGE);
        if reader.is_finished() {
            let (read, took) = reader.join().expect("reader thread");
            bail!("the read ended during the outage, after {took:.1?}: {read:?}");
        }
        stack.restart_registry()?;
        let (read, took) = reader.join().expect("reader thread");
        let got = read.context("reading the big file across the outage")?;
        if got != big_sha {
            bail!("the big file read across the outage has SHA-256 {got}, expected {big_sha}");
        }
        eprintln!(
            "[{name}] the registry was down for {OUTAGE:?}; the read of the {BIG_SIZE}-byte \
             file started during the outage and completed correctly after {took:.1?}"
        );
        let log = stack.veil.log_text();
        if lines_with(&log, &["registry read succeeded after an outage"]).is_empty() {
            bail!("the log does not say a read rode out the outage");
        }
        Ok(())
    });
}

#[test]
fn stalled_transfer_is_retried_within_seconds() {
    let name = "outage-stall";
    with_stack(name, |stack| {
        let state = Arc::new(ProxyState {
            upstream: stack.registry.base(),
            ..Default::default()
        });
        let server = stack.runtime.block_on(proxy(state.clone()));
        let proxy_host = server.base().trim_start_matches("http://").to_string();
        write_config(
            stack,
            std::slice::from_ref(&proxy_host),
            &format!("stall_timeout_seconds = {TEST_STALL_SECONDS}\n"),
        )?;
        let (_, big_sha) = push_image(stack)?;
        stack.start()?;
        // The image through the proxy: every registry request goes through it.
        let reference = format!("{proxy_host}/outage:1");
        pull(stack, &reference)?;
        let path = big_file(stack)?;

        state.stall_blob_gets.store(1, Ordering::SeqCst);
        let (read, took) = read_in_background(path).join().expect("reader thread");
        let got = read.context("reading the big file through a stalled transfer")?;
        if got != big_sha {
            bail!("the big file read through a stall has SHA-256 {got}, expected {big_sha}");
        }
        if state.stall_blob_gets.load(Ordering::SeqCst) != 0 {
            bail!("no blob request was stalled");
        }
        let limit = Duration::from_secs(TEST_STALL_SECONDS + 10);
        if took > limit {
            bail!("the read took {took:.1?} through one stall (more than {limit:?})");
        }
        let log = stack.veil.log_text();
        if lines_with(&log, &["stalled"]).is_empty() {
            bail!("the log does not mention the stalled transfer");
        }
        eprintln!(
            "[{name}] one blob request stalled (no answer); with stall_timeout_seconds = \
             {TEST_STALL_SECONDS} the read of the {BIG_SIZE}-byte file completed correctly in \
             {took:.1?}"
        );
        drop(server);
        Ok(())
    });
}
