//! Pushing with the registry client (`veil convert`'s destination) against Debian's real
//! `docker-registry` (started per test on a free loopback port, killed by PID at the
//! end): blob existence (`HEAD`), a small blob in one `PUT`, a large one in `PATCH`
//! chunks, a manifest pushed by tag and read back through `resolve`, a digest the
//! registry rejects, and token auth asking for the `repository:<name>:pull,push` scope.

mod registry_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use registry_support::registry::{test_bytes, Registry, TokenAuth};
use registry_support::token::{token_server, Issuer, ISSUER, SERVICE};
use veil_registry::push::{BlobBody, MONOLITHIC_LIMIT};
use veil_registry::{
    ClientOptions, CredentialsSource, Digest, Reference, RegistryClient, RetryPolicy,
};

fn options() -> ClientOptions {
    ClientOptions {
        plain_http: true,
        credentials: CredentialsSource::Anonymous,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        operation_timeout: Duration::from_secs(60),
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(10),
        },
        ..ClientOptions::default()
    }
}

/// Pushes `config` and `layers` and an OCI manifest naming them as `reference`.
async fn push_image(
    client: &RegistryClient,
    reference: &Reference,
    config: &[u8],
    layers: &[Vec<u8>],
) -> Digest {
    let mut descs = Vec::new();
    for blob in std::iter::once(config).chain(layers.iter().map(Vec::as_slice)) {
        let digest = Digest::sha256_of(blob);
        if !client.blob_exists(reference, &digest).await.unwrap() {
            client
                .push_blob(reference, &digest, BlobBody::Bytes(blob), &|_| {})
                .await
                .unwrap();
        }
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest.to_string(),
            "size": blob.len(),
        }));
    }
    let mut config_desc = descs.remove(0);
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": descs,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    client
        .push_manifest(
            reference,
            "application/vnd.oci.image.manifest.v1+json",
            &bytes,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn pushes_blobs_whole_and_in_chunks_then_the_manifest() {
    let registry = Registry::start(None).await;
    let client = RegistryClient::new(options()).unwrap();
    let reference = Reference::parse(&format!("{}/conv/app:v1", registry.host())).unwrap();

    let small = test_bytes(100_000, 1);
    let small_digest = Digest::sha256_of(&small);
    assert!(!client.blob_exists(&reference, &small_digest).await.unwrap());

    // A large blob from a file: more than one PATCH.
    let big = test_bytes((MONOLITHIC_LIMIT + 5_000_000) as usize, 2);
    let big_digest = Digest::sha256_of(&big);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    std::fs::write(&path, &big).unwrap();
    let reported = AtomicU64::new(0);
    client
        .push_blob(
            &reference,
            &big_digest,
            BlobBody::File {
                path: &path,
                size: big.len() as u64,
            },
            &|n| reported.store(n, Ordering::SeqCst),
        )
        .await
        .unwrap();
    assert_eq!(reported.load(Ordering::SeqCst), big.len() as u64);
    assert!(client.blob_exists(&reference, &big_digest).await.unwrap());
    let log = registry.log();
    assert!(
        log.matches("\"PATCH /v2/conv/app/blobs/uploads/").count() >= 2,
        "a large blob goes up in chunks:\n{log}"
    );

    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest_digest =
        push_image(&client, &reference, config, &[small.clone(), big.clone()]).await;
    assert!(client.blob_exists(&reference, &small_digest).await.unwrap());

    // Read back through the pull side.
    let image = client.resolve(&reference).await.unwrap();
    assert_eq!(image.manifest.digest, manifest_digest);
    assert_eq!(image.manifest.layers.len(), 2);
    let blob = client.blob(&reference, &image.manifest.layers[1]);
    assert_eq!(
        blob.read(MONOLITHIC_LIMIT - 10..MONOLITHIC_LIMIT + 10)
            .await
            .unwrap(),
        &big[(MONOLITHIC_LIMIT - 10) as usize..(MONOLITHIC_LIMIT + 10) as usize]
    );
    assert_eq!(
        client.fetch_blob(&reference, &small_digest).await.unwrap(),
        small
    );

    // A blob whose bytes do not match the digest is refused by the registry, clearly.
    let wrong = Digest::sha256_of(b"something else");
    let err = client
        .push_blob(&reference, &wrong, BlobBody::Bytes(b"these bytes"), &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("upload of blob"), "{err}");
    assert!(!client.blob_exists(&reference, &wrong).await.unwrap());
}

#[tokio::test]
async fn token_auth_asks_for_the_push_scope() {
    let issuer = Arc::new(Issuer::new());
    let (tokens, log) = token_server(issuer.clone(), Some(("alice", "s3cret"))).await;
    let auth = TokenAuth {
        realm: format!("{}/token", tokens.base()),
        service: SERVICE.to_string(),
        issuer: ISSUER.to_string(),
        root_cert_pem: issuer.cert_pem.clone(),
    };
    let registry = Registry::start(Some(&auth)).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        &config_path,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{basic}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let client = RegistryClient::new(ClientOptions {
        credentials: CredentialsSource::DockerConfigFile(config_path),
        ..options()
    })
    .unwrap();
    let reference = Reference::parse(&format!("{}/secure/conv:v2", registry.host())).unwrap();
    let layer = test_bytes(50_000, 3);
    let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_image(&client, &reference, config, &[layer]).await;
    let scopes = log.scopes.lock().unwrap().clone();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains(&"repository:secure/conv:pull,push".to_string())),
        "{scopes:?}"
    );
    // One token serves every push request of the repository.
    assert_eq!(log.requests.load(Ordering::SeqCst), 1, "{scopes:?}");
    let image = client.resolve(&reference).await.unwrap();
    assert_eq!(image.manifest.layers.len(), 1);
}
