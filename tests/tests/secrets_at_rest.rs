//! No secrets at rest by accident (issue 16, attacks 5 and 6), with real parts.
//!
//! 1. A core dump of veil-snapshotter holds neither plaintext nor keys: the daemon is
//!    started with `RLIMIT_CORE` unlimited (and a `core_pattern` that writes into the
//!    test's directory, checked first with a dumpable control process), serves an
//!    encrypted image to a container through containerd, and is killed with SIGABRT. It
//!    must leave no core file (it is non-dumpable); were there one, it must hold neither
//!    the marker plaintext, nor any window of the big file, nor the layer keys, nor the
//!    private key.
//! 2. `veil mount` keeps its state private (0700, log 0600) and, unless `--allow-other`,
//!    an unprivileged user (`nobody`, through `setpriv`) cannot read a 0644 file of the
//!    mounted encrypted image; with `--allow-other` the same user can (the control that
//!    proves the reader could).
//!
//! Needs root, docker-registry, containerd, runc, busybox-static, openssl, FUSE,
//! util-linux's setpriv. Run with
//! `cargo test -p veil-tests --test secrets_at_rest -- --nocapture --test-threads=1`.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use veil_formats::estargz::TOC_DIGEST_ANNOTATION;
use veil_keyprovider::keys::{PrivateKey, PublicKey};
use veil_keyprovider::ocicrypt::{
    layer_cipher_params, EncryptedLayer, PrivateLayerBlockCipherOptions,
};
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::core_dumps::CoreDumps;
use veil_tests::encrypted_support::{
    ocicrypt_encrypt, pull_ok, scan_file, windows, write_veil_config, Keys, Needles,
};
use veil_tests::lazy_image::{base_entries, pack, random_bytes, tar_of, Entry, Layer, LayerFormat};
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::mount_cli::{expect_success, read_file, VeilMount, READ_TIMEOUT};
use veil_tests::process::run_with_timeout;

/// A 0644 file of the encrypted image; its text is the marker searched for.
const MARKER_PATH: &str = "/etc/veil-marker.txt";
const MARKER_TEXT: &str =
    "veil secrets-at-rest marker 5f1d8c2a: this plaintext must never reach a core file\n";
/// A file big enough to fill several chunks of the plaintext cache.
const BIG_PATH: &str = "/data/secret.bin";
const BIG_SIZE: usize = 6 << 20;

/// The encrypted image: busybox and small files below, the marker and the big file above;
/// both layers encrypted to `public` with the TOC digest sealed (served lazily).
fn encrypted_image(public: &PublicKey) -> anyhow::Result<(Vec<Layer>, Vec<u8>)> {
    let big = random_bytes(BIG_SIZE, 0x5ec2_e75a);
    let top = vec![
        Entry::Dir("data", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::File(
            MARKER_PATH.trim_start_matches('/').into(),
            MARKER_TEXT.into(),
            0o644,
        ),
        Entry::File(BIG_PATH.trim_start_matches('/').into(), big.clone(), 0o644),
    ];
    let mut layers = Vec::new();
    for entries in [base_entries()?, top] {
        let layer = pack(tar_of(&entries)?, LayerFormat::Estargz)?;
        let toc = layer.annotations.get(TOC_DIGEST_ANNOTATION).cloned();
        layers.push(ocicrypt_encrypt(&layer, toc.as_deref(), None, public)?);
    }
    Ok((layers, big))
}

/// The AES key of each encrypted layer, unwrapped with the private key as Veil does.
fn layer_keys(layers: &[Layer], private: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let keys = PrivateKey::from_file(private).map_err(|e| anyhow!("{e}"))?;
    let key = keys.first().context("no private key")?;
    layers
        .iter()
        .map(|l| {
            let enc = EncryptedLayer::from_annotations(&l.annotations)?;
            let wrapped = &enc.recipients.first().context("no recipient")?.wrapped;
            let json = veil_keyprovider::jwe::decrypt(wrapped, key)?;
            let options = PrivateLayerBlockCipherOptions::from_json(&json)?;
            let params = layer_cipher_params(&enc.pubopts, &options)?;
            Ok(params.key.to_vec())
        })
        .collect()
}

/// Offsets of `needle` in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return Vec::new();
    }
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w[0] == needle[0] && *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_core_dump_of_the_daemon_holds_no_secret() {
    let name = "core-dump";
    with_stack(name, |stack| {
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let (layers, big) = encrypted_image(&public)?;
        let layer_keys = layer_keys(&layers, &keys.private())?;
        stack.push("secret", "1", &layers)?;
        let reference = stack.image_ref("secret", "1");
        write_veil_config(stack, &keys.keys_dir, true)?;

        let dumps = CoreDumps::prepare(&stack.dir.join("cores"))?;
        dumps.control()?;
        eprintln!(
            "[{name}] control: a dumpable process left a core file in {}",
            dumps.dir().display()
        );
        stack.veil.set_core_dumps(Some(dumps.dir().to_path_buf()));
        stack.start()?;
        pull_ok(stack, name, &reference)?;
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-read"),
            &[
                "sh",
                "-c",
                &format!("cat {MARKER_PATH}; sha256sum {BIG_PATH}"),
            ],
        )?;
        let big_sha = veil_tests::lazy_image::sha256_hex(&big);
        if !printed.contains(MARKER_TEXT.trim_end()) || !printed.contains(&big_sha) {
            bail!("the container did not read the encrypted image exactly: {printed:?}");
        }
        eprintln!("[{name}] the container read the marker and the {BIG_SIZE}-byte file");

        // The daemon holds the keys and the plaintext cache now. Abort it.
        let pid = *stack.veil.pids.last().context("veil-snapshotter pid")?;
        // SAFETY: kill(2) on the PID of the daemon this test started.
        unsafe { libc::kill(pid as i32, libc::SIGABRT) };
        let status = stack
            .veil
            .stop()
            .context("veil-snapshotter's exit status")?;
        if status.signal() != Some(libc::SIGABRT) {
            bail!("veil-snapshotter did not die of SIGABRT: {status}");
        }
        std::thread::sleep(Duration::from_millis(500));
        let cores = dumps.cores();
        eprintln!(
            "[{name}] veil-snapshotter (pid {pid}) aborted: {status}; core dumped: {}; core \
             files: {cores:?}",
            status.core_dumped()
        );

        // Were there a core, it must hold no secret.
        let mut needles = windows("big file", &big, 16);
        needles.push(("marker".into(), MARKER_TEXT.as_bytes().to_vec()));
        for line in keys.secret_lines() {
            if line.len() >= 39 {
                needles.push(("private key line".into(), line.into_bytes()));
            }
        }
        let needles = Needles::new(needles);
        let mut found = Vec::new();
        for core in &cores {
            scan_file(core, &needles, &mut found)?;
            let bytes = std::fs::read(core)?;
            for (i, key) in layer_keys.iter().enumerate() {
                for at in find_all(&bytes, key) {
                    found.push((core.clone(), format!("layer key {i}"), at as u64));
                }
            }
            std::fs::remove_file(core)?;
        }
        if !found.is_empty() {
            bail!("a core dump of veil-snapshotter holds secrets: {found:?}");
        }
        if status.core_dumped() || !cores.is_empty() {
            bail!(
                "veil-snapshotter dumped core ({cores:?}); it must be non-dumpable (none of \
                 the secrets were in it)"
            );
        }

        // It comes back (mounting its remote layers again), and stops cleanly at the end.
        stack.veil.set_core_dumps(None);
        stack.veil.start()?;
        Ok(())
    });
}

/// `cat PATH` as `nobody` (uid and gid 65534, no supplementary groups).
fn read_as_nobody(dir: &Path, path: &Path) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "cat",
    ])
    .arg(path);
    run_with_timeout(cmd, Duration::from_secs(30), &dir.join("as-nobody"))
        .context("running setpriv (Debian: util-linux)")
}

fn mode_of(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o7777)
}

#[test]
fn an_unprivileged_user_cannot_read_a_veil_mount() {
    let name = "mount-private";
    with_stack(name, |stack: &mut LazyStack| {
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let (layers, _) = encrypted_image(&public)?;
        stack.push("secret", "1", &layers)?;
        let reference = stack.image_ref("secret", "1");
        // The path down to the mount point is open to everyone (the test's temporary
        // directory is 0700): only Veil's own mount may keep `nobody` out.
        std::fs::set_permissions(&stack.dir, std::fs::Permissions::from_mode(0o755))?;
        let keys_dir = keys.keys_dir.as_os_str().to_owned();

        for (case, allow_other) in [("shared", true), ("private", false)] {
            let root = stack.dir.join(case);
            std::fs::create_dir_all(root.join("mnt"))?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
            std::fs::set_permissions(root.join("mnt"), std::fs::Permissions::from_mode(0o755))?;
            let mut m = VeilMount::new(&root.join("mnt"), &root.join("state"), &root.join("cli"))?;
            let mut extra = vec!["--keys-dir".as_ref(), keys_dir.as_os_str()];
            if allow_other {
                extra.push("--allow-other".as_ref());
            }
            let out = m.mount_with(&reference, &extra)?;
            expect_success(&format!("veil mount ({case})"), &out)?;
            let file = m.dir.join(MARKER_PATH.trim_start_matches('/'));
            let as_root = read_file(&file, READ_TIMEOUT)?
                .with_context(|| format!("root reading {}", file.display()))?;
            if as_root != MARKER_TEXT.as_bytes() {
                bail!("root read {:?} from {}", text(&as_root), file.display());
            }
            let state = mode_of(&m.state_dir)?;
            let mount_state = mode_of(&m.mount_state_dir())?;
            let log = mode_of(&m.log_path())?;
            let nobody = read_as_nobody(&root, &file)?;
            eprintln!(
                "[{name}] {case}: state dir {state:o}, mount state {mount_state:o}, log \
                 {log:o}; nobody's cat {}: {}{}",
                nobody.status,
                text(&nobody.stdout).trim(),
                text(&nobody.stderr).trim()
            );
            if state != 0o700 || mount_state != 0o700 || log != 0o600 {
                bail!(
                    "{case}: veil mount's state is not private: state dir {state:o}, mount \
                     state {mount_state:o}, log {log:o}"
                );
            }
            let leaked = text(&nobody.stdout).contains(MARKER_TEXT.trim_end());
            match (allow_other, nobody.status.success(), leaked) {
                // The control: with --allow-other everyone reads (so the reader works).
                (true, true, true) => {}
                (true, ..) => bail!(
                    "with --allow-other, nobody could not read {}: {}",
                    file.display(),
                    text(&nobody.stderr)
                ),
                (false, false, false) => {
                    if !text(&nobody.stderr).contains("Permission denied") {
                        bail!(
                            "nobody's read failed, but not with EACCES: {}",
                            text(&nobody.stderr)
                        );
                    }
                }
                (false, ..) => bail!(
                    "an unprivileged user read {} of an encrypted image mounted without \
                     --allow-other: {:?}",
                    file.display(),
                    text(&nobody.stdout)
                ),
            }
            // Nor can nobody reach the layers' own FUSE mounts in the state directory.
            let layer_file = m
                .mount_state_dir()
                .join("layer-1")
                .join(MARKER_PATH.trim_start_matches('/'));
            let through_state = read_as_nobody(&root, &layer_file)?;
            if through_state.status.success() {
                bail!(
                    "{case}: nobody read {} through the state directory",
                    layer_file.display()
                );
            }
            let out = m.umount()?;
            expect_success(&format!("veil umount ({case})"), &out)?;
            if !m.wait_serving_exit(Duration::from_secs(10)) {
                bail!("{case}: the serving process outlived veil umount");
            }
            let left = m.cleanup();
            if !left.is_empty() {
                bail!("{case}: left behind after umount: {left:?}");
            }
        }
        Ok(())
    });
}
