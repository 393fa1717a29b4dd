//! `veil mount`: an image's merged root filesystem at a directory, lazily, without
//! containerd; and the mount helpers the guest's pulls share with it (overlays with or
//! without a writable layer, the mount table, detaching).
//!
//! Each layer is resolved and mounted through FUSE under a private state directory (mode
//! 0700), then the layers are stacked read-only at the target: a bind mount for a single
//! layer, an overlay (top layer first) otherwise.
//!
//! **Who can read it.** When the layers are mounted without `allow_other` (the
//! [`LazyLayers`]' mount options), only the mounting user may use them, and the image is
//! stacked so that the same holds at the target: overlayfs reaches its lower layers with
//! the credentials of whoever mounted it (root), so a FUSE layer alone would let anyone
//! through the overlay. The overlay therefore gets one more, topmost lower layer: an empty
//! directory of mode 0700 in the state directory. The merged root takes its owner and mode
//! from the topmost layer, so nobody but root can enter the target; the layers' contents
//! are unchanged below it. With `allow_other` the image's own root mode shows. The mount lives as long as the process that
//! serves it; [`ImageMount::wait_until_unmounted`] returns once someone unmounts the
//! target (`veil umount DIR`, `umount DIR`), and dropping the [`ImageMount`] takes
//! everything down.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use veil_registry::Reference;

use crate::error::{ImageError, IoContext, RegistryContext};
use crate::layers::LazyLayers;
use crate::resolver::{LayerResolver, LiveMount, RemoteLayer, Resolved};

/// A mounted image.
pub struct ImageMount {
    target: PathBuf,
    state_dir: PathBuf,
    layers: Vec<Box<dyn LiveMount>>,
    stacked: bool,
}

/// Mounts `reference`'s root filesystem at `target`, with the layers' own mount points
/// under `state_dir` (created; removed again on drop).
pub async fn mount_image(
    lazy: &LazyLayers,
    reference: &str,
    target: &Path,
    state_dir: &Path,
) -> Result<ImageMount, ImageError> {
    let meta =
        std::fs::metadata(target).io_context(|| format!("mount point {}", target.display()))?;
    if !meta.is_dir() {
        return Err(ImageError::Invalid(format!(
            "mount point {} is not a directory",
            target.display()
        )));
    }
    let parsed = Reference::parse(reference)
        .registry_context(|| format!("image reference {reference:?}"))?;
    let image = lazy
        .registry()
        .resolve(&parsed)
        .await
        .registry_context(|| format!("resolving {reference}"))?;
    let manifest = image.manifest;
    create_private_dir(state_dir)?;
    let mut mounted = ImageMount {
        target: target.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        layers: Vec::new(),
        stacked: false,
    };
    let mut dirs = Vec::new();
    for (i, desc) in manifest.layers.iter().enumerate() {
        let layer = RemoteLayer {
            image_ref: reference.to_string(),
            layer_digest: desc.digest.to_string(),
            manifest_digest: Some(manifest.digest.to_string()),
            toc_digest: None,
        };
        if i == 0 {
            // The layers above are resolved next, one by one: start on them now.
            let above: Vec<String> = manifest
                .layers
                .iter()
                .map(|l| l.digest.to_string())
                .collect();
            lazy.look_ahead(&layer, &above);
        }
        let ready = match lazy.resolve(&layer).await? {
            Resolved::Lazy(l) => l,
            Resolved::NotLazy(why) | Resolved::Fail(why) => {
                return Err(ImageError::Invalid(format!(
                    "layer {} of {reference} cannot be mounted lazily: {why}",
                    desc.digest
                )))
            }
        };
        let dir = state_dir.join(format!("layer-{i}"));
        std::fs::create_dir_all(&dir).io_context(|| format!("creating {}", dir.display()))?;
        mounted.layers.push(ready.mount(&dir)?);
        dirs.push(dir);
    }
    if dirs.is_empty() {
        return Err(ImageError::Invalid(format!("{reference} has no layers")));
    }
    let private = !lazy.mount_options().allow_other;
    if private {
        let guard = state_dir.join("private-root");
        create_private_dir(&guard)?;
        dirs.push(guard);
    }
    stack(&dirs, target)?;
    mounted.stacked = true;
    Ok(mounted)
}

/// Creates `dir` (and its parents) and makes it mode 0700, whatever the umask or an
/// earlier run left.
pub fn create_private_dir(dir: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .io_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .io_context(|| format!("making {} private (0700)", dir.display()))
}

fn sys_mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let c = |s: &[u8]| {
        CString::new(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (source, target_c, fstype, data) = (
        c(source.as_bytes())?,
        c(target.as_os_str().as_bytes())?,
        c(fstype.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Stacks the layer directories (bottom first) read-only at `target`.
fn stack(dirs: &[PathBuf], target: &Path) -> Result<(), ImageError> {
    if let [only] = dirs {
        let src = only.to_string_lossy();
        sys_mount(&src, target, "", libc::MS_BIND | libc::MS_REC, "")
            .io_context(|| format!("bind-mounting {} at {}", only.display(), target.display()))?;
        // A bind mount takes the read-only flag only on a remount.
        sys_mount(
            &src,
            target,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            "",
        )
        .io_context(|| format!("making {} read-only", target.display()))?;
        return Ok(());
    }
    mount_overlay("overlay", dirs, None, target)
}

/// The writable layer of an overlay: its upper and work directories (on the same file
/// system).
#[derive(Debug, Clone, Copy)]
pub struct Writable<'a> {
    /// Where changes go.
    pub upper: &'a Path,
    /// overlayfs's scratch directory.
    pub work: &'a Path,
}

/// Largest mount data the kernel takes (one page, with its terminating NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// Mounts an overlay of `lowers` (bottom first) at `target`, named `source` in the
/// mount table: read-only without `writable`, else with that upper layer.
pub fn mount_overlay(
    source: &str,
    lowers: &[PathBuf],
    writable: Option<Writable<'_>>,
    target: &Path,
) -> Result<(), ImageError> {
    let lower: Vec<String> = lowers
        .iter()
        .rev()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    let mut data = format!("lowerdir={}", lower.join(":"));
    let flags = match writable {
        Some(w) => {
            data.push_str(&format!(
                ",upperdir={},workdir={}",
                w.upper.display(),
                w.work.display()
            ));
            0
        }
        None => libc::MS_RDONLY,
    };
    if data.len() > MAX_MOUNT_DATA {
        return Err(ImageError::Invalid(format!(
            "the overlay at {} needs {} bytes of mount options for {} layers, more than the \
             kernel's {MAX_MOUNT_DATA}",
            target.display(),
            data.len(),
            lowers.len()
        )));
    }
    sys_mount(source, target, "overlay", flags, &data)
        .io_context(|| format!("mounting overlay at {}", target.display()))
}

/// The mount IDs (first field of `/proc/self/mountinfo`) of what is mounted at `path`,
/// in mount order (the last one is on top); empty when nothing is.
pub fn mount_ids_at(path: &Path) -> Vec<u64> {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
                .filter_map(|l| l.split(' ').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The mount IDs in `/proc/self/mountinfo` now.
pub fn mount_ids() -> std::collections::HashSet<u64> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Detaches what is mounted at `target` (`umount -l`): it goes from the mount table now
/// and from the kernel once no one uses it.
pub fn detach(target: &Path) -> Result<(), ImageError> {
    let c = CString::new(target.as_os_str().as_bytes())
        .io_context(|| format!("unmounting {}", target.display()))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error())
            .io_context(|| format!("unmounting {}", target.display()));
    }
    Ok(())
}

/// Whether `path` is a mount point, read from `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    !mount_ids_at(path).is_empty()
}

/// Unmounts the image stacked at `target` (`veil umount`). The process serving it
/// notices and takes its layers down.
pub fn unmount_image(target: &Path) -> Result<(), ImageError> {
    if !target.exists() {
        return Err(ImageError::Invalid(format!(
            "{}: no such directory",
            target.display()
        )));
    }
    if !is_mount_point(target) {
        return Err(ImageError::Invalid(format!(
            "{} is not mounted",
            target.display()
        )));
    }
    let c = CString::new(target.as_os_str().as_bytes())
        .io_context(|| format!("unmounting {}", target.display()))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBUSY) {
            return Err(ImageError::Invalid(format!(
                "{} is busy: a process is using it (close it, or `umount -l` to detach)",
                target.display()
            )));
        }
        return Err(err).io_context(|| format!("unmounting {}", target.display()));
    }
    Ok(())
}

impl ImageMount {
    /// Where the image is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// How many layers are mounted.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Returns once the target is no longer a mount point.
    pub async fn wait_until_unmounted(&self) {
        while is_mount_point(&self.target) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        if self.stacked && is_mount_point(&self.target) {
            let _ = detach(&self.target);
        }
        // Top layers first, then the state directory.
        while let Some(layer) = self.layers.pop() {
            drop(layer);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
