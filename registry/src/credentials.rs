//! Registry credentials from a docker `config.json`.
//!
//! The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, or a path
//! given explicitly. Entries under `auths` are keyed by registry host (with or without
//! scheme; Docker Hub as `https://index.docker.io/v1/`); containers-auth.json style
//! `host/namespace` keys are honoured, the most specific first. An entry holds
//! `auth` (base64 `user:pass`), or `username`/`password`, or an `identitytoken` (an OAuth2
//! refresh token) or a `registrytoken` (sent as is as a bearer token).
//!
//! Credential helpers (`credsStore`, `credHelpers`) are not run: Veil is a daemon that
//! must not execute helper programs. When a helper holds a registry's credentials, the
//! lookup says so, and authentication errors tell the user to put them in `auths`.
//! (A kubelet-style credential provider the operator configures for the CRI proxy is
//! another matter: `veil-cri` runs it and fills a [`crate::CredentialStore`].)

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (HTTP Basic, or sent to the token service).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token service for access tokens.
    IdentityToken {
        /// The user name it was issued to (may be empty).
        username: String,
        /// The refresh token.
        token: String,
    },
    /// A bearer token sent to the registry as is.
    RegistryToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credential::IdentityToken { username, .. } => {
                write!(
                    f,
                    "IdentityToken {{ username: {username:?}, token: <redacted> }}"
                )
            }
            Credential::RegistryToken(_) => write!(f, "RegistryToken(<redacted>)"),
        }
    }
}

/// What `config.json` says about one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialLookup {
    /// Inline credentials, when the file has them.
    pub credential: Option<Credential>,
    /// The credential helper that holds this registry's credentials instead, when no
    /// inline credentials exist and a helper is configured (Veil does not run helpers).
    pub helper: Option<String>,
}

/// A docker `config.json` that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("reading docker config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("parsing docker config {source_name}: {reason}")]
    Parse {
        /// The file (or `<inline>`).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// An `auth` value is not base64 of `user:password`.
    #[error("docker config {source_name}: auths.{key:?}.auth: {reason}")]
    BadAuth {
        /// The file (or `<inline>`).
        source_name: String,
        /// The `auths` key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, RawEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Clone, Default, serde::Deserialize)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl fmt::Debug for RawEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A parsed docker `config.json`.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    /// `auths` entries by normalized key (`host` or `host/namespace`).
    auths: BTreeMap<String, (String, RawEntry)>,
    creds_store: Option<String>,
    cred_helpers: BTreeMap<String, String>,
    source_name: String,
}

impl DockerConfig {
    /// A config with no credentials (anonymous access).
    pub fn empty() -> Self {
        DockerConfig {
            source_name: "<none>".into(),
            ..Default::default()
        }
    }

    /// Parses the JSON text of a `config.json`; `source_name` names it in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<Self, CredentialsError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| CredentialsError::Parse {
            source_name: source_name.to_string(),
            reason: e.to_string(),
        })?;
        let auths = raw
            .auths
            .into_iter()
            .map(|(key, entry)| (normalize_key(&key), (key, entry)))
            .collect();
        let cred_helpers = raw
            .cred_helpers
            .into_iter()
            .map(|(key, helper)| (normalize_key(&key), helper))
            .collect();
        Ok(DockerConfig {
            auths,
            creds_store: raw.creds_store.filter(|s| !s.is_empty()),
            cred_helpers,
            source_name: source_name.to_string(),
        })
    }

    /// Reads the `config.json` at `path`.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Where docker looks: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
    }

    /// Reads the file at [`Self::default_path`]; no file means no credentials.
    pub fn load_default() -> Result<Self, CredentialsError> {
        match Self::default_path() {
            Some(path) if path.exists() => Self::load(&path),
            _ => Ok(Self::empty()),
        }
    }

    /// The credentials for `repository` on `host` (a registry name such as `docker.io` or
    /// a mirror's `host:port`): the most specific `auths` key wins.
    pub fn lookup(
        &self,
        host: &str,
        repository: &str,
    ) -> Result<CredentialLookup, CredentialsError> {
        let host = normalize_key(host);
        let mut candidates: Vec<String> = Vec::new();
        let mut path = format!("{host}/{repository}");
        loop {
            candidates.push(path.clone());
            match path.rfind('/') {
                Some(i) if i > host.len() => path.truncate(i),
                _ => break,
            }
        }
        candidates.push(host.clone());
        for key in &candidates {
            if let Some((original_key, entry)) = self.auths.get(key) {
                if let Some(credential) = self.decode(original_key, entry)? {
                    return Ok(CredentialLookup {
                        credential: Some(credential),
                        helper: None,
                    });
                }
            }
        }
        let helper = self
            .cred_helpers
            .get(&host)
            .cloned()
            .or_else(|| self.creds_store.clone());
        Ok(CredentialLookup {
            credential: None,
            helper,
        })
    }

    fn decode(&self, key: &str, entry: &RawEntry) -> Result<Option<Credential>, CredentialsError> {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        if let Some(token) = non_empty(&entry.registrytoken) {
            return Ok(Some(Credential::RegistryToken(token)));
        }
        let (mut username, mut password) = (non_empty(&entry.username), non_empty(&entry.password));
        if let Some(auth) = non_empty(&entry.auth) {
            let bad = |reason: String| CredentialsError::BadAuth {
                source_name: self.source_name.clone(),
                key: key.to_string(),
                reason,
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("not base64: {e}")))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| bad("not UTF-8 once decoded".into()))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| bad("expected base64 of user:password".into()))?;
            username = Some(user.to_string());
            password = Some(pass.to_string());
        }
        if let Some(token) = non_empty(&entry.identitytoken) {
            return Ok(Some(Credential::IdentityToken {
                username: username.unwrap_or_default(),
                token,
            }));
        }
        Ok(match (username, password) {
            (Some(username), Some(password)) => Some(Credential::Basic { username, password }),
            _ => None,
        })
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/` → `host:5000`;
/// `host/ns/` → `host/ns`.
fn normalize_key(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let (host, path) = match key.split_once('/') {
        Some((host, path)) => (host, path),
        None => (key, ""),
    };
    let path = if matches!(path, "v1" | "v2") {
        ""
    } else {
        path
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    };
    if path.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auth_forms() {
        let json = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "reg.example:5000":{{"username":"u","password":"p"}},
                "http://idp.example/":{{"auth":"{}","identitytoken":"refresh"}},
                "tok.example":{{"registrytoken":"bearer-xyz"}},
                "ns.example/team":{{"auth":"{}"}},
                "ns.example":{{"auth":"{}"}}
            }},"credHelpers":{{"gcr.io":"gcloud"}}}}"#,
            b64("hub:se:cret"),
            b64("me:"),
            b64("team:t"),
            b64("other:o")
        );
        let cfg = DockerConfig::from_json(&json, "test").unwrap();
        let get = |host: &str, repo: &str| cfg.lookup(host, repo).unwrap();
        assert_eq!(
            get("docker.io", "library/busybox").credential,
            Some(Credential::Basic {
                username: "hub".into(),
                password: "se:cret".into()
            })
        );
        assert_eq!(
            get("reg.example:5000", "a").credential,
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            get("idp.example", "a").credential,
            Some(Credential::IdentityToken {
                username: "me".into(),
                token: "refresh".into()
            })
        );
        assert_eq!(
            get("tok.example", "a").credential,
            Some(Credential::RegistryToken("bearer-xyz".into()))
        );
        let team = get("ns.example", "team/app").credential.unwrap();
        assert!(matches!(team, Credential::Basic { username, .. } if username == "team"));
        let other = get("ns.example", "teamx/app").credential.unwrap();
        assert!(matches!(other, Credential::Basic { username, .. } if username == "other"));
        assert_eq!(get("gcr.io", "p/app").helper.as_deref(), Some("gcloud"));
        assert_eq!(get("nowhere.example", "a"), CredentialLookup::default());
        let dbg = format!("{:?}", get("docker.io", "x"));
        assert!(!dbg.contains("se:cret"), "{dbg}");
    }

    #[test]
    fn creds_store_is_reported_not_run() {
        let cfg = DockerConfig::from_json(r#"{"credsStore":"desktop"}"#, "t").unwrap();
        let found = cfg.lookup("reg.example", "a").unwrap();
        assert_eq!(found.credential, None);
        assert_eq!(found.helper.as_deref(), Some("desktop"));
    }

    #[test]
    fn bad_files() {
        let err = DockerConfig::from_json("{", "cfg.json").unwrap_err();
        assert!(err.to_string().contains("cfg.json"), "{err}");
        let cfg = DockerConfig::from_json(r#"{"auths":{"h":{"auth":"!!!"}}}"#, "c").unwrap();
        let err = cfg.lookup("h", "r").unwrap_err();
        assert!(err.to_string().contains("auths.\"h\".auth"), "{err}");
        let cfg = DockerConfig::from_json(
            &format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("nocolon")),
            "c",
        )
        .unwrap();
        assert!(cfg.lookup("h", "r").is_err());
        let missing = DockerConfig::load(Path::new("/nonexistent/veil/config.json")).unwrap_err();
        assert!(missing
            .to_string()
            .contains("/nonexistent/veil/config.json"));
    }
}
