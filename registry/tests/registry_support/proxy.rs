//! A loopback forwarding proxy in front of the real registry, recording what it was sent,
//! with knobs: require Basic auth, answer blob requests with a 307 to another server
//! (a "storage backend"), answer 403 once (an expired pre-signed URL), ignore `Range`
//! (so the registry sends the whole blob with 200), tamper with bodies, stall blob
//! requests (hold them without a byte of answer), cut blob bodies midway.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::http::{serve, Handler, Request, Response, Server};
use super::registry::{test_bytes, Pusher, Registry};

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub custom: Option<String>,
}

/// The proxy's behaviour and record.
#[derive(Default)]
pub struct ProxyState {
    /// Where requests are forwarded (`http://127.0.0.1:PORT`).
    pub upstream: String,
    /// Demand this exact Authorization value on `/v2/` requests.
    pub require_authorization: Option<String>,
    /// Redirect blob requests here (base URL), with a signature in the query.
    pub redirect_blobs_to: Mutex<Option<String>>,
    /// Answer the next request with 403.
    pub expire_next: AtomicBool,
    /// Drop the Range header when forwarding.
    pub ignore_range: AtomicBool,
    /// Flip the last byte of every non-empty body sent back.
    pub tamper_bodies: AtomicBool,
    /// Stall this many of the next blob GETs: no byte of answer until the server drops
    /// the connection (after its 30 s limit).
    pub stall_blob_gets: AtomicUsize,
    /// Cut this many of the next blob GET answers after `cut_blob_bytes` body bytes
    /// (the connection closes).
    pub cut_blob_gets: AtomicUsize,
    pub cut_blob_bytes: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
}

impl ProxyState {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn blob_requests(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.contains("/blobs/"))
            .count()
    }
}

pub async fn proxy(state: Arc<ProxyState>) -> Server {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client");
    let handler: Handler = Arc::new(move |req: Request| {
        let (state, http) = (state.clone(), http.clone());
        Box::pin(async move { handle(&state, &http, req).await })
    });
    serve(handler).await
}

async fn handle(state: &ProxyState, http: &reqwest::Client, req: Request) -> Response {
    let authorization = req.header("authorization").map(str::to_string);
    state.seen.lock().unwrap().push(Seen {
        method: req.method.clone(),
        path: req.path.clone(),
        authorization: authorization.clone(),
        range: req.header("range").map(str::to_string),
        custom: req.header("x-veil-test").map(str::to_string),
    });
    if let Some(expected) = &state.require_authorization {
        if authorization.as_deref() != Some(expected) {
            return Response::new(401)
                .header("WWW-Authenticate", r#"Basic realm="veil-test""#)
                .header("Content-Type", "application/json")
                .body(
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
        }
    }
    if state.expire_next.swap(false, Ordering::SeqCst) {
        return Response::new(403).body(
            "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        );
    }
    let stall = req.method == "GET"
        && req.path.contains("/blobs/")
        && state
            .stall_blob_gets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if stall {
        std::future::pending::<()>().await;
    }
    let cut = req.method == "GET"
        && req.path.contains("/blobs/")
        && state
            .cut_blob_gets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let redirect = state.redirect_blobs_to.lock().unwrap().clone();
    if let Some(target) = redirect {
        if req.path.contains("/blobs/") {
            return Response::new(307).header(
                "Location",
                &format!("{target}{}?X-Signature=s3cr3t", req.path),
            );
        }
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut forward = http.request(method, format!("{}{}", state.upstream, req.path));
    for name in ["accept", "accept-encoding", "content-type"] {
        if let Some(v) = req.header(name) {
            forward = forward.header(name, v);
        }
    }
    if !state.ignore_range.load(Ordering::SeqCst) {
        if let Some(v) = req.header("range") {
            forward = forward.header("range", v);
        }
    }
    let upstream = match forward.body(req.body.clone()).send().await {
        Ok(r) => r,
        Err(e) => return Response::new(502).body(e.to_string()),
    };
    let mut response = Response::new(upstream.status().as_u16());
    for name in [
        "content-type",
        "content-range",
        "docker-content-digest",
        "www-authenticate",
    ] {
        if let Some(v) = upstream.headers().get(name).and_then(|v| v.to_str().ok()) {
            response = response.header(name, v);
        }
    }
    if req.method == "HEAD" {
        if let Some(v) = upstream
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
        {
            response = response.header("Content-Length", v);
        }
    }
    let mut body = upstream
        .bytes()
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    if state.tamper_bodies.load(Ordering::SeqCst) {
        if let Some(last) = body.last_mut() {
            *last ^= 0x20;
        }
    }
    let mut response = response.body(body);
    if cut {
        response.cut_after = Some(state.cut_blob_bytes.load(Ordering::SeqCst));
    }
    response
}

/// The real registry holding one image `app:v1` of one layer (`layer_size` bytes of
/// [`test_bytes`] with `seed`), and a recording proxy in front of it: the registry, the
/// proxy's state (its knobs), the proxy and the layer.
pub async fn one_image_behind_proxy(
    layer_size: usize,
    seed: u64,
) -> (Registry, Arc<ProxyState>, Server, Vec<u8>) {
    let registry = Registry::start(None).await;
    let layer = test_bytes(layer_size, seed);
    Pusher::new(registry.base(), None)
        .image("app", "v1", "amd64", std::slice::from_ref(&layer))
        .await;
    let state = Arc::new(ProxyState {
        upstream: registry.base(),
        ..Default::default()
    });
    let front = proxy(state.clone()).await;
    (registry, state, front, layer)
}
