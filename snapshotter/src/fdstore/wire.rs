//! The fd store's messages: encoding, decoding, and sending them with an fd attached.
//!
//! Requests: `STORE name data` (+ the fd), `REMOVE name`, `TAKE_ALL`. Replies: `OK`,
//! `ERROR message`, and for `TAKE_ALL` an `OK count` followed by `count` `ENTRY name data`
//! messages (+ each entry's fd). Strings are a `u16` length and UTF-8; data is a `u32`
//! length and bytes; all integers big-endian.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::{FdStoreError, MAX_DATA_BYTES, MAX_NAME_BYTES};

/// Largest message (a name, data and headers fit with room to spare).
pub const MAX_MESSAGE_BYTES: usize = MAX_DATA_BYTES + MAX_NAME_BYTES + 64;

/// A request to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Hold the attached fd under `name` (replacing one held under it), with `data`.
    Store {
        /// The name.
        name: String,
        /// Opaque bytes kept with the fd.
        data: Vec<u8>,
    },
    /// Close the fd held under `name` (no error if there is none).
    Remove {
        /// The name.
        name: String,
    },
    /// Send every held fd with its name and data (and keep holding them).
    TakeAll,
}

/// A reply from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; for `TakeAll`, how many `Entry` messages follow.
    Ok(u32),
    /// Refused, and why.
    Error(String),
    /// One held fd (attached) with its name and data.
    Entry {
        /// The name.
        name: String,
        /// The data stored with it.
        data: Vec<u8>,
    },
}

/// Longest error message sent (longer ones are cut).
pub const MAX_ERROR_BYTES: usize = 1024;

const STORE: u8 = 1;
const REMOVE: u8 = 2;
const TAKE_ALL: u8 = 3;
const OK: u8 = 0x81;
const ERROR: u8 = 0x82;
const ENTRY: u8 = 0x83;

fn bad(what: impl Into<String>) -> FdStoreError {
    FdStoreError::Protocol(what.into())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_data(out: &mut Vec<u8>, d: &[u8]) {
    out.extend_from_slice(&(d.len() as u32).to_be_bytes());
    out.extend_from_slice(d);
}

/// Checks a name and data against the limits.
pub fn check(name: &str, data: &[u8]) -> Result<(), FdStoreError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(bad(format!(
            "a name must be 1 to {MAX_NAME_BYTES} bytes, not {}",
            name.len()
        )));
    }
    if data.len() > MAX_DATA_BYTES {
        return Err(bad(format!(
            "data of {name:?} is {} bytes, more than {MAX_DATA_BYTES}",
            data.len()
        )));
    }
    Ok(())
}

impl Request {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Store { name, data } => {
                out.push(STORE);
                put_str(&mut out, name);
                put_data(&mut out, data);
            }
            Request::Remove { name } => {
                out.push(REMOVE);
                put_str(&mut out, name);
            }
            Request::TakeAll => out.push(TAKE_ALL),
        }
        out
    }

    /// Parses a message body.
    pub fn decode(body: &[u8]) -> Result<Self, FdStoreError> {
        let mut r = Reader(body);
        let request = match r.u8()? {
            STORE => Request::Store {
                name: r.string()?,
                data: r.data()?,
            },
            REMOVE => Request::Remove { name: r.string()? },
            TAKE_ALL => Request::TakeAll,
            op => return Err(bad(format!("unknown request type {op}"))),
        };
        r.end()?;
        Ok(request)
    }
}

impl Reply {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::Ok(n) => {
                out.push(OK);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Reply::Error(message) => {
                out.push(ERROR);
                let cut = message
                    .char_indices()
                    .map(|(i, c)| i + c.len_utf8())
                    .take_while(|end| *end <= MAX_ERROR_BYTES)
                    .last()
                    .unwrap_or(0);
                put_str(&mut out, &message[..cut]);
            }
            Reply::Entry { name, data } => {
                out.push(ENTRY);
                put_str(&mut out, name);
                put_data(&mut out, data);
            }
        }
        out
    }

    /// Parses a message body.
    pub fn decode(body: &[u8]) -> Result<Self, FdStoreError> {
        let mut r = Reader(body);
        let reply = match r.u8()? {
            OK => Reply::Ok(r.u32()?),
            ERROR => Reply::Error(r.string()?),
            ENTRY => Reply::Entry {
                name: r.string()?,
                data: r.data()?,
            },
            op => return Err(bad(format!("unknown reply type {op}"))),
        };
        r.end()?;
        Ok(reply)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FdStoreError> {
        if self.0.len() < n {
            return Err(bad("message cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FdStoreError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FdStoreError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, FdStoreError> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| bad("a name is not UTF-8"))
    }
    fn data(&mut self) -> Result<Vec<u8>, FdStoreError> {
        let len = self.u32()? as usize;
        if len > MAX_DATA_BYTES {
            return Err(bad(format!(
                "data of {len} bytes, more than {MAX_DATA_BYTES}"
            )));
        }
        Ok(self.take(len)?.to_vec())
    }
    fn end(&self) -> Result<(), FdStoreError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} bytes after the message", self.0.len())))
        }
    }
}

/// Sends `body` as one message, length-prefixed, with `fd` attached when given.
pub fn send(
    socket: BorrowedFd<'_>,
    body: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let len = (body.len() as u32).to_be_bytes();
    let iov = [IoSlice::new(&len), IoSlice::new(body)];
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// One message received: its body and the fd attached to it, if any.
pub type Received = (Vec<u8>, Option<OwnedFd>);

/// Receives one message. `Ok(None)`: the peer closed the connection.
pub fn recv(socket: BorrowedFd<'_>) -> Result<Option<Received>, FdStoreError> {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 4];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let io_err = |e: nix::Error| FdStoreError::Protocol(format!("receiving: {e}"));
    let (n, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io_err)?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: the kernel installed these fds for us; nobody else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                    );
                }
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(bad("more fds attached than one"));
    }
    if n == 0 {
        return Ok(None);
    }
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(bad(format!(
            "a message longer than {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    if n < 4 {
        return Err(bad("a message shorter than its length prefix"));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len != n - 4 {
        return Err(bad(format!(
            "length prefix says {len} bytes, the message has {}",
            n - 4
        )));
    }
    let mut fds = fds.into_iter();
    let fd = fds.next();
    if fds.next().is_some() {
        return Err(bad("more fds attached than one"));
    }
    buf.truncate(n);
    buf.drain(..4);
    Ok(Some((buf, fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        for r in [
            Request::Store {
                name: "12".into(),
                data: b"{}".to_vec(),
            },
            Request::Remove { name: "x".into() },
            Request::TakeAll,
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Reply::Ok(3),
            Reply::Error("no".into()),
            Reply::Entry {
                name: "a".into(),
                data: vec![1, 2],
            },
        ] {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
        assert!(Request::decode(&[9]).is_err());
        assert!(Request::decode(&[STORE, 0, 5, b'a']).is_err());
        let mut long = vec![STORE, 0, 1, b'a'];
        long.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Request::decode(&long)
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(Request::decode(&[TAKE_ALL, 0]).is_err());
        assert!(check("", b"").is_err());
        assert!(check(&"n".repeat(256), b"").is_err());
    }
}
