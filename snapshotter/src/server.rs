//! Running the daemon: the unix socket, the gRPC server, signals and systemd readiness.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::lazy::LazyLayers;
use crate::overlay::OverlaySnapshotter;
use crate::registry::{ClientOptions, CredentialsSource, RegistryClient};
use crate::service::Service;

/// The registry client options the daemon's config asks for.
pub fn registry_options(config: &Config) -> ClientOptions {
    let r = &config.registry;
    ClientOptions {
        insecure_registries: r.plain_http.clone(),
        hosts_dir: r.hosts_dir.clone(),
        ca_bundle: r.ca_bundle.clone(),
        credentials: match &r.docker_config {
            Some(p) => CredentialsSource::DockerConfigFile(p.clone()),
            None => CredentialsSource::DockerDefault,
        },
        ..ClientOptions::default()
    }
}

/// The snapshots service for `config`: lazy layers when enabled.
fn build_service(config: &Config, snapshotter: OverlaySnapshotter) -> anyhow::Result<Service> {
    if !config.lazy.enabled {
        return Ok(Service::new(snapshotter));
    }
    let registry =
        RegistryClient::new(registry_options(config)).context("setting up the registry client")?;
    let cache = Arc::new(veil_fusefs::cache::ChunkCache::new(
        config.cache.memory_bytes,
    ));
    let lazy = LazyLayers::new(registry, cache, tokio::runtime::Handle::current())
        .with_options(crate::lazy::LazyOptions::from_config(config));
    Ok(Service::with_resolver(snapshotter, Arc::new(lazy)))
}

/// Binds `address`, replacing a stale socket file but refusing to take over a socket
/// that another process still answers on.
async fn bind(address: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if address.exists() {
        if tokio::net::UnixStream::connect(address).await.is_ok() {
            bail!(
                "{} is in use: another snapshotter is already listening there",
                address.display()
            );
        }
        std::fs::remove_file(address)
            .with_context(|| format!("removing stale socket {}", address.display()))?;
    }
    let listener = UnixListener::bind(address)
        .with_context(|| format!("listening on {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode of {}", address.display()))?;
    Ok(listener)
}

/// The status socket (`veil status`): `status.sock` beside the snapshots socket.
pub fn status_address(address: &Path) -> std::path::PathBuf {
    address.with_file_name("status.sock")
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Serves the snapshots API for `config` until SIGTERM or SIGINT.
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let root = config.root.clone();
    let snapshotter = tokio::task::spawn_blocking(move || OverlaySnapshotter::open(&root))
        .await?
        .with_context(|| format!("opening snapshotter root {}", config.root.display()))?;
    let service = build_service(config, snapshotter)?;
    // Remote layers are mounted again before containerd can ask for them.
    let attached = service.attach_remote_layers().await?;
    if attached > 0 {
        tracing::info!(attached, "mounted remote layers again");
    }
    let status_path = status_address(&config.address);
    let status_listener = bind(&status_path).await?;
    let listener = bind(&config.address).await?;
    tracing::info!(
        root = %config.root.display(),
        address = %config.address.display(),
        version = env!("CARGO_PKG_VERSION"),
        "veil-snapshotter ready"
    );
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd of readiness");
    }
    let service = Arc::new(service);
    let for_status = service.clone();
    let status_task = tokio::spawn(crate::status::serve(status_listener, move || {
        for_status.status()
    }));
    let result = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;
    status_task.abort();
    let _ = std::fs::remove_file(&config.address);
    let _ = std::fs::remove_file(&status_path);
    result.context("serving the snapshots API")?;
    tracing::info!("stopped");
    Ok(())
}
