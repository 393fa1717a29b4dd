//! Claimed chunks handed on as a range streams in: the part that windows
//! ([`crate::window_stream`]) and prefetch pieces ([`crate::prefetch`]) share.
//!
//! A range request covers many chunks; read whole, the reader of its first chunk waits
//! for its last byte. [`stream_claims`] reads the range through
//! [`BlobSource::stream_range`] (from the registry piece by piece, written to the disk
//! cache as it arrives, decrypted piece by piece) and, after each piece, hands on every
//! claimed chunk whose bytes are now complete:
//!
//! - a chunk that is *wanted* (the caller keeps it in any case) or that a read is waiting
//!   for goes to the caller's `arrived` with its bytes, to be decoded and verified (on
//!   the blocking pool, while the rest keeps arriving);
//! - any other chunk's claim is released: its bytes are on disk already (a disk cache
//!   keeps each piece before handing it up), so a later read of it is a local read.
//!
//! Only the bytes of chunks not complete yet are held (from the first such chunk's start
//! to the last byte in), so memory stays within one range. When the transfer breaks,
//! the claims of the chunks not complete are dropped unresolved: the reads waiting for
//! them fetch them themselves.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;

use futures::StreamExt;
use veil_blob::stream::Exact;
use veil_blob::BlobSource;
use veil_formats::toc::Chunk;

use crate::cache::FetchGuard;

/// A claimed chunk for [`stream_claims`]: its layer-wide index, whether the caller wants
/// its bytes even when no read waits for it, and the claim.
pub(crate) type Claim = (usize, bool, FetchGuard<'static>);

/// A chunk whose bytes are in: its index, its claim and its bytes (as the source served
/// them, not yet decoded or verified).
pub(crate) type Arrived = (usize, FetchGuard<'static>, Vec<u8>);

/// Streams `range` of `source` and hands the claimed chunks of `claims` (indices into
/// `chunks`, all inside `range`) to `arrived` as their bytes come in, in batches (the
/// chunks one piece of the response completed); see the module documentation. With
/// `whole`, the range is read as one piece (every chunk handed on once all are in: the
/// behaviour before streaming, kept for side-by-side runs). Returns how the transfer
/// ended and how many bytes of the range arrived.
pub(crate) async fn stream_claims(
    source: &dyn BlobSource,
    chunks: &[Chunk],
    range: Range<u64>,
    mut claims: Vec<Claim>,
    whole: bool,
    mut arrived: impl FnMut(Vec<Arrived>),
) -> (io::Result<()>, u64) {
    claims.sort_by_key(|(i, _, _)| chunks[*i].blob_offset);
    let mut pending: VecDeque<Claim> = claims.into();
    let pieces = if whole {
        veil_blob::stream::whole(source, range.clone())
    } else {
        source.stream_range(range.clone())
    };
    let mut stream = Exact::new(pieces, range.clone());
    // The bytes from `held_from` up to the last byte in.
    let mut held: Vec<u8> = Vec::new();
    let mut held_from = range.start;
    let mut result = Ok(());
    while let Some(piece) = stream.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(err) => {
                result = Err(err);
                break;
            }
        };
        let at = stream.at();
        held.extend_from_slice(&piece);
        let mut done = Vec::new();
        while let Some((i, _, _)) = pending.front() {
            let c = &chunks[*i];
            if c.blob_end > at {
                break;
            }
            let Some((i, wanted, guard)) = pending.pop_front() else {
                break;
            };
            if wanted || guard.has_waiters() {
                let from = (c.blob_offset - held_from) as usize;
                let to = (c.blob_end - held_from) as usize;
                done.push((i, guard, held[from..to].to_vec()));
            }
            // Otherwise the claim is released here: the source has kept the bytes.
        }
        let keep_from = pending
            .front()
            .map_or(at, |(i, _, _)| chunks[*i].blob_offset.min(at));
        if keep_from > held_from {
            held.drain(..(keep_from - held_from) as usize);
            held_from = keep_from;
        }
        if !done.is_empty() {
            arrived(done);
        }
    }
    // The claims left (a broken transfer) are dropped unresolved with `pending`.
    drop(pending);
    (result, stream.at() - range.start)
}
