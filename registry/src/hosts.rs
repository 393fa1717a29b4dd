//! Where to send a registry's requests: mirrors and the origin server, read from
//! containerd's `hosts.toml` format.
//!
//! For registry `reg:5000` the file is `<dir>/reg:5000/hosts.toml` (else
//! `<dir>/_default/hosts.toml`), e.g. under `/etc/containerd/certs.d`:
//!
//! ```toml
//! server = "https://registry-1.docker.io"     # the origin (default: https://<host>)
//! [host."https://mirror.example"]
//!   capabilities = ["pull", "resolve"]         # default: pull, resolve, push
//!   skip_verify = false
//!   ca = "/etc/certs/mirror-ca.pem"            # or a list; relative to the file's dir
//!   client = [["/etc/certs/c.pem", "/etc/certs/c.key"]]
//!   override_path = false                      # true: the URL path is the API root
//!   [host."https://mirror.example".header]
//!     x-custom = "1"                           # or a list of values
//! ```
//!
//! Mirrors are tried in the file's order, then the origin. Without a `hosts.toml`, a host
//! directory holding docker-style certificates (`*.crt` CAs, `*.cert`/`*.key` client pairs)
//! configures TLS for the origin. Plain HTTP is used only for `http://` URLs in the file,
//! or for the origin of registries configured insecure (`plain_http`, insecure list).

use std::path::{Path, PathBuf};

use url::Url;

use super::reference::DOCKER_HUB;

/// The file name containerd reads in each host directory.
pub const HOSTS_FILE: &str = "hosts.toml";
/// The host directory used when a registry has none of its own.
pub const DEFAULT_HOST_DIR: &str = "_default";
/// Where containerd's CRI configuration usually points `config_path`.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/containerd/certs.d";

/// A `hosts.toml` (or host directory) that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file or directory could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the key).
        reason: String,
    },
}

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Resolve tags to manifests.
    pub resolve: bool,
    /// Push (unused by Veil, parsed for completeness).
    pub push: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            pull: true,
            resolve: true,
            push: true,
        }
    }
}

/// A client certificate and its key (the key may be in the certificate file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// PEM certificate (chain).
    pub cert: PathBuf,
    /// PEM private key, when separate.
    pub key: Option<PathBuf>,
}

/// Settings of one host (the server or a mirror).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// What the host may be used for.
    pub capabilities: Capabilities,
    /// Accept any TLS certificate (dangerous; for test registries).
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Client certificates for mutual TLS.
    pub client: Vec<ClientCertificate>,
    /// Extra request headers, sent only to this host.
    pub headers: Vec<(String, String)>,
    /// The URL's path is the API root (no `/v2` appended).
    pub override_path: bool,
}

/// A parsed `hosts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsFile {
    /// The `server` URL, when set.
    pub server: Option<String>,
    /// Settings at the top level, for the server.
    pub server_settings: HostSettings,
    /// `[host."..."]` entries in file order.
    pub mirrors: Vec<(String, HostSettings)>,
}

/// One place requests for a registry can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The API root, ending in `/` (usually `scheme://host[:port]/v2/`).
    pub api_root: Url,
    /// The host's settings.
    pub settings: HostSettings,
    /// The name to look credentials up by: the registry's name for the origin, the
    /// mirror's `host[:port]` for a mirror.
    pub credential_host: String,
    /// Whether this is the registry itself rather than a mirror.
    pub is_origin: bool,
}

/// How to choose endpoints.
#[derive(Debug, Clone, Default)]
pub struct HostsOptions {
    /// The directory of host directories (`/etc/containerd/certs.d`); `None`: no mirrors.
    pub config_dir: Option<PathBuf>,
    /// Use plain HTTP for every registry's origin.
    pub plain_http: bool,
    /// Registries (`host[:port]`) whose origin is reached over plain HTTP.
    pub insecure_registries: Vec<String>,
}

/// The endpoints for `registry`, mirrors first, origin last.
pub fn endpoints_for(
    registry: &str,
    options: &HostsOptions,
) -> Result<Vec<EndpointConfig>, HostsError> {
    if registry.is_empty() || registry.starts_with('.') || registry.contains(['/', '\\']) {
        return Err(HostsError::Invalid {
            path: options.config_dir.clone().unwrap_or_default(),
            reason: format!("{registry:?} is not a registry host name"),
        });
    }
    let insecure = options.plain_http || options.insecure_registries.iter().any(|r| r == registry);
    let default_scheme = if insecure { "http" } else { "https" };
    let default_server = format!("{default_scheme}://{}", api_host(registry));
    let (hosts, dir) = match options.config_dir.as_deref() {
        Some(config_dir) => load_host_dir(config_dir, registry)?,
        None => (HostsFile::default(), None),
    };
    let base = dir.unwrap_or_default();
    let mut endpoints = Vec::new();
    for (url, settings) in &hosts.mirrors {
        let api_root = api_root(url, settings.override_path, &base)?;
        let credential_host = host_port(&api_root);
        endpoints.push(EndpointConfig {
            api_root,
            settings: settings.clone(),
            credential_host,
            is_origin: false,
        });
    }
    let server = hosts.server.clone().unwrap_or(default_server);
    endpoints.push(EndpointConfig {
        api_root: api_root(&server, hosts.server_settings.override_path, &base)?,
        settings: hosts.server_settings,
        credential_host: registry.to_string(),
        is_origin: true,
    });
    Ok(endpoints)
}

/// `docker.io` is served by `registry-1.docker.io`; every other name is its own host.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// Reads the host directory for `registry`: its `hosts.toml`, or docker-style certificate
/// files; returns the settings and the directory (for relative paths).
fn load_host_dir(
    config_dir: &Path,
    registry: &str,
) -> Result<(HostsFile, Option<PathBuf>), HostsError> {
    for name in [registry, DEFAULT_HOST_DIR] {
        let dir = config_dir.join(name);
        let file = dir.join(HOSTS_FILE);
        if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|source| HostsError::Read {
                path: file.clone(),
                source,
            })?;
            return Ok((parse_hosts_toml(&text, &file)?, Some(dir)));
        }
        if name == registry && dir.is_dir() {
            return Ok((docker_cert_dir(&dir)?, Some(dir)));
        }
    }
    Ok((HostsFile::default(), None))
}

/// Docker's certs.d layout: `*.crt` are CAs, `x.cert` + `x.key` are a client pair.
fn docker_cert_dir(dir: &Path) -> Result<HostsFile, HostsError> {
    let read_err = |source| HostsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let mut settings = HostSettings::default();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => settings.ca.push(path),
            Some("cert") => {
                let key = path.with_extension("key");
                settings.client.push(ClientCertificate {
                    cert: path,
                    key: key.is_file().then_some(key),
                });
            }
            _ => {}
        }
    }
    Ok(HostsFile {
        server_settings: settings,
        ..Default::default()
    })
}

/// Parses the text of a `hosts.toml`; `path` is used for errors and relative paths.
pub fn parse_hosts_toml(text: &str, path: &Path) -> Result<HostsFile, HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let server = match table.get("server") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("`server` must be a string".into())),
    };
    let server_settings = parse_settings(&table, base, "top level").map_err(invalid)?;
    let mut mirrors = Vec::new();
    match table.get("host") {
        None => {}
        Some(toml::Value::Table(hosts)) => {
            for (url, value) in hosts {
                let toml::Value::Table(entry) = value else {
                    return Err(invalid(format!("host.{url:?} must be a table")));
                };
                let settings =
                    parse_settings(entry, base, &format!("host.{url:?}")).map_err(invalid)?;
                mirrors.push((url.clone(), settings));
            }
        }
        Some(_) => return Err(invalid("`host` must be a table of tables".into())),
    }
    Ok(HostsFile {
        server,
        server_settings,
        mirrors,
    })
}

fn parse_settings(table: &toml::Table, base: &Path, at: &str) -> Result<HostSettings, String> {
    let mut settings = HostSettings::default();
    if let Some(caps) = table.get("capabilities") {
        let list =
            strings(caps).ok_or_else(|| format!("{at}: capabilities must be a list of strings"))?;
        settings.capabilities = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for cap in list {
            match cap.as_str() {
                "pull" => settings.capabilities.pull = true,
                "resolve" => settings.capabilities.resolve = true,
                "push" => settings.capabilities.push = true,
                other => return Err(format!("{at}: unknown capability {other:?}")),
            }
        }
    }
    match table.get("skip_verify") {
        None => {}
        Some(toml::Value::Boolean(b)) => settings.skip_verify = *b,
        Some(_) => return Err(format!("{at}: skip_verify must be true or false")),
    }
    match table.get("override_path") {
        None => {}
        Some(toml::Value::Boolean(b)) => settings.override_path = *b,
        Some(_) => return Err(format!("{at}: override_path must be true or false")),
    }
    if let Some(ca) = table.get("ca") {
        let list =
            strings(ca).ok_or_else(|| format!("{at}: ca must be a path or a list of paths"))?;
        settings.ca = list.iter().map(|p| base.join(p)).collect();
    }
    if let Some(client) = table.get("client") {
        settings.client = client_certs(client, base).ok_or_else(|| {
            format!("{at}: client must be a path, a list of paths, or a list of [cert, key] pairs")
        })?;
    }
    match table.get("header") {
        None => {}
        Some(toml::Value::Table(headers)) => {
            for (name, value) in headers {
                let values = strings(value).ok_or_else(|| {
                    format!("{at}: header {name:?} must be a string or a list of strings")
                })?;
                for v in values {
                    settings.headers.push((name.clone(), v));
                }
            }
        }
        Some(_) => return Err(format!("{at}: header must be a table")),
    }
    Ok(settings)
}

/// A string, or a list of strings.
fn strings(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

fn client_certs(value: &toml::Value, base: &Path) -> Option<Vec<ClientCertificate>> {
    let single = |s: &str| ClientCertificate {
        cert: base.join(s),
        key: None,
    };
    match value {
        toml::Value::String(s) => Some(vec![single(s)]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Some(single(s)),
                toml::Value::Array(pair) => match pair.as_slice() {
                    [toml::Value::String(cert), toml::Value::String(key)] => {
                        Some(ClientCertificate {
                            cert: base.join(cert),
                            key: Some(base.join(key)),
                        })
                    }
                    [toml::Value::String(cert)] => Some(single(cert)),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The API root for a host URL: `https://h` → `https://h/v2/`; `https://h/p` →
/// `https://h/p/v2/`; with `override_path`, the path as given.
fn api_root(url: &str, override_path: bool, base: &Path) -> Result<Url, HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: base.join(HOSTS_FILE),
        reason,
    };
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let mut parsed = Url::parse(&with_scheme).map_err(|e| invalid(format!("host {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(format!(
            "host {url:?}: only http:// and https:// hosts are supported"
        )));
    }
    let mut path = parsed.path().trim_end_matches('/').to_string();
    if !override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    path.push('/');
    parsed.set_path(&path);
    parsed.set_query(None);
    parsed.set_fragment(None);
    Ok(parsed)
}

/// `host[:port]` of a URL, the port only when not the scheme's default.
pub fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_toml_in_order() {
        let text = r#"
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve"]

[host."https://zz-mirror.example"]
  capabilities = ["pull"]
  ca = ["ca1.pem", "/abs/ca2.pem"]
  skip_verify = true
  [host."https://zz-mirror.example".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."http://aa-mirror.example:5000/prefix"]
  client = [["c.pem", "c.key"], "both.pem"]
  override_path = true
"#;
        let file = parse_hosts_toml(text, Path::new("/etc/certs.d/docker.io/hosts.toml")).unwrap();
        assert_eq!(file.server.as_deref(), Some("https://registry-1.docker.io"));
        assert!(!file.server_settings.capabilities.push);
        assert_eq!(file.mirrors.len(), 2);
        let (first, s) = &file.mirrors[0];
        assert_eq!(first, "https://zz-mirror.example", "file order kept");
        assert!(s.capabilities.pull && !s.capabilities.resolve);
        assert!(s.skip_verify);
        assert_eq!(
            s.ca,
            vec![
                PathBuf::from("/etc/certs.d/docker.io/ca1.pem"),
                PathBuf::from("/abs/ca2.pem")
            ]
        );
        assert_eq!(
            s.headers,
            vec![
                ("x-one".to_string(), "1".to_string()),
                ("x-many".to_string(), "a".to_string()),
                ("x-many".to_string(), "b".to_string())
            ]
        );
        let (_, s2) = &file.mirrors[1];
        assert!(s2.override_path);
        assert_eq!(s2.client.len(), 2);
        assert_eq!(
            s2.client[0].key.as_deref(),
            Some(Path::new("/etc/certs.d/docker.io/c.key"))
        );
        assert_eq!(s2.client[1].key, None);
        assert_eq!(s2.capabilities, Capabilities::default());
    }

    #[test]
    fn rejects_bad_hosts_toml() {
        for (text, needle) in [
            ("server = 1", "server"),
            ("capabilities = [\"fly\"]", "fly"),
            ("skip_verify = \"yes\"", "skip_verify"),
            ("[host.\"https://m\"]\nca = 5", "ca"),
            ("[host.\"https://m\"]\nclient = [[1, 2]]", "client"),
            ("host = 3", "host"),
            ("[host.\"https://m\".header]\nx = 1", "header"),
            ("not toml [", "hosts.toml"),
        ] {
            let err = parse_hosts_toml(text, Path::new("/d/hosts.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.contains("/d/hosts.toml"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn endpoints_from_a_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join("reg.example:5000");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join(HOSTS_FILE),
            "[host.\"http://127.0.0.1:1\"]\ncapabilities=[\"pull\"]\n[host.\"mirror.example/base\"]\n",
        )
        .unwrap();
        let opts = HostsOptions {
            config_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let eps = endpoints_for("reg.example:5000", &opts).unwrap();
        let roots: Vec<&str> = eps.iter().map(|e| e.api_root.as_str()).collect();
        assert_eq!(
            roots,
            [
                "http://127.0.0.1:1/v2/",
                "https://mirror.example/base/v2/",
                "https://reg.example:5000/v2/"
            ]
        );
        assert_eq!(eps[0].credential_host, "127.0.0.1:1");
        assert_eq!(eps[2].credential_host, "reg.example:5000");
        assert!(eps[2].is_origin && !eps[0].is_origin);

        // No directory of its own: `_default` applies; none either: origin only.
        let eps = endpoints_for("docker.io", &opts).unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].api_root.as_str(), "https://registry-1.docker.io/v2/");
        std::fs::create_dir_all(dir.path().join(DEFAULT_HOST_DIR)).unwrap();
        std::fs::write(
            dir.path().join(DEFAULT_HOST_DIR).join(HOSTS_FILE),
            "[host.\"https://all.example\"]\n",
        )
        .unwrap();
        assert_eq!(endpoints_for("other.example", &opts).unwrap().len(), 2);

        // Docker-style certificates without hosts.toml.
        let certs = dir.path().join("certs.example");
        std::fs::create_dir_all(&certs).unwrap();
        for f in ["ca.crt", "client.cert", "client.key"] {
            std::fs::write(certs.join(f), "x").unwrap();
        }
        let eps = endpoints_for("certs.example", &opts).unwrap();
        assert_eq!(eps[0].settings.ca, vec![certs.join("ca.crt")]);
        assert_eq!(
            eps[0].settings.client[0].key.as_deref(),
            Some(certs.join("client.key").as_path())
        );
    }

    #[test]
    fn plain_http_only_when_configured() {
        let plain = HostsOptions {
            plain_http: true,
            ..Default::default()
        };
        assert_eq!(
            endpoints_for("h:1", &plain).unwrap()[0].api_root.as_str(),
            "http://h:1/v2/"
        );
        let listed = HostsOptions {
            insecure_registries: vec!["h:1".into()],
            ..Default::default()
        };
        assert_eq!(
            endpoints_for("h:1", &listed).unwrap()[0].api_root.scheme(),
            "http"
        );
        assert_eq!(
            endpoints_for("h:2", &listed).unwrap()[0].api_root.scheme(),
            "https"
        );
        assert_eq!(
            api_root("https://h/custom/", true, Path::new("/"))
                .unwrap()
                .as_str(),
            "https://h/custom/"
        );
        assert!(api_root("ftp://h", false, Path::new("/")).is_err());
    }
}
