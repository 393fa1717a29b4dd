//! `veil-snapshotter`: the Veil daemon's library.
//!
//! containerd talks to Veil through its snapshots API (a `proxy_plugins` entry pointing at
//! Veil's unix socket). This crate serves that API: [`service`] turns gRPC requests into
//! calls on [`overlay::OverlaySnapshotter`], which keeps snapshot directories on disk and
//! builds overlay mounts; [`metadata`] persists what snapshots exist in a transactional
//! store; [`server`] runs the socket, signals and systemd readiness; [`config`] reads the
//! TOML configuration.

pub mod config;
pub mod convert;
pub mod encrypted;
pub mod error;
pub mod filters;
pub mod image_mount;
pub mod keyprovider_service;
pub mod keys_cli;
pub mod lazy;
pub mod metadata;
pub mod overlay;
pub mod pull;
pub mod registry;
pub mod remote;
pub mod server;
pub mod service;
pub mod status;
pub mod usage;

pub use error::{Error, Result};
