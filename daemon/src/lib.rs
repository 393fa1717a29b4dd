//! `veil-daemon`: the top of Veil's data path, where configuration becomes objects.
//!
//! - [`config`]: the TOML file and its defaults (the only place config types are
//!   defined);
//! - [`wiring`]: the only place config types are read: the registry client, the caches,
//!   the decryption keys and KEK chain, the image service and the snapshots service;
//! - [`server`]: the `veil-snapshotter` daemon: sockets, signals, systemd readiness;
//! - [`guest_server`]: the `veil-guest` daemon: the CDH front door serving pulls with the
//!   guest puller, recording each in the runtime measurements;
//! - [`cdh_toml`]: the `[image]` keys `veil-guest` takes from CDH's own `cdh.toml`;
//! - [`socket`], [`signals`], [`status_server`]: what every Veil server shares (the
//!   `veil` CLI's `keyprovider serve` too);
//! - [`grpc_unix`] (with [`authority_rewrite`]): gRPC connections on unix sockets that
//!   accept any HTTP/2 `:authority` (a socket path, as grpc-go and grpcio send it);
//! - [`metrics_server`] (with [`metrics_text`]): the Prometheus endpoint of
//!   `[metrics] address`;
//! - [`no_core_dumps`] and [`malloc`]: what every Veil process holding keys or plaintext
//!   (and serving FUSE) calls first;
//! - the error type, [`DaemonError`] (in [`error`]).

pub mod authority_rewrite;
pub mod cdh_toml;
pub mod config;
pub mod cri_config;
pub mod cri_server;
pub mod error;
pub mod grpc_unix;
pub mod guest_server;
pub mod malloc;
pub mod metrics_server;
pub mod metrics_text;
pub mod no_core_dumps;
pub mod server;
pub mod signals;
pub mod socket;
pub mod status_server;
pub mod wiring;

pub use error::DaemonError;
