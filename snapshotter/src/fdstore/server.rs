//! The fd store itself (`veil fd-store --socket PATH`): holds fds for others until told
//! to close them. Requests are served one at a time, each connection bounded by
//! [`FD_STORE_TIMEOUT`]; the socket is made mode 0600 (only its owner, root, may talk to
//! it).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use super::client::FD_STORE_TIMEOUT;
use super::wire::{check, recv, send, Reply, Request};
use super::{FdStoreError, MAX_ENTRIES};

/// Pending connections the listening socket queues.
const FD_STORE_BACKLOG: i32 = 64;

/// The fds held, by name, with their data.
#[derive(Debug, Default)]
pub struct Held {
    entries: HashMap<String, (OwnedFd, Vec<u8>)>,
}

impl Held {
    /// How many fds are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Binds `socket_path` (replacing a stale socket there) and serves the store until the
/// process is killed. Returns only if the socket cannot be set up.
pub fn serve(socket_path: &Path) -> Result<(), FdStoreError> {
    let io = |cause: std::io::Error| FdStoreError::Io {
        path: socket_path.display().to_string(),
        cause,
    };
    if let Some(dir) = socket_path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if socket_path.exists() {
        if crate::fdstore::FdStoreClient::new(socket_path)
            .take_all()
            .is_ok()
        {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another fd store is serving this socket",
            )));
        }
        std::fs::remove_file(socket_path).map_err(io)?;
    }
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io(e.into()))?;
    let addr = UnixAddr::new(socket_path).map_err(|e| io(e.into()))?;
    bind(listener.as_raw_fd(), &addr).map_err(|e| io(e.into()))?;
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let backlog = Backlog::new(FD_STORE_BACKLOG).map_err(|e| io(e.into()))?;
    listen(&listener, backlog).map_err(|e| io(e.into()))?;
    tracing::info!(socket = %socket_path.display(), "fd store ready");
    let mut held = Held::default();
    loop {
        let conn = match accept(listener.as_raw_fd()) {
            // SAFETY: accept returned a new fd that nobody else owns.
            Ok(fd) => UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "fd store: accept failed");
                std::thread::sleep(FD_STORE_TIMEOUT / 50);
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(FD_STORE_TIMEOUT));
        let _ = conn.set_write_timeout(Some(FD_STORE_TIMEOUT));
        if let Err(e) = handle(&conn, &mut held) {
            tracing::warn!(error = %e, "fd store: a request failed");
            let _ = send(conn.as_fd(), &Reply::Error(e.to_string()).encode(), None);
        }
    }
}

/// Serves the one request on `conn`.
pub fn handle(conn: &UnixStream, held: &mut Held) -> Result<(), FdStoreError> {
    let Some((body, fd)) = recv(conn.as_fd())? else {
        return Ok(());
    };
    let sent = |r: std::io::Result<()>| {
        r.map_err(|cause| FdStoreError::Io {
            path: "(client)".into(),
            cause,
        })
    };
    match Request::decode(&body)? {
        Request::Store { name, data } => {
            check(&name, &data)?;
            let fd = fd.ok_or_else(|| {
                FdStoreError::Protocol(format!("STORE {name:?} came without an fd"))
            })?;
            if !held.entries.contains_key(&name) && held.entries.len() >= MAX_ENTRIES {
                return Err(FdStoreError::Refused(format!(
                    "already holding {MAX_ENTRIES} fds"
                )));
            }
            tracing::info!(name, "fd store: holding an fd");
            held.entries.insert(name, (fd, data));
            sent(send(conn.as_fd(), &Reply::Ok(0).encode(), None))
        }
        Request::Remove { name } => {
            if held.entries.remove(&name).is_some() {
                tracing::info!(name, "fd store: closed an fd");
            }
            sent(send(conn.as_fd(), &Reply::Ok(0).encode(), None))
        }
        Request::TakeAll => {
            let count = held.entries.len() as u32;
            sent(send(conn.as_fd(), &Reply::Ok(count).encode(), None))?;
            for (name, (fd, data)) in &held.entries {
                let entry = Reply::Entry {
                    name: name.clone(),
                    data: data.clone(),
                };
                sent(send(conn.as_fd(), &entry.encode(), Some(fd.as_fd())))?;
            }
            tracing::info!(count, "fd store: handed out every fd");
            Ok(())
        }
    }
}
