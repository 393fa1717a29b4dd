//! Stopping: the signals that end Veil's servers.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Installs the SIGTERM and SIGINT handlers **now** and returns a future that resolves
/// (and logs which) when one arrives. Call it before the server says it is ready: a
/// signal that arrives between readiness and the first poll of the future must not kill
/// the process with the default action (it did, under load, right after a restart). If
/// the handlers cannot be installed the future never resolves (the process is then
/// stopped by SIGKILL only), and the log says so.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install SIGTERM/SIGINT handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutting down");
    }
}
