//! `veil-snapshotter`: containerd's snapshots API, the front-end of confidential-VM nodes.
//!
//! containerd talks to Veil through its snapshots API (a `proxy_plugins` entry pointing at
//! Veil's unix socket). This crate serves that API: [`service`] turns gRPC requests into
//! calls on [`overlay::OverlaySnapshotter`], which keeps snapshot directories on disk and
//! builds overlay mounts; [`metadata`] persists what snapshots exist in a transactional
//! store; [`identity`] decides whether an existing lazily served snapshot may answer for
//! another request's layer; [`labels`] reads the remote-snapshot labels of a Prepare and
//! hands the layer to the image service ([`veil_image`]); [`restore`] mounts remote layers
//! again after a restart (an `EIO` stand-in and background retries for one that fails);
//! [`fdstore`] keeps layers' FUSE connections alive across restarts (a supervisor holding
//! their fds) and [`handover`] is what is stored with each; [`filters`] and [`usage`] are containerd's
//! filter language and disk usage. Sockets, signals and configuration are the daemon's
//! (`veil-daemon`).

pub mod containers;
pub mod error;
pub mod fdstore;
pub mod filters;
pub mod handover;
pub mod identity;
pub mod labels;
pub mod metadata;
pub mod overlay;
pub mod restore;
pub mod service;
pub mod usage;

pub use error::{Error, Result};
