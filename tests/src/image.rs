//! A small OCI image built locally (no network): busybox-static plus marker files, in two
//! layers, packed as an OCI archive that `ctr images import` accepts.
//!
//! Built with `umoci`:
//!
//! 1. `umoci init` + `umoci new` make an empty image in an OCI layout;
//! 2. layer 1: `/bin/busybox` (Debian's busybox-static) with applet symlinks, `/etc/veil-marker`
//!    and `/etc/veil-doomed`;
//! 3. layer 2: adds `/etc/veil-layer2` (and any extra files the caller asks for) and
//!    deletes `/etc/veil-doomed` (a whiteout), so a container sees a union of two lower
//!    layers;
//! 4. `umoci config` sets a default command and `PATH`;
//! 5. the layout directory is written to a tar: the OCI archive. Its `index.json` names the
//!    manifest with `org.opencontainers.image.ref.name` = the tag. `ctr` 1.6 turns that into
//!    an image name only with `--base-name REPO` (giving `REPO:TAG`); without it ctr invents
//!    `import-<date>:TAG`. `--index-name` is not needed (it would name the index itself).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Where the busybox-static package puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked in `/bin` of the image.
const APPLETS: &[&str] = &["sh", "cat", "echo", "ls", "test", "true", "sleep", "id"];

/// A locally built test image.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The OCI layout directory umoci worked in.
    pub layout: PathBuf,
    /// The OCI archive (tar of the layout) for `ctr images import`.
    pub archive: PathBuf,
    /// The repository to give `ctr images import --base-name`.
    pub base_name: String,
    /// The tag (the `org.opencontainers.image.ref.name` annotation in `index.json`).
    pub tag: String,
    /// The image name containerd will know after import: `base_name:tag`.
    pub reference: String,
    /// Digest of the image manifest, from `index.json`.
    pub manifest_digest: String,
    /// Layer digests (compressed blobs), lowest first.
    pub layer_digests: Vec<String>,
    /// Path of the marker file in the image (layer 1) and its exact contents.
    pub marker_path: &'static str,
    pub marker_text: String,
    /// Path of the file added by layer 2 and its exact contents.
    pub layer2_path: &'static str,
    pub layer2_text: String,
    /// A file layer 1 adds and layer 2 deletes: it must not be visible in a container.
    pub deleted_path: &'static str,
}

impl TestImage {
    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layer_digests.len()
    }

    /// A shell command line (for `/bin/sh -c`) that prints the marker, the layer-2 file and
    /// whether the deleted file is (wrongly) visible.
    pub fn check_script(&self) -> String {
        format!(
            "cat {m}; cat {l2}; if test -e {d}; then echo 'whiteout: VISIBLE'; else echo 'whiteout: hidden'; fi",
            m = self.marker_path,
            l2 = self.layer2_path,
            d = self.deleted_path
        )
    }

    /// What [`check_script`](Self::check_script) prints in a correct container.
    pub fn expected_output(&self) -> String {
        format!(
            "{}\n{}\nwhiteout: hidden\n",
            self.marker_text.trim_end(),
            self.layer2_text.trim_end()
        )
    }
}

/// Runs a command, failing with its output when it does not succeed.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn umoci(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("umoci").args(args))
}

/// Builds the two-layer test image under `work` (which must exist) and packs it as an
/// OCI archive. `repo` is the repository name the image gets on import (e.g.
/// `veil.test/demo`), `tag` its tag.
pub fn build_test_image(work: &Path, repo: &str, tag: &str) -> anyhow::Result<TestImage> {
    build_test_image_with(work, repo, tag, &[])
}

/// [`build_test_image`] with `extra` files (absolute path in the image, contents; mode
/// 0644, parent directories made as needed) added by layer 2.
pub fn build_test_image_with(
    work: &Path,
    repo: &str,
    tag: &str,
    extra: &[(&str, &[u8])],
) -> anyhow::Result<TestImage> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.exists() {
        bail!("{BUSYBOX} is missing: install Debian's busybox-static package");
    }
    let layout = work.join("oci-layout");
    let bundle = work.join("bundle");
    let archive = work.join("image.oci.tar");
    let layout_s = layout.to_str().context("layout path is not UTF-8")?;
    let bundle_s = bundle.to_str().context("bundle path is not UTF-8")?;
    let image = format!("{layout_s}:{tag}");

    umoci(&["init", "--layout", layout_s])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, bundle_s])?;

    // Layer 1: busybox, applets, marker, a file that layer 2 deletes.
    let rootfs = bundle.join("rootfs");
    let bin = rootfs.join("bin");
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&etc)?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::copy(busybox, bin.join("busybox")).context("copying busybox")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let marker_text = "veil marker: layer one says hello\n".to_string();
    std::fs::write(etc.join("veil-marker"), &marker_text)?;
    std::fs::write(etc.join("veil-doomed"), "layer two deletes this file\n")?;
    umoci(&[
        "repack",
        "--refresh-bundle",
        "--history.comment",
        "veil test layer 1: busybox and marker",
        "--image",
        &image,
        bundle_s,
    ])?;

    // Layer 2: one new file, one deletion.
    let layer2_text = "veil layer two: added on top\n".to_string();
    std::fs::write(etc.join("veil-layer2"), &layer2_text)?;
    for (path, contents) in extra {
        let file = rootfs.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, contents).with_context(|| format!("writing {path}"))?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    std::fs::remove_file(etc.join("veil-doomed"))?;
    umoci(&[
        "repack",
        "--history.comment",
        "veil test layer 2: one file added, one deleted",
        "--image",
        &image,
        bundle_s,
    ])?;

    umoci(&[
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/bin",
        "--config.cmd",
        "/bin/cat",
        "--config.cmd",
        "/etc/veil-marker",
    ])?;
    umoci(&["gc", "--layout", layout_s])?;

    // Check what ctr import will rely on.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)
            .context("parsing index.json")?;
    let manifests = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?;
    if manifests.len() != 1 {
        bail!("index.json has {} manifests, expected 1", manifests.len());
    }
    let ref_name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"].as_str();
    if ref_name != Some(tag) {
        bail!("index.json's org.opencontainers.image.ref.name is {ref_name:?}, expected {tag:?}");
    }
    let manifest_digest = manifests[0]["digest"]
        .as_str()
        .context("manifest without digest")?
        .to_string();
    let manifest_path = layout
        .join("blobs")
        .join(manifest_digest.replacen(':', "/", 1));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path)?).context("parsing the manifest")?;
    let layer_digests: Vec<String> = manifest["layers"]
        .as_array()
        .context("manifest without layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str().map(str::to_string))
        .collect();
    if layer_digests.len() != 2 {
        bail!("the image has {} layers, expected 2", layer_digests.len());
    }

    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."))?;
    let _ = std::fs::remove_dir_all(&bundle);

    Ok(TestImage {
        layout,
        archive,
        base_name: repo.to_string(),
        tag: tag.to_string(),
        reference: format!("{repo}:{tag}"),
        manifest_digest,
        layer_digests,
        marker_path: "/etc/veil-marker",
        marker_text,
        layer2_path: "/etc/veil-layer2",
        layer2_text,
        deleted_path: "/etc/veil-doomed",
    })
}
