//! The buffered compressed input the gzip and zstd indexers decode from: refilled only
//! when all of it was consumed, so the decoders see exactly the bytes not taken yet.

use std::io::{self, Read};

/// A reader with a buffer of what it read and has not handed on yet.
pub(crate) struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
}

impl<R: Read> Input<R> {
    /// Reads `inner` in pieces of at most `capacity` bytes.
    pub(crate) fn new(inner: R, capacity: usize) -> Self {
        Self {
            inner,
            buf: vec![0u8; capacity].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
        }
    }

    /// Reads more when everything buffered was consumed; `false` at the end of the input.
    pub(crate) fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.pos = 0;
        self.len = 0;
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.len = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The buffered bytes not consumed yet.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }

    /// Marks the first `n` pending bytes consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}
