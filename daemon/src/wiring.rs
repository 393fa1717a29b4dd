//! Where the configuration becomes objects: the only place [`crate::config`] types are
//! read.
//!
//! The daemon, `veil mount` and `veil keyprovider serve` all build their parts here, so
//! one config file means the same thing to each: the registry client's options, the
//! plaintext and disk caches, the decryption keys and the KEK chain (with the attester),
//! the image service ([`LazyLayers`]), the snapshots service and the fd store client. Some of it does I/O
//! (opening the disk cache, loading keys, starting the KEK runtime thread, probing the
//! TEE); all of it happens here, at start-up, never in the layers below.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use veil_cdh::front::FrontDoorConfig;
use veil_cdh::kek::{CdhTtrpcKekSource, DEFAULT_GET_RESOURCE_TIMEOUT};
use veil_cri::{CredentialProvider, ImageProxy, PodCredentials};
use veil_formats::limits::Limits;
use veil_fusefs::cache::ChunkCache;
use veil_fusefs::disk_cache::DiskCache;
use veil_fusefs::mount::MountOptions;
use veil_fusefs::prefetch::RateLimiter;
use veil_fusefs::promote::PromoteOptions;
use veil_guest::{ConnectionKeeper, GuestOptions, GuestPuller, KeptConnection};
use veil_image::layers::{LazyLayers, LazyOptions, WindowSizes};
use veil_keyprovider::kbs::attester::{self, AttesterKind};
use veil_keyprovider::kbs::{KbsClient, KbsClientConfig, KbsKekSource};
use veil_keyprovider::kek::{CdhKekSource, FileKekSource, KekChain, KekSource};
use veil_keyprovider::layer::Decryption;
use veil_registry::{ClientOptions, CredentialsSource, RegistryClient, SharedCredentialStore};
use veil_snapshotter::fdstore::{FdKeeper, FdStoreClient, SystemdFdStore};
use veil_snapshotter::overlay::OverlaySnapshotter;
use veil_snapshotter::service::Service;

use crate::cdh_toml::{CdhImageConfig, ResourceLocation};
#[cfg(test)]
use crate::config::DecryptionConfig;
use crate::config::{Config, KekSourceKind, LimitsConfig};
use crate::error::DaemonError;

/// Timeout of each KBS / CDH request.
pub const KEK_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The Prometheus endpoint `[metrics]` asks for (its recorder installed), if any.
pub fn metrics_endpoint(
    config: &Config,
) -> Result<Option<crate::metrics_server::MetricsEndpoint>, DaemonError> {
    let m = &config.metrics;
    m.address
        .map(|address| crate::metrics_server::MetricsEndpoint::install(address, m.layer_labels))
        .transpose()
}

/// The registry client options the config asks for.
pub fn registry_options(config: &Config) -> ClientOptions {
    let r = &config.registry;
    ClientOptions {
        insecure_registries: r.plain_http.clone(),
        hosts_dir: r.hosts_dir.clone(),
        ca_bundle: r.ca_bundle.clone(),
        read_retry: Duration::from_secs(r.read_retry_seconds),
        // A zero stall timeout would abandon every transfer: at least a second.
        stall_timeout: Duration::from_secs(r.stall_timeout_seconds.max(1)),
        credentials: match &r.docker_config {
            Some(p) => CredentialsSource::DockerConfigFile(p.clone()),
            None => CredentialsSource::DockerDefault,
        },
        ..ClientOptions::default()
    }
}

/// The disk cache `[cache] disk_bytes` and `disk_dir` ask for (`None` when disabled). A
/// disk cache that cannot be opened is logged and left out: layers are then served from
/// the registry only.
pub fn disk_cache(config: &Config) -> Option<Arc<DiskCache>> {
    let budget = config.cache.disk_bytes;
    if budget == 0 {
        return None;
    }
    let dir = config.disk_cache_dir();
    match DiskCache::open(&dir, budget) {
        Ok(cache) => {
            tracing::info!(
                dir = %dir.display(),
                budget,
                held = cache.stats().bytes,
                "disk cache ready"
            );
            Some(cache)
        }
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot open the disk cache; serving layers without it"
            );
            None
        }
    }
}

/// The KEK chain of `[decryption] kek_sources`, in order (the attester of the `kbs`
/// source is detected here; the `cdh-ttrpc` source asks `[guest] upstream_socket`). Runs
/// on the thread the chain's HTTP clients will use.
pub fn kek_chain(full: &Config) -> Result<KekChain, DaemonError> {
    let config = &full.decryption;
    let wiring = |m: String| DaemonError::Wiring(m);
    let mut sources: Vec<Arc<dyn KekSource>> = Vec::new();
    for kind in &config.kek_sources {
        match kind {
            KekSourceKind::CdhTtrpc => sources.push(Arc::new(CdhTtrpcKekSource::new(
                &full.guest.upstream_socket,
                DEFAULT_GET_RESOURCE_TIMEOUT,
            ))),
            KekSourceKind::File => sources.push(Arc::new(FileKekSource::new(&config.kek_dir))),
            KekSourceKind::Cdh => sources.push(Arc::new(
                CdhKekSource::new(&config.cdh_url, KEK_REQUEST_TIMEOUT)
                    .map_err(|e| wiring(format!("kek source cdh: {e}")))?,
            )),
            KekSourceKind::Kbs => {
                let url = config.kbs_url.as_deref().ok_or_else(|| {
                    wiring(
                        "kek source kbs needs [decryption] kbs_url (the KBS, https://host:port)"
                            .into(),
                    )
                })?;
                let kind: AttesterKind = config
                    .attester
                    .parse()
                    .map_err(|e| wiring(format!("[decryption] attester: {e}")))?;
                let attester = attester::detect(kind, Path::new(attester::DEFAULT_TSM_REPORT_PATH))
                    .map_err(|e| {
                        wiring(format!("[decryption] attester {:?}: {e}", config.attester))
                    })?;
                let mut client_config = KbsClientConfig::new(url);
                client_config.allow_plain_http = config.kbs_allow_plain_http;
                client_config.timeout = KEK_REQUEST_TIMEOUT;
                if let Some(ca) = &config.kbs_ca {
                    client_config.ca_pem = Some(std::fs::read(ca).map_err(|e| {
                        wiring(format!("[decryption] kbs_ca {}: {e}", ca.display()))
                    })?);
                }
                let client = KbsClient::new(&client_config, attester)
                    .map_err(|e| wiring(format!("kek source kbs: {e}")))?;
                sources.push(Arc::new(KbsKekSource::new(Arc::new(client))));
            }
        }
    }
    Ok(KekChain::new(sources))
}

/// Everything `[decryption]` configures: the keys directory, and the KEK sources of
/// attestation-agent recipients (`kek_sources`; their chain is built on the KEK runtime's
/// own thread).
pub fn decryption(full: &Config) -> Decryption {
    let config = &full.decryption;
    let decryption = Decryption::load(&config.keys_dir, config.require_sealed_toc);
    if config.kek_sources.is_empty() {
        return decryption;
    }
    let owned = full.clone();
    decryption.with_kek_chain(move || kek_chain(&owned))
}

/// The hostile-input limits `[limits]` sets (checked against their ranges when the
/// config was parsed), for every layer's TOC, tree, streamed index and chunk decodes.
pub fn limits(config: &LimitsConfig) -> Limits {
    Limits {
        max_chunk_size: config.max_chunk_size,
        max_compressed_chunk_size: config.max_compressed_chunk_size,
        max_path_depth: usize::try_from(config.max_path_depth).unwrap_or(usize::MAX),
        max_index_bytes_per_toc_byte: config.max_index_bytes_per_toc_byte,
        max_tree_bytes_per_index_byte: config.max_tree_bytes_per_index_byte,
    }
}

/// The image service options the config asks for: the disk cache (opened here),
/// prefetch, background fetching and its rate, decryption, the limits.
pub fn lazy_options(config: &Config) -> LazyOptions {
    lazy_options_with(config, disk_cache(config))
}

/// [`lazy_options`] with the disk cache given (`None`: no disk cache, and therefore no
/// background fetch).
fn lazy_options_with(config: &Config, disk_cache: Option<Arc<DiskCache>>) -> LazyOptions {
    LazyOptions {
        background_fetch: config.lazy.background_fetch && disk_cache.is_some(),
        disk_cache,
        prefetch: config.lazy.prefetch,
        background_rate: match config.lazy.background_rate {
            0 => None,
            rate => Some(RateLimiter::new(rate)),
        },
        decryption: Some(Arc::new(decryption(config))),
        window: WindowSizes {
            min: config
                .lazy
                .window_min_bytes
                .min(config.lazy.window_max_bytes),
            max: config.lazy.window_max_bytes,
            dir: config.lazy.window_dir_bytes,
            stream: config.lazy.window_stream,
        },
        prefetch_wait_bytes: config.lazy.prefetch_wait_bytes,
        prefetch_piece_bytes: config.lazy.prefetch_piece_bytes,
        prefetch_reads_wait: config.lazy.prefetch_reads_wait,
        prefetch_stream: config.lazy.prefetch_stream,
        toc_tail_bytes: config.lazy.toc_tail_bytes,
        look_ahead_layers: config.lazy.look_ahead_layers,
        // The snapshotter lets containerd unpack plain layers.
        stream_plain: false,
        limits: limits(&config.limits),
    }
}

/// How layers are mounted: promotion of files whole in the cache to FUSE passthrough as
/// `[cache] passthrough` and `passthrough_min_bytes` say, the rest the defaults.
///
/// When `keeps_connections` (the layers' FUSE connections are kept in an fd store to
/// survive restarts), each promoted file is kept beside its layer's connection (its
/// memfd and a record of its inode, size and backing id: `veil_fusefs::carry`), and a
/// mount promotes nothing until its connection is kept: the next process serves the
/// same inodes by passthrough with the same backing ids, since the kernel refuses a
/// normal open beside a passthrough handle still open from before the restart.
pub fn mount_options(config: &Config, keeps_connections: bool) -> MountOptions {
    MountOptions {
        promote: PromoteOptions {
            enabled: config.cache.passthrough,
            min_size: config.cache.passthrough_min_bytes,
            keep_for_restart: keeps_connections,
        },
        ..MountOptions::default()
    }
}

/// The image service for `config`, reaching registries with `registry` (normally
/// [`registry_options`] of the same config), running reads on `runtime`, mounting layers
/// with [`mount_options`] (no fd store; [`snapshots_service`] says whether there is one).
pub fn image_service(
    config: &Config,
    registry: ClientOptions,
    runtime: tokio::runtime::Handle,
) -> Result<LazyLayers, DaemonError> {
    let registry = RegistryClient::new(registry)
        .map_err(|e| DaemonError::Wiring(format!("setting up the registry client: {e}")))?;
    let cache = Arc::new(ChunkCache::new(config.cache.memory_bytes));
    Ok(LazyLayers::new(registry, cache, runtime)
        .with_options(lazy_options(config))
        .with_mount_options(mount_options(config, false)))
}

/// Directory (below the daemon's root) of the data stored with each fd in systemd's fd
/// store, which keeps only names.
pub const SYSTEMD_FD_DATA_DIR: &str = "fdstore";

/// The fd store that keeps layers' connections across restarts (`None`: they are not
/// kept): `fd_store_socket` when set, else systemd's when `systemd_fd_store` says so
/// (unset: when systemd offers one, `$FDSTORE`). `root` holds what systemd cannot.
pub fn fd_store(config: &Config, root: &std::path::Path) -> Option<Arc<dyn FdKeeper>> {
    if let Some(socket) = config.fd_store_socket.as_deref() {
        if config.systemd_fd_store == Some(true) {
            tracing::warn!(socket = %socket.display(),
                "both fd_store_socket and systemd_fd_store are set: using the fd store socket");
        }
        return Some(Arc::new(FdStoreClient::new(socket)));
    }
    let systemd = match config.systemd_fd_store {
        Some(wanted) => wanted,
        None => SystemdFdStore::offered(),
    };
    if !systemd {
        return None;
    }
    if !SystemdFdStore::reachable() {
        tracing::warn!(
            "systemd_fd_store is set but no service manager listens ($NOTIFY_SOCKET unset): \
             layer connections will not outlive this process"
        );
        return None;
    }
    Some(Arc::new(SystemdFdStore::new(
        &root.join(SYSTEMD_FD_DATA_DIR),
    )))
}

/// The store of pods' pull credentials `[cri] image_service_socket` asks for (`None`:
/// no CRI proxy, no such credentials).
pub fn pod_credentials(config: &Config) -> Option<Arc<PodCredentials>> {
    config.cri.image_service_socket.as_ref().map(|_| {
        Arc::new(PodCredentials::new(Duration::from_secs(
            config.cri.credential_lifetime_seconds,
        )))
    })
}

/// The CRI image-service proxy of `[cri]`, recording into `credentials` (`None` when no
/// `image_service_socket` is configured).
pub fn image_proxy(
    config: &Config,
    credentials: Option<Arc<PodCredentials>>,
) -> Result<Option<ImageProxy>, DaemonError> {
    let (Some(_), Some(credentials)) = (&config.cri.image_service_socket, credentials) else {
        return Ok(None);
    };
    let provider = config.cri.credential_provider.clone().map(|command| {
        CredentialProvider::new(command, config.cri.credential_provider_args.clone())
    });
    ImageProxy::new(&config.cri.containerd_socket, credentials, provider)
        .map(Some)
        .map_err(|e| DaemonError::Wiring(format!("setting up the CRI proxy: {e}")))
}

/// The snapshots service for `config`: lazy layers when enabled, asking `credentials`
/// (the CRI proxy's) before the docker config.
pub fn snapshots_service(
    config: &Config,
    snapshotter: OverlaySnapshotter,
    credentials: Option<Arc<PodCredentials>>,
) -> Result<Service, DaemonError> {
    if !config.lazy.enabled {
        return Ok(Service::new(snapshotter));
    }
    let mut registry = registry_options(config);
    registry.credential_store = credentials.map(|c| SharedCredentialStore::new(c));
    let keeps_connections = snapshotter.has_fd_store();
    let lazy = image_service(config, registry, tokio::runtime::Handle::current())?
        .with_mount_options(mount_options(config, keeps_connections));
    Ok(Service::with_resolver(snapshotter, Arc::new(lazy)))
}

/// The image service options of `veil-guest`: as [`lazy_options`], but plain layers
/// streamed too (no containerd in the guest to unpack them), and the disk cache only when
/// `[cache] disk_dir` is set explicitly (a scratch disk; the default `<root>/cache` is a
/// host path, and in the guest `/run` is RAM). Without a disk cache nothing is fetched in
/// the background.
pub fn guest_lazy_options(config: &Config) -> LazyOptions {
    let disk_cache = if config.cache.disk_dir.is_some() {
        disk_cache(config)
    } else {
        None
    };
    LazyOptions {
        stream_plain: true,
        ..lazy_options_with(config, disk_cache)
    }
}

/// How often start-up looks for the upstream socket while it waits for it.
pub const UPSTREAM_POLL: Duration = Duration::from_millis(100);

/// File name of a `kbs://` resource of `cdh.toml` once fetched, in `work_dir`.
pub const FETCHED_POLICY: &str = "cdh-image-security-policy.json";
/// File name of fetched registry credentials, in `work_dir`.
pub const FETCHED_CREDENTIALS: &str = "cdh-registry-auth.json";

/// Where the policy and the credentials come from: `[guest] image_security_policy` and
/// `registry_auth_file` win; else the `[image]` keys of CDH's `cdh.toml`
/// ([`GuestConfig::cdh_config_path`](crate::config::GuestConfig::cdh_config_path)); a
/// `kbs://` URI there is fetched now through CDH's `GetResource` on the upstream socket
/// and written to `work_dir` (mode 0600; `work_dir` is 0700, in guest memory or on the
/// encrypted scratch disk).
pub async fn guest_options(config: &Config) -> Result<GuestOptions, DaemonError> {
    let g = &config.guest;
    let mut policy = g.image_security_policy.clone();
    let mut auth = g.registry_auth_file.clone();
    if let Some(path) = g.cdh_config_path() {
        let cdh = CdhImageConfig::load(&path)
            .map_err(|e| DaemonError::Wiring(format!("[guest] cdh_config: {e}")))?;
        if !cdh.not_applied.is_empty() {
            tracing::warn!(cdh_config = %path.display(), keys = ?cdh.not_applied, "CDH [image] keys Veil does not apply");
        }
        for (slot, found, name) in [
            (&mut policy, cdh.policy, FETCHED_POLICY),
            (&mut auth, cdh.credentials, FETCHED_CREDENTIALS),
        ] {
            if slot.is_some() {
                continue;
            }
            *slot = match found {
                None => None,
                Some(ResourceLocation::File(p)) => Some(p),
                Some(ResourceLocation::Kbs(uri)) => {
                    Some(fetch_cdh_resource(config, &path, &uri, name).await?)
                }
            };
        }
    }
    Ok(GuestOptions {
        work_dir: g.work_dir.clone(),
        policy,
        auth_file: auth,
        watch_interval: Duration::from_millis(g.watch_interval_ms.max(10)),
    })
}

/// Fetches the `kbs://` resource `uri` (named in `cdh_config`) through CDH's
/// `GetResource` on the upstream socket into `work_dir/name`; the file's path.
async fn fetch_cdh_resource(
    config: &Config,
    cdh_config: &Path,
    uri: &str,
    name: &str,
) -> Result<PathBuf, DaemonError> {
    use prost::Message as _;
    let g = &config.guest;
    let fail = |m: String| {
        DaemonError::Wiring(format!(
            "{uri} (named in {}): through the CDH at {}: {m}",
            cdh_config.display(),
            g.upstream_socket.display()
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(g.upstream_wait_seconds);
    while !g.upstream_socket.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(UPSTREAM_POLL).await;
    }
    let request = veil_cdh::proto::GetResourceRequest {
        resource_path: uri.to_string(),
    };
    let payload = veil_cdh::client::unary_call(
        &g.upstream_socket,
        veil_cdh::kek::GET_RESOURCE_SERVICE,
        veil_cdh::kek::GET_RESOURCE_METHOD,
        request.encode_to_vec(),
        DEFAULT_GET_RESOURCE_TIMEOUT,
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let resource = veil_cdh::proto::GetResourceResponse::decode(&payload[..])
        .map_err(|e| fail(format!("not an api.GetResourceResponse: {e}")))?
        .resource;
    veil_image::image_mount::create_private_dir(&g.work_dir)
        .map_err(|e| fail(format!("creating {}: {e}", g.work_dir.display())))?;
    let file = g.work_dir.join(name);
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)?;
        f.write_all(&resource)
    };
    write().map_err(|e| fail(format!("writing {}: {e}", file.display())))?;
    tracing::info!(uri, file = %file.display(), "fetched a cdh.toml resource through CDH");
    Ok(file)
}

/// Writes the config the real CDH is started with (the drop-in
/// `confidential-data-hub.service.d/10-veil-upstream.conf`): CDH's own config
/// (`[guest] cdh_config`, or CDH's defaults when there is none) with its `socket` moved to
/// `[guest] upstream_socket`. Mode 0600: a cdh.toml may hold credentials.
pub fn write_upstream_cdh_config(config: &Config, out: &Path) -> Result<(), DaemonError> {
    let g = &config.guest;
    let source = g.cdh_config_path();
    let original = match &source {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            DaemonError::Wiring(format!("[guest] cdh_config {}: {e}", p.display()))
        })?),
        None => None,
    };
    let text = crate::cdh_toml::with_upstream_socket(
        original.as_deref(),
        &g.upstream_socket,
        source.as_deref().unwrap_or(Path::new("(CDH's defaults)")),
    )
    .map_err(|e| DaemonError::Wiring(e.to_string()))?;
    let fail = |e: std::io::Error| DaemonError::Wiring(format!("writing {}: {e}", out.display()));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)
}

/// What `veil-guest` runs: the guest puller (on its image service), the front door's
/// config, and the attestation agent's socket.
pub struct GuestService {
    /// The puller `PullImage` calls.
    pub puller: Arc<GuestPuller>,
    /// Its layer service (for the status report the metrics are rendered from).
    pub lazy: Arc<LazyLayers>,
    /// Where the front door listens and forwards.
    pub front_door: FrontDoorConfig,
    /// The attestation agent: each pull is recorded in the runtime measurements.
    pub aa_socket: PathBuf,
    /// Whether layer connections are kept in an fd store (a stop leaves them to the
    /// next process).
    pub keeps_connections: bool,
}

/// The guest service `config` asks for (see [`guest_options`], [`guest_lazy_options`]);
/// run on the runtime that will serve it.
pub async fn guest_service(config: &Config) -> Result<GuestService, DaemonError> {
    let options = guest_options(config).await?;
    let registry = veil_guest::registry_options(registry_options(config), &options);
    let registry = RegistryClient::new(registry)
        .map_err(|e| DaemonError::Wiring(format!("setting up the registry client: {e}")))?;
    let store = fd_store(config, &config.guest.work_dir);
    let keeps_connections = store.is_some();
    let cache = Arc::new(ChunkCache::new(config.cache.memory_bytes));
    let lazy = LazyLayers::new(registry, cache, tokio::runtime::Handle::current())
        .with_options(guest_lazy_options(config))
        .with_mount_options(mount_options(config, keeps_connections));
    let kept = take_kept(store.as_ref()).await;
    let keeper = store.map(|s| Arc::new(StoreKeeper(s)) as Arc<dyn ConnectionKeeper>);
    let lazy = Arc::new(lazy);
    let for_puller = lazy.clone();
    let puller =
        tokio::task::spawn_blocking(move || GuestPuller::new_keeping(for_puller, options, keeper))
            .await
            .map_err(|e| DaemonError::Wiring(format!("starting the guest puller: {e}")))?
            .map_err(|e| DaemonError::Wiring(format!("starting the guest puller: {e}")))?;
    if !kept.is_empty() {
        let offered = kept.len();
        let resumed = puller.resume_kept(kept).await;
        tracing::info!(
            offered,
            resumed,
            "the fd store handed back layer connections"
        );
    }
    let g = &config.guest;
    let mut front_door = FrontDoorConfig::new(&g.socket, &g.upstream_socket);
    front_door.shutdown_grace = Duration::from_secs(g.shutdown_grace_seconds);
    Ok(GuestService {
        puller: Arc::new(puller),
        lazy,
        front_door,
        aa_socket: g.aa_socket.clone(),
        keeps_connections,
    })
}

/// The fd store as the guest puller's connection keeper.
struct StoreKeeper(Arc<dyn FdKeeper>);

impl ConnectionKeeper for StoreKeeper {
    fn keep(&self, name: &str, data: &[u8], fd: BorrowedFd<'_>) -> Result<(), String> {
        self.0.store(name, data, fd).map_err(|e| e.to_string())
    }

    fn forget(&self, name: &str) -> Result<(), String> {
        self.0.remove(name).map_err(|e| e.to_string())
    }
}

/// What the fd store kept for the guest puller (an earlier process's layer
/// connections). An unreachable store is logged: nothing is resumed then.
async fn take_kept(store: Option<&Arc<dyn FdKeeper>>) -> Vec<KeptConnection> {
    let Some(store) = store.cloned() else {
        return Vec::new();
    };
    let what = store.describe();
    match tokio::task::spawn_blocking(move || store.take_all()).await {
        Ok(Ok(stored)) => stored
            .into_iter()
            .map(|s| KeptConnection {
                name: s.name,
                data: s.data,
                fd: s.fd,
            })
            .collect(),
        Ok(Err(e)) => {
            tracing::error!(store = %what, error = %e,
                "cannot reach the fd store: running containers' layers are not served again, \
                 and new connections will not outlive this process");
            Vec::new()
        }
        Err(e) => {
            tracing::error!(error = %e, "asking the fd store failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kbs_source_without_a_url_is_a_configuration_error() {
        let config = Config {
            decryption: DecryptionConfig {
                kek_sources: vec![KekSourceKind::Kbs],
                ..DecryptionConfig::default()
            },
            ..Config::default()
        };
        let err = kek_chain(&config).err().unwrap().to_string();
        assert!(err.contains("needs [decryption] kbs_url"), "{err}");
    }

    #[test]
    fn limits_come_from_the_limits_section() {
        assert_eq!(limits(&LimitsConfig::default()), Limits::default());
        let config = Config::from_toml(
            "[limits]\nmax_chunk_size = 4194304\nmax_compressed_chunk_size = 8388608\n\
             max_path_depth = 64\nmax_index_bytes_per_toc_byte = 4\n\
             max_tree_bytes_per_index_byte = 2\n",
            Path::new("x"),
        )
        .unwrap();
        let want = Limits {
            max_chunk_size: 4 << 20,
            max_compressed_chunk_size: 8 << 20,
            max_path_depth: 64,
            max_index_bytes_per_toc_byte: 4,
            max_tree_bytes_per_index_byte: 2,
        };
        assert_eq!(limits(&config.limits), want);
        assert_eq!(want.validate(), Ok(()));
    }

    #[test]
    fn passthrough_comes_from_the_cache_section_and_is_kept_with_an_fd_store() {
        let default = mount_options(&Config::default(), false).promote;
        assert_eq!(default, veil_fusefs::promote::PromoteOptions::default());
        let config = Config::from_toml(
            "[cache]\npassthrough = false\npassthrough_min_bytes = 4096\n",
            Path::new("x"),
        )
        .unwrap();
        let off = mount_options(&config, false).promote;
        assert_eq!((off.enabled, off.min_size), (false, 4096));
        let kept = mount_options(&Config::default(), true).promote;
        assert!(kept.enabled && kept.keep_for_restart);
        assert!(!default.keep_for_restart);
    }
}
