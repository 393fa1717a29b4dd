//! A client of the Trustee KBS attestation protocol (RCAR, protocol version 0.4.0) built on
//! the `kbs-types` crate (PROTOCOLS.md §4).
//!
//! One session:
//! 1. `POST /kbs/v0/auth` `{"version":"0.4.0","tee":..,"extra-params":{..}}` → a challenge
//!    (`nonce`) and the `kbs-session-id` cookie;
//! 2. a fresh TEE key pair; `report_data` = SHA-384 (or the hash the challenge selects) of
//!    the RFC 8785 canonical JSON of `{"additional-evidence":"","nonce":..,"tee-pubkey":..}`;
//!    the attester's evidence of it;
//! 3. `POST /kbs/v0/attest` (cookie) `{"init-data":null,"runtime-data":{nonce,tee-pubkey},
//!    "tee-evidence":{"primary_evidence":..,"additional_evidence":""}}` → `{"token":<JWT>}`.
//!
//! Resources: `GET /kbs/v0/<plugin>/<repo>/<type>/<tag>` with the session cookie and the
//! token as `Authorization: Bearer`, answered with a JWE to the session's TEE key. The
//! token is reused until its `exp`; a 401 on a reused session runs the handshake again
//! and retries once (the reference client retries up to 3 times on every 401, which for a
//! policy denial or a missing resource only repeats the attestation). A 401 on a fresh
//! session, a 404 and every other refusal end the request with the KBS's error type and
//! detail in the message.
//!
//! HTTPS with the system roots plus an optional CA bundle; plain HTTP only when the
//! configuration allows it. The token and the session are never logged.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use kbs_types::{
    Attestation, Challenge, CompositeEvidence, ErrorInformation, Request, RuntimeData,
};
use openssl::hash::{hash, MessageDigest};
use serde_json::{json, Value};
use thiserror::Error;

use super::attester::{Attester, AttesterError};
use super::jcs;
use super::tee_key::{TeeKey, TeeKeyError, TeeKeyType};
use crate::kek::Kid;
use crate::secret::SecretBytes;
use veil_blob::display::error_chain;

/// The protocol version the KBS (trustee ≥ v0.14) accepts, and only this one.
pub const KBS_PROTOCOL_VERSION: &str = "0.4.0";
/// Path prefix of the KBS API.
pub const KBS_PREFIX: &str = "/kbs/v0";
/// The session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Default request timeout (the reference client's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// `extra-params` key listing the hashes the client can bind with.
const SUPPORTED_HASHES_KEY: &str = "supported-hash-algorithms";
/// Challenge `extra-params` key selecting one.
const SELECTED_HASH_KEY: &str = "selected-hash-algorithm";
/// Largest KBS answer read (JSON error bodies, challenges, tokens, JWEs).
const MAX_BODY: usize = 1 << 20;

/// How to reach a KBS.
#[derive(Clone)]
pub struct KbsClientConfig {
    /// Base URL, e.g. `https://kbs.example:8080` (the `/kbs/v0` prefix is added).
    pub url: String,
    /// Extra trusted root certificates (a PEM bundle), besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Allow `http://` URLs (tests, loopback). Off by default.
    pub allow_plain_http: bool,
    /// Timeout of each request.
    pub timeout: Duration,
    /// The kind of TEE key generated for each session.
    pub tee_key_type: TeeKeyType,
}

impl fmt::Debug for KbsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KbsClientConfig")
            .field("url", &self.url)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("allow_plain_http", &self.allow_plain_http)
            .field("timeout", &self.timeout)
            .field("tee_key_type", &self.tee_key_type)
            .finish()
    }
}

impl KbsClientConfig {
    /// HTTPS to `url` with the system roots, the default timeout and an EC P-256 key.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_pem: None,
            allow_plain_http: false,
            timeout: DEFAULT_TIMEOUT,
            tee_key_type: TeeKeyType::default(),
        }
    }
}

/// What a KBS said when it refused a request (kbs-types `ErrorInformation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsRefusal {
    /// HTTP status (401 for nearly everything, 404 for an unknown plugin or path).
    pub status: u16,
    /// The error type URI, e.g. `https://github.com/confidential-containers/kbs/errors/PolicyDeny`,
    /// when the body was an ErrorInformation.
    pub error_type: Option<String>,
    /// The `detail`, or the start of a body that was not an ErrorInformation.
    pub detail: String,
}

impl KbsRefusal {
    /// The last segment of the error type (`PolicyDeny`, `TokenNotFound`, ...).
    pub fn kind(&self) -> Option<&str> {
        self.error_type
            .as_deref()
            .map(|t| t.rsplit('/').next().unwrap_or(t))
    }
}

impl fmt::Display for KbsRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        match self.kind() {
            Some(kind) if self.detail.is_empty() => write!(f, ", KBS error {kind}"),
            Some(kind) => write!(f, ", KBS error {kind}: {}", self.detail),
            None if self.detail.is_empty() => Ok(()),
            None => write!(f, ": {}", self.detail),
        }
    }
}

/// A KBS request that failed. Holds no key, token or resource bytes.
#[derive(Debug, Error)]
pub enum KbsError {
    /// The client configuration cannot be used.
    #[error("KBS client configuration: {0}")]
    Config(String),
    /// The KBS could not be reached or the exchange broke off.
    #[error("{step} {url}: {detail}")]
    Transport {
        /// `auth`, `attest` or `resource`.
        step: &'static str,
        /// The URL.
        url: String,
        /// What went wrong (the error chain).
        detail: String,
    },
    /// The KBS refused a request.
    #[error("KBS refused {step} {url}: {refusal}")]
    Refused {
        /// `auth`, `attest` or `resource`.
        step: &'static str,
        /// The URL.
        url: String,
        /// What the KBS answered.
        refusal: KbsRefusal,
    },
    /// The KBS answered something that is not the protocol.
    #[error("KBS protocol error at {step}: {detail}")]
    Protocol {
        /// `auth`, `attest` or `resource`.
        step: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The attester could not produce evidence.
    #[error("attestation evidence: {0}")]
    Attester(#[from] AttesterError),
    /// The TEE key failed, or the answer did not decrypt.
    #[error(transparent)]
    TeeKey(#[from] TeeKeyError),
}

impl KbsError {
    /// The KBS's refusal, if this is one.
    pub fn refusal(&self) -> Option<&KbsRefusal> {
        match self {
            KbsError::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}

/// An attested session: the cookie, the token and the TEE key its evidence binds.
struct Session {
    cookie: Option<String>,
    token: String,
    exp: Option<u64>,
    key: TeeKey,
}

impl Session {
    fn expired(&self) -> bool {
        match self.exp {
            Some(exp) => now_secs() >= exp,
            None => false,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A KBS client: one attested session at a time, shared by every request.
pub struct KbsClient {
    base: String,
    http: reqwest::Client,
    attester: Arc<dyn Attester>,
    key_type: TeeKeyType,
    session: tokio::sync::Mutex<Option<Session>>,
    attestations: AtomicU64,
}

impl fmt::Debug for KbsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KbsClient")
            .field("url", &self.base)
            .field("attester", &self.attester)
            .field("key_type", &self.key_type)
            .field("attestations", &self.attestations.load(Ordering::Relaxed))
            .finish()
    }
}

/// The hash that binds the runtime data, as the challenge selects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BindingHash {
    Sha256,
    Sha384,
    Sha512,
}

impl BindingHash {
    fn from_challenge(extra: &Value) -> Result<Self, KbsError> {
        let Some(selected) = extra.get(SELECTED_HASH_KEY) else {
            return Ok(Self::Sha384);
        };
        match selected.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("sha256") => Ok(Self::Sha256),
            Some("sha384") => Ok(Self::Sha384),
            Some("sha512") => Ok(Self::Sha512),
            _ => Err(KbsError::Protocol {
                step: "auth",
                detail: format!("the challenge selects an unsupported hash {selected}"),
            }),
        }
    }

    fn digest(self, bytes: &[u8]) -> Vec<u8> {
        let md = match self {
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha384 => MessageDigest::sha384(),
            Self::Sha512 => MessageDigest::sha512(),
        };
        hash(md, bytes).map(|d| d.to_vec()).unwrap_or_default()
    }
}

/// `report_data` for a session: the hash of the canonical JSON of the runtime data with
/// an empty `additional-evidence` (PROTOCOLS.md §4.4), SHA-384 unless the challenge says
/// otherwise.
pub fn runtime_data_digest(
    nonce: &str,
    tee_pubkey: &kbs_types::TeePubKey,
    challenge_extra: &Value,
) -> Result<Vec<u8>, KbsError> {
    let algorithm = BindingHash::from_challenge(challenge_extra)?;
    let pubkey = serde_json::to_value(tee_pubkey).map_err(|e| KbsError::Protocol {
        step: "attest",
        detail: format!("tee-pubkey: {e}"),
    })?;
    let binding = json!({"tee-pubkey": pubkey, "nonce": nonce, "additional-evidence": ""});
    Ok(algorithm.digest(&jcs::to_vec(&binding)))
}

/// The `exp` claim of a JWT (not verified: the client cannot check the AS's signature;
/// it only needs to know when to attest again).
fn jwt_exp(token: &str) -> Option<u64> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&LENIENT.decode(payload).ok()?).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64))
}

/// The `kbs-session-id` value of the response's `Set-Cookie` headers.
fn session_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_string())
}

/// Sends a request, once more if the first attempt broke off without an answer (a pooled
/// connection the KBS had closed, e.g. across a KBS restart). Every KBS request may be
/// repeated: GETs are reads, a repeated `auth` only opens another session, a repeated
/// `attest` of an attested session returns its token. Timeouts are not repeated.
async fn send(
    step: &'static str,
    url: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, KbsError> {
    match build().send().await {
        Ok(response) => Ok(response),
        Err(e) if !e.is_timeout() && !e.is_connect() => {
            tracing::debug!(url, error = %error_chain(&e), "KBS request broke off; sending it again");
            build().send().await.map_err(|e| KbsError::Transport {
                step,
                url: url.to_string(),
                detail: error_chain(&e),
            })
        }
        Err(e) => Err(KbsError::Transport {
            step,
            url: url.to_string(),
            detail: error_chain(&e),
        }),
    }
}

/// Reads a body of at most [`MAX_BODY`] bytes.
async fn read_body(
    step: &'static str,
    url: &str,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, KbsError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(KbsError::Protocol {
                        step,
                        detail: format!("an answer larger than {MAX_BODY} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(KbsError::Transport {
                    step,
                    url: url.to_string(),
                    detail: format!("reading the answer: {}", error_chain(&e)),
                })
            }
        }
    }
}

/// A non-200 answer as a refusal.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> KbsRefusal {
    KbsRefusal::from_answer(status.as_u16(), body)
}

impl KbsRefusal {
    /// A non-200 answer with HTTP `status` and `body`: the KBS's ErrorInformation if the
    /// body is one, else the start of the body as the detail.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorInformation>(body) {
            Ok(info) => KbsRefusal {
                status,
                error_type: Some(info.error_type),
                detail: info.detail,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                KbsRefusal {
                    status,
                    error_type: None,
                    detail: text.trim().to_string(),
                }
            }
        }
    }
}

/// The challenge of the KBS's `auth` answer.
pub fn parse_challenge(body: &[u8]) -> Result<Challenge, KbsError> {
    serde_json::from_slice(body).map_err(|e| KbsError::Protocol {
        step: "auth",
        detail: format!("the challenge is not JSON of the expected shape ({e})"),
    })
}

/// The token of the KBS's `attest` answer (`{"token": JWT}`), and the JWT's `exp` claim
/// when it has one.
pub fn parse_token_answer(body: &[u8]) -> Result<(String, Option<u64>), KbsError> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: String,
    }
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|e| KbsError::Protocol {
        step: "attest",
        detail: format!("the answer is not {{\"token\": ...}} ({e})"),
    })?;
    let exp = jwt_exp(&answer.token);
    Ok((answer.token, exp))
}

impl KbsClient {
    /// A client of the KBS in `config`, attesting with `attester`. Nothing is sent yet.
    pub fn new(config: &KbsClientConfig, attester: Arc<dyn Attester>) -> Result<Self, KbsError> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| KbsError::Config(format!("KBS URL {:?}: {e}", config.url)))?;
        match url.scheme() {
            "https" => {}
            "http" if config.allow_plain_http => {}
            "http" => {
                return Err(KbsError::Config(format!(
                "KBS URL {} is plain HTTP; use https, or allow plain HTTP explicitly (tests only)",
                config.url
            )))
            }
            other => {
                return Err(KbsError::Config(format!(
                    "KBS URL {}: scheme {other:?} is not http(s)",
                    config.url
                )))
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(KbsError::Config(format!(
                "KBS URL {} has a query or fragment",
                config.url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .https_only(!config.allow_plain_http);
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| KbsError::Config(format!("KBS CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(KbsError::Config(
                    "KBS CA bundle holds no certificate".into(),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| KbsError::Config(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self {
            base: config.url.trim_end_matches('/').to_string(),
            http,
            attester,
            key_type: config.tee_key_type,
            session: tokio::sync::Mutex::new(None),
            attestations: AtomicU64::new(0),
        })
    }

    /// The KBS base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// How many attestations (RCAR handshakes) this client completed.
    pub fn attestation_count(&self) -> u64 {
        self.attestations.load(Ordering::Relaxed)
    }

    /// Drops the current session (the next request attests again).
    pub async fn forget_session(&self) {
        *self.session.lock().await = None;
    }

    /// The URL of a resource of the kid's plugin.
    pub fn resource_url(&self, kid: &Kid) -> String {
        let mut url = format!(
            "{}{KBS_PREFIX}/{}/{}",
            self.base,
            kid.plugin,
            kid.path.join("/")
        );
        if let Some(query) = &kid.query {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// Fetches and decrypts the resource `kid` names, attesting first when there is no
    /// session or its token has expired.
    pub async fn get_resource(&self, kid: &Kid) -> Result<SecretBytes, KbsError> {
        super::metrics::timed("resource", self.fetch_resource(kid)).await
    }

    /// [`Self::get_resource`], unrecorded.
    async fn fetch_resource(&self, kid: &Kid) -> Result<SecretBytes, KbsError> {
        let url = self.resource_url(kid);
        let mut session = self.session.lock().await;
        let mut fresh = false;
        if session.as_ref().is_none_or(Session::expired) {
            *session = None;
            *session = Some(super::metrics::timed("attestation", self.handshake()).await?);
            fresh = true;
        }
        loop {
            let current = session.as_ref().expect("a session was just set");
            let response = send("resource", &url, || {
                let request = self.http.get(&url).bearer_auth(&current.token);
                match &current.cookie {
                    Some(cookie) => request.header(
                        reqwest::header::COOKIE,
                        format!("{SESSION_COOKIE}={cookie}"),
                    ),
                    None => request,
                }
            })
            .await?;
            let status = response.status();
            let body = read_body("resource", &url, response).await?;
            if status == reqwest::StatusCode::OK {
                return Ok(current.key.decrypt_response(&body)?);
            }
            let refused = refusal(status, &body);
            if status == reqwest::StatusCode::UNAUTHORIZED && !fresh {
                tracing::info!(url, answer = %refused, "the KBS refused the session; attesting again");
                *session = None;
                *session = Some(super::metrics::timed("attestation", self.handshake()).await?);
                fresh = true;
                continue;
            }
            return Err(KbsError::Refused {
                step: "resource",
                url,
                refusal: refused,
            });
        }
    }

    /// One RCAR handshake: auth, evidence, attest.
    async fn handshake(&self) -> Result<Session, KbsError> {
        let tee = self.attester.tee();
        let auth_url = format!("{}{KBS_PREFIX}/auth", self.base);
        let request = Request {
            version: KBS_PROTOCOL_VERSION.to_string(),
            tee,
            extra_params: json!({SUPPORTED_HASHES_KEY: ["sha256", "sha384", "sha512"]}),
        };
        let (headers, body) = self.post("auth", &auth_url, &request, None).await?;
        let mut cookie = session_cookie(&headers);
        let challenge = parse_challenge(&body)?;
        if cookie.is_none() {
            return Err(KbsError::Protocol {
                step: "auth",
                detail: format!("no {SESSION_COOKIE} cookie in the answer"),
            });
        }

        let key_type = self.key_type;
        let key = tokio::task::spawn_blocking(move || TeeKey::generate(key_type))
            .await
            .map_err(|e| KbsError::Config(format!("key generation task: {e}")))??;
        let report_data =
            runtime_data_digest(&challenge.nonce, key.public(), &challenge.extra_params)?;
        let attester = self.attester.clone();
        let primary_evidence = tokio::task::spawn_blocking(move || attester.evidence(&report_data))
            .await
            .map_err(|e| KbsError::Config(format!("attester task: {e}")))??;
        let attestation = Attestation {
            init_data: None,
            runtime_data: RuntimeData {
                nonce: challenge.nonce,
                tee_pubkey: key.public().clone(),
            },
            tee_evidence: CompositeEvidence {
                primary_evidence,
                additional_evidence: String::new(),
            },
        };
        let attest_url = format!("{}{KBS_PREFIX}/attest", self.base);
        let (headers, body) = self
            .post("attest", &attest_url, &attestation, cookie.as_deref())
            .await?;
        if let Some(renewed) = session_cookie(&headers) {
            cookie = Some(renewed);
        }
        let (token, exp) = parse_token_answer(&body)?;
        let count = self.attestations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(kbs = %self.base, tee = %tee, attestations = count, token_exp = ?exp, "attested to the KBS");
        Ok(Session {
            cookie,
            token,
            exp,
            key,
        })
    }

    /// POSTs `body` as JSON; the headers and body of a 200 answer, else a refusal.
    async fn post<T: serde::Serialize>(
        &self,
        step: &'static str,
        url: &str,
        body: &T,
        cookie: Option<&str>,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), KbsError> {
        let json = serde_json::to_vec(body).map_err(|e| KbsError::Protocol {
            step,
            detail: format!("cannot serialize the request: {e}"),
        })?;
        let response = send(step, url, || {
            let request = self
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json.clone());
            match cookie {
                Some(cookie) => request.header(
                    reqwest::header::COOKIE,
                    format!("{SESSION_COOKIE}={cookie}"),
                ),
                None => request,
            }
        })
        .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_body(step, url, response).await?;
        if status != reqwest::StatusCode::OK {
            return Err(KbsError::Refused {
                step,
                url: url.to_string(),
                refusal: refusal(status, &body),
            });
        }
        Ok((headers, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kbs::attester::SampleAttester;

    #[test]
    fn runtime_data_binding() {
        let key = kbs_types::TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "X".into(),
            y: "Y".into(),
        };
        let digest = runtime_data_digest("N", &key, &Value::String(String::new())).unwrap();
        let expected = hash(
            MessageDigest::sha384(),
            br#"{"additional-evidence":"","nonce":"N","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X","y":"Y"}}"#,
        )
        .unwrap();
        assert_eq!(digest, expected.to_vec());
        let sha512 =
            runtime_data_digest("N", &key, &json!({"selected-hash-algorithm": "SHA512"})).unwrap();
        assert_eq!(sha512.len(), 64);
        assert!(
            runtime_data_digest("N", &key, &json!({"selected-hash-algorithm": "sm3"})).is_err()
        );
    }

    #[test]
    fn tokens_cookies_refusals() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp":1700000000,"iat":1}"#);
        assert_eq!(
            jwt_exp(&format!("eyJhbGciOiJFUzI1NiJ9.{payload}.sig")),
            Some(1_700_000_000)
        );
        assert_eq!(jwt_exp("not-a-jwt"), None);

        let mut headers = reqwest::header::HeaderMap::new();
        headers.append(
            reqwest::header::SET_COOKIE,
            "other=1; Path=/".parse().unwrap(),
        );
        headers.append(
            reqwest::header::SET_COOKIE,
            "kbs-session-id=0123abcd; Expires=Wed, 21 Oct 2026 07:28:00 GMT"
                .parse()
                .unwrap(),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("0123abcd"));

        let r = refusal(
            reqwest::StatusCode::UNAUTHORIZED,
            br#"{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Access denied by policy"}"#,
        );
        assert_eq!(r.kind(), Some("PolicyDeny"));
        assert_eq!(
            r.to_string(),
            "HTTP 401, KBS error PolicyDeny: Access denied by policy"
        );
        let r = refusal(reqwest::StatusCode::BAD_GATEWAY, b"<html>proxy</html>");
        assert_eq!(r.to_string(), "HTTP 502: <html>proxy</html>");
    }

    #[test]
    fn plain_http_needs_consent() {
        let attester: Arc<dyn Attester> = Arc::new(SampleAttester);
        let err = KbsClient::new(
            &KbsClientConfig::new("http://127.0.0.1:8080"),
            attester.clone(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("plain HTTP"), "{err}");
        let mut config = KbsClientConfig::new("http://127.0.0.1:8080/");
        config.allow_plain_http = true;
        let client = KbsClient::new(&config, attester.clone()).unwrap();
        let kid = Kid::parse("kbs:///default/image_key/nginx").unwrap();
        assert_eq!(
            client.resource_url(&kid),
            "http://127.0.0.1:8080/kbs/v0/resource/default/image_key/nginx"
        );
        let mut config = KbsClientConfig::new("https://kbs");
        config.ca_pem = Some(b"not pem".to_vec());
        assert!(KbsClient::new(&config, attester).is_err());
    }
}
