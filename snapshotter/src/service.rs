//! containerd's snapshots API on top of [`OverlaySnapshotter`].
//!
//! Converts between the `containerd-snapshots` crate's types and ours, runs the blocking
//! filesystem and database work off the async runtime, applies `List` filters and logs
//! every failed request with the error containerd will see. After a restart it mounts the
//! remote layers on record again (`restore.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind as ApiKind, Usage as ApiUsage};

use crate::error::{Error, Result};
use crate::filters::{Fields, Filter};
use crate::handover::HandedLayer;
use crate::identity::conflict;
use crate::metadata::Kind;
use crate::overlay::{OverlaySnapshotter, Snapshot};
use crate::restore::FailedEntry;
use veil_image::resolver::{Authorization, LayerIdentity, LayerResolver, Resolved};
use veil_image::status::{AccessOrder, FailedLayerStatus, FallbackStatus, StatusReport};

use crate::labels::{
    image_layers, RemoteRequest, REMOTE_LABEL, REMOTE_LABEL_VALUE, TARGET_SNAPSHOT_LABEL,
};

/// The gRPC-facing snapshotter.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<OverlaySnapshotter>,
    pub(crate) resolver: Option<Arc<dyn LayerResolver>>,
    fallbacks: Arc<std::sync::Mutex<Vec<FallbackStatus>>>,
    /// Remote layers that could not be mounted again, by snapshot ID.
    pub(crate) failed: Arc<std::sync::Mutex<HashMap<u64, FailedEntry>>>,
    /// Connections handed over by an earlier process, by snapshot ID, until restored.
    pub(crate) handed: Arc<std::sync::Mutex<HashMap<u64, HandedLayer>>>,
}

impl Service {
    /// Serves `inner`; every layer is unpacked by containerd (no lazy layers).
    pub fn new(inner: OverlaySnapshotter) -> Self {
        Self {
            inner: Arc::new(inner),
            resolver: None,
            fallbacks: Arc::default(),
            failed: Arc::default(),
            handed: Arc::default(),
        }
    }

    /// Serves `inner`, serving layers lazily through `resolver` where it can.
    pub fn with_resolver(inner: OverlaySnapshotter, resolver: Arc<dyn LayerResolver>) -> Self {
        Self {
            inner: Arc::new(inner),
            resolver: Some(resolver),
            fallbacks: Arc::default(),
            failed: Arc::default(),
            handed: Arc::default(),
        }
    }

    /// Serves the connections `handed` over by an earlier process (by snapshot ID) again
    /// in [`Self::attach_remote_layers`], instead of mounting those layers afresh.
    pub fn with_handed_layers(self, handed: HashMap<u64, HandedLayer>) -> Self {
        *self.handed.lock().unwrap_or_else(|p| p.into_inner()) = handed;
        self
    }

    /// Leaves every mounted layer mounted as this process exits (with an fd store: the
    /// next process serves the same connections).
    pub fn keep_mounted(&self) {
        self.inner.keep_mounted();
    }

    /// What the daemon serves now (`veil status`).
    pub fn status(&self) -> StatusReport {
        let mut report = StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            root: self.inner.root().display().to_string(),
            ..Default::default()
        };
        let all = self.inner.list().unwrap_or_default();
        report.snapshots = all.len();
        report.remote_snapshots = all.iter().filter(|s| s.record.remote.is_some()).count();
        report.fallbacks = self
            .fallbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(r) = &self.resolver {
            r.fill_status(&mut report);
        }
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        report.failed = failed
            .values()
            .map(|e| FailedLayerStatus {
                failing_for_secs: e.since.elapsed().as_secs(),
                ..e.status.clone()
            })
            .collect();
        report.failed.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
        drop(failed);
        report.images = report.image_view();
        report.containers = crate::containers::containers(&all, &report);
        report
    }

    /// The access order of layer `digest` (`"all"`: every layer): file names, for root
    /// only (`veil status --access-order`).
    pub fn access_orders(&self, digest: &str) -> Vec<AccessOrder> {
        match &self.resolver {
            Some(r) => r.access_orders(digest),
            None => Vec::new(),
        }
    }

    fn record_fallback(&self, req: &RemoteRequest, reason: String) {
        let mut list = self.fallbacks.lock().unwrap_or_else(|p| p.into_inner());
        if !list.iter().any(|f| f.digest == req.layer.layer_digest) {
            list.push(FallbackStatus {
                digest: req.layer.layer_digest.clone(),
                image: req.layer.image_ref.clone(),
                reason,
            });
        }
    }

    /// Tries to serve the layer `req` names lazily as the committed snapshot
    /// `req.target`. `Ok(true)`: done; `Ok(false)`: containerd should unpack it.
    async fn prepare_remote(
        &self,
        mut req: RemoteRequest,
        parent: &str,
        mut labels: HashMap<String, String>,
        identity: Option<LayerIdentity>,
    ) -> Result<bool> {
        // Recorded with the snapshot: another layer claiming its chainID is told apart.
        req.layer.toc_digest = identity.as_ref().and_then(|i| i.toc_digest.clone());
        let Some(resolver) = self.resolver.clone() else {
            return Ok(false);
        };
        let layer = &req.layer;
        let mountable = match resolver.resolve(layer).await {
            Ok(Resolved::Lazy(m)) => m,
            Ok(Resolved::Fail(why)) => {
                tracing::error!(layer = %layer.layer_digest, image = %layer.image_ref, reason = %why, "layer cannot be served, and containerd cannot unpack it");
                self.record_fallback(&req, format!("refused: {why}"));
                return Err(Error::FailedPrecondition(why));
            }
            Ok(Resolved::NotLazy(why)) => {
                tracing::info!(layer = %layer.layer_digest, image = %layer.image_ref, reason = %why, "layer not served lazily: containerd unpacks it");
                self.record_fallback(&req, why);
                return Ok(false);
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(layer = %layer.layer_digest, image = %layer.image_ref, error = %why, "resolving layer failed: containerd unpacks it");
                self.record_fallback(&req, why);
                return Ok(false);
            }
        };
        labels.insert(REMOTE_LABEL.into(), REMOTE_LABEL_VALUE.into());
        let (target, parent, remote) = (req.target.clone(), parent.to_string(), req.layer.clone());
        match self
            .run("prepare-remote", &req.target, move |s| {
                s.create_remote(&target, &parent, labels, remote, mountable)
            })
            .await
        {
            Ok(()) => {
                tracing::info!(layer = %layer.layer_digest, snapshot = %req.target, "layer served lazily");
                Ok(true)
            }
            // Made meanwhile by a concurrent request: shared only if it is the same content.
            Err(Error::AlreadyExists(_)) => {
                let existing = self.inner.stat(&req.target)?;
                let made_for = existing.record.remote.as_ref();
                match identity.and_then(|i| conflict(&req.target, made_for, &i, &layer.image_ref)) {
                    None => Ok(true),
                    Some(clash) => Err(Error::FailedPrecondition(clash.to_string())),
                }
            }
            Err(e) => {
                tracing::warn!(layer = %layer.layer_digest, error = %e, "mounting layer failed: containerd unpacks it");
                self.record_fallback(&req, e.to_string());
                Ok(false)
            }
        }
    }

    /// Checks that the node may use the layer `req` names now
    /// ([`LayerResolver::authorize`]); `Ok(None)` without a resolver. Denied: the same
    /// FailedPrecondition as a layer whose key cannot be unwrapped when it is first served.
    /// The check itself failing (registry unreachable, layer not in its manifest) is a
    /// FailedPrecondition too when `fail_closed` (a snapshot would be handed out on the
    /// strength of it), else `Ok(None)`: serving the layer finds the same problem.
    async fn authorize(
        &self,
        req: &RemoteRequest,
        fail_closed: bool,
    ) -> Result<Option<LayerIdentity>> {
        let Some(resolver) = self.resolver.clone() else {
            return Ok(None);
        };
        let layer = &req.layer;
        match resolver.authorize(layer).await {
            Ok(Authorization::Granted(identity)) => Ok(Some(identity)),
            Ok(Authorization::Denied(why)) => {
                tracing::error!(layer = %layer.layer_digest, image = %layer.image_ref, snapshot = %req.target, reason = %why, "layer cannot be served: this node may not use it now");
                self.record_fallback(req, format!("refused: {why}"));
                Err(Error::FailedPrecondition(why))
            }
            Err(e) if fail_closed => {
                let why = format!(
                    "layer {} of {}: cannot check that this node may use it: {e:#}",
                    layer.layer_digest, layer.image_ref
                );
                tracing::error!(snapshot = %req.target, reason = %why, "refused");
                Err(Error::FailedPrecondition(why))
            }
            Err(e) => {
                tracing::warn!(layer = %layer.layer_digest, error = %format!("{e:#}"), "checking the layer failed");
                Ok(None)
            }
        }
    }

    /// A Prepare with remote-snapshot labels whose target snapshot exists: answers
    /// ALREADY_EXISTS only when the node may use the layer now and the snapshot was made
    /// for the same content. `Ok(())`: not shared, containerd unpacks the layer itself
    /// (it checks the diff_id) into an ordinary active snapshot.
    async fn prepare_existing(&self, req: &RemoteRequest, existing: Snapshot) -> Result<()> {
        let Some(identity) = self.authorize(req, true).await? else {
            return Err(Error::AlreadyExists(format!(
                "target snapshot {:?}",
                req.target
            )));
        };
        let Some(clash) = conflict(
            &req.target,
            existing.record.remote.as_ref(),
            &identity,
            &req.layer.image_ref,
        ) else {
            return Err(Error::AlreadyExists(format!(
                "target snapshot {:?}",
                req.target
            )));
        };
        if identity.encrypted {
            // containerd cannot unpack an encrypted layer: refuse, naming the conflict.
            tracing::error!(snapshot = %req.target, reason = %clash, "layer identity conflict: refused");
            self.record_fallback(req, format!("refused: {clash}"));
            return Err(Error::FailedPrecondition(clash.to_string()));
        }
        tracing::warn!(snapshot = %req.target, reason = %clash, "layer identity conflict: containerd unpacks the requested layer");
        self.record_fallback(req, clash.to_string());
        Ok(())
    }

    pub(crate) async fn run<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&OverlaySnapshotter) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || f(&inner))
            .await
            .unwrap_or_else(|e| Err(Error::Store(format!("{op} task failed: {e}"))));
        match &result {
            Ok(_) => tracing::debug!(op, key, "ok"),
            Err(e) => tracing::warn!(op, key, error = %e, "request failed"),
        }
        result
    }
}

fn to_info(s: Snapshot) -> Info {
    Info {
        kind: match s.record.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: s.key,
        parent: s.record.parent.clone(),
        created_at: s.record.created(),
        updated_at: s.record.updated(),
        labels: s.record.labels.into_iter().collect(),
    }
}

impl Fields for Snapshot {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "kind" => Some(self.record.kind.as_str().to_string()),
            "name" => Some(self.key.clone()),
            "parent" => Some(self.record.parent.clone()),
            "labels" => self.record.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info> {
        let k = key.clone();
        self.run("stat", &key, move |s| s.stat(&k))
            .await
            .map(to_info)
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        let key = info.name.clone();
        self.run("update", &key, move |s| {
            s.update(&info.name, &info.labels, &fieldpaths.unwrap_or_default())
        })
        .await
        .map(to_info)
    }

    async fn usage(&self, key: String) -> Result<ApiUsage> {
        let k = key.clone();
        let u = self.run("usage", &key, move |s| s.usage(&k)).await?;
        Ok(ApiUsage {
            inodes: u.inodes,
            size: u.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        let k = key.clone();
        self.run("mounts", &key, move |s| s.mounts(&k)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if let Some(probe) = RemoteRequest::probe_from_labels(&labels) {
            // An authorization probe: refused, or an ordinary active snapshot.
            self.authorize(&probe, true).await?;
        } else if let Some(req) = RemoteRequest::from_labels(&labels) {
            let target = req.target.clone();
            // containerd's handshake: ALREADY_EXISTS means "the target is there, skip
            // fetching and unpacking this layer". Said only after the layer's key and
            // identity are checked, whether or not the target exists.
            match self.inner.stat(&target) {
                Ok(existing) => self.prepare_existing(&req, existing).await?,
                Err(_) => {
                    // The layers above are prepared next, one by one: start on them now.
                    if let Some(resolver) = &self.resolver {
                        resolver.look_ahead(&req.layer, &image_layers(&labels));
                    }
                    let identity = self.authorize(&req, false).await?;
                    if self
                        .prepare_remote(req, &parent, labels.clone(), identity)
                        .await?
                    {
                        return Err(Error::AlreadyExists(format!("target snapshot {target:?}")));
                    }
                }
            }
        }
        let k = key.clone();
        self.run("prepare", &key, move |s| {
            s.create(Kind::Active, &k, &parent, labels)
        })
        .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let k = key.clone();
        self.run("view", &key, move |s| {
            s.create(Kind::View, &k, &parent, labels)
        })
        .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let k = key.clone();
        self.run("commit", &key, move |s| s.commit(&name, &k, labels))
            .await
    }

    async fn remove(&self, key: String) -> Result<()> {
        let k = key.clone();
        self.run("remove", &key, move |s| s.remove(&k)).await
    }

    async fn clear(&self) -> Result<()> {
        let removed = self.run("cleanup", "", |s| s.cleanup()).await?;
        tracing::info!(removed, "cleanup removed unreferenced snapshot directories");
        Ok(())
    }

    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream> {
        let filter = Filter::parse_all(&filters)?;
        let all = self.run("list", "", |s| s.list()).await?;
        let mut found: Vec<Snapshot> = all.into_iter().filter(|s| filter.matches(s)).collect();
        // After ALREADY_EXISTS, containerd takes the first committed snapshot whose
        // snapshot.ref label is the target: that must be the one Veil checked and named
        // after the target, not another namespace's snapshot carrying the same label.
        found.sort_by_key(|s| s.record.labels.get(TARGET_SNAPSHOT_LABEL) != Some(&s.key));
        let infos: Vec<Result<Info>> = found.into_iter().map(|s| Ok(to_info(s))).collect();
        Ok(futures::stream::iter(infos))
    }
}
