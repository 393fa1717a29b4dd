//! The status socket (`veil status`): `status.sock` beside the snapshots socket, in the
//! daemon's root-only directory. A client connects, may write one JSON
//! [`StatusRequest`] line, and reads the answer, then the connection closes: with no
//! request (the client writes nothing, or shuts its side at once) the [`StatusReport`];
//! with `{"access_order": "DIGEST"}` (or `"all"`) the access order of that layer, a JSON
//! list of [`AccessOrder`]. The access order names files, plaintext of an encrypted
//! layer: it is only sent when asked for, on this socket, and never logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use veil_image::status::{AccessOrder, StatusReport, StatusRequest};

/// How long the server waits for a client's request line before it answers with the
/// report (clients that only read never write one).
pub const REQUEST_WAIT: Duration = Duration::from_millis(200);
/// Longest request line read.
const MAX_REQUEST_BYTES: u64 = 4096;

/// The status socket of a daemon serving on `address`: `status.sock` beside it.
pub fn status_address(address: &Path) -> PathBuf {
    address.with_file_name("status.sock")
}

/// What the status socket answers with: the report, and access orders by layer.
pub trait StatusSource: Send + Sync + 'static {
    /// The daemon's status now.
    fn report(&self) -> StatusReport;
    /// The access order of layer `digest` (`"all"`: every layer).
    fn access_orders(&self, digest: &str) -> Vec<AccessOrder>;
}

impl<F: Fn() -> StatusReport + Send + Sync + 'static> StatusSource for F {
    fn report(&self) -> StatusReport {
        self()
    }

    fn access_orders(&self, _digest: &str) -> Vec<AccessOrder> {
        Vec::new()
    }
}

/// Reads the client's request line, if it writes one within [`REQUEST_WAIT`]. `Err`:
/// a line that is not a request.
async fn read_request(
    stream: &mut tokio::net::UnixStream,
) -> Result<StatusRequest, serde_json::Error> {
    use tokio::io::AsyncReadExt;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stream).take(MAX_REQUEST_BYTES);
    match tokio::time::timeout(REQUEST_WAIT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if !line.trim().is_empty() => serde_json::from_str(line.trim()),
        _ => Ok(StatusRequest::default()),
    }
}

/// Whether the peer may see file names: root, or the daemon's own user.
fn may_see_file_names(stream: &tokio::net::UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .map(|cred| cred.uid() == 0 || cred.uid() == own)
        .unwrap_or(false)
}

/// The answer to `request` from a peer that may (`trusted`) see file names or not.
fn answer(
    source: &dyn StatusSource,
    request: Result<StatusRequest, serde_json::Error>,
    trusted: bool,
) -> Vec<u8> {
    let encoded = match request {
        Ok(StatusRequest {
            access_order: Some(_),
        }) if !trusted => Ok(br#"{"error": "the access order names files: root only"}"#.to_vec()),
        Ok(StatusRequest {
            access_order: Some(digest),
        }) => serde_json::to_vec_pretty(&source.access_orders(&digest)),
        Ok(_) => serde_json::to_vec_pretty(&source.report()),
        Err(e) => Ok(format!("{{\"error\": \"not a status request: {e}\"}}").into_bytes()),
    };
    encoded.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not encode status");
        Vec::new()
    })
}

/// Answers status requests on `listener` from `source`, until the task is dropped.
pub async fn serve<S: StatusSource>(listener: tokio::net::UnixListener, source: S) {
    let source = std::sync::Arc::new(source);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let request = read_request(&mut stream).await;
            let trusted = may_see_file_names(&stream);
            let body = answer(source.as_ref(), request, trusted);
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}
