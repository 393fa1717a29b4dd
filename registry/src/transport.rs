//! Sending one request to one registry endpoint: authentication (with one re-try after a
//! 401), redirects followed by hand (so `Authorization` and configured headers never
//! reach another host), per-request timeouts, and turning error answers into typed
//! errors that carry the registry's JSON error body.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::{no_credentials_hint, AuthContext, Authorizer};
use super::challenge::parse_www_authenticate;
use super::credential_store::SharedCredentialStore;
use super::credentials::{CredentialLookup, DockerConfig};
use super::error::{error_chain, ErrorDetail, Operation, RegistryError};
use super::hosts::EndpointConfig;
use super::metrics::RegistryMetrics;

/// Largest error body read (the rest is ignored).
const MAX_ERROR_BODY: u64 = 64 << 10;

/// One place requests for a registry go (a mirror or the origin), ready to use.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Where it is and how to treat it.
    pub config: EndpointConfig,
    /// HTTP client with this endpoint's TLS settings; never follows redirects itself.
    pub http: reqwest::Client,
    /// `scheme://host:port`: the only origin that gets credentials and extra headers.
    pub origin: String,
    /// Extra headers from `hosts.toml`.
    pub headers: HeaderMap,
}

impl Endpoint {
    /// Prepares `config` with `http`; fails on header names or values HTTP cannot carry.
    pub fn new(config: EndpointConfig, http: reqwest::Client) -> Result<Self, RegistryError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.settings.headers {
            let bad = |what: &str| RegistryError::Setup {
                endpoint: config.api_root.to_string(),
                reason: format!("header {name:?}: invalid {what}"),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| bad("value"))?;
            headers.append(name, value);
        }
        Ok(Endpoint {
            origin: origin_of(&config.api_root),
            config,
            http,
            headers,
        })
    }

    /// The URL of `path` (e.g. `library/busybox/blobs/sha256:...`) under the API root.
    pub fn url(&self, path: &str, op: &Operation) -> Result<Url, RegistryError> {
        self.config
            .api_root
            .join(path)
            .map_err(|e| RegistryError::BadResponse {
                op: op.clone(),
                reason: format!(
                    "cannot build a URL for {path:?} under {}: {e}",
                    self.config.api_root
                ),
            })
    }
}

/// `scheme://host:port` of a URL, with the scheme's default port spelled out.
pub(crate) fn origin_of(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// What a request needs the token to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `repository:<name>:pull`.
    Pull,
    /// `repository:<name>:pull,push` (uploads and manifest pushes).
    PullPush,
}

/// A request to send: the method, its own headers, and what it is for.
pub(crate) struct RequestSpec<'a> {
    /// For errors.
    pub op: &'a Operation,
    /// GET, HEAD (and for pushes POST, PATCH, PUT).
    pub method: Method,
    /// Accept, Range, Accept-Encoding...
    pub headers: HeaderMap,
    /// The repository (for the token scope and credentials).
    pub repository: &'a str,
}

/// The answer to a request, after redirects and authentication.
pub(crate) struct Sent {
    /// The final response (any status but 401-then-retried and redirects).
    pub response: reqwest::Response,
    /// The URL that gave it.
    pub url: Url,
    /// Whether that URL is on another origin than the endpoint (a storage backend).
    pub cross_origin: bool,
    /// What to tell the user if the answer is 401/403.
    pub auth_hint: Option<String>,
}

/// Sends requests for a client: shared authorizer, credentials and counters.
pub(crate) struct Transport {
    pub authorizer: Authorizer,
    pub credentials: DockerConfig,
    /// Asked before `credentials`.
    pub store: Option<SharedCredentialStore>,
    pub metrics: Arc<RegistryMetrics>,
    pub request_timeout: Duration,
    pub max_redirects: u32,
}

impl Transport {
    /// The credentials for `repository` on `endpoint`.
    fn lookup(
        &self,
        endpoint: &Endpoint,
        repository: &str,
    ) -> Result<CredentialLookup, RegistryError> {
        let host = &endpoint.config.credential_host;
        if let Some(credential) = self
            .store
            .as_ref()
            .and_then(|store| store.credential(host, repository))
        {
            return Ok(CredentialLookup {
                credential: Some(credential),
                helper: None,
            });
        }
        Ok(self
            .credentials
            .lookup(&endpoint.config.credential_host, repository)?)
    }

    /// Sends `spec` to `url` (on `endpoint` or where it redirects), authenticating with
    /// the endpoint's origin only.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        url: Url,
        spec: &RequestSpec<'_>,
    ) -> Result<Sent, RegistryError> {
        self.send_with(endpoint, url, spec, Access::Pull, None)
            .await
    }

    /// [`send`](Self::send) with the access the request needs (the token scope) and a
    /// body. The body is cheap to clone: it is sent again after a 401 or a redirect.
    pub async fn send_with(
        &self,
        endpoint: &Endpoint,
        url: Url,
        spec: &RequestSpec<'_>,
        access: Access,
        body: Option<bytes::Bytes>,
    ) -> Result<Sent, RegistryError> {
        let lookup = self.lookup(endpoint, spec.repository)?;
        let scope = match access {
            Access::Pull => format!("repository:{}:pull", spec.repository),
            Access::PullPush => format!("repository:{}:pull,push", spec.repository),
        };
        let ctx = AuthContext {
            http: &endpoint.http,
            origin: &endpoint.origin,
            scope: &scope,
            credential: &lookup,
            op: spec.op,
            timeout: self.request_timeout,
            metrics: &self.metrics,
        };
        let mut url = url;
        let mut method = spec.method.clone();
        for _hop in 0..=self.max_redirects {
            let same_origin = origin_of(&url) == endpoint.origin;
            let mut authorization = match same_origin {
                true => self.authorizer.authorization(&ctx, None, None).await?,
                false => None,
            };
            let mut reauthenticated = false;
            let response = loop {
                let mut request = endpoint
                    .http
                    .request(method.clone(), url.clone())
                    .timeout(self.request_timeout)
                    .headers(spec.headers.clone());
                if same_origin {
                    request = request.headers(endpoint.headers.clone());
                    if let Some(value) = &authorization {
                        request = request.header(AUTHORIZATION, value.clone());
                    }
                }
                if let Some(body) = &body {
                    request = request.body(body.clone());
                }
                self.metrics.add_request();
                let response = request
                    .send()
                    .await
                    .map_err(|e| transport_error(spec.op, &url, &e))?;
                if response.status() != StatusCode::UNAUTHORIZED || !same_origin || reauthenticated
                {
                    break response;
                }
                reauthenticated = true;
                let challenges: Vec<_> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| match parse_www_authenticate(v) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed challenge");
                            None
                        }
                    })
                    .flatten()
                    .collect();
                let challenge_scope = self.authorizer.learn(&endpoint.origin, &challenges);
                match self
                    .authorizer
                    .authorization(&ctx, authorization.as_ref(), challenge_scope.as_deref())
                    .await?
                {
                    Some(value) => authorization = Some(value),
                    None => break response,
                }
            };
            if is_redirect(response.status()) {
                let next = redirect_target(&response, &url, spec.op)?;
                tracing::debug!(from = %url, to = %next, "following redirect");
                if response.status() == StatusCode::SEE_OTHER && method != Method::HEAD {
                    method = Method::GET;
                }
                url = next;
                continue;
            }
            let auth_hint = match &lookup.credential {
                _ if !same_origin => None,
                None => Some(no_credentials_hint(&lookup)),
                Some(_) => Some(format!(
                    "the credentials for {} were not accepted",
                    endpoint.config.credential_host
                )),
            };
            return Ok(Sent {
                response,
                cross_origin: !same_origin,
                url,
                auth_hint,
            });
        }
        Err(RegistryError::Redirect {
            op: spec.op.clone(),
            url: url.to_string(),
            reason: format!("more than {} redirects", self.max_redirects),
        })
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn redirect_target(
    response: &reqwest::Response,
    from: &Url,
    op: &Operation,
) -> Result<Url, RegistryError> {
    let fail = |reason: String| RegistryError::Redirect {
        op: op.clone(),
        url: from.to_string(),
        reason,
    };
    let location = response
        .headers()
        .get(LOCATION)
        .ok_or_else(|| {
            fail(format!(
                "HTTP {} without a Location header",
                response.status().as_u16()
            ))
        })?
        .to_str()
        .map_err(|_| fail("Location is not text".into()))?;
    let next = from
        .join(location)
        .map_err(|e| fail(format!("bad Location {location:?}: {e}")))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(fail(format!("Location {location:?} is not http(s)")));
    }
    Ok(next)
}

/// A transport error (connect, TLS, reset, timeout) as a [`RegistryError`].
pub(crate) fn transport_error(op: &Operation, url: &Url, err: &reqwest::Error) -> RegistryError {
    RegistryError::Transport {
        op: op.clone(),
        url: redact(url),
        reason: error_chain(err),
        timed_out: err.is_timeout(),
    }
}

/// The URL without its query (pre-signed URLs carry credentials there).
pub(crate) fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(Some("..."));
    }
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Reads a whole body of at most `limit` bytes, counting them in `metrics` when given.
pub(crate) async fn read_limited(
    response: reqwest::Response,
    limit: u64,
    op: &Operation,
    url: &str,
    metrics: Option<&RegistryMetrics>,
) -> Result<Vec<u8>, RegistryError> {
    read_limited_within(response, limit, op, url, metrics, None).await
}

/// The next piece of `response`'s body (`None` at its end). With `stall`, a wait longer
/// than that for it is a retryable [`RegistryError::Transport`] ("stalled"): the
/// connection is dropped with the response, and a retry opens another.
pub(crate) async fn next_chunk(
    response: &mut reqwest::Response,
    op: &Operation,
    url: &str,
    stall: Option<Duration>,
) -> Result<Option<bytes::Bytes>, RegistryError> {
    let transport_error = |reason: String, timed_out| RegistryError::Transport {
        op: op.clone(),
        url: url.to_string(),
        reason,
        timed_out,
    };
    let chunk = match stall {
        Some(stall) => tokio::time::timeout(stall, response.chunk())
            .await
            .map_err(|_| {
                transport_error(
                    format!(
                        "reading the body: stalled (no bytes for {}s)",
                        stall.as_secs()
                    ),
                    true,
                )
            })?,
        None => response.chunk().await,
    };
    chunk.map_err(|e| {
        transport_error(
            format!("reading the body: {}", error_chain(&e)),
            e.is_timeout(),
        )
    })
}

/// [`read_limited`], abandoning a body that sends nothing for `stall` (see
/// [`next_chunk`]).
pub(crate) async fn read_limited_within(
    mut response: reqwest::Response,
    limit: u64,
    op: &Operation,
    url: &str,
    metrics: Option<&RegistryMetrics>,
    stall: Option<Duration>,
) -> Result<Vec<u8>, RegistryError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(RegistryError::TooLarge {
            op: op.clone(),
            limit,
        });
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
    loop {
        let Some(chunk) = next_chunk(&mut response, op, url, stall).await? else {
            return Ok(body);
        };
        if let Some(metrics) = metrics {
            metrics.add_bytes(chunk.len() as u64);
        }
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::TooLarge {
                op: op.clone(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
}

/// Turns a non-success answer into an error, reading (a bounded part of) its body.
pub(crate) async fn status_error(sent: Sent, op: &Operation) -> RegistryError {
    let status = sent.response.status().as_u16();
    let url = redact(&sent.url);
    let body = read_limited(sent.response, MAX_ERROR_BODY, op, &url, None)
        .await
        .unwrap_or_default();
    let detail = ErrorDetail::from_body(&body);
    let op = op.clone();
    match status {
        404 => RegistryError::NotFound { op, status, detail },
        401 | 403 => RegistryError::Unauthorized {
            op,
            status,
            detail,
            hint: sent.auth_hint,
        },
        _ => RegistryError::Status { op, status, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_redaction() {
        let u = Url::parse("https://Reg.Example/v2/x").unwrap();
        assert_eq!(origin_of(&u), "https://reg.example:443");
        let u = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert_eq!(origin_of(&u), "http://127.0.0.1:5000");
        assert_ne!(
            origin_of(&Url::parse("http://127.0.0.1:5001/").unwrap()),
            origin_of(&u)
        );
        let signed = Url::parse("https://s3.example/b?X-Amz-Signature=secret").unwrap();
        assert!(!redact(&signed).contains("secret"));
    }
}
