//! Streaming range reads of a registry blob: [`RegistryBlob::stream`], the registry's
//! [`veil_blob::BlobSource::stream_range`].
//!
//! The request goes out like any range read (the remembered URL, re-resolved when it
//! expired; every host with retries, mirrors first; an outage ridden out; the operation
//! deadline), but a `206` for the range is handed up piece by piece as its body arrives
//! instead of once it is complete, so at most one piece is held at a time. Answers that
//! are not one `206` range (a whole-blob `200`, a multipart answer) are read whole as
//! before and handed up as one piece.
//!
//! **A broken body resumes.** When the body breaks midway (the connection is cut, it
//! stalls for the stall timeout, or it ends early), the rest of the range, from the
//! first byte not yet handed up, is requested again the same way, up to
//! [`MAX_STREAM_RESUMES`] times in a row without [`RESUME_PROGRESS`] bytes between two
//! breaks; then the error ends the stream. Nothing is handed up twice, and nothing past
//! the range.

use std::io;
use std::ops::Range;

use veil_blob::stream::{generate, Pieces};
use veil_blob::RangeStream;

use super::{Answer, RegistryBlob};
use crate::error::RegistryError;
use crate::transport::next_chunk;

/// Times in a row a stream's request is sent again after its body broke.
pub const MAX_STREAM_RESUMES: u32 = 3;

/// A broken body that brought this many bytes first starts the count of resumes over.
pub const RESUME_PROGRESS: u64 = 64 << 10;

impl RegistryBlob {
    /// The bytes in `range` (half-open, inside `0..size`) as they arrive: see the module
    /// documentation.
    pub fn stream(&self, range: Range<u64>) -> RangeStream<'_> {
        if range.start > range.end || range.end > self.size {
            let err = RegistryError::InvalidRange {
                digest: self.digest.to_string(),
                start: range.start,
                end: range.end,
                size: self.size,
            };
            return Box::pin(futures::stream::once(
                async move { Err(io::Error::from(err)) },
            ));
        }
        generate(move |mut out| async move {
            if let Err(err) = self.stream_to(range, &mut out).await {
                out.send(Err(io::Error::from(err))).await;
            }
        })
    }

    async fn stream_to(&self, range: Range<u64>, out: &mut Pieces) -> Result<(), RegistryError> {
        let metrics = &self.client.inner.transport.metrics;
        let stall = Some(self.client.inner.options.stall_timeout);
        let mut at = range.start;
        let mut fruitless = 0;
        while at < range.end {
            let rest = at..range.end;
            let op = self.operation(std::slice::from_ref(&rest));
            let (mut response, body, url) =
                match self.request(std::slice::from_ref(&rest), &op, true).await? {
                    Answer::Body(response, body, _, url) => (response, body, url),
                    Answer::Data(mut parts, _) => {
                        let data = parts.pop().unwrap_or_default();
                        if data.len() as u64 != rest.end - rest.start {
                            return Err(RegistryError::BadResponse {
                                op,
                                reason: format!("{} bytes for {rest:?}", data.len()),
                            });
                        }
                        out.send(Ok(data.into())).await;
                        return Ok(());
                    }
                    Answer::Expired(err) => return Err(err),
                    Answer::MultiRangeRejected => {
                        return Err(RegistryError::BadResponse {
                            op,
                            reason: "a request for one range rejected as multi-range".into(),
                        })
                    }
                };
            let before = at;
            let broke = loop {
                match next_chunk(&mut response, &op, &url, stall).await {
                    Ok(Some(piece)) => {
                        metrics.add_bytes(piece.len() as u64);
                        if at + piece.len() as u64 > body.end {
                            return Err(RegistryError::BadResponse {
                                op,
                                reason: format!("more body bytes than Content-Range {body:?}"),
                            });
                        }
                        at += piece.len() as u64;
                        if !out.send(Ok(piece)).await {
                            // The reader has gone: the connection goes with the response.
                            return Ok(());
                        }
                    }
                    Ok(None) if at == body.end => break None,
                    Ok(None) => {
                        break Some(RegistryError::Transport {
                            op: op.clone(),
                            url: url.clone(),
                            reason: format!("the body ended at byte {at} of {body:?}"),
                            timed_out: false,
                        })
                    }
                    Err(err) => break Some(err),
                }
            };
            let Some(err) = broke else {
                // A 206 may hold less than asked: the rest is asked for next.
                continue;
            };
            if !err.is_retryable() {
                return Err(err);
            }
            fruitless = match at - before >= RESUME_PROGRESS {
                true => 0,
                false => fruitless + 1,
            };
            if fruitless > MAX_STREAM_RESUMES {
                return Err(err);
            }
            tracing::debug!(%op, resume_at = at, error = %err, "the body broke; asking for the rest");
        }
        Ok(())
    }
}
