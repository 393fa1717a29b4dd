//! The status socket (`veil status`): `status.sock` beside the snapshots socket. A client
//! connects and reads one JSON [`StatusReport`], then the connection closes.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use veil_image::status::StatusReport;

/// The status socket of a daemon serving on `address`: `status.sock` beside it.
pub fn status_address(address: &Path) -> PathBuf {
    address.with_file_name("status.sock")
}

/// Answers status requests on `listener` with whatever `report` returns, until the task
/// is dropped.
pub async fn serve<F>(listener: tokio::net::UnixListener, report: F)
where
    F: Fn() -> StatusReport + Send + Sync + 'static,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let body = match serde_json::to_vec_pretty(&report()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not encode status");
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}
