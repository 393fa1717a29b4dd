//! [`GuestError`]: why a guest pull failed. Every message names the image and, where
//! one is to blame, the layer, the path or the policy scope, and says why; CDH's front
//! door sends it to kata-agent as the ttrpc error text.

use std::path::PathBuf;

/// Why a guest pull (or setting up the puller) failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The request itself is wrong: a reference that does not parse, a relative bundle
    /// path.
    #[error("pulling {image}: {reason}")]
    BadRequest {
        /// The image as requested.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The bundle directory cannot take the image: missing, not a directory, a `rootfs`
    /// already mounted, a `config.json` already there, or a pull into it under way.
    #[error("pulling {image} into {}: {reason}", bundle.display())]
    Bundle {
        /// The image as requested.
        image: String,
        /// The bundle path.
        bundle: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry does not have the image (or the tag, or the repository).
    #[error("pulling {image}: no such image: {cause}")]
    UnknownImage {
        /// The image as requested.
        image: String,
        /// The registry's answer.
        cause: String,
    },
    /// The registry could not be reached or failed.
    #[error("pulling {image}: the registry failed: {cause}")]
    Registry {
        /// The image as requested.
        image: String,
        /// The registry client's error.
        cause: String,
    },
    /// The image security policy rejects the image.
    #[error("pulling {image}: the image security policy {} rejects it (scope {scope:?}: {reason})", policy.display())]
    PolicyRejected {
        /// The image as requested.
        image: String,
        /// The policy file.
        policy: PathBuf,
        /// The policy scope that decided (`""` for the transport default, `default` for
        /// the global default).
        scope: String,
        /// Why: `reject`, or a requirement Veil cannot check.
        reason: String,
    },
    /// The image security policy file cannot be used: the pull is refused, never
    /// accepted by default.
    #[error("pulling {image}: the image security policy {} cannot be used: {reason}", policy.display())]
    PolicyInvalid {
        /// The image as requested.
        image: String,
        /// The policy file.
        policy: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An encrypted layer's key cannot be had.
    #[error("pulling {image}: layer {layer} cannot be decrypted: {reason}")]
    KeyMissing {
        /// The image as requested.
        image: String,
        /// The layer digest.
        layer: String,
        /// Why (the recipients, the keys tried, the KEK sources' answers: names the kid).
        reason: String,
    },
    /// A layer cannot be served.
    #[error("pulling {image}: layer {layer}: {reason}")]
    Layer {
        /// The image as requested.
        image: String,
        /// The layer digest.
        layer: String,
        /// Why.
        reason: String,
    },
    /// The image's config cannot be turned into a runtime spec.
    #[error("pulling {image}: the image config: {reason}")]
    ImageConfig {
        /// The image as requested.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A file system or mount operation failed.
    #[error("pulling {image}: {what}: {cause}")]
    Io {
        /// The image as requested.
        image: String,
        /// What was being done.
        what: String,
        /// The system's error.
        cause: std::io::Error,
    },
    /// The puller's own setup is wrong (work directory, options that do not fit the
    /// image service).
    #[error("guest puller: {0}")]
    Setup(String),
    /// The puller was shut down.
    #[error("pulling {image}: the guest puller is shutting down")]
    ShutDown {
        /// The image as requested.
        image: String,
    },
}
