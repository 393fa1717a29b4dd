//! A kubelet-style credential provider (an exec hook): for an image pulled without
//! credentials, Veil runs the configured command with a `CredentialProviderRequest` on its
//! standard input and reads a `CredentialProviderResponse` from its standard output, as
//! kubelet's credential provider plugins do (`credentialprovider.kubelet.k8s.io/v1`):
//!
//! ```json
//! {"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest",
//!  "image": "registry.example:5000/team/app:v1"}
//! {"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderResponse",
//!  "cacheKeyType": "Registry", "cacheDuration": "6h",
//!  "auth": {"registry.example:5000": {"username": "u", "password": "p"}}}
//! ```
//!
//! The `auth` key that matches the image (host, `*.` wildcards per label, an optional path
//! prefix of the repository; the most specific wins) gives the credential, kept for
//! `cacheDuration` (if shorter than the store's lifetime). The command's output is never
//! logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veil_registry::Credential;

use crate::error::CriError;

/// How long the command may take (kubelet's plugins are expected to answer quickly).
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read from the command.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// The API version of the request and the accepted responses.
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

/// An exec hook answering credentials for images.
#[derive(Debug, Clone)]
pub struct CredentialProvider {
    /// The command run.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long it may take.
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    api_version: Option<String>,
    kind: Option<String>,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

impl CredentialProvider {
    /// A provider running `command ARGS...` with [`PROVIDER_TIMEOUT`].
    pub fn new(command: PathBuf, args: Vec<String>) -> Self {
        Self {
            command,
            args,
            timeout: PROVIDER_TIMEOUT,
        }
    }

    /// Asks the command for `image`'s credential on `host`/`repository`; `None` when its
    /// answer holds none for the image. The duration is how long to keep it (`None`: as
    /// long as the store keeps any).
    pub async fn credential(
        &self,
        image: &str,
        host: &str,
        repository: &str,
    ) -> Result<Option<(Credential, Option<Duration>)>, CriError> {
        let run = |reason: String| CriError::ProviderRun {
            command: self.command.clone(),
            reason,
        };
        let mut child = tokio::process::Command::new(&self.command)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| run(format!("cannot start it: {e}")))?;
        let request = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "CredentialProviderRequest",
            "image": image,
        });
        let mut stdin = child.stdin.take().ok_or_else(|| run("no stdin".into()))?;
        let mut stdout = child.stdout.take().ok_or_else(|| run("no stdout".into()))?;
        let talk = async {
            stdin.write_all(request.to_string().as_bytes()).await?;
            drop(stdin);
            let mut answer = Vec::new();
            (&mut stdout)
                .take(MAX_ANSWER_BYTES)
                .read_to_end(&mut answer)
                .await?;
            let status = child.wait().await?;
            std::io::Result::Ok((answer, status))
        };
        let (answer, status) = tokio::time::timeout(self.timeout, talk)
            .await
            .map_err(|_| run(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| run(e.to_string()))?;
        if !status.success() {
            return Err(run(format!("exited with {status}")));
        }
        parse_response(&answer, host, repository).map_err(|reason| CriError::ProviderAnswer {
            command: self.command.clone(),
            image: image.to_string(),
            reason,
        })
    }
}

/// The credential a `CredentialProviderResponse` gives `repository` on `host`.
fn parse_response(
    answer: &[u8],
    host: &str,
    repository: &str,
) -> Result<Option<(Credential, Option<Duration>)>, String> {
    // serde_json's errors name positions, not the text: no secret in them.
    let response: Response =
        serde_json::from_slice(answer).map_err(|e| format!("not a JSON response: {e}"))?;
    if response.kind.as_deref() != Some("CredentialProviderResponse") {
        return Err(format!("kind is {:?}", response.kind));
    }
    if response.api_version.as_deref() != Some(API_VERSION) {
        return Err(format!("apiVersion is {:?}", response.api_version));
    }
    let lifetime = match response.cache_duration.as_deref() {
        None | Some("") => None,
        Some(d) => {
            Some(go_duration(d).ok_or_else(|| format!("cacheDuration {d:?} is not a duration"))?)
        }
    };
    let best = response
        .auth
        .iter()
        .filter(|(key, _)| key_matches(key, host, repository))
        .max_by_key(|(key, _)| key.len());
    Ok(best.map(|(_, entry)| {
        (
            Credential::Basic {
                username: entry.username.clone(),
                password: entry.password.clone(),
            },
            lifetime,
        )
    }))
}

/// Whether a response's `auth` key (`host[:port][/path]`, labels may be `*`) matches.
fn key_matches(key: &str, host: &str, repository: &str) -> bool {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (key_host, key_path) = match key.split_once('/') {
        Some((h, p)) => (h, Some(p.trim_end_matches('/'))),
        None => (key, None),
    };
    let (kh, kp) = key_host
        .rsplit_once(':')
        .map_or((key_host, None), |(h, p)| (h, Some(p)));
    let (hh, hp) = host
        .rsplit_once(':')
        .map_or((host, None), |(h, p)| (h, Some(p)));
    if kp != hp {
        return false;
    }
    let (kl, hl): (Vec<&str>, Vec<&str>) = (kh.split('.').collect(), hh.split('.').collect());
    if kl.len() != hl.len() || !kl.iter().zip(&hl).all(|(k, h)| *k == "*" || k == h) {
        return false;
    }
    match key_path {
        None | Some("") => true,
        Some(p) => repository == p || repository.starts_with(&format!("{p}/")),
    }
}

/// A Go `time.Duration` string (`6h`, `1h30m`, `90s`, `500ms`).
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::from_secs_f64(value * seconds);
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_like_kubelets() {
        assert!(key_matches("reg.example:5000", "reg.example:5000", "a/b"));
        assert!(!key_matches("reg.example", "reg.example:5000", "a/b"));
        assert!(key_matches("*.example", "reg.example", "a"));
        assert!(!key_matches("*.example", "a.reg.example", "a"));
        assert!(key_matches("reg.example/team", "reg.example", "team/app"));
        assert!(!key_matches("reg.example/team", "reg.example", "teamx/app"));
        assert!(key_matches("https://reg.example", "reg.example", "x"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(go_duration("6h"), Some(Duration::from_secs(6 * 3600)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("soon"), None);
    }

    #[test]
    fn the_most_specific_key_answers() {
        let answer = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1",
            "kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"10m",
            "auth":{"reg:5000":{"username":"all","password":"p1"},
                    "reg:5000/team":{"username":"team","password":"p2"}}}"#;
        let (c, d) = parse_response(answer, "reg:5000", "team/app")
            .unwrap()
            .unwrap();
        assert_eq!(
            c,
            Credential::Basic {
                username: "team".into(),
                password: "p2".into()
            }
        );
        assert_eq!(d, Some(Duration::from_secs(600)));
        assert!(parse_response(answer, "other:5000", "team/app")
            .unwrap()
            .is_none());
        let err = parse_response(b"{\"kind\":\"Other\"}", "reg", "a").unwrap_err();
        assert!(err.contains("kind"), "{err}");
    }

    #[tokio::test]
    async fn a_command_answers_on_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("provider.sh");
        std::fs::write(
            &script,
            // Key order depends on serde_json's features: check each part on its own.
            "#!/bin/sh\nread -r request\ncase \"$request\" in *CredentialProviderRequest*) ;; *) exit 3;; esac\n\
             case \"$request\" in *reg:5000/app*) ;; *) exit 4;; esac\n\
             echo '{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":\"CredentialProviderResponse\",\"auth\":{\"reg:5000\":{\"username\":\"u\",\"password\":\"p\"}}}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let provider = CredentialProvider::new(script.clone(), vec![]);
        let got = provider
            .credential("reg:5000/app:1", "reg:5000", "app")
            .await
            .unwrap();
        assert!(matches!(got, Some((Credential::Basic { .. }, None))));
        let failing = CredentialProvider::new("/bin/false".into(), vec![]);
        let err = failing
            .credential("reg:5000/app:1", "reg:5000", "app")
            .await;
        assert!(err.unwrap_err().to_string().contains("exited"));
    }
}
