//! Talking to the fd store: store, remove, take all. Each call is one connection.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use super::wire::{check, recv, send, Reply, Request};
use super::{FdStoreError, MAX_ENTRIES};

/// How long one exchange with the store may take.
pub const FD_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// An fd the store held, with its name and data.
#[derive(Debug)]
pub struct StoredFd {
    /// The name it was stored under.
    pub name: String,
    /// The data stored with it.
    pub data: Vec<u8>,
    /// A copy of the fd.
    pub fd: OwnedFd,
}

/// The fd store at a unix socket.
#[derive(Debug, Clone)]
pub struct FdStoreClient {
    path: PathBuf,
}

impl FdStoreClient {
    /// The store listening at `path` (nothing is connected yet).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// The store's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Has the store hold a copy of `fd` under `name` (replacing one held under it), with
    /// `data`.
    pub fn store(
        &self,
        name: &str,
        data: &[u8],
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), FdStoreError> {
        check(name, data)?;
        let request = Request::Store {
            name: name.to_string(),
            data: data.to_vec(),
        };
        self.simple(&request, Some(fd))
    }

    /// Has the store close the fd held under `name`, if any.
    pub fn remove(&self, name: &str) -> Result<(), FdStoreError> {
        check(name, b"")?;
        self.simple(
            &Request::Remove {
                name: name.to_string(),
            },
            None,
        )
    }

    /// Copies of every fd the store holds (it keeps holding them).
    pub fn take_all(&self) -> Result<Vec<StoredFd>, FdStoreError> {
        let conn = self.connect()?;
        send(conn.as_fd(), &Request::TakeAll.encode(), None).map_err(|e| self.io(e))?;
        let count = match self.reply(&conn)? {
            (Reply::Ok(n), None) if (n as usize) <= MAX_ENTRIES => n as usize,
            (Reply::Ok(n), None) => {
                return Err(FdStoreError::Protocol(format!(
                    "{n} entries announced, more than {MAX_ENTRIES}"
                )))
            }
            (Reply::Error(why), _) => return Err(FdStoreError::Refused(why)),
            (other, _) => {
                return Err(FdStoreError::Protocol(format!(
                    "unexpected reply to TAKE_ALL: {other:?}"
                )))
            }
        };
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            match self.reply(&conn)? {
                (Reply::Entry { name, data }, Some(fd)) => out.push(StoredFd { name, data, fd }),
                (other, _) => {
                    return Err(FdStoreError::Protocol(format!(
                        "expected an entry with an fd, got {other:?}"
                    )))
                }
            }
        }
        Ok(out)
    }

    fn simple(
        &self,
        request: &Request,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(), FdStoreError> {
        let conn = self.connect()?;
        send(conn.as_fd(), &request.encode(), fd).map_err(|e| self.io(e))?;
        match self.reply(&conn)? {
            (Reply::Ok(_), None) => Ok(()),
            (Reply::Error(why), _) => Err(FdStoreError::Refused(why)),
            (other, _) => Err(FdStoreError::Protocol(format!(
                "unexpected reply: {other:?}"
            ))),
        }
    }

    fn reply(&self, conn: &UnixStream) -> Result<(Reply, Option<OwnedFd>), FdStoreError> {
        match recv(conn.as_fd())? {
            Some((body, fd)) => Ok((Reply::decode(&body)?, fd)),
            None => Err(FdStoreError::Protocol(
                "the store closed the connection before answering".into(),
            )),
        }
    }

    fn connect(&self) -> Result<UnixStream, FdStoreError> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| self.io(e.into()))?;
        let addr = UnixAddr::new(&self.path).map_err(|e| self.io(e.into()))?;
        connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr).map_err(|e| self.io(e.into()))?;
        // A UnixStream only for its timeouts and ownership; messages go through `wire`.
        let conn = UnixStream::from(sock);
        conn.set_read_timeout(Some(FD_STORE_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(FD_STORE_TIMEOUT)))
            .map_err(|e| self.io(e))?;
        Ok(conn)
    }

    fn io(&self, cause: std::io::Error) -> FdStoreError {
        FdStoreError::Io {
            path: self.path.display().to_string(),
            cause,
        }
    }
}

impl super::FdKeeper for FdStoreClient {
    fn store(
        &self,
        name: &str,
        data: &[u8],
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), FdStoreError> {
        FdStoreClient::store(self, name, data, fd)
    }

    fn remove(&self, name: &str) -> Result<(), FdStoreError> {
        FdStoreClient::remove(self, name)
    }

    fn take_all(&self) -> Result<Vec<StoredFd>, FdStoreError> {
        FdStoreClient::take_all(self)
    }

    fn describe(&self) -> String {
        format!("the fd store at {}", self.path.display())
    }
}
