//! Makes a client's HTTP/2 byte stream acceptable to h2 whatever `:authority` it sends.
//!
//! # Why
//!
//! gRPC clients dialled with a unix socket path send that path, or a percent-encoded form
//! of it, as the request's `:authority` (grpc-go dialled with a bare path; grpcio since
//! about 1.60 with `unix:/path`). The h2 crate under tonic parses `:authority` as an
//! `http::uri::Authority` (h2 0.3 and 0.4, `server::Peer::convert_poll_message`) and
//! answers anything else with `RST_STREAM PROTOCOL_ERROR` ("malformed authority"): the
//! call fails before Veil sees it. h2 has no option to relax this, and a modified copy of
//! h2 is not an option either. On a unix socket the authority names nothing: the socket is
//! the destination.
//!
//! # How
//!
//! [`AuthorityRewriter`] sits between the socket and h2 on the client-to-server side of a
//! connection (see [`crate::grpc_unix`]). It passes the connection preface and every frame
//! through unchanged, except header blocks (`HEADERS` and its `CONTINUATION`s): those it
//! decodes with HPACK (keeping the client's dynamic table, as h2 would), drops an
//! `:authority` that `http::uri::Authority` does not accept (exactly h2's test; one that
//! parses is kept) and encodes the block again. The new encoding uses only "literal
//! without indexing" fields, so h2's decoder never adds to its dynamic table and stays in
//! step however the client indexes; it goes out as one `HEADERS` frame (the original's
//! stream, `END_STREAM` and priority, no padding) plus `CONTINUATION`s, each at most
//! [`FRAME_SIZE`] bytes, the size every HTTP/2 peer accepts. A request without
//! `:authority` is valid HTTP/2; h2 gives it a path-only URI, which tonic routes as usual.
//! The server-to-client side is not touched.
//!
//! A client that breaks HTTP/2 framing or HPACK gets an error from [`AuthorityRewriter::push`]
//! and its connection is closed, as h2 itself would close it (with `GOAWAY`). Header blocks
//! are bounded ([`MAX_HEADER_BLOCK`], [`MAX_HEADER_LIST`]), as is the HPACK table a client
//! may ask for ([`HPACK_TABLE_SIZE`]).

use loona_hpack::decoder::{Decoder, DecoderError};
use loona_hpack::encoder::encode_integer_into;
use tonic::codegen::http::uri::Authority;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// Length of a frame header.
const FRAME_HEAD_LEN: usize = 9;
/// Frame types that carry header blocks from a client.
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// `HEADERS` flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Length of a `HEADERS` frame's priority fields (stream dependency and weight).
const PRIORITY_LEN: usize = 5;

/// Largest frame payload the rewriter sends: the initial `SETTINGS_MAX_FRAME_SIZE`, which
/// no peer may set lower.
pub const FRAME_SIZE: usize = 16_384;

/// Largest header block (all its frames' fragments) accepted from a client, compressed.
/// gRPC clients keep metadata to 8–16 KiB by default.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Largest decoded header list accepted (names, values and 32 bytes a field, as
/// `SETTINGS_MAX_HEADER_LIST_SIZE` counts): a block of indexed fields decodes to far more
/// than its size.
pub const MAX_HEADER_LIST: usize = 1 << 20;

/// Largest HPACK dynamic table a client may use: the protocol default, which h2's server
/// does not change (a client may not exceed what the server's settings allow).
pub const HPACK_TABLE_SIZE: usize = 4096;

/// What is wrong with a client's HTTP/2 byte stream.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// A frame other than the header block's `CONTINUATION` arrived inside a header block,
    /// or a `CONTINUATION` arrived outside one.
    #[error("HTTP/2 frame of type {kind:#x} where a header block's CONTINUATION was expected or not allowed")]
    UnexpectedFrame {
        /// The frame type.
        kind: u8,
    },
    /// A `HEADERS` frame's padding or priority fields do not fit in it.
    #[error("HTTP/2 HEADERS frame of {len} bytes too short for its padding or priority")]
    BadHeadersFrame {
        /// The frame's payload length.
        len: usize,
    },
    /// A header block is larger than [`MAX_HEADER_BLOCK`] or decodes to more than
    /// [`MAX_HEADER_LIST`].
    #[error("HTTP/2 header block larger than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The header block is not valid HPACK.
    #[error("HTTP/2 header block is not valid HPACK: {0}")]
    Hpack(DecoderError),
}

/// A header block whose `END_HEADERS` has not arrived yet.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// The client-to-server byte stream of one HTTP/2 connection, rewritten so that h2
/// accepts any `:authority` (see the module doc).
pub struct AuthorityRewriter {
    /// Preface bytes still to pass through.
    preface_left: usize,
    /// Payload bytes of a frame that passes through unchanged, still to come.
    passing: usize,
    /// Bytes received but not consumed yet: part of a frame header, or of a header frame.
    input: Vec<u8>,
    block: Option<OpenBlock>,
    decoder: Decoder<'static>,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    /// A rewriter for a new connection (the preface comes first).
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        Self {
            preface_left: PREFACE_LEN,
            passing: 0,
            input: Vec::new(),
            block: None,
            decoder,
        }
    }

    /// Takes the next bytes the client sent and appends what h2 is to read to `out`. Bytes
    /// of an incomplete header frame are kept until the rest arrives.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        self.input.extend_from_slice(data);
        let mut at = 0;
        let result = self.process(&mut at, out);
        self.input.drain(..at);
        result
    }

    fn process(&mut self, at: &mut usize, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        loop {
            let rest = &self.input[*at..];
            if rest.is_empty() {
                return Ok(());
            }
            if self.preface_left > 0 || self.passing > 0 {
                let through = if self.preface_left > 0 {
                    &mut self.preface_left
                } else {
                    &mut self.passing
                };
                let n = (*through).min(rest.len());
                out.extend_from_slice(&rest[..n]);
                *through -= n;
                *at += n;
                continue;
            }
            if rest.len() < FRAME_HEAD_LEN {
                return Ok(());
            }
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let kind = rest[3];
            let flags = rest[4];
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            match (kind, self.block.is_some()) {
                (HEADERS, false) | (CONTINUATION, true) => {
                    if len > MAX_HEADER_BLOCK {
                        return Err(RewriteError::TooLarge {
                            limit: MAX_HEADER_BLOCK,
                        });
                    }
                    if rest.len() < FRAME_HEAD_LEN + len {
                        return Ok(());
                    }
                    let payload = rest[FRAME_HEAD_LEN..FRAME_HEAD_LEN + len].to_vec();
                    *at += FRAME_HEAD_LEN + len;
                    self.header_frame(kind, flags, stream, &payload, out)?;
                }
                (CONTINUATION, false) | (_, true) => {
                    return Err(RewriteError::UnexpectedFrame { kind });
                }
                _ => {
                    out.extend_from_slice(&rest[..FRAME_HEAD_LEN]);
                    *at += FRAME_HEAD_LEN;
                    self.passing = len;
                }
            }
        }
    }

    /// A `HEADERS` frame, or a `CONTINUATION` of the open block.
    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        if kind == HEADERS {
            let bad = || RewriteError::BadHeadersFrame { len: payload.len() };
            let mut body = payload;
            if flags & PADDED != 0 {
                let (&pad, rest) = body.split_first().ok_or_else(bad)?;
                let keep = rest.len().checked_sub(usize::from(pad)).ok_or_else(bad)?;
                body = &rest[..keep];
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (fields, rest) = body.split_first_chunk::<PRIORITY_LEN>().ok_or_else(bad)?;
                priority = Some(*fields);
                body = rest;
            }
            self.block = Some(OpenBlock {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: body.to_vec(),
            });
        } else if let Some(block) = self.block.as_mut() {
            if block.stream != stream {
                return Err(RewriteError::UnexpectedFrame { kind });
            }
            if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                return Err(RewriteError::TooLarge {
                    limit: MAX_HEADER_BLOCK,
                });
            }
            block.fragment.extend_from_slice(payload);
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                let encoded = self.reencode(&block.fragment)?;
                write_block(&block, &encoded, out);
            }
        }
        Ok(())
    }

    /// Decodes a whole header block and encodes it again without an `:authority` that h2
    /// would refuse, as literals that do not touch the dynamic table.
    fn reencode(&mut self, fragment: &[u8]) -> Result<Vec<u8>, RewriteError> {
        let mut encoded = Vec::with_capacity(fragment.len() + fragment.len() / 2);
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size > MAX_HEADER_LIST {
                    return;
                }
                if &*name == b":authority" && Authority::try_from(&*value).is_err() {
                    return;
                }
                literal(&name, &value, &mut encoded);
            })
            .map_err(RewriteError::Hpack)?;
        if list_size > MAX_HEADER_LIST {
            return Err(RewriteError::TooLarge {
                limit: MAX_HEADER_LIST,
            });
        }
        Ok(encoded)
    }
}

/// Appends a "literal header field without indexing, new name" (RFC 7541 §6.2.2), with
/// plain (not Huffman) strings.
fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for s in [name, value] {
        // Writing to a Vec cannot fail.
        let _ = encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// Appends `encoded` as `block`'s `HEADERS` frame and as many `CONTINUATION` frames as it
/// needs, none larger than [`FRAME_SIZE`].
fn write_block(block: &OpenBlock, encoded: &[u8], out: &mut Vec<u8>) {
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| p.as_slice());
    let first = encoded.len().min(FRAME_SIZE - priority.len());
    let mut flags = 0;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if first == encoded.len() {
        flags |= END_HEADERS;
    }
    frame_head(priority.len() + first, HEADERS, flags, block.stream, out);
    out.extend_from_slice(priority);
    out.extend_from_slice(&encoded[..first]);
    let mut rest = &encoded[first..];
    while !rest.is_empty() {
        let n = rest.len().min(FRAME_SIZE);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        frame_head(n, CONTINUATION, flags, block.stream, out);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn frame_head(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = len.to_be_bytes();
    out.extend_from_slice(&len[len.len() - 3..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_head(payload.len(), kind, flags, stream, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// Splits h2's side of the stream into frames after the preface.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
        bytes = &bytes[PREFACE_LEN..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (
                b":path",
                b"/containerd.services.snapshots.v1.Snapshots/List".to_vec(),
            ),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
            (b"grpc-accept-encoding", b"identity,deflate,gzip".to_vec()),
        ]
    }

    fn encode(encoder: &mut Encoder<'_>, fields: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    /// Feeds `input` one byte at a time (every split point is exercised).
    fn rewrite_bytewise(input: &[u8]) -> Vec<u8> {
        let mut rewriter = AuthorityRewriter::new();
        let mut out = Vec::new();
        for b in input {
            rewriter.push(std::slice::from_ref(b), &mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_socket_path_authority_is_dropped_and_the_rest_kept_across_indexed_blocks() {
        // Two requests on one connection: the second refers to the first's dynamic-table
        // entries, as real clients do.
        let mut encoder = Encoder::new();
        let first = encode(&mut encoder, &request(b"/run/veil/veil.sock"));
        let second = encode(&mut encoder, &request(b"%2Frun%2Fveil%2Fveil.sock"));
        assert!(
            second.len() + 40 < first.len(),
            "the second block is indexed"
        );
        let data = frame(0x0, 0x1, 1, b"\0\0\0\0\0");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(&data);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        let got = frames(&rewrite_bytewise(&input));
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (0x4, 0, 0, vec![]));
        assert_eq!(got[2], (0x0, 0x1, 1, b"\0\0\0\0\0".to_vec()));
        let mut h2_side = Decoder::new();
        for (i, stream, flags) in [(1, 1, END_HEADERS), (3, 3, END_HEADERS | END_STREAM)] {
            let (kind, f, s, block) = &got[i];
            assert_eq!((*kind, *f, *s), (HEADERS, flags, stream));
            let fields = h2_side.decode(block).unwrap();
            let mut expected = request(b"");
            expected.retain(|(n, _)| *n != b":authority");
            let expected: Vec<(Vec<u8>, Vec<u8>)> =
                expected.into_iter().map(|(n, v)| (n.to_vec(), v)).collect();
            assert_eq!(fields, expected);
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let block = encode(&mut Encoder::new(), &request(b"localhost:50051"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let got = frames(&rewrite_bytewise(&input));
        let fields = Decoder::new().decode(&got[0].3).unwrap();
        assert!(fields.contains(&(b":authority".to_vec(), b"localhost:50051".to_vec())));
    }

    #[test]
    fn padding_priority_and_continuations_are_handled() {
        let mut fields = request(b"/tmp/x.sock");
        fields.push((b"x-big", vec![b'a'; 40_000]));
        let block = encode(&mut Encoder::new(), &fields);
        let mut headers = vec![3u8]; // pad length
        headers.extend([0, 0, 0, 0, 15]); // priority
        headers.extend(&block[..100]);
        headers.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &headers));
        input.extend(frame(CONTINUATION, 0, 5, &block[100..20_000]));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, &block[20_000..]));
        let got = frames(&rewrite_bytewise(&input));
        assert_eq!(got.len(), 3, "40 KB of headers need three frames of 16 KiB");
        assert_eq!(got[0].0, HEADERS);
        assert_eq!(got[0].1, PRIORITY | END_STREAM);
        assert_eq!(&got[0].3[..5], &[0, 0, 0, 0, 15]);
        assert_eq!((got[1].0, got[1].1), (CONTINUATION, 0));
        assert_eq!((got[2].0, got[2].1), (CONTINUATION, END_HEADERS));
        let mut whole = got[0].3[5..].to_vec();
        whole.extend(&got[1].3);
        whole.extend(&got[2].3);
        assert!(got.iter().all(|f| f.3.len() <= FRAME_SIZE));
        let decoded = Decoder::new().decode(&whole).unwrap();
        assert_eq!(decoded.len(), fields.len() - 1);
        assert_eq!(decoded.last().unwrap().1.len(), 40_000);
    }

    #[test]
    fn broken_streams_are_refused() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"\x82"));
        let err = AuthorityRewriter::new()
            .push(&input, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(
            err,
            RewriteError::UnexpectedFrame { kind: CONTINUATION }
        ));

        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\x7f"));
        let err = AuthorityRewriter::new()
            .push(&input, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, RewriteError::Hpack(_)), "{err}");

        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED, 1, b"\x09abc"));
        let err = AuthorityRewriter::new()
            .push(&input, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, RewriteError::BadHeadersFrame { len: 4 }),
            "{err}"
        );

        // One indexed byte per field refers to a 4 KB table entry: far more decoded than sent.
        let mut encoder = Encoder::new();
        let big = vec![b'v'; 4000];
        let mut block = encode(&mut encoder, &[(b"x-a", big.clone())]);
        block.extend(vec![0xbe; 300]); // index 62: the dynamic entry
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let err = AuthorityRewriter::new()
            .push(&input, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, RewriteError::TooLarge { .. }), "{err}");
    }
}
