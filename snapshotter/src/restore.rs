//! Mounting remote layers again after a restart, and what happens when one cannot be.
//!
//! Every remote snapshot on record is resolved and mounted again before the daemon
//! accepts requests, all at once. A layer that fails (its registry is down, its blob
//! fails) is never left as an empty directory: a stand-in filesystem answering `EIO` is
//! mounted at its directory, a log line names the layer and why, `veil status` lists it
//! under `failed`, snapshots stacked on it are refused with `UNAVAILABLE` (Prepare, View
//! and Mounts), and it is retried in the background with backoff; once it resolves, the
//! stand-in is unmounted and the real layer mounted in its place, without a restart.
//!
//! With an fd store (`handover.rs`), a layer whose FUSE connection the previous process
//! handed over is not mounted again: it is resolved the same way (the same TOC gives the
//! same inode numbers) and the live connection is served again, so containers using it
//! only see their reads pause. One that cannot be resolved in time loses its connection
//! (it is closed and the mount detached) and goes the way of any failed layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_image::resolver::{Handover, LayerResolver, RemoteLayer, Resolved};
use veil_image::status::FailedLayerStatus;

use crate::error::Result;
use crate::service::Service;

/// A remote layer that could not be mounted again, for status.
pub(crate) struct FailedEntry {
    pub(crate) since: Instant,
    pub(crate) status: FailedLayerStatus,
}

/// How long start-up waits for each remote layer to mount again (all are tried at once)
/// before mounting its `EIO` stand-in and retrying in the background.
pub const RESTORE_FIRST_WAIT: Duration = Duration::from_secs(10);

/// The first pause between background attempts to mount a failed layer again.
pub const RESTORE_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest pause between background attempts (the pause doubles up to it).
pub const RESTORE_RETRY_MAX: Duration = Duration::from_secs(30);

impl Service {
    /// Mounts again every remote snapshot on record (after a restart), all at once, each
    /// given [`RESTORE_FIRST_WAIT`]. A layer that cannot be mounted (or not in time) is
    /// never left as an empty directory: a stand-in answering `EIO` is mounted in its
    /// place, the layer is listed as failed in [`Self::status`], snapshots stacked on it
    /// are refused (`UNAVAILABLE`), and it is retried in the background with backoff until
    /// it mounts. Returns how many layers were mounted.
    pub async fn attach_remote_layers(&self) -> Result<usize> {
        let Some(resolver) = self.resolver.clone() else {
            return Ok(0);
        };
        let layers = self.run("list", "", |s| s.remote_snapshots()).await?;
        let mut handed =
            std::mem::take(&mut *self.handed.lock().unwrap_or_else(|p| p.into_inner()));
        let mut resumed_ids = Vec::new();
        let layers: Vec<_> = layers
            .into_iter()
            .map(|(name, id, layer)| {
                // A connection is served again only for the layer it served.
                let handover = handed.remove(&id).and_then(|h| {
                    if h.layer_digest == layer.layer_digest {
                        return Some(h.handover);
                    }
                    // Its promoted files go when the new connection is kept.
                    self.inner.note_carried(id, &h.handover);
                    None
                });
                if handover.is_some() {
                    resumed_ids.push(id);
                }
                (name, id, layer, handover)
            })
            .collect();
        // Connections of snapshots no longer on record (or of another layer) are closed.
        for (id, h) in handed {
            tracing::warn!(id, layer = %h.layer_digest,
                "the fd store holds a connection of no recorded layer; closing it");
            self.inner.note_carried(id, &h.handover);
            drop(h);
            let inner = self.inner.clone();
            let _ = tokio::task::spawn_blocking(move || inner.abandon_connection(id)).await;
        }
        let attempts = layers.into_iter().map(|(name, id, layer, handover)| {
            let resolver = resolver.clone();
            async move {
                let result = self
                    .try_restore(
                        &resolver,
                        &name,
                        id,
                        &layer,
                        Some(RESTORE_FIRST_WAIT),
                        handover,
                    )
                    .await;
                (name, id, layer, result)
            }
        });
        let mut attached = 0;
        for (name, id, layer, result) in futures::future::join_all(attempts).await {
            match result {
                Ok(()) => attached += 1,
                Err(why) => {
                    if resumed_ids.contains(&id) {
                        tracing::error!(snapshot = %name, layer = %layer.layer_digest, reason = %why,
                            "could not serve the handed-over connection again: containers using \
                             this layer lose it; mounting it afresh");
                    }
                    self.layer_failed(&resolver, &name, id, &layer, why).await;
                    self.spawn_restore(resolver.clone(), name, id, layer);
                }
            }
        }
        Ok(attached)
    }

    /// One attempt to resolve and mount the layer of remote snapshot `id` (`wait`: give
    /// up resolving after so long), or to serve its live mount again when an earlier
    /// process handed its connection over (`handover`; on failure the connection is
    /// closed and the mount detached, so a later attempt mounts afresh). Err: why not.
    async fn try_restore(
        &self,
        resolver: &Arc<dyn LayerResolver>,
        name: &str,
        id: u64,
        layer: &RemoteLayer,
        wait: Option<Duration>,
        handover: Option<Handover>,
    ) -> std::result::Result<(), String> {
        let resolved = match wait {
            Some(wait) => tokio::time::timeout(wait, resolver.resolve(layer))
                .await
                .unwrap_or_else(|_| {
                    Ok(Resolved::Fail(format!(
                        "not resolved within {}s",
                        wait.as_secs()
                    )))
                }),
            None => resolver.resolve(layer).await,
        };
        let digest = layer.layer_digest.clone();
        match (resolved, handover) {
            (Ok(Resolved::Lazy(m)), None) => self
                .run("attach", name, move |s| s.attach(id, &digest, m))
                .await
                .map_err(|e| e.to_string()),
            (Ok(Resolved::Lazy(m)), Some(h)) => self
                .run("resume", name, move |s| s.resume(id, m, h))
                .await
                .map_err(|e| e.to_string()),
            (not_served, handover) => {
                if let Some(h) = handover {
                    drop(h);
                    let _ = self
                        .run("abandon", name, move |s| {
                            s.abandon_connection(id);
                            Ok(())
                        })
                        .await;
                }
                match not_served {
                    Ok(Resolved::NotLazy(why)) | Ok(Resolved::Fail(why)) => Err(why),
                    Err(e) => Err(format!("{e:#}")),
                    Ok(Resolved::Lazy(_)) => Err("resolved twice".into()),
                }
            }
        }
    }

    /// Records that remote snapshot `id`'s layer failed to mount (`why`), logs it, and
    /// makes sure its mount point answers `EIO`.
    async fn layer_failed(
        &self,
        resolver: &Arc<dyn LayerResolver>,
        name: &str,
        id: u64,
        layer: &RemoteLayer,
        why: String,
    ) {
        let attempts = {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            let entry = failed.entry(id).or_insert_with(|| FailedEntry {
                since: Instant::now(),
                status: FailedLayerStatus {
                    snapshot: name.to_string(),
                    mountpoint: self.inner.layer_dir(id).display().to_string(),
                    digest: layer.layer_digest.clone(),
                    image: layer.image_ref.clone(),
                    ..Default::default()
                },
            });
            entry.status.attempts += 1;
            entry.status.reason = why.clone();
            entry.status.attempts
        };
        tracing::error!(snapshot = %name, layer = %layer.layer_digest, image = %layer.image_ref,
            attempts, reason = %why,
            "could not mount remote layer again: its mount point answers EIO and snapshots on it \
             are refused until it mounts; retrying in the background");
        let (resolver, remote, reason) = (resolver.clone(), layer.clone(), why);
        let stood_in = self
            .run("stand-in", name, move |s| {
                s.attach_unavailable(id, &reason, |dir| {
                    resolver
                        .mount_failed(&remote, &reason, dir)
                        .map_err(|e| format!("{e:#}"))
                })
            })
            .await;
        if let Err(e) = stood_in {
            tracing::error!(snapshot = %name, layer = %layer.layer_digest, error = %e,
                "could not mount the failed-layer stand-in: the mount point is an empty directory, \
                 but snapshots on it are still refused");
        }
    }

    /// Retries mounting remote snapshot `id`'s layer with backoff
    /// ([`RESTORE_RETRY_FIRST`] doubling up to [`RESTORE_RETRY_MAX`]) until it mounts or
    /// the snapshot is removed.
    fn spawn_restore(
        &self,
        resolver: Arc<dyn LayerResolver>,
        name: String,
        id: u64,
        layer: RemoteLayer,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = RESTORE_RETRY_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RESTORE_RETRY_MAX);
                let still_there = matches!(this.inner.stat(&name), Ok(s) if s.record.id == id);
                if !still_there {
                    this.forget_failed(id);
                    return;
                }
                match this
                    .try_restore(&resolver, &name, id, &layer, None, None)
                    .await
                {
                    Ok(()) => {
                        let (attempts, secs) = this.forget_failed(id);
                        tracing::info!(snapshot = %name, layer = %layer.layer_digest,
                            failed_attempts = attempts, failing_for_secs = secs,
                            "remote layer mounted again; snapshots on it are served");
                        return;
                    }
                    Err(why) => this.layer_failed(&resolver, &name, id, &layer, why).await,
                }
            }
        });
    }

    /// Drops `id` from the failed layers; returns its attempts and seconds failing.
    fn forget_failed(&self, id: u64) -> (u32, u64) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .remove(&id)
            .map(|e| (e.status.attempts, e.since.elapsed().as_secs()))
            .unwrap_or_default()
    }
}
