//! The registry client: resolves references to manifests (picking a platform from
//! indexes), fetches whole blobs (configs) and blob sizes, and hands out
//! [`RegistryBlob`]s for range reads. Requests go to the registry's mirrors in order, then
//! to the origin; each is retried with backoff on transient failures, and every operation
//! has an overall deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RANGE,
};
use reqwest::{Method, StatusCode};

use super::blob::RegistryBlob;
use super::credentials::DockerConfig;
use super::digest::Digest;
use super::error::{Operation, RegistryError};
use super::hosts::{endpoints_for, HostSettings, HostsError, HostsOptions};
use super::manifest::{
    manifest_accept_header, manifest_kind, parse_index, select_platform, BlobDescriptor, Manifest,
    ManifestError, ManifestKind,
};
use super::metrics::RegistryMetrics;
use super::options::{ClientOptions, CredentialsSource};
use super::range::parse_content_range;
use super::reference::Reference;
use super::retry::with_retries;
use super::transport::{read_limited, redact, status_error, Endpoint, RequestSpec, Transport};

/// How deep image indexes may nest before Veil gives up.
const MAX_INDEX_DEPTH: usize = 3;
/// The `Docker-Content-Digest` response header.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// What an endpoint must be allowed to do for a request (`hosts.toml` capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capability {
    /// Fetch by digest.
    Pull,
    /// Resolve a tag.
    Resolve,
}

/// A manifest or index exactly as fetched, with its verified digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// The bytes as the registry sent them.
    pub bytes: Vec<u8>,
    /// Their digest (checked against the digest asked for, or the one the registry announced).
    pub digest: Digest,
    /// The `Content-Type` the registry sent.
    pub content_type: Option<String>,
    /// Manifest or index.
    pub kind: ManifestKind,
}

/// A reference resolved to the manifest for the client's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The reference as given.
    pub reference: Reference,
    /// The digest of the index the reference pointed to, when it pointed to one.
    pub index_digest: Option<Digest>,
    /// The image manifest.
    pub manifest: Manifest,
}

/// A registry client. Cheap to clone; clones share connections, tokens and counters.
#[derive(Clone)]
pub struct RegistryClient {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    pub options: ClientOptions,
    pub transport: Transport,
    hosts: HostsOptions,
    endpoints: Mutex<HashMap<String, Arc<Vec<Arc<Endpoint>>>>>,
    default_http: reqwest::Client,
    extra_roots: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client with `options`; reads the credentials and the CA bundle now.
    pub fn new(options: ClientOptions) -> Result<Self, RegistryError> {
        let credentials = match &options.credentials {
            CredentialsSource::DockerDefault => DockerConfig::load_default()?,
            CredentialsSource::DockerConfigFile(path) => DockerConfig::load(path)?,
            CredentialsSource::Config(config) => config.clone(),
            CredentialsSource::Anonymous => DockerConfig::empty(),
        };
        let mut extra_roots = Vec::new();
        if let Some(bundle) = &options.ca_bundle {
            extra_roots = read_certificates(bundle, "the CA bundle")?;
        }
        let default_http = build_http(
            &options,
            &extra_roots,
            &HostSettings::default(),
            "all registries",
        )?;
        let hosts = HostsOptions {
            config_dir: options.hosts_dir.clone(),
            plain_http: options.plain_http,
            insecure_registries: options.insecure_registries.clone(),
        };
        let transport = Transport {
            authorizer: Default::default(),
            credentials,
            store: options.credential_store.clone(),
            metrics: Arc::new(RegistryMetrics::default()),
            request_timeout: options.request_timeout,
            max_redirects: options.max_redirects,
        };
        Ok(RegistryClient {
            inner: Arc::new(ClientInner {
                options,
                transport,
                hosts,
                endpoints: Mutex::new(HashMap::new()),
                default_http,
                extra_roots,
            }),
        })
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The client's counters (bytes fetched, requests, retries, token fetches).
    pub fn metrics(&self) -> Arc<RegistryMetrics> {
        self.inner.transport.metrics.clone()
    }

    /// Resolves `reference` (tag or digest) to the image manifest for the client's
    /// platform, following an index if the reference names one.
    pub async fn resolve(&self, reference: &Reference) -> Result<ResolvedImage, RegistryError> {
        let op = Operation::new(
            reference.registry(),
            reference.repository(),
            format!("manifest {}", reference.object()),
        );
        self.with_deadline(&op, async {
            let mut current = reference.clone();
            let mut index_digest = None;
            for _ in 0..MAX_INDEX_DEPTH {
                let raw = self.fetch_manifest(&current).await?;
                let op = Operation::new(
                    reference.registry(),
                    reference.repository(),
                    format!("manifest {}", raw.digest),
                );
                match raw.kind {
                    ManifestKind::Manifest => {
                        let manifest = Manifest::parse(raw.bytes, raw.digest)
                            .map_err(|source| RegistryError::Manifest { op, source })?;
                        return Ok(ResolvedImage {
                            reference: reference.clone(),
                            index_digest,
                            manifest,
                        });
                    }
                    ManifestKind::Index => {
                        let entries =
                            parse_index(&raw.bytes).map_err(|source| RegistryError::Manifest {
                                op: op.clone(),
                                source,
                            })?;
                        let entry = select_platform(&entries, &self.inner.options.platform)
                            .map_err(|source| RegistryError::Manifest { op, source })?;
                        index_digest.get_or_insert(raw.digest);
                        current = reference.with_digest(entry.descriptor.digest.clone());
                    }
                }
            }
            Err(RegistryError::Manifest {
                op: op.clone(),
                source: ManifestError::TooDeep(MAX_INDEX_DEPTH),
            })
        })
        .await
    }

    /// Fetches the manifest or index `reference` names (its digest, else its tag), without
    /// following indexes. Fetched by digest, the bytes must have that digest; fetched by
    /// tag, they must match the `Docker-Content-Digest` the registry announces, if any.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<RawManifest, RegistryError> {
        let object = reference.object();
        let op = Operation::new(
            reference.registry(),
            reference.repository(),
            format!("manifest {object}"),
        );
        let capability = match reference.digest() {
            Some(_) => Capability::Pull,
            None => Capability::Resolve,
        };
        let path = format!("{}/manifests/{object}", reference.repository());
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(&manifest_accept_header())
                .unwrap_or(HeaderValue::from_static("*/*")),
        );
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let limit = self.inner.options.max_manifest_bytes;
        let (bytes, content_type, announced) = self
            .with_deadline(
                &op,
                self.on_endpoints(reference, capability, &op, |endpoint| {
                    let (op, path, headers) = (&op, &path, headers.clone());
                    async move {
                        let url = endpoint.url(path, op)?;
                        let spec = RequestSpec {
                            op,
                            method: Method::GET,
                            headers,
                            repository: reference.repository(),
                        };
                        let sent = self.inner.transport.send(&endpoint, url, &spec).await?;
                        if sent.response.status() != StatusCode::OK {
                            return Err(status_error(sent, op).await);
                        }
                        let header = |name| {
                            sent.response
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let content_type = header(CONTENT_TYPE.as_str());
                        let announced = header(DOCKER_CONTENT_DIGEST);
                        let url = redact(&sent.url);
                        let metrics = &self.inner.transport.metrics;
                        let bytes =
                            read_limited(sent.response, limit, op, &url, Some(metrics)).await?;
                        Ok((bytes, content_type, announced))
                    }
                }),
            )
            .await?;
        let expected = match (reference.digest(), announced) {
            (Some(asked), _) => Some(asked.clone()),
            (None, Some(announced)) => match Digest::parse(announced.trim()) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(%op, error = %e, "ignoring unparseable Docker-Content-Digest");
                    None
                }
            },
            (None, None) => None,
        };
        let digest = match expected {
            Some(expected) => {
                if let Err(actual) = expected.verify(&bytes) {
                    return Err(RegistryError::DigestMismatch {
                        op,
                        expected: expected.to_string(),
                        actual: actual.to_string(),
                    });
                }
                expected
            }
            None => Digest::sha256_of(&bytes),
        };
        let kind = manifest_kind(content_type.as_deref(), &bytes).map_err(|source| {
            RegistryError::Manifest {
                op: op.clone(),
                source,
            }
        })?;
        Ok(RawManifest {
            bytes,
            digest,
            content_type,
            kind,
        })
    }

    /// Fetches a whole blob (an image config, say) and checks its digest. Blobs larger than
    /// [`ClientOptions::max_blob_bytes`] are refused: read those by ranges.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Vec<u8>, RegistryError> {
        let op = Operation::new(
            reference.registry(),
            reference.repository(),
            format!("blob {digest}"),
        );
        let path = format!("{}/blobs/{digest}", reference.repository());
        let limit = self.inner.options.max_blob_bytes;
        let bytes = self
            .with_deadline(
                &op,
                self.on_endpoints(reference, Capability::Pull, &op, |endpoint| {
                    let (op, path) = (&op, &path);
                    async move {
                        let url = endpoint.url(path, op)?;
                        let spec = RequestSpec {
                            op,
                            method: Method::GET,
                            headers: identity_headers(),
                            repository: reference.repository(),
                        };
                        let sent = self.inner.transport.send(&endpoint, url, &spec).await?;
                        if sent.response.status() != StatusCode::OK {
                            return Err(status_error(sent, op).await);
                        }
                        let url = redact(&sent.url);
                        read_limited(
                            sent.response,
                            limit,
                            op,
                            &url,
                            Some(&self.inner.transport.metrics),
                        )
                        .await
                    }
                }),
            )
            .await?;
        digest
            .verify(&bytes)
            .map_err(|actual| RegistryError::DigestMismatch {
                op,
                expected: digest.to_string(),
                actual: actual.to_string(),
            })?;
        Ok(bytes)
    }

    /// The size of a blob: `HEAD`'s `Content-Length`, else the total of a one-byte
    /// range's `Content-Range`.
    pub async fn blob_size(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        let op = Operation::new(
            reference.registry(),
            reference.repository(),
            format!("size of blob {digest}"),
        );
        let path = format!("{}/blobs/{digest}", reference.repository());
        self.with_deadline(
            &op,
            self.on_endpoints(reference, Capability::Pull, &op, |endpoint| {
                let (op, path) = (&op, &path);
                async move {
                    let url = endpoint.url(path, op)?;
                    let head = RequestSpec {
                        op,
                        method: Method::HEAD,
                        headers: identity_headers(),
                        repository: reference.repository(),
                    };
                    let sent = self
                        .inner
                        .transport
                        .send(&endpoint, url.clone(), &head)
                        .await?;
                    if sent.response.status() != StatusCode::OK {
                        return Err(status_error(sent, op).await);
                    }
                    let length = sent
                        .response
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    if let Some(length) = length {
                        return Ok(length);
                    }
                    let mut headers = identity_headers();
                    headers.insert(RANGE, HeaderValue::from_static("bytes=0-0"));
                    let get = RequestSpec {
                        headers,
                        method: Method::GET,
                        ..head
                    };
                    let sent = self.inner.transport.send(&endpoint, url, &get).await?;
                    let status = sent.response.status();
                    let total = sent
                        .response
                        .headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_content_range(v).ok())
                        .and_then(|c| c.total);
                    match (status, total) {
                        (StatusCode::PARTIAL_CONTENT, Some(total)) => Ok(total),
                        (StatusCode::PARTIAL_CONTENT | StatusCode::OK, _) => {
                            Err(RegistryError::BadResponse {
                                op: op.clone(),
                                reason: "neither Content-Length nor a Content-Range total".into(),
                            })
                        }
                        _ => Err(status_error(sent, op).await),
                    }
                }
            }),
        )
        .await
    }

    /// A range reader for the blob `descriptor` describes, in `reference`'s repository.
    pub fn blob(&self, reference: &Reference, descriptor: &BlobDescriptor) -> RegistryBlob {
        RegistryBlob::new(
            self.clone(),
            reference.clone(),
            descriptor.digest.clone(),
            descriptor.size,
        )
    }

    /// A range reader for blob `digest`, asking the registry for its size.
    pub async fn open_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<RegistryBlob, RegistryError> {
        let size = self.blob_size(reference, digest).await?;
        Ok(RegistryBlob::new(
            self.clone(),
            reference.clone(),
            digest.clone(),
            size,
        ))
    }

    /// Runs `fut` under the operation deadline.
    pub(crate) async fn with_deadline<T>(
        &self,
        op: &Operation,
        fut: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let deadline = self.inner.options.operation_timeout;
        match tokio::time::timeout(deadline, fut).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::Deadline {
                op: op.clone(),
                deadline,
            }),
        }
    }

    /// Tries `attempt` (with retries) on each endpoint that has `capability`, mirrors
    /// first; the origin's error is the one reported when all fail.
    pub(crate) async fn on_endpoints<T, F, Fut>(
        &self,
        reference: &Reference,
        capability: Capability,
        op: &Operation,
        mut attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let endpoints = self.endpoints(reference.registry())?;
        let usable: Vec<Arc<Endpoint>> = endpoints
            .iter()
            .filter(|e| match capability {
                Capability::Pull => e.config.settings.capabilities.pull,
                Capability::Resolve => e.config.settings.capabilities.resolve,
            })
            .cloned()
            .collect();
        let mut last = None;
        for endpoint in usable {
            let policy = &self.inner.options.retry;
            let metrics = &self.inner.transport.metrics;
            match with_retries(policy, metrics, op, || attempt(endpoint.clone())).await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    if matches!(err, RegistryError::MirrorCold { .. }) {
                        tracing::debug!(%op, error = %err, "mirror still filling; trying the next host");
                    } else if !endpoint.config.is_origin {
                        tracing::warn!(%op, mirror = %endpoint.config.api_root, error = %err, "mirror failed; trying the next host");
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            RegistryError::Hosts(HostsError::Invalid {
                path: self.inner.hosts.config_dir.clone().unwrap_or_default(),
                reason: format!(
                    "no host of registry {} has the {capability:?} capability",
                    reference.registry()
                ),
            })
        }))
    }

    /// The endpoints of `registry`, read from `hosts.toml` once and then kept.
    pub(crate) fn endpoints(
        &self,
        registry: &str,
    ) -> Result<Arc<Vec<Arc<Endpoint>>>, RegistryError> {
        if let Some(found) = self
            .inner
            .endpoints
            .lock()
            .ok()
            .and_then(|m| m.get(registry).cloned())
        {
            return Ok(found);
        }
        let mut endpoints = Vec::new();
        for config in endpoints_for(registry, &self.inner.hosts)? {
            let settings = &config.settings;
            let http =
                if settings.ca.is_empty() && settings.client.is_empty() && !settings.skip_verify {
                    self.inner.default_http.clone()
                } else {
                    build_http(
                        &self.inner.options,
                        &self.inner.extra_roots,
                        settings,
                        config.api_root.as_str(),
                    )?
                };
            endpoints.push(Arc::new(Endpoint::new(config, http)?));
        }
        let endpoints = Arc::new(endpoints);
        if let Ok(mut map) = self.inner.endpoints.lock() {
            map.insert(registry.to_string(), endpoints.clone());
        }
        Ok(endpoints)
    }
}

/// `Accept-Encoding: identity`: blob bytes must arrive exactly as stored.
pub(crate) fn identity_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    headers
}

fn read_certificates(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let setup = |reason: String| RegistryError::Setup {
        endpoint: what.to_string(),
        reason,
    };
    let pem = std::fs::read(path)
        .map_err(|e| setup(format!("reading CA file {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| setup(format!("CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(setup(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// An HTTP client that never follows redirects, with the given TLS settings.
fn build_http(
    options: &ClientOptions,
    extra_roots: &[reqwest::Certificate],
    settings: &HostSettings,
    endpoint: &str,
) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .user_agent(options.user_agent.clone())
        .tls_built_in_root_certs(true)
        .danger_accept_invalid_certs(settings.skip_verify);
    for cert in extra_roots {
        builder = builder.add_root_certificate(cert.clone());
    }
    for ca in &settings.ca {
        for cert in read_certificates(ca, endpoint)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(client) = settings.client.first() {
        if settings.client.len() > 1 {
            tracing::warn!(
                endpoint,
                "several client certificates configured; using the first"
            );
        }
        let setup = |reason: String| RegistryError::Setup {
            endpoint: endpoint.to_string(),
            reason,
        };
        let mut pem = std::fs::read(&client.cert).map_err(|e| {
            setup(format!(
                "reading client certificate {}: {e}",
                client.cert.display()
            ))
        })?;
        if let Some(key) = &client.key {
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| setup(format!("reading client key {}: {e}", key.display())))?,
            );
        }
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| setup(format!("client certificate {}: {e}", client.cert.display())))?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| RegistryError::Setup {
        endpoint: endpoint.to_string(),
        reason: super::error::error_chain(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn operations_are_send_and_bad_setup_is_an_error() {
        let client = RegistryClient::new(ClientOptions {
            credentials: CredentialsSource::Anonymous,
            ..Default::default()
        })
        .unwrap();
        let reference = Reference::parse("127.0.0.1:1/app:v1").unwrap();
        let digest = Digest::sha256_of(b"");
        assert_send(&client.resolve(&reference));
        assert_send(&client.fetch_blob(&reference, &digest));
        assert_send(&client.blob_size(&reference, &digest));
        let blob = RegistryBlob::new(client.clone(), reference, digest, 10);
        assert_send(&blob.read_ranges(&[0..1, 2..3]));

        let err = RegistryClient::new(ClientOptions {
            ca_bundle: Some("/nonexistent/veil-ca.pem".into()),
            credentials: CredentialsSource::Anonymous,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/veil-ca.pem"),
            "{err}"
        );
        let err = RegistryClient::new(ClientOptions {
            credentials: CredentialsSource::DockerConfigFile("/nonexistent/config.json".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/config.json"),
            "{err}"
        );
    }
}
