//! Serving a FUSE connection another process made: [`resume`] takes the `/dev/fuse` fd of
//! a live mount (handed over after a restart) and serves it with a new filesystem.
//!
//! fuser starts every session with the INIT handshake, and an initialized connection
//! never sends INIT again. So the session is not given the connection's fd but one end of
//! a `socketpair(AF_UNIX, SOCK_SEQPACKET)`: the synthetic `FUSE_INIT` of
//! [`crate::handover::init_request`] (the offer the kernel made when the connection was
//! made) is written into the other end, the session's reply is read back and discarded,
//! and from then on two pump threads carry whole frames between the real fd and the
//! socket: one `read` of `/dev/fuse` is one request and one datagram, one datagram from
//! the session is one reply or notification and one `write`. Before pumping, the kernel
//! is asked with `FUSE_NOTIFY_RESEND` (Linux 6.9+) to send again the requests the dead
//! process had read but not answered; an older kernel refuses it, and those requests
//! stay unanswered (the reads that made them hang), which is logged.
//!
//! The filesystem must answer as the one before it did (same inode numbers, same file
//! handles): that is the caller's business. This module knows nothing of layers. fuser's
//! calls that need `/dev/fuse` itself (`ReplyOpen::open_backing`: an ioctl) fail on the
//! socket; a filesystem that registers backing files for passthrough does it through a
//! copy of `dev` ([`crate::backing`], [`crate::fs::LayerFs::with_resumed_promotion`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{mpsc, Arc};

use fuser::{Filesystem, Session};

use crate::handover::{
    destroy_request, error_reply, init_request, reply_header, request_unique, resend_notification,
    KernelInit, SYNTHETIC_INIT_UNIQUE,
};
use crate::mount::{fuser_config, LayerMount, MountError, MountOptions};

/// Bytes of one frame buffer of a pump: a request may be as large as the session's
/// `max_write` (fuser asks for 16 MiB) plus headers, and the kernel refuses reads into a
/// smaller buffer.
pub const PUMP_FRAME_BYTES: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Send buffer asked for on each end of the socketpair: a datagram larger than the send
/// buffer is refused, and read replies are up to 1 MiB.
pub const PUMP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Serves the live FUSE connection `dev` (mounted at `mountpoint`, initialized with
/// `init`) with `fs`. The returned [`LayerMount`] unmounts `mountpoint` like one made by
/// [`crate::mount::mount`].
pub fn resume<F: Filesystem + Send + 'static>(
    fs: F,
    dev: OwnedFd,
    init: &KernelInit,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<LayerMount, MountError> {
    let err = |source| MountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let (pump_end, session_end) = seqpacket_pair().map_err(err)?;
    for end in [&pump_end, &session_end] {
        grow_send_buffer(end.as_fd());
    }
    send_frame(pump_end.as_fd(), &init_request(init)).map_err(err)?;
    let config = fuser_config(options);
    let session = Session::from_fd(fs, session_end, config.acl, config).map_err(err)?;
    let mut reply = vec![0u8; 4096];
    let n = recv_frame(pump_end.as_fd(), &mut reply).map_err(err)?;
    match reply_header(&reply[..n]) {
        Some((0, SYNTHETIC_INIT_UNIQUE)) => {}
        other => {
            return Err(err(io::Error::other(format!(
                "the filesystem refused the replayed FUSE_INIT (reply {other:?})"
            ))))
        }
    }
    ask_resend(dev.as_fd(), mountpoint);
    let dev = Arc::new(dev);
    let pump_end = Arc::new(pump_end);
    let handover_fd = dev.try_clone().map_err(err)?;
    let (done_tx, done_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("veil-fuse".to_string())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(err)?;
    let (d, p) = (dev.clone(), pump_end.clone());
    std::thread::Builder::new()
        .name("veil-fuse-in".to_string())
        .spawn(move || pump_requests(&d, &p))
        .map_err(err)?;
    std::thread::Builder::new()
        .name("veil-fuse-out".to_string())
        .spawn(move || pump_replies(&dev, &pump_end))
        .map_err(err)?;
    Ok(LayerMount::resumed(
        mountpoint,
        thread,
        done_rx,
        handover_fd,
        *init,
    ))
}

/// Asks the kernel to send again the requests it still waits on (`FUSE_NOTIFY_RESEND`).
fn ask_resend(dev: BorrowedFd<'_>, mountpoint: &Path) {
    match write_frame(dev, &resend_notification()) {
        Ok(()) => tracing::debug!(mountpoint = %mountpoint.display(),
            "asked the kernel to resend unanswered FUSE requests"),
        Err(e) => tracing::warn!(mountpoint = %mountpoint.display(), error = %e,
            "this kernel cannot resend FUSE requests (FUSE_NOTIFY_RESEND needs Linux 6.9+): \
             reads the previous process had taken but not answered will hang"),
    }
}

/// Kernel → session: one request per read, one datagram per request. Ends when the
/// connection ends (unmount, abort) or the session does; then shuts the socket so the
/// session ends too.
fn pump_requests(dev: &OwnedFd, socket: &OwnedFd) {
    let mut buf = vec![0u8; PUMP_FRAME_BYTES];
    loop {
        let n = match read_frame(dev.as_fd(), &mut buf) {
            // Nothing to pass on (the session would take an empty datagram as its end).
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if retryable(&e) => continue,
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENODEV) {
                    tracing::warn!(error = %e, "reading the handed-over FUSE connection failed");
                }
                break;
            }
        };
        match send_frame(socket.as_fd(), &buf[..n]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                // Cannot reach the session whole: fail this request, not the connection.
                if let Some(unique) = request_unique(&buf[..n]) {
                    let _ = write_frame(dev.as_fd(), &error_reply(unique, libc::EIO));
                }
            }
            Err(_) => break,
        }
    }
    // The session ends on FUSE_DESTROY (as when the kernel ends a connection); the
    // shutdown after it ends a session that is not reading any more.
    let _ = send_frame(socket.as_fd(), &destroy_request());
    // SAFETY: shutdown on a valid socket fd.
    unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) };
}

/// Session → kernel: one datagram per reply or notification, written whole.
fn pump_replies(dev: &OwnedFd, socket: &OwnedFd) {
    let mut buf = vec![0u8; PUMP_FRAME_BYTES];
    loop {
        let n = match recv_frame(socket.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if retryable(&e) => continue,
            Err(_) => break,
        };
        if let Err(e) = write_frame(dev.as_fd(), &buf[..n]) {
            match e.raw_os_error() {
                // The request was interrupted and is gone: nothing waits for the answer.
                Some(libc::ENOENT) => {}
                Some(libc::ENODEV) => break,
                _ => tracing::debug!(error = %e, "a FUSE reply was refused"),
            }
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::ENOENT)
    )
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for socketpair to fill.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded: both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for [`PUMP_SOCKET_BUFFER`] (forced when privileged, else up to `wmem_max`).
fn grow_send_buffer(fd: BorrowedFd<'_>) {
    let size = PUMP_SOCKET_BUFFER as libc::c_int;
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt with a pointer to a c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

fn read_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_frame(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<()> {
    // SAFETY: frame is valid for reads of frame.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn send_frame(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: frame is valid for reads of frame.len() bytes.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn recv_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
