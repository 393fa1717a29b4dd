//! Running the daemon: the unix sockets, the gRPC server, signals and systemd readiness.
//!
//! Readiness means "the sockets accept requests", not "every image is whole": a remote
//! layer that could not be mounted again does not keep other images from being served.
//! It is reported instead: `veil status` lists it under `failed`, snapshots stacked on it
//! are refused with `UNAVAILABLE`, and systemd's status line (`systemctl status`) says
//! `degraded: N layers not mounted` until it mounts ([`HEALTH_POLL`]).
//!
//! With an fd store (`fd_store_socket`), start-up takes back the layer connections the
//! previous process left there and serves them again, and SIGTERM exits without
//! unmounting anything: a restart or an upgrade only pauses running containers' reads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use veil_snapshotter::fdstore::FdKeeper;
use veil_snapshotter::handover::{self, HandedLayer};
use veil_snapshotter::overlay::OverlaySnapshotter;
use veil_snapshotter::service::Service;

use crate::config::Config;
use crate::cri_server::CriProxyServer;
use crate::error::DaemonError;
use crate::no_core_dumps::forbid_core_dumps;
use crate::signals::shutdown_signal;
use crate::socket::bind_unix;
use crate::status_server::status_address;
use crate::wiring::{fd_store, image_proxy, metrics_endpoint, pod_credentials, snapshots_service};

/// Serves the snapshots API for `config` until SIGTERM or SIGINT. The process is made
/// non-dumpable first ([`forbid_core_dumps`]): it is about to hold keys and plaintext.
pub async fn serve(config: &Config) -> Result<(), DaemonError> {
    forbid_core_dumps()?;
    crate::malloc::map_large_allocations();
    // Before anything can report readiness: a SIGTERM from then on stops us cleanly.
    let shutdown = shutdown_signal();
    let fd_store = fd_store(config, &config.root);
    let handed = take_handed_layers(fd_store.as_ref()).await;
    let keep: HashSet<u64> = handed.keys().copied().collect();
    let root = config.root.clone();
    let opened =
        tokio::task::spawn_blocking(move || OverlaySnapshotter::open_keeping(&root, &keep)).await;
    let context = || format!("opening snapshotter root {}", config.root.display());
    let snapshotter = match opened {
        Ok(result) => result.map_err(|cause| DaemonError::Snapshotter {
            context: context(),
            cause,
        })?,
        Err(e) => return Err(DaemonError::Wiring(format!("{}: {e}", context()))),
    };
    let snapshotter = match &fd_store {
        Some(store) => snapshotter.with_fd_store(store.clone()),
        None => snapshotter,
    };
    let credentials = pod_credentials(config);
    let proxy = image_proxy(config, credentials.clone())?;
    let service = snapshots_service(config, snapshotter, credentials)?.with_handed_layers(handed);
    // Remote layers are mounted again before containerd can ask for them.
    let attached =
        service
            .attach_remote_layers()
            .await
            .map_err(|cause| DaemonError::Snapshotter {
                context: "mounting remote layers again".into(),
                cause,
            })?;
    if attached > 0 {
        tracing::info!(attached, "mounted remote layers again");
    }
    let failed = service.status().failed.len();
    if failed > 0 {
        tracing::warn!(
            failed,
            "ready, but not healthy: remote layers could not be mounted again (see `veil status`)"
        );
    }
    let metrics = match metrics_endpoint(config)? {
        Some(endpoint) => Some(crate::metrics_server::listen(endpoint).await?),
        None => None,
    };
    let status_path = status_address(&config.address);
    let status_listener = bind_unix(&status_path).await?;
    let cri_proxy = match (proxy, &config.cri.image_service_socket) {
        (Some(proxy), Some(socket)) => Some(CriProxyServer::start(socket.clone(), proxy).await?),
        _ => None,
    };
    let listener = bind_unix(&config.address).await?;
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
    let health_task = tokio::spawn(report_health(service.clone()));
    let for_status = service.clone();
    let for_exit = service.clone();
    let status_task = tokio::spawn(crate::status_server::serve(
        status_listener,
        ServiceStatus(for_status),
    ));
    let metrics_task = metrics.map(|(listener, endpoint)| {
        tracing::info!(address = %endpoint.address, "serving Prometheus metrics on /metrics");
        let service = service.clone();
        tokio::spawn(crate::metrics_server::serve(
            listener,
            endpoint,
            move || service.status(),
        ))
    });
    let result = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(service))
        .serve_with_incoming_shutdown(crate::grpc_unix::incoming(listener), async {
            shutdown.await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        })
        .await;
    status_task.abort();
    health_task.abort();
    if let Some(proxy) = cri_proxy {
        proxy.stop();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    if fd_store.is_some() {
        // The fd store holds every connection: the next process serves them on. Exit
        // now: dropping the runtime would drop reads in flight, and fuser answers a
        // dropped reply with EIO (a container would see it, or SIGBUS). Unanswered
        // requests are resent to the next process instead (FUSE_NOTIFY_RESEND).
        for_exit.keep_mounted();
        let _ = std::fs::remove_file(&config.address);
        let _ = std::fs::remove_file(&status_path);
        tracing::info!("stopped; layer mounts left to the next process");
        std::process::exit(0);
    }
    let _ = std::fs::remove_file(&config.address);
    let _ = std::fs::remove_file(&status_path);
    result.map_err(|cause| DaemonError::Serve {
        context: "serving the snapshots API".into(),
        cause,
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// The connections the fd store holds for us (handed over by the previous process), by
/// snapshot ID. An unreachable store is logged: layers are then mounted afresh.
async fn take_handed_layers(store: Option<&Arc<dyn FdKeeper>>) -> HashMap<u64, HandedLayer> {
    let Some(store) = store.cloned() else {
        return HashMap::new();
    };
    let taken = tokio::task::spawn_blocking(move || {
        let taken = store.take_all();
        (store, taken)
    })
    .await;
    let (store, stored) = match taken {
        Ok((store, Ok(stored))) => (store, stored),
        Ok((store, Err(e))) => {
            tracing::error!(store = %store.describe(), error = %e,
                "cannot reach the fd store: layers are mounted afresh, and their connections \
                 will not outlive this process");
            return HashMap::new();
        }
        Err(e) => {
            tracing::error!(error = %e, "asking the fd store failed");
            return HashMap::new();
        }
    };
    let (layers, foreign) = handover::decode(stored);
    for name in foreign {
        let _ = store.remove(&name);
    }
    if !layers.is_empty() {
        tracing::info!(
            count = layers.len(),
            store = %store.describe(),
            "the fd store handed back layer connections"
        );
    }
    layers
}

/// How often the daemon's health (failed layers) is checked for systemd's status line.
pub const HEALTH_POLL: Duration = Duration::from_secs(2);

/// Keeps systemd's status line (`STATUS=`) saying whether every remote layer on record
/// is mounted.
async fn report_health(service: Arc<Service>) {
    let mut last = None;
    loop {
        let failed = service.status().failed.len();
        if last != Some(failed) {
            let line = if failed == 0 {
                "serving; every remote layer mounted".to_string()
            } else {
                format!("degraded: {failed} remote layers not mounted (see `veil status`)")
            };
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
            last = Some(failed);
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// The snapshotter service as the status socket's source.
struct ServiceStatus(Arc<Service>);

impl crate::status_server::StatusSource for ServiceStatus {
    fn report(&self) -> veil_image::status::StatusReport {
        self.0.status()
    }

    fn access_orders(&self, digest: &str) -> Vec<veil_image::status::AccessOrder> {
        self.0.access_orders(digest)
    }
}
