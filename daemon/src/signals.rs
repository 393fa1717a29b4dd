//! Stopping: the signals that end Veil's servers.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves when SIGTERM or SIGINT arrives (and logs which). If the handlers cannot be
/// installed it never resolves (the process is then stopped by SIGKILL only), and says so
/// in the log.
pub async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install SIGTERM/SIGINT handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
}
