//! The OCI registry client: resolves image references to manifests and reads blob byte
//! ranges on demand for the lazily mounted layers.
//!
//! - [`reference`](mod@reference) — docker-style image references.
//! - [`client`] — [`RegistryClient`]: resolve (index → platform manifest), whole blobs,
//!   blob sizes; mirrors, retries with backoff, deadlines.
//! - [`blob`] — [`RegistryBlob`], a [`veil_blob::BlobSource`] over HTTP ranges.
//! - `auth`, [`challenge`], [`credentials`] — token and Basic auth, `WWW-Authenticate`,
//!   docker `config.json`; [`credential_store`] — credentials given at run time (a pod's
//!   imagePullSecret), asked first.
//! - [`push`] — blob existence, uploads and manifest pushes (`veil convert`);
//!   [`oci_layout`] — OCI image layouts on disk (`oci:DIR[:TAG]`).
//! - [`hosts`] — containerd `hosts.toml` mirrors and per-host TLS.
//! - [`range`] — the `Range` and `Content-Range` headers, `multipart/byteranges`.
//! - [`manifest`], [`digest`] — manifests, indexes, platforms, digests.
//! - `transport`, [`retry`], [`metrics`], [`options`], [`error`] — the plumbing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), veil_registry::RegistryError> {
//! use veil_registry::{ClientOptions, Reference, RegistryClient};
//! let client = RegistryClient::new(ClientOptions::default())?;
//! let image = client.resolve(&Reference::parse("127.0.0.1:5000/app:v1")?).await?;
//! let layer = &image.manifest.layers[0];
//! let blob = client.blob(&image.reference, layer);
//! let first_kib = blob.read(0..1024.min(layer.size)).await?;
//! println!("{} bytes fetched", client.metrics().bytes_fetched());
//! # let _ = first_kib; Ok(()) }
//! ```

pub(crate) mod auth;
pub mod blob;
pub mod challenge;
pub mod client;
pub mod credential_store;
pub mod credentials;
pub mod digest;
pub mod error;
pub mod hosts;
pub mod manifest;
pub mod metrics;
pub mod oci_layout;
pub mod options;
pub mod push;
pub mod range;
pub mod reference;
pub mod retry;
pub(crate) mod transport;

pub use blob::RegistryBlob;
pub use client::{RawManifest, RegistryClient, ResolvedImage};
pub use credential_store::{CredentialStore, SharedCredentialStore};
pub use credentials::{Credential, DockerConfig};
pub use digest::Digest;
pub use error::{Operation, RegistryError};
pub use manifest::{BlobDescriptor, Manifest, Platform};
pub use metrics::{MetricsSnapshot, RegistryMetrics};
pub use options::{ClientOptions, CredentialsSource};
pub use reference::Reference;
pub use retry::RetryPolicy;
