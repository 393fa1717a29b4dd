//! [`ImageError`]: why the image service could not resolve, open or mount something.
//!
//! Messages read as the chain they replace ("resolving IMAGE: registry said ..."): the
//! cause is part of the message, so every front-end prints one line that names what
//! failed and why.

use veil_formats::estargz::FormatError;
use veil_fusefs::tree::TreeError;
use veil_registry::RegistryError;

/// Why the image service failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A registry request (or a reference or digest) failed.
    #[error("{context}: {cause}")]
    Registry {
        /// What was being done.
        context: String,
        /// The registry client's error.
        cause: Box<RegistryError>,
    },
    /// The layer's TOC could not be read or authenticated.
    #[error("reading the TOC of layer {layer}: {cause}")]
    Toc {
        /// The layer digest.
        layer: String,
        /// What is wrong with the TOC.
        cause: FormatError,
    },
    /// The layer's file tree could not be built from its TOC.
    #[error("indexing layer {layer}: {cause}")]
    Index {
        /// The layer digest.
        layer: String,
        /// What is wrong with the entries.
        cause: TreeError,
    },
    /// A file system or mount operation failed.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        cause: std::io::Error,
    },
    /// A layer's FUSE filesystem could not be mounted.
    #[error(transparent)]
    Mount(#[from] veil_fusefs::mount::MountError),
    /// The image, the layer or the mount point is not what the request needs.
    #[error("{0}")]
    Invalid(String),
}

/// Adds what was being done to a registry client error (or a reference or digest that
/// does not parse).
pub(crate) trait RegistryContext<T> {
    /// Wraps the error with `context()`.
    fn registry_context(self, context: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T, E: Into<RegistryError>> RegistryContext<T> for Result<T, E> {
    fn registry_context(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::Registry {
            context: context(),
            cause: Box::new(e.into()),
        })
    }
}

/// Adds what was being done to a system error.
pub(crate) trait IoContext<T> {
    /// Wraps the error with `context()`.
    fn io_context(self, context: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T, E: Into<std::io::Error>> IoContext<T> for Result<T, E> {
    fn io_context(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::Io {
            context: context(),
            cause: e.into(),
        })
    }
}
