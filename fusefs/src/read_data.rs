//! The bytes one read returns, without copying cached chunks when it can: [`ReadData`].
//!
//! A FUSE read asks for at most 1 MiB, and chunks are usually larger (4 MiB by default),
//! so most reads lie inside one cached chunk: their answer is that chunk's buffer (an
//! `Arc`, shared with the cache) and a range of it, handed to the kernel as it is. Only a
//! read that spans chunks is copied, once, into a buffer of its own. The kernel's copy
//! into the reader's pages is then the only other one.

use std::ops::Range;

use crate::cache::ChunkData;

/// What a read returns.
#[derive(Debug, Clone, Default)]
pub enum ReadData {
    /// Nothing (at or past the end of the file, or an empty read).
    #[default]
    Empty,
    /// A range of one cached chunk (no copy).
    Shared {
        /// The chunk's plaintext, shared with the cache.
        chunk: ChunkData,
        /// The bytes of it read.
        range: Range<usize>,
    },
    /// Pieces of several chunks, copied together.
    Owned(Vec<u8>),
}

impl ReadData {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::Shared { chunk, range } => chunk.get(range.clone()).unwrap_or(&[]),
            Self::Owned(bytes) => bytes,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as a vector of their own (a copy unless already owned).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Self::Owned(bytes) => bytes,
            other => other.as_slice().to_vec(),
        }
    }
}

/// Puts a [`ReadData`] together from pieces of chunks, in file order: the first piece is
/// kept shared, the second starts a copy.
#[derive(Debug)]
pub(crate) struct ReadAssembler {
    data: ReadData,
    capacity: usize,
}

impl ReadAssembler {
    /// For a read of up to `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            data: ReadData::Empty,
            capacity,
        }
    }

    /// Appends `range` of `chunk`; `false` (and nothing appended) when the range is not
    /// inside the chunk.
    pub(crate) fn push(&mut self, chunk: &ChunkData, range: Range<usize>) -> bool {
        let Some(piece) = chunk.get(range.clone()) else {
            return false;
        };
        if piece.is_empty() {
            return true;
        }
        match &mut self.data {
            ReadData::Empty => {
                self.data = ReadData::Shared {
                    chunk: chunk.clone(),
                    range,
                }
            }
            ReadData::Shared { .. } => {
                let mut bytes = Vec::with_capacity(self.capacity);
                bytes.extend_from_slice(self.data.as_slice());
                bytes.extend_from_slice(piece);
                self.data = ReadData::Owned(bytes);
            }
            ReadData::Owned(bytes) => bytes.extend_from_slice(piece),
        }
        true
    }

    /// What was put together.
    pub(crate) fn finish(self) -> ReadData {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_piece_is_shared_two_are_copied_once() {
        let a: ChunkData = (0u8..10).collect::<Vec<_>>().into();
        let b: ChunkData = (10u8..20).collect::<Vec<_>>().into();

        let mut one = ReadAssembler::new(4);
        assert!(one.push(&a, 3..7));
        let one = one.finish();
        assert!(matches!(one, ReadData::Shared { .. }));
        assert_eq!(one.as_slice(), &[3, 4, 5, 6]);

        let mut two = ReadAssembler::new(6);
        assert!(two.push(&a, 7..10));
        assert!(two.push(&b, 0..0), "an empty piece is fine");
        assert!(two.push(&b, 0..3));
        let two = two.finish();
        assert!(matches!(two, ReadData::Owned(_)));
        assert_eq!(two.into_vec(), vec![7, 8, 9, 10, 11, 12]);

        let mut bad = ReadAssembler::new(4);
        assert!(!bad.push(&a, 8..12), "a range past the chunk is refused");
        assert!(bad.finish().is_empty());
    }
}
