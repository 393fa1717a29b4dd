//! The overlay snapshotter: snapshot directories on disk and the mounts that present them.
//!
//! Layout under the root, the same as containerd's overlayfs snapshotter:
//!
//! ```text
//! <root>/metadata.redb        the metadata store
//! <root>/snapshots/<id>/fs    a snapshot's own files (the overlay upper dir)
//! <root>/snapshots/<id>/work  overlay's work dir (active snapshots only)
//! ```
//!
//! A new snapshot's directory is built under a temporary name and renamed into place
//! inside the metadata transaction that records it; a removed snapshot's record goes
//! first and its directory after. A crash can therefore leave only directories without
//! records, never records without directories; those orphans are removed at start-up
//! and by `Cleanup`. This file knows nothing of gRPC: see `service.rs`.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use containerd_snapshots::api::types::Mount;

use crate::error::{Error, Result};
use crate::fdstore::FdKeeper;
use crate::handover;
use crate::metadata::{Kind, MetaStore, Record, Usage};
use crate::usage::disk_usage;
use veil_image::resolver::{Handover, LiveMount, MountableLayer, RemoteLayer};

/// A snapshot as callers see it: its key, record and parent chain.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Key (active, view) or name (committed).
    pub key: String,
    /// The stored record.
    pub record: Record,
}

/// Snapshots on a local filesystem, presented with overlayfs.
pub struct OverlaySnapshotter {
    root: PathBuf,
    store: MetaStore,
    index_off: bool,
    /// Filesystems mounted for remote snapshots, by snapshot ID.
    live: Mutex<HashMap<u64, Box<dyn LiveMount>>>,
    /// Remote snapshots whose layer is not mounted (a stand-in answering `EIO` is), by
    /// snapshot ID, with the reason: no mounts are handed out that stack on them.
    unavailable: Mutex<HashMap<u64, String>>,
    /// Where each layer's FUSE connection is kept across restarts, when configured.
    fd_store: Option<Arc<dyn FdKeeper>>,
    /// The promoted files kept beside those connections.
    promoted: veil_image::resolver::KeptEntries,
    /// Held shared while a snapshot's directory is made and its record committed, and
    /// exclusively by [`Self::cleanup`]: a directory whose record is not committed yet
    /// is not an orphan.
    making: RwLock<()>,
}

impl OverlaySnapshotter {
    /// Opens the snapshotter rooted at `root`, creating it if needed, and removes any
    /// snapshot directory left without a record by an earlier crash.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_keeping(root, &HashSet::new())
    }

    /// [`Self::open`], leaving mounted the layer directories of the remote snapshots in
    /// `keep` whose connections were handed over (their mounts are live and will be
    /// served again); every other mount left below the root is detached.
    pub fn open_keeping(root: &Path, keep: &HashSet<u64>) -> Result<Self> {
        let snapshots = root.join("snapshots");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snapshots)
            .map_err(|e| Error::io("creating", &snapshots, e))?;
        let store = MetaStore::open(&root.join("metadata.redb"))?;
        // Layer filesystems served by an earlier run of the daemon died with it (unless
        // their connections were handed over); their mount points answer ENOTCONN until
        // unmounted.
        let recorded = store.ids()?;
        let kept: Vec<String> = keep
            .iter()
            .filter(|id| recorded.contains(id))
            .map(|id| {
                snapshots
                    .join(id.to_string())
                    .join("fs")
                    .display()
                    .to_string()
            })
            .collect();
        detach_mounts_below(&snapshots, &kept);
        let sn = Self {
            root: root.to_path_buf(),
            store,
            index_off: overlay_index_enabled(),
            live: Mutex::new(HashMap::new()),
            unavailable: Mutex::new(HashMap::new()),
            fd_store: None,
            promoted: Default::default(),
            making: RwLock::new(()),
        };
        let removed = sn.cleanup()?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed snapshot directories left without metadata"
            );
        }
        Ok(sn)
    }

    /// Keeps every layer's FUSE connection in `store` (stored after mounting, removed
    /// when containerd removes the snapshot), so that a restart can serve it on.
    pub fn with_fd_store(mut self, store: Arc<dyn FdKeeper>) -> Self {
        self.fd_store = Some(store);
        self
    }

    /// Whether connections are kept in an fd store.
    pub fn has_fd_store(&self) -> bool {
        self.fd_store.is_some()
    }

    /// Hands a copy of remote snapshot `id`'s connection (its layer `layer_digest`) to
    /// the fd store, if one is configured. A failure is logged: the layer is served, but
    /// a restart will have to mount it again.
    fn keep_connection(&self, id: u64, layer_digest: &str, mount: &dyn LiveMount) {
        let Some(store) = &self.fd_store else {
            return;
        };
        let stored = match mount.handover() {
            None => return,
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(h)) => {
                // Promoted files kept beside an earlier connection under this id are
                // not this one's: their backing ids mean nothing on it.
                self.promoted.forget_all(store.as_ref(), &id.to_string());
                let data = handover::encode(layer_digest, &h.state);
                store
                    .store(&id.to_string(), &data, h.fd.as_fd())
                    .map_err(|e| e.to_string())
            }
        };
        match stored {
            Ok(()) => {
                tracing::debug!(
                    id,
                    layer = layer_digest,
                    "FUSE connection kept in the fd store"
                );
                mount.keep_promoted(self.promoted.keeper(store.clone(), &id.to_string()));
            }
            Err(e) => tracing::warn!(id, layer = layer_digest, error = %e,
                "could not keep the layer's FUSE connection in the fd store: a restart will \
                 break containers using it"),
        }
    }

    /// Tells the fd store to close remote snapshot `id`'s connection.
    fn drop_connection(&self, id: u64) {
        if let Some(store) = &self.fd_store {
            if let Err(e) = store.remove(&id.to_string()) {
                tracing::warn!(id, error = %e, "could not remove the layer's FUSE connection from the fd store");
            }
            self.promoted.forget_all(store.as_ref(), &id.to_string());
        }
    }

    /// Lets go of every mounted layer without unmounting (SIGTERM with an fd store: the
    /// next process serves the same connections).
    pub fn keep_mounted(&self) {
        let all: Vec<_> = self.live_mounts().drain().collect();
        let count = all.len();
        for (_, m) in all {
            m.keep_mounted();
        }
        tracing::info!(count, "leaving layer mounts to the next process");
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory a remote snapshot's layer is mounted at (its `fs` directory).
    pub fn layer_dir(&self, id: u64) -> PathBuf {
        self.upper(id)
    }

    fn upper(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn work(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    /// Metadata of `key`.
    pub fn stat(&self, key: &str) -> Result<Snapshot> {
        Ok(Snapshot {
            key: key.to_string(),
            record: self.store.get(key)?,
        })
    }

    /// Updates the labels of `key` (see [`MetaStore::update_labels`]).
    pub fn update(
        &self,
        key: &str,
        labels: &HashMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Snapshot> {
        Ok(Snapshot {
            key: key.to_string(),
            record: self.store.update_labels(key, labels, fieldpaths)?,
        })
    }

    /// Usage of `key`: measured now for an active snapshot, as recorded at commit
    /// otherwise.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.store.get(key)?;
        if rec.kind == Kind::Active {
            disk_usage(&self.upper(rec.id))
        } else {
            Ok(rec.usage)
        }
    }

    /// Creates an active (`Kind::Active`) or view snapshot and returns its mounts.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let _making = self.making.read().unwrap_or_else(|p| p.into_inner());
        let made = self
            .store
            .create(kind, key, parent, labels, |id, parent_ids| {
                // Refused before anything is made: the transaction records nothing.
                self.check_available(parent_ids)?;
                self.make_snapshot_dir(kind, id, parent_ids)
            })?;
        tracing::debug!(
            key,
            parent,
            id = made.record.id,
            kind = kind.as_str(),
            "created snapshot"
        );
        Ok(self.mounts_for(kind, made.record.id, &made.parent_ids))
    }

    fn make_snapshot_dir(&self, kind: Kind, id: u64, parent_ids: &[u64]) -> Result<()> {
        let final_dir = self.snapshot_dir(id);
        let tmp = self.root.join("snapshots").join(format!("new-{id}"));
        // A leftover from a crash under the same temporary name is ours to replace.
        let _ = std::fs::remove_dir_all(&tmp);
        let result = (|| {
            mkdir(&tmp, 0o700)?;
            let fs = tmp.join("fs");
            mkdir(&fs, 0o755)?;
            if kind == Kind::Active {
                mkdir(&tmp.join("work"), 0o711)?;
            }
            if let Some(&pid) = parent_ids.first() {
                // The new upper dir takes the owner of the parent's root, so that a
                // container sees the root it expects.
                let parent_fs = self.upper(pid);
                let meta = std::fs::metadata(&parent_fs)
                    .map_err(|e| Error::io("reading parent", &parent_fs, e))?;
                std::os::unix::fs::lchown(&fs, Some(meta.uid()), Some(meta.gid()))
                    .map_err(|e| Error::io("changing owner of", &fs, e))?;
            }
            if final_dir.exists() {
                // Only an orphan (no record: its ID is being handed out again) can be here.
                std::fs::remove_dir_all(&final_dir)
                    .map_err(|e| Error::io("removing orphan", &final_dir, e))?;
            }
            std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io("renaming", &tmp, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Records the committed snapshot `name` for a lazily served layer, mounting `layer`
    /// as its directory. Nothing is recorded unless the mount succeeded.
    pub fn create_remote(
        &self,
        name: &str,
        parent: &str,
        labels: HashMap<String, String>,
        remote: RemoteLayer,
        layer: Box<dyn MountableLayer>,
    ) -> Result<()> {
        let mut mounted = None;
        let digest = remote.layer_digest.clone();
        let making = self.making.read().unwrap_or_else(|p| p.into_inner());
        let made = self
            .store
            .create_remote(name, parent, labels, remote, |id, parent_ids| {
                self.make_snapshot_dir(Kind::Committed, id, parent_ids)?;
                mounted = Some(self.mount_layer(id, layer)?);
                Ok(())
            })?;
        drop(making);
        if let Some(m) = mounted {
            self.keep_connection(made.record.id, &digest, m.as_ref());
            self.live_mounts().insert(made.record.id, m);
        }
        tracing::info!(name, id = made.record.id, "committed remote snapshot");
        Ok(())
    }

    fn mount_layer(&self, id: u64, layer: Box<dyn MountableLayer>) -> Result<Box<dyn LiveMount>> {
        let dir = self.upper(id);
        layer
            .mount(&dir)
            .map_err(|e| Error::Layer(format!("mounting at {}: {e:#}", dir.display())))
    }

    fn live_mounts(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<dyn LiveMount>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remote snapshots on record, as (name, ID, layer), for mounting again after a
    /// restart.
    pub fn remote_snapshots(&self) -> Result<Vec<(String, u64, RemoteLayer)>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter_map(|(name, r)| r.remote.map(|l| (name, r.id, l)))
            .collect())
    }

    /// Mounts `layer` again for the recorded remote snapshot `id`. A stand-in mounted
    /// there by [`Self::attach_unavailable`] is unmounted first; once the layer is
    /// mounted, the snapshot is available again. On failure nothing is mounted at `id`.
    pub fn attach(
        &self,
        id: u64,
        layer_digest: &str,
        layer: Box<dyn MountableLayer>,
    ) -> Result<()> {
        // Unmounted outside the lock (a busy unmount waits for its session).
        let stand_in = self.live_mounts().remove(&id);
        drop(stand_in);
        let m = self.mount_layer(id, layer)?;
        self.keep_connection(id, layer_digest, m.as_ref());
        self.live_mounts().insert(id, m);
        self.unavailable_layers().remove(&id);
        Ok(())
    }

    /// Serves again, with `layer`, the live mount of remote snapshot `id` that an earlier
    /// process handed over (`handover`: its connection). On failure the connection is
    /// closed (the fd store's copy too) and the mount detached: nothing is mounted at
    /// `id`, and it can be mounted afresh.
    pub fn resume(
        &self,
        id: u64,
        layer: Box<dyn MountableLayer>,
        handover: Handover,
    ) -> Result<()> {
        let dir = self.upper(id);
        self.note_carried(id, &handover);
        match layer.resume(&dir, handover) {
            Ok(m) => {
                // Its connection is still in the fd store: files it promotes from now on
                // are kept beside it (as are those carried over).
                if let Some(store) = &self.fd_store {
                    m.keep_promoted(self.promoted.keeper(store.clone(), &id.to_string()));
                }
                self.live_mounts().insert(id, m);
                self.unavailable_layers().remove(&id);
                Ok(())
            }
            Err(e) => {
                self.abandon_connection(id);
                Err(Error::Layer(format!(
                    "serving the handed-over mount at {} again: {e:#}",
                    dir.display()
                )))
            }
        }
    }

    /// Notes the promoted files kept beside `handover`, the connection of remote snapshot
    /// `id`, so that they go with it.
    pub fn note_carried(&self, id: u64, handover: &Handover) {
        self.promoted
            .note(&id.to_string(), handover.carried.iter().map(|c| c.ino));
    }

    /// Gives up a handed-over connection of remote snapshot `id` that will not be served
    /// again: the fd store closes its copy (ours are dropped by the caller), and the
    /// mount is detached so the directory can be mounted afresh.
    pub fn abandon_connection(&self, id: u64) {
        self.drop_connection(id);
        detach_mounts_below(&self.root.join("snapshots").join(id.to_string()), &[]);
    }

    /// Records that the layer of remote snapshot `id` could not be mounted (`reason`), and
    /// mounts the stand-in `mount_stand_in` makes at its directory unless one is mounted
    /// already. Until [`Self::attach`] succeeds, mounts stacking on `id` are refused
    /// ([`Error::Unavailable`]).
    pub fn attach_unavailable(
        &self,
        id: u64,
        reason: &str,
        mount_stand_in: impl FnOnce(&Path) -> std::result::Result<Box<dyn LiveMount>, String>,
    ) -> Result<()> {
        self.unavailable_layers().insert(id, reason.to_string());
        if self.live_mounts().contains_key(&id) {
            return Ok(());
        }
        let dir = self.upper(id);
        let m = mount_stand_in(&dir).map_err(|e| {
            Error::Layer(format!(
                "mounting the failed-layer stand-in at {}: {e}",
                dir.display()
            ))
        })?;
        self.live_mounts().insert(id, m);
        Ok(())
    }

    /// Whether the layer of remote snapshot `id` is unavailable (see
    /// [`Self::attach_unavailable`]).
    pub fn is_unavailable(&self, id: u64) -> bool {
        self.unavailable_layers().contains_key(&id)
    }

    fn unavailable_layers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.unavailable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a snapshot stacked on an unavailable layer (an overlay over its stand-in
    /// would fail to mount or, worse, a container would run without the layer) or on a
    /// layer marked bad by a whole-layer check (its reads fail `EIO`: a wrong diff_id).
    fn check_available(&self, ids: &[u64]) -> Result<()> {
        {
            let unavailable = self.unavailable_layers();
            if let Some((id, reason)) = ids
                .iter()
                .find_map(|id| unavailable.get(id).map(|r| (id, r)))
            {
                return Err(Error::Unavailable(format!(
                    "lower layer (snapshot id {id}) is not mounted ({reason}); it is being \
                     retried, see `veil status`"
                )));
            }
        }
        let mounts = self.live_mounts();
        match ids
            .iter()
            .find_map(|id| mounts.get(id).and_then(|m| m.unhealthy()).map(|r| (id, r)))
        {
            None => Ok(()),
            Some((id, reason)) => Err(Error::Unavailable(format!(
                "lower layer (snapshot id {id}) must not be used: {reason}; see `veil status`"
            ))),
        }
    }

    /// Mounts of an active or view snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (rec, parent_ids) = self.store.get_with_chain(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed: only active and view snapshots have mounts"
            )));
        }
        self.check_available(&parent_ids)?;
        Ok(self.mounts_for(rec.kind, rec.id, &parent_ids))
    }

    /// Mounts the way containerd's overlayfs snapshotter builds them: a bind mount when
    /// there is nothing to overlay, else overlay with the parents as lower dirs (nearest
    /// first).
    fn mounts_for(&self, kind: Kind, id: u64, parent_ids: &[u64]) -> Vec<Mount> {
        let bind = |source: PathBuf, ro: bool| Mount {
            r#type: "bind".into(),
            source: source.to_string_lossy().into_owned(),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        if parent_ids.is_empty() {
            return vec![bind(self.upper(id), kind == Kind::View)];
        }
        if kind != Kind::Active && parent_ids.len() == 1 {
            return vec![bind(self.upper(parent_ids[0]), true)];
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if kind == Kind::Active {
            options.push(format!("workdir={}", self.work(id).display()));
            options.push(format!("upperdir={}", self.upper(id).display()));
        }
        let lower: Vec<String> = parent_ids
            .iter()
            .map(|&p| self.upper(p).to_string_lossy().into_owned())
            .collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }

    /// Commits the active snapshot `key` as `name`.
    pub fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        let rec = self
            .store
            .commit(key, name, labels, |id| disk_usage(&self.upper(id)))?;
        tracing::debug!(key, name, id = rec.id, "committed snapshot");
        Ok(())
    }

    /// Removes `key` and its directory.
    pub fn remove(&self, key: &str) -> Result<()> {
        let rec = self.store.remove(key)?;
        tracing::debug!(key, id = rec.id, "removed snapshot");
        // Unmount a lazily served layer before its directory goes.
        let mounted = self.live_mounts().remove(&rec.id);
        drop(mounted);
        if rec.remote.is_some() {
            self.drop_connection(rec.id);
        }
        self.unavailable_layers().remove(&rec.id);
        self.remove_dir(rec.id);
        Ok(())
    }

    fn remove_dir(&self, id: u64) {
        let dir = self.snapshot_dir(id);
        // Rename first so a half-removed directory is never mistaken for a snapshot.
        let doomed = self.root.join("snapshots").join(format!("rm-{id}"));
        let target = match std::fs::rename(&dir, &doomed) {
            Ok(()) => doomed,
            Err(_) => dir,
        };
        if let Err(e) = std::fs::remove_dir_all(&target) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %target.display(), error = %e, "could not remove snapshot directory; Cleanup will retry");
            }
        }
    }

    /// Every snapshot.
    pub fn list(&self) -> Result<Vec<Snapshot>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .map(|(key, record)| Snapshot { key, record })
            .collect())
    }

    /// Removes directories under `snapshots/` that no record refers to. Returns how
    /// many were removed.
    pub fn cleanup(&self) -> Result<usize> {
        // No snapshot is being made meanwhile: every directory without a committed
        // record is an orphan.
        let _making = self.making.write().unwrap_or_else(|p| p.into_inner());
        let ids = self.store.ids()?;
        let dir = self.root.join("snapshots");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = name
                .parse::<u64>()
                .map(|id| ids.contains(&id))
                .unwrap_or(false);
            if !keep {
                let path = entry.path();
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cleanup could not remove")
                    }
                }
            }
        }
        Ok(removed)
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io("creating", path, e))?;
    // The umask may have narrowed the mode; the layout needs it exact.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting mode of", path, e))
}

/// Lazily unmounts every mount at or below `dir` (deepest first), except those at `keep`.
fn detach_mounts_below(dir: &Path, keep: &[String]) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix) && !keep.contains(p))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p.as_str()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc == 0 {
                tracing::info!(path = %p, "detached a mount left by an earlier run");
            }
        }
    }
}

/// Whether the kernel's overlay module has `index` on by default, in which case mounts
/// pass `index=off` as containerd does (re-using a lower dir under another upper would
/// otherwise fail).
fn overlay_index_enabled() -> bool {
    std::fs::read_to_string("/sys/module/overlay/parameters/index")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn cleanup_never_removes_a_snapshot_being_made() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(OverlaySnapshotter::open(dir.path()).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let cleaner = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    s.cleanup().unwrap();
                }
            })
        };
        for i in 0..200 {
            let mounts = s
                .create(Kind::Active, &format!("active-{i}"), "", HashMap::new())
                .unwrap();
            let upper = Path::new(&mounts[0].source);
            assert!(upper.is_dir(), "snapshot {i}'s directory was removed");
        }
        stop.store(true, Ordering::SeqCst);
        cleaner.join().unwrap();
    }
}
