//! Veil's KBS attestation client (veil-keyprovider `kbs`) against the test KBS
//! (`test-kbs`, PROTOCOLS.md §4) on loopback, started by each test and stopped by PID:
//! resources released after attestation (EC and RSA TEE keys, HTTP and HTTPS with a
//! configured CA), token reuse, attesting again when the token expires or the KBS forgets
//! the session, every refusal reported with the KBS's error type and detail, the test
//! KBS's own protocol checks (version, cookie, stale nonce, a tee-pubkey that does not
//! match the evidence), and an attestation-agent layer key unwrapped end to end with a
//! KEK released by the KBS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use veil_keyprovider::aa_packet::{self, AnnotationPacket};
use veil_keyprovider::kbs::attester::{Attester, AttesterError, SampleAttester};
use veil_keyprovider::kbs::client::runtime_data_digest;
use veil_keyprovider::kbs::tee_key::{TeeKey, TeeKeyType};
use veil_keyprovider::kbs::{KbsClient, KbsClientConfig, KbsError, KbsKekSource};
use veil_keyprovider::kek::{KekChain, KekSource, Kid};
use veil_keyprovider::keys::KeyRing;
use veil_keyprovider::ocicrypt::{
    EncryptedLayer, PrivateLayerBlockCipherOptions, PublicLayerBlockCipherOptions, Recipient,
};
use veil_keyprovider::secret::SecretBytes;
use veil_keyprovider::unwrap::unwrap_private_options_with_keks;
use veil_tests::kbs_server::parse_metrics;
use veil_tests::ChildGuard;

const KID: &str = "kbs:///default/image_key/test";

/// A test KBS process with its resources directory.
struct TestKbs {
    guard: ChildGuard,
    url: String,
    resources: PathBuf,
}

impl TestKbs {
    /// Starts `test-kbs` with `extra` arguments, resources in `dir/resources`.
    fn start(dir: &Path, name: &str, extra: &[&str]) -> TestKbs {
        let resources = dir.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        let addr_file = dir.join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-kbs"));
        cmd.arg("--resources")
            .arg(&resources)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut guard = ChildGuard::spawn(name, cmd, &dir.join(format!("{name}.log"))).unwrap();
        guard
            .wait_for_path(&addr_file, Duration::from_secs(20))
            .unwrap();
        let url = std::fs::read_to_string(&addr_file).unwrap();
        TestKbs {
            guard,
            url,
            resources,
        }
    }

    fn put(&self, path: &str, bytes: &[u8]) {
        let file = self.resources.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }

    /// The KBS's counters (`/metrics`).
    async fn metrics(&self) -> std::collections::BTreeMap<String, u64> {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let text = client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_metrics(&text)
    }

    fn port(&self) -> String {
        self.url.rsplit(':').next().unwrap().to_string()
    }
}

fn client_for(kbs: &TestKbs, key: TeeKeyType, attester: Arc<dyn Attester>) -> Arc<KbsClient> {
    let mut config = KbsClientConfig::new(&kbs.url);
    config.allow_plain_http = true;
    config.tee_key_type = key;
    config.timeout = Duration::from_secs(20);
    Arc::new(KbsClient::new(&config, attester).unwrap())
}

fn kid(text: &str) -> Kid {
    Kid::parse(text).unwrap()
}

fn count(metrics: &std::collections::BTreeMap<String, u64>, name: &str) -> u64 {
    metrics.get(name).copied().unwrap_or(0)
}

const SAMPLE_OK: &str = "kbs_attestation_successes_total{tee_type=\"sample\"}";

#[tokio::test]
async fn resources_are_released_after_attestation_with_ec_and_rsa_keys() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = TestKbs::start(dir.path(), "kbs", &[]);
    kbs.put("default/image_key/test", &[0x42; 32]);
    for key in [TeeKeyType::EcP256, TeeKeyType::Rsa] {
        let client = client_for(&kbs, key, Arc::new(SampleAttester));
        let kek = client.get_resource(&kid(KID)).await.unwrap();
        assert_eq!(kek.expose(), &[0x42; 32], "{key:?}");
        assert_eq!(client.attestation_count(), 1);
    }
    let metrics = kbs.metrics().await;
    assert_eq!(count(&metrics, "kbs_auth_requests_total"), 2, "{metrics:?}");
    assert_eq!(count(&metrics, SAMPLE_OK), 2, "{metrics:?}");
    assert_eq!(
        count(
            &metrics,
            "kbs_resource_reads_total{resource_path=\"default/image_key/test\"}"
        ),
        2
    );
}

#[tokio::test]
async fn the_token_is_reused_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = TestKbs::start(dir.path(), "kbs", &["--token-lifetime-secs", "3"]);
    kbs.put("default/image_key/a", &[1; 32]);
    kbs.put("default/image_key/b", &[2; 32]);
    let client = client_for(&kbs, TeeKeyType::EcP256, Arc::new(SampleAttester));
    for (path, byte) in [("a", 1u8), ("b", 2), ("a", 1)] {
        let kek = client
            .get_resource(&kid(&format!("kbs:///default/image_key/{path}")))
            .await
            .unwrap();
        assert_eq!(kek.expose(), &[byte; 32]);
    }
    let metrics = kbs.metrics().await;
    assert_eq!(
        count(&metrics, "kbs_attestation_requests_total"),
        1,
        "{metrics:?}"
    );
    assert_eq!(count(&metrics, SAMPLE_OK), 1);
    assert_eq!(client.attestation_count(), 1);

    // After `exp` the client attests again before asking.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    client
        .get_resource(&kid("kbs:///default/image_key/a"))
        .await
        .unwrap();
    let metrics = kbs.metrics().await;
    assert_eq!(count(&metrics, SAMPLE_OK), 2, "{metrics:?}");
    assert_eq!(client.attestation_count(), 2);
}

#[tokio::test]
async fn an_expired_session_falls_back_to_the_bearer_token() {
    // The cookie's session ends before the token does: the KBS takes the bearer token.
    let dir = tempfile::tempdir().unwrap();
    let kbs = TestKbs::start(dir.path(), "kbs", &["--session-timeout-secs", "1"]);
    kbs.put("default/image_key/test", &[3; 32]);
    let client = client_for(&kbs, TeeKeyType::EcP256, Arc::new(SampleAttester));
    client.get_resource(&kid(KID)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    client.get_resource(&kid(KID)).await.unwrap();
    assert_eq!(client.attestation_count(), 1);
    assert_eq!(count(&kbs.metrics().await, SAMPLE_OK), 1);
}

#[tokio::test]
async fn a_401_on_a_reused_session_attests_again() {
    // The KBS restarts: its sessions and its token key are gone, so the reused cookie and
    // token are refused with 401; the client attests again and gets the resource.
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestKbs::start(dir.path(), "kbs1", &[]);
    first.put("default/image_key/test", &[4; 32]);
    let client = client_for(&first, TeeKeyType::EcP256, Arc::new(SampleAttester));
    client.get_resource(&kid(KID)).await.unwrap();
    let port = first.port();
    first.guard.stop();
    let second = TestKbs::start(
        dir.path(),
        "kbs2",
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(second.url, first.url);
    let kek = client.get_resource(&kid(KID)).await.unwrap();
    assert_eq!(kek.expose(), &[4; 32]);
    assert_eq!(client.attestation_count(), 2);
    let metrics = second.metrics().await;
    assert_eq!(count(&metrics, SAMPLE_OK), 1, "{metrics:?}");
    // One refused GET (the old token) and one served.
    assert_eq!(count(&metrics, "kbs_http_requests_total"), 4, "{metrics:?}");
    assert!(
        second.guard.output().contains("TokenVerifierError"),
        "{}",
        second.guard.output()
    );
}

/// An attester whose evidence binds other report data (as if for another key or nonce).
#[derive(Debug)]
struct LyingAttester;

impl Attester for LyingAttester {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Sample
    }
    fn evidence(&self, _report_data: &[u8]) -> Result<Value, AttesterError> {
        SampleAttester.evidence(&[0u8; 48])
    }
}

/// An attester for a TEE the test KBS cannot verify.
#[derive(Debug)]
struct TdxLookalike;

impl Attester for TdxLookalike {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Tdx
    }
    fn evidence(&self, _report_data: &[u8]) -> Result<Value, AttesterError> {
        Ok(json!({"quote": "AAAA", "cc_eventlog": null}))
    }
}

#[tokio::test]
async fn refusals_are_reported_with_the_kbs_error() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = TestKbs::start(dir.path(), "kbs", &[]);
    kbs.put("default/image_key/test", &[5; 32]);
    let client = client_for(&kbs, TeeKeyType::EcP256, Arc::new(SampleAttester));

    // A missing resource: 401 PluginInternalError, on a fresh session (no second attest).
    let err = client
        .get_resource(&kid("kbs:///default/image_key/missing"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("KBS refused resource")
            && text.contains("/kbs/v0/resource/default/image_key/missing")
            && text.contains("HTTP 401, KBS error PluginInternalError: Plugin internal error"),
        "{text}"
    );
    assert_eq!(err.refusal().unwrap().kind(), Some("PluginInternalError"));
    assert_eq!(client.attestation_count(), 1);

    // An unknown plugin: 404 PluginNotFound.
    let err = client
        .get_resource(&kid("kbs+nosuch:///default/x/y"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 404, KBS error PluginNotFound: Plugin nosuch not found"),
        "{err}"
    );

    // Evidence that does not bind this session's key and nonce.
    let liar = client_for(&kbs, TeeKeyType::EcP256, Arc::new(LyingAttester));
    let err = liar.get_resource(&kid(KID)).await.unwrap_err().to_string();
    assert!(
        err.contains("KBS refused attest")
            && err.contains("HTTP 401, KBS error AttestationError: Attestation error: RCAR handshake Attest failed"),
        "{err}"
    );
    assert!(kbs.guard.output().contains("report data mismatch"));

    // A TEE the KBS cannot verify.
    let tdx = client_for(&kbs, TeeKeyType::EcP256, Arc::new(TdxLookalike));
    let err = tdx.get_resource(&kid(KID)).await.unwrap_err().to_string();
    assert!(err.contains("AttestationError"), "{err}");

    // The KBS's default policy refuses sample evidence.
    let strict = TestKbs::start(dir.path(), "strict", &["--policy", "deny-sample"]);
    strict.put("default/image_key/test", &[5; 32]);
    let client = client_for(&strict, TeeKeyType::EcP256, Arc::new(SampleAttester));
    let err = client
        .get_resource(&kid(KID))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 401, KBS error PolicyDeny: Access denied by policy"),
        "{err}"
    );

    // Nobody listening.
    let port = strict.port();
    drop(strict);
    let mut config = KbsClientConfig::new(format!("http://127.0.0.1:{port}"));
    config.allow_plain_http = true;
    let gone = KbsClient::new(&config, Arc::new(SampleAttester)).unwrap();
    let err = gone.get_resource(&kid(KID)).await.unwrap_err();
    assert!(
        matches!(err, KbsError::Transport { step: "auth", .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{port}/kbs/v0/auth")),
        "{err}"
    );
}

fn post_json(http: &reqwest::Client, url: String, body: &Value) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
}

/// Raw protocol exchanges: what the test KBS refuses, as the real one does.
#[tokio::test]
async fn the_test_kbs_enforces_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = TestKbs::start(dir.path(), "kbs", &[]);
    kbs.put("default/image_key/test", &[6; 32]);
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}/kbs/v0/{p}", kbs.url);
    let auth_body = json!({"version": "0.4.0", "tee": "sample", "extra-params": ""});
    async fn error_of(response: reqwest::Response) -> (u16, String, String) {
        let status = response.status().as_u16();
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        (
            status,
            body["type"].as_str().unwrap().to_string(),
            body["detail"].as_str().unwrap().to_string(),
        )
    }
    let auth = |body: Value| {
        let http = http.clone();
        let url = url("auth");
        async move { post_json(&http, url, &body).send().await.unwrap() }
    };

    // Version must be exactly 0.4.0.
    let (status, kind, detail) =
        error_of(auth(json!({"version": "0.1.0", "tee": "sample", "extra-params": ""})).await)
            .await;
    assert_eq!(status, 401);
    assert_eq!(
        kind,
        "https://github.com/confidential-containers/kbs/errors/AttestationError"
    );
    assert_eq!(detail, "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.1.0");

    // Two sessions; the challenge and cookie of each.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let response = auth(auth_body.clone()).await;
        assert_eq!(response.status(), 200);
        let cookie = response
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            cookie.starts_with("kbs-session-id=") && cookie.contains("; Expires="),
            "{cookie}"
        );
        let id = cookie["kbs-session-id=".len()..]
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 32);
        let challenge: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(challenge["extra-params"], "");
        let nonce = challenge["nonce"].as_str().unwrap().to_string();
        assert_eq!(STANDARD.decode(&nonce).unwrap().len(), 32);
        sessions.push((id, nonce));
    }
    let attestation = |nonce: &str, sent_key: &TeeKey, bound_key: &TeeKey| {
        let report_data =
            runtime_data_digest(nonce, bound_key.public(), &Value::String(String::new())).unwrap();
        json!({
            "init-data": null,
            "runtime-data": {"nonce": nonce, "tee-pubkey": sent_key.public()},
            "tee-evidence": {
                "primary_evidence": SampleAttester.evidence(&report_data).unwrap(),
                "additional_evidence": "",
            },
        })
    };
    let key = TeeKey::generate(TeeKeyType::EcP256).unwrap();
    let other = TeeKey::generate(TeeKeyType::EcP256).unwrap();
    let attest = |body: Value, cookie: Option<&str>| {
        let mut request = post_json(&http, url("attest"), &body);
        if let Some(id) = cookie {
            request = request.header("cookie", format!("kbs-session-id={id}"));
        }
        request.send()
    };
    let (id, nonce) = &sessions[1];
    let attest_failed = (
        401,
        "https://github.com/confidential-containers/kbs/errors/AttestationError".to_string(),
        "Attestation error: RCAR handshake Attest failed".to_string(),
    );
    // No cookie.
    let got = error_of(attest(attestation(nonce, &key, &key), None).await.unwrap()).await;
    assert_eq!(got, attest_failed);
    // A stale nonce: the first session's, on the second session.
    let got = error_of(
        attest(attestation(&sessions[0].1, &key, &key), Some(id))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, attest_failed);
    // A tee-pubkey that is not the one the evidence binds.
    let got = error_of(
        attest(attestation(nonce, &key, &other), Some(id))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, attest_failed);
    let log = kbs.guard.output();
    for cause in [
        "cookie not found",
        "nonce in the handshake session is different",
        "report data mismatch",
    ] {
        assert!(log.contains(cause), "{cause:?} not in the KBS log:\n{log}");
    }
    // The right one.
    let response = attest(attestation(nonce, &key, &key), Some(id))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = serde_json::from_slice::<Value>(&response.bytes().await.unwrap()).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token.split('.').count(), 3);

    // Resource GET: neither cookie nor token; then the cookie; then the bearer token alone.
    let got = error_of(
        http.get(url("resource/default/image_key/test"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        got,
        (
            401,
            "https://github.com/confidential-containers/kbs/errors/TokenNotFound".to_string(),
            "Attestation Token not found".to_string()
        )
    );
    for request in [
        http.get(url("resource/default/image_key/test"))
            .header("cookie", format!("kbs-session-id={id}")),
        http.get(url("resource/default/image_key/test"))
            .bearer_auth(&token),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/json"
        );
        let body = response.bytes().await.unwrap();
        let jwe: Value = serde_json::from_slice(&body).unwrap();
        let mut keys: Vec<&String> = jwe.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["ciphertext", "encrypted_key", "iv", "protected", "tag"]
        );
        assert_eq!(key.decrypt_response(&body).unwrap().expose(), &[6; 32]);
    }
    // A bad resource path is the plugin's error (401), an unknown plugin a 404.
    let got = error_of(
        http.get(url("resource/default/test"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((got.0, got.2.as_str()), (401, "Plugin internal error"));
    let response = http.get(url("nosuch/a/b/c")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

/// A self-signed CA and a server certificate for 127.0.0.1 signed by it, as PEM files.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "veil test KBS CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.pem"), dir.join("kbs.pem"), dir.join("kbs.key"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

#[tokio::test]
async fn https_with_a_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    let kbs = TestKbs::start(
        dir.path(),
        "kbs",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(kbs.url.starts_with("https://"), "{}", kbs.url);
    kbs.put("default/image_key/test", &[7; 32]);

    let mut config = KbsClientConfig::new(&kbs.url);
    config.ca_pem = Some(std::fs::read(&ca).unwrap());
    let client = KbsClient::new(&config, Arc::new(SampleAttester)).unwrap();
    assert_eq!(
        client.get_resource(&kid(KID)).await.unwrap().expose(),
        &[7; 32]
    );

    // Without the CA the server is not trusted.
    let untrusting =
        KbsClient::new(&KbsClientConfig::new(&kbs.url), Arc::new(SampleAttester)).unwrap();
    let err = untrusting.get_resource(&kid(KID)).await.unwrap_err();
    assert!(
        matches!(err, KbsError::Transport { step: "auth", .. }),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn an_attestation_agent_layer_key_unwraps_with_a_kek_from_the_kbs() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = TestKbs::start(dir.path(), "kbs", &[]);
    let mut kek_bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut kek_bytes).unwrap();
    kbs.put("default/image_key/test", &kek_bytes);
    let kek = SecretBytes::new(kek_bytes.to_vec());

    // A layer encrypted as coco_keyprovider does it: AES-256-CTR + HMAC with fresh
    // options, the options wrapped with the KEK (AES-256-GCM) under the kid.
    let plaintext: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let private = PrivateLayerBlockCipherOptions::generate("sha256:00").unwrap();
    let symkey = private.symkey.expose().to_vec();
    let nonce = private.cipher_options["nonce"].expose().to_vec();
    let ciphertext = openssl::symm::encrypt(
        openssl::symm::Cipher::aes_256_ctr(),
        &symkey,
        Some(&nonce),
        &plaintext,
    )
    .unwrap();
    let hmac = {
        let pkey = openssl::pkey::PKey::hmac(&symkey).unwrap();
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
        signer.update(&ciphertext).unwrap();
        <[u8; 32]>::try_from(signer.sign_to_vec().unwrap()).unwrap()
    };
    let packet = AnnotationPacket::wrap(KID, &kek, &private.to_json()).unwrap();
    let layer = EncryptedLayer {
        pubopts: PublicLayerBlockCipherOptions::new(hmac),
        recipients: vec![Recipient {
            scheme: aa_packet::SCHEME.to_string(),
            wrapped: packet.to_json(),
        }],
    };
    // Through the descriptor annotations, as the snapshotter sees it.
    let annotations = layer.to_annotations();
    assert!(
        annotations.contains_key("org.opencontainers.image.enc.keys.provider.attestation-agent")
    );
    let layer = EncryptedLayer::from_annotations(&annotations).unwrap();

    let client = client_for(&kbs, TeeKeyType::EcP256, Arc::new(SampleAttester));
    let sources: Vec<Arc<dyn KekSource>> = vec![Arc::new(KbsKekSource::new(client.clone()))];
    let chain = KekChain::new(sources);
    let no_keys = KeyRing::from_keys(Vec::new());
    // Several layers of one image: one attestation, one resource request.
    for _ in 0..3 {
        let got = unwrap_private_options_with_keks("sha256:layer", &layer, &no_keys, &chain)
            .await
            .unwrap();
        assert_eq!(got, private);
        let decrypted = openssl::symm::decrypt(
            openssl::symm::Cipher::aes_256_ctr(),
            got.symkey.expose(),
            Some(got.cipher_options["nonce"].expose()),
            &ciphertext,
        )
        .unwrap();
        assert_eq!(decrypted, plaintext);
    }
    let metrics = kbs.metrics().await;
    assert_eq!(count(&metrics, SAMPLE_OK), 1, "{metrics:?}");
    assert_eq!(
        count(
            &metrics,
            "kbs_resource_reads_total{resource_path=\"default/image_key/test\"}"
        ),
        1
    );

    // With the resource removed, a fresh daemon's unwrap fails naming the kid and the KBS.
    std::fs::remove_file(kbs.resources.join("default/image_key/test")).unwrap();
    let client = client_for(&kbs, TeeKeyType::EcP256, Arc::new(SampleAttester));
    let sources: Vec<Arc<dyn KekSource>> = vec![Arc::new(KbsKekSource::new(client))];
    let chain = KekChain::new(sources);
    let err = unwrap_private_options_with_keks("sha256:layer", &layer, &no_keys, &chain)
        .await
        .unwrap_err()
        .to_string();
    for needle in [
        "layer sha256:layer",
        "provider.attestation-agent ×1",
        &format!("KEK sources: kbs:{}", kbs.url),
        &format!("kids tried: {KID}"),
        "HTTP 401, KBS error PluginInternalError: Plugin internal error",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(!err.contains(&STANDARD.encode(kek_bytes)));
}
