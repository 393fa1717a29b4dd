//! The hidden status file of each unencrypted layer's mount, `/.veil/<digest>.json`, as
//! a script in a container or on the node reads it: `veil-snapshotter` (no background
//! fetch, so bytes move only on reads), Debian's `docker-registry`, a private
//! containerd, a two-layer eStargz image and the same layers encrypted (JWE, sealed TOC
//! digests) as a second image, containers run with `ctr run --snapshotter veil`.
//!
//! Checked, in a container of the plain image: `ls -a /` does not show `.veil`;
//! `/.veil` lists one file per layer; the top layer's file parses as a
//! `LayerStatusFile` naming its digest, format `estargz`, mode `lazy`, state `serving`,
//! its blob size, not fully fetched; after a container reads the 4 MiB random file of
//! that layer, `bytes_fetched` has grown by at least the file's size less the 128 KiB
//! tail the TOC read brought. On the node: of
//! the four FUSE layer mounts, exactly the two plain layers' have the file (by digest),
//! their root listings do not show `.veil`, and writing to it, creating in `/.veil` or
//! opening it for writing fails `EROFS`. In a container of the encrypted image, and on
//! its layers' mounts, there is no `/.veil`.
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test layer_status_file -- --nocapture`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use veil_formats::estargz::DEFAULT_TOC_TAIL_BYTES;
use veil_image::status::LayerStatusFile;
use veil_keyprovider::keys::PublicKey;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::encrypted_support::{pull_ok, sealed_encrypt, write_veil_config, Keys};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer, LayerFormat,
    BIG_PATH,
};
use veil_tests::lazy_stack::{with_stack, LazyStack};

/// Size of the random file read between the two looks at the status file.
const BIG_SIZE: usize = 4 << 20;
/// Seed of the random file.
const SEED: u64 = 0x57a7;

/// Two eStargz layers: the base layer with `marker` added, the top one with a random
/// file from `seed` (distinct contents: images may not share a chain of `diff_id`s with
/// different blobs).
fn layers(marker: &str, seed: u64) -> anyhow::Result<Vec<Layer>> {
    let mut base = base_entries()?;
    base.push(Entry::File(
        format!("etc/{marker}"),
        marker.as_bytes().to_vec(),
        0o644,
    ));
    Ok(vec![
        pack(tar_of(&base)?, LayerFormat::Estargz)?,
        pack(
            tar_of(&top_entries(random_bytes(BIG_SIZE, seed)))?,
            LayerFormat::Estargz,
        )?,
    ])
}

/// The FUSE mounts at or below `dir` (the layers' mounts), from `/proc/self/mountinfo`.
fn fuse_mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (point, fstype) = (fields.get(4)?, fields.get(dash + 1)?);
            let below = point.starts_with(&format!("{prefix}/"));
            (below && fstype.starts_with("fuse")).then(|| PathBuf::from(point))
        })
        .collect()
}

/// `cmd` run by `sh -c` in a container of `image`; its output with `rc=<status>` last.
fn in_container(stack: &LazyStack, image: &str, id: &str, cmd: &str) -> anyhow::Result<String> {
    let script = format!("{cmd} 2>&1; echo rc=$?");
    stack
        .cd()
        .run_container(SNAPSHOTTER, image, id, &["/bin/sh", "-c", &script])
}

/// The top layer's status file as a container of `image` reads it.
fn read_in_container(
    stack: &LazyStack,
    image: &str,
    id: &str,
    digest: &str,
) -> anyhow::Result<LayerStatusFile> {
    let out = in_container(stack, image, id, &format!("cat /.veil/{digest}.json"))?;
    let json = out
        .strip_suffix("rc=0\n")
        .with_context(|| format!("cat /.veil/{digest}.json failed in a container:\n{out}"))?;
    serde_json::from_str(json)
        .with_context(|| format!("/.veil/{digest}.json does not parse:\n{json}"))
}

/// The raw OS error of an I/O result that should have failed.
fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// On the node: exactly the plain layers' mounts have their status file, named by their
/// digest; none shows `.veil` in its root listing; the file and its directory refuse
/// writes with `EROFS`.
fn check_node_mounts(stack: &LazyStack, plain: &[Layer]) -> anyhow::Result<()> {
    let mounts = fuse_mounts_below(&stack.dir);
    if mounts.len() != 4 {
        bail!("expected 4 FUSE layer mounts below the stack, found {mounts:?}");
    }
    let mut with_status = Vec::new();
    for mount in &mounts {
        let listed: Vec<String> = std::fs::read_dir(mount)
            .with_context(|| format!("listing {}", mount.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        if listed.iter().any(|n| n == ".veil") {
            bail!("{} lists .veil in its root: {listed:?}", mount.display());
        }
        let dir = mount.join(".veil");
        if !dir.exists() {
            continue;
        }
        let names: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        let [name] = names.as_slice() else {
            bail!("{} holds {names:?}, expected one file", dir.display());
        };
        let file = dir.join(name);
        let parsed: LayerStatusFile = serde_json::from_slice(&std::fs::read(&file)?)
            .with_context(|| format!("{} does not parse", file.display()))?;
        if format!("{}.json", parsed.digest) != *name {
            bail!("{} names layer {}", file.display(), parsed.digest);
        }
        let write = std::fs::OpenOptions::new().append(true).open(&file);
        let create = std::fs::File::create(dir.join("new"));
        let mkdir = std::fs::create_dir(mount.join(".veil/sub"));
        for (what, errno) in [
            ("opening the status file for writing", errno_of(write)),
            ("creating a file in .veil", errno_of(create)),
            ("creating a directory in .veil", errno_of(mkdir)),
        ] {
            if errno != Some(libc::EROFS) {
                bail!(
                    "{what} on {} gave errno {errno:?}, not EROFS",
                    mount.display()
                );
            }
        }
        with_status.push(parsed.digest);
    }
    with_status.sort();
    let mut expected: Vec<String> = plain.iter().map(|l| l.digest.clone()).collect();
    expected.sort();
    if with_status != expected {
        bail!("the mounts with a status file are of layers {with_status:?}, expected exactly the plain layers {expected:?} (never an encrypted one)");
    }
    Ok(())
}

#[test]
fn unencrypted_layers_serve_a_hidden_status_file_encrypted_ones_do_not() {
    let name = "status-file";
    with_stack(name, |stack| {
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let plain = layers("plain", SEED)?;
        let sealed = sealed_encrypt(&layers("sealed", SEED + 1)?, &public)?;
        stack.push("plain", "1", &plain)?;
        stack.push("sealed", "1", &sealed)?;
        write_veil_config(stack, &keys.keys_dir, true)?;
        stack.start()?;
        let (plain_ref, sealed_ref) = (
            stack.image_ref("plain", "1"),
            stack.image_ref("sealed", "1"),
        );
        pull_ok(stack, name, &plain_ref)?;
        pull_ok(stack, name, &sealed_ref)?;
        let top = plain[1].digest.as_str();

        let root = in_container(stack, &plain_ref, &format!("{name}-ls"), "ls -a /")?;
        if root.lines().any(|l| l.trim() == ".veil") || !root.contains("rc=0") {
            bail!("ls -a / in a container shows the hidden directory (or failed):\n{root}");
        }
        let listed = in_container(stack, &plain_ref, &format!("{name}-lsv"), "ls /.veil")?;
        for layer in &plain {
            if !listed.contains(&format!("{}.json", layer.digest)) {
                bail!(
                    "ls /.veil in a container does not show layer {}:\n{listed}",
                    layer.digest
                );
            }
        }

        let before = read_in_container(stack, &plain_ref, &format!("{name}-cat1"), top)?;
        eprintln!("[{name}] /.veil/{top}.json before the read: {before:?}");
        let expected_size = plain[1].size();
        if before.digest != top
            || before.format != "estargz"
            || before.mode != "lazy"
            || before.state != "serving"
            || before.blob_size != expected_size
            || before.fully_fetched
            || before.bad.is_some()
        {
            bail!(
                "the status file of lazy layer {top} (blob {expected_size} bytes) says {before:?}"
            );
        }
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &plain_ref,
            &format!("{name}-sum"),
            &["/bin/sha256sum", BIG_PATH],
        )?;
        let big_sha = sha256_hex(&random_bytes(BIG_SIZE, SEED));
        if !printed.starts_with(&big_sha) {
            bail!("sha256sum printed {printed:?}, expected {big_sha}");
        }
        let after = read_in_container(stack, &plain_ref, &format!("{name}-cat2"), top)?;
        eprintln!("[{name}] /.veil/{top}.json after reading {BIG_SIZE} bytes: {after:?}");
        // The first TOC request read the blob's last 128 KiB (footer, TOC, the end of
        // the big file): the read fetches at least the rest of the file, and the layer
        // has then fetched at least the whole (incompressible) file.
        let grown = after.bytes_fetched.saturating_sub(before.bytes_fetched);
        if grown < BIG_SIZE as u64 - DEFAULT_TOC_TAIL_BYTES
            || after.bytes_fetched < BIG_SIZE as u64
            || after.range_requests <= before.range_requests
        {
            bail!(
                "bytes_fetched grew by {grown} to {} (range requests {} -> {}) while a \
                 {BIG_SIZE}-byte random file was read",
                after.bytes_fetched,
                before.range_requests,
                after.range_requests
            );
        }

        let sealed_view = in_container(stack, &sealed_ref, &format!("{name}-enc"), "ls -a /.veil")?;
        if sealed_view.contains("rc=0") || !sealed_view.contains("No such file") {
            bail!("a container of the encrypted image has a /.veil:\n{sealed_view}");
        }
        check_node_mounts(stack, &plain)?;
        Ok(())
    });
}
