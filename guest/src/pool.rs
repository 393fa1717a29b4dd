//! The layer mounts shared by the guest's containers: each distinct layer identity
//! mounted once under `work_dir/layers/`, counted, unmounted when its last user goes.
//!
//! A layer's identity is what issue 16's rule compares ([`LayerIdentity`]): the blob
//! digest, the TOC digest the manifest (or the sealed private options) vouches for, and
//! whether it is encrypted — never a chainID or a diff_id, which any image can claim. Two
//! pulls share a mount only when all three match; the identity comes from the image
//! service's [`authorize`](veil_image::resolver::LayerResolver::authorize), which every
//! pull calls for every layer (so an encrypted layer's key is unwrapped on every pull,
//! mounted or not).
//!
//! Acquiring is single flight: the first pull of an identity resolves and mounts it
//! while later ones wait for that (and share its fetches); if it fails, the next waiter
//! tries again. Each mount gets a directory of its own (a generation number), so a
//! mount still being taken down never meets its successor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use veil_image::resolver::{LayerIdentity, LiveMount};

/// Hex digits of the identity hash in a layer directory's name (short: the overlay's
/// mount options list every layer directory and must fit in a page).
const KEY_HEX: usize = 16;

/// One layer mount, shared.
pub(crate) struct SharedLayer {
    /// The identity it was mounted for.
    pub identity: LayerIdentity,
    /// Where it is (to be) mounted.
    pub dir: PathBuf,
    /// Set once mounted; taken when the last user goes.
    mount: Mutex<Option<Box<dyn LiveMount>>>,
    /// Held while the layer is being resolved and mounted: the single flight.
    init: tokio::sync::Mutex<()>,
}

impl SharedLayer {
    /// Whether the layer is mounted.
    pub fn is_mounted(&self) -> bool {
        self.mount
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Mounts the layer once: `mount` runs only if no other user mounted it yet, with
    /// concurrent callers waiting for the first.
    pub async fn ensure_mounted<F, Fut, E>(&self, mount: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Box<dyn LiveMount>, E>>,
    {
        let _flight = self.init.lock().await;
        if self.is_mounted() {
            return Ok(());
        }
        let live = mount().await?;
        *self.mount.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
        Ok(())
    }
}

struct Slot {
    layer: Arc<SharedLayer>,
    users: usize,
}

/// The shared layer mounts, by identity.
pub(crate) struct LayerPool {
    dir: PathBuf,
    slots: Mutex<HashMap<String, Slot>>,
    generation: AtomicU64,
}

/// The pool key of an identity (a hash of its three parts).
fn key(identity: &LayerIdentity) -> String {
    let mut h = Sha256::new();
    h.update(identity.layer_digest.as_bytes());
    h.update([0]);
    h.update(identity.toc_digest.as_deref().unwrap_or("").as_bytes());
    h.update([0, u8::from(identity.encrypted)]);
    hex::encode(h.finalize())
}

impl LayerPool {
    /// A pool mounting layers below `dir` (which exists, mode 0700), numbering its
    /// directories from `first_generation` (past those a previous run left in use).
    pub fn new(dir: PathBuf, first_generation: u64) -> Self {
        Self {
            dir,
            slots: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(first_generation),
        }
    }

    /// The shared layer of `identity`, counted as one more user (mounted or not yet:
    /// call [`SharedLayer::ensure_mounted`]). Every acquire is matched by a
    /// [`release`](Self::release).
    pub fn acquire(&self, identity: &LayerIdentity) -> Arc<SharedLayer> {
        let k = key(identity);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(k.clone()).or_insert_with(|| {
            let generation = self.generation.fetch_add(1, Ordering::Relaxed);
            Slot {
                layer: Arc::new(SharedLayer {
                    identity: identity.clone(),
                    dir: self.dir.join(format!("{}.{generation}", &k[..KEY_HEX])),
                    mount: Mutex::new(None),
                    init: tokio::sync::Mutex::new(()),
                }),
                users: 0,
            }
        });
        slot.users += 1;
        slot.layer.clone()
    }

    /// One user of `layer` is gone; the last one unmounts it and removes its directory
    /// (blocking: call it off the async threads). Returns that directory when this was
    /// the last user.
    pub fn release(&self, layer: &Arc<SharedLayer>) -> Option<PathBuf> {
        let k = key(&layer.identity);
        let last = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get_mut(&k) {
                Some(slot) if Arc::ptr_eq(&slot.layer, layer) => {
                    slot.users = slot.users.saturating_sub(1);
                    if slot.users == 0 {
                        slots.remove(&k).map(|s| s.layer)
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        let layer = last?;
        let mount = layer.mount.lock().unwrap_or_else(|p| p.into_inner()).take();
        if mount.is_some() {
            tracing::info!(layer = %layer.identity.layer_digest, dir = %layer.dir.display(), "last user gone: unmounting the layer");
        }
        drop(mount);
        remove_dir(&layer.dir);
        Some(layer.dir.clone())
    }

    /// How many layer mounts there are, and their users in all.
    pub fn counts(&self) -> (usize, usize) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        (slots.len(), slots.values().map(|s| s.users).sum())
    }

    /// The directories of the layers mounted now.
    pub fn mounted_dirs(&self) -> Vec<PathBuf> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .filter(|s| s.layer.is_mounted())
            .map(|s| s.layer.dir.clone())
            .collect()
    }
}

/// Removes an empty mount directory (logs why not).
fn remove_dir(dir: &Path) {
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a layer directory")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(digest: &str, toc: Option<&str>, encrypted: bool) -> LayerIdentity {
        LayerIdentity {
            layer_digest: digest.into(),
            toc_digest: toc.map(str::to_string),
            encrypted,
        }
    }

    #[test]
    fn only_the_same_identity_shares_a_layer() {
        let pool = LayerPool::new(PathBuf::from("/nonexistent"), 0);
        let a = pool.acquire(&id("sha256:a", Some("sha256:t"), false));
        let a2 = pool.acquire(&id("sha256:a", Some("sha256:t"), false));
        assert!(Arc::ptr_eq(&a, &a2));
        for other in [
            id("sha256:a", Some("sha256:u"), false),
            id("sha256:a", None, false),
            id("sha256:a", Some("sha256:t"), true),
            id("sha256:b", Some("sha256:t"), false),
        ] {
            let o = pool.acquire(&other);
            assert!(!Arc::ptr_eq(&a, &o), "{other:?} shares {:?}", a.identity);
            assert_ne!(a.dir, o.dir);
            pool.release(&o);
        }
        assert_eq!(pool.counts(), (1, 2));
        pool.release(&a);
        assert_eq!(pool.counts(), (1, 1));
        pool.release(&a2);
        assert_eq!(pool.counts(), (0, 0));
        // A new mount of the same identity gets a new directory.
        let again = pool.acquire(&id("sha256:a", Some("sha256:t"), false));
        assert_ne!(again.dir, a.dir);
        pool.release(&again);
    }
}
