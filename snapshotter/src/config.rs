//! Veil's configuration file (TOML) and its defaults.
//!
//! The daemon reads `--config FILE` when given, else `/etc/veil/config.toml` when it
//! exists, else runs on the defaults. Command-line flags override the file. Unknown keys
//! are an error, so that a typo does not silently leave a default in force.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/veil/config.toml";
/// Default root directory: snapshot directories and the metadata store.
pub const DEFAULT_ROOT: &str = "/var/lib/veil";
/// Default socket containerd connects to.
pub const DEFAULT_ADDRESS: &str = "/run/veil/snapshotter.sock";

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Root directory for snapshots and metadata.
    pub root: PathBuf,
    /// Unix socket the snapshots API is served on.
    pub address: PathBuf,
    /// Log filter (`tracing` env-filter syntax) used when `RUST_LOG` is not set.
    pub log_level: String,
    /// Lazy layers.
    pub lazy: LazyConfig,
    /// Registry access.
    pub registry: RegistryConfig,
    /// Caches.
    pub cache: CacheConfig,
    /// Encrypted layers.
    pub decryption: DecryptionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from(DEFAULT_ADDRESS),
            log_level: "info".into(),
            lazy: LazyConfig::default(),
            registry: RegistryConfig::default(),
            cache: CacheConfig::default(),
            decryption: DecryptionConfig::default(),
        }
    }
}

/// Default directory of private keys for encrypted layers (containerd's).
pub const DEFAULT_KEYS_DIR: &str = "/etc/containerd/ocicrypt/keys";

/// `[decryption]`: keys for ocicrypt-encrypted layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecryptionConfig {
    /// Directory of private keys (PEM, DER or JWK; RSA or EC) for JWE recipients.
    pub keys_dir: PathBuf,
    /// Refuse encrypted layers whose wrapped options carry no sealed TOC digest.
    pub require_sealed_toc: bool,
}

impl Default for DecryptionConfig {
    fn default() -> Self {
        Self {
            keys_dir: PathBuf::from(DEFAULT_KEYS_DIR),
            require_sealed_toc: false,
        }
    }
}

/// `[lazy]`: serving layers without downloading them first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LazyConfig {
    /// Serve eStargz and zstd:chunked layers lazily (otherwise containerd unpacks every
    /// layer).
    pub enabled: bool,
    /// Before a layer is mounted, fetch the files its image marks as needed first (the
    /// prefetch landmark of eStargz and zstd:chunked).
    pub prefetch: bool,
    /// After a layer is mounted, fetch the whole blob into the disk cache in the
    /// background (needs `[cache] disk_bytes` > 0).
    pub background_fetch: bool,
    /// Bytes per second all background fetches together may use; 0: unlimited.
    pub background_rate: u64,
}

impl Default for LazyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefetch: true,
            background_fetch: true,
            background_rate: 0,
        }
    }
}

/// `[registry]`: how Veil reaches registries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) reached over plain HTTP instead of HTTPS.
    pub plain_http: Vec<String>,
    /// containerd-style host configuration directory with `<host>/hosts.toml` files
    /// (mirrors, CAs), e.g. `/etc/containerd/certs.d`.
    pub hosts_dir: Option<PathBuf>,
    /// docker `config.json` with credentials [default: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`, else anonymous].
    pub docker_config: Option<PathBuf>,
    /// Extra CA certificates (PEM bundle) trusted for every registry.
    pub ca_bundle: Option<PathBuf>,
}

/// `[cache]`: the bounded caches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Byte budget of the in-memory cache of verified plaintext chunks.
    pub memory_bytes: u64,
    /// Byte budget of the disk cache of layer blob bytes (as the registry serves them:
    /// compressed, encrypted layers still encrypted); 0 disables it.
    pub disk_bytes: u64,
    /// Directory of the disk cache [default: `<root>/cache`].
    pub disk_dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            disk_bytes: 1 << 30,
            disk_dir: None,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
}

impl Config {
    /// The disk cache directory: `[cache] disk_dir`, else `<root>/cache`.
    pub fn disk_cache_dir(&self) -> PathBuf {
        self.cache
            .disk_dir
            .clone()
            .unwrap_or_else(|| self.root.join("cache"))
    }

    /// Parses a configuration from TOML text; `path` is only used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Loads `explicit` if given (it must exist), else [`DEFAULT_CONFIG_PATH`] if it
    /// exists, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !p.exists() {
                    return Ok(Self::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_toml(&text, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_toml("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
        let c = Config::from_toml("root = \"/srv/veil\"\n", Path::new("x")).unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/veil"));
        assert_eq!(c.address, PathBuf::from(DEFAULT_ADDRESS));
        assert_eq!(c.disk_cache_dir(), PathBuf::from("/srv/veil/cache"));
        let c = Config::from_toml(
            "[cache]\ndisk_bytes = 0\ndisk_dir = \"/fast/veil\"\n[lazy]\nbackground_rate = 1048576\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.cache.disk_bytes, 0);
        assert_eq!(c.disk_cache_dir(), PathBuf::from("/fast/veil"));
        assert_eq!(c.lazy.background_rate, 1 << 20);
        assert!(c.lazy.prefetch && c.lazy.background_fetch);
    }

    #[test]
    fn typos_are_named() {
        let e = Config::from_toml("rooot = \"/x\"\n", Path::new("/etc/veil/config.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/veil/config.toml") && e.contains("rooot"),
            "{e}"
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/veil.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/veil.toml"));
    }
}
