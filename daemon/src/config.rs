//! Veil's configuration file (TOML) and its defaults.
//!
//! The daemon reads `--config FILE` when given, else `/etc/veil/config.toml` when it
//! exists, else runs on the defaults. Command-line flags override the file. Unknown keys
//! are an error, so that a typo does not silently leave a default in force.

use std::ops::RangeInclusive;
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
    /// What a hostile layer may cost.
    pub limits: LimitsConfig,
    /// The CoCo guest puller (`veil-guest`); the snapshotter ignores it.
    pub guest: GuestConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The fd store (`veil fd-store --socket PATH`) that keeps each layer's FUSE
    /// connection across restarts and upgrades; `None`: a stop ends every layer's
    /// connection (containers using them fail) and layers are mounted again at start.
    pub fd_store_socket: Option<PathBuf>,
    /// Keep each layer's FUSE connection in systemd's fd store (`FDSTORE=1`; the unit
    /// needs `FileDescriptorStoreMax=`). Unset: when systemd offers one (`$FDSTORE`,
    /// systemd 254+); set `true` for older systemd. `fd_store_socket` wins when both are set.
    pub systemd_fd_store: Option<bool>,
    /// The CRI image-service proxy (imagePullSecrets for lazy fetches).
    pub cri: crate::cri_config::CriConfig,
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
            limits: LimitsConfig::default(),
            guest: GuestConfig::default(),
            metrics: MetricsConfig::default(),
            fd_store_socket: None,
            systemd_fd_store: None,
            cri: crate::cri_config::CriConfig::default(),
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
    /// Ask the Confidential Data Hub over its ttrpc socket (`GetResource`), inside a
    /// CoCo guest: the socket is `[guest] upstream_socket` (the real CDH, moved).
    #[serde(rename = "cdh-ttrpc")]
    CdhTtrpc,
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

/// Default socket of the guest front door: the one kata-agent calls.
pub const DEFAULT_GUEST_SOCKET: &str = "/run/confidential-containers/cdh.sock";
/// Default socket of the real CDH once a drop-in moved it (`systemd/cdh-upstream.conf`).
pub const DEFAULT_UPSTREAM_SOCKET: &str = "/run/confidential-containers/cdh-upstream.sock";
/// Default attestation agent socket (CDH's `[aa] aa_socket` default).
pub const DEFAULT_AA_SOCKET: &str =
    "/run/confidential-containers/attestation-agent/attestation-agent.sock";
/// Default work directory of the guest puller (guest memory unless a scratch disk is
/// mounted at `/run/kata-containers`).
pub const DEFAULT_GUEST_WORK_DIR: &str = "/run/kata-containers/veil";
/// CDH's config in a peer-pod VM (written from the initdata by `process-user-data`):
/// read when `[guest] cdh_config` is not set and the file exists.
pub const PEERPOD_CDH_CONFIG: &str = "/run/peerpod/cdh.toml";
/// Default time between mount table checks of the guest puller, in milliseconds.
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 2000;
/// Default time running pulls get to finish on SIGTERM, in seconds.
pub const DEFAULT_GUEST_SHUTDOWN_GRACE_SECONDS: u64 = 30;

/// Default time start-up waits for the upstream CDH socket, in seconds.
pub const DEFAULT_UPSTREAM_WAIT_SECONDS: u64 = 30;

/// `[guest]`: `veil-guest`, Veil on the Confidential Data Hub's socket inside a CoCo guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// The socket kata-agent calls (Veil binds it).
    pub socket: PathBuf,
    /// The real CDH's socket: every call but `PullImage` is forwarded there, and the
    /// `cdh-ttrpc` KEK source and `kbs://` URIs of `cdh_config` ask it.
    pub upstream_socket: PathBuf,
    /// The attestation agent: every pull is recorded in the runtime measurements
    /// (a missing socket is skipped with a warning).
    pub aa_socket: PathBuf,
    /// Layer mounts and the containers' writable layers (mode 0700).
    pub work_dir: PathBuf,
    /// containers-policy.json (overrides cdh.toml's `image_security_policy_uri`).
    pub image_security_policy: Option<PathBuf>,
    /// docker `config.json` with registry credentials (overrides cdh.toml's
    /// `authenticated_registry_credentials_uri`).
    pub registry_auth_file: Option<PathBuf>,
    /// Milliseconds between checks of the mount table for unmounted roots (besides
    /// change events).
    pub watch_interval_ms: u64,
    /// CDH's `cdh.toml`, whose `[image]` keys are read [default: [`PEERPOD_CDH_CONFIG`]
    /// if it exists]; `""`: none.
    pub cdh_config: Option<PathBuf>,
    /// Seconds running pulls get to finish on SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Seconds start-up waits for the upstream socket to appear when `cdh_config` names a
    /// `kbs://` resource (CDH may still be starting).
    pub upstream_wait_seconds: u64,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_GUEST_SOCKET),
            upstream_socket: PathBuf::from(DEFAULT_UPSTREAM_SOCKET),
            aa_socket: PathBuf::from(DEFAULT_AA_SOCKET),
            work_dir: PathBuf::from(DEFAULT_GUEST_WORK_DIR),
            image_security_policy: None,
            registry_auth_file: None,
            watch_interval_ms: DEFAULT_WATCH_INTERVAL_MS,
            cdh_config: None,
            shutdown_grace_seconds: DEFAULT_GUEST_SHUTDOWN_GRACE_SECONDS,
            upstream_wait_seconds: DEFAULT_UPSTREAM_WAIT_SECONDS,
        }
    }
}

impl GuestConfig {
    /// The CDH config to read: `cdh_config` (none when `""`), else
    /// [`PEERPOD_CDH_CONFIG`] when it exists.
    pub fn cdh_config_path(&self) -> Option<PathBuf> {
        match &self.cdh_config {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(PEERPOD_CDH_CONFIG)).filter(|p| p.exists()),
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
    /// Neighbourhood window fetched around a read miss while the layer has no other
    /// request in flight, in bytes; 0: only what a read needs is fetched.
    pub window_max_bytes: u64,
    /// The window while other requests of the layer are in flight, in bytes.
    pub window_min_bytes: u64,
    /// Most bytes of a directory window: the first miss in a small file of a directory
    /// also fetches the blob region of that directory's small files; 0: none.
    pub window_dir_bytes: u64,
    /// Complete each chunk of a window as soon as its bytes have arrived (the response
    /// streamed); false: when the whole window is in.
    pub window_stream: bool,
    /// Bytes of the prioritized files fetched before a layer is handed out for
    /// mounting; the rest streams on in order while the container starts. 0: the
    /// layer is handed out at once; a huge value waits for all of them.
    pub prefetch_wait_bytes: u64,
    /// Bytes per prefetch range request after the first `prefetch_wait_bytes` (a read
    /// of a prioritized file whose request is in flight waits about this much).
    pub prefetch_piece_bytes: u64,
    /// A read of a prioritized file whose prefetch request is in flight waits for it;
    /// false: it fetches the bytes again itself (as before; for comparing the two).
    pub prefetch_reads_wait: bool,
    /// With `prefetch_reads_wait`: a prefetch request's chunks are served one by one as
    /// its response streams in; false: when the whole request is in.
    pub prefetch_stream: bool,
    /// Bytes read from a layer's end in the first request for its TOC: footer and TOC
    /// in one round trip when the TOC fits; 0: the footer alone first, as before.
    pub toc_tail_bytes: u64,
    /// While a layer is prepared, the TOC bytes of up to this many layers above it are
    /// fetched ahead (their Prepares follow one by one); 0: none.
    pub look_ahead_layers: usize,
}

impl Default for LazyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefetch: true,
            background_fetch: true,
            background_rate: 0,
            window_max_bytes: veil_fusefs::window::DEFAULT_WINDOW_MAX,
            window_min_bytes: veil_fusefs::window::DEFAULT_WINDOW_MIN,
            window_dir_bytes: veil_fusefs::window::DEFAULT_WINDOW_DIR,
            window_stream: veil_fusefs::window::DEFAULT_WINDOW_STREAM,
            prefetch_wait_bytes: veil_fusefs::prefetch::DEFAULT_WAIT_BYTES,
            prefetch_piece_bytes: veil_fusefs::prefetch::DEFAULT_PIECE_SIZE,
            prefetch_reads_wait: true,
            prefetch_stream: veil_fusefs::prefetch::DEFAULT_PREFETCH_STREAM,
            toc_tail_bytes: veil_formats::estargz::DEFAULT_TOC_TAIL_BYTES,
            look_ahead_layers: veil_image::layers::DEFAULT_LOOK_AHEAD_LAYERS,
        }
    }
}

impl LazyConfig {
    /// A message naming the key when `toc_tail_bytes` is over
    /// `veil_formats::estargz::MAX_TOC_TAIL_BYTES` (what one speculative read may hold).
    pub fn check(&self) -> Result<(), String> {
        let max = veil_formats::estargz::MAX_TOC_TAIL_BYTES;
        if self.toc_tail_bytes > max {
            return Err(format!(
                "[lazy] toc_tail_bytes = {} is out of range: it must be between 0 and {max}",
                self.toc_tail_bytes
            ));
        }
        Ok(())
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
    /// Serve files whole in the plaintext cache by FUSE passthrough from a locked memfd
    /// (charged against `memory_bytes`; see `veil_fusefs::promote`).
    pub passthrough: bool,
    /// Smallest file served by passthrough, in bytes.
    pub passthrough_min_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: veil_fusefs::cache::DEFAULT_BUDGET,
            disk_bytes: veil_fusefs::disk_cache::DEFAULT_DISK_BUDGET,
            disk_dir: None,
            passthrough: true,
            passthrough_min_bytes: veil_fusefs::promote::DEFAULT_MIN_SIZE,
        }
    }
}

/// `[limits]`: what any layer, however hostile, may cost to index and read (see
/// `veil_formats::limits`; sizes in bytes). Each key must lie in its range (zero would
/// refuse every layer, a huge value would lift the bound); the defaults are the
/// constants of `veil_formats::limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest uncompressed chunk, and most bytes a chunk may need inflated from its
    /// member or frame (`innerOffset + size`).
    pub max_chunk_size: u64,
    /// Largest compressed blob range one chunk may span (what one chunk read fetches).
    pub max_compressed_chunk_size: u64,
    /// Deepest path (and hard-link target) in a layer, in components.
    pub max_path_depth: u64,
    /// Bytes of TOC index memory allowed per byte of TOC JSON (at least 1 MiB in all).
    pub max_index_bytes_per_toc_byte: u64,
    /// Bytes of filesystem tree memory allowed per byte of TOC index (at least 1 MiB).
    pub max_tree_bytes_per_index_byte: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use veil_formats::limits as l;
        Self {
            max_chunk_size: l::MAX_CHUNK_SIZE,
            max_compressed_chunk_size: l::MAX_COMPRESSED_CHUNK_SIZE,
            max_path_depth: l::MAX_PATH_DEPTH as u64,
            max_index_bytes_per_toc_byte: l::MAX_INDEX_BYTES_PER_TOC_BYTE,
            max_tree_bytes_per_index_byte: l::MAX_TREE_BYTES_PER_INDEX_BYTE,
        }
    }
}

impl LimitsConfig {
    /// Each key with its value and the range it must lie in
    /// (`veil_formats::limits::CHUNK_SIZE_RANGE`, ...).
    fn ranges(&self) -> [(&'static str, u64, RangeInclusive<u64>); 5] {
        use veil_formats::limits as l;
        [
            ("max_chunk_size", self.max_chunk_size, l::CHUNK_SIZE_RANGE),
            (
                "max_compressed_chunk_size",
                self.max_compressed_chunk_size,
                l::COMPRESSED_CHUNK_SIZE_RANGE,
            ),
            ("max_path_depth", self.max_path_depth, l::PATH_DEPTH_RANGE),
            (
                "max_index_bytes_per_toc_byte",
                self.max_index_bytes_per_toc_byte,
                l::BYTES_PER_BYTE_RANGE,
            ),
            (
                "max_tree_bytes_per_index_byte",
                self.max_tree_bytes_per_index_byte,
                l::BYTES_PER_BYTE_RANGE,
            ),
        ]
    }

    /// The first key outside its range, as a message naming it.
    pub fn check(&self) -> Result<(), String> {
        for (key, value, range) in self.ranges() {
            if !range.contains(&value) {
                return Err(format!(
                    "[limits] {key} = {value} is out of range: it must be between {} and {}",
                    range.start(),
                    range.end()
                ));
            }
        }
        Ok(())
    }
}

/// Default of `[metrics] layer_labels`: layers exported under their own digest label.
pub const DEFAULT_METRICS_LAYER_LABELS: usize = 32;
/// The allowed range of `[metrics] layer_labels`.
pub const METRICS_LAYER_LABELS_RANGE: RangeInclusive<usize> = 1..=1000;

/// `[metrics]`: Prometheus metrics over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:PORT` to serve `GET /metrics` (Prometheus text format) on; none: no endpoint.
    /// The metrics name layer digests and image references, never files: bind it to
    /// loopback or a node-local address.
    pub address: Option<std::net::SocketAddr>,
    /// Most layers exported with their own `layer` label (the most recently resolved);
    /// the others are summed under `layer="other"`, so the series count stays bounded.
    pub layer_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            address: None,
            layer_labels: DEFAULT_METRICS_LAYER_LABELS,
        }
    }
}

impl MetricsConfig {
    /// A message naming the key when `layer_labels` is out of range.
    pub fn check(&self) -> Result<(), String> {
        let range = METRICS_LAYER_LABELS_RANGE;
        if !range.contains(&self.layer_labels) {
            return Err(format!(
                "[metrics] layer_labels = {} is out of range: it must be between {} and {}",
                self.layer_labels,
                range.start(),
                range.end()
            ));
        }
        Ok(())
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

    /// Parses a configuration from TOML text and checks its values (`[limits]` ranges);
    /// `path` is only used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let config: Self = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        config.limits.check().map_err(parse_error)?;
        config.metrics.check().map_err(parse_error)?;
        config.lazy.check().map_err(parse_error)?;
        Ok(config)
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
    fn toc_tail_and_look_ahead() {
        let c = Config::from_toml("", Path::new("x")).unwrap();
        assert_eq!(c.lazy.toc_tail_bytes, 128 << 10);
        assert_eq!(c.lazy.look_ahead_layers, 16);
        let c = Config::from_toml(
            "[lazy]\ntoc_tail_bytes = 0\nlook_ahead_layers = 0\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!((c.lazy.toc_tail_bytes, c.lazy.look_ahead_layers), (0, 0));
        let err = Config::from_toml("[lazy]\ntoc_tail_bytes = 1099511627776\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("toc_tail_bytes"), "{err}");
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
    fn guest_section() {
        let c = Config::from_toml(
            "[guest]\nupstream_socket = \"/run/cdh2.sock\"\ncdh_config = \"\"\n\
             [decryption]\nkek_sources = [\"cdh-ttrpc\"]\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.guest.upstream_socket, PathBuf::from("/run/cdh2.sock"));
        assert_eq!(c.guest.socket, PathBuf::from(DEFAULT_GUEST_SOCKET));
        assert_eq!(c.guest.cdh_config_path(), None);
        assert_eq!(c.decryption.kek_sources, [KekSourceKind::CdhTtrpc]);
        let e = Config::from_toml("[guest]\nsockets = \"/x\"\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sockets"), "{e}");
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
    fn limits_default_to_the_constants_and_are_range_checked() {
        let c = Config::from_toml("[limits]\nmax_chunk_size = 8388608\n", Path::new("x")).unwrap();
        assert_eq!(c.limits.max_chunk_size, 8 << 20);
        assert_eq!(
            c.limits.max_path_depth,
            veil_formats::limits::MAX_PATH_DEPTH as u64
        );
        for key in [
            "max_chunk_size",
            "max_compressed_chunk_size",
            "max_path_depth",
            "max_index_bytes_per_toc_byte",
            "max_tree_bytes_per_index_byte",
        ] {
            let e = Config::from_toml(
                &format!("[limits]\n{key} = 0\n"),
                Path::new("/etc/veil/config.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("/etc/veil/config.toml") && e.contains(&format!("[limits] {key} = 0")),
                "{e}"
            );
        }
        let e = Config::from_toml("[limits]\nmax_path_depth = 100000\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_path_depth = 100000") && e.contains("2048"),
            "{e}"
        );
        let e = Config::from_toml("[limits]\nmax_chunk_size = -1\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_chunk_size"), "{e}");
    }

    #[test]
    fn metrics_section() {
        let path = Path::new("c.toml");
        let c = Config::from_toml("[metrics]\naddress = \"127.0.0.1:9750\"\n", path).unwrap();
        assert_eq!(c.metrics.address, Some("127.0.0.1:9750".parse().unwrap()));
        assert_eq!(c.metrics.layer_labels, DEFAULT_METRICS_LAYER_LABELS);
        assert_eq!(Config::default().metrics.address, None);
        let err = Config::from_toml("[metrics]\nlayer_labels = 0\n", path).unwrap_err();
        assert!(err
            .to_string()
            .contains("[metrics] layer_labels = 0 is out of range"));
        let err = Config::from_toml("[metrics]\naddress = \"localhost\"\n", path).unwrap_err();
        assert!(err.to_string().contains("address"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/veil.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/veil.toml"));
    }
}
