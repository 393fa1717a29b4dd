//! [`GuestOptions`]: what the guest puller is configured with. Each field is a future
//! config key of the daemon's guest section (the daemon's wiring reads the config; this
//! crate reads no file but the ones named here, when a pull needs them).

use std::path::PathBuf;
use std::time::Duration;

use veil_registry::{ClientOptions, CredentialsSource};

/// Default work directory: beside CDH's own (`/run/kata-containers/image`), in guest
/// memory unless a scratch disk is mounted there.
pub const DEFAULT_WORK_DIR: &str = "/run/kata-containers/veil";

/// How often the mount table is checked for unmounted roots when no change was
/// signalled (the watcher wakes at once on a mount table change; this bounds a missed
/// one).
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// How the guest puller works.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Where layer mounts (`layers/`) and the containers' writable layers
    /// (`containers/<id>/{upper,work}`) live: guest memory or the encrypted scratch
    /// disk. Created with mode 0700. Config key `work_dir`, default
    /// [`DEFAULT_WORK_DIR`].
    pub work_dir: PathBuf,
    /// The image security policy (containers-policy.json; CDH's
    /// `image_security_policy_uri` as a file). `None`: every image is accepted (as CDH
    /// does without a policy). Config key `image_security_policy`, default none.
    pub policy: Option<PathBuf>,
    /// Registry credentials (a docker `config.json`; CDH's
    /// `authenticated_registry_credentials_uri` as a file). The image service's registry
    /// client must have been made with it ([`registry_options`]); `None`: anonymous or
    /// whatever the client was given. Config key `registry_auth_file`, default none.
    pub auth_file: Option<PathBuf>,
    /// How often the mount table is checked for roots kata-agent unmounted, besides
    /// every change it signals. Config key `watch_interval_ms`, default
    /// [`DEFAULT_WATCH_INTERVAL`].
    pub watch_interval: Duration,
}

impl Default for GuestOptions {
    fn default() -> Self {
        Self {
            work_dir: PathBuf::from(DEFAULT_WORK_DIR),
            policy: None,
            auth_file: None,
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }
}

/// `base` with the credentials `options` name: the registry client options to build the
/// image service of a guest puller with.
pub fn registry_options(mut base: ClientOptions, options: &GuestOptions) -> ClientOptions {
    if let Some(auth) = &options.auth_file {
        base.credentials = CredentialsSource::DockerConfigFile(auth.clone());
    }
    base
}

/// Whether a registry client made with `client` reads the credentials `options` name.
pub(crate) fn credentials_fit(client: &ClientOptions, options: &GuestOptions) -> bool {
    match (&options.auth_file, &client.credentials) {
        (None, _) => true,
        (Some(want), CredentialsSource::DockerConfigFile(have)) => want == have,
        (Some(_), _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_registry_client_must_read_the_configured_credentials() {
        let options = GuestOptions {
            auth_file: Some(PathBuf::from("/run/peerpod/auth.json")),
            ..GuestOptions::default()
        };
        let wired = registry_options(ClientOptions::default(), &options);
        assert!(matches!(
            &wired.credentials,
            CredentialsSource::DockerConfigFile(p) if p == Path::new("/run/peerpod/auth.json")
        ));
        assert!(credentials_fit(&wired, &options));
        assert!(!credentials_fit(&ClientOptions::default(), &options));
        let other = GuestOptions {
            auth_file: Some(PathBuf::from("/elsewhere.json")),
            ..GuestOptions::default()
        };
        assert!(!credentials_fit(&wired, &other));
        // Without an auth file any client fits.
        assert!(credentials_fit(
            &ClientOptions::default(),
            &GuestOptions::default()
        ));
    }
}
