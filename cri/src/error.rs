//! Errors of the CRI proxy: bad credentials in a `PullImage`, a credential provider that
//! failed or answered nonsense, containerd's CRI socket out of reach.

use std::path::PathBuf;

/// What went wrong in the CRI proxy. Messages never hold a credential.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The image reference of a `PullImage` could not be parsed.
    #[error("image reference {reference:?}: {reason}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// The `AuthConfig` of a `PullImage` could not be used.
    #[error("the pull credentials for {image} are unusable: {reason}")]
    AuthConfig {
        /// The image they came with.
        image: String,
        /// Why (never the secret itself).
        reason: String,
    },
    /// The credential provider could not be run or did not answer in time.
    #[error("credential provider {}: {reason}", command.display())]
    ProviderRun {
        /// The command.
        command: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The credential provider's answer was not a usable `CredentialProviderResponse`.
    #[error("credential provider {} answered badly for {image}: {reason}", command.display())]
    ProviderAnswer {
        /// The command.
        command: PathBuf,
        /// The image asked for.
        image: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// containerd's CRI socket could not be reached.
    #[error("connecting to containerd's CRI socket {}: {reason}", socket.display())]
    Upstream {
        /// The socket.
        socket: PathBuf,
        /// The transport error.
        reason: String,
    },
}
