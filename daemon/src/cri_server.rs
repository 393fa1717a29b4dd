//! Serving Veil's CRI image-service proxy beside the snapshots API: its socket, its
//! tonic server, its end when the daemon stops.

use std::path::PathBuf;

use tokio::task::JoinHandle;
use veil_cri::ImageProxy;

use crate::error::DaemonError;
use crate::socket::bind_unix;

/// The running proxy: its socket and its server task.
pub struct CriProxyServer {
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl CriProxyServer {
    /// Binds `socket` and serves `proxy` on it until [`stop`](Self::stop).
    pub async fn start(socket: PathBuf, proxy: ImageProxy) -> Result<Self, DaemonError> {
        let listener = bind_unix(&socket).await?;
        tracing::info!(socket = %socket.display(), "CRI image-service proxy ready");
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(proxy.into_service())
                .serve_with_incoming(crate::grpc_unix::incoming(listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the CRI image-service proxy stopped");
            }
        });
        Ok(Self { socket, task })
    }

    /// Stops serving and removes the socket.
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}
