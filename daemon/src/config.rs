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
    /// The fd store (`veil fd-store --socket PATH`) that keeps each layer's FUSE
    /// connection across restarts and upgrades; `None`: a stop ends every layer's
    /// connection (containers using them fail) and layers are mounted again at start.
    pub fd_store_socket: Option<PathBuf>,
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
            fd_store_socket: None,
        }
    }
}

/// Default directory of private keys for encrypted layers (containerd's).
pub const DEFAULT_KEYS_DIR: &str = "/etc/containerd/ocicrypt/keys";

/// Default directory of KEK files for the `file` KEK source.
pub const DEFAULT_KEK_DIR: &str = "/etc/veil/keks";
/// Default address of CoCo's Confidential Data Hub resource API.
pub const DEFAULT_CDH_URL: &str = "http://127.0.0.1:8006";

/// A place KEKs of attestation-agent (CoCo) recipients come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KekSourceKind {
    /// Attest to the KBS at `kbs_url` and fetch the resource the kid names.
    Kbs,
    /// Ask CoCo's Confidential Data Hub (`cdh_url`), where guest-components run.
    Cdh,
    /// Read `<kek_dir>/<repo>/<type>/<tag>` (tests, machines without a TEE).
    File,
}

/// `[decryption]`: keys for ocicrypt-encrypted layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecryptionConfig {
    /// Directory of private keys (PEM, DER or JWK; RSA or EC) for JWE recipients.
    pub keys_dir: PathBuf,
    /// Serve encrypted eStargz / zstd:chunked layers lazily only when their wrapped
    /// options carry a sealed TOC digest; stream the others (fetch whole, check the
    /// ocicrypt HMAC, then serve). Default true: without a seal the TOC is authenticated
    /// by the manifest annotation alone, which the key does not cover (AES-CTR is
    /// malleable), so a forged TOC could serve wrong bytes until the whole-blob HMAC check.
    pub require_sealed_toc: bool,
    /// KEK sources for `provider.attestation-agent` recipients, asked in this order
    /// (empty: such recipients are not unwrapped).
    pub kek_sources: Vec<KekSourceKind>,
    /// The KBS (`https://host:port`) of the `kbs` source.
    pub kbs_url: Option<String>,
    /// Extra CA certificates (PEM) trusted for the KBS, besides the system's.
    pub kbs_ca: Option<PathBuf>,
    /// Allow a plain `http://` `kbs_url` (tests only: the KBS answer is encrypted to the
    /// TEE key, but the exchange is not authenticated).
    pub kbs_allow_plain_http: bool,
    /// The attester of the `kbs` source: `auto` (the configfs-tsm provider), `tdx`,
    /// `snp`, or `sample` (tests only; never chosen by `auto`).
    pub attester: String,
    /// The Confidential Data Hub of the `cdh` source.
    pub cdh_url: String,
    /// The directory of the `file` source.
    pub kek_dir: PathBuf,
}

impl Default for DecryptionConfig {
    fn default() -> Self {
        Self {
            keys_dir: PathBuf::from(DEFAULT_KEYS_DIR),
            require_sealed_toc: true,
            kek_sources: Vec::new(),
            kbs_url: None,
            kbs_ca: None,
            kbs_allow_plain_http: false,
            attester: "auto".into(),
            cdh_url: DEFAULT_CDH_URL.into(),
            kek_dir: PathBuf::from(DEFAULT_KEK_DIR),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Seconds a blob read keeps retrying through a registry outage before the read
    /// fails with EIO.
    pub read_retry_seconds: u64,
    /// Seconds a blob transfer may go without a byte before it is abandoned and tried
    /// again on a fresh connection.
    pub stall_timeout_seconds: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            plain_http: Vec::new(),
            hosts_dir: None,
            docker_config: None,
            ca_bundle: None,
            read_retry_seconds: veil_registry::retry::DEFAULT_READ_RETRY.as_secs(),
            stall_timeout_seconds: veil_registry::retry::DEFAULT_STALL_TIMEOUT.as_secs(),
        }
    }
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
            memory_bytes: veil_fusefs::cache::DEFAULT_BUDGET,
            disk_bytes: veil_fusefs::disk_cache::DEFAULT_DISK_BUDGET,
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
    fn sealed_toc_digests_are_required_by_default() {
        assert!(Config::default().decryption.require_sealed_toc);
        let c = Config::from_toml("[decryption]\nrequire_sealed_toc = false\n", Path::new("x"))
            .unwrap();
        assert!(!c.decryption.require_sealed_toc);
    }

    #[test]
    fn kek_sources() {
        let c = Config::from_toml(
            "[decryption]\nkek_sources = [\"kbs\", \"file\"]\nkbs_url = \"https://kbs:8080\"\nattester = \"sample\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            c.decryption.kek_sources,
            [KekSourceKind::Kbs, KekSourceKind::File]
        );
        assert_eq!(c.decryption.kbs_url.as_deref(), Some("https://kbs:8080"));
        let e = Config::from_toml("[decryption]\nkek_sources = [\"vault\"]\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vault"), "{e}");
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
