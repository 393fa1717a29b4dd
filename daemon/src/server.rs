//! Running the daemon: the unix sockets, the gRPC server, signals and systemd readiness.

use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;
use veil_snapshotter::overlay::OverlaySnapshotter;

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
    let for_status = service.clone();
    let status_task = tokio::spawn(crate::status_server::serve(status_listener, move || {
        for_status.status()
    }));
    let result = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            shutdown_signal().await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        })
        .await;
    status_task.abort();
    let _ = std::fs::remove_file(&config.address);
    let _ = std::fs::remove_file(&status_path);
    result.map_err(|cause| DaemonError::Serve {
        context: "serving the snapshots API".into(),
        cause,
    })?;
    tracing::info!("stopped");
    Ok(())
}
