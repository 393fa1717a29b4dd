//! Streaming range reads ([`veil_blob::BlobSource::stream_range`]) against Debian's real
//! `docker-registry`, through a loopback proxy that can cut a blob's body midway: the
//! pieces make up the range exactly; a body cut once is resumed from where it broke
//! (the rest asked for, nothing handed up twice); a body cut every time ends the stream
//! with a clear error after the bytes that did arrive, within bounded time.

mod registry_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use registry_support::client::fast_options;
use registry_support::http::Server;
use registry_support::proxy::{one_image_behind_proxy, ProxyState};
use registry_support::registry::Registry;
use veil_blob::BlobSource;
use veil_registry::blob::stream::MAX_STREAM_RESUMES;
use veil_registry::{Reference, RegistryBlob, RegistryClient};

const LAYER_SIZE: usize = 400_000;

/// The registry with one image, the proxy in front of it, and its layer read through
/// the proxy.
async fn setup() -> (Registry, Arc<ProxyState>, Server, RegistryBlob, Vec<u8>) {
    let (registry, state, front, layer) = one_image_behind_proxy(LAYER_SIZE, 7).await;
    let client = RegistryClient::new(fast_options()).unwrap();
    let reference = Reference::parse(&format!("{}/app:v1", front.addr)).unwrap();
    let image = client.resolve(&reference).await.unwrap();
    let blob = client.blob(&image.reference, &image.manifest.layers[0]);
    (registry, state, front, blob, layer)
}

/// Everything the stream of `range` hands up before it ends, and its error if any.
async fn drain(blob: &RegistryBlob, range: std::ops::Range<u64>) -> (Vec<u8>, Option<String>) {
    let mut stream = blob.stream_range(range);
    let mut got = Vec::new();
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(piece) => got.extend_from_slice(&piece),
            Err(err) => return (got, Some(format!("{err:#}"))),
        }
    }
    (got, None)
}

fn blob_ranges(state: &ProxyState) -> Vec<String> {
    state
        .seen()
        .into_iter()
        .filter(|s| s.path.contains("/blobs/"))
        .filter_map(|s| s.range)
        .collect()
}

#[tokio::test]
async fn a_streamed_range_is_the_exact_bytes_and_a_cut_body_resumes_where_it_broke() {
    let (_registry, state, _front, blob, layer) = setup().await;
    for range in [0..LAYER_SIZE as u64, 12_345..300_001, 399_999..400_000] {
        let (got, error) = drain(&blob, range.clone()).await;
        assert_eq!(error, None);
        assert!(
            got == layer[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }

    // The next answer is cut after 100,000 body bytes: the rest is asked for again.
    state.seen.lock().unwrap().clear();
    state.cut_blob_bytes.store(100_000, Ordering::SeqCst);
    state.cut_blob_gets.store(1, Ordering::SeqCst);
    let range = 1000..301_000u64;
    let read = tokio::time::timeout(Duration::from_secs(60), drain(&blob, range.clone()));
    let (got, error) = read.await.expect("the stream hung");
    assert_eq!(error, None);
    assert!(got == layer[1000..301_000], "{} bytes", got.len());
    assert_eq!(
        blob_ranges(&state),
        vec![
            "bytes=1000-300999".to_string(),
            "bytes=101000-300999".to_string()
        ]
    );
}

#[tokio::test]
async fn a_body_cut_every_time_ends_the_stream_with_a_clear_error() {
    let (_registry, state, _front, blob, layer) = setup().await;
    state.cut_blob_bytes.store(1000, Ordering::SeqCst);
    state.cut_blob_gets.store(usize::MAX, Ordering::SeqCst);
    let read = tokio::time::timeout(Duration::from_secs(60), drain(&blob, 0..200_000));
    let (got, error) = read.await.expect("the stream hung");
    let error = error.expect("a body cut every time must fail the stream");
    assert!(error.contains("body"), "{error}");
    // What did arrive was handed up, in order, once.
    let rounds = MAX_STREAM_RESUMES as usize + 1;
    assert_eq!(got.len(), 1000 * rounds);
    assert!(got == layer[..got.len()]);
    assert_eq!(blob_ranges(&state).len(), rounds);
}
