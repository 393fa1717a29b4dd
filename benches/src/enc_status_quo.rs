//! The encrypted status quo's pull: what a user does today with an encrypted image and
//! no Veil (containerd's imgcrypt is not packaged in Debian; skopeo is, with ocicrypt):
//! `skopeo copy --decryption-key KEY docker://REF oci-archive:FILE` (every layer
//! downloaded whole and decrypted, through the same shaping proxy as every mode), then
//! `ctr images import` of the archive (unpacked into containerd's overlayfs snapshotter).
//! The image is the `-enc` mode's (Veil's encrypted eStargz / zstd:chunked layers are
//! ocicrypt's, so skopeo decrypts them with the same JWE private key Veil gets). The
//! decrypted archive is plaintext on disk, as it is for such a user; it is removed as
//! soon as containerd has imported it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use veil_tests::containerd::Containerd;
use veil_tests::process::run_with_timeout;

use crate::run::{NAMESPACE, REPO};

/// The snapshotter the encrypted status quo unpacks into (as the status quo's does).
pub const SNAPSHOTTER: &str = "overlayfs";

/// Pulls `host/REPO:tag` the status quo's way for an encrypted image: skopeo copies and
/// decrypts it (with the PKCS#8 PEM private key `key`) into an OCI archive in `dir`, and
/// containerd imports it (unpacking into overlayfs) as `host/REPO:tag`, the name the
/// container then runs from. Each step is killed by its PID after `timeout`.
pub fn pull(
    cd: &Containerd,
    host: &str,
    tag: &str,
    key: &Path,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    if !key.is_file() {
        bail!("the decryption key {} is missing", key.display());
    }
    let archive = dir.join("decrypted-image.tar");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .arg("copy")
        .arg("--src-tls-verify=false")
        .arg("--decryption-key")
        .arg(key)
        .arg(format!("docker://{host}/{REPO}:{tag}"))
        .arg(format!("oci-archive:{}:{tag}", archive.display()))
        .env("TMPDIR", dir);
    let out = run_with_timeout(cmd, timeout, &dir.join("skopeo-copy"))
        .context("running skopeo (Debian's skopeo package)")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&archive);
        bail!(
            "skopeo copy --decryption-key of :{tag} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let archive_arg = archive.to_string_lossy();
    let base = format!("{host}/{REPO}");
    let imported = cd.ctr_like(
        Path::new("ctr"),
        NAMESPACE,
        &[
            "images",
            "import",
            "--snapshotter",
            SNAPSHOTTER,
            "--base-name",
            &base,
            &archive_arg,
        ],
        timeout,
    );
    // The decrypted image leaves the disk as soon as containerd has it.
    let _ = std::fs::remove_file(&archive);
    imported.context("ctr images import of the decrypted image")?;
    Ok(())
}
