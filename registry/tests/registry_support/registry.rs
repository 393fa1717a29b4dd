//! Debian's real `docker-registry` (the CNCF distribution registry), started by a test on
//! a free loopback port with its storage in a temporary directory, killed by PID when the
//! guard is dropped; and pushing test content with plain distribution API calls.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Token authentication settings for the registry's `auth: token:` section.
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub root_cert_pem: String,
}

/// A running registry; killed (by its PID) when dropped.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
    tls: bool,
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("addr").port()
}

impl Registry {
    /// Starts a registry and waits (at most 15 s) until it answers.
    pub async fn start(auth: Option<&TokenAuth>) -> Registry {
        Self::start_with(auth, None).await
    }

    /// Starts a registry serving HTTPS with this PEM certificate and key.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Registry {
        Self::start_with(None, Some((cert_pem, key_pem))).await
    }

    async fn start_with(auth: Option<&TokenAuth>, tls: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: veil-test-secret\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&cert_path, cert).expect("write cert");
            std::fs::write(&key_path, key).expect("write key");
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert_path.display(),
                key_path.display()
            ));
        }
        if let Some(auth) = auth {
            let bundle = dir.path().join("token-root.pem");
            std::fs::write(&bundle, &auth.root_cert_pem).expect("write bundle");
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                auth.realm,
                auth.service,
                auth.issuer,
                bundle.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child: Some(child),
            port,
            dir,
            tls: tls.is_some(),
        };
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .expect("probe client");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let probe = http
                .get(format!("{}/v2/", registry.base()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                registry.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kills the registry (by PID) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Pushes with plain distribution API calls, optionally with an Authorization header.
pub struct Pusher {
    pub base: String,
    pub authorization: Option<String>,
    http: reqwest::Client,
}

impl Pusher {
    pub fn new(base: String, authorization: Option<String>) -> Self {
        Self::with_ca(base, authorization, None)
    }

    /// A pusher that trusts `ca_pem` for HTTPS.
    pub fn with_ca(base: String, authorization: Option<String>, ca_pem: Option<&str>) -> Self {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(20));
        if let Some(pem) = ca_pem {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("ca"));
        }
        Pusher {
            base,
            authorization,
            http: builder.build().expect("client"),
        }
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    /// Monolithic upload: POST an upload session, PUT the bytes with `?digest=`.
    pub async fn blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let start = self
            .auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(
            start.status().as_u16(),
            202,
            "start upload: {:?}",
            start.text().await
        );
        let location = start.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let mut url = url::Url::parse(&self.base)
            .unwrap()
            .join(&location)
            .expect("upload url");
        url.query_pairs_mut().append_pair("digest", &digest);
        let put = self
            .auth(self.http.put(url))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("upload");
        assert_eq!(put.status().as_u16(), 201, "upload: {:?}", put.text().await);
        digest
    }

    /// PUTs a manifest or index under `reference` (tag or digest); returns its digest.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let put = self
            .auth(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(
            put.status().as_u16(),
            201,
            "put manifest: {:?}",
            put.text().await
        );
        sha256(body)
    }

    /// Pushes an image (config + layers) and tags its manifest; returns what was pushed.
    pub async fn image(
        &self,
        repo: &str,
        tag: &str,
        arch: &str,
        layers: &[Vec<u8>],
    ) -> PushedImage {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        )
        .into_bytes();
        let config_digest = self.blob(repo, &config).await;
        let mut layer_json = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let digest = self.blob(repo, layer).await;
            layer_json.push(format!(
                r#"{{"mediaType":"{OCI_LAYER}","digest":"{digest}","size":{},"annotations":{{"test.layer":"{i}"}}}}"#,
                layer.len()
            ));
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            layer_json.join(",")
        )
        .into_bytes();
        let manifest_digest = self.manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        PushedImage {
            manifest,
            manifest_digest,
            config,
            config_digest,
            layers: layers.to_vec(),
        }
    }
}

/// What [`Pusher::image`] pushed.
pub struct PushedImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Vec<u8>>,
}

/// Deterministic pseudo-random bytes (xorshift), so ranges are distinguishable.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
