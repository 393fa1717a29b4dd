//! The front door: Veil listening on the Confidential Data Hub's socket.
//!
//! kata-agent knows one socket, `/run/confidential-containers/cdh.sock` ([`DEFAULT_SOCKET`]),
//! and opens one ttrpc connection to it for every CDH service. Veil binds that path and,
//! per client connection:
//!
//! - serves `api.ImagePullService/PullImage` itself through a [`PullHandler`]; pulls on one
//!   connection run concurrently, each answered on its own stream id; a failure is a
//!   `google.rpc.Status` `INTERNAL` whose message starts like CDH's
//!   (`[CDH] [ERROR]: Image Pull error: veil: …`); a request `timeout_nano` bounds the pull
//!   (`DEADLINE_EXCEEDED`, the pull future is dropped);
//! - forwards every other frame, byte for byte, to the real CDH on its own socket (the
//!   *upstream*), over an upstream connection owned by this client connection, and copies
//!   the CDH's frames back unchanged: other `api.*` services, `keyprovider.*`, services Veil
//!   has never heard of, data frames of streams, frame types of later protocol versions.
//!   Stream ids are the client's, so they stay valid on both sides. If the CDH cannot be
//!   reached, the request is answered `UNAVAILABLE` with a message naming the upstream
//!   socket, and the next request tries to connect again.
//!
//! The router is Veil's own, not the `ttrpc` crate's server: a ttrpc server decodes and
//! dispatches per registered service and answers unknown ones itself, while forwarding
//! must pass frames of any service and any stream state through untouched.
//!
//! A broken client (a frame over the size bound, a truncated frame, a request that is not
//! a `ttrpc.Request`) loses its own connection, and that connection's pulls are cancelled;
//! other connections are not affected. Shutdown stops accepting, removes the socket, lets
//! running pulls finish for [`FrontDoorConfig::shutdown_grace`], then closes.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use prost::Message;
use thiserror::Error;
use tokio::io::BufReader;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame::{self, Frame, MAX_MESSAGE_LEN, TYPE_REQUEST};
use crate::proto::{self, code, ImagePullRequest, ImagePullResponse};
use crate::status::{ok_frame, status_frame, CDH_ERROR_PREFIX};
use crate::upstream::{unavailable_message, Upstream};

/// The socket kata-agent calls (fixed in kata-agent).
pub const DEFAULT_SOCKET: &str = "/run/confidential-containers/cdh.sock";
/// The service Veil serves itself.
pub const PULL_SERVICE: &str = "api.ImagePullService";
/// The method Veil serves itself.
pub const PULL_METHOD: &str = "PullImage";
/// Permissions of the bound socket: root only (kata-agent runs as root; CDH leaves its
/// socket to the umask).
pub const SOCKET_MODE: u32 = 0o600;
/// Frames queued towards one client before the senders wait.
pub const CLIENT_QUEUE: usize = 64;
/// Default time running pulls get to finish when the front door shuts down.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long queued answers may take to reach a client when its connection closes.
pub const CLIENT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
pub const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why a pull failed, as the handler tells it; becomes the status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullFailure {
    message: String,
}

impl PullFailure {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// A failure described by `error` and its chain of sources (`a: b: c`).
    pub fn from_error(error: &(dyn StdError + 'static)) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self { message }
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PullFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for PullFailure {}

/// Serves `PullImage`: pulls `image_url` and mounts its root filesystem at
/// `<bundle_path>/rootfs` (writing `<bundle_path>/config.json`), returning the manifest
/// digest.
///
/// The returned future may be dropped before it completes (the caller's `timeout_nano`
/// passed, the client connection closed, or the shutdown grace ran out): an implementation
/// must leave nothing mounted when dropped at an await point.
pub trait PullHandler: Send + Sync + 'static {
    /// Pulls one image; `Ok` is the manifest digest (`sha256:…`).
    fn pull_image(
        &self,
        image_url: String,
        bundle_path: PathBuf,
    ) -> BoxFuture<'_, Result<String, PullFailure>>;
}

/// Where the front door listens and forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontDoorConfig {
    /// The socket to bind (kata-agent's: [`DEFAULT_SOCKET`]).
    pub socket: PathBuf,
    /// The real CDH's socket, where every other call goes.
    pub upstream: PathBuf,
    /// Largest frame payload accepted from clients or the upstream.
    pub max_message_len: usize,
    /// Time running pulls get to finish on shutdown.
    pub shutdown_grace: Duration,
}

impl FrontDoorConfig {
    /// Listen on `socket`, forward to `upstream`, with the default bounds.
    pub fn new(socket: impl Into<PathBuf>, upstream: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            upstream: upstream.into(),
            max_message_len: MAX_MESSAGE_LEN,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// The front door could not start.
#[derive(Debug, Error)]
pub enum FrontError {
    /// The listening socket and the upstream are the same path (calls would loop).
    #[error("the front door socket and the upstream CDH socket are the same path, {}: move CDH to another socket", .0.display())]
    SameSocket(PathBuf),
    /// Another server answers on the socket.
    #[error("another server is listening on {} (is the Confidential Data Hub still bound there? move it to the upstream socket)", .0.display())]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("{} exists and is not a socket; not removing it", .0.display())]
    NotASocket(PathBuf),
    /// A file system operation on the socket path failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A bound front door, not yet serving.
pub struct FrontDoor {
    listener: UnixListener,
    /// (device, inode) of the socket file this front door created.
    socket_id: (u64, u64),
    shared: Arc<Shared>,
}

impl fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontDoor")
            .field("config", &self.shared.config)
            .finish()
    }
}

struct Shared {
    config: FrontDoorConfig,
    handler: Arc<dyn PullHandler>,
}

impl FrontDoor {
    /// Binds `config.socket` (creating its directory; replacing a stale socket file nobody
    /// listens on) with mode [`SOCKET_MODE`].
    pub async fn bind(
        config: FrontDoorConfig,
        handler: Arc<dyn PullHandler>,
    ) -> Result<Self, FrontError> {
        let socket = config.socket.clone();
        if socket == config.upstream {
            return Err(FrontError::SameSocket(socket));
        }
        let io = |what, source| FrontError::Io {
            what,
            path: socket.clone(),
            source,
        };
        if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| FrontError::Io {
                what: "creating the directory",
                path: parent.to_path_buf(),
                source: e,
            })?;
        }
        match std::fs::symlink_metadata(&socket) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(&socket).await.is_ok() {
                    return Err(FrontError::InUse(socket));
                }
                std::fs::remove_file(&socket).map_err(|e| io("removing the stale socket", e))?;
            }
            Ok(_) => return Err(FrontError::NotASocket(socket)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspecting", e)),
        }
        let listener = UnixListener::bind(&socket).map_err(|e| io("binding", e))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| io("setting the mode of", e))?;
        let meta = std::fs::metadata(&socket).map_err(|e| io("inspecting", e))?;
        tracing::info!(socket = %socket.display(), upstream = %config.upstream.display(), "CDH front door listening");
        Ok(Self {
            listener,
            socket_id: (meta.dev(), meta.ino()),
            shared: Arc::new(Shared { config, handler }),
        })
    }

    /// The bound socket.
    pub fn socket(&self) -> &Path {
        &self.shared.config.socket
    }

    /// Serves until `shutdown` is cancelled, then shuts down gracefully (see the module doc).
    pub async fn run(self, shutdown: CancellationToken) {
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let connection = Connection::new(self.shared.clone(), shutdown.clone());
                    connections.spawn(connection.run(stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CDH front door: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            }
        }
        let socket = self.shared.config.socket.clone();
        drop(self.listener);
        // Remove the socket only if it is still the one bound here.
        if let Ok(meta) = std::fs::symlink_metadata(&socket) {
            if (meta.dev(), meta.ino()) == self.socket_id {
                let _ = std::fs::remove_file(&socket);
            }
        }
        connections.close();
        connections.wait().await;
        tracing::info!(socket = %socket.display(), "CDH front door stopped");
    }

    /// Serves in a task of its own.
    pub fn spawn(self) -> RunningFrontDoor {
        let token = CancellationToken::new();
        let socket = self.socket().to_path_buf();
        let task = tokio::spawn(self.run(token.clone()));
        RunningFrontDoor {
            token,
            task,
            socket,
        }
    }
}

/// A front door serving in its own task.
#[derive(Debug)]
pub struct RunningFrontDoor {
    token: CancellationToken,
    task: JoinHandle<()>,
    socket: PathBuf,
}

impl RunningFrontDoor {
    /// The bound socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Shuts down gracefully and waits until it has.
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// Stream ids of this connection's pulls being served here (not forwarded).
    local_streams: Arc<Mutex<HashSet<u32>>>,
    pulls: TaskTracker,
    cancel_pulls: CancellationToken,
    upstream: Option<Upstream>,
}

enum End {
    ClientClosed,
    Broken(String),
    Shutdown,
}

impl Connection {
    fn new(shared: Arc<Shared>, shutdown: CancellationToken) -> Self {
        Self {
            shared,
            shutdown,
            local_streams: Arc::new(Mutex::new(HashSet::new())),
            pulls: TaskTracker::new(),
            cancel_pulls: CancellationToken::new(),
            upstream: None,
        }
    }

    async fn run(mut self, stream: UnixStream) {
        let max = self.shared.config.max_message_len;
        let (read, write) = stream.into_split();
        let (to_client, queue) = mpsc::channel(CLIENT_QUEUE);
        let writer = tokio::spawn(write_loop(write, queue, max));
        let mut read = BufReader::new(read);
        let end = loop {
            let frame = tokio::select! {
                _ = self.shutdown.cancelled() => break End::Shutdown,
                frame = frame::read_frame(&mut read, max) => frame,
            };
            match frame {
                Ok(None) => break End::ClientClosed,
                Err(e) => break End::Broken(e.to_string()),
                Ok(Some(frame)) => {
                    if let Err(reason) = self.dispatch(frame, &to_client).await {
                        break End::Broken(reason);
                    }
                }
            }
        };
        self.pulls.close();
        match end {
            End::Shutdown => {
                let grace = self.shared.config.shutdown_grace;
                if tokio::time::timeout(grace, self.pulls.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(?grace, "pulls still running at shutdown are cancelled");
                    self.cancel_pulls.cancel();
                }
            }
            End::ClientClosed => self.cancel_pulls.cancel(),
            End::Broken(reason) => {
                tracing::warn!(%reason, "CDH front door: closing a client connection");
                self.cancel_pulls.cancel();
            }
        }
        self.pulls.wait().await;
        drop(self.upstream.take());
        drop(to_client);
        let mut writer = writer;
        if tokio::time::timeout(CLIENT_FLUSH_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }

    /// Routes one frame. `Err`: the client broke the protocol; close its connection.
    async fn dispatch(
        &mut self,
        frame: Frame,
        to_client: &mpsc::Sender<Frame>,
    ) -> Result<(), String> {
        let stream_id = frame.header.stream_id;
        if frame.header.kind != TYPE_REQUEST {
            if self.is_local(stream_id) {
                tracing::debug!(
                    stream_id,
                    "dropped a non-request frame on a PullImage stream"
                );
                return Ok(());
            }
            self.forward(frame, None, to_client).await;
            return Ok(());
        }
        let mut request = proto::Request::decode(&frame.payload[..]).map_err(|e| {
            format!("stream {stream_id}: a request frame whose payload is not a ttrpc.Request: {e}")
        })?;
        if request.service == PULL_SERVICE && request.method == PULL_METHOD {
            self.start_pull(stream_id, request, to_client.clone());
            return Ok(());
        }
        let call = format!("{}/{}", request.service, request.method);
        // The decoded copy is not needed: the frame goes on as it came.
        zeroize::Zeroize::zeroize(&mut request.payload);
        self.forward(frame, Some(call), to_client).await;
        Ok(())
    }

    fn is_local(&self, stream_id: u32) -> bool {
        lock_set(&self.local_streams).contains(&stream_id)
    }

    /// Sends a frame to the upstream CDH (connecting first if needed); a request that
    /// cannot get there is answered `UNAVAILABLE`.
    async fn forward(
        &mut self,
        frame: Frame,
        call: Option<String>,
        to_client: &mpsc::Sender<Frame>,
    ) {
        let stream_id = frame.header.stream_id;
        let config = &self.shared.config;
        if self.upstream.as_ref().is_some_and(Upstream::is_closed) {
            self.upstream = None;
        }
        let result = match &mut self.upstream {
            Some(upstream) => upstream.forward(&frame, call.as_deref()).await,
            None => {
                match Upstream::connect(&config.upstream, to_client.clone(), config.max_message_len)
                    .await
                {
                    Ok(mut upstream) => {
                        let result = upstream.forward(&frame, call.as_deref()).await;
                        self.upstream = Some(upstream);
                        result
                    }
                    Err(why) => Err(why),
                }
            }
        };
        let Err(why) = result else { return };
        match call {
            Some(call) => {
                let message = unavailable_message(&config.upstream, &call, &why);
                tracing::warn!(%message, "CDH front door");
                let _ = to_client
                    .send(status_frame(stream_id, code::UNAVAILABLE, message))
                    .await;
            }
            None => {
                tracing::debug!(stream_id, kind = frame.header.kind, reason = %why, "dropped a frame the upstream CDH could not take")
            }
        }
    }

    /// Serves a `PullImage` request in a task of its own.
    fn start_pull(&self, stream_id: u32, request: proto::Request, to_client: mpsc::Sender<Frame>) {
        lock_set(&self.local_streams).insert(stream_id);
        let handler = self.shared.handler.clone();
        let cancel = self.cancel_pulls.clone();
        let local_streams = self.local_streams.clone();
        self.pulls.spawn(async move {
            // A panicking handler still gets its caller an answer.
            let pull = AssertUnwindSafe(serve_pull(handler.as_ref(), stream_id, &request))
                .catch_unwind()
                .map(|served| {
                    served.unwrap_or_else(|_| {
                        tracing::error!(stream_id, "the PullImage handler panicked");
                        status_frame(
                            stream_id,
                            code::INTERNAL,
                            format!("{CDH_ERROR_PREFIX}Image Pull error: veil: the pull handler panicked"),
                        )
                    })
                });
            let answer = tokio::select! {
                _ = cancel.cancelled() => None,
                frame = pull => Some(frame),
            };
            lock_set(&local_streams).remove(&stream_id);
            if let Some(frame) = answer {
                let _ = to_client.send(frame).await;
            }
        });
    }
}

fn lock_set(set: &Mutex<HashSet<u32>>) -> std::sync::MutexGuard<'_, HashSet<u32>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The status message of a failed pull, in CDH's form.
pub fn pull_error_message(image_url: &str, cause: &str) -> String {
    format!("{CDH_ERROR_PREFIX}Image Pull error: veil: pulling {image_url:?}: {cause}")
}

/// Runs one pull and builds its response frame.
async fn serve_pull(handler: &dyn PullHandler, stream_id: u32, request: &proto::Request) -> Frame {
    let pull = match ImagePullRequest::decode(&request.payload[..]) {
        Ok(pull) => pull,
        Err(e) => {
            let message = format!("{CDH_ERROR_PREFIX}Image Pull error: veil: the PullImage payload is not an api.ImagePullRequest: {e}");
            return status_frame(stream_id, code::INVALID_ARGUMENT, message);
        }
    };
    if pull.image_url.is_empty() || pull.bundle_path.is_empty() {
        let message = pull_error_message(
            &pull.image_url,
            "the request needs both image_url and bundle_path",
        );
        return status_frame(stream_id, code::INVALID_ARGUMENT, message);
    }
    let image_url = pull.image_url;
    tracing::info!(image = %image_url, bundle = %pull.bundle_path, stream_id, "PullImage");
    let started = std::time::Instant::now();
    let future = handler.pull_image(image_url.clone(), PathBuf::from(pull.bundle_path));
    let result = if request.timeout_nano > 0 {
        let timeout = Duration::from_nanos(request.timeout_nano as u64);
        match tokio::time::timeout(timeout, future).await {
            Ok(result) => result,
            Err(_) => {
                let cause = format!(
                    "not done within the caller's timeout of {timeout:?}; the pull was cancelled"
                );
                tracing::warn!(image = %image_url, %cause, "PullImage failed");
                return status_frame(
                    stream_id,
                    code::DEADLINE_EXCEEDED,
                    pull_error_message(&image_url, &cause),
                );
            }
        }
    } else {
        future.await
    };
    match result {
        Ok(manifest_digest) => {
            tracing::info!(image = %image_url, digest = %manifest_digest, elapsed = ?started.elapsed(), "PullImage done");
            ok_frame(
                stream_id,
                ImagePullResponse { manifest_digest }.encode_to_vec(),
            )
        }
        Err(failure) => {
            tracing::warn!(image = %image_url, error = %failure, "PullImage failed");
            status_frame(
                stream_id,
                code::INTERNAL,
                pull_error_message(&image_url, failure.message()),
            )
        }
    }
}

/// Writes the frames queued for one client, in order.
async fn write_loop(mut write: OwnedWriteHalf, mut queue: mpsc::Receiver<Frame>, max: usize) {
    while let Some(frame) = queue.recv().await {
        if let Err(e) = frame::write_frame(&mut write, &frame, max).await {
            tracing::debug!(error = %e, "CDH front door: writing to a client failed");
            break;
        }
    }
}
