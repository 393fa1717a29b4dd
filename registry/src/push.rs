//! Pushing to a registry (for `veil convert`): whether a blob is already there (`HEAD`),
//! blob uploads, and manifest pushes, with the `repository:<name>:pull,push` token scope.
//!
//! Uploads follow the distribution spec: `POST /v2/<name>/blobs/uploads/` opens an
//! upload session (`202` + `Location`); a blob of at most [`MONOLITHIC_LIMIT`] bytes is
//! then sent whole with `PUT <location>&digest=<digest>`; a larger one in
//! [`UPLOAD_CHUNK`]-byte pieces with `PATCH <location>` (`Content-Range: start-end`,
//! each answer giving the next location) and closed by an empty `PUT ...digest=`. A
//! transient failure (connection, 5xx, 408, 429) restarts the whole upload in a new
//! session, with the client's retry policy. The registry checks the digest itself.
//!
//! Pushes go to the registry's origin only, never to a `hosts.toml` mirror. Pushing the
//! manifest last is the caller's business: a tag then never names an image whose blobs
//! are not all there.

use std::path::Path;
use std::sync::Arc;

use reqwest::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use url::Url;

use super::client::{identity_headers, RegistryClient};
use super::digest::Digest;
use super::error::{Operation, RegistryError};
use super::hosts::HostsError;
use super::reference::Reference;
use super::retry::with_retries;
use super::transport::{status_error, Access, Endpoint, RequestSpec, Sent};

/// Blobs up to this size are uploaded in one `PUT`.
pub const MONOLITHIC_LIMIT: u64 = 16 << 20;
/// The size of one `PATCH` of a chunked upload.
pub const UPLOAD_CHUNK: u64 = 16 << 20;
/// The `Docker-Content-Digest` response header.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Where the bytes of a blob to push come from.
#[derive(Debug, Clone, Copy)]
pub enum BlobBody<'a> {
    /// In memory (configs, small blobs).
    Bytes(&'a [u8]),
    /// A file of `size` bytes.
    File {
        /// The file.
        path: &'a Path,
        /// Its size.
        size: u64,
    },
}

impl BlobBody<'_> {
    fn size(&self) -> u64 {
        match self {
            BlobBody::Bytes(b) => b.len() as u64,
            BlobBody::File { size, .. } => *size,
        }
    }

    /// Bytes `offset..offset + len` of the blob.
    async fn read(
        &self,
        offset: u64,
        len: u64,
        op: &Operation,
    ) -> Result<bytes::Bytes, RegistryError> {
        match self {
            BlobBody::Bytes(b) => Ok(bytes::Bytes::copy_from_slice(
                &b[offset as usize..(offset + len) as usize],
            )),
            BlobBody::File { path, .. } => {
                let fail = |e: std::io::Error| RegistryError::BadResponse {
                    op: op.clone(),
                    reason: format!("reading {} to upload it: {e}", path.display()),
                };
                let mut file = tokio::fs::File::open(path).await.map_err(fail)?;
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(fail)?;
                let mut buf = vec![0u8; len as usize];
                file.read_exact(&mut buf).await.map_err(fail)?;
                Ok(bytes::Bytes::from(buf))
            }
        }
    }
}

impl RegistryClient {
    /// The endpoint pushes go to: the registry's origin, if it may be pushed to.
    fn push_endpoint(&self, reference: &Reference) -> Result<Arc<Endpoint>, RegistryError> {
        let endpoints = self.endpoints(reference.registry())?;
        endpoints
            .iter()
            .find(|e| e.config.is_origin && e.config.settings.capabilities.push)
            .cloned()
            .ok_or_else(|| {
                RegistryError::Hosts(HostsError::Invalid {
                    path: self.inner.options.hosts_dir.clone().unwrap_or_default(),
                    reason: format!(
                        "the origin of registry {} does not have the push capability",
                        reference.registry()
                    ),
                })
            })
    }

    /// Sends one push-scoped request to `url` on `endpoint`.
    async fn push_request(
        &self,
        endpoint: &Endpoint,
        url: Url,
        spec: &RequestSpec<'_>,
        body: Option<bytes::Bytes>,
    ) -> Result<Sent, RegistryError> {
        self.inner
            .transport
            .send_with(endpoint, url, spec, Access::PullPush, body)
            .await
    }

    /// Whether the repository of `reference` already has blob `digest` (`HEAD`: 200 yes,
    /// 404 no).
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let op = Operation::new(
            reference.registry(),
            reference.repository(),
            format!("existence of blob {digest}"),
        );
        let endpoint = self.push_endpoint(reference)?;
        let path = format!("{}/blobs/{digest}", reference.repository());
        self.retried_with_deadline(&op, || async {
            let url = endpoint.url(&path, &op)?;
            let sent = self
                .push_request(
                    &endpoint,
                    url,
                    &spec(&op, reference, Method::HEAD, identity_headers()),
                    None,
                )
                .await?;
            match sent.response.status() {
                StatusCode::OK => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(status_error(sent, &op).await),
            }
        })
        .await
    }

    /// Uploads blob `digest` into the repository of `reference`. `progress` is called with
    /// the bytes sent so far (it may go back to 0 when a failed upload is restarted).
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        body: BlobBody<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let op = Operation::new(
            reference.registry(),
            reference.repository(),
            format!("upload of blob {digest}"),
        );
        let endpoint = self.push_endpoint(reference)?;
        with_retries(
            &self.inner.options.retry,
            &self.inner.transport.metrics,
            &op,
            || self.upload_once(&endpoint, reference, digest, body, &op, progress),
        )
        .await
    }

    /// Runs `attempt` with the client's retries, all of them under the operation
    /// deadline.
    async fn retried_with_deadline<T, F, Fut>(
        &self,
        op: &Operation,
        attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        self.with_deadline(
            op,
            with_retries(
                &self.inner.options.retry,
                &self.inner.transport.metrics,
                op,
                attempt,
            ),
        )
        .await
    }

    async fn upload_once(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        digest: &Digest,
        body: BlobBody<'_>,
        op: &Operation,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        progress(0);
        let start_url = endpoint.url(&format!("{}/blobs/uploads/", reference.repository()), op)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let sent = self
            .push_request(
                endpoint,
                start_url,
                &spec(op, reference, Method::POST, headers),
                None,
            )
            .await?;
        if sent.response.status() != StatusCode::ACCEPTED {
            return Err(status_error(sent, op).await);
        }
        let mut location = next_location(&sent, op)?;
        let size = body.size();
        if size > MONOLITHIC_LIMIT {
            let mut offset = 0;
            while offset < size {
                let len = UPLOAD_CHUNK.min(size - offset);
                let chunk = body.read(offset, len, op).await?;
                let mut headers = HeaderMap::new();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                headers.insert(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("{offset}-{}", offset + len - 1)).map_err(
                        |e| RegistryError::BadResponse {
                            op: op.clone(),
                            reason: format!("Content-Range of bytes from {offset}: {e}"),
                        },
                    )?,
                );
                let sent = self
                    .push_request(
                        endpoint,
                        location.clone(),
                        &spec(op, reference, Method::PATCH, headers),
                        Some(chunk),
                    )
                    .await?;
                if sent.response.status() != StatusCode::ACCEPTED {
                    return Err(status_error(sent, op).await);
                }
                location = next_location(&sent, op)?;
                offset += len;
                progress(offset);
            }
        }
        let whole = if size <= MONOLITHIC_LIMIT {
            Some(body.read(0, size, op).await?)
        } else {
            None
        };
        location
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(
            CONTENT_LENGTH,
            HeaderValue::from(whole.as_ref().map_or(0, |b| b.len() as u64)),
        );
        let sent = self
            .push_request(
                endpoint,
                location,
                &spec(op, reference, Method::PUT, headers),
                whole,
            )
            .await?;
        if sent.response.status() != StatusCode::CREATED {
            return Err(status_error(sent, op).await);
        }
        progress(size);
        Ok(())
    }

    /// Pushes manifest `bytes` of `media_type` under `reference`'s tag (or digest) and
    /// returns its digest.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(bytes);
        let op = Operation::new(
            reference.registry(),
            reference.repository(),
            format!("push of manifest {} ({digest})", reference.object()),
        );
        let endpoint = self.push_endpoint(reference)?;
        let path = format!(
            "{}/manifests/{}",
            reference.repository(),
            reference.object()
        );
        let body = bytes::Bytes::copy_from_slice(bytes);
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::BadResponse {
                op: op.clone(),
                reason: format!("media type {media_type:?} cannot be sent as a header"),
            })?,
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len() as u64));
        self.retried_with_deadline(&op, || async {
            let url = endpoint.url(&path, &op)?;
            let sent = self
                .push_request(
                    &endpoint,
                    url,
                    &spec(&op, reference, Method::PUT, headers.clone()),
                    Some(body.clone()),
                )
                .await?;
            if sent.response.status() != StatusCode::CREATED {
                return Err(status_error(sent, &op).await);
            }
            let announced = sent
                .response
                .headers()
                .get(DOCKER_CONTENT_DIGEST)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string());
            if let Some(announced) = announced {
                if announced != digest.to_string() {
                    return Err(RegistryError::DigestMismatch {
                        op: op.clone(),
                        expected: digest.to_string(),
                        actual: announced,
                    });
                }
            }
            Ok(())
        })
        .await?;
        Ok(digest)
    }
}

/// A request of `method` with `headers` for the repository of `reference`.
fn spec<'a>(
    op: &'a Operation,
    reference: &'a Reference,
    method: Method,
    headers: HeaderMap,
) -> RequestSpec<'a> {
    RequestSpec {
        op,
        method,
        headers,
        repository: reference.repository(),
    }
}

/// The upload location a response names (`Location`, relative to the request URL).
fn next_location(sent: &Sent, op: &Operation) -> Result<Url, RegistryError> {
    let location = sent
        .response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::BadResponse {
            op: op.clone(),
            reason: format!(
                "HTTP {} without a Location for the upload",
                sent.response.status().as_u16()
            ),
        })?;
    sent.url
        .join(location)
        .map_err(|e| RegistryError::BadResponse {
            op: op.clone(),
            reason: format!("bad upload Location {location:?}: {e}"),
        })
}
