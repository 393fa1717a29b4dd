//! The parts of containerd's gRPC API `veil pull` uses: leases, the content store, the
//! snapshots service (through containerd, so its metadata records the snapshots), the
//! diff service and image records. Every request carries the namespace
//! (`containerd-namespace`) and, once one is taken, the lease (`containerd-lease`) that
//! keeps what the pull creates from being garbage collected before the image record
//! references it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient, AddResourceRequest, ApplyRequest, CreateImageRequest,
    CreateRequest as CreateLease, DeleteRequest as DeleteLease, Image, Info as ContentInfo,
    InfoRequest, Resource as LeaseResource, UpdateImageRequest, UpdateRequest as UpdateContent,
    WriteAction, WriteContentRequest,
};
use containerd_client::types::{Descriptor, Mount};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How much one content write message carries (containerd accepts up to 16 MiB).
pub const WRITE_CHUNK: usize = 1 << 20;
/// How long the pull's lease lives if `veil pull` dies before deleting it.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// A connection to containerd in one namespace.
pub struct Containerd {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

/// What a Prepare of a layer snapshot answered.
pub enum Prepared {
    /// ALREADY_EXISTS: the snapshotter has the target snapshot (it served it remotely).
    Exists,
    /// An active snapshot with these mounts: the layer has to be unpacked into it.
    Mounts(Vec<Mount>),
}

/// A snapshot's kind and labels (`Stat`).
pub struct SnapshotInfo {
    /// The snapshot's labels.
    pub labels: HashMap<String, String>,
}

impl Containerd {
    /// Connects to containerd's socket `address`; requests go to `namespace`.
    pub async fn connect(address: &Path, namespace: &str) -> anyhow::Result<Self> {
        if namespace.is_empty() {
            bail!("the containerd namespace must not be empty");
        }
        MetadataValue::try_from(namespace)
            .map_err(|_| anyhow::anyhow!("invalid containerd namespace {namespace:?}"))?;
        if !address.exists() {
            bail!(
                "containerd's socket {} does not exist (is containerd running? use --address)",
                address.display()
            );
        }
        let channel = containerd_client::connect(address)
            .await
            .with_context(|| format!("connecting to containerd at {}", address.display()))?;
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
            lease: None,
        })
    }

    /// `msg` with the namespace and lease headers.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        if let Ok(ns) = MetadataValue::try_from(self.namespace.as_str()) {
            md.insert("containerd-namespace", ns);
        }
        if let Some(lease) = &self.lease {
            if let Ok(v) = MetadataValue::try_from(lease.as_str()) {
                md.insert("containerd-lease", v);
            }
        }
        req
    }

    /// Takes a lease (expiring after an hour) that holds everything created from now on.
    pub async fn begin_lease(&mut self, id: &str) -> anyhow::Result<()> {
        let expire = time::OffsetDateTime::from(SystemTime::now() + LEASE_EXPIRY)
            .format(&time::format_description::well_known::Rfc3339)
            .context("formatting the lease expiry")?;
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateLease {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(|s| status_error(s, "creating a lease"))?;
        self.lease = Some(id.to_string());
        Ok(())
    }

    /// Adds snapshot `key` of `snapshotter` to the pull's lease (it need not exist yet), so
    /// containerd's garbage collector keeps a snapshot that is already there until the
    /// image record references it: without this, a snapshot left by an earlier failed
    /// pull can be collected between our lookup and the Prepare of the layer above it.
    pub async fn lease_snapshot(&self, snapshotter: &str, key: &str) -> anyhow::Result<()> {
        let Some(id) = self.lease.clone() else {
            return Ok(());
        };
        LeasesClient::new(self.channel.clone())
            .add_resource(self.req(AddResourceRequest {
                id,
                resource: Some(LeaseResource {
                    id: key.to_string(),
                    r#type: format!("snapshots/{snapshotter}"),
                }),
            }))
            .await
            .map_err(|s| status_error(s, &format!("adding snapshot {key} to the pull's lease")))?;
        Ok(())
    }

    /// Deletes the lease taken by [`begin_lease`](Self::begin_lease); what it held stays
    /// only if something else (the image record) references it.
    pub async fn end_lease(&mut self) -> anyhow::Result<()> {
        let Some(id) = self.lease.take() else {
            return Ok(());
        };
        LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteLease { id, sync: false }))
            .await
            .map_err(|s| status_error(s, "deleting the pull's lease"))?;
        Ok(())
    }

    /// Whether the content store has blob `digest`.
    pub async fn content_exists(&self, digest: &str) -> anyhow::Result<bool> {
        match ContentClient::new(self.channel.clone())
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status_error(s, &format!("looking up content {digest}"))),
        }
    }

    /// Writes `data` (whose digest is `digest`) to the content store with `labels`; when
    /// the store already has it, only sets the labels.
    pub async fn write_content(
        &self,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let chunks = data.chunks(WRITE_CHUNK).map(|c| Ok(c.to_vec()));
        self.write_content_stream(
            digest,
            data.len() as u64,
            futures::stream::iter(chunks),
            labels,
        )
        .await
    }

    /// Writes a blob of `size` bytes coming as `chunks` to the content store, committed
    /// under `digest` (containerd checks size and digest) with `labels`; when the store
    /// already has it, only sets the labels.
    pub async fn write_content_stream<S>(
        &self,
        digest: &str,
        size: u64,
        mut chunks: S,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()>
    where
        S: futures::Stream<Item = anyhow::Result<Vec<u8>>> + Unpin,
    {
        let what = format!("writing {digest} to containerd's content store");
        let total = i64::try_from(size).context("blob size")?;
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let first = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: format!("veil-pull-{digest}"),
            total,
            expected: digest.to_string(),
            ..Default::default()
        };
        tx.send(first).await.ok();
        let mut responses = match ContentClient::new(self.channel.clone())
            .write(self.req(ReceiverStream::new(rx)))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => {
                return self.label_content(digest, labels).await
            }
            Err(s) => return Err(status_error(s, &what)),
        };
        // The answer to Stat; a write left over from an earlier try is restarted at 0.
        match responses.next().await {
            Some(Ok(_)) => {}
            Some(Err(s)) if s.code() == Code::AlreadyExists => {
                return self.label_content(digest, labels).await
            }
            Some(Err(s)) => return Err(status_error(s, &what)),
            None => bail!("{what}: containerd closed the write stream"),
        }
        let mut offset = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.with_context(|| what.clone())?;
            let len = chunk.len() as u64;
            let msg = WriteContentRequest {
                action: WriteAction::Write as i32,
                offset: offset as i64,
                data: chunk,
                ..Default::default()
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            match responses.next().await {
                Some(Ok(r)) if r.offset as u64 == offset + len => offset += len,
                Some(Ok(r)) => bail!(
                    "{what}: containerd is at offset {} after a write that should end at {}",
                    r.offset,
                    offset + len
                ),
                Some(Err(s)) => return Err(status_error(s, &what)),
                None => bail!("{what}: containerd closed the write stream"),
            }
        }
        if offset != size {
            bail!("{what}: the blob has {offset} bytes, expected {size}");
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: offset as i64,
            total,
            expected: digest.to_string(),
            labels,
            ..Default::default()
        };
        tx.send(commit).await.ok();
        match responses.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(s)) => Err(status_error(s, &what)),
            None => bail!("{what}: containerd closed the write stream before the commit"),
        }
    }

    /// Sets `labels` on blob `digest` (leaving its other labels).
    pub async fn label_content(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        ContentClient::new(self.channel.clone())
            .update(self.req(UpdateContent {
                info: Some(ContentInfo {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| status_error(s, &format!("labelling content {digest}")))?;
        Ok(())
    }

    /// The snapshot `key` in `snapshotter`, or `None` when there is none.
    pub async fn stat_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> anyhow::Result<Option<SnapshotInfo>> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(StatSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(Some(SnapshotInfo {
                labels: r.into_inner().info.map(|i| i.labels).unwrap_or_default(),
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_error(
                s,
                &format!("looking up snapshot {key} in snapshotter {snapshotter:?}"),
            )),
        }
    }

    /// Prepares the active snapshot `key` on `parent` with `labels`.
    pub async fn prepare(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<Prepared> {
        match SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels,
            }))
            .await
        {
            Ok(r) => Ok(Prepared::Mounts(r.into_inner().mounts)),
            Err(s) if s.code() == Code::AlreadyExists => Ok(Prepared::Exists),
            Err(s) => Err(status_error(
                s,
                &format!("preparing snapshot {key:?} in snapshotter {snapshotter:?}"),
            )),
        }
    }

    /// Commits the active snapshot `key` as `name`.
    pub async fn commit(&self, snapshotter: &str, name: &str, key: &str) -> anyhow::Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .commit(self.req(CommitSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                name: name.to_string(),
                key: key.to_string(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|s| status_error(s, &format!("committing snapshot {name}")))?;
        Ok(())
    }

    /// Removes the snapshot `key`.
    pub async fn remove(&self, snapshotter: &str, key: &str) -> anyhow::Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| status_error(s, &format!("removing snapshot {key:?}")))?;
        Ok(())
    }

    /// Applies the layer blob `layer` (in the content store) onto `mounts` with
    /// containerd's diff service; returns the digest of the uncompressed layer applied.
    pub async fn apply(&self, layer: Descriptor, mounts: Vec<Mount>) -> anyhow::Result<String> {
        let digest = layer.digest.clone();
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.req(ApplyRequest {
                diff: Some(layer),
                mounts,
                payloads: HashMap::new(),
            }))
            .await
            .map_err(|s| status_error(s, &format!("applying layer {digest}")))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        Ok(applied)
    }

    /// Creates the image record `name` pointing at `target`, or points the existing one
    /// there.
    pub async fn put_image(&self, name: &str, target: Descriptor) -> anyhow::Result<()> {
        let image = Image {
            name: name.to_string(),
            target: Some(target),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .create(self.req(CreateImageRequest {
                image: Some(image.clone()),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(self.req(UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                    }))
                    .await
                    .map_err(|s| status_error(s, &format!("updating image {name}")))?;
                Ok(())
            }
            Err(s) => Err(status_error(s, &format!("creating image {name}"))),
        }
    }
}

/// A gRPC status as an error saying what was being done.
fn status_error(status: Status, doing: &str) -> anyhow::Error {
    let code = status.code();
    let msg = status.message();
    if code == Code::Unavailable || code == Code::Unknown && msg.contains("transport") {
        anyhow::anyhow!("{doing}: containerd is unavailable: {msg}")
    } else {
        anyhow::anyhow!("{doing}: {msg} ({code:?})")
    }
}
