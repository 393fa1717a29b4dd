//! Errors of the snapshotter, as types, and how each maps to a gRPC status code.
//!
//! The mapping follows containerd's `errdefs`: a missing snapshot is `NotFound`, a key in
//! use is `AlreadyExists`, an operation on the wrong kind of snapshot is
//! `FailedPrecondition`, a malformed request is `InvalidArgument`, a snapshot stacked on a
//! layer that is not mounted now is `Unavailable`. Everything else is an
//! internal error whose message names what failed.

use std::path::PathBuf;

/// An error from the snapshotter or its metadata store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named snapshot (or a parent it needs) does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The key or name is already in use.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The snapshot exists but is of the wrong kind or state for the operation.
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// The request itself is malformed (bad filter, immutable field, empty key, ...).
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// A filesystem operation on the snapshotter's own root failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A layer the snapshot stacks on is not mounted now (it is being retried).
    #[error("{0}: unavailable")]
    Unavailable(String),
    /// A lazily served layer could not be mounted.
    #[error("layer: {0}")]
    Layer(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
}

impl Error {
    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

macro_rules! store_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.to_string())
            }
        }
    )*};
}
store_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
            Error::Io { .. } | Error::Store(_) | Error::Layer(_) => tonic::Status::internal(msg),
        }
    }
}

/// Result with the snapshotter's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
