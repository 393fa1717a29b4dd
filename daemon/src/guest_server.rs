//! Running `veil-guest`: Veil on the Confidential Data Hub's socket inside a CoCo guest.
//!
//! The front door (`veil_cdh::front`) binds kata-agent's socket and forwards everything
//! but `PullImage` to the real CDH; `PullImage` goes to [`GuestPullHandler`]: the guest
//! puller mounts the root and writes the bundle's `config.json`, then the pull is
//! recorded in the TEE's runtime measurements through the attestation agent, as CDH does,
//! before the answer. A measurement that fails fails the pull (the root is taken down
//! again first).
//!
//! Stopping (SIGTERM / SIGINT): the socket stops accepting and is removed, running pulls
//! get `[guest] shutdown_grace_seconds` to finish (then they are cancelled and undone).
//! Containers that are running (pulled by this process or adopted from an earlier one)
//! keep their root overlays mounted: the puller is left as it is
//! ([`GuestPuller::leave_mounted`]) and the process exits. With an fd store
//! (`fd_store_socket`, or systemd's: `systemd_fd_store`) each layer's FUSE connection is
//! held there, the process exits at once (reads in flight are resent to the next one,
//! `FUSE_NOTIFY_RESEND`), and the next start serves the adopted roots' layers on the
//! same connections: running containers' reads pause, never fail. Without one, reads of
//! those containers that the kernel has not cached fail (`ENOTCONN`) until the pod goes;
//! the next start adopts the mounts and cleans them up once the roots are unmounted.
//! With no container running, everything is taken down.
//!
//! With `[metrics] address`, it serves the same Prometheus page as veil-snapshotter
//! ([`crate::metrics_server`]), rendered from its layer service's status (no snapshot
//! counts: the guest has no snapshots).

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use veil_cdh::front::{FrontDoor, PullFailure, PullHandler};
use veil_cdh::measure::record_image_pull;
use veil_guest::spec::BUNDLE_CONFIG;
use veil_guest::GuestPuller;
use veil_image::layers::LazyLayers;
use veil_image::resolver::LayerResolver;
use veil_image::status::StatusReport;

use crate::config::Config;
use crate::error::DaemonError;
use crate::no_core_dumps::forbid_core_dumps;
use crate::signals::shutdown_signal;
use crate::wiring::{guest_service, metrics_endpoint};

/// `PullImage`: the guest puller, then the runtime measurement.
pub struct GuestPullHandler {
    puller: Arc<GuestPuller>,
    aa_socket: PathBuf,
}

impl GuestPullHandler {
    /// Pulls with `puller`, recording each pull with the attestation agent on `aa_socket`.
    pub fn new(puller: Arc<GuestPuller>, aa_socket: PathBuf) -> Self {
        Self { puller, aa_socket }
    }
}

/// A pulled root not answered yet: released if the pull future is dropped (deadline,
/// disconnect, shutdown) before the answer, or the pull fails after all. Undone the whole
/// way, `config.json` too, so kata-agent may pull into the bundle again.
struct Unanswered {
    puller: Arc<GuestPuller>,
    bundle: Option<PathBuf>,
}

impl Unanswered {
    /// The pull is answered: keep the root.
    fn answered(mut self) {
        self.bundle = None;
    }

    /// Takes the root down now (the pull fails).
    async fn release(mut self) {
        if let Some(bundle) = self.bundle.take() {
            undo(&self.puller, &bundle).await;
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let Some(bundle) = self.bundle.take() else {
            return;
        };
        let puller = self.puller.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tracing::info!(bundle = %bundle.display(), "pull cancelled after its root was mounted: releasing it");
                    undo(&puller, &bundle).await;
                });
            }
            Err(_) => {
                tracing::warn!(bundle = %bundle.display(), "pull cancelled outside a runtime: its root stays until unmounted")
            }
        }
    }
}

/// Takes down what a pull into `bundle` made: the root, its layers, `config.json`.
async fn undo(puller: &GuestPuller, bundle: &std::path::Path) {
    if let Err(e) = puller.release(bundle).await {
        tracing::warn!(bundle = %bundle.display(), error = %e, "cannot release a pull that failed");
    }
    let config = bundle.join(BUNDLE_CONFIG);
    if let Err(e) = std::fs::remove_file(&config) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %config.display(), error = %e, "cannot remove the spec of a pull that failed");
        }
    }
}

impl PullHandler for GuestPullHandler {
    fn pull_image(
        &self,
        image_url: String,
        bundle_path: PathBuf,
    ) -> BoxFuture<'_, Result<String, PullFailure>> {
        Box::pin(async move {
            let pulled = self
                .puller
                .pull(&image_url, &bundle_path)
                .await
                .map_err(|e| PullFailure::from_error(&e))?;
            let unanswered = Unanswered {
                puller: self.puller.clone(),
                bundle: Some(bundle_path.clone()),
            };
            match record_image_pull(&self.aa_socket, &image_url, &pulled.manifest_digest).await {
                Ok(outcome) => {
                    tracing::info!(image = %image_url, digest = %pulled.manifest_digest, measurement = ?outcome, "PullImage answered");
                    unanswered.answered();
                    Ok(pulled.manifest_digest)
                }
                Err(e) => {
                    unanswered.release().await;
                    Err(PullFailure::from_error(&e))
                }
            }
        })
    }
}

/// The status report of the guest's layers (what its metrics are rendered from).
fn guest_report(lazy: &LazyLayers) -> StatusReport {
    let mut report = StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };
    lazy.fill_status(&mut report);
    report
}

/// Serves kata-agent's socket for `config` until SIGTERM or SIGINT (see the module doc).
pub async fn serve(config: &Config) -> Result<(), DaemonError> {
    forbid_core_dumps()?;
    crate::malloc::map_large_allocations();
    // Before anything can report readiness: a SIGTERM from then on stops us cleanly.
    let shutdown = shutdown_signal();
    // The recorder first: what the puller records from the start is counted.
    let metrics = match metrics_endpoint(config)? {
        Some(endpoint) => Some(crate::metrics_server::listen(endpoint).await?),
        None => None,
    };
    let service = guest_service(config).await?;
    let keeps_connections = service.keeps_connections;
    let puller = service.puller.clone();
    let handler = Arc::new(GuestPullHandler::new(
        service.puller.clone(),
        service.aa_socket.clone(),
    ));
    drop(service.puller);
    let door = FrontDoor::bind(service.front_door.clone(), handler)
        .await
        .map_err(|e| DaemonError::Wiring(format!("[guest] socket: {e}")))?;
    tracing::info!(
        socket = %service.front_door.socket.display(),
        upstream = %service.front_door.upstream.display(),
        aa_socket = %service.aa_socket.display(),
        work_dir = %config.guest.work_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "veil-guest ready"
    );
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd of readiness");
    }
    let metrics_task = metrics.map(|(listener, endpoint)| {
        tracing::info!(address = %endpoint.address, "serving Prometheus metrics on /metrics");
        let lazy = service.lazy.clone();
        tokio::spawn(crate::metrics_server::serve(
            listener,
            endpoint,
            move || guest_report(&lazy),
        ))
    });
    let token = CancellationToken::new();
    let mut task = tokio::spawn(door.run(token.clone()));
    let ended_early = tokio::select! {
        _ = shutdown => false,
        _ = &mut task => true,
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(task) = metrics_task {
        task.abort();
    }
    if !ended_early {
        token.cancel();
        let _ = task.await;
    }
    let running = puller.bundles().len() + puller.adopted_roots();
    if running == 0 {
        tokio::task::spawn_blocking(move || puller.shutdown())
            .await
            .map_err(|e| DaemonError::Wiring(format!("shutting the guest puller down: {e}")))?;
    } else if keeps_connections {
        // The fd store holds every layer connection: the next process serves them on.
        // Exit now: dropping the runtime would drop reads in flight, answered EIO.
        puller.leave_mounted();
        let _ = std::fs::remove_file(&service.front_door.socket);
        tracing::info!(
            containers = running,
            "stopped; layer mounts and their connections left to the next process"
        );
        std::process::exit(if ended_early { 1 } else { 0 });
    } else {
        tracing::warn!(
            containers = running,
            "containers are running: their roots stay mounted (their layers are served by \
             this process: reads the kernel has not cached fail until the pod goes)"
        );
        puller.leave_mounted();
    }
    if ended_early {
        return Err(DaemonError::Wiring("the CDH front door stopped".into()));
    }
    tracing::info!("stopped");
    Ok(())
}
