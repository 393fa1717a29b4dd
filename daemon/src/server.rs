//! Running the daemon: the unix sockets, the gRPC server, signals and systemd readiness.
//!
//! Readiness means "the sockets accept requests", not "every image is whole": a remote
//! layer that could not be mounted again does not keep other images from being served.
//! It is reported instead: `veil status` lists it under `failed`, snapshots stacked on it
//! are refused with `UNAVAILABLE`, and systemd's status line (`systemctl status`) says
//! `degraded: N layers not mounted` until it mounts ([`HEALTH_POLL`]).

use std::sync::Arc;
use std::time::Duration;

use veil_snapshotter::overlay::OverlaySnapshotter;
use veil_snapshotter::service::Service;

use crate::config::Config;
use crate::error::DaemonError;
use crate::no_core_dumps::forbid_core_dumps;
use crate::signals::shutdown_signal;
use crate::socket::bind_unix;
use crate::status_server::status_address;
use crate::wiring::snapshots_service;

/// Serves the snapshots API for `config` until SIGTERM or SIGINT. The process is made
/// non-dumpable first ([`forbid_core_dumps`]): it is about to hold keys and plaintext.
pub async fn serve(config: &Config) -> Result<(), DaemonError> {
    forbid_core_dumps()?;
    // Before anything can report readiness: a SIGTERM from then on stops us cleanly.
    let shutdown = shutdown_signal();
    let root = config.root.clone();
    let opened = tokio::task::spawn_blocking(move || OverlaySnapshotter::open(&root)).await;
    let context = || format!("opening snapshotter root {}", config.root.display());
    let snapshotter = match opened {
        Ok(result) => result.map_err(|cause| DaemonError::Snapshotter {
            context: context(),
            cause,
        })?,
        Err(e) => return Err(DaemonError::Wiring(format!("{}: {e}", context()))),
    };
    let service = snapshots_service(config, snapshotter)?;
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
    let status_path = status_address(&config.address);
    let status_listener = bind_unix(&status_path).await?;
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
    let status_task = tokio::spawn(crate::status_server::serve(status_listener, move || {
        for_status.status()
    }));
    let result = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(service))
        .serve_with_incoming_shutdown(crate::grpc_unix::incoming(listener), async {
            shutdown.await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        })
        .await;
    status_task.abort();
    health_task.abort();
    let _ = std::fs::remove_file(&config.address);
    let _ = std::fs::remove_file(&status_path);
    result.map_err(|cause| DaemonError::Serve {
        context: "serving the snapshots API".into(),
        cause,
    })?;
    tracing::info!("stopped");
    Ok(())
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
