//! `veil-cdh`: Veil on the Confidential Data Hub's ttrpc socket inside a CoCo guest
//! (PROTOCOLS.md §8).
//!
//! - [`frame`]: the ttrpc frame codec (10-byte header, bounded payload);
//! - [`proto`]: the prost messages Veil decodes (`ttrpc.Request/Response`,
//!   `google.rpc.Status`, CDH's `ImagePull*` and `GetResource*`, the attestation agent's
//!   `ExtendRuntimeMeasurement*`);
//! - [`front`]: the front door: serves `api.ImagePullService/PullImage` through a
//!   [`front::PullHandler`] and forwards every other frame to the real CDH unchanged;
//! - [`upstream`]: one client connection's forwarding link to the real CDH;
//! - [`status`]: response frames (success, error status, CDH's error prefix);
//! - [`client`]: a minimal unary ttrpc client on a unix socket;
//! - [`kek`]: a KEK source over CDH's `GetResourceService/GetResource`;
//! - [`measure`]: recording a pulled image in the TEE's runtime measurements through the
//!   attestation agent (`ExtendRuntimeMeasurement`), as CDH does after each pull.
//!
//! This crate knows nothing about pulling: the pull itself is a [`front::PullHandler`]
//! given by the daemon.

pub mod client;
pub mod frame;
pub mod front;
pub mod kek;
pub mod measure;
pub mod proto;
pub mod status;
pub mod upstream;
