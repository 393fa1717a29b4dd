//! `veil mount` / `veil umount` end to end, without containerd: Debian's `docker-registry`
//! on loopback, a two-layer eStargz image built here (busybox-static and small files in
//! the base layer; a 64 MiB random file, a small file and a whiteout deleting one of the
//! base layer's files in the top layer) and pushed, mounted with `veil mount` at a
//! directory of the test. The merged tree shows both layers without the deleted file;
//! a small file reads exactly while the registry has served well under 10 % of the
//! layers; the big file has its exact SHA-256; writes fail with EROFS; `veil umount`
//! takes the mount, the serving process and the layers' FUSE mounts down. Bad input
//! (a missing tag or repository, a mount point that is not a directory, unmounting
//! something that is not mounted) fails with a clear message and leaves nothing behind.
//!
//! Needs root, docker-registry, busybox-static, FUSE and overlayfs. Run with
//! `cargo test -p veil-tests --test veil_mount -- --nocapture`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use veil_tests::containerd::process_alive;
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, whiteout_of, Layer,
    LayerFormat, BIG_PATH, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT, NOTES_PATH,
};
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::mount_cli::{expect_success, read_file, sha256_file, VeilMount, READ_TIMEOUT};

/// Size of the big random file.
const BIG_SIZE: usize = 64 << 20;

/// How long the serving process may take to exit after `veil umount`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// `path` (absolute, in the image) below the mount point `root`.
fn inside(root: &Path, path: &str) -> std::path::PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The image: the base layer, and a top layer with `big`, a small file and a whiteout of
/// [`NOTES_PATH`], both eStargz.
fn image(big: Vec<u8>) -> anyhow::Result<Vec<Layer>> {
    let mut top = top_entries(big);
    top.push(whiteout_of(NOTES_PATH));
    Ok(vec![
        pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
        pack(tar_of(&top)?, LayerFormat::Estargz)?,
    ])
}

/// A fresh mount point and state directory inside the stack's directory.
fn new_mount(stack: &LazyStack, name: &str) -> anyhow::Result<VeilMount> {
    VeilMount::new(
        &stack.dir.join(name),
        &stack.dir.join("state"),
        &stack.dir.join("cli"),
    )
}

/// The raw OS error of an I/O result that should have failed.
fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn veil_mount_serves_the_merged_image_and_umount_takes_it_down() {
    let name = "veil-mount";
    with_stack(name, |stack| {
        let t = Instant::now();
        let big = random_bytes(BIG_SIZE, 0x5eed);
        let big_sha = sha256_hex(&big);
        let layers = image(big)?;
        let total: u64 = layers.iter().map(Layer::size).sum();
        let manifest = stack.push("app", "1", &layers)?;
        eprintln!(
            "[{name}] built and pushed 2 eStargz layers ({} + {} bytes) in {:.1?}; manifest {manifest}",
            layers[0].size(),
            layers[1].size(),
            t.elapsed()
        );
        let reference = stack.image_ref("app", "1");

        // veil mount returns once the image is mounted, served by a detached process.
        let mut m = new_mount(stack, "rootfs")?;
        let t = Instant::now();
        let out = m.mount(&reference)?;
        let took = t.elapsed();
        expect_success("veil mount", &out)?;
        eprintln!(
            "[{name}] veil mount took {took:.2?}: {}",
            text(&out.stdout).trim_end()
        );
        let Some(pid) = m.serving_pid() else {
            bail!(
                "veil mount did not print the serving PID:\n{}",
                text(&out.stdout)
            );
        };
        if !m.is_mounted() || !process_alive(pid) {
            bail!(
                "after veil mount: mounted {}, serving process {pid} alive {}",
                m.is_mounted(),
                process_alive(pid)
            );
        }
        let after_mount: u64 = layers.iter().map(|l| stack.served(&l.digest).1).sum();
        let root = m.dir.clone();

        // The merged tree: files of both layers, the whited-out file absent.
        let etc: Vec<String> = std::fs::read_dir(root.join("etc"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        for want in ["veil-hello.txt", "veil-layer2.txt"] {
            if !etc.iter().any(|n| n == want) {
                bail!("/etc of the mounted image lacks {want}: {etc:?}");
            }
        }
        if etc.iter().any(|n| n.contains("veil-notes")) {
            bail!("the whited-out {NOTES_PATH} (or its whiteout) is visible in /etc: {etc:?}");
        }
        match std::fs::symlink_metadata(inside(&root, NOTES_PATH)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => bail!("{NOTES_PATH} should not exist in the merged tree: {other:?}"),
        }
        let busybox = std::fs::metadata(root.join("bin/busybox"))?;
        let sh = std::fs::read_link(root.join("bin/sh"))?;
        let big_len = std::fs::metadata(inside(&root, BIG_PATH))?.len();
        if !busybox.is_file() || sh != Path::new("busybox") || big_len != BIG_SIZE as u64 {
            bail!(
                "unexpected tree: busybox {busybox:?}, /bin/sh -> {sh:?}, big file {big_len} bytes"
            );
        }

        // Small files, exact, for a small part of the layers.
        for (path, want) in [(HELLO_PATH, HELLO_TEXT), (LAYER2_PATH, LAYER2_TEXT)] {
            let got = read_file(&inside(&root, path), READ_TIMEOUT)??;
            if got != want.as_bytes() {
                bail!("{path} reads {:?}, expected {want:?}", text(&got));
            }
        }
        let after_cat: Vec<(usize, u64)> = layers.iter().map(|l| stack.served(&l.digest)).collect();
        let served: u64 = after_cat.iter().map(|(_, b)| b).sum();
        eprintln!(
            "[{name}] registry served for the layers: {after_mount} bytes after mounting; after \
             reading 2 small files {} + {} bytes ({} + {} requests) = {:.3} % of {total}",
            after_cat[0].1,
            after_cat[1].1,
            after_cat[0].0,
            after_cat[1].0,
            served as f64 * 100.0 / total as f64
        );
        if served * 10 >= total || after_cat[1].1 * 10 >= layers[1].size() {
            bail!("the registry served {served} of {total} layer bytes for two small files");
        }

        // The big file is exact.
        let t = Instant::now();
        let sum = sha256_file(&inside(&root, BIG_PATH), READ_TIMEOUT)?;
        if sum != big_sha {
            bail!("sha256 of {BIG_PATH} through the mount is {sum}, expected {big_sha}");
        }
        let (n, bytes) = stack.served(&layers[1].digest);
        eprintln!(
            "[{name}] sha256 of the {BIG_SIZE}-byte file matched in {:.2?}; the registry has served \
             {bytes} of the big layer's {} bytes in {n} requests",
            t.elapsed(),
            layers[1].size()
        );

        // Read-only.
        let r = root.clone();
        let errnos = veil_tests::process::bounded("writing", READ_TIMEOUT, move || {
            let hello = inside(&r, HELLO_PATH);
            [
                (
                    "create a file",
                    errno_of(std::fs::write(r.join("etc/new"), "x")),
                ),
                (
                    "open a file for writing",
                    errno_of(std::fs::OpenOptions::new().append(true).open(&hello)),
                ),
                (
                    "make a directory",
                    errno_of(std::fs::create_dir(r.join("newdir"))),
                ),
                ("remove a file", errno_of(std::fs::remove_file(&hello))),
                (
                    "rename a file",
                    errno_of(std::fs::rename(&hello, r.join("etc/moved"))),
                ),
            ]
        })?;
        for (what, errno) in errnos {
            if errno != Some(libc::EROFS) {
                bail!("trying to {what} in the mounted image gave errno {errno:?}, expected EROFS");
            }
        }

        // Mounting again on the same directory is refused.
        let out = m.mount(&reference)?;
        let stderr = text(&out.stderr);
        if out.status.success() || !stderr.contains("already a mount point") {
            bail!(
                "a second veil mount on the same directory: {}\n{stderr}",
                out.status
            );
        }

        // veil umount takes everything down.
        let out = m.umount()?;
        expect_success("veil umount", &out)?;
        let t = Instant::now();
        if m.is_mounted() {
            bail!(
                "{} is still a mount point after veil umount",
                root.display()
            );
        }
        if !m.wait_serving_exit(EXIT_TIMEOUT) {
            bail!("the serving process {pid} is still alive {EXIT_TIMEOUT:?} after veil umount");
        }
        let exited = t.elapsed();
        let layer_mounts = veil_tests::mounts::mounts_below(&m.state_dir);
        if !layer_mounts.is_empty() || m.mount_state_dir().exists() {
            bail!(
                "after veil umount the state dir still has mounts {layer_mounts:?} (dir exists: {})",
                m.mount_state_dir().exists()
            );
        }
        let log = m.log_text();
        if !log.contains("was unmounted") {
            bail!("the serving log does not say the image was unmounted:\n{log}");
        }
        let left = m.cleanup();
        if !left.is_empty() {
            bail!("left behind after veil umount: {left:?}");
        }
        eprintln!(
            "[{name}] veil umount: unmounted, serving process {pid} exited within {exited:.2?}, \
             layer mounts gone; its log ends:\n    {}",
            log.lines().rev().take(2).collect::<Vec<_>>().join("\n    ")
        );
        Ok(())
    });
}

/// A failed `veil mount` must leave nothing behind: no mount, no serving process, no
/// layer mounts.
fn nothing_left(m: &mut VeilMount, what: &str) -> anyhow::Result<()> {
    let left = m.cleanup();
    if !left.is_empty() {
        bail!("{what} left behind: {left:?}");
    }
    Ok(())
}

#[test]
fn veil_mount_and_umount_reject_bad_input() {
    let name = "veil-mount-bad";
    with_stack(name, |stack| {
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        stack.push("app", "1", std::slice::from_ref(&base))?;

        // A tag the registry does not have; a repository it does not have.
        for (repo, tag) in [("app", "nosuchtag"), ("nosuchrepo", "1")] {
            let reference = stack.image_ref(repo, tag);
            let mut m = new_mount(stack, &format!("mnt-{repo}-{tag}"))?;
            let t = Instant::now();
            let out = m.mount(&reference)?;
            let stderr = text(&out.stderr);
            eprintln!(
                "[{name}] veil mount {reference}: {} after {:.2?}\n{}",
                out.status,
                t.elapsed(),
                stderr.trim_end()
            );
            if out.status.success() {
                bail!("veil mount of the missing {repo}:{tag} succeeded");
            }
            if !(stderr.contains(repo) && stderr.contains(tag)) {
                bail!("veil mount of {reference} failed without naming {repo}:{tag}:\n{stderr}");
            }
            if m.is_mounted() {
                bail!("a failed veil mount left {} mounted", m.dir.display());
            }
            nothing_left(&mut m, &format!("veil mount of {reference}"))?;
        }

        // A mount point that is a regular file, one that does not exist.
        let reference = stack.image_ref("app", "1");
        let file = stack.dir.join("not-a-dir");
        std::fs::write(&file, "a file\n")?;
        let missing = stack.dir.join("no-such-dir");
        for (target, expect) in [
            (&file, "not a directory"),
            (&missing, "No such file or directory"),
        ] {
            let mut m = VeilMount::new(
                &stack.dir.join("unused"),
                &stack.dir.join("state"),
                &stack.dir.join("cli"),
            )?;
            m.dir = target.clone();
            let out = m.mount(&reference)?;
            let stderr = text(&out.stderr);
            eprintln!(
                "[{name}] veil mount {reference} {}: {}\n{}",
                target.display(),
                out.status,
                stderr.trim_end()
            );
            if out.status.success()
                || !stderr.contains(expect)
                || !stderr.contains(&*target.to_string_lossy())
            {
                bail!(
                    "veil mount at {} should fail saying {expect:?} and naming it:\n{stderr}",
                    target.display()
                );
            }
            nothing_left(&mut m, &format!("veil mount at {}", target.display()))?;
        }
        if std::fs::read_to_string(&file)? != "a file\n" {
            bail!("the failed mount changed {}", file.display());
        }

        // veil umount of a directory that is not mounted, and of a missing path.
        for target in [stack.dir.join("empty"), missing.clone()] {
            let mut m = new_mount(stack, "unused")?;
            if target.file_name() == Some("empty".as_ref()) {
                std::fs::create_dir_all(&target)?;
            }
            m.dir = target.clone();
            let out = m.umount()?;
            let stderr = text(&out.stderr);
            eprintln!(
                "[{name}] veil umount {}: {}\n{}",
                target.display(),
                out.status,
                stderr.trim_end()
            );
            // A directory that exists "is not mounted"; a missing one is named as such.
            let expected = if target.exists() {
                "is not mounted"
            } else {
                "no such directory"
            };
            if out.status.success()
                || !stderr.contains(expected)
                || !stderr.contains(&*target.to_string_lossy())
            {
                bail!(
                    "veil umount of {} should fail saying {expected:?}:\n{stderr}",
                    target.display()
                );
            }
        }
        Ok(())
    });
}
