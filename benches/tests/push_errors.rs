//! `veil bench`'s push of its sample image against registries that fail: the push ends
//! with an error naming the blob, the registry and its answer (never a panic), after the
//! registry client's retries; and the layer files are pushed whole through a real
//! registry in chunks (a layer larger than the monolithic limit).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use veil_bench::push::push_layer_files;
use veil_bench::sample::LayerFile;
use veil_tests::http::{serve, Handler, Request, Response};

/// A layer file of `len` bytes in `dir`.
fn layer(dir: &std::path::Path, len: usize) -> LayerFile {
    let data = veil_tests::lazy_image::random_bytes(len, 7);
    let path = dir.join("layer.tar.gz");
    std::fs::write(&path, &data).unwrap();
    let digest = format!("sha256:{}", veil_tests::lazy_image::sha256_hex(&data));
    LayerFile {
        path,
        size: len as u64,
        diff_id: digest.clone(),
        digest,
        media_type: veil_tests::lazy_image::GZIP_LAYER,
    }
}

#[tokio::test]
async fn a_registry_failing_uploads_gives_an_error_naming_the_blob_and_its_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = vec![layer(tmp.path(), 1 << 20)];
    let uploads = Arc::new(AtomicU32::new(0));
    let seen = uploads.clone();
    let handler: Handler = Arc::new(move |req: Request| {
        let seen = seen.clone();
        Box::pin(async move {
            if req.method == "HEAD" {
                Response::new(404)
            } else {
                seen.fetch_add(1, Ordering::SeqCst);
                Response::new(500)
                    .header("Content-Type", "application/json")
                    .body(r#"{"errors":[{"code":"UNKNOWN","message":"storage backend exploded"}]}"#)
            }
        })
    });
    let server = serve(handler).await;
    let reference = format!("{}/bench/app:plain", server.addr);
    let err = push_layer_files(&reference, &layers, &|_| {})
        .await
        .expect_err("a registry answering 500 to every upload cannot take the image");
    let msg = format!("{err:#}");
    assert!(msg.contains("pushing blob sha256:"), "{msg}");
    assert!(msg.contains(&reference), "{msg}");
    assert!(msg.contains("500"), "the registry's answer: {msg}");
    assert!(
        uploads.load(Ordering::SeqCst) > 1,
        "a 500 is retried before giving up"
    );
}

#[tokio::test]
async fn no_registry_at_all_gives_an_error_naming_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = vec![layer(tmp.path(), 4096)];
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reference = format!("127.0.0.1:{port}/bench/app:plain");
    let err = push_layer_files(&reference, &layers, &|_| {})
        .await
        .expect_err("nothing listens there");
    let msg = format!("{err:#}");
    assert!(msg.contains(&reference), "{msg}");
    assert!(msg.contains("whether it has blob sha256:"), "{msg}");
}

#[tokio::test]
async fn a_bad_reference_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = vec![layer(tmp.path(), 10)];
    let err = push_layer_files("Not A Reference!", &layers, &|_| {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("image reference"), "{err:#}");
}

#[test]
fn a_large_layer_file_is_pushed_in_chunks_to_a_real_registry() {
    veil_tests::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mut registry =
        veil_tests::local_registry::LocalRegistry::start(&tmp.path().join("registry")).unwrap();
    // Past the client's monolithic limit: PATCHed in chunks, read from the file as sent.
    let len = (veil_registry::push::MONOLITHIC_LIMIT + (3 << 20) + 17) as usize;
    let layers = vec![layer(tmp.path(), len)];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sent = std::sync::Mutex::new(0u64);
    let reference = format!("{}/bench/app:plain", registry.host());
    rt.block_on(push_layer_files(&reference, &layers, &|n| {
        *sent.lock().unwrap() = n
    }))
    .unwrap();
    assert!(
        *sent.lock().unwrap() >= len as u64,
        "progress reached the end"
    );
    // The registry has the blob, byte for byte.
    let url = format!(
        "{}/v2/bench/app/blobs/{}",
        registry.base(),
        layers[0].digest
    );
    let got = rt
        .block_on(async { reqwest::get(&url).await?.bytes().await })
        .unwrap();
    assert_eq!(got.len(), len);
    assert_eq!(
        format!("sha256:{}", veil_tests::lazy_image::sha256_hex(&got)),
        layers[0].digest
    );
    registry.stop();
}
