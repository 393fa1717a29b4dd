//! Key-encryption keys (KEKs) by `kid`: where they come from, in which order, and the
//! in-memory cache that makes one attestation serve every layer of an image.
//!
//! A `kid` is a KBS resource URI (PROTOCOLS.md §3.2): `kbs://<host>/<repo>/<type>/<tag>`,
//! or `kbs+<plugin>://<host>/<path>[?query]` for another KBS plugin. The host part is
//! ignored (the configured KBS is asked), so `kbs:///default/image_key/nginx` names the
//! resource `default/image_key/nginx` of the `resource` plugin. Each path segment must
//! match the KBS's own rule `^[A-Za-z0-9_-]+[A-Za-z0-9_.-]*$` (so no segment is `.`/`..`).
//!
//! Sources ([`KekSource`]):
//! - [`FileKekSource`] (`file`): `<dir>/<repo>/<type>/<tag>` holds the raw KEK (tests,
//!   machines without a TEE);
//! - [`CdhKekSource`] (`cdh`): CoCo's Confidential Data Hub resource API,
//!   `GET http://127.0.0.1:8006/cdh/resource/<repo>/<type>/<tag>`, where guest-components
//!   already run and attest;
//! - [`crate::kbs::KbsKekSource`] (`kbs`): Veil's own attestation client of a Trustee KBS.
//!
//! A [`KekChain`] asks its sources in order until one answers, and keeps every KEK it got
//! for the life of the process (zeroized when the chain is dropped). Fetches are
//! serialized, so layers prepared concurrently with the same kid cause one fetch. KEKs are
//! never logged and no error holds one.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use thiserror::Error;

use crate::secret::SecretBytes;

/// Largest KEK (resource) accepted from any source.
pub const MAX_KEK_LEN: usize = 64 * 1024;
/// The CDH resource API's default address.
pub const DEFAULT_CDH_URL: &str = "http://127.0.0.1:8006";

/// A kid that is not a KBS resource URI Veil can use.
#[derive(Debug, Error)]
#[error("kid {kid:?} is not a KBS resource URI (kbs:///<repo>/<type>/<tag>): {reason}")]
pub struct KidError {
    /// The kid as given.
    pub kid: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed `kid`: the KBS plugin, the resource path and the query.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kid {
    /// The kid exactly as written in the packet.
    pub uri: String,
    /// The KBS plugin (`resource` for a plain `kbs://` URI).
    pub plugin: String,
    /// The resource path segments (three for the `resource` plugin: repo, type, tag).
    pub path: Vec<String>,
    /// The query string, if any (passed to the KBS policy).
    pub query: Option<String>,
}

/// Does `segment` match the KBS resource segment rule?
fn valid_segment(segment: &str) -> bool {
    let mut bytes = segment.bytes();
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    match bytes.next() {
        Some(first) if ok(first) => bytes.all(|b| ok(b) || b == b'.'),
        _ => false,
    }
}

impl Kid {
    /// The plugin of plain `kbs://` URIs.
    pub const RESOURCE_PLUGIN: &'static str = "resource";

    /// Parses a kid.
    pub fn parse(kid: &str) -> Result<Self, KidError> {
        let bad = |reason: &str| KidError {
            kid: kid.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = kid
            .split_once("://")
            .ok_or_else(|| bad("no scheme (expected kbs://)"))?;
        let plugin = match scheme {
            "kbs" => Self::RESOURCE_PLUGIN.to_string(),
            other => match other.strip_prefix("kbs+") {
                Some(plugin) if valid_segment(plugin) => plugin.to_string(),
                _ => return Err(bad("the scheme is not kbs or kbs+<plugin>")),
            },
        };
        // Drop the authority (host[:port], often empty): the configured KBS is used.
        let path_and_query = match rest.find('/') {
            Some(i) => &rest[i + 1..],
            None => return Err(bad("no resource path")),
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path_and_query, None),
        };
        let path: Vec<String> = path.split('/').map(str::to_string).collect();
        if path.iter().any(|s| !valid_segment(s)) {
            return Err(bad(
                "a path segment is empty or has characters outside [A-Za-z0-9_.-] (or starts with '.')",
            ));
        }
        if plugin == Self::RESOURCE_PLUGIN && path.len() != 3 {
            return Err(bad(
                "a resource path has exactly three segments: repo/type/tag",
            ));
        }
        if let Some(q) = &query {
            if q.bytes().any(|b| b.is_ascii_whitespace() || b == b'#') {
                return Err(bad("the query has whitespace or '#'"));
            }
        }
        Ok(Self {
            uri: kid.to_string(),
            plugin,
            path,
            query,
        })
    }

    /// `repo/type/tag` (the resource path, joined).
    pub fn resource_path(&self) -> String {
        self.path.join("/")
    }

    /// Whether this kid names a resource of the `resource` plugin.
    pub fn is_resource(&self) -> bool {
        self.plugin == Self::RESOURCE_PLUGIN
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Why one source did not give a KEK. Never holds key bytes.
#[derive(Debug, Error)]
pub enum KekError {
    /// The source does not have this kid (a missing file; a KBS that refused it).
    #[error("not found: {0}")]
    NotFound(String),
    /// The source cannot serve this kind of kid (e.g. a non-resource plugin for `file`).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The source failed (unreachable, refused, attestation failed, bad answer).
    #[error("{0}")]
    Failed(String),
}

/// A place KEKs come from.
pub trait KekSource: Send + Sync {
    /// How the source is named in errors and logs, e.g. `file:/etc/veil/keks`.
    fn name(&self) -> String;

    /// The KEK (raw resource bytes) named by `kid`.
    fn get<'a>(&'a self, kid: &'a Kid) -> BoxFuture<'a, Result<SecretBytes, KekError>>;
}

/// No source gave the KEK: one line per source tried.
#[derive(Debug, Error)]
#[error("no KEK for kid {kid}: {}", format_attempts(.attempts))]
pub struct KekChainError {
    /// The kid asked for.
    pub kid: String,
    /// `(source name, why it failed)` for every source tried, in order.
    pub attempts: Vec<(String, KekError)>,
}

fn format_attempts(attempts: &[(String, KekError)]) -> String {
    if attempts.is_empty() {
        return "no KEK source is configured".into();
    }
    attempts
        .iter()
        .map(|(source, err)| format!("{source}: {err}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sources asked in order, and the KEKs they gave (kept for the process's life).
pub struct KekChain {
    sources: Vec<Arc<dyn KekSource>>,
    cache: Mutex<HashMap<String, SecretBytes>>,
    fetch: tokio::sync::Mutex<()>,
}

impl fmt::Debug for KekChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.cache.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("KekChain")
            .field("sources", &self.source_names())
            .field("cached_keks", &cached)
            .finish()
    }
}

impl KekChain {
    /// A chain of `sources`, asked in this order.
    pub fn new(sources: Vec<Arc<dyn KekSource>>) -> Self {
        Self {
            sources,
            cache: Mutex::new(HashMap::new()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The sources' names, in order.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name()).collect()
    }

    /// Whether the chain has no source.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The KEK named by `kid`: from the cache, else from the first source that has it.
    pub async fn get(&self, kid: &str) -> Result<SecretBytes, KekChainError> {
        if let Some(kek) = self.cached(kid) {
            return Ok(kek);
        }
        let parsed = Kid::parse(kid).map_err(|e| KekChainError {
            kid: kid.to_string(),
            attempts: vec![("kid".into(), KekError::Failed(e.reason))],
        })?;
        // One fetch at a time: a second layer with the same kid waits and finds it cached.
        let _guard = self.fetch.lock().await;
        if let Some(kek) = self.cached(kid) {
            return Ok(kek);
        }
        let mut attempts = Vec::new();
        for source in &self.sources {
            match source.get(&parsed).await {
                Ok(kek) => {
                    tracing::info!(kid, source = %source.name(), "KEK obtained");
                    if let Ok(mut cache) = self.cache.lock() {
                        cache.insert(kid.to_string(), kek.clone());
                    }
                    return Ok(kek);
                }
                Err(e) => {
                    tracing::warn!(kid, source = %source.name(), error = %e, "KEK source failed");
                    attempts.push((source.name(), e));
                }
            }
        }
        Err(KekChainError {
            kid: kid.to_string(),
            attempts,
        })
    }

    fn cached(&self, kid: &str) -> Option<SecretBytes> {
        self.cache.lock().ok()?.get(kid).cloned()
    }

    /// Forgets every cached KEK (they are zeroized).
    pub fn clear_cache(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }
}

/// KEKs as files: `<dir>/<repo>/<type>/<tag>` holds the raw bytes of the KEK.
#[derive(Debug, Clone)]
pub struct FileKekSource {
    dir: PathBuf,
}

impl FileKekSource {
    /// KEKs under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file a kid maps to (segments are checked by [`Kid::parse`]: no `..`).
    pub fn path_of(&self, kid: &Kid) -> PathBuf {
        kid.path.iter().fold(self.dir.clone(), |p, s| p.join(s))
    }

    fn read(&self, kid: &Kid) -> Result<SecretBytes, KekError> {
        if !kid.is_resource() {
            return Err(KekError::Unsupported(format!(
                "plugin {:?} (files hold resource-plugin KEKs only)",
                kid.plugin
            )));
        }
        let path = self.path_of(kid);
        read_limited(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                KekError::NotFound(format!("{} does not exist", path.display()))
            }
            _ => KekError::Failed(format!("{}: {e}", path.display())),
        })
    }
}

fn read_limited(path: &Path) -> std::io::Result<SecretBytes> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(64));
    file.take(MAX_KEK_LEN as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_KEK_LEN {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_KEK_LEN} bytes"
        )));
    }
    Ok(SecretBytes::new(std::mem::take(&mut *bytes)))
}

impl KekSource for FileKekSource {
    fn name(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    fn get<'a>(&'a self, kid: &'a Kid) -> BoxFuture<'a, Result<SecretBytes, KekError>> {
        Box::pin(async move { self.read(kid) })
    }
}

/// The Confidential Data Hub's resource API (`GET <url>/cdh/resource/<repo>/<type>/<tag>`),
/// which answers with the raw resource after its own attestation.
pub struct CdhKekSource {
    url: String,
    http: reqwest::Client,
}

impl fmt::Debug for CdhKekSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CdhKekSource")
            .field("url", &self.url)
            .finish()
    }
}

impl CdhKekSource {
    /// A client of the CDH at `url` (e.g. [`DEFAULT_CDH_URL`]), plain HTTP on loopback.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, KekError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| KekError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    async fn fetch(&self, kid: &Kid) -> Result<SecretBytes, KekError> {
        if !kid.is_resource() {
            return Err(KekError::Unsupported(format!(
                "plugin {:?} (the CDH resource API serves resource-plugin paths only)",
                kid.plugin
            )));
        }
        let url = format!("{}/cdh/resource/{}", self.url, kid.resource_path());
        let response = self.http.get(&url).send().await.map_err(|e| {
            KekError::Failed(format!(
                "GET {url}: {}",
                veil_blob::display::error_chain(&e)
            ))
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| KekError::Failed(format!("GET {url}: reading the answer: {e}")))?;
        if status.is_success() {
            if body.len() > MAX_KEK_LEN {
                return Err(KekError::Failed(format!(
                    "GET {url}: a {}-byte answer is not a KEK",
                    body.len()
                )));
            }
            return Ok(SecretBytes::new(body.to_vec()));
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        let detail = format!("GET {url}: HTTP {status}: {}", text.trim());
        if status == reqwest::StatusCode::NOT_FOUND {
            Err(KekError::NotFound(detail))
        } else {
            Err(KekError::Failed(detail))
        }
    }
}

impl KekSource for CdhKekSource {
    fn name(&self) -> String {
        format!("cdh:{}", self.url)
    }

    fn get<'a>(&'a self, kid: &'a Kid) -> BoxFuture<'a, Result<SecretBytes, KekError>> {
        Box::pin(self.fetch(kid))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn kids() {
        let kid = Kid::parse("kbs:///default/image_key/nginx").unwrap();
        assert_eq!(kid.plugin, "resource");
        assert_eq!(kid.resource_path(), "default/image_key/nginx");
        assert_eq!(kid.query, None);
        let kid = Kid::parse("kbs://kbs.example:8080/a/b/c.v1?version=2").unwrap();
        assert_eq!(kid.path, ["a", "b", "c.v1"]);
        assert_eq!(kid.query.as_deref(), Some("version=2"));
        let kid = Kid::parse("kbs+nebula-ca:///credential?name=x").unwrap();
        assert_eq!(kid.plugin, "nebula-ca");
        assert_eq!(kid.path, ["credential"]);
        for bad in [
            "/default/image-kek/6e2a",
            "https://kbs/a/b/c",
            "kbs:///a/b",
            "kbs:///a/../c",
            "kbs:///a/b/.c",
            "kbs:///a//c",
            "kbs:///a/b/c/d",
            "kbs://host",
            "kbs+../a/b/c",
        ] {
            let err = Kid::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[tokio::test]
    async fn file_source_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("default/image_key")).unwrap();
        std::fs::write(dir.path().join("default/image_key/nginx"), [5u8; 32]).unwrap();
        let source = FileKekSource::new(dir.path());
        let kid = Kid::parse("kbs:///default/image_key/nginx").unwrap();
        assert_eq!(
            source.path_of(&kid),
            dir.path().join("default/image_key/nginx")
        );

        struct Counting(FileKekSource, AtomicUsize);
        impl KekSource for Counting {
            fn name(&self) -> String {
                self.0.name()
            }
            fn get<'a>(&'a self, kid: &'a Kid) -> BoxFuture<'a, Result<SecretBytes, KekError>> {
                self.1.fetch_add(1, Ordering::SeqCst);
                self.0.get(kid)
            }
        }
        let empty = tempfile::tempdir().unwrap();
        let first = Arc::new(Counting(
            FileKekSource::new(empty.path()),
            AtomicUsize::new(0),
        ));
        let second = Arc::new(Counting(source, AtomicUsize::new(0)));
        let chain = KekChain::new(vec![first.clone(), second.clone()]);
        let kek = chain.get("kbs:///default/image_key/nginx").await.unwrap();
        assert_eq!(kek.expose(), &[5u8; 32]);
        // Cached: no source is asked again, even after the file is gone.
        std::fs::remove_file(dir.path().join("default/image_key/nginx")).unwrap();
        let again = chain.get("kbs:///default/image_key/nginx").await.unwrap();
        assert_eq!(again, kek);
        assert_eq!(first.1.load(Ordering::SeqCst), 1);
        assert_eq!(second.1.load(Ordering::SeqCst), 1);

        let err = chain
            .get("kbs:///default/image_key/other")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no KEK for kid kbs:///default/image_key/other"),
            "{text}"
        );
        assert!(
            text.contains(&format!("file:{}: not found", empty.path().display())),
            "{text}"
        );
        assert_eq!(err.attempts.len(), 2);
        assert!(!format!("{chain:?}").contains("5, 5"));

        let err = chain.get("not-a-kid").await.unwrap_err().to_string();
        assert!(err.contains("no scheme"), "{err}");
        let none = KekChain::new(Vec::new());
        let err = none.get("kbs:///a/b/c").await.unwrap_err().to_string();
        assert!(err.contains("no KEK source is configured"), "{err}");
    }
}
