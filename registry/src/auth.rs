//! Registry authentication: what `Authorization` header to send to a registry host.
//!
//! A host's scheme is learned from its first 401 (`WWW-Authenticate`): for `Bearer`, a
//! token is fetched from the realm (`GET realm?service=..&scope=..`, with Basic auth when
//! there are credentials; `POST` with an OAuth2 refresh-token grant for an identity
//! token) and cached per host and scope until shortly before it expires; for `Basic`, the
//! credentials are sent as they are. A `registrytoken` credential is sent as a bearer
//! token without asking anyone. Concurrent requests for one scope share one token fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use url::Url;

use super::challenge::Challenge;
use super::credentials::{Credential, CredentialLookup};
use super::error::{ErrorDetail, Operation, RegistryError};
use super::metrics::RegistryMetrics;
use super::transport::read_limited;

/// The OAuth2 client id Veil presents to token services.
const CLIENT_ID: &str = "veil";
/// Token lifetime assumed when the service does not say (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// Everything the authorizer needs for one request.
pub(crate) struct AuthContext<'a> {
    /// HTTP client of the endpoint (its TLS settings also apply to its token service).
    pub http: &'a reqwest::Client,
    /// `scheme://host:port` of the endpoint.
    pub origin: &'a str,
    /// The scope the request needs: `repository:<name>:pull`.
    pub scope: &'a str,
    /// The credentials for this endpoint and repository.
    pub credential: &'a CredentialLookup,
    /// For errors.
    pub op: &'a Operation,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Where token fetches are counted.
    pub metrics: &'a RegistryMetrics,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Clone)]
struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Learned authentication schemes and cached tokens, shared by all requests of a client.
#[derive(Default)]
pub(crate) struct Authorizer {
    schemes: Mutex<HashMap<String, HostScheme>>,
    tokens: Mutex<HashMap<String, TokenSlot>>,
}

impl Authorizer {
    /// Records what a 401 from `origin` asked for. Returns the scope the challenge named,
    /// if any. Bearer is preferred when both are offered.
    pub fn learn(&self, origin: &str, challenges: &[Challenge]) -> Option<String> {
        let bearer = challenges
            .iter()
            .find(|c| c.scheme == "bearer" && c.param("realm").is_some_and(|r| !r.is_empty()));
        let (scheme, scope) = match bearer {
            Some(c) => (
                HostScheme::Bearer {
                    realm: c.param("realm").unwrap_or_default().to_string(),
                    service: c.param("service").map(str::to_string),
                },
                c.param("scope").map(str::to_string),
            ),
            None if challenges.iter().any(|c| c.scheme == "basic") => (HostScheme::Basic, None),
            None => return None,
        };
        if let Ok(mut schemes) = self.schemes.lock() {
            schemes.insert(origin.to_string(), scheme);
        }
        scope
    }

    /// The `Authorization` header for a request, fetching a token when needed. `rejected`
    /// is a header the registry just answered 401 to: it is not offered again.
    /// `extra_scope` is the scope a 401 challenge named. `None`: send no header.
    pub async fn authorization(
        &self,
        ctx: &AuthContext<'_>,
        rejected: Option<&HeaderValue>,
        extra_scope: Option<&str>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        if let Some(Credential::RegistryToken(token)) = &ctx.credential.credential {
            return Ok(Some(header_value(ctx, "", &format!("Bearer {token}"))?));
        }
        let scheme = self
            .schemes
            .lock()
            .ok()
            .and_then(|s| s.get(ctx.origin).cloned());
        match scheme {
            None => Ok(None),
            Some(HostScheme::Basic) => match &ctx.credential.credential {
                Some(Credential::Basic { username, password }) => {
                    let header = header_value(ctx, "", &basic(username, password))?;
                    Ok((Some(&header) != rejected).then_some(header))
                }
                _ => Ok(None),
            },
            Some(HostScheme::Bearer { realm, service }) => {
                let key = format!(
                    "{}\n{realm}\n{}\n{}",
                    ctx.origin,
                    service.as_deref().unwrap_or_default(),
                    ctx.scope
                );
                let slot = match self.tokens.lock() {
                    Ok(mut tokens) => tokens.entry(key).or_default().clone(),
                    Err(_) => TokenSlot::default(),
                };
                let mut cached = slot.lock().await;
                if let Some(token) = cached.as_ref() {
                    if Instant::now() < token.refresh_at && Some(&token.header) != rejected {
                        return Ok(Some(token.header.clone()));
                    }
                }
                *cached = None;
                let token = fetch_token(ctx, &realm, service.as_deref(), extra_scope).await?;
                *cached = Some(token.clone());
                Ok(Some(token.header))
            }
        }
    }
}

fn basic(username: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

fn header_value(
    ctx: &AuthContext<'_>,
    realm: &str,
    value: &str,
) -> Result<HeaderValue, RegistryError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| RegistryError::Token {
        op: ctx.op.clone(),
        realm: realm.to_string(),
        scope: ctx.scope.to_string(),
        status: None,
        retryable: false,
        reason: "the credential or token has characters not allowed in an HTTP header".into(),
        detail: ErrorDetail::default(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Asks the token service at `realm` for a token for the context's scope (plus the
/// challenge's scope when different).
async fn fetch_token(
    ctx: &AuthContext<'_>,
    realm: &str,
    service: Option<&str>,
    extra_scope: Option<&str>,
) -> Result<CachedToken, RegistryError> {
    let mut scopes = vec![ctx.scope.to_string()];
    for scope in extra_scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
    {
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_string());
        }
    }
    let scope_text = scopes.join(" ");
    let fail = |status: Option<u16>, reason: String, detail: ErrorDetail| RegistryError::Token {
        op: ctx.op.clone(),
        realm: realm.to_string(),
        scope: scope_text.clone(),
        status,
        retryable: status.is_none_or(|s| s >= 500 || s == 408 || s == 429),
        reason,
        detail,
    };
    let mut url = match Url::parse(realm) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        _ => {
            return Err(RegistryError::Token {
                op: ctx.op.clone(),
                realm: realm.to_string(),
                scope: scope_text.clone(),
                status: None,
                retryable: false,
                reason: "the challenge's realm is not an http(s) URL".into(),
                detail: ErrorDetail::default(),
            })
        }
    };
    let request = match &ctx.credential.credential {
        Some(Credential::IdentityToken { token, .. }) => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", token)
                .append_pair("client_id", CLIENT_ID)
                .append_pair("scope", &scope_text);
            if let Some(service) = service {
                form.append_pair("service", service);
            }
            ctx.http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.finish())
        }
        credential => {
            {
                let mut query = url.query_pairs_mut();
                if let Some(service) = service {
                    query.append_pair("service", service);
                }
                for scope in &scopes {
                    query.append_pair("scope", scope);
                }
            }
            let request = ctx.http.get(url.clone());
            match credential {
                Some(Credential::Basic { username, password }) => {
                    request.basic_auth(username, Some(password))
                }
                _ => request,
            }
        }
    };
    ctx.metrics.add_token_fetch();
    let response = request
        .timeout(ctx.timeout)
        .send()
        .await
        .map_err(|e| fail(None, super::error::error_chain(&e), ErrorDetail::default()))?;
    let status = response.status().as_u16();
    let body = read_limited(response, MAX_TOKEN_RESPONSE, ctx.op, url.as_str(), None)
        .await
        .map_err(|e| fail(None, e.to_string(), ErrorDetail::default()))?;
    if status != 200 {
        let mut reason = format!("HTTP {status}");
        if (status == 401 || status == 403) && ctx.credential.credential.is_none() {
            reason.push_str(&format!(" ({})", no_credentials_hint(ctx.credential)));
        }
        return Err(fail(Some(status), reason, ErrorDetail::from_body(&body)));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        fail(
            Some(status),
            format!("bad token response: {e}"),
            ErrorDetail::default(),
        )
    })?;
    let token = parsed
        .access_token
        .or(parsed.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            fail(
                Some(status),
                "the response has no token".into(),
                ErrorDetail::default(),
            )
        })?;
    let lifetime = match parsed.expires_in {
        Some(secs) if secs > 0 => Duration::from_secs(secs.min(86_400 * 365)),
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    let margin = (lifetime / 10).min(Duration::from_secs(30));
    Ok(CachedToken {
        header: header_value(ctx, realm, &format!("Bearer {token}"))?,
        refresh_at: Instant::now() + lifetime - margin,
    })
}

/// Why there are no credentials, for error messages.
pub(crate) fn no_credentials_hint(lookup: &CredentialLookup) -> String {
    match &lookup.helper {
        Some(helper) => format!(
            "the credentials are kept by credential helper docker-credential-{helper}, which Veil \
             does not run; put them under \"auths\" in the docker config.json"
        ),
        None => "no credentials for this registry in the docker config.json".to_string(),
    }
}
