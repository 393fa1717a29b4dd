//! A token service for the real registry's `auth: token:` mode: a self-signed ES256
//! certificate (rcgen) whose PEM is the registry's `rootcertbundle`, JWTs signed with
//! ring and carrying the certificate in `x5c`, served on loopback at `/token`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::http::{serve, Handler, Request, Response, Server};

pub const ISSUER: &str = "veil-test-issuer";
pub const SERVICE: &str = "veil-test-registry";

/// Signs registry tokens.
pub struct Issuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    pub cert_pem: String,
}

impl Issuer {
    pub fn new() -> Issuer {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let params =
            rcgen::CertificateParams::new(vec!["veil-token-issuer".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed cert");
        let signing = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &SystemRandom::new(),
        )
        .expect("ring key");
        Issuer {
            key: signing,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }

    /// A JWT granting `actions` on each repository named in `scopes`
    /// (`repository:<name>:<actions>`).
    pub fn token(&self, scopes: &[String], lifetime_secs: u64) -> String {
        let b64url = |data: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()
                }))
            })
            .collect();
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)]
        });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "veil-test", "aud": SERVICE,
            "exp": now + lifetime_secs, "nbf": now - 10, "iat": now,
            "jti": format!("veil-{now}-{}", scopes.len()), "access": access
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64url(signature.as_ref()))
    }
}

/// What the token service saw.
#[derive(Default)]
pub struct TokenLog {
    pub requests: AtomicU64,
    pub authorizations: Mutex<Vec<Option<String>>>,
    pub scopes: Mutex<Vec<Vec<String>>>,
}

/// The refresh token the service accepts in the OAuth2 `refresh_token` grant.
pub const REFRESH_TOKEN: &str = "refresh-me";

/// Serves `GET /token?service=..&scope=..` (requires Basic `user:pass` when given) and
/// `POST /token` with an OAuth2 refresh-token grant.
pub async fn token_server(
    issuer: Arc<Issuer>,
    basic: Option<(&str, &str)>,
) -> (Server, Arc<TokenLog>) {
    let log = Arc::new(TokenLog::default());
    let expected = basic.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let handler_log = log.clone();
    let handler: Handler = Arc::new(move |req: Request| {
        let (issuer, log, expected) = (issuer.clone(), handler_log.clone(), expected.clone());
        Box::pin(async move {
            log.requests.fetch_add(1, Ordering::SeqCst);
            let auth = req.header("authorization").map(str::to_string);
            log.authorizations.lock().unwrap().push(auth.clone());
            if req.path != "/token" {
                return Response::new(404);
            }
            if req.method == "POST" {
                return refresh_grant(&issuer, &log, &req.body);
            }
            if expected.is_some() && auth != expected {
                return Response::new(401)
                    .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#);
            }
            let query = req.query.unwrap_or_default();
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let service_ok = pairs.iter().any(|(k, v)| k == "service" && v == SERVICE);
            let scopes: Vec<String> = pairs
                .into_iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v)
                .collect();
            log.scopes.lock().unwrap().push(scopes.clone());
            if !service_ok {
                return Response::new(400).body("wrong service");
            }
            let token = issuer.token(&scopes, 300);
            Response::new(200)
                .header("Content-Type", "application/json")
                .body(serde_json::json!({"token": token, "expires_in": 300}).to_string())
        })
    });
    (serve(handler).await, log)
}

fn refresh_grant(issuer: &Issuer, log: &TokenLog, body: &[u8]) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let scopes: Vec<String> = get("scope")
        .unwrap_or_default()
        .split(' ')
        .map(str::to_string)
        .collect();
    log.scopes.lock().unwrap().push(scopes.clone());
    let ok = get("grant_type") == Some("refresh_token")
        && get("refresh_token") == Some(REFRESH_TOKEN)
        && get("service") == Some(SERVICE)
        && get("client_id").is_some();
    if !ok {
        return Response::new(400).body(r#"{"error":"invalid_grant"}"#);
    }
    let token = issuer.token(&scopes, 300);
    Response::new(200)
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"access_token": token, "expires_in": 300}).to_string())
}
