//! The credentials pods pulled with, in memory only: one per registry host and repository,
//! recorded by the CRI proxy at each `PullImage` (or from the credential provider's
//! answer), handed to the registry client for that image's lazy fetches
//! ([`CredentialStore`]), forgotten after their lifetime, and overwritten with zeros when
//! forgotten or replaced. Never written to disk, never logged (the `Debug` form shows
//! hosts and repositories only).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use veil_registry::{Credential, CredentialStore};
use zeroize::Zeroize;

/// How long a recorded credential is used after the `PullImage` that carried it (kubelet
/// sends it again with every pull of the image): `[cri] credential_lifetime_seconds`.
pub const DEFAULT_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A credential and when it stops being used; zeroized when dropped.
struct Entry {
    credential: Credential,
    expires: Instant,
}

impl Drop for Entry {
    fn drop(&mut self) {
        match &mut self.credential {
            Credential::Basic { username, password } => {
                username.zeroize();
                password.zeroize();
            }
            Credential::IdentityToken { username, token } => {
                username.zeroize();
                token.zeroize();
            }
            Credential::RegistryToken(token) => token.zeroize(),
        }
    }
}

/// The pods' pull credentials by (registry host, repository).
pub struct PodCredentials {
    lifetime: Duration,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl std::fmt::Debug for PodCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .entries
            .lock()
            .map(|e| e.keys().map(|(h, r)| format!("{h}/{r}")).collect())
            .unwrap_or_default();
        f.debug_struct("PodCredentials")
            .field("lifetime", &self.lifetime)
            .field("images", &keys)
            .finish()
    }
}

impl PodCredentials {
    /// An empty store whose credentials are used for `lifetime` after they were recorded.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Records `credential` for `repository` on `host` (replacing, and zeroizing, what was
    /// there), used until `lifetime` (capped at this store's) has passed.
    pub fn record(&self, host: &str, repository: &str, credential: Credential, lifetime: Duration) {
        let now = Instant::now();
        let entry = Entry {
            credential,
            expires: now + lifetime.min(self.lifetime),
        };
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, e| e.expires > now);
            entries.insert((host.to_string(), repository.to_string()), entry);
        }
    }

    /// Records `credential` for the store's whole lifetime.
    pub fn record_for_lifetime(&self, host: &str, repository: &str, credential: Credential) {
        self.record(host, repository, credential, self.lifetime);
    }

    /// How many unexpired credentials are held.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.entries
            .lock()
            .map(|e| e.values().filter(|e| e.expires > now).count())
            .unwrap_or(0)
    }

    /// Whether no unexpired credential is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CredentialStore for PodCredentials {
    fn credential(&self, host: &str, repository: &str) -> Option<Credential> {
        let now = Instant::now();
        let mut entries = self.entries.lock().ok()?;
        let key = (host.to_string(), repository.to_string());
        match entries.get(&key) {
            Some(e) if e.expires > now => Some(e.credential.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(p: &str) -> Credential {
        Credential::Basic {
            username: "u".into(),
            password: p.into(),
        }
    }

    #[test]
    fn a_credential_is_for_its_repository_only_and_expires() {
        let store = PodCredentials::new(Duration::from_secs(60));
        store.record_for_lifetime("reg:5000", "team/app", basic("one"));
        assert_eq!(store.credential("reg:5000", "team/app"), Some(basic("one")));
        assert_eq!(store.credential("reg:5000", "team/other"), None);
        assert_eq!(store.credential("other:5000", "team/app"), None);
        store.record("reg:5000", "team/app", basic("two"), Duration::ZERO);
        assert_eq!(store.credential("reg:5000", "team/app"), None);
        assert!(store.is_empty());
    }

    #[test]
    fn debug_shows_no_secret() {
        let store = PodCredentials::new(DEFAULT_CREDENTIAL_LIFETIME);
        store.record_for_lifetime("reg:5000", "app", basic("hunter2"));
        let shown = format!("{store:?}");
        assert!(
            shown.contains("reg:5000/app") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
