//! Unix-socket connections for Veil's gRPC servers (the snapshots API, `veil keyprovider
//! serve`) that accept any HTTP/2 `:authority`.
//!
//! [`incoming`] turns a listener into the connection stream tonic serves; each
//! [`GrpcUnixConnection`] reads the client's bytes through an
//! [`AuthorityRewriter`](crate::authority_rewrite::AuthorityRewriter), which drops an
//! `:authority` that h2 would refuse (a socket path, as grpc-go and grpcio send when
//! dialled with one; the module doc there says why and how). Writes go to the socket
//! unchanged.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::authority_rewrite::AuthorityRewriter;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The connections of `listener`, ready for tonic's `serve_with_incoming*`.
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<GrpcUnixConnection>> + Send + 'static {
    UnixListenerStream::new(listener).map(|accepted| accepted.map(GrpcUnixConnection::new))
}

/// One client connection of a gRPC server on a unix socket.
pub struct GrpcUnixConnection {
    stream: UnixStream,
    rewriter: AuthorityRewriter,
    /// What the socket gave last.
    chunk: Vec<u8>,
    /// Rewritten bytes not yet read by h2, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
}

impl GrpcUnixConnection {
    /// Wraps an accepted connection.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            rewriter: AuthorityRewriter::new(),
            chunk: vec![0; READ_CHUNK],
            pending: Vec::new(),
            pending_at: 0,
        }
    }
}

impl Connected for GrpcUnixConnection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for GrpcUnixConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pending_at < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.pending_at);
                buf.put_slice(&this.pending[this.pending_at..this.pending_at + n]);
                this.pending_at += n;
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.pending_at = 0;
            let mut read = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.is_empty() {
                // End of stream (an incomplete frame left behind is h2's to notice).
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.rewriter.push(got, &mut this.pending) {
                tracing::debug!(error = %e, "closing a gRPC connection");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl AsyncWrite for GrpcUnixConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
