//! zstd streams with restart points at frame starts.
//!
//! A zstd frame can only be decompressed from its start, but every frame starts fresh:
//! [`ZstdIndexer`] decompresses a stream of frames as a [`Read`] and records a
//! [`ZstdPoint`] (input and output offset) at the start of a frame whenever at least
//! `spacing` bytes of output have passed since the last point. [`resume`] decompresses
//! from a point on, through any number of frames (skippable frames included).
//!
//! A layer written as a single frame (what `zstd` and most image tools produce for a
//! plain `tar+zstd` layer) has one restart point, its start: every read of it that the
//! reader's kept cursors cannot continue decompresses from the beginning of the layer.
//! That is correct, only slow for big single-frame layers; zstd:chunked layers (a frame
//! per file) restart close to any offset.

use super::input::Input;
use std::io::{self, Read};

use zstd::stream::raw::{Decoder as RawDecoder, InBuffer, Operation, OutBuffer};

/// Input buffer size.
const IN_BUF: usize = 128 << 10;

/// Where decompression of a zstd stream can start again: a frame start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdPoint {
    /// Offset of the frame in the compressed stream.
    pub in_offset: u64,
    /// Offset in the decompressed stream of the frame's first byte.
    pub out_offset: u64,
}

/// Decompresses a zstd stream read from `R`, recording restart points.
pub struct ZstdIndexer<R> {
    input: Input<R>,
    in_offset: u64,
    out_offset: u64,
    decoder: RawDecoder<'static>,
    at_frame_start: bool,
    spacing: u64,
    points: Vec<ZstdPoint>,
}

impl<R: Read> ZstdIndexer<R> {
    /// An indexer of the stream `input` (at its start) that records a point at the start
    /// and then at the first frame start after every `spacing` bytes of output.
    pub fn new(input: R, spacing: u64) -> io::Result<Self> {
        Ok(Self {
            input: Input::new(input, IN_BUF),
            in_offset: 0,
            out_offset: 0,
            decoder: RawDecoder::new()?,
            at_frame_start: true,
            spacing: spacing.max(1),
            points: Vec::new(),
        })
    }

    /// The restart points recorded so far.
    pub fn points(&self) -> &[ZstdPoint] {
        &self.points
    }

    /// The restart points recorded.
    pub fn into_points(self) -> Vec<ZstdPoint> {
        self.points
    }
}

impl<R: Read> Read for ZstdIndexer<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.at_frame_start
                && self
                    .points
                    .last()
                    .is_none_or(|p| self.out_offset >= p.out_offset + self.spacing)
            {
                self.points.push(ZstdPoint {
                    in_offset: self.in_offset,
                    out_offset: self.out_offset,
                });
            }
            let eof = !self.input.fill()?;
            if eof && self.at_frame_start {
                return Ok(0);
            }
            let mut input = InBuffer::around(self.input.pending());
            let mut output = OutBuffer::around(out);
            let hint = self.decoder.run(&mut input, &mut output).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "corrupt zstd data near compressed offset {}: {e}",
                        self.in_offset
                    ),
                )
            })?;
            let consumed = input.pos();
            let written = output.pos();
            self.input.consume(consumed);
            self.in_offset += consumed as u64;
            self.out_offset += written as u64;
            self.at_frame_start = hint == 0;
            if written > 0 {
                return Ok(written);
            }
            if consumed == 0 && !self.at_frame_start {
                return Err(if eof {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "zstd stream truncated inside a frame at compressed offset {}",
                            self.in_offset
                        ),
                    )
                } else {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "zstd data at compressed offset {} makes no progress",
                            self.in_offset
                        ),
                    )
                });
            }
        }
    }
}

/// A reader of the decompressed stream from `point` on; `input` must yield the
/// compressed stream from `point.in_offset` on.
pub fn resume<R: Read + Send + 'static>(input: R) -> io::Result<Box<dyn Read + Send>> {
    Ok(Box::new(zstd::stream::read::Decoder::new(input)?))
}
