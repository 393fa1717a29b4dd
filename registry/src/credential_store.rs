//! Credentials handed to Veil while it runs, asked for before the docker `config.json`: a
//! pod's imagePullSecret as the CRI image-service proxy saw it in `PullImage`, or what a
//! kubelet-style credential provider answered for the image. This crate only reads such a
//! store ([`CredentialStore`]); the daemon fills it.

use std::fmt;
use std::sync::Arc;

use super::credentials::Credential;

/// Credentials known at run time, by registry host and repository.
pub trait CredentialStore: Send + Sync {
    /// The credential for `repository` on `host` (a registry name such as `docker.io`,
    /// or `host:port`), if one is held and has not expired.
    fn credential(&self, host: &str, repository: &str) -> Option<Credential>;
}

/// A [`CredentialStore`] shared by the registry clients that ask it.
#[derive(Clone)]
pub struct SharedCredentialStore(pub Arc<dyn CredentialStore>);

impl fmt::Debug for SharedCredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedCredentialStore(..)")
    }
}

impl SharedCredentialStore {
    /// Shares `store`.
    pub fn new(store: Arc<dyn CredentialStore>) -> Self {
        Self(store)
    }

    /// [`CredentialStore::credential`] of the shared store.
    pub fn credential(&self, host: &str, repository: &str) -> Option<Credential> {
        self.0.credential(host, repository)
    }
}
