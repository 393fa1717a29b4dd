//! A minimal unary ttrpc client on a unix socket: one connection per call, one request
//! (stream 1), one response. Used for the rare calls Veil makes itself (a KEK from CDH's
//! `GetResource`, one `ExtendRuntimeMeasurement` per pull), so a restarted CDH or
//! attestation agent is simply reached again on the next call.
//!
//! Why not the `ttrpc` crate here: Veil already owns the frame codec (the front door must
//! forward at frame level, see [`crate::front`]), and the crate would bring a second
//! protobuf runtime (rust-protobuf 3, or prost 0.13 beside the workspace's 0.11) and
//! background connection tasks into the guest binary for two unary calls. The test tree's
//! stand-ins, on the other hand, *are* built on the `ttrpc` crate, so this client and the
//! front door are checked against an independent implementation of the protocol.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use thiserror::Error;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use zeroize::Zeroize;

use crate::frame::{self, Frame, FrameError, MAX_MESSAGE_LEN, TYPE_REQUEST, TYPE_RESPONSE};
use crate::proto::{self, code};

/// Why a unary call failed. Never holds payload bytes.
#[derive(Debug, Error)]
pub enum CallError {
    /// The socket could not be connected (absent, nobody listening, no permission).
    #[error("cannot connect to {}: {source}", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The connection failed while the call was under way.
    #[error("{service}/{method} on {}: {source}", socket.display())]
    Connection {
        /// The socket path.
        socket: PathBuf,
        /// Service called.
        service: String,
        /// Method called.
        method: String,
        /// What went wrong.
        source: FrameError,
    },
    /// The server closed the connection without answering.
    #[error("{service}/{method} on {}: the server closed the connection without an answer", socket.display())]
    NoAnswer {
        /// The socket path.
        socket: PathBuf,
        /// Service called.
        service: String,
        /// Method called.
        method: String,
    },
    /// No answer within the timeout.
    #[error("{service}/{method} on {}: no answer within {timeout:?}", socket.display())]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// Service called.
        service: String,
        /// Method called.
        method: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The server answered with an error status.
    #[error("{service}/{method} on {}: {} ({code}): {message}", socket.display(), code::name(*code))]
    Status {
        /// The socket path.
        socket: PathBuf,
        /// Service called.
        service: String,
        /// Method called.
        method: String,
        /// The `google.rpc.Code`.
        code: i32,
        /// The server's message.
        message: String,
    },
    /// The answer is not a ttrpc response.
    #[error("{service}/{method} on {}: bad answer: {reason}", socket.display())]
    BadAnswer {
        /// The socket path.
        socket: PathBuf,
        /// Service called.
        service: String,
        /// Method called.
        method: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Calls `service`/`method` with an encoded request `payload` on the ttrpc server at
/// `socket`, waiting at most `timeout` (also sent as the request's `timeout_nano`). Returns
/// the encoded response message. The answer's frame buffers are wiped once decoded (answers
/// may be keys); the caller owns the returned bytes.
pub async fn unary_call(
    socket: &Path,
    service: &str,
    method: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let call = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| CallError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        exchange(stream, socket, service, method, payload, timeout).await
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout {
            socket: socket.to_path_buf(),
            service: service.to_string(),
            method: method.to_string(),
            timeout,
        }),
    }
}

/// The one stream id a fresh connection uses (client streams are odd).
const STREAM_ID: u32 = 1;

async fn exchange(
    stream: UnixStream,
    socket: &Path,
    service: &str,
    method: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let conn_err = |source| CallError::Connection {
        socket: socket.to_path_buf(),
        service: service.to_string(),
        method: method.to_string(),
        source,
    };
    let bad = |reason: String| CallError::BadAnswer {
        socket: socket.to_path_buf(),
        service: service.to_string(),
        method: method.to_string(),
        reason,
    };
    let request = proto::Request {
        service: service.to_string(),
        method: method.to_string(),
        payload,
        timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
        metadata: Vec::new(),
    };
    let frame = Frame::new(STREAM_ID, TYPE_REQUEST, request.encode_to_vec());
    let (read, mut write) = stream.into_split();
    frame::write_frame(&mut write, &frame, MAX_MESSAGE_LEN)
        .await
        .map_err(conn_err)?;

    let mut read = BufReader::new(read);
    loop {
        let Some(mut answer) = frame::read_frame(&mut read, MAX_MESSAGE_LEN)
            .await
            .map_err(conn_err)?
        else {
            return Err(CallError::NoAnswer {
                socket: socket.to_path_buf(),
                service: service.to_string(),
                method: method.to_string(),
            });
        };
        if answer.header.stream_id != STREAM_ID || answer.header.kind != TYPE_RESPONSE {
            answer.payload.zeroize();
            tracing::debug!(header = ?answer.header, "ttrpc client: skipped a frame that is not our response");
            continue;
        }
        let decoded = proto::Response::decode(&answer.payload[..]);
        answer.payload.zeroize();
        let response = decoded.map_err(|e| bad(format!("not a ttrpc.Response: {e}")))?;
        if let Some(status) = response.status {
            if status.code != code::OK {
                let mut response_payload = response.payload;
                response_payload.zeroize();
                return Err(CallError::Status {
                    socket: socket.to_path_buf(),
                    service: service.to_string(),
                    method: method.to_string(),
                    code: status.code,
                    message: status.message,
                });
            }
        }
        return Ok(response.payload);
    }
}

/// A socket path from a `unix://` URI as CDH's and the attestation agent's configs write
/// them (`unix:///run/...`), or a plain path.
pub fn socket_path(uri_or_path: &str) -> PathBuf {
    PathBuf::from(uri_or_path.strip_prefix("unix://").unwrap_or(uri_or_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path("unix:///run/confidential-containers/cdh.sock"),
            Path::new("/run/confidential-containers/cdh.sock")
        );
        assert_eq!(socket_path("/run/x.sock"), Path::new("/run/x.sock"));
    }

    #[tokio::test]
    async fn absent_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let err = unary_call(&socket, "a.S", "M", Vec::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Connect { .. }));
        assert!(
            err.to_string().contains(&socket.display().to_string()),
            "{err}"
        );
    }
}
