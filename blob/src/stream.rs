//! Streaming range reads: a range's bytes handed up in order as they arrive
//! ([`BlobSource::stream_range`](crate::BlobSource::stream_range)), so that a reader can
//! use the front of a long response before its end is in.
//!
//! A [`RangeStream`] yields pieces that follow one another without gap from the range's
//! start; an error ends it, after a prefix of the range (possibly empty). [`generate`]
//! writes such a stream as plain async code (what it sends is what the stream yields,
//! one piece held at a time); [`Exact`] checks a stream against the range it was asked
//! for (no piece past its end, no end before it).

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::stream::{BoxStream, Stream};
use futures::{FutureExt, SinkExt, StreamExt};

/// A range's bytes in order: pieces without gap from its start, or an error after a
/// prefix of them.
pub type RangeStream<'a> = BoxStream<'a, io::Result<Bytes>>;

/// Where [`generate`]'s body sends the stream's items.
pub struct Pieces(mpsc::Sender<io::Result<Bytes>>);

impl Pieces {
    /// Hands `item` to the stream's reader, waiting until it has taken the previous
    /// one. `false`: the reader has dropped the stream (stop producing).
    pub async fn send(&mut self, item: io::Result<Bytes>) -> bool {
        self.0.send(item).await.is_ok()
    }
}

/// A stream whose items are what `produce` sends through its [`Pieces`]; it ends when
/// `produce` returns. `produce` runs only while the stream is polled, and at most one
/// item waits between it and the reader (memory stays bounded by the pieces' size).
pub fn generate<'a, F, Fut>(produce: F) -> RangeStream<'a>
where
    F: FnOnce(Pieces) -> Fut,
    Fut: Future<Output = ()> + Send + 'a,
{
    let (tx, rx) = mpsc::channel(0);
    let body = produce(Pieces(tx))
        .into_stream()
        .filter_map(|()| async { None });
    Box::pin(futures::stream::select(rx, body))
}

/// `range` of `source` as one piece, [`BlobSource::read_range`]: the stream of a source
/// that cannot do better, or of a reader that wants the range whole.
///
/// [`BlobSource::read_range`]: crate::BlobSource::read_range
pub fn whole(source: &(impl crate::BlobSource + ?Sized), range: Range<u64>) -> RangeStream<'_> {
    Box::pin(futures::stream::once(async move {
        source.read_range(range).await.map(Bytes::from)
    }))
}

/// The whole of `range` from `stream` in one buffer, or an error (also when the stream
/// ends early or runs past the range).
pub async fn collect(stream: RangeStream<'_>, range: Range<u64>) -> io::Result<Vec<u8>> {
    let len = range.end.saturating_sub(range.start);
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(64 << 20));
    let mut stream = Exact::new(stream, range);
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

/// A [`RangeStream`] checked against its range: a piece reaching past the range's end,
/// or an end before it, becomes an [`io::ErrorKind::UnexpectedEof`] /
/// [`io::ErrorKind::InvalidData`] error; nothing follows an error.
pub struct Exact<'a> {
    inner: RangeStream<'a>,
    range: Range<u64>,
    at: u64,
    done: bool,
}

impl<'a> Exact<'a> {
    /// Checks `inner`, a stream of `range`.
    pub fn new(inner: RangeStream<'a>, range: Range<u64>) -> Self {
        Self {
            at: range.start,
            inner,
            range,
            done: false,
        }
    }

    /// The blob offset the next piece starts at (bytes before it have been yielded).
    pub fn at(&self) -> u64 {
        self.at
    }
}

impl Stream for Exact<'_> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let range = self.range.clone();
        let checked = match item {
            Some(Ok(piece)) if self.at + piece.len() as u64 > range.end => {
                Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the source sent bytes past the end of range {range:?} (at {}, {} more)",
                        self.at,
                        piece.len()
                    ),
                )))
            }
            Some(Ok(piece)) => {
                self.at += piece.len() as u64;
                return Poll::Ready(Some(Ok(piece)));
            }
            Some(Err(err)) => Some(Err(err)),
            None if self.at < range.end => Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the source ended range {range:?} at byte {} ({} bytes short)",
                    self.at,
                    range.end - self.at
                ),
            ))),
            None => None,
        };
        self.done = true;
        Poll::Ready(checked)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;
    use crate::{BlobSource, MemoryBlob};

    #[test]
    fn generated_pieces_arrive_in_order_and_the_body_runs_to_its_end() {
        let stream = generate(|mut out| async move {
            for piece in [&b"ab"[..], b"cde", b"f"] {
                if !out.send(Ok(Bytes::from_static(piece))).await {
                    return;
                }
            }
        });
        assert_eq!(block_on(collect(stream, 10..16)).unwrap(), b"abcdef");
    }

    #[test]
    fn a_short_or_long_stream_is_an_error_and_an_error_ends_it() {
        let short = generate(|mut out| async move {
            out.send(Ok(Bytes::from_static(b"abc"))).await;
        });
        let err = block_on(collect(short, 0..4)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        let long = generate(|mut out| async move {
            out.send(Ok(Bytes::from_static(b"abcde"))).await;
        });
        let err = block_on(collect(long, 0..4)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let broken = generate(|mut out| async move {
            out.send(Ok(Bytes::from_static(b"ab"))).await;
            out.send(Err(io::Error::other("cut"))).await;
            out.send(Ok(Bytes::from_static(b"cd"))).await;
        });
        let items: Vec<_> = block_on(Exact::new(broken, 0..4).collect::<Vec<_>>());
        assert_eq!(items.len(), 2, "nothing after the error");
        assert!(items[1].is_err());
    }

    #[test]
    fn every_source_streams_through_its_range_read() {
        let blob = MemoryBlob((0..100u8).collect());
        let got = block_on(collect(blob.stream_range(10..20), 10..20)).unwrap();
        assert_eq!(got, (10..20u8).collect::<Vec<_>>());
        assert!(block_on(collect(blob.stream_range(90..120), 90..120)).is_err());
    }
}
