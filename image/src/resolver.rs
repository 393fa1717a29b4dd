//! The seam every front-end sees: which layer of which image ([`RemoteLayer`]), resolve
//! it ([`LayerResolver`]), what resolving found ([`Resolved`]), mount it
//! ([`MountableLayer`], [`LiveMount`]).
//!
//! containerd's snapshots API asks for a layer by the labels of a Prepare, `veil mount`
//! and the guest's image pulls by an image's manifest; all of them hand a [`RemoteLayer`]
//! to a [`LayerResolver`] and mount what it returns. The front-ends know only these
//! traits; the registry client and the FUSE filesystem behind them live below.

use std::os::fd::OwnedFd;
use std::path::Path;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::status::{AccessOrder, StatusReport};

pub use veil_fusefs::carry::{entry_name, parse_entry_name, CarriedFile, PromotedKeeper};
pub use veil_fusefs::kept_entries::{EntryStore, KeptEntries};

/// Which layer of which image a remote snapshot serves; recorded with the snapshot so a
/// restarted daemon can mount it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// Image reference (`host/repo:tag` or `host/repo@digest`).
    pub image_ref: String,
    /// Digest of the layer blob.
    pub layer_digest: String,
    /// Digest of the manifest that lists the layer, when known.
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// The TOC digest the layer was authorized with ([`LayerIdentity::toc_digest`]),
    /// recorded with a snapshot so that another layer claiming the same chainID can be
    /// told apart; `None` in a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toc_digest: Option<String>,
}

/// A live mount's connection, as another process needs it to serve the mount on
/// ([`MountableLayer::resume`]): the `/dev/fuse` fd and what the connection was set up
/// with (opaque to front-ends: store it with the fd, give both back).
#[derive(Debug)]
pub struct Handover {
    /// The connection's `/dev/fuse` fd (a copy).
    pub fd: OwnedFd,
    /// What else resuming needs, as text.
    pub state: String,
    /// The promoted files kept beside the connection ([`LiveMount::keep_promoted`]),
    /// unchecked: resuming checks each and serves those that pass.
    pub carried: Vec<CarriedFile>,
}

/// A mounted layer filesystem. Dropping it unmounts.
pub trait LiveMount: Send {
    /// Why the layer must no longer be used (it failed a whole-layer check: its reads
    /// fail `EIO`), if it must not.
    fn unhealthy(&self) -> Option<String> {
        None
    }

    /// A copy of what another process needs to serve this mount on after this one exits;
    /// `None` when it cannot be handed over (the `EIO` stand-in), Err when copying the fd
    /// failed.
    fn handover(&self) -> Option<Result<Handover, ImageError>> {
        None
    }

    /// Lets go of the mount without unmounting it (this process is exiting and another
    /// will resume it).
    fn keep_mounted(self: Box<Self>);

    /// Has `keeper` keep the files the mount promotes to FUSE passthrough beside its
    /// connection (call once the connection is kept, and again on a mount resumed on a
    /// connection still kept, so what it promotes is carried over the next restart): with
    /// `PromoteOptions::keep_for_restart` nothing is promoted before. The default (a
    /// mount that promotes nothing) does nothing.
    fn keep_promoted(&self, _keeper: std::sync::Arc<dyn PromotedKeeper>) {}
}

/// A layer that has been resolved and can be mounted.
pub trait MountableLayer: Send {
    /// Mounts the layer's filesystem at `dir` (an empty directory).
    fn mount(self: Box<Self>, dir: &Path) -> Result<Box<dyn LiveMount>, ImageError>;

    /// Serves the live mount at `dir` that an earlier process made for the same layer
    /// and handed over, instead of mounting again.
    fn resume(
        self: Box<Self>,
        dir: &Path,
        handover: Handover,
    ) -> Result<Box<dyn LiveMount>, ImageError>;
}

/// What resolving a layer found.
pub enum Resolved {
    /// The layer can be served lazily.
    Lazy(Box<dyn MountableLayer>),
    /// It cannot (with the reason, for the log); containerd should unpack it.
    NotLazy(String),
    /// It cannot, and containerd cannot unpack it either (an encrypted layer whose key
    /// Veil cannot unwrap): Prepare fails with this reason.
    Fail(String),
}

/// What a layer's content is, as its manifest (and, for an encrypted layer, its unwrapped
/// private options) say: two layers with the same chainID but another identity are
/// different content claiming the same diff_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIdentity {
    /// Digest of the layer blob (compressed, ciphertext when encrypted).
    pub layer_digest: String,
    /// The TOC digest the manifest or the sealed private options vouch for, when any.
    pub toc_digest: Option<String>,
    /// Whether the layer is encrypted.
    pub encrypted: bool,
}

/// Whether the node may use a layer now, checked before any snapshot of it is handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// It may: the layer is not encrypted, or its key was unwrapped just now.
    Granted(LayerIdentity),
    /// It may not: why (names the layer, its recipients and the keys tried).
    Denied(String),
}

/// Finds a layer and prepares it for lazy serving.
pub trait LayerResolver: Send + Sync {
    /// Checks that the node may use `layer` now: finds its descriptor in the manifest
    /// and, when it is encrypted, unwraps its key (nothing of the blob is read). Called on
    /// every request for the layer, whether or not a snapshot of it exists.
    fn authorize<'a>(
        &'a self,
        layer: &'a RemoteLayer,
    ) -> BoxFuture<'a, Result<Authorization, ImageError>>;

    /// Resolves `layer`: fetches what is needed to index it (manifest, TOC).
    fn resolve<'a>(&'a self, layer: &'a RemoteLayer)
        -> BoxFuture<'a, Result<Resolved, ImageError>>;

    /// Starts, in the background, what resolving the layers `above` (blob digests of
    /// `layer`'s image, as the Prepare of `layer` names them) will need first, so that
    /// their own Prepares, which containerd sends one after another, find it done. Only
    /// bytes are fetched ahead: each layer's resolution still authenticates everything
    /// it uses. The default does nothing.
    fn look_ahead(&self, _layer: &RemoteLayer, _above: &[String]) {}

    /// Mounts at `dir` the stand-in for `layer`, which could not be mounted because of
    /// `reason`: every request on it answers `EIO` (never an empty directory) until it is
    /// dropped and the real layer mounted in its place.
    fn mount_failed(
        &self,
        layer: &RemoteLayer,
        reason: &str,
        dir: &Path,
    ) -> Result<Box<dyn LiveMount>, ImageError>;

    /// Adds what the resolver knows (layers served, bytes fetched, cache use) to a status
    /// report.
    fn fill_status(&self, _report: &mut StatusReport) {}

    /// The access order of layer `digest` (`"all"`: of every layer) as far as it has been
    /// recorded: file names, plaintext of an encrypted layer (root only, never logged).
    fn access_orders(&self, _digest: &str) -> Vec<AccessOrder> {
        Vec::new()
    }
}
