//! A small test KBS that speaks the Trustee KBS protocol (RCAR 0.4.0) the way trustee's
//! `kbs` does (PROTOCOLS.md §4), with the built-in `sample` verifier and resources served
//! from a directory. No KBS is packaged for Debian; this one stands in for it in tests.
//!
//! What it does as the real one does:
//! - `POST /kbs/v0/auth`: a `kbs-types` `Request`; the version must be exactly `0.4.0`;
//!   answers a `Challenge` (`nonce`: base64 of 32 random bytes, `extra-params`: `""`) and
//!   `Set-Cookie: kbs-session-id=<32 hex>; Expires=...`;
//! - `POST /kbs/v0/attest`: needs the cookie of an unexpired session; an attested session
//!   gets its token again; the nonce must be the session's; the `sample` evidence's
//!   `report_data` must equal SHA-384 of the RFC 8785 JSON of
//!   `{"additional-evidence","nonce","tee-pubkey"}`; answers `{"token": <JWT>}` (ES256,
//!   EAR-like claims, the TEE public key under `customized_claims.runtime_data`);
//! - `GET /kbs/v0/resource/<repo>/<type>/<tag>`: the token from the session cookie, else
//!   from `Authorization: Bearer`; token signature and `exp` checked; the policy; the
//!   resource path (`^[A-Za-z0-9_-]+[A-Za-z0-9_.-]*$`, three segments); the file
//!   `<dir>/<repo>/<type>/<tag>`; the answer a flattened JWE (A256GCM, the CEK for the
//!   TEE key by `ECDH-ES+A256KW` on P-256 or `RSA-OAEP-256`), made here with OpenSSL
//!   primitives independently of the client's josekit;
//! - `POST /kbs/v0/resource/...`: stores a resource (admin, like `InsecureAllowAll`);
//! - errors: `{"type":"https://github.com/confidential-containers/kbs/errors/<X>",
//!   "detail":...}`, 404 for `PluginNotFound` / `InvalidRequestPath`, 401 for everything
//!   else (a missing resource is a 401 `PluginInternalError`);
//! - `GET /metrics`: Prometheus counters with trustee's names (`kbs_auth_requests_total`,
//!   `kbs_attestation_successes_total{tee_type=..}`, `kbs_resource_reads_total{resource_path=..}`...).
//!
//! Only the `sample` TEE is verified (other TEEs are refused at attest). Policies:
//! `allow-all` (trustee's `allow_all.rego`, what tests upload) or `deny-sample` (the
//! default policy, which refuses sample evidence).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use kbs_types::{
    Attestation, Challenge, ErrorInformation, ProtectedHeader, Request, Tee, TeePubKey,
};
use serde_json::{json, Value};

/// The protocol version the KBS accepts.
pub const PROTOCOL_VERSION: &str = "0.4.0";
const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors";
const SESSION_COOKIE: &str = "kbs-session-id";

/// Which resource policy the KBS enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `allow if { plugin == "resource" }` (trustee's allow_all.rego).
    AllowAll,
    /// Trustee's default policy: resource plugin only, and never for `sample` evidence.
    DenySample,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow-all" => Ok(Self::AllowAll),
            "deny-sample" => Ok(Self::DenySample),
            other => Err(format!("unknown policy {other:?} (allow-all, deny-sample)")),
        }
    }
}

/// How the test KBS behaves.
#[derive(Clone, Debug)]
pub struct KbsServerConfig {
    /// Resources: `<dir>/<repo>/<type>/<tag>`.
    pub resources: PathBuf,
    /// Session (cookie) lifetime; trustee's default is 5 minutes.
    pub session_timeout: Duration,
    /// Token lifetime (`exp - iat`); trustee's default is 5 minutes.
    pub token_lifetime: Duration,
    /// The resource policy.
    pub policy: Policy,
}

impl KbsServerConfig {
    /// Defaults as trustee's, resources from `dir`, the allow-all policy.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            resources: dir.into(),
            session_timeout: Duration::from_secs(300),
            token_lifetime: Duration::from_secs(300),
            policy: Policy::AllowAll,
        }
    }
}

enum SessionStatus {
    Authed { tee: Tee, nonce: String },
    Attested { token: String },
}

struct Session {
    status: SessionStatus,
    expires: SystemTime,
}

#[derive(Default)]
struct Metrics {
    counters: BTreeMap<String, u64>,
}

impl Metrics {
    fn inc(&mut self, name: &str) {
        *self.counters.entry(name.to_string()).or_default() += 1;
    }
}

struct KbsState {
    config: KbsServerConfig,
    sessions: Mutex<HashMap<String, Session>>,
    /// The token signing key (ES256), fresh per process like an AS without a configured key.
    signing_key: Vec<u8>,
    verifying_key: Vec<u8>,
    metrics: Mutex<Metrics>,
}

/// A KBS error as trustee's `Error` enum renders it.
struct KbsError {
    variant: &'static str,
    detail: String,
    /// The cause (logged, as trustee logs it; not sent).
    cause: String,
}

impl KbsError {
    fn new(variant: &'static str, detail: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            variant,
            detail: detail.into(),
            cause: cause.into(),
        }
    }

    fn response(&self) -> Response {
        eprintln!(
            "test-kbs: error {}: {} ({})",
            self.variant, self.detail, self.cause
        );
        let info = ErrorInformation {
            error_type: format!("{ERROR_TYPE_PREFIX}/{}", self.variant),
            detail: self.detail.clone(),
        };
        let status = match self.variant {
            "InvalidRequestPath" | "PluginNotFound" => StatusCode::NOT_FOUND,
            _ => StatusCode::UNAUTHORIZED,
        };
        Response::builder()
            .status(status)
            .body(Body::from(
                serde_json::to_string(&info).expect("error info serializes"),
            ))
            .expect("a response")
    }
}

fn auth_failed(reason: impl Into<String>) -> KbsError {
    let reason = reason.into();
    KbsError::new(
        "AttestationError",
        format!("Attestation error: RCAR handshake Auth failed: {reason}"),
        reason,
    )
}

fn attest_failed(cause: impl Into<String>) -> KbsError {
    KbsError::new(
        "AttestationError",
        "Attestation error: RCAR handshake Attest failed",
        cause,
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 7231 IMF-fixdate, e.g. `Wed, 21 Oct 2026 07:28:00 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// RFC 8785 canonical JSON (object keys sorted by UTF-16 units, compact), written here
/// independently of the client's.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            let members: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

fn valid_segment(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if ok(c)) && chars.all(|c| ok(c) || c == '.')
}

fn json_response(body: String, cookie: Option<String>) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        builder = builder.header(header::SET_COOKIE, cookie);
    }
    builder.body(Body::from(body)).expect("a response")
}

impl KbsState {
    fn new(config: KbsServerConfig) -> anyhow::Result<Self> {
        let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)?;
        let key = openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group)?)?;
        Ok(Self {
            config,
            sessions: Mutex::new(HashMap::new()),
            signing_key: key.private_key_to_pkcs8()?,
            verifying_key: key.public_key_to_der()?,
            metrics: Mutex::new(Metrics::default()),
        })
    }

    fn inc(&self, name: &str) {
        self.metrics.lock().expect("metrics lock").inc(name);
    }

    fn cookie(id: &str, expires: SystemTime) -> String {
        format!("{SESSION_COOKIE}={id}; Expires={}", http_date(expires))
    }

    fn auth(&self, body: &[u8]) -> Result<Response, KbsError> {
        self.inc("kbs_auth_requests_total");
        let result = (|| {
            let request: Request =
                serde_json::from_slice(body).map_err(|_| auth_failed("deserialize Request"))?;
            if request.version != PROTOCOL_VERSION {
                return Err(auth_failed(format!(
                    "KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {}",
                    request.version
                )));
            }
            let mut nonce = [0u8; 32];
            openssl::rand::rand_bytes(&mut nonce).map_err(|e| auth_failed(e.to_string()))?;
            let challenge = Challenge {
                nonce: STANDARD.encode(nonce),
                extra_params: Value::String(String::new()),
            };
            let mut id = [0u8; 16];
            openssl::rand::rand_bytes(&mut id).map_err(|e| auth_failed(e.to_string()))?;
            let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let expires = SystemTime::now() + self.config.session_timeout;
            self.sessions.lock().expect("sessions lock").insert(
                id.clone(),
                Session {
                    status: SessionStatus::Authed {
                        tee: request.tee,
                        nonce: challenge.nonce.clone(),
                    },
                    expires,
                },
            );
            Ok(json_response(
                serde_json::to_string(&challenge).expect("challenge serializes"),
                Some(Self::cookie(&id, expires)),
            ))
        })();
        match &result {
            Ok(_) => self.inc("kbs_auth_successes_total"),
            Err(_) => self.inc("kbs_auth_errors_total"),
        }
        result
    }

    fn attest(&self, body: &[u8], headers: &HeaderMap) -> Result<Response, KbsError> {
        self.inc("kbs_attestation_requests_total");
        let Some(id) = session_id(headers) else {
            self.inc("kbs_attestation_errors_total");
            return Err(attest_failed("cookie not found"));
        };
        let attestation: Attestation = serde_json::from_slice(body).map_err(|e| {
            self.inc("kbs_attestation_errors_total");
            attest_failed(format!("deserialize Attestation: {e}"))
        })?;
        let (tee, nonce, expires) = {
            let sessions = self.sessions.lock().expect("sessions lock");
            let Some(session) = sessions.get(&id) else {
                self.inc("kbs_attestation_errors_total");
                return Err(attest_failed("No cookie found"));
            };
            if session.expires < SystemTime::now() {
                return Err(attest_failed("session expired."));
            }
            match &session.status {
                SessionStatus::Attested { token } => {
                    return Ok(json_response(
                        json!({"token": token}).to_string(),
                        Some(Self::cookie(&id, session.expires)),
                    ))
                }
                SessionStatus::Authed { tee, nonce } => (*tee, nonce.clone(), session.expires),
            }
        };
        if nonce != attestation.runtime_data.nonce {
            return Err(attest_failed("the nonce in the handshake session is different from the client side in KBS protocol's Attestation message"));
        }
        let tee_label = serde_json::to_value(tee)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let claims = match self.verify_evidence(tee, &nonce, &attestation) {
            Ok(claims) => claims,
            Err(cause) => {
                self.inc(&format!(
                    "kbs_attestation_failures_total{{tee_type=\"{tee_label}\"}}"
                ));
                return Err(attest_failed(format!(
                    "verify TEE evidence failed: {cause}"
                )));
            }
        };
        let token = self
            .issue_token(&tee_label, claims, &attestation)
            .map_err(|e| attest_failed(format!("token: {e}")))?;
        self.inc(&format!(
            "kbs_attestation_successes_total{{tee_type=\"{tee_label}\"}}"
        ));
        if let Some(session) = self.sessions.lock().expect("sessions lock").get_mut(&id) {
            session.status = SessionStatus::Attested {
                token: token.clone(),
            };
        }
        Ok(json_response(
            json!({"token": token}).to_string(),
            Some(Self::cookie(&id, expires)),
        ))
    }

    /// The sample verifier: `report_data` must be the hash of the canonical runtime data.
    fn verify_evidence(
        &self,
        tee: Tee,
        nonce: &str,
        attestation: &Attestation,
    ) -> Result<Value, String> {
        if tee != Tee::Sample {
            return Err(format!(
                "the test KBS verifies the sample TEE only, not {tee:?}"
            ));
        }
        let pubkey = serde_json::to_value(&attestation.runtime_data.tee_pubkey)
            .map_err(|e| e.to_string())?;
        let runtime = json!({
            "tee-pubkey": pubkey,
            "nonce": nonce,
            "additional-evidence": attestation.tee_evidence.additional_evidence,
        });
        let expected = openssl::sha::sha384(canonical_json(&runtime).as_bytes());
        let evidence = &attestation.tee_evidence.primary_evidence;
        let report_data = evidence
            .get("report_data")
            .and_then(Value::as_str)
            .ok_or("sample evidence without a report_data string")?;
        let svn = evidence
            .get("svn")
            .and_then(Value::as_str)
            .ok_or("sample evidence without an svn string")?;
        let given = STANDARD
            .decode(report_data)
            .map_err(|e| format!("report_data is not base64: {e}"))?;
        if given != expected {
            return Err("sample evidence report data mismatch".into());
        }
        Ok(json!({
            "svn": svn,
            "report_data": report_data,
            "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4},
            "debug": false,
        }))
    }

    fn issue_token(
        &self,
        tee: &str,
        claims: Value,
        attestation: &Attestation,
    ) -> anyhow::Result<String> {
        let iat = now_secs();
        let payload = json!({
            "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
            "iat": iat,
            "exp": iat + self.config.token_lifetime.as_secs(),
            "iss": "veil-test-kbs",
            "submods": {"cpu0": {
                "ear.status": "affirming",
                "ear.veraison.annotated-evidence": {tee: claims},
            }},
            "customized_claims": {"runtime_data": {
                "nonce": attestation.runtime_data.nonce,
                "tee-pubkey": attestation.runtime_data.tee_pubkey,
            }},
        });
        let mut header = josekit::jws::JwsHeader::new();
        header.set_token_type("JWT");
        let payload =
            josekit::jwt::JwtPayload::from_map(payload.as_object().expect("an object").clone())?;
        let signer = josekit::jws::ES256.signer_from_der(&self.signing_key)?;
        Ok(josekit::jwt::encode_with_signer(
            &payload, &header, &signer,
        )?)
    }

    /// The token of the request: the session's if the cookie names an attested, live
    /// session; else the bearer token.
    fn request_token(&self, headers: &HeaderMap) -> Result<String, KbsError> {
        if let Some(id) = session_id(headers) {
            let sessions = self.sessions.lock().expect("sessions lock");
            if let Some(Session {
                status: SessionStatus::Attested { token },
                expires,
            }) = sessions.get(&id)
            {
                if *expires >= SystemTime::now() {
                    return Ok(token.clone());
                }
            }
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string())
            .ok_or_else(|| {
                KbsError::new(
                    "TokenNotFound",
                    "Attestation Token not found",
                    "no session, no bearer token",
                )
            })
    }

    fn verify_token(&self, token: &str) -> Result<Value, KbsError> {
        let fail =
            |cause: String| KbsError::new("TokenVerifierError", "Token Verifier error", cause);
        let verifier = josekit::jws::ES256
            .verifier_from_der(&self.verifying_key)
            .map_err(|e| fail(e.to_string()))?;
        let (payload, _) = josekit::jwt::decode_with_verifier(token, &verifier)
            .map_err(|e| fail(e.to_string()))?;
        let claims = Value::Object(payload.claims_set().clone());
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if exp <= now_secs() {
            return Err(fail("token expired".into()));
        }
        Ok(claims)
    }

    fn resource(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, KbsError> {
        let internal =
            |cause: String| KbsError::new("PluginInternalError", "Plugin internal error", cause);
        let desc = path.strip_prefix('/').unwrap_or(path);
        let segments: Vec<&str> = desc.split('/').collect();
        let valid = segments.len() == 3 && segments.iter().all(|s| valid_segment(s));
        if method == Method::POST {
            // Admin write (InsecureAllowAll).
            if !valid {
                return Err(internal("illegal ResourceDesc format.".into()));
            }
            self.inc(&format!(
                "kbs_resource_writes_total{{resource_path=\"{desc}\"}}"
            ));
            let file = self.config.resources.join(desc);
            std::fs::create_dir_all(file.parent().expect("a parent"))
                .and_then(|_| std::fs::write(&file, body))
                .map_err(|e| internal(e.to_string()))?;
            return Ok(Response::new(Body::empty()));
        }
        let token = self.request_token(headers)?;
        let claims = self.verify_token(&token)?;
        self.inc("kbs_policy_evaluations_total");
        let is_sample = claims
            .pointer("/submods/cpu0/ear.veraison.annotated-evidence/sample")
            .is_some();
        if self.config.policy == Policy::DenySample && is_sample {
            self.inc("kbs_policy_violations_total");
            return Err(KbsError::new(
                "PolicyDeny",
                "Access denied by policy",
                "sample claims",
            ));
        }
        self.inc("kbs_policy_approvals_total");
        if !valid {
            return Err(internal("illegal ResourceDesc format.".into()));
        }
        self.inc(&format!(
            "kbs_resource_reads_total{{resource_path=\"{desc}\"}}"
        ));
        let data = std::fs::read(self.config.resources.join(desc))
            .map_err(|e| internal(format!("read resource {desc}: {e}")))?;
        let pubkey: TeePubKey = claims
            .pointer("/customized_claims/runtime_data/tee-pubkey")
            .cloned()
            .ok_or_else(|| {
                KbsError::new(
                    "AttestationError",
                    "Attestation error: Failed to extract Tee public key from claims",
                    "no tee-pubkey",
                )
            })
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| {
                    KbsError::new(
                        "AttestationError",
                        "Attestation error: Failed to extract Tee public key from claims",
                        e.to_string(),
                    )
                })
            })?;
        let jwe = jwe(&pubkey, &data)
            .map_err(|e| KbsError::new("JweError", "JWE failed", e.to_string()))?;
        Ok(json_response(jwe, None))
    }

    fn metrics(&self) -> String {
        let metrics = self.metrics.lock().expect("metrics lock");
        let mut out = String::new();
        for (name, value) in &metrics.counters {
            out.push_str(&format!("{name} {value}\n"));
        }
        out
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Trustee's JWE answer (kbs-types `Response`), with OpenSSL primitives.
fn jwe(key: &TeePubKey, payload: &[u8]) -> anyhow::Result<String> {
    use openssl::symm::{encrypt_aead, Cipher};
    let mut cek = [0u8; 32];
    openssl::rand::rand_bytes(&mut cek)?;
    let (protected, encrypted_key) = match key {
        TeePubKey::EC { crv, alg, x, y } if crv == "P-256" && alg == "ECDH-ES+A256KW" => {
            let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)?;
            let x = openssl::bn::BigNum::from_slice(&URL_SAFE_NO_PAD.decode(x)?)?;
            let y = openssl::bn::BigNum::from_slice(&URL_SAFE_NO_PAD.decode(y)?)?;
            let peer = openssl::pkey::PKey::from_ec_key(
                openssl::ec::EcKey::from_public_key_affine_coordinates(&group, &x, &y)?,
            )?;
            let ephemeral = openssl::ec::EcKey::generate(&group)?;
            let mut ctx = openssl::bn::BigNumContext::new()?;
            let (mut ex, mut ey) = (openssl::bn::BigNum::new()?, openssl::bn::BigNum::new()?);
            ephemeral
                .public_key()
                .affine_coordinates(&group, &mut ex, &mut ey, &mut ctx)?;
            let ephemeral = openssl::pkey::PKey::from_ec_key(ephemeral)?;
            let mut deriver = openssl::derive::Deriver::new(&ephemeral)?;
            deriver.set_peer(&peer)?;
            let z = deriver.derive_to_vec()?;
            // Concat KDF (SHA-256, one round): counter || Z || len(alg) || alg || apu || apv || 256.
            let alg_name = b"ECDH-ES+A256KW";
            let mut kdf_input = Vec::new();
            kdf_input.extend_from_slice(&1u32.to_be_bytes());
            kdf_input.extend_from_slice(&z);
            kdf_input.extend_from_slice(&(alg_name.len() as u32).to_be_bytes());
            kdf_input.extend_from_slice(alg_name);
            kdf_input.extend_from_slice(&0u32.to_be_bytes());
            kdf_input.extend_from_slice(&0u32.to_be_bytes());
            kdf_input.extend_from_slice(&256u32.to_be_bytes());
            let kek = openssl::sha::sha256(&kdf_input);
            let wrap_key = openssl::aes::AesKey::new_encrypt(&kek)
                .map_err(|_| anyhow::anyhow!("bad AES KW key"))?;
            let mut wrapped = vec![0u8; 40];
            openssl::aes::wrap_key(&wrap_key, None, &mut wrapped, &cek)
                .map_err(|_| anyhow::anyhow!("AES key wrap failed"))?;
            let mut other = serde_json::Map::new();
            other.insert(
                "epk".into(),
                json!({
                    "crv": "P-256",
                    "kty": "EC",
                    "x": URL_SAFE_NO_PAD.encode(ex.to_vec_padded(32)?),
                    "y": URL_SAFE_NO_PAD.encode(ey.to_vec_padded(32)?),
                }),
            );
            (
                ProtectedHeader {
                    alg: "ECDH-ES+A256KW".into(),
                    enc: "A256GCM".into(),
                    other_fields: other,
                },
                wrapped,
            )
        }
        TeePubKey::RSA { alg, k_mod, k_exp } if alg == "RSA-OAEP-256" => {
            let rsa = openssl::rsa::Rsa::from_public_components(
                openssl::bn::BigNum::from_slice(&URL_SAFE_NO_PAD.decode(k_mod)?)?,
                openssl::bn::BigNum::from_slice(&URL_SAFE_NO_PAD.decode(k_exp)?)?,
            )?;
            let pkey = openssl::pkey::PKey::from_rsa(rsa)?;
            let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&pkey)?;
            ctx.encrypt_init()?;
            ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1_OAEP)?;
            ctx.set_rsa_oaep_md(openssl::md::Md::sha256())?;
            ctx.set_rsa_mgf1_md(openssl::md::Md::sha256())?;
            let mut wrapped = Vec::new();
            ctx.encrypt_to_vec(&cek, &mut wrapped)?;
            (
                ProtectedHeader {
                    alg: "RSA-OAEP-256".into(),
                    enc: "A256GCM".into(),
                    other_fields: serde_json::Map::new(),
                },
                wrapped,
            )
        }
        other => anyhow::bail!("unsupported TEE key {other:?}"),
    };
    let aad = protected
        .generate_aad()
        .map_err(|_| anyhow::anyhow!("cannot serialize the protected header"))?;
    let mut iv = [0u8; 12];
    openssl::rand::rand_bytes(&mut iv)?;
    let mut tag = [0u8; 16];
    let ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        &cek,
        Some(&iv),
        &aad,
        payload,
        &mut tag,
    )?;
    let response = kbs_types::Response {
        protected,
        encrypted_key,
        aad: None,
        iv: iv.to_vec(),
        ciphertext,
        tag: tag.to_vec(),
    };
    Ok(serde_json::to_string(&response)?)
}

async fn kbs_api(
    State(state): State<Arc<KbsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.inc("kbs_http_requests_total");
    let Some(rest) = uri.path().strip_prefix("/kbs/v0/") else {
        return KbsError::new(
            "InvalidRequestPath",
            format!("Request path {} is invalid", uri.path()),
            "",
        )
        .response();
    };
    let (base, additional) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let result = match base {
        "" => Err(KbsError::new(
            "InvalidRequestPath",
            format!("Request path {} is invalid", uri.path()),
            "",
        )),
        "auth" if method == Method::POST => state.auth(&body),
        "attest" if method == Method::POST => state.attest(&body, &headers),
        "resource" if method == Method::GET || method == Method::POST => {
            state.resource(&method, additional, &headers, &body)
        }
        plugin => Err(KbsError::new(
            "PluginNotFound",
            format!("Plugin {plugin} not found"),
            "",
        )),
    };
    result.unwrap_or_else(|e| e.response())
}

async fn metrics(State(state): State<Arc<KbsState>>) -> String {
    state.metrics()
}

/// The router of a test KBS with `config`.
pub fn router(config: KbsServerConfig) -> anyhow::Result<Router> {
    let state = Arc::new(KbsState::new(config)?);
    Ok(Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/kbs/v0/{*rest}", axum::routing::any(kbs_api))
        .with_state(state))
}

/// TLS material for the HTTPS mode: a PEM certificate chain and PEM private key.
pub fn tls_acceptor(cert_pem: &Path, key_pem: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_pem)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key_pem)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let Some(acceptor) = tls else {
        axum::serve(listener, router).await?;
        return Ok(());
    };
    loop {
        let (stream, _peer): (_, SocketAddr) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

/// Reads a `/metrics` text into `name{labels} -> value`.
pub fn parse_metrics(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.trim().parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_792_567_680)),
            "Wed, 21 Oct 2026 07:28:00 GMT"
        );
    }

    #[test]
    fn canonical() {
        let v = json!({"b": {"z": 1, "a": ""}, "a": "\"x\""});
        assert_eq!(canonical_json(&v), r#"{"a":"\"x\"","b":{"a":"","z":1}}"#);
    }
}
