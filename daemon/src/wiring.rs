//! Where the configuration becomes objects: the only place [`crate::config`] types are
//! read.
//!
//! The daemon, `veil mount` and `veil keyprovider serve` all build their parts here, so
//! one config file means the same thing to each: the registry client's options, the
//! plaintext and disk caches, the decryption keys and the KEK chain (with the attester),
//! the image service ([`LazyLayers`]), the snapshots service and the fd store client. Some of it does I/O
//! (opening the disk cache, loading keys, starting the KEK runtime thread, probing the
//! TEE); all of it happens here, at start-up, never in the layers below.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use veil_fusefs::cache::ChunkCache;
use veil_fusefs::disk_cache::DiskCache;
use veil_fusefs::prefetch::RateLimiter;
use veil_image::layers::{LazyLayers, LazyOptions};
use veil_keyprovider::kbs::attester::{self, AttesterKind};
use veil_keyprovider::kbs::{KbsClient, KbsClientConfig, KbsKekSource};
use veil_keyprovider::kek::{CdhKekSource, FileKekSource, KekChain, KekSource};
use veil_keyprovider::layer::Decryption;
use veil_registry::{ClientOptions, CredentialsSource, RegistryClient};
use veil_snapshotter::fdstore::FdStoreClient;
use veil_snapshotter::overlay::OverlaySnapshotter;
use veil_snapshotter::service::Service;

use crate::config::{Config, DecryptionConfig, KekSourceKind};
use crate::error::DaemonError;

/// Timeout of each KBS / CDH request.
pub const KEK_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
/// source is detected here). Runs on the thread the chain's HTTP clients will use.
pub fn kek_chain(config: &DecryptionConfig) -> Result<KekChain, DaemonError> {
    let wiring = |m: String| DaemonError::Wiring(m);
    let mut sources: Vec<Arc<dyn KekSource>> = Vec::new();
    for kind in &config.kek_sources {
        match kind {
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
pub fn decryption(config: &DecryptionConfig) -> Decryption {
    let decryption = Decryption::load(&config.keys_dir, config.require_sealed_toc);
    if config.kek_sources.is_empty() {
        return decryption;
    }
    let owned = config.clone();
    decryption.with_kek_chain(move || kek_chain(&owned))
}

/// The image service options the config asks for: the disk cache (opened here),
/// prefetch, background fetching and its rate, decryption.
pub fn lazy_options(config: &Config) -> LazyOptions {
    LazyOptions {
        disk_cache: disk_cache(config),
        prefetch: config.lazy.prefetch,
        background_fetch: config.lazy.background_fetch,
        background_rate: match config.lazy.background_rate {
            0 => None,
            rate => Some(RateLimiter::new(rate)),
        },
        decryption: Some(Arc::new(decryption(&config.decryption))),
    }
}

/// The image service for `config`, reaching registries with `registry` (normally
/// [`registry_options`] of the same config), running reads on `runtime`.
pub fn image_service(
    config: &Config,
    registry: ClientOptions,
    runtime: tokio::runtime::Handle,
) -> Result<LazyLayers, DaemonError> {
    let registry = RegistryClient::new(registry)
        .map_err(|e| DaemonError::Wiring(format!("setting up the registry client: {e}")))?;
    let cache = Arc::new(ChunkCache::new(config.cache.memory_bytes));
    Ok(LazyLayers::new(registry, cache, runtime).with_options(lazy_options(config)))
}

/// The fd store client `fd_store_socket` asks for (`None`: connections are not kept
/// across restarts).
pub fn fd_store(config: &Config) -> Option<FdStoreClient> {
    config.fd_store_socket.as_deref().map(FdStoreClient::new)
}

/// The snapshots service for `config`: lazy layers when enabled.
pub fn snapshots_service(
    config: &Config,
    snapshotter: OverlaySnapshotter,
) -> Result<Service, DaemonError> {
    if !config.lazy.enabled {
        return Ok(Service::new(snapshotter));
    }
    let lazy = image_service(
        config,
        registry_options(config),
        tokio::runtime::Handle::current(),
    )?;
    Ok(Service::with_resolver(snapshotter, Arc::new(lazy)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kbs_source_without_a_url_is_a_configuration_error() {
        let config = DecryptionConfig {
            kek_sources: vec![KekSourceKind::Kbs],
            ..DecryptionConfig::default()
        };
        let err = kek_chain(&config).err().unwrap().to_string();
        assert!(err.contains("needs [decryption] kbs_url"), "{err}");
    }
}
