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
use crate::metadata::Kind;
use crate::overlay::{OverlaySnapshotter, Snapshot};
use crate::restore::FailedEntry;
use veil_image::resolver::{LayerResolver, Resolved};
use veil_image::status::{FailedLayerStatus, FallbackStatus, StatusReport};

use crate::labels::{RemoteRequest, REMOTE_LABEL, REMOTE_LABEL_VALUE};

/// The gRPC-facing snapshotter.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<OverlaySnapshotter>,
    pub(crate) resolver: Option<Arc<dyn LayerResolver>>,
    fallbacks: Arc<std::sync::Mutex<Vec<FallbackStatus>>>,
    /// Remote layers that could not be mounted again, by snapshot ID.
    pub(crate) failed: Arc<std::sync::Mutex<HashMap<u64, FailedEntry>>>,
}

impl Service {
    /// Serves `inner`; every layer is unpacked by containerd (no lazy layers).
    pub fn new(inner: OverlaySnapshotter) -> Self {
        Self {
            inner: Arc::new(inner),
            resolver: None,
            fallbacks: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// Serves `inner`, serving layers lazily through `resolver` where it can.
    pub fn with_resolver(inner: OverlaySnapshotter, resolver: Arc<dyn LayerResolver>) -> Self {
        Self {
            inner: Arc::new(inner),
            resolver: Some(resolver),
            fallbacks: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// What the daemon serves now (`veil status`).
    pub fn status(&self) -> StatusReport {
        let mut report = StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            root: self.inner.root().display().to_string(),
            ..Default::default()
        };
        if let Ok(all) = self.inner.list() {
            report.snapshots = all.len();
            report.remote_snapshots = all.iter().filter(|s| s.record.remote.is_some()).count();
        }
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
        report
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
        req: RemoteRequest,
        parent: &str,
        mut labels: HashMap<String, String>,
    ) -> Result<bool> {
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
            Err(Error::AlreadyExists(_)) => Ok(true),
            Err(e) => {
                tracing::warn!(layer = %layer.layer_digest, error = %e, "mounting layer failed: containerd unpacks it");
                self.record_fallback(&req, e.to_string());
                Ok(false)
            }
        }
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
        if let Some(req) = RemoteRequest::from_labels(&labels) {
            let target = req.target.clone();
            // containerd's handshake: ALREADY_EXISTS means "the target is there, skip
            // fetching and unpacking this layer".
            let exists = self.inner.stat(&target).is_ok();
            if exists || self.prepare_remote(req, &parent, labels.clone()).await? {
                return Err(Error::AlreadyExists(format!("target snapshot {target:?}")));
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
        let infos: Vec<Result<Info>> = all
            .into_iter()
            .filter(|s| filter.matches(s))
            .map(|s| Ok(to_info(s)))
            .collect();
        Ok(futures::stream::iter(infos))
    }
}
