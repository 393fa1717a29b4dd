//! `veil-image`: the image/layer service every front-end calls.
//!
//! containerd's snapshots API (`veil-snapshotter`), `veil mount` and, next, the guest's
//! image pulls all ask the same questions: which layer is this, can it be served lazily,
//! mount it, what is being served. This crate answers them on top of the registry
//! client, the layer formats, the layer cipher and the FUSE filesystem:
//!
//! - [`resolver`]: the seam front-ends see: [`resolver::RemoteLayer`] (which layer of
//!   which image), [`resolver::LayerResolver`] (resolve it), [`resolver::Resolved`]
//!   (lazy, not lazy, or refused), [`resolver::MountableLayer`] and
//!   [`resolver::LiveMount`];
//! - [`layers`]: [`layers::LazyLayers`], the resolver: manifests, lazy and streamed
//!   layers, prefetch, background fetch, encrypted layers through
//!   [`veil_keyprovider::layer::Decryption`];
//! - [`image_mount`]: a whole image's root filesystem at a directory (`veil mount`);
//! - [`status`]: the status report model (`veil status`);
//! - [`verify`]: the whole-layer checks once all of a lazy layer's bytes are there
//!   (ocicrypt HMAC, `diff_id` against [`image_config`]'s `rootfs.diff_ids`);
//! - the error type, [`ImageError`] (in [`error`]).

pub mod error;
mod identity;
pub mod image_config;
pub mod image_mount;
pub mod layers;
pub mod resolver;
pub mod status;
pub mod verify;

pub use error::ImageError;
