//! A resolved lazy layer becoming a mount: [`ReadyLayer`] (what a resolution hands the
//! front-end) mounts or resumes its FUSE filesystem and starts its background fetch;
//! [`Mounted`] is the live mount, which stops that fetch and unmounts when dropped.

use std::path::Path;
use std::sync::Arc;

use veil_fusefs::access_log::AccessLog;
use veil_fusefs::carry::{KeeperSlot, PromotedKeeper};
use veil_fusefs::disk_cache::CachedBlob;
use veil_fusefs::fs::{FsOptions, LayerFs};
use veil_fusefs::handover::KernelInit;
use veil_fusefs::mount::{mount, LayerMount, MountOptions};
use veil_fusefs::pipeline::ChunkReader;
use veil_fusefs::prefetch::{background_fetch, BackgroundOptions, CancellationToken, DropGuard};
use veil_fusefs::resume::resume;
use veil_fusefs::status_dir::StatusFile;
use veil_keyprovider::stream_cipher::HmacCheck;

use crate::error::ImageError;
use crate::resolver::{Handover, LiveMount, MountableLayer};
use crate::verify::{spawn_whole_layer_checks, DiffIdCheck};

use super::status_file::Fetches;

/// A resolved layer, ready to mount.
pub(super) struct ReadyLayer {
    pub(super) reader: Arc<ChunkReader>,
    /// Where its filesystem records first opens and reads.
    pub(super) access: Arc<AccessLog>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) options: MountOptions,
    pub(super) background: Option<Background>,
    /// The prefetch streaming on: dropping it stops it.
    pub(super) prefetching: Option<DropGuard>,
    /// What its mount serves at `/.veil/<digest>.json` (unencrypted layers only).
    pub(super) status: Option<StatusFile>,
}

/// The background fetch to start once a layer is mounted.
pub(super) struct Background {
    pub(super) source: Arc<CachedBlob>,
    pub(super) options: BackgroundOptions,
    pub(super) fetches: Fetches,
    /// For an encrypted layer: checked over the whole ciphertext once it is all fetched.
    pub(super) hmac: Option<HmacCheck>,
    /// The layer's `diff_id`, checked once it is all fetched (after the HMAC).
    pub(super) diff_id: Option<DiffIdCheck>,
}

/// A mounted layer: dropping it stops its background fetch, then unmounts.
pub(super) struct Mounted {
    pub(super) background: Option<DropGuard>,
    /// The prefetch still streaming, if any: stopped when the layer is unmounted.
    pub(super) prefetching: Option<DropGuard>,
    pub(super) mount: LayerMount,
    /// The layer's reader (`None` for a stand-in), for its health.
    pub(super) reader: Option<Arc<ChunkReader>>,
    /// Where its filesystem's promoted files are kept for restarts, once attached.
    pub(super) keeper: KeeperSlot,
}

impl LiveMount for Mounted {
    fn unhealthy(&self) -> Option<String> {
        let reader = self.reader.as_ref()?;
        reader
            .bad_reason()
            .map(|why| format!("layer {} is bad: {why}", reader.layer_name()))
    }

    fn handover(&self) -> Option<Result<Handover, ImageError>> {
        let copied = self.mount.handover()?;
        Some(
            copied
                .map_err(|e| ImageError::Invalid(format!("copying the FUSE fd: {e}")))
                .and_then(|(fd, init)| {
                    let state = serde_json::to_string(&init).map_err(|e| {
                        ImageError::Invalid(format!("recording the FUSE connection: {e}"))
                    })?;
                    Ok(Handover {
                        fd,
                        state,
                        carried: Vec::new(),
                    })
                }),
        )
    }

    fn keep_mounted(self: Box<Self>) {
        let Mounted {
            background,
            prefetching,
            mount,
            ..
        } = *self;
        // The background fetch and the prefetch run on until the process exits.
        std::mem::forget(background);
        std::mem::forget(prefetching);
        mount.keep_mounted();
    }

    fn keep_promoted(&self, keeper: Arc<dyn PromotedKeeper>) {
        let _ = self.keeper.set(keeper);
    }
}

impl MountableLayer for ReadyLayer {
    fn mount(self: Box<Self>, dir: &Path) -> Result<Box<dyn LiveMount>, ImageError> {
        let keeper = KeeperSlot::default();
        let fs = self.layer_fs().with_keeper_slot(keeper.clone());
        let layer_mount = mount(fs, dir, &self.options)?;
        Ok(self.start(layer_mount, keeper))
    }

    fn resume(
        self: Box<Self>,
        dir: &Path,
        handover: Handover,
    ) -> Result<Box<dyn LiveMount>, ImageError> {
        let init: KernelInit = serde_json::from_str(&handover.state).map_err(|e| {
            ImageError::Invalid(format!(
                "the handed-over FUSE connection of {} has unreadable state: {e}",
                dir.display()
            ))
        })?;
        // The tree is built from the same TOC as before: the same inode numbers.
        let offered = handover.carried.len();
        // New files are promoted through a copy of the connection's fd (the session is
        // served through a socket); without one, the carried files only.
        let dev = match handover.fd.try_clone() {
            Ok(dev) => Some(dev),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "copying the FUSE fd failed: this resumed mount promotes no new files");
                None
            }
        };
        let keeper = KeeperSlot::default();
        let (fs, adopted) = self
            .layer_fs()
            .with_keeper_slot(keeper.clone())
            .with_resumed_promotion(self.options.promote, dev, handover.carried);
        if offered > 0 {
            tracing::info!(dir = %dir.display(), offered, adopted,
                "promoted files carried over the restart");
        }
        let layer_mount = resume(fs, handover.fd, &init, dir, &self.options)?;
        Ok(self.start(layer_mount, keeper))
    }
}

impl ReadyLayer {
    /// The layer's filesystem, with its status file if it has one.
    fn layer_fs(&self) -> LayerFs {
        let fs = LayerFs::new(
            self.reader.clone(),
            self.runtime.clone(),
            FsOptions::default(),
        )
        .with_access_log(self.access.clone());
        match self.status.clone() {
            Some(file) => fs.with_status_file(file),
            None => fs,
        }
    }

    /// Starts the background fetch of a mounted layer.
    fn start(self: Box<Self>, layer_mount: LayerMount, keeper: KeeperSlot) -> Box<dyn LiveMount> {
        let reader = self.reader.clone();
        let guard = self.background.map(|bg| {
            let cancel = CancellationToken::new();
            let key = bg.source.key().to_string();
            let fetch =
                background_fetch(&self.runtime, bg.source.clone(), bg.options, cancel.clone());
            bg.fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), fetch.progress().clone());
            spawn_whole_layer_checks(
                &self.runtime,
                fetch,
                bg.source,
                bg.hmac,
                bg.diff_id,
                reader.clone(),
            );
            cancel.drop_guard()
        });
        Box::new(Mounted {
            background: guard,
            prefetching: self.prefetching,
            mount: layer_mount,
            reader: Some(reader),
            keeper,
        })
    }
}
