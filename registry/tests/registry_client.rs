//! The registry client against Debian's real `docker-registry` (started per test on a free
//! loopback port, killed by PID at the end): resolving tags and indexes, range reads
//! (single, multipart, whole-blob fallback), the byte counter, NotFound errors, a registry
//! that dies or never answers, token auth with the registry's own `auth: token` mode,
//! Basic auth, redirects to a storage host (no Authorization forwarded, resolved once,
//! re-resolved after a 403), and mirrors from `hosts.toml`.

mod registry_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use registry_support::http::serve_silence;
use registry_support::proxy::{proxy, ProxyState};
use registry_support::registry::{
    free_port, sha256, test_bytes, Pusher, Registry, TokenAuth, OCI_INDEX,
};
use registry_support::tls::test_pki;
use registry_support::token::{token_server, Issuer, ISSUER, REFRESH_TOKEN, SERVICE};
use veil_blob::BlobSource;
use veil_registry::{
    ClientOptions, CredentialsSource, Digest, Platform, Reference, RegistryClient, RegistryError,
    RetryPolicy,
};

const LAYER_SIZE: usize = 300_000;

use registry_support::client::fast_options as options;

fn reference(text: &str) -> Reference {
    Reference::parse(text).expect("reference")
}

fn digest(text: &str) -> Digest {
    Digest::parse(text).expect("digest")
}

fn config_json(dir: &std::path::Path, json: &str) -> CredentialsSource {
    let path = dir.join("config.json");
    std::fs::write(&path, json).expect("write config.json");
    CredentialsSource::DockerConfigFile(path)
}

/// A client (the tests' [`options`]) whose credentials are docker `config.json` `json`,
/// written into `dir`.
fn client_with_config(dir: &std::path::Path, json: &str) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        credentials: config_json(dir, json),
        ..options()
    })
    .expect("client")
}

fn basic(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

#[tokio::test]
async fn resolves_tags_indexes_and_reads_exact_ranges() {
    let registry = Registry::start(None).await;
    let pusher = Pusher::new(registry.base(), None);
    let layer0 = test_bytes(LAYER_SIZE, 1);
    let layer1 = test_bytes(1000, 2);
    let amd = pusher
        .image("app", "v1", "amd64", &[layer0.clone(), layer1.clone()])
        .await;
    let arm = pusher
        .image("app", "arm-only", "arm64", &[test_bytes(500, 3)])
        .await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
          {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64"}}}},
          {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        arm.manifest_digest,
        arm.manifest.len(),
        amd.manifest_digest,
        amd.manifest.len()
    );
    let index_digest = pusher
        .manifest("app", "multi", OCI_INDEX, index.as_bytes())
        .await;

    let client = RegistryClient::new(ClientOptions {
        platform: Platform::parse("linux/amd64").unwrap(),
        ..options()
    })
    .unwrap();
    let host = registry.host();

    // Tag → manifest.
    let image = client
        .resolve(&reference(&format!("{host}/app:v1")))
        .await
        .unwrap();
    assert_eq!(image.manifest.digest.to_string(), amd.manifest_digest);
    assert_eq!(image.manifest.bytes, amd.manifest);
    assert_eq!(image.index_digest, None);
    assert_eq!(image.manifest.config.digest.to_string(), amd.config_digest);
    assert_eq!(image.manifest.layers.len(), 2);
    assert_eq!(image.manifest.layers[0].size, LAYER_SIZE as u64);
    assert_eq!(image.manifest.layers[1].annotations["test.layer"], "1");

    // Index → platform manifest, for two platforms; and by digest.
    let multi = client
        .resolve(&reference(&format!("{host}/app:multi")))
        .await
        .unwrap();
    assert_eq!(multi.manifest.digest.to_string(), amd.manifest_digest);
    assert_eq!(
        multi.index_digest.as_ref().map(ToString::to_string),
        Some(index_digest.clone())
    );
    let arm_client = RegistryClient::new(ClientOptions {
        platform: Platform::parse("linux/arm64").unwrap(),
        ..options()
    })
    .unwrap();
    let on_arm = arm_client
        .resolve(&reference(&format!("{host}/app:multi")))
        .await
        .unwrap();
    assert_eq!(on_arm.manifest.digest.to_string(), arm.manifest_digest);
    let by_digest = client
        .resolve(&reference(&format!("{host}/app@{index_digest}")))
        .await
        .unwrap();
    assert_eq!(by_digest.manifest.digest.to_string(), amd.manifest_digest);
    let s390 = RegistryClient::new(ClientOptions {
        platform: Platform::parse("linux/s390x").unwrap(),
        ..options()
    })
    .unwrap();
    let err = s390
        .resolve(&reference(&format!("{host}/app:multi")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("linux/s390x"), "{err}");

    // Whole blob (config) with digest check, and sizes.
    let config = client
        .fetch_blob(&image.reference, &image.manifest.config.digest)
        .await
        .unwrap();
    assert_eq!(config, amd.config);
    let size = client
        .blob_size(&image.reference, &digest(&sha256(&layer0)))
        .await
        .unwrap();
    assert_eq!(size, LAYER_SIZE as u64);

    // Range reads through the BlobSource seam, counted exactly.
    let metrics = client.metrics();
    let blob = client.blob(&image.reference, &image.manifest.layers[0]);
    assert_eq!(BlobSource::size(&blob), LAYER_SIZE as u64);
    let n = LAYER_SIZE as u64;
    for range in [
        0..4096,
        150_000..150_001,
        123_457..200_000,
        n - 777..n,
        0..n,
    ] {
        let before = metrics.bytes_fetched();
        let got = blob.read_range(range.clone()).await.unwrap();
        assert_eq!(
            got,
            &layer0[range.start as usize..range.end as usize],
            "range {range:?}"
        );
        assert_eq!(
            metrics.bytes_fetched() - before,
            range.end - range.start,
            "counted {range:?}"
        );
    }
    assert!(blob.read_range(0..0).await.unwrap().is_empty());
    let err = blob.read_range(n - 1..n + 1).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");

    // Several ranges in one multipart/byteranges request.
    let requests_before = metrics.snapshot().range_requests;
    let bytes_before = metrics.bytes_fetched();
    let wanted = [10..20, 299_990..300_000, 5_000..9_000];
    let parts = blob.read_ranges(&wanted).await.unwrap();
    for (range, part) in wanted.iter().zip(&parts) {
        assert_eq!(part, &layer0[range.start as usize..range.end as usize]);
    }
    assert_eq!(metrics.snapshot().range_requests, requests_before + 1);
    // A multipart body: the data plus part headers, not the whole blob.
    let counted = metrics.bytes_fetched() - bytes_before;
    assert!((4_020..6_000).contains(&counted), "counted {counted}");

    // The second layer, opened by digest alone (size from HEAD).
    let small = client
        .open_blob(&image.reference, &digest(&sha256(&layer1)))
        .await
        .unwrap();
    assert_eq!(small.size(), 1000);
    assert_eq!(small.read(990..1000).await.unwrap(), &layer1[990..]);
}

#[tokio::test]
async fn missing_repositories_tags_and_blobs_are_clear_not_found_errors() {
    let registry = Registry::start(None).await;
    let pusher = Pusher::new(registry.base(), None);
    pusher
        .image("present", "v1", "amd64", &[test_bytes(100, 9)])
        .await;
    let client = RegistryClient::new(options()).unwrap();
    let host = registry.host();

    let err = client
        .resolve(&reference(&format!("{host}/absent/repo:v1")))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("{host}/absent/repo")) && text.contains("manifest v1"),
        "{text}"
    );
    assert!(
        text.contains("HTTP 404") && text.contains("_UNKNOWN"),
        "{text}"
    );

    let err = client
        .resolve(&reference(&format!("{host}/present:nope")))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains("manifest nope") && err.to_string().contains("MANIFEST_UNKNOWN"),
        "{err}"
    );

    let missing = digest(&sha256(b"never pushed"));
    let err = client
        .fetch_blob(&reference(&format!("{host}/present")), &missing)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains(&missing.to_string()) && err.to_string().contains("BLOB_UNKNOWN"),
        "{err}"
    );
    let err = client
        .blob_size(&reference(&format!("{host}/present")), &missing)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let blob = veil_registry::RegistryBlob::new(
        client.clone(),
        reference(&format!("{host}/present")),
        missing.clone(),
        100,
    );
    let io_err = blob.read_range(0..10).await.unwrap_err();
    assert_eq!(io_err.kind(), std::io::ErrorKind::NotFound, "{io_err}");
    assert!(
        io_err.to_string().contains(&missing.to_string()),
        "{io_err}"
    );
}

#[tokio::test]
async fn a_registry_that_dies_or_hangs_gives_an_error_within_bounds() {
    let mut registry = Registry::start(None).await;
    let pusher = Pusher::new(registry.base(), None);
    let layer = test_bytes(50_000, 4);
    pusher
        .image("app", "v1", "amd64", std::slice::from_ref(&layer))
        .await;
    let client = RegistryClient::new(options()).unwrap();
    let image = client
        .resolve(&reference(&format!("{}/app:v1", registry.host())))
        .await
        .unwrap();
    let blob = client.blob(&image.reference, &image.manifest.layers[0]);
    assert_eq!(blob.read(0..100).await.unwrap(), &layer[..100]);

    registry.stop();
    let started = Instant::now();
    let err = blob.read(100..200).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, RegistryError::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("gave up after 3 attempts"),
        "{err}"
    );
    assert!(client.metrics().snapshot().retries >= 2);

    // A server that accepts connections and never answers: per-request timeouts.
    let silent = serve_silence().await;
    let client = RegistryClient::new(ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..options()
    })
    .unwrap();
    let started = Instant::now();
    let err = client
        .resolve(&reference(&format!("{}/app:v1", silent.addr)))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::TimedOut
    );

    // And the overall deadline cuts even generous retry budgets short.
    let client = RegistryClient::new(ClientOptions {
        request_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_millis(700),
        ..options()
    })
    .unwrap();
    let started = Instant::now();
    let err = client
        .resolve(&reference(&format!("{}/app:v1", silent.addr)))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Deadline { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn token_auth_against_the_registrys_own_token_mode() {
    let issuer = Arc::new(Issuer::new());
    let (tokens, log) = token_server(issuer.clone(), Some(("alice", "s3cret"))).await;
    let auth = TokenAuth {
        realm: format!("{}/token", tokens.base()),
        service: SERVICE.to_string(),
        issuer: ISSUER.to_string(),
        root_cert_pem: issuer.cert_pem.clone(),
    };
    let registry = Registry::start(Some(&auth)).await;
    let push_token = issuer.token(&["repository:secure/app:pull,push".to_string()], 300);
    let pusher = Pusher::new(registry.base(), Some(format!("Bearer {push_token}")));
    let layer = test_bytes(80_000, 5);
    let pushed = pusher
        .image("secure/app", "v1", "amd64", std::slice::from_ref(&layer))
        .await;
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();

    // With credentials: one token for the repository scope, reused for every request.
    let client = client_with_config(
        dir.path(),
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            basic("alice", "s3cret")
        ),
    );
    let image = client
        .resolve(&reference(&format!("{host}/secure/app:v1")))
        .await
        .unwrap();
    assert_eq!(image.manifest.digest.to_string(), pushed.manifest_digest);
    let blob = client.blob(&image.reference, &image.manifest.layers[0]);
    assert_eq!(blob.read(1000..2000).await.unwrap(), &layer[1000..2000]);
    assert_eq!(blob.read(79_000..80_000).await.unwrap(), &layer[79_000..]);
    client
        .fetch_blob(&image.reference, &image.manifest.config.digest)
        .await
        .unwrap();
    assert_eq!(
        log.requests.load(Ordering::SeqCst),
        1,
        "token cached per scope"
    );
    assert_eq!(client.metrics().snapshot().token_fetches, 1);
    let sent = log.authorizations.lock().unwrap()[0].clone();
    assert_eq!(sent, Some(format!("Basic {}", basic("alice", "s3cret"))));
    assert_eq!(
        log.scopes.lock().unwrap()[0],
        vec!["repository:secure/app:pull".to_string()]
    );

    // An identity token (OAuth2 refresh token) is exchanged with a POST.
    let oauth = client_with_config(
        dir.path(),
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}","identitytoken":"{REFRESH_TOKEN}"}}}}}}"#,
            basic("<token>", "")
        ),
    );
    let resolved = oauth
        .resolve(&reference(&format!("{host}/secure/app:v1")))
        .await
        .unwrap();
    assert_eq!(resolved.manifest.digest.to_string(), pushed.manifest_digest);
    assert_eq!(log.requests.load(Ordering::SeqCst), 2);

    // A registry token is sent as is: no token service involved.
    let ready = issuer.token(&["repository:secure/app:pull".to_string()], 300);
    let direct = client_with_config(
        dir.path(),
        &format!(r#"{{"auths":{{"{host}":{{"registrytoken":"{ready}"}}}}}}"#),
    );
    let image = direct
        .resolve(&reference(&format!("{host}/secure/app:v1")))
        .await
        .unwrap();
    let blob = direct.blob(&image.reference, &image.manifest.layers[0]);
    assert_eq!(blob.read(0..10).await.unwrap(), &layer[..10]);
    assert_eq!(log.requests.load(Ordering::SeqCst), 2);

    // Without credentials: the token service refuses; the error says why.
    let anonymous = RegistryClient::new(options()).unwrap();
    let err = anonymous
        .resolve(&reference(&format!("{host}/secure/app:v1")))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/token") && text.contains("HTTP 401") && text.contains("no credentials"),
        "{text}"
    );

    // Credentials held by a helper Veil does not run: the error says so.
    let helper = client_with_config(
        dir.path(),
        &format!(r#"{{"credHelpers":{{"{host}":"pass"}}}}"#),
    );
    let err = helper
        .resolve(&reference(&format!("{host}/secure/app:v1")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("docker-credential-pass"), "{err}");

    // Wrong password.
    let wrong = client_with_config(
        dir.path(),
        &format!(r#"{{"auths":{{"{host}":{{"username":"alice","password":"nope"}}}}}}"#),
    );
    let err = wrong
        .resolve(&reference(&format!("{host}/secure/app:v1")))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("UNAUTHORIZED: bad credentials"),
        "{err}"
    );
}

#[tokio::test]
async fn redirects_never_forward_authorization_and_reresolve_after_expiry() {
    let registry = Registry::start(None).await;
    let pusher = Pusher::new(registry.base(), None);
    let layer = test_bytes(120_000, 6);
    pusher
        .image("app", "v1", "amd64", std::slice::from_ref(&layer))
        .await;

    let storage_state = Arc::new(ProxyState {
        upstream: registry.base(),
        ..Default::default()
    });
    let storage = proxy(storage_state.clone()).await;
    let front_auth = format!("Basic {}", basic("bob", "pw"));
    let front_state = Arc::new(ProxyState {
        upstream: registry.base(),
        require_authorization: Some(front_auth.clone()),
        redirect_blobs_to: std::sync::Mutex::new(Some(storage.base())),
        ..Default::default()
    });
    let front = proxy(front_state.clone()).await;
    let front_host = front.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let client = client_with_config(
        dir.path(),
        &format!(
            r#"{{"auths":{{"{front_host}":{{"auth":"{}"}}}}}}"#,
            basic("bob", "pw")
        ),
    );

    let image = client
        .resolve(&reference(&format!("{front_host}/app:v1")))
        .await
        .unwrap();
    let blob = client.blob(&image.reference, &image.manifest.layers[0]);
    for range in [0..10u64, 50_000..60_000, 119_000..120_000] {
        let got = blob.read(range.clone()).await.unwrap();
        assert_eq!(got, &layer[range.start as usize..range.end as usize]);
    }
    // Basic auth reached the registry host, never the storage host.
    assert!(front_state
        .seen()
        .iter()
        .any(|s| s.authorization.as_deref() == Some(front_auth.as_str())));
    let stored = storage_state.seen();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(
        stored.iter().all(|s| s.authorization.is_none()),
        "{stored:?}"
    );
    assert!(stored.iter().all(|s| s.range.is_some()), "{stored:?}");
    // The redirect was resolved once and the storage URL reused.
    // Basic auth was learned on the manifest request, so the blob needed a single 307.
    assert_eq!(front_state.blob_requests(), 1);

    // The storage URL "expires": one 403, then the blob is resolved again and read.
    storage_state.expire_next.store(true, Ordering::SeqCst);
    assert_eq!(
        blob.read(70_000..70_100).await.unwrap(),
        &layer[70_000..70_100]
    );
    assert_eq!(front_state.blob_requests(), 2);
    assert_eq!(storage_state.seen().len(), 5);

    // A storage backend that ignores Range: the whole-blob answer is sliced.
    storage_state.ignore_range.store(true, Ordering::SeqCst);
    let metrics = client.metrics();
    let before = metrics.bytes_fetched();
    assert_eq!(blob.read(1_000..1_500).await.unwrap(), &layer[1_000..1_500]);
    let counted = metrics.bytes_fetched() - before;
    assert!(
        (1_500..=layer.len() as u64).contains(&counted),
        "counted {counted}"
    );
    let parts = blob.read_ranges(&[5..6, 100_000..100_010]).await.unwrap();
    assert_eq!(parts[0], &layer[5..6]);
    assert_eq!(parts[1], &layer[100_000..100_010]);
}

#[tokio::test]
async fn mirrors_from_hosts_toml_are_tried_first_by_capability() {
    let registry = Registry::start(None).await;
    let pusher = Pusher::new(registry.base(), None);
    let layer = test_bytes(20_000, 7);
    pusher
        .image("app", "v1", "amd64", std::slice::from_ref(&layer))
        .await;
    let mirror_state = Arc::new(ProxyState {
        upstream: registry.base(),
        ..Default::default()
    });
    let mirror = proxy(mirror_state.clone()).await;
    let dead = free_port();

    let certs = tempfile::tempdir().unwrap();
    let host = registry.host();
    std::fs::create_dir_all(certs.path().join(&host)).unwrap();
    std::fs::write(
        certs.path().join(&host).join("hosts.toml"),
        format!(
            r#"server = "http://{host}"
[host."http://127.0.0.1:{dead}"]
  capabilities = ["pull"]
[host."{}"]
  capabilities = ["pull"]
  [host."{}".header]
    x-veil-test = "mirror-header"
"#,
            mirror.base(),
            mirror.base()
        ),
    )
    .unwrap();
    let client = RegistryClient::new(ClientOptions {
        plain_http: false,
        hosts_dir: Some(certs.path().to_path_buf()),
        retry: RetryPolicy {
            max_attempts: 1,
            ..options().retry
        },
        ..options()
    })
    .unwrap();
    // Resolving a tag needs `resolve`: only the origin has it.
    let image = client
        .resolve(&reference(&format!("{host}/app:v1")))
        .await
        .unwrap();
    assert!(mirror_state.seen().is_empty(), "{:?}", mirror_state.seen());
    // Blobs go to the mirrors in order: the dead one fails, the live one serves.
    let blob = client.blob(&image.reference, &image.manifest.layers[0]);
    assert_eq!(blob.read(100..300).await.unwrap(), &layer[100..300]);
    let seen = mirror_state.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].custom.as_deref(), Some("mirror-header"));
    assert!(
        seen[0].path.starts_with("/v2/app/blobs/sha256:"),
        "{seen:?}"
    );
    // By digest, manifests may come from a pull mirror too.
    let pinned = reference(&format!("{host}/app@{}", image.manifest.digest));
    client.resolve(&pinned).await.unwrap();
    assert!(mirror_state
        .seen()
        .iter()
        .any(|s| s.path.contains("/manifests/sha256:")));
}

#[tokio::test]
async fn tampered_manifests_and_blobs_are_refused() {
    let registry = Registry::start(None).await;
    let pusher = Pusher::new(registry.base(), None);
    let pushed = pusher
        .image("app", "v1", "amd64", &[test_bytes(1000, 8)])
        .await;
    let state = Arc::new(ProxyState {
        upstream: registry.base(),
        ..Default::default()
    });
    let tamper = proxy(state.clone()).await;
    state.tamper_bodies.store(true, Ordering::SeqCst);
    let client = RegistryClient::new(options()).unwrap();
    let host = tamper.addr.to_string();

    // By tag: the bytes do not match the Docker-Content-Digest the registry announced.
    let err = client
        .resolve(&reference(&format!("{host}/app:v1")))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&pushed.manifest_digest), "{err}");
    // By digest, and a whole blob.
    let pinned = reference(&format!("{host}/app@{}", pushed.manifest_digest));
    let err = client.resolve(&pinned).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let err = client
        .fetch_blob(&pinned, &digest(&pushed.config_digest))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("blob {}", pushed.config_digest)),
        "{err}"
    );
    // Untampered, the same requests pass.
    state.tamper_bodies.store(false, Ordering::SeqCst);
    client.resolve(&pinned).await.unwrap();
}

#[tokio::test]
async fn tls_with_a_configured_ca_bundle_hosts_toml_ca_or_skip_verify() {
    let pki = test_pki();
    let registry = Registry::start_tls(&pki.server_cert_pem, &pki.server_key_pem).await;
    let pusher = Pusher::with_ca(registry.base(), None, Some(&pki.ca_pem));
    let layer = test_bytes(10_000, 10);
    pusher
        .image("app", "v1", "amd64", std::slice::from_ref(&layer))
        .await;
    let host = registry.host();
    let app = reference(&format!("{host}/app:v1"));
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let https = ClientOptions {
        plain_http: false,
        retry: RetryPolicy {
            max_attempts: 1,
            ..options().retry
        },
        ..options()
    };

    // An unknown CA is refused, and the error says it is about the certificate.
    let strict = RegistryClient::new(https.clone()).unwrap();
    let err = strict.resolve(&app).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // The CA bundle option.
    let with_bundle = RegistryClient::new(ClientOptions {
        ca_bundle: Some(ca_path.clone()),
        ..https.clone()
    })
    .unwrap();
    let image = with_bundle.resolve(&app).await.unwrap();
    let blob = with_bundle.blob(&image.reference, &image.manifest.layers[0]);
    assert_eq!(blob.read(9_000..10_000).await.unwrap(), &layer[9_000..]);

    // hosts.toml: `ca` relative to the host directory, or `skip_verify`.
    for (name, settings) in [
        ("ca", "ca = \"ca.pem\"\n"),
        ("skip", "skip_verify = true\n"),
    ] {
        let hosts = dir.path().join(name);
        std::fs::create_dir_all(hosts.join(&host)).unwrap();
        std::fs::write(hosts.join(&host).join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(hosts.join(&host).join("hosts.toml"), settings).unwrap();
        let client = RegistryClient::new(ClientOptions {
            hosts_dir: Some(hosts),
            ..https.clone()
        })
        .unwrap();
        let image = client.resolve(&app).await.unwrap();
        let blob = client.blob(&image.reference, &image.manifest.layers[0]);
        assert_eq!(blob.read(0..100).await.unwrap(), &layer[..100], "{name}");
    }

    // Plain HTTP to a TLS registry fails with the registry's answer, not a hang.
    let plain = RegistryClient::new(options()).unwrap();
    let err = plain.resolve(&app).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 400"), "{err}");
}
