//! gzip streams with restart points (the zran idea, on a cloneable inflate state).
//!
//! A gzip stream (one member or several concatenated, as eStargz writes them) can only
//! be decompressed from its start: every DEFLATE block may refer to the 32 KiB of output
//! before it. [`GzipDecoder`] decompresses a stream as a [`Read`] and, while indexing,
//! records a [`GzipPoint`] about every `spacing` bytes of output: the input offset the
//! inflater has consumed up to, the output offset, and a copy of the whole inflater
//! state (`miniz_oxide`'s [`InflateState`]: its bit buffer, Huffman tables and the 32 KiB
//! window). Resuming from a point ([`GzipDecoder::resume`]) restores that state and feeds
//! input from the recorded offset, so a read at output offset `o` decompresses at most
//! `spacing` bytes it does not need. Points at member starts need no state at all.
//!
//! gzip headers are parsed here (the inflater runs raw DEFLATE); header CRCs and member
//! trailers (CRC-32, size) are skipped, not checked: the streamed path authenticates
//! the whole blob (ocicrypt HMAC) and every chunk it serves (SHA-256) instead.
//!
//! Memory: a point holds one inflater state, about 43 KiB; with the default 4 MiB
//! spacing that is about 1 % of the layer's uncompressed size.

use super::input::Input;
use std::io::{self, Read};

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// Input buffer size.
const IN_BUF: usize = 64 << 10;

/// Where decompression of a gzip stream can start again.
#[derive(Clone)]
pub struct GzipPoint {
    /// Offset in the compressed stream of the first byte the inflater has not consumed.
    pub in_offset: u64,
    /// Offset in the decompressed stream of the next byte it will produce.
    pub out_offset: u64,
    /// The inflater's state there; `None` at the start of a member (a gzip header).
    pub state: Option<Box<InflateState>>,
}

impl std::fmt::Debug for GzipPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipPoint")
            .field("in_offset", &self.in_offset)
            .field("out_offset", &self.out_offset)
            .field("member_start", &self.state.is_none())
            .finish()
    }
}

impl GzipPoint {
    /// Bytes of memory the point holds.
    pub fn memory(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .state
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<InflateState>())
    }
}

enum Phase {
    /// Before a member's gzip header (or at the end of the stream).
    Header,
    /// Inside a member's DEFLATE data.
    Body(Box<InflateState>),
    /// After a member's DEFLATE data: its 8-byte trailer.
    Trailer,
    /// The input has ended after a complete member.
    Done,
}

/// Records restart points while indexing.
struct Recorder {
    spacing: u64,
    points: Vec<GzipPoint>,
}

impl Recorder {
    fn due(&self, out: u64) -> bool {
        self.points
            .last()
            .is_none_or(|p| out >= p.out_offset + self.spacing)
    }
}

/// Decompresses a gzip stream read from `R` (see the module documentation).
pub struct GzipDecoder<R> {
    input: Input<R>,
    /// Stream offset of `buf[pos]`.
    in_offset: u64,
    out_offset: u64,
    phase: Phase,
    members: u64,
    recorder: Option<Recorder>,
}

fn corrupt(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl<R: Read> GzipDecoder<R> {
    /// A decoder of the stream `input` (at its start) that records a restart point at
    /// the start and then about every `spacing` bytes of output.
    pub fn indexing(input: R, spacing: u64) -> Self {
        let mut decoder = Self::at(input, 0, 0, Phase::Header);
        decoder.recorder = Some(Recorder {
            spacing: spacing.max(1),
            points: Vec::new(),
        });
        decoder
    }

    /// A decoder resuming at `point`; `input` must yield the stream from
    /// `point.in_offset` on.
    pub fn resume(input: R, point: &GzipPoint) -> Self {
        let phase = match &point.state {
            Some(state) => Phase::Body(state.clone()),
            None => Phase::Header,
        };
        let mut decoder = Self::at(input, point.in_offset, point.out_offset, phase);
        // Resuming inside a member or at a later member: the stream had a member before.
        decoder.members = u64::from(point.in_offset > 0);
        decoder
    }

    fn at(input: R, in_offset: u64, out_offset: u64, phase: Phase) -> Self {
        Self {
            input: Input::new(input, IN_BUF),
            in_offset,
            out_offset,
            phase,
            members: 0,
            recorder: None,
        }
    }

    /// Offset in the decompressed stream of the next byte `read` returns.
    pub fn out_offset(&self) -> u64 {
        self.out_offset
    }

    /// The restart points recorded so far.
    pub fn points(&self) -> &[GzipPoint] {
        self.recorder.as_ref().map_or(&[], |r| &r.points)
    }

    /// The restart points recorded.
    pub fn into_points(self) -> Vec<GzipPoint> {
        self.recorder.map(|r| r.points).unwrap_or_default()
    }

    fn byte(&mut self) -> io::Result<Option<u8>> {
        if !self.input.fill()? {
            return Ok(None);
        }
        let b = self.input.pending()[0];
        self.input.consume(1);
        self.in_offset += 1;
        Ok(Some(b))
    }

    fn need(&mut self, what: &str) -> io::Result<u8> {
        self.byte()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "gzip stream ends inside {what} at offset {}",
                    self.in_offset
                ),
            )
        })
    }

    fn skip(&mut self, n: usize, what: &str) -> io::Result<()> {
        for _ in 0..n {
            self.need(what)?;
        }
        Ok(())
    }

    fn skip_cstring(&mut self, what: &str) -> io::Result<()> {
        while self.need(what)? != 0 {}
        Ok(())
    }

    /// Parses a member header; `false` at a clean end of the stream.
    fn header(&mut self) -> io::Result<bool> {
        let start = self.in_offset;
        let Some(id1) = self.byte()? else {
            if self.members == 0 && start == 0 {
                return Err(corrupt("empty gzip stream"));
            }
            return Ok(false);
        };
        let id2 = self.need("a gzip header")?;
        if (id1, id2) != (0x1f, 0x8b) {
            return Err(corrupt(format!(
                "no gzip member at compressed offset {start} (bytes {id1:#04x} {id2:#04x})"
            )));
        }
        if self.need("a gzip header")? != 8 {
            return Err(corrupt(format!(
                "gzip member at compressed offset {start} is not DEFLATE-compressed"
            )));
        }
        let flags = self.need("a gzip header")?;
        self.skip(6, "a gzip header")?; // mtime, xfl, os
        if flags & 0x04 != 0 {
            let lo = self.need("a gzip header")?;
            let hi = self.need("a gzip header")?;
            self.skip(
                usize::from(u16::from_le_bytes([lo, hi])),
                "a gzip extra field",
            )?;
        }
        if flags & 0x08 != 0 {
            self.skip_cstring("a gzip file name")?;
        }
        if flags & 0x10 != 0 {
            self.skip_cstring("a gzip comment")?;
        }
        if flags & 0x02 != 0 {
            self.skip(2, "a gzip header CRC")?;
        }
        self.members += 1;
        Ok(true)
    }
}

impl<R: Read> Read for GzipDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return Ok(0),
                Phase::Header => {
                    let member_start = self.in_offset;
                    let out_offset = self.out_offset;
                    if let Some(rec) = self.recorder.as_mut().filter(|r| r.due(out_offset)) {
                        rec.points.push(GzipPoint {
                            in_offset: member_start,
                            out_offset,
                            state: None,
                        });
                    }
                    if self.header()? {
                        self.phase = Phase::Body(InflateState::new_boxed(DataFormat::Raw));
                    }
                }
                Phase::Trailer => {
                    self.skip(8, "a gzip member trailer")?;
                    self.phase = Phase::Header;
                }
                Phase::Body(mut state) => {
                    let eof = !self.input.fill()?;
                    let result = inflate(&mut state, self.input.pending(), out, MZFlush::None);
                    self.input.consume(result.bytes_consumed);
                    self.in_offset += result.bytes_consumed as u64;
                    self.out_offset += result.bytes_written as u64;
                    let ended = match result.status {
                        Ok(MZStatus::StreamEnd) => true,
                        Ok(_) | Err(MZError::Buf) => false,
                        Err(e) => {
                            return Err(corrupt(format!(
                                "corrupt DEFLATE data before compressed offset {} ({e:?})",
                                self.in_offset
                            )))
                        }
                    };
                    if ended {
                        self.phase = Phase::Trailer;
                    } else {
                        let out_offset = self.out_offset;
                        if let Some(rec) = self
                            .recorder
                            .as_mut()
                            .filter(|r| result.bytes_written > 0 && r.due(out_offset))
                        {
                            rec.points.push(GzipPoint {
                                in_offset: self.in_offset,
                                out_offset,
                                state: Some(state.clone()),
                            });
                        }
                        self.phase = Phase::Body(state);
                    }
                    if result.bytes_written > 0 {
                        return Ok(result.bytes_written);
                    }
                    if !ended && result.bytes_consumed == 0 {
                        return Err(if eof {
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "gzip stream truncated inside DEFLATE data at compressed offset {}",
                                    self.in_offset
                                ),
                            )
                        } else {
                            corrupt(format!(
                                "DEFLATE data at compressed offset {} makes no progress",
                                self.in_offset
                            ))
                        });
                    }
                }
            }
        }
    }
}
