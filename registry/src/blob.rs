//! Range reads of one registry blob: [`RegistryBlob`], the registry's
//! [`veil_blob::BlobSource`].
//!
//! A read sends `Range` (one range, or several as `multipart/byteranges`) with
//! `Accept-Encoding: identity` and accepts all three answers: 206 with one
//! `Content-Range`, 206 multipart, or 200 with the whole blob (from which only the bytes
//! needed are kept, and the transfer is cut once they have arrived). The first read
//! follows redirects and remembers the final URL (often a pre-signed storage URL); later
//! reads go there directly. When that URL answers 403 (expired), the blob is resolved
//! again through the registry and the read retried once; when it fails with an outage
//! (a mirror gone down), the read goes through the hosts again (mirrors, then the
//! origin). A server that rejects multi-range requests (400/416) is then asked one range
//! at a time.
//!
//! A pull-through mirror that does not hold a blob yet (distribution's proxy mode) answers
//! a range request with the whole blob while it copies the blob from the origin. Such an
//! answer is read only when the bytes needed end within [`COLD_MIRROR_PREFIX`]; otherwise
//! the connection is dropped, the read goes to the next host, and reads of that blob skip
//! the mirror for [`COLD_MIRROR_FIRST_BYPASS`], doubled (up to [`COLD_MIRROR_MAX_BYPASS`])
//! each time the mirror is found cold again (each request to a cold mirror starts another
//! copy from the origin); once it holds the blob it serves ranges.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::header::{HeaderValue, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use url::Url;
use veil_blob::BlobSource;

use super::client::{identity_headers, Capability, RegistryClient};
use super::digest::Digest;
use super::error::{Operation, RegistryError};
use super::range::{
    multipart_boundary, parse_content_range, parse_multipart_byteranges, range_header,
    RangeAssembler,
};
use super::reference::Reference;
use super::retry::{ride_out, with_retries, OUTAGE_MEMORY};
use super::transport::{
    next_chunk, read_limited_within, redact, status_error, Endpoint, RequestSpec,
};

#[path = "blob_stream.rs"]
pub mod stream;

/// A mirror's whole-blob answer to a range request is read when the bytes needed end
/// within this many bytes of the blob's start; beyond, the read goes to the next host.
pub const COLD_MIRROR_PREFIX: u64 = 1 << 20;

/// After a mirror answered a range request of a blob with the whole blob (it is still
/// copying it from the origin), reads of that blob skip the mirror for this long; doubled
/// each time it is found cold again.
pub const COLD_MIRROR_FIRST_BYPASS: Duration = Duration::from_millis(500);

/// The longest a cold mirror is skipped for one blob.
pub const COLD_MIRROR_MAX_BYPASS: Duration = Duration::from_secs(30);

/// Room for multipart headers and boundaries on top of the data itself.
const MULTIPART_OVERHEAD: u64 = 64 << 10;
const MULTIPART_PER_PART: u64 = 1 << 10;

/// One blob in one repository, read by ranges.
pub struct RegistryBlob {
    client: RegistryClient,
    reference: Reference,
    digest: Digest,
    size: u64,
    location: Mutex<Option<Location>>,
    single_range_only: AtomicBool,
    /// When a read of this blob last spent its whole outage budget.
    gave_up_at: Mutex<Option<Instant>>,
    /// When a mirror last answered a range request of this blob with the whole blob, and
    /// how long it is skipped from then on.
    mirror_cold: Mutex<Option<(Instant, Duration)>>,
}

/// Where the blob's bytes were last found.
#[derive(Clone)]
struct Location {
    endpoint: Arc<Endpoint>,
    url: Url,
}

/// What one range request came back with.
enum Answer {
    /// The ranges, in the order asked for, and the URL that served them.
    Data(Vec<Vec<u8>>, Location),
    /// A streaming read's open answer (206, one range): the response, its body not read
    /// yet, the blob range its body holds (from the start asked for), and the URL that
    /// serves it (shown redacted).
    Body(reqwest::Response, Range<u64>, Location, String),
    /// A storage URL (not the registry) refused: probably an expired pre-signed URL.
    Expired(RegistryError),
    /// The server will not serve several ranges at once.
    MultiRangeRejected,
}

impl Answer {
    /// The URL that served the bytes (none for the other answers).
    fn location(&self) -> Option<&Location> {
        match self {
            Answer::Data(_, location) | Answer::Body(_, _, location, _) => Some(location),
            Answer::Expired(_) | Answer::MultiRangeRejected => None,
        }
    }
}

impl std::fmt::Debug for RegistryBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBlob")
            .field("reference", &self.reference.to_string())
            .field("digest", &self.digest.to_string())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RegistryBlob {
    /// A reader for blob `digest` of `size` bytes in `reference`'s repository.
    pub fn new(client: RegistryClient, reference: Reference, digest: Digest, size: u64) -> Self {
        RegistryBlob {
            client,
            reference,
            digest,
            size,
            location: Mutex::new(None),
            single_range_only: AtomicBool::new(false),
            gave_up_at: Mutex::new(None),
            mirror_cold: Mutex::new(None),
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The bytes in `range` (half-open, inside `0..size`).
    pub async fn read(&self, range: Range<u64>) -> Result<Vec<u8>, RegistryError> {
        let mut parts = self.read_ranges(std::slice::from_ref(&range)).await?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// The bytes of each range, in the order given, fetched with as few requests as the
    /// server allows (one multi-range request when it supports them).
    pub async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, RegistryError> {
        for r in ranges {
            if r.start > r.end || r.end > self.size {
                return Err(RegistryError::InvalidRange {
                    digest: self.digest.to_string(),
                    start: r.start,
                    end: r.end,
                    size: self.size,
                });
            }
        }
        let wanted: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
        let mut fetched = if wanted.is_empty() {
            Vec::new()
        } else if wanted.len() > 1 && self.single_range_only.load(Ordering::Relaxed) {
            self.read_one_by_one(&wanted).await?
        } else {
            self.read_together(&wanted).await?
        }
        .into_iter();
        Ok(ranges
            .iter()
            .map(|r| match r.start < r.end {
                true => fetched.next().unwrap_or_default(),
                false => Vec::new(),
            })
            .collect())
    }

    async fn read_one_by_one(&self, wanted: &[Range<u64>]) -> Result<Vec<Vec<u8>>, RegistryError> {
        let mut out = Vec::with_capacity(wanted.len());
        for range in wanted {
            out.extend(self.read_together(std::slice::from_ref(range)).await?);
        }
        Ok(out)
    }

    /// One request for all of `wanted` (non-empty ranges), under the operation deadline.
    async fn read_together(&self, wanted: &[Range<u64>]) -> Result<Vec<Vec<u8>>, RegistryError> {
        let op = self.operation(wanted);
        match self.request(wanted, &op, false).await? {
            Answer::Data(parts, _) => Ok(parts),
            Answer::Expired(err) => Err(err),
            Answer::Body(..) => Err(RegistryError::BadResponse {
                op,
                reason: "an unread body where bytes were expected".into(),
            }),
            Answer::MultiRangeRejected => {
                tracing::debug!(%op, "multi-range request rejected; reading ranges one by one");
                self.single_range_only.store(true, Ordering::Relaxed);
                Box::pin(self.read_one_by_one(wanted)).await
            }
        }
    }

    /// What a read of `wanted` is called in errors and logs.
    fn operation(&self, wanted: &[Range<u64>]) -> Operation {
        Operation::new(
            self.reference.registry(),
            self.reference.repository(),
            format!("{} of blob {}", range_header(wanted), self.digest),
        )
    }

    /// One request for `wanted` through every host with retries, an outage ridden out,
    /// under the operation deadline. With `stream`, a 206 answer for one range comes
    /// back as [`Answer::Body`], its body not read yet.
    async fn request(
        &self,
        wanted: &[Range<u64>],
        op: &Operation,
        stream: bool,
    ) -> Result<Answer, RegistryError> {
        let options = &self.client.inner.options;
        let metrics = &self.client.inner.transport.metrics;
        // Each round tries every host (with retries); an outage is ridden out for
        // `read_retry` before the read fails.
        // Right after a read spent the budget (the kernel re-reads a page whose readahead
        // failed at once), one round only: an outage costs an application one budget.
        let gave_up_recently = self
            .gave_up_at
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|at| at.elapsed() < OUTAGE_MEMORY);
        let budget = match gave_up_recently {
            true => Duration::ZERO,
            false => options.read_retry,
        };
        let started = Instant::now();
        let answer = ride_out(budget, metrics, op, || {
            self.client
                .with_deadline(op, self.fetch(wanted, op, stream))
        })
        .await;
        crate::metrics::record_range_read(started, answer.is_ok());
        if let Ok(mut slot) = self.gave_up_at.lock() {
            *slot = match &answer {
                Err(e) if e.is_outage() => Some(Instant::now()),
                _ => None,
            };
        }
        answer
    }

    /// Reads from the remembered location, re-resolving once if it expired; else resolves.
    async fn fetch(
        &self,
        wanted: &[Range<u64>],
        op: &Operation,
        stream: bool,
    ) -> Result<Answer, RegistryError> {
        let remembered = self.location.lock().ok().and_then(|l| l.clone());
        if let Some(location) = remembered {
            let policy = &self.client.inner.options.retry;
            let metrics = &self.client.inner.transport.metrics;
            let answer = with_retries(policy, metrics, op, || {
                self.attempt(&location.endpoint, location.url.clone(), wanted, op, stream)
            })
            .await;
            match answer {
                Ok(Answer::Expired(err)) => {
                    tracing::debug!(%op, error = %err, "storage URL refused; resolving the blob again");
                    self.forget_location();
                }
                Ok(answer @ (Answer::Data(..) | Answer::Body(..))) => {
                    if let Some(location) = answer.location() {
                        match self.mirror_is_cold() {
                            true => self.forget_location(),
                            false => self.remember(location.clone()),
                        }
                    }
                    return Ok(answer);
                }
                Ok(other) => return Ok(other),
                // The host that served this blob is down (or a mirror lost it): go
                // through the hosts again, mirrors first, then the origin.
                Err(err) if err.is_outage() || matches!(err, RegistryError::MirrorCold { .. }) => {
                    tracing::info!(%op, error = %err, "the host that served this blob failed; trying its hosts again");
                    self.forget_location();
                }
                Err(err) => return Err(err),
            }
        }
        let path = format!("{}/blobs/{}", self.reference.repository(), self.digest);
        let answer = self
            .client
            .on_endpoints(&self.reference, Capability::Pull, op, |endpoint| {
                let path = &path;
                async move {
                    if !endpoint.config.is_origin && self.mirror_is_cold() {
                        return Err(RegistryError::MirrorCold {
                            op: op.clone(),
                            mirror: endpoint.config.api_root.to_string(),
                        });
                    }
                    let url = endpoint.url(path, op)?;
                    self.attempt(&endpoint, url, wanted, op, stream).await
                }
            })
            .await?;
        // Not while a mirror is filling: the next reads go to it once it holds the blob.
        if let (Some(location), false) = (answer.location(), self.mirror_is_cold()) {
            self.remember(location.clone());
        }
        Ok(answer)
    }

    /// Whether mirrors are skipped for this blob now (one was found cold lately).
    fn mirror_is_cold(&self) -> bool {
        self.mirror_cold
            .lock()
            .ok()
            .and_then(|c| *c)
            .is_some_and(|(at, bypass)| at.elapsed() < bypass)
    }

    fn clear_mirror_cold(&self) {
        if let Ok(mut cold) = self.mirror_cold.lock() {
            *cold = None;
        }
    }

    /// A mirror was found cold: skip mirrors for the first bypass, or twice the last one.
    fn mark_mirror_cold(&self) {
        if let Ok(mut cold) = self.mirror_cold.lock() {
            let bypass = match *cold {
                Some((_, last)) => (last * 2).min(COLD_MIRROR_MAX_BYPASS),
                None => COLD_MIRROR_FIRST_BYPASS,
            };
            *cold = Some((Instant::now(), bypass));
        }
    }

    fn remember(&self, location: Location) {
        if let Ok(mut slot) = self.location.lock() {
            *slot = Some(location);
        }
    }

    fn forget_location(&self) {
        if let Ok(mut slot) = self.location.lock() {
            *slot = None;
        }
    }

    /// One range request to `url` and the handling of whichever answer comes back.
    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        url: Url,
        wanted: &[Range<u64>],
        op: &Operation,
        stream: bool,
    ) -> Result<Answer, RegistryError> {
        let transport = &self.client.inner.transport;
        let mut headers = identity_headers();
        let range_value = HeaderValue::from_str(&range_header(wanted)).map_err(|e| {
            RegistryError::BadResponse {
                op: op.clone(),
                reason: format!("cannot build a Range header: {e}"),
            }
        })?;
        headers.insert(RANGE, range_value);
        let spec = RequestSpec {
            op,
            method: Method::GET,
            headers,
            repository: self.reference.repository(),
        };
        transport.metrics.add_range_request();
        let stall = self.client.inner.options.stall_timeout;
        let asked = redact(&url);
        let sent = tokio::time::timeout(stall, transport.send(endpoint, url, &spec))
            .await
            .map_err(|_| RegistryError::Transport {
                op: op.clone(),
                url: asked,
                reason: format!("stalled: no answer for {}s", stall.as_secs()),
                timed_out: true,
            })??;
        let status = sent.response.status();
        let location = Location {
            endpoint: endpoint.clone(),
            url: sent.url.clone(),
        };
        let shown_url = redact(&sent.url);
        let bad = |reason: String| RegistryError::BadResponse {
            op: op.clone(),
            reason,
        };
        match status {
            StatusCode::PARTIAL_CONTENT => {
                if !endpoint.config.is_origin {
                    // The mirror holds the blob now.
                    self.clear_mirror_cold();
                }
                let header = |name| {
                    sent.response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let content_type = header(CONTENT_TYPE).unwrap_or_default();
                let content_range = header(CONTENT_RANGE);
                let mut assembler = RangeAssembler::new(wanted);
                let metrics = Some(transport.metrics.as_ref());
                if let Some(boundary) = multipart_boundary(&content_type) {
                    let data: u64 = wanted.iter().map(|r| r.end - r.start).sum();
                    let limit =
                        data + MULTIPART_OVERHEAD + MULTIPART_PER_PART * wanted.len() as u64;
                    let body = read_limited_within(
                        sent.response,
                        limit,
                        op,
                        &shown_url,
                        metrics,
                        Some(stall),
                    )
                    .await?;
                    let mut parts = parse_multipart_byteranges(&body, &boundary).map_err(bad)?;
                    parts.sort_by_key(|p| p.range.start);
                    for part in parts {
                        self.check_within(&part.range).map_err(bad)?;
                        assembler.offer(part.range.start, part.data);
                    }
                } else {
                    let content_range =
                        content_range.ok_or_else(|| bad("206 without Content-Range".into()))?;
                    let parsed = parse_content_range(&content_range).map_err(bad)?;
                    let range = parsed
                        .range
                        .ok_or_else(|| bad(format!("206 with Content-Range {content_range:?}")))?;
                    if let Some(total) = parsed.total.filter(|t| *t != self.size) {
                        return Err(bad(format!(
                            "the registry says the blob is {total} bytes, the descriptor says {}",
                            self.size
                        )));
                    }
                    self.check_within(&range).map_err(bad)?;
                    if let ([asked], true) = (wanted, stream) {
                        if range.start != asked.start || range.end > asked.end {
                            return Err(bad(format!(
                                "Content-Range {content_range:?} for a request of bytes {asked:?}"
                            )));
                        }
                        return Ok(Answer::Body(sent.response, range, location, shown_url));
                    }
                    let body = read_limited_within(
                        sent.response,
                        range.end - range.start,
                        op,
                        &shown_url,
                        metrics,
                        Some(stall),
                    )
                    .await?;
                    if body.len() as u64 != range.end - range.start {
                        return Err(bad(format!(
                            "Content-Range {content_range:?} but {} body bytes",
                            body.len()
                        )));
                    }
                    assembler.offer(range.start, &body);
                }
                let parts = assembler.finish().map_err(|missing| {
                    bad(format!("the answer does not cover bytes {missing:?}"))
                })?;
                Ok(Answer::Data(parts, location))
            }
            StatusCode::OK
                if !endpoint.config.is_origin
                    && RangeAssembler::new(wanted).needed_end() > COLD_MIRROR_PREFIX =>
            {
                // A pull-through mirror still copying the blob: drop this answer (the
                // connection with it) and read from the next host.
                self.mark_mirror_cold();
                Err(RegistryError::MirrorCold {
                    op: op.clone(),
                    mirror: endpoint.config.api_root.to_string(),
                })
            }
            StatusCode::OK => {
                if !endpoint.config.is_origin {
                    // Cold too, but the bytes are near: read them, then skip it a while.
                    self.mark_mirror_cold();
                }
                let parts = self
                    .slice_whole(sent.response, wanted, op, &shown_url)
                    .await?;
                Ok(Answer::Data(parts, location))
            }
            StatusCode::FORBIDDEN if sent.cross_origin => {
                Ok(Answer::Expired(status_error(sent, op).await))
            }
            StatusCode::BAD_REQUEST | StatusCode::RANGE_NOT_SATISFIABLE if wanted.len() > 1 => {
                Ok(Answer::MultiRangeRejected)
            }
            _ => Err(status_error(sent, op).await),
        }
    }

    /// The registry ignored `Range` and is sending the whole blob: keep the wanted bytes,
    /// stop reading once past the last of them.
    async fn slice_whole(
        &self,
        mut response: reqwest::Response,
        wanted: &[Range<u64>],
        op: &Operation,
        url: &str,
    ) -> Result<Vec<Vec<u8>>, RegistryError> {
        let bad = |reason: String| RegistryError::BadResponse {
            op: op.clone(),
            reason,
        };
        if let Some(length) = response.content_length().filter(|l| *l != self.size) {
            return Err(bad(format!(
                "200 with a {length}-byte body, but the blob is {} bytes",
                self.size
            )));
        }
        let metrics = &self.client.inner.transport.metrics;
        let mut assembler = RangeAssembler::new(wanted);
        let needed = assembler.needed_end();
        let mut offset = 0u64;
        while offset < needed {
            let stall = Some(self.client.inner.options.stall_timeout);
            let Some(chunk) = next_chunk(&mut response, op, url, stall).await? else {
                return Err(bad(format!("the whole-blob answer ended at byte {offset}")));
            };
            metrics.add_bytes(chunk.len() as u64);
            assembler.offer(offset, &chunk);
            offset += chunk.len() as u64;
        }
        assembler
            .finish()
            .map_err(|missing| bad(format!("the answer does not cover bytes {missing:?}")))
    }

    fn check_within(&self, range: &Range<u64>) -> Result<(), String> {
        if range.end > self.size {
            return Err(format!(
                "the registry sent bytes {range:?} of a {}-byte blob",
                self.size
            ));
        }
        Ok(())
    }
}

impl BlobSource for RegistryBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move { self.read(range).await.map_err(io::Error::from) })
    }

    /// Handed up as the response arrives ([`crate::blob_stream`]).
    fn stream_range(&self, range: Range<u64>) -> veil_blob::RangeStream<'_> {
        self.stream(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientOptions;

    #[test]
    fn a_cold_mirror_is_skipped_for_a_doubling_while() {
        let client = RegistryClient::new(ClientOptions::default()).unwrap();
        let blob = RegistryBlob::new(
            client,
            Reference::parse("registry.example/app:1").unwrap(),
            Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
            10,
        );
        let bypass = |b: &RegistryBlob| b.mirror_cold.lock().unwrap().map(|(_, d)| d);
        assert!(!blob.mirror_is_cold());
        blob.mark_mirror_cold();
        assert!(blob.mirror_is_cold());
        assert_eq!(bypass(&blob), Some(COLD_MIRROR_FIRST_BYPASS));
        blob.mark_mirror_cold();
        assert_eq!(bypass(&blob), Some(2 * COLD_MIRROR_FIRST_BYPASS));
        for _ in 0..20 {
            blob.mark_mirror_cold();
        }
        assert_eq!(bypass(&blob), Some(COLD_MIRROR_MAX_BYPASS));
        // A 206 from the mirror ends it; the next cold answer starts over.
        blob.clear_mirror_cold();
        assert!(!blob.mirror_is_cold());
        blob.mark_mirror_cold();
        assert_eq!(bypass(&blob), Some(COLD_MIRROR_FIRST_BYPASS));
        // Once the bypass is over, the mirror is asked again.
        *blob.mirror_cold.lock().unwrap() = Some((
            Instant::now() - COLD_MIRROR_FIRST_BYPASS,
            COLD_MIRROR_FIRST_BYPASS,
        ));
        assert!(!blob.mirror_is_cold());
    }
}
