//! Mirrors that misbehave the way real ones do, in front of Debian's real
//! `docker-registry` (the origin), named in a `hosts.toml`:
//!
//! - a cold pull-through mirror (it answers a range request with the whole blob, as
//!   distribution's proxy mode does for a blob it does not hold yet): a read near the
//!   blob's start is sliced from that answer; a read far into the blob drops it and is
//!   served by the origin with a range, and reads of that blob skip the mirror for a
//!   while instead of starting another whole-blob copy;
//! - a mirror that served a blob and then goes down: the next read of that blob falls
//!   back to the origin in seconds, not after the read's whole outage budget.
//!
//! The end-to-end test with a real pull-through `docker-registry` is
//! tests/tests/mirror_pull.rs.

mod registry_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry_support::client::fast_options;
use registry_support::http::Server;
use registry_support::proxy::{one_image_behind_proxy, ProxyState};
use registry_support::registry::Registry;
use std::sync::atomic::Ordering;
use veil_registry::blob::{COLD_MIRROR_FIRST_BYPASS, COLD_MIRROR_PREFIX};
use veil_registry::{ClientOptions, Reference, RegistryBlob, RegistryClient};

/// Bigger than [`COLD_MIRROR_PREFIX`], so a read can lie beyond it.
const LAYER_SIZE: usize = 3 << 20;

/// The origin with one image, a recording proxy as its mirror (`ignore_range`: a cold
/// pull-through cache), and a client reading through `hosts.toml` in `dir` with an
/// outage budget of `read_retry`.
async fn setup(
    dir: &Path,
    ignore_range: bool,
    read_retry: Duration,
) -> (Registry, Arc<ProxyState>, Server, RegistryBlob, Vec<u8>) {
    let (registry, state, mirror, layer) = one_image_behind_proxy(LAYER_SIZE, 15).await;
    state.ignore_range.store(ignore_range, Ordering::SeqCst);
    let host = registry.host();
    std::fs::create_dir_all(dir.join(&host)).unwrap();
    std::fs::write(
        dir.join(&host).join("hosts.toml"),
        format!(
            "server = \"http://{host}\"\n[host.\"{}\"]\n  capabilities = [\"pull\"]\n",
            mirror.base()
        ),
    )
    .unwrap();
    let client = RegistryClient::new(ClientOptions {
        plain_http: false,
        operation_timeout: ClientOptions::default().operation_timeout,
        hosts_dir: Some(dir.to_path_buf()),
        read_retry,
        ..fast_options()
    })
    .unwrap();
    let image = client
        .resolve(&Reference::parse(&format!("{host}/app:v1")).unwrap())
        .await
        .unwrap();
    let blob = client.blob(&image.reference, &image.manifest.layers[0]);
    (registry, state, mirror, blob, layer)
}

fn blob_requests(registry: &Registry) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/app/blobs/"))
        .count()
}

#[tokio::test]
async fn a_cold_mirror_is_read_near_the_start_and_bypassed_beyond() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, state, _mirror, blob, layer) = setup(dir.path(), true, Duration::ZERO).await;
    let origin_before = blob_requests(&registry);

    // Near the start: sliced from the mirror's whole-blob answer; the mirror is then
    // skipped for a while (the origin serves the next read).
    assert_eq!(blob.read(100..300).await.unwrap(), &layer[100..300]);
    assert_eq!(state.blob_requests(), 1);
    assert_eq!(blob.read(400..500).await.unwrap(), &layer[400..500]);
    assert_eq!(state.blob_requests(), 1);
    tokio::time::sleep(COLD_MIRROR_FIRST_BYPASS + Duration::from_millis(100)).await;

    // Far into the blob: the mirror's whole-blob answer is dropped, the origin serves it.
    let far = LAYER_SIZE as u64 - 1000..LAYER_SIZE as u64 - 10;
    assert!(far.end > COLD_MIRROR_PREFIX);
    let t = Instant::now();
    let got = blob.read(far.clone()).await.unwrap();
    assert_eq!(got, &layer[far.start as usize..far.end as usize]);
    assert_eq!(state.blob_requests(), 2, "{:?}", state.seen());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // While the mirror fills, reads of this blob skip it: no new whole-blob copy.
    let mid = 2_000_000..2_000_050u64;
    assert_eq!(
        blob.read(mid.clone()).await.unwrap(),
        &layer[mid.start as usize..mid.end as usize]
    );
    assert_eq!(state.blob_requests(), 2, "{:?}", state.seen());
    // The mirror forwarded its two requests (without Range) and the origin answered
    // the three bypassed reads itself: five blob GETs at the origin.
    assert_eq!(
        blob_requests(&registry) - origin_before,
        5,
        "{}",
        registry.log()
    );
    let served_ranges = registry
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/app/blobs/") && l.contains("\" 206 "))
        .count();
    assert_eq!(served_ranges, 3, "{}", registry.log());

    // Once the (doubled) bypass is over the mirror is asked again (still cold: bypassed).
    tokio::time::sleep(2 * COLD_MIRROR_FIRST_BYPASS + Duration::from_millis(100)).await;
    assert_eq!(blob.read(mid.clone()).await.unwrap().len(), 50);
    assert_eq!(state.blob_requests(), 3, "{:?}", state.seen());
    assert_eq!(blob.read(mid).await.unwrap().len(), 50);
    assert_eq!(state.blob_requests(), 3, "{:?}", state.seen());
}

#[tokio::test]
async fn a_mirror_that_goes_down_falls_back_to_the_origin_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // A budget far longer than the fallback may take.
    let (registry, state, mirror, blob, layer) =
        setup(dir.path(), false, Duration::from_secs(60)).await;
    assert_eq!(blob.read(10..20).await.unwrap(), &layer[10..20]);
    assert_eq!(state.blob_requests(), 1);
    let origin_before = blob_requests(&registry);

    drop(mirror);
    let t = Instant::now();
    assert_eq!(
        blob.read(1_000_000..1_000_100).await.unwrap(),
        &layer[1_000_000..1_000_100]
    );
    let fallback = t.elapsed();
    assert!(
        fallback < Duration::from_secs(10),
        "fallback took {fallback:?}"
    );
    assert_eq!(
        blob_requests(&registry) - origin_before,
        1,
        "{}",
        registry.log()
    );

    // The origin is remembered for this blob: the next read does not wait for the mirror.
    let t = Instant::now();
    assert_eq!(blob.read(5..9).await.unwrap(), &layer[5..9]);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(state.blob_requests(), 1);
}
