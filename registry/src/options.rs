//! Settings of the registry client: transport security, mirrors, credentials, platform,
//! timeouts, retries and size limits. The daemon's config and the CLI flags map onto
//! these (`--plain-http` → [`ClientOptions::plain_http`]).

use std::path::PathBuf;
use std::time::Duration;

use super::credential_store::SharedCredentialStore;
use super::credentials::DockerConfig;
use super::manifest::Platform;
use super::retry::{RetryPolicy, DEFAULT_READ_RETRY, DEFAULT_STALL_TIMEOUT};

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub enum CredentialsSource {
    /// docker's default `config.json` (`$DOCKER_CONFIG`, else `~/.docker`); none: anonymous.
    #[default]
    DockerDefault,
    /// This `config.json` (it must exist).
    DockerConfigFile(PathBuf),
    /// An already parsed config.
    Config(DockerConfig),
    /// No credentials at all.
    Anonymous,
}

/// Registry client settings; [`Default`] gives sensible production values.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The platform to pick from image indexes (default: the running OS/architecture).
    pub platform: Platform,
    /// Use plain HTTP for every registry (the CLI's `--plain-http`).
    pub plain_http: bool,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// containerd-style host configuration directory (`/etc/containerd/certs.d`); `None`
    /// means no mirrors and no per-host TLS settings.
    pub hosts_dir: Option<PathBuf>,
    /// Extra trusted CA certificates (a PEM bundle) for every registry, on top of the
    /// system's and the built-in roots.
    pub ca_bundle: Option<PathBuf>,
    /// Where credentials come from.
    pub credentials: CredentialsSource,
    /// Credentials given at run time (a pod's imagePullSecret), asked before
    /// [`Self::credentials`]; `None`: only those.
    pub credential_store: Option<SharedCredentialStore>,
    /// Longest wait to connect.
    pub connect_timeout: Duration,
    /// Longest time for one request, from connecting until its body is read.
    pub request_timeout: Duration,
    /// Longest time for one client operation (resolve, one read), retries included.
    pub operation_timeout: Duration,
    /// Retries of one request on one endpoint.
    pub retry: RetryPolicy,
    /// How long a blob read keeps retrying through an outage (every host failing with a
    /// connection error, a timeout, a stall or a 5xx) before it fails.
    pub read_retry: Duration,
    /// How long a blob transfer may go without a byte before it is abandoned and tried
    /// again on a fresh connection.
    pub stall_timeout: Duration,
    /// Largest manifest or index accepted (containerd uses 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest blob [`super::RegistryClient::fetch_blob`] reads into memory.
    pub max_blob_bytes: u64,
    /// Most redirects followed by one request.
    pub max_redirects: u32,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            platform: Platform::host(),
            plain_http: false,
            insecure_registries: Vec::new(),
            hosts_dir: None,
            ca_bundle: None,
            credentials: CredentialsSource::default(),
            credential_store: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(180),
            retry: RetryPolicy::default(),
            read_retry: DEFAULT_READ_RETRY,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 64 << 20,
            max_redirects: 5,
            user_agent: concat!("veil/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}
