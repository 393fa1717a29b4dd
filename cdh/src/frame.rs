//! The ttrpc message frame: a 10-byte header and a payload, read and written on a byte
//! stream with a bound on the payload size.
//!
//! Wire format (containerd/ttrpc `PROTOCOL.md`, "Message Frame"):
//!
//! ```text
//! +----------------+----------------+----------+-----------+-------------------+
//! | length u32 BE  | stream id u32 BE | type u8 | flags u8  | payload (length)  |
//! +----------------+----------------+----------+-----------+-------------------+
//! ```
//!
//! `length` counts the payload only. Types: 1 request, 2 response, 3 data. Client streams
//! have odd ids. The protocol caps the payload at 4 MiB ([`MAX_MESSAGE_LEN`]); a frame
//! that claims more is refused *before* anything of that size is allocated, and the caller
//! closes the connection (Go's ttrpc instead skips such a frame and answers
//! `RESOURCE_EXHAUSTED`; Veil's front door treats it as a broken peer).

use std::io;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// Largest payload accepted or sent (ttrpc's own limit: 4 MiB).
pub const MAX_MESSAGE_LEN: usize = 4 << 20;

/// Frame type of a request (opens a stream).
pub const TYPE_REQUEST: u8 = 0x1;
/// Frame type of a response (ends a stream).
pub const TYPE_RESPONSE: u8 = 0x2;
/// Frame type of stream data.
pub const TYPE_DATA: u8 = 0x3;

/// A frame that could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The header claims a payload larger than the bound.
    #[error("ttrpc frame on stream {stream_id} claims a {length}-byte payload, more than the {max}-byte limit")]
    TooLarge {
        /// Stream id of the frame.
        stream_id: u32,
        /// Payload length the header claims.
        length: u32,
        /// The bound in force.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("the connection closed in the middle of a ttrpc frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame needed (header or header + payload).
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// Reading or writing the connection failed.
    #[error("ttrpc connection: {0}")]
    Io(#[from] io::Error),
}

/// The 10-byte header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes.
    pub length: u32,
    /// Stream id (odd for client-initiated streams).
    pub stream_id: u32,
    /// Frame type ([`TYPE_REQUEST`], [`TYPE_RESPONSE`], [`TYPE_DATA`] or a future one).
    pub kind: u8,
    /// Type-specific flags.
    pub flags: u8,
}

impl FrameHeader {
    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.length.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8] = self.kind;
        out[9] = self.flags;
        out
    }

    /// Parses a header's wire bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Self {
        Self {
            length: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            stream_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            kind: bytes[8],
            flags: bytes[9],
        }
    }
}

/// One ttrpc frame: header and payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header as received (or to be sent; `length` is set from the payload).
    pub header: FrameHeader,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    // Payloads may carry secrets (a GetResource answer is a key): show only their size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("header", &self.header)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Frame {
    /// A frame of `kind` on `stream_id` with no flags.
    pub fn new(stream_id: u32, kind: u8, payload: Vec<u8>) -> Self {
        Self {
            header: FrameHeader {
                length: payload.len() as u32,
                stream_id,
                kind,
                flags: 0,
            },
            payload,
        }
    }

    /// Header and payload as one buffer, exactly as on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(n < len)` only at end of stream.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = reader.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Reads one frame whose payload is at most `max` bytes. `Ok(None)`: the peer closed the
/// connection cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut head).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let header = FrameHeader::decode(&head);
    let length = header.length as usize;
    if length > max {
        return Err(FrameError::TooLarge {
            stream_id: header.stream_id,
            length: header.length,
            max,
        });
    }
    let mut payload = vec![0u8; length];
    let got = read_full(reader, &mut payload).await?;
    if got < length {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN + length,
            got: HEADER_LEN + got,
        });
    }
    Ok(Some(Frame { header, payload }))
}

/// Writes one frame (header and payload) and flushes it. Refuses a payload over `max`
/// bytes or whose header length disagrees with the payload.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
    max: usize,
) -> Result<(), FrameError> {
    if frame.payload.len() > max || frame.payload.len() > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            stream_id: frame.header.stream_id,
            length: frame.payload.len().min(u32::MAX as usize) as u32,
            max,
        });
    }
    if frame.header.length as usize != frame.payload.len() {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame header says {} bytes but the payload has {}",
                frame.header.length,
                frame.payload.len()
            ),
        )));
    }
    writer.write_all(&frame.to_bytes()).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_is_big_endian() {
        let header = FrameHeader {
            length: 0x0102_0304,
            stream_id: 0x0a0b_0c0d,
            kind: TYPE_REQUEST,
            flags: 0x4,
        };
        let bytes = header.encode();
        assert_eq!(bytes, [1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 1, 4]);
        assert_eq!(FrameHeader::decode(&bytes), header);
    }

    #[tokio::test]
    async fn frames_read_back_and_bounds_hold() {
        let frame = Frame::new(3, TYPE_DATA, b"hello".to_vec());
        let mut wire = Vec::new();
        write_frame(&mut wire, &frame, MAX_MESSAGE_LEN)
            .await
            .unwrap();
        let mut two = wire.clone();
        two.extend_from_slice(&wire);
        let mut reader = &two[..];
        assert_eq!(
            read_frame(&mut reader, MAX_MESSAGE_LEN).await.unwrap(),
            Some(frame.clone())
        );
        assert_eq!(
            read_frame(&mut reader, MAX_MESSAGE_LEN).await.unwrap(),
            Some(frame.clone())
        );
        assert_eq!(
            read_frame(&mut reader, MAX_MESSAGE_LEN).await.unwrap(),
            None
        );

        // A header claiming 4 GiB: refused without reading (or allocating) the payload.
        let huge = FrameHeader {
            length: u32::MAX,
            stream_id: 7,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode();
        let err = read_frame(&mut &huge[..], MAX_MESSAGE_LEN)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                length: u32::MAX,
                stream_id: 7,
                ..
            }
        ));
        assert!(err.to_string().contains("4194304-byte limit"), "{err}");

        let err = read_frame(&mut &wire[..4], MAX_MESSAGE_LEN)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 10,
                    got: 4
                }
            ),
            "{err}"
        );
        let err = read_frame(&mut &wire[..12], MAX_MESSAGE_LEN)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 15,
                    got: 12
                }
            ),
            "{err}"
        );

        let big = Frame::new(1, TYPE_DATA, vec![0; 11]);
        let err = write_frame(&mut Vec::new(), &big, 10).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }
}
