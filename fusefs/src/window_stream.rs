//! A window's chunks completed as its response streams in ([`WindowOptions::stream`]).
//!
//! A window is one range request; read whole, a read of the window's first chunk would
//! wait for its last byte. Here the range comes through [`BlobSource::stream_range`]
//! (from the registry piece by piece, written to the disk cache as it arrives, decrypted
//! piece by piece), and as soon as the bytes of a claimed chunk are in:
//!
//! - when someone waits for it (or [`WindowOptions::keep_plaintext`] is set), it is
//!   decoded and verified on the blocking pool, put into the plaintext cache and its
//!   waiters woken, while the rest of the window keeps arriving;
//! - otherwise its claim is released: its bytes are on disk already (the disk cache
//!   keeps each piece before handing it up), so a later read of it is a local read.
//!
//! Only the bytes of chunks not complete yet are held (from the first such chunk's
//! start to the last byte in), so memory stays within one window.
//!
//! **Failures.** A chunk that fails verification fails only the reads waiting for it, as
//! in a whole window ([`WindowJob::finish`]). When the transfer breaks midway, the
//! chunks complete by then stay served; the claims of the rest are dropped unresolved,
//! so the reads waiting for them fetch them themselves (and fail with EIO if the source
//! still fails): a window is only a guess and its failure fails no read by itself.
//!
//! [`WindowOptions::stream`]: crate::window::WindowOptions::stream
//! [`WindowOptions::keep_plaintext`]: crate::window::WindowOptions::keep_plaintext

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use futures::StreamExt;
use veil_blob::stream::Exact;
#[cfg(doc)]
use veil_blob::BlobSource;
use veil_formats::codec;

use crate::cache::FetchGuard;
use crate::window::{InFlight, WindowJob};

/// Streams `range` of `job`'s source and completes each chunk of `claims` (layer-wide
/// indices, claimed) as its bytes arrive; see the module documentation. Counts the
/// bytes received, and returns how the transfer ended. The window stops counting as in flight
/// (`in_flight` is dropped) when its transfer ends; every chunk decode it started has
/// finished when it returns.
pub(crate) async fn fetch(
    job: Arc<WindowJob>,
    range: Range<u64>,
    mut claims: Vec<(usize, FetchGuard<'static>)>,
    in_flight: InFlight,
) -> io::Result<()> {
    let chunks = job.tree.chunks();
    claims.sort_by_key(|(i, _)| chunks[*i].blob_offset);
    let mut pending: VecDeque<_> = claims.into();
    let keep_all = job.state.options.keep_plaintext;
    let mut stream = Exact::new(job.source.stream_range(range.clone()), range.clone());
    // The bytes from `held_from` up to the last byte in.
    let mut held: Vec<u8> = Vec::new();
    let mut held_from = range.start;
    let mut decodes = Vec::new();
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
        while let Some((i, _)) = pending.front() {
            let c = &chunks[*i];
            if c.blob_end > at {
                break;
            }
            let Some((i, guard)) = pending.pop_front() else {
                break;
            };
            if keep_all || guard.has_waiters() {
                let from = (c.blob_offset - held_from) as usize;
                let to = (c.blob_end - held_from) as usize;
                done.push((i, guard, held[from..to].to_vec()));
            }
            // Otherwise the claim is released here: the bytes are kept below.
        }
        let keep_from = pending
            .front()
            .map_or(at, |(i, _)| chunks[*i].blob_offset.min(at));
        if keep_from > held_from {
            held.drain(..(keep_from - held_from) as usize);
            held_from = keep_from;
        }
        if !done.is_empty() {
            let job = job.clone();
            decodes.push(tokio::task::spawn_blocking(move || {
                for (i, guard, bytes) in done {
                    let result =
                        codec::decode_chunk(&job.tree.chunks()[i], &bytes, job.tree.limits());
                    job.finish(i, guard, result);
                }
            }));
        }
    }
    // The claims left (a broken transfer) are dropped unresolved with `pending`.
    drop(pending);
    let received = stream.at() - range.start;
    job.state
        .counters
        .bytes
        .fetch_add(received, std::sync::atomic::Ordering::Relaxed);
    drop(in_flight);
    for decode in decodes {
        // A decode task that died dropped its guards: their waiters fetch themselves.
        let _ = decode.await;
    }
    result
}

#[cfg(test)]
#[path = "window_stream_tests.rs"]
mod tests;
