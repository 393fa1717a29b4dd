//! [`GuestPuller`]: one `PullImage` — policy, manifest, every layer through the image
//! service, the container's overlay root at `bundle/rootfs`, `bundle/config.json` — and
//! the release of what a container held once its root is unmounted.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use oci_spec::image::ImageConfiguration;
use veil_image::image_mount::{
    create_private_dir, detach, mount_ids, mount_ids_at, mount_overlay, Writable,
};
use veil_image::layers::LazyLayers;
use veil_image::resolver::{Authorization, LayerResolver, RemoteLayer, Resolved};
use veil_registry::{Manifest, Reference, RegistryError};

use crate::adopt::{release_gone, sweep, Adopted};
use crate::error::GuestError;
use crate::handover::{ConnectionKeeper, Kept, KeptConnection};
use crate::options::{credentials_fit, GuestOptions};
use crate::policy::{Policy, Verdict};
use crate::pool::{LayerPool, SharedLayer};
use crate::spec::{runtime_spec, BUNDLE_CONFIG, BUNDLE_ROOTFS};
use crate::watch::Watcher;

/// The overlay's source in the mount table: how an operator tells Veil's roots apart.
pub const OVERLAY_SOURCE: &str = "veil-guest";

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The manifest digest (what `PullImage` answers).
    pub manifest_digest: String,
    /// How many layers the root stacks.
    pub layers: usize,
    /// How many of them were already mounted for another container (shared, not
    /// fetched again).
    pub layers_shared: usize,
    /// The container's id: its writable layer is `work_dir/containers/<id>`.
    pub container_id: String,
    /// The root filesystem (`bundle/rootfs`).
    pub rootfs: PathBuf,
}

/// A container whose root Veil mounted.
struct Container {
    id: String,
    image: String,
    rootfs: PathBuf,
    dir: PathBuf,
    /// The root overlay's mount ID: gone from the mount table = unmounted.
    mount_id: u64,
    layers: Vec<Arc<SharedLayer>>,
}

enum Bundle {
    /// A pull into it is under way.
    Pulling,
    /// Its root is mounted.
    Mounted(Container),
    /// What it held is being taken down.
    Releasing,
}

struct Inner {
    lazy: Arc<LazyLayers>,
    options: GuestOptions,
    pool: LayerPool,
    containers_dir: PathBuf,
    bundles: Mutex<HashMap<PathBuf, Bundle>>,
    run: String,
    next_id: AtomicU64,
    shut: AtomicBool,
    /// Roots of a previous run still mounted: released once unmounted.
    adopted: Mutex<Vec<Adopted>>,
    /// Layer connections kept across restarts, and those resumed.
    kept: Kept,
}

/// Serves the guest's image pulls lazily; see the crate documentation.
pub struct GuestPuller {
    inner: Arc<Inner>,
    watcher: Mutex<Option<Watcher>>,
    /// Set by [`GuestPuller::leave_mounted`]: dropping takes nothing down.
    leave: AtomicBool,
}

impl GuestPuller {
    /// A puller on the image service `lazy` (which should serve plain layers too:
    /// `LazyOptions::stream_plain`), working in `options.work_dir` (created, mode 0700),
    /// watching the mount table for roots kata-agent unmounted.
    pub fn new(lazy: Arc<LazyLayers>, options: GuestOptions) -> Result<Self, GuestError> {
        Self::new_keeping(lazy, options, None)
    }

    /// [`GuestPuller::new`] keeping each layer's FUSE connection in `keeper` (the daemon's
    /// fd store) from the moment it is mounted until its last user goes, so that a
    /// restart resumes them ([`GuestPuller::resume_kept`]).
    pub fn new_keeping(
        lazy: Arc<LazyLayers>,
        options: GuestOptions,
        keeper: Option<Arc<dyn ConnectionKeeper>>,
    ) -> Result<Self, GuestError> {
        if !credentials_fit(lazy.registry().options(), &options) {
            return Err(GuestError::Setup(format!(
                "the registry credentials {} are not what the image service's registry client \
                 reads: build it with veil_guest::registry_options",
                options
                    .auth_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            GuestError::Setup(format!("{what} {}: {e}", options.work_dir.display()))
        };
        create_private_dir(&options.work_dir).map_err(|e| setup("work directory", &e))?;
        let layers_dir = options.work_dir.join("layers");
        let containers_dir = options.work_dir.join("containers");
        for d in [&layers_dir, &containers_dir] {
            create_private_dir(d).map_err(|e| setup("work directory", &e))?;
        }
        let (adopted, next_generation) = sweep(&layers_dir, &containers_dir, OVERLAY_SOURCE);
        let run = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0)
                ^ u64::from(std::process::id())
        );
        let inner = Arc::new(Inner {
            lazy,
            pool: LayerPool::new(layers_dir, next_generation),
            adopted: Mutex::new(adopted),
            containers_dir,
            bundles: Mutex::new(HashMap::new()),
            run,
            next_id: AtomicU64::new(0),
            shut: AtomicBool::new(false),
            options,
            kept: Kept::new(keeper),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let watcher = Watcher::start(inner.options.watch_interval, move || {
            if let Some(inner) = weak.upgrade() {
                inner.release_unmounted();
            }
        })
        .map_err(|e| GuestError::Setup(format!("watching the mount table: {e}")))?;
        Ok(Self {
            inner,
            watcher: Mutex::new(Some(watcher)),
            leave: AtomicBool::new(false),
        })
    }

    /// Pulls `image_url` into `bundle_path` (which must exist: kata-agent creates it):
    /// mounts its root at `bundle_path/rootfs` and writes `bundle_path/config.json`.
    /// On error nothing of the pull stays mounted or counted.
    pub async fn pull(
        &self,
        image_url: &str,
        bundle_path: &Path,
    ) -> Result<PulledImage, GuestError> {
        let image = image_url.to_string();
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(GuestError::ShutDown { image });
        }
        let reference = Reference::parse(image_url).map_err(|e| GuestError::BadRequest {
            image: image.clone(),
            reason: e.to_string(),
        })?;
        let bundle = self.inner.claim_bundle(&image, bundle_path)?;
        let mut work = PullWork {
            inner: self.inner.clone(),
            bundle: bundle.clone(),
            rootfs: bundle.join(BUNDLE_ROOTFS),
            created_rootfs: false,
            acquired: Mutex::new(Vec::new()),
            layers: Vec::new(),
            container_dir: None,
            mounted: false,
        };
        let result = self.inner.pull(&image, &reference, &mut work).await;
        match result {
            Ok(pulled) => Ok(pulled),
            Err(e) => {
                tracing::warn!(image = %image, bundle = %bundle.display(), error = %e, "guest pull failed; undoing it");
                // Unmounting may block: off the async threads.
                let _ = tokio::task::spawn_blocking(move || drop(work)).await;
                Err(e)
            }
        }
    }

    /// Releases the container pulled into `bundle_path`: unmounts its root if still
    /// mounted, removes its writable layer, and releases its layers (each unmounted when
    /// its last user goes). `Ok(false)`: nothing was pulled there.
    pub async fn release(&self, bundle_path: &Path) -> Result<bool, GuestError> {
        let inner = self.inner.clone();
        let bundle = std::fs::canonicalize(bundle_path).unwrap_or(bundle_path.to_path_buf());
        tokio::task::spawn_blocking(move || inner.release_bundle(&bundle))
            .await
            .map_err(|e| GuestError::Setup(format!("releasing a bundle: {e}")))
    }

    /// Takes everything down: the watcher, every container's root, writable layer and
    /// layers. Later pulls fail. Blocking.
    pub fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
        if let Some(mut w) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.stop();
        }
        let bundles: Vec<PathBuf> = {
            let map = self.inner.bundles.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .filter(|(_, b)| matches!(b, Bundle::Mounted(_)))
                .map(|(k, _)| k.clone())
                .collect()
        };
        for b in bundles {
            self.inner.release_bundle(&b);
        }
    }

    /// Stops without taking anything down, for a process about to exit while containers
    /// run: later pulls fail, the watcher stops, and the roots and layer mounts stay
    /// mounted (dropping the puller afterwards unmounts nothing; the process's exit ends
    /// the layer filesystems' server, and the next puller on this work directory adopts
    /// the roots still mounted).
    pub fn leave_mounted(&self) {
        self.inner.shut.store(true, Ordering::Release);
        self.leave.store(true, Ordering::Release);
        self.inner.kept.leave_mounted();
        if let Some(mut w) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.stop();
        }
    }

    /// Serves again the layers of adopted roots (still mounted at start-up) whose
    /// connections an earlier process kept (`kept`, from the keeper), so their containers'
    /// reads go on; kept connections no root uses are closed. Returns how many layers.
    pub async fn resume_kept(&self, kept: Vec<KeptConnection>) -> usize {
        let in_use = {
            let adopted = self.inner.adopted.lock().unwrap_or_else(|p| p.into_inner());
            adopted
                .iter()
                .flat_map(|a| a.layers.iter().cloned())
                .collect()
        };
        self.inner
            .kept
            .resume(&self.inner.lazy, &in_use, kept)
            .await
    }

    /// How many roots of a previous run (still mounted at start-up) are not released yet.
    pub fn adopted_roots(&self) -> usize {
        self.inner
            .adopted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The bundles Veil holds something for now: a pull under way, a mounted root, or
    /// a release not finished yet.
    pub fn bundles(&self) -> Vec<PathBuf> {
        let map = self.inner.bundles.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    /// Layer mounts now, and their users in all (one per container per layer).
    pub fn layer_counts(&self) -> (usize, usize) {
        self.inner.pool.counts()
    }

    /// The directories of the layer mounts now.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        self.inner.pool.mounted_dirs()
    }
}

impl Drop for GuestPuller {
    fn drop(&mut self) {
        if self.leave.load(Ordering::Acquire) {
            // The layer mounts are dropped with `Inner`: keep it for the process's life.
            std::mem::forget(self.inner.clone());
            return;
        }
        self.shutdown();
    }
}

/// What a pull has done so far; dropping it undoes all of it (the pull failed).
struct PullWork {
    inner: Arc<Inner>,
    bundle: PathBuf,
    rootfs: PathBuf,
    created_rootfs: bool,
    /// Layers acquired so far, by their index in the manifest, as they are acquired (so
    /// a pull dropped half-way releases them too).
    acquired: Mutex<Vec<(usize, Arc<SharedLayer>)>>,
    /// The acquired layers in manifest order, once all are mounted.
    layers: Vec<Arc<SharedLayer>>,
    container_dir: Option<PathBuf>,
    mounted: bool,
}

impl Drop for PullWork {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = detach(&self.rootfs) {
                tracing::warn!(rootfs = %self.rootfs.display(), error = %e, "cannot unmount the root of a failed pull");
            }
        }
        if let Some(dir) = &self.container_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let acquired = std::mem::take(self.acquired.get_mut().unwrap_or_else(|p| p.into_inner()));
        for layer in self
            .layers
            .drain(..)
            .chain(acquired.into_iter().map(|(_, l)| l))
        {
            if let Some(dir) = self.inner.pool.release(&layer) {
                self.inner.kept.take_down(&dir);
            }
        }
        if self.created_rootfs {
            let _ = std::fs::remove_dir(&self.rootfs);
        }
        let mut map = self.inner.bundles.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(map.get(&self.bundle), Some(Bundle::Pulling)) {
            map.remove(&self.bundle);
        }
    }
}

impl Inner {
    /// Checks `bundle_path` and marks a pull into it under way; the canonical path.
    fn claim_bundle(&self, image: &str, bundle_path: &Path) -> Result<PathBuf, GuestError> {
        let bad = |reason: String| GuestError::Bundle {
            image: image.to_string(),
            bundle: bundle_path.to_path_buf(),
            reason,
        };
        if !bundle_path.is_absolute() {
            return Err(GuestError::BadRequest {
                image: image.to_string(),
                reason: format!("bundle path {:?} is not absolute", bundle_path),
            });
        }
        let meta = match std::fs::metadata(bundle_path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(
                    "the bundle directory does not exist (kata-agent creates it before it \
                     calls PullImage; Veil does not create it)"
                        .into(),
                ))
            }
            Err(e) => return Err(bad(format!("cannot stat it: {e}"))),
        };
        if !meta.is_dir() {
            return Err(bad("it is not a directory".into()));
        }
        let bundle = std::fs::canonicalize(bundle_path).map_err(|e| bad(e.to_string()))?;
        let mut map = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&bundle) {
            Some(Bundle::Pulling) => Err(bad("another pull into it is under way".into())),
            Some(Bundle::Mounted(c)) => Err(bad(format!(
                "it already holds {} (container {}); its rootfs is mounted",
                c.image, c.id
            ))),
            Some(Bundle::Releasing) => Err(bad(
                "the container that was pulled into it is still being released".into(),
            )),
            None => {
                map.insert(bundle.clone(), Bundle::Pulling);
                Ok(bundle)
            }
        }
    }

    async fn pull(
        self: &Arc<Self>,
        image: &str,
        reference: &Reference,
        work: &mut PullWork,
    ) -> Result<PulledImage, GuestError> {
        let started = std::time::Instant::now();
        let bundle_err = |reason: String| GuestError::Bundle {
            image: image.to_string(),
            bundle: work.bundle.clone(),
            reason,
        };
        // The bundle must not hold a root or a spec already.
        match std::fs::symlink_metadata(&work.rootfs) {
            Ok(m) if !m.is_dir() => return Err(bundle_err("rootfs is not a directory".into())),
            Ok(_) if !mount_ids_at(&work.rootfs).is_empty() => {
                return Err(bundle_err("rootfs is already a mount point".into()))
            }
            Ok(_) => {}
            Err(_) => {}
        }
        if work.bundle.join(BUNDLE_CONFIG).exists() {
            return Err(bundle_err(format!("{BUNDLE_CONFIG} already exists")));
        }
        self.check_policy(image, reference)?;

        let resolved = self
            .lazy
            .registry()
            .resolve(reference)
            .await
            .map_err(|e| registry_error(image, e))?;
        let manifest = resolved.manifest;
        let config = self.image_config(image, reference, &manifest).await?;

        // Every layer, concurrently: authorized (keys unwrapped) on every pull, then
        // shared by identity and mounted once.
        let results =
            futures::future::join_all(manifest.layers.iter().enumerate().map(|(index, desc)| {
                let acquired = &work.acquired;
                self.layer(
                    image,
                    reference,
                    &manifest,
                    index,
                    desc.digest.to_string(),
                    acquired,
                )
            }))
            .await;
        let mut acquired =
            std::mem::take(&mut *work.acquired.lock().unwrap_or_else(|p| p.into_inner()));
        acquired.sort_by_key(|(index, _)| *index);
        work.layers = acquired.into_iter().map(|(_, l)| l).collect();
        let mut first_error = None;
        let mut shared = 0;
        for result in results {
            match result {
                Ok(was_mounted) => shared += usize::from(was_mounted),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if work.layers.is_empty() {
            return Err(GuestError::ImageConfig {
                image: image.to_string(),
                reason: "the manifest lists no layers".into(),
            });
        }

        // The container's writable layer, owned and moded like the image's root.
        let id = format!(
            "{}-{}",
            self.run,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let io = |what: String| {
            let image = image.to_string();
            move |cause: std::io::Error| GuestError::Io { image, what, cause }
        };
        let dir = self.containers_dir.join(&id);
        work.container_dir = Some(dir.clone());
        let (upper, workdir) = (dir.join("upper"), dir.join("work"));
        for d in [&upper, &workdir] {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        }
        let top = work
            .layers
            .last()
            .map(|l| l.dir.clone())
            .unwrap_or_default();
        let root_meta = std::fs::metadata(&top)
            .map_err(io(format!("reading the image's root {}", top.display())))?;
        std::os::unix::fs::chown(&upper, Some(root_meta.uid()), Some(root_meta.gid()))
            .map_err(io(format!("chown {}", upper.display())))?;
        std::fs::set_permissions(
            &upper,
            std::fs::Permissions::from_mode(root_meta.mode() & 0o7777),
        )
        .map_err(io(format!("chmod {}", upper.display())))?;

        if !work.rootfs.exists() {
            std::fs::create_dir(&work.rootfs)
                .map_err(io(format!("creating {}", work.rootfs.display())))?;
            work.created_rootfs = true;
        }
        let lowers: Vec<PathBuf> = work.layers.iter().map(|l| l.dir.clone()).collect();
        let rootfs = work.rootfs.clone();
        let (u, w) = (upper.clone(), workdir.clone());
        tokio::task::spawn_blocking(move || {
            mount_overlay(
                OVERLAY_SOURCE,
                &lowers,
                Some(Writable {
                    upper: &u,
                    work: &w,
                }),
                &rootfs,
            )
        })
        .await
        .map_err(|e| GuestError::Setup(format!("mounting a root: {e}")))?
        .map_err(|e| GuestError::Io {
            image: image.to_string(),
            what: "mounting the root filesystem".into(),
            cause: std::io::Error::other(e.to_string()),
        })?;
        work.mounted = true;
        let mount_id = mount_ids_at(&work.rootfs).last().copied().ok_or_else(|| {
            bundle_err("the root overlay is not in the mount table after mounting it".into())
        })?;

        let spec =
            runtime_spec(&config, &work.rootfs).map_err(|reason| GuestError::ImageConfig {
                image: image.to_string(),
                reason,
            })?;
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| GuestError::ImageConfig {
            image: image.to_string(),
            reason: format!("serializing the runtime spec: {e}"),
        })?;
        let config_path = work.bundle.join(BUNDLE_CONFIG);
        write_new(&config_path, &json).map_err(io(format!("writing {}", config_path.display())))?;

        let container = Container {
            id: id.clone(),
            image: image.to_string(),
            rootfs: work.rootfs.clone(),
            dir,
            mount_id,
            layers: std::mem::take(&mut work.layers),
        };
        let layers = container.layers.len();
        {
            let mut map = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
            if self.shut.load(Ordering::Acquire) {
                // Shut down while pulling: give it all back.
                work.layers = container.layers;
                let _ = std::fs::remove_file(&config_path);
                return Err(GuestError::ShutDown {
                    image: image.to_string(),
                });
            }
            map.insert(work.bundle.clone(), Bundle::Mounted(container));
        }
        // Nothing to undo any more.
        work.mounted = false;
        work.container_dir = None;
        work.created_rootfs = false;
        tracing::info!(
            image,
            manifest = %manifest.digest,
            bundle = %work.bundle.display(),
            container = %id,
            layers,
            layers_shared = shared,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "guest pull done: root mounted"
        );
        Ok(PulledImage {
            manifest_digest: manifest.digest.to_string(),
            layers,
            layers_shared: shared,
            container_id: id,
            rootfs: work.rootfs.clone(),
        })
    }

    /// Refuses the image when the policy says so (or cannot be used).
    fn check_policy(&self, image: &str, reference: &Reference) -> Result<(), GuestError> {
        let Some(path) = &self.options.policy else {
            return Ok(());
        };
        let policy = Policy::load(path).map_err(|reason| GuestError::PolicyInvalid {
            image: image.to_string(),
            policy: path.clone(),
            reason,
        })?;
        match policy.check(reference) {
            Verdict::Accept => Ok(()),
            Verdict::Refuse { scope, reason } => Err(GuestError::PolicyRejected {
                image: image.to_string(),
                policy: path.clone(),
                scope,
                reason,
            }),
        }
    }

    /// The image config, fetched and checked against the manifest.
    async fn image_config(
        &self,
        image: &str,
        reference: &Reference,
        manifest: &Manifest,
    ) -> Result<ImageConfiguration, GuestError> {
        let bytes = self
            .lazy
            .registry()
            .fetch_blob(reference, &manifest.config.digest)
            .await
            .map_err(|e| registry_error(image, e))?;
        let bad = |reason: String| GuestError::ImageConfig {
            image: image.to_string(),
            reason,
        };
        let config: ImageConfiguration = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "config {} does not parse: {e}",
                manifest.config.digest
            ))
        })?;
        let diff_ids = config.rootfs().diff_ids().len();
        if diff_ids != manifest.layers.len() {
            return Err(bad(format!(
                "config {} lists {diff_ids} diff_ids for the manifest's {} layers",
                manifest.config.digest,
                manifest.layers.len()
            )));
        }
        Ok(config)
    }

    /// Authorizes, shares and mounts layer `index` of the manifest; whether it was
    /// mounted already. The shared layer, once acquired, goes into `acquired` at once (the
    /// caller releases it whatever the result).
    async fn layer(
        &self,
        image: &str,
        reference: &Reference,
        manifest: &Manifest,
        index: usize,
        digest: String,
        acquired: &Mutex<Vec<(usize, Arc<SharedLayer>)>>,
    ) -> Result<bool, GuestError> {
        let remote = RemoteLayer {
            image_ref: reference.to_string(),
            layer_digest: digest.clone(),
            manifest_digest: Some(manifest.digest.to_string()),
            toc_digest: None,
        };
        let layer_err = |reason: String| GuestError::Layer {
            image: image.to_string(),
            layer: digest.clone(),
            reason,
        };
        let identity = match self.lazy.authorize(&remote).await {
            Ok(Authorization::Granted(identity)) => identity,
            Ok(Authorization::Denied(reason)) => {
                return Err(GuestError::KeyMissing {
                    image: image.to_string(),
                    layer: digest.clone(),
                    reason,
                })
            }
            Err(e) => return Err(layer_err(e.to_string())),
        };
        let shared = self.pool.acquire(&identity);
        acquired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((index, shared.clone()));
        let was_mounted = shared.is_mounted();
        let dir = shared.dir.clone();
        let lazy = self.lazy.clone();
        let kept = &self.kept;
        let mounted = shared
            .ensure_mounted(|| async move {
                let ready = match lazy.resolve(&remote).await {
                    Ok(Resolved::Lazy(ready)) => ready,
                    Ok(Resolved::NotLazy(why)) => {
                        return Err(layer_err(format!(
                            "it cannot be served ({why}; plain layers need the image service's \
                             stream_plain)"
                        )))
                    }
                    Ok(Resolved::Fail(why)) => return Err(layer_err(why)),
                    Err(e) => return Err(layer_err(e.to_string())),
                };
                std::fs::create_dir_all(&dir)
                    .map_err(|e| layer_err(format!("creating {}: {e}", dir.display())))?;
                let d = dir.clone();
                let live = tokio::task::spawn_blocking(move || ready.mount(&d))
                    .await
                    .map_err(|e| layer_err(format!("mounting it: {e}")))?;
                let live = live.map_err(|e| {
                    let _ = std::fs::remove_dir(&dir);
                    layer_err(format!("mounting it: {e}"))
                })?;
                kept.keep(&dir, &remote, live.as_ref());
                Ok(live)
            })
            .await;
        mounted.map(|()| was_mounted)
    }

    /// Releases every container whose root overlay is no longer in the mount table.
    fn release_unmounted(&self) {
        let present = mount_ids();
        {
            let mut adopted = self.adopted.lock().unwrap_or_else(|p| p.into_inner());
            if !adopted.is_empty() {
                release_gone(&mut adopted, &present, |dir| self.kept.take_down(dir));
            }
        }
        let gone: Vec<PathBuf> = {
            let map = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .filter_map(|(k, b)| match b {
                    Bundle::Mounted(c) if !present.contains(&c.mount_id) => Some(k.clone()),
                    _ => None,
                })
                .collect()
        };
        for bundle in gone {
            tracing::info!(bundle = %bundle.display(), "the container's root was unmounted: releasing it");
            self.release_bundle(&bundle);
        }
    }

    /// Releases the container of `bundle` (blocking); `false` if there is none.
    fn release_bundle(&self, bundle: &Path) -> bool {
        let container = {
            let mut map = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
            match map.get_mut(bundle) {
                Some(b @ Bundle::Mounted(_)) => match std::mem::replace(b, Bundle::Releasing) {
                    Bundle::Mounted(c) => c,
                    _ => return false,
                },
                _ => return false,
            }
        };
        if mount_ids().contains(&container.mount_id) {
            if let Err(e) = detach(&container.rootfs) {
                tracing::warn!(rootfs = %container.rootfs.display(), error = %e, "cannot unmount a container's root");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&container.dir) {
            tracing::warn!(dir = %container.dir.display(), error = %e, "cannot remove a container's writable layer");
        }
        for layer in &container.layers {
            if let Some(dir) = self.pool.release(layer) {
                self.kept.take_down(&dir);
            }
        }
        self.bundles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(bundle);
        tracing::info!(
            container = %container.id,
            image = %container.image,
            "container released: writable layer removed, layers released"
        );
        true
    }
}

/// A registry error as the guest reports it: unknown image, or the registry failing.
fn registry_error(image: &str, e: RegistryError) -> GuestError {
    if e.is_not_found() {
        GuestError::UnknownImage {
            image: image.to_string(),
            cause: e.to_string(),
        }
    } else {
        GuestError::Registry {
            image: image.to_string(),
            cause: e.to_string(),
        }
    }
}

/// Writes `bytes` to a new file at `path` (never over an existing one).
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(bytes)
}

use std::os::unix::fs::OpenOptionsExt;
