//! One client connection's link to the real Confidential Data Hub: frames forwarded to it
//! byte for byte, its frames copied back to the client unchanged, and every request it has
//! not answered yet remembered so that a CDH that goes away mid-call still gets each of
//! them an answer (`UNAVAILABLE`, naming the upstream socket) instead of a caller waiting
//! for its own timeout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::frame::{self, Frame, TYPE_RESPONSE};
use crate::proto::code;
use crate::status::status_frame;

/// How long connecting to the upstream CDH socket may take.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the upstream reader and the forwarding side share.
#[derive(Default)]
struct State {
    /// The upstream connection ended (read side saw EOF or an error, or a write failed).
    closed: bool,
    /// Forwarded requests without a response yet: stream id → `service/method`.
    outstanding: HashMap<u32, String>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The message of an `UNAVAILABLE` answer for a call that could not reach the CDH.
pub fn unavailable_message(upstream: &Path, call: &str, why: &str) -> String {
    format!(
        "veil: cannot forward {call} to the Confidential Data Hub at {}: {why}",
        upstream.display()
    )
}

/// A live connection to the upstream CDH, owned by one client connection.
pub struct Upstream {
    path: PathBuf,
    writer: OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    reader: JoinHandle<()>,
    max_message_len: usize,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Upstream {
    /// Connects to the CDH at `path`; its frames will be sent to `to_client`.
    pub async fn connect(
        path: &Path,
        to_client: mpsc::Sender<Frame>,
        max_message_len: usize,
    ) -> Result<Self, String> {
        let stream =
            match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, UnixStream::connect(path)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(format!("connect: {e}")),
                Err(_) => {
                    return Err(format!(
                        "connect: no answer within {UPSTREAM_CONNECT_TIMEOUT:?}"
                    ))
                }
            };
        let (read, writer) = stream.into_split();
        let state = Arc::new(Mutex::new(State::default()));
        let reader = tokio::spawn(copy_back(
            read,
            state.clone(),
            to_client,
            path.to_path_buf(),
            max_message_len,
        ));
        tracing::debug!(upstream = %path.display(), "connected to the upstream CDH");
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            state,
            reader,
            max_message_len,
        })
    }

    /// Whether the connection has ended (a new one is needed for the next frame).
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Forwards `frame` unchanged. `call` (`service/method`) is given for a request frame:
    /// its stream is then remembered until the CDH answers it. On failure, returns the
    /// reason if the request is still unanswered (the caller answers it); `Ok` otherwise.
    pub async fn forward(&mut self, frame: &Frame, call: Option<&str>) -> Result<(), String> {
        let stream_id = frame.header.stream_id;
        if let Some(call) = call {
            let mut state = lock(&self.state);
            if state.closed {
                return Err("the connection to it has just ended".into());
            }
            state.outstanding.insert(stream_id, call.to_string());
        }
        match frame::write_frame(&mut self.writer, frame, self.max_message_len).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut state = lock(&self.state);
                state.closed = true;
                let ours = state.outstanding.remove(&stream_id).is_some();
                tracing::warn!(upstream = %self.path.display(), error = %e, "writing to the upstream CDH failed");
                if ours {
                    Err(e.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Copies the CDH's frames back to the client; when the CDH goes away, answers every
/// request it left unanswered.
async fn copy_back(
    read: OwnedReadHalf,
    state: Arc<Mutex<State>>,
    to_client: mpsc::Sender<Frame>,
    path: PathBuf,
    max_message_len: usize,
) {
    let mut read = BufReader::new(read);
    let why = loop {
        match frame::read_frame(&mut read, max_message_len).await {
            Ok(Some(frame)) => {
                if frame.header.kind == TYPE_RESPONSE {
                    lock(&state).outstanding.remove(&frame.header.stream_id);
                }
                if to_client.send(frame).await.is_err() {
                    return; // The client connection is gone.
                }
            }
            Ok(None) => break "it closed the connection".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let pending: Vec<(u32, String)> = {
        let mut state = lock(&state);
        state.closed = true;
        state.outstanding.drain().collect()
    };
    tracing::warn!(upstream = %path.display(), reason = %why, unanswered = pending.len(), "the upstream CDH connection ended");
    for (stream_id, call) in pending {
        let message = unavailable_message(&path, &call, &format!("{why} before answering"));
        if to_client
            .send(status_frame(stream_id, code::UNAVAILABLE, message))
            .await
            .is_err()
        {
            return;
        }
    }
}
