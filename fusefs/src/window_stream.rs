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
//! start to the last byte in), so memory stays within one window. The streaming is
//! `crate::chunk_stream`'s (shared with the prefetch's pieces); this file is what a
//! window does with each chunk.
//!
//! **Failures.** A chunk that fails verification fails only the reads waiting for it, as
//! in a whole window ([`WindowJob::finish`]). When the transfer breaks midway, the
//! chunks complete by then stay served; the claims of the rest are dropped unresolved,
//! so the reads waiting for them fetch them themselves (and fail with EIO if the source
//! still fails): a window is only a guess and its failure fails no read by itself.
//!
//! [`WindowOptions::stream`]: crate::window::WindowOptions::stream
//! [`WindowOptions::keep_plaintext`]: crate::window::WindowOptions::keep_plaintext

use std::io;
use std::ops::Range;
use std::sync::Arc;

#[cfg(doc)]
use veil_blob::BlobSource;
use veil_formats::codec;

use crate::cache::FetchGuard;
use crate::chunk_stream;
use crate::window::{InFlight, WindowJob};

/// Streams `range` of `job`'s source and completes each chunk of `claims` (layer-wide
/// indices, claimed) as its bytes arrive; see the module documentation. Counts the
/// bytes received, and returns how the transfer ended. The window stops counting as in flight
/// (`in_flight` is dropped) when its transfer ends; every chunk decode it started has
/// finished when it returns.
pub(crate) async fn fetch(
    job: Arc<WindowJob>,
    range: Range<u64>,
    claims: Vec<(usize, FetchGuard<'static>)>,
    in_flight: InFlight,
) -> io::Result<()> {
    let keep_all = job.state.options.keep_plaintext;
    let claims = claims
        .into_iter()
        .map(|(i, guard)| (i, keep_all, guard))
        .collect();
    let mut decodes = Vec::new();
    let (result, received) = chunk_stream::stream_claims(
        job.source.as_ref(),
        job.tree.chunks(),
        range,
        claims,
        false,
        |done| {
            let job = job.clone();
            decodes.push(tokio::task::spawn_blocking(move || {
                for (i, guard, bytes) in done {
                    let result =
                        codec::decode_chunk(&job.tree.chunks()[i], &bytes, job.tree.limits());
                    job.finish(i, guard, result);
                }
            }));
        },
    )
    .await;
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
