//! [`DaemonError`]: why the daemon (or a server of the `veil` CLI) could not start or
//! serve.

use std::path::PathBuf;

/// Why the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A configured part could not be built from the configuration.
    #[error("{0}")]
    Wiring(String),
    /// Another process answers on the socket.
    #[error("{} is in use: another process is already listening there", .0.display())]
    InUse(PathBuf),
    /// A file system or socket operation failed.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        cause: std::io::Error,
    },
    /// The snapshots store could not be opened or used.
    #[error("{context}: {cause}")]
    Snapshotter {
        /// What was being done.
        context: String,
        /// The snapshotter's error.
        cause: veil_snapshotter::Error,
    },
    /// A gRPC server failed.
    #[error("{context}: {cause}")]
    Serve {
        /// Which server.
        context: String,
        /// tonic's error.
        cause: tonic::transport::Error,
    },
}

/// Adds what was being done to a system error.
pub(crate) trait IoContext<T> {
    /// Wraps the error with `context()`.
    fn io_context(self, context: impl FnOnce() -> String) -> Result<T, DaemonError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, context: impl FnOnce() -> String) -> Result<T, DaemonError> {
        self.map_err(|cause| DaemonError::Io {
            context: context(),
            cause,
        })
    }
}
