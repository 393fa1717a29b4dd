//! What a previous puller (an earlier run of the daemon) left in the work directory, and
//! which of it is still in use.
//!
//! A restart must not take down what running containers use: a root overlay (source
//! [`OVERLAY_SOURCE`](crate::puller::OVERLAY_SOURCE)) still in the mount table keeps its
//! writable layer and the layer directories it stacks. Those are *adopted*: left mounted
//! and released once that root is unmounted (the watcher checks them with the
//! containers of this run). Everything else — layer mounts no root uses, writable layers
//! of roots that are gone — is taken down at start-up. (The layer filesystems of a
//! previous run were served by that process: what it leaves mounted answers `ENOTCONN`
//! to reads the kernel has not cached; adoption keeps the container's root in place and
//! makes sure it is cleaned up when the pod goes; with a connection keeper the layers'
//! connections are served again instead: `handover.rs`.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use veil_image::image_mount::{detach, mount_ids_at};

/// A root overlay of a previous run that is still mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Adopted {
    /// Its mount ID.
    pub mount_id: u64,
    /// The layer directories (of this work directory) it stacks.
    pub layers: Vec<PathBuf>,
    /// Its writable layer's container directory, if in this work directory.
    pub container_dir: Option<PathBuf>,
}

/// The still-mounted root overlays named `source` in `mountinfo` whose layers are below
/// `layers_dir`.
pub(crate) fn live_roots(
    mountinfo: &str,
    source: &str,
    layers_dir: &Path,
    containers_dir: &Path,
) -> Vec<Adopted> {
    let mut roots = Vec::new();
    for line in mountinfo.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut t = tail.split(' ');
        if t.next() != Some("overlay") || t.next() != Some(source) {
            continue;
        }
        let Some(Ok(mount_id)) = head.split(' ').next().map(str::parse::<u64>) else {
            continue;
        };
        let opts = t.next().unwrap_or("");
        let mut layers = Vec::new();
        let mut container_dir = None;
        for opt in opts.split(',') {
            if let Some(lower) = opt.strip_prefix("lowerdir=") {
                layers.extend(
                    lower
                        .split(':')
                        .map(unescape)
                        .filter(|p| p.parent() == Some(layers_dir)),
                );
            } else if let Some(lower) = opt.strip_prefix("lowerdir+=") {
                let p = unescape(lower);
                if p.parent() == Some(layers_dir) {
                    layers.push(p);
                }
            } else if let Some(upper) = opt.strip_prefix("upperdir=") {
                let upper = unescape(upper);
                container_dir = upper
                    .parent()
                    .filter(|d| d.parent() == Some(containers_dir))
                    .map(Path::to_path_buf);
            }
        }
        if !layers.is_empty() {
            roots.push(Adopted {
                mount_id,
                layers,
                container_dir,
            });
        }
    }
    roots
}

/// A path as the mount table writes it (`\040` for a space and the like).
fn unescape(text: &str) -> PathBuf {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = &bytes[i + 1..i + 4];
            if octal.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = octal.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                if let Ok(b) = u8::try_from(value) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Takes down what a previous run left that no mounted root uses, and returns the roots
/// still mounted (to adopt) and the next free layer generation number.
pub(crate) fn sweep(layers_dir: &Path, containers_dir: &Path, source: &str) -> (Vec<Adopted>, u64) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let roots = live_roots(&info, source, layers_dir, containers_dir);
    let used: HashSet<&PathBuf> = roots.iter().flat_map(|r| r.layers.iter()).collect();
    let kept_containers: HashSet<&PathBuf> = roots
        .iter()
        .filter_map(|r| r.container_dir.as_ref())
        .collect();
    let mut next_generation = 0;
    if let Ok(entries) = std::fs::read_dir(layers_dir) {
        for e in entries.flatten() {
            let path = e.path();
            if used.contains(&path) {
                if let Some(g) = path
                    .extension()
                    .and_then(|x| x.to_str())
                    .and_then(|x| x.parse::<u64>().ok())
                {
                    next_generation = next_generation.max(g + 1);
                }
                continue;
            }
            if !mount_ids_at(&path).is_empty() {
                let _ = detach(&path);
            }
            let _ = std::fs::remove_dir(&path);
        }
    }
    if let Ok(entries) = std::fs::read_dir(containers_dir) {
        for e in entries.flatten() {
            let path = e.path();
            if !kept_containers.contains(&path) && !info.contains(&*path.to_string_lossy()) {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
    if !roots.is_empty() {
        tracing::warn!(
            roots = roots.len(),
            layers = used.len(),
            "roots of a previous run are still mounted: left in place, released once unmounted"
        );
    }
    (roots, next_generation)
}

/// Releases the adopted roots that are no longer mounted (`present`: the mount IDs now):
/// their writable layers are removed and their layers unmounted unless another adopted
/// root still stacks them. `take_down` is called first for each such layer (its kept
/// connection is closed; `true`: it was served again by this process and dropping it
/// unmounted it already).
pub(crate) fn release_gone(
    adopted: &mut Vec<Adopted>,
    present: &HashSet<u64>,
    take_down: impl Fn(&Path) -> bool,
) {
    let (gone, live): (Vec<Adopted>, Vec<Adopted>) = std::mem::take(adopted)
        .into_iter()
        .partition(|a| !present.contains(&a.mount_id));
    *adopted = live;
    let still_used: HashSet<&PathBuf> = adopted.iter().flat_map(|a| a.layers.iter()).collect();
    for root in &gone {
        if let Some(dir) = &root.container_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        for layer in &root.layers {
            if still_used.contains(layer) {
                continue;
            }
            if !take_down(layer) && !mount_ids_at(layer).is_empty() {
                let _ = detach(layer);
            }
            let _ = std::fs::remove_dir(layer);
        }
        tracing::info!(
            mount_id = root.mount_id,
            "a root of a previous run was unmounted: its layers and writable layer released"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_roots_are_read_from_the_mount_table() {
        let info = "\
22 1 0:21 / /proc rw - proc proc rw
301 29 0:90 / /run/kata-containers/c1/rootfs rw,relatime - overlay veil-guest rw,lowerdir=/w/layers/ab.1:/w/layers/cd.0,upperdir=/w/containers/r-3/upper,workdir=/w/containers/r-3/work
302 29 0:91 / /other rw - overlay overlay rw,lowerdir=/w/layers/ef.2,upperdir=/u,workdir=/x
303 29 0:92 / /w/layers/ab.1 ro - fuse.veil veil rw,user_id=0
";
        let roots = live_roots(
            info,
            "veil-guest",
            Path::new("/w/layers"),
            Path::new("/w/containers"),
        );
        assert_eq!(
            roots,
            [Adopted {
                mount_id: 301,
                layers: vec!["/w/layers/ab.1".into(), "/w/layers/cd.0".into()],
                container_dir: Some("/w/containers/r-3".into()),
            }]
        );
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
    }
}
