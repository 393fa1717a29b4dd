//! Veil's CRI image-service proxy: kubelet's `--image-service-endpoint` points at Veil,
//! which forwards every `runtime.v1.ImageService` call to containerd's CRI socket and keeps
//! the credentials each `PullImage` carried (a pod's imagePullSecret), so that the lazy
//! fetches of that image's layers, which containerd's CRI plugin never shows a remote
//! snapshotter, can authenticate. A kubelet-style credential provider (an exec hook) can
//! answer for images pulled without credentials.
//!
//! - [`auth_config`] — a CRI `AuthConfig` as a registry [`Credential`](veil_registry::Credential).
//! - [`pod_credentials`] — [`PodCredentials`], the in-memory, expiring, zeroized store the
//!   registry client asks ([`veil_registry::CredentialStore`]).
//! - [`credential_provider`] — the exec hook (kubelet's `CredentialProviderRequest` /
//!   `CredentialProviderResponse` JSON).
//! - [`image_proxy`] — [`ImageProxy`], the forwarding `ImageService` server.
//! - [`error`] — [`CriError`].

pub mod auth_config;
pub mod credential_provider;
pub mod error;
pub mod image_proxy;
pub mod pod_credentials;

pub use credential_provider::CredentialProvider;
pub use error::CriError;
pub use image_proxy::ImageProxy;
pub use pod_credentials::{PodCredentials, DEFAULT_CREDENTIAL_LIFETIME};
