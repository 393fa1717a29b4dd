//! [`ConvertError`]: why a conversion or an inspection failed, with what was being done.

use std::fmt::Display;

use veil_registry::RegistryError;

/// Why a conversion or an inspection failed. Messages read as a chain, outermost first
/// ("storing the manifest: ...").
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The options, the image or a layer is not what the conversion needs.
    #[error("{0}")]
    Invalid(String),
    /// A registry (or OCI layout) operation failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A file system operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An OCI layout could not be read or written.
    #[error(transparent)]
    Layout(#[from] veil_registry::oci_layout::LayoutError),
    /// JSON (an image config) could not be read or written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A step failed, with what was being done.
    #[error("{context}: {cause}")]
    Context {
        /// What was being done.
        context: String,
        /// Why it failed.
        cause: Box<ConvertError>,
    },
}

impl From<String> for ConvertError {
    fn from(message: String) -> Self {
        Self::Invalid(message)
    }
}

/// The result of this crate's operations.
pub type Result<T> = std::result::Result<T, ConvertError>;

/// Adds what was being done to an error.
pub trait Context<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Display) -> Result<T>;
    /// Wraps the error with `context()`, computed only on error.
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<ConvertError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| ConvertError::Context {
            context: context.to_string(),
            cause: Box::new(e.into()),
        })
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| ConvertError::Context {
            context: context().to_string(),
            cause: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Display) -> Result<T> {
        self.ok_or_else(|| ConvertError::Invalid(context.to_string()))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| ConvertError::Invalid(context().to_string()))
    }
}

/// Returns early with [`ConvertError::Invalid`] and a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::ConvertError::Invalid(format!($($arg)*)))
    };
}

/// Returns early with [`ConvertError::Invalid`] unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::error::ConvertError::Invalid(format!($($arg)*)));
        }
    };
}

pub(crate) use {bail, ensure};
