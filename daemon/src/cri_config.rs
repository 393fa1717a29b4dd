//! `[cri]`: Veil's CRI image-service proxy (kubelet `--image-service-endpoint` → Veil →
//! containerd), which keeps each pod's pull credentials (imagePullSecrets) for the lazy
//! fetches of its image, and the kubelet-style credential provider it may ask.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default socket of containerd's CRI services (its gRPC socket).
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// `[cri]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    /// Socket the proxy serves `runtime.v1.ImageService` on (kubelet's
    /// `--image-service-endpoint unix://PATH`); `None`: no proxy.
    pub image_service_socket: Option<PathBuf>,
    /// containerd's socket the calls are forwarded to.
    pub containerd_socket: PathBuf,
    /// Seconds a pod's credentials are used after the `PullImage` that carried them.
    pub credential_lifetime_seconds: u64,
    /// A kubelet-style credential provider asked for images pulled without credentials
    /// (`CredentialProviderRequest` on stdin, `CredentialProviderResponse` on stdout).
    pub credential_provider: Option<PathBuf>,
    /// Its arguments.
    pub credential_provider_args: Vec<String>,
}

impl Default for CriConfig {
    fn default() -> Self {
        Self {
            image_service_socket: None,
            containerd_socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            credential_lifetime_seconds: veil_cri::DEFAULT_CREDENTIAL_LIFETIME.as_secs(),
            credential_provider: None,
            credential_provider_args: Vec::new(),
        }
    }
}
