//! Tests of `background.rs`.

use std::time::Duration;

use super::*;
use crate::disk_cache::tests::{open_cache, pattern, Counting};

fn cached_blob(len: usize, budget: u64) -> (tempfile::TempDir, Arc<Counting>, Arc<CachedBlob>) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open_cache(dir.path(), budget).unwrap();
    let counting = Counting::new(pattern(len, 9));
    let cached = disk.wrap("sha256:bg", counting.clone());
    (dir, counting, cached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_caches_the_whole_blob() {
    let (_dir, counting, cached) = cached_blob(1_000_000, 4 << 20);
    cached.read_range(100_000..200_000).await.unwrap();
    let options = BackgroundOptions {
        range_size: 128 << 10,
        ..BackgroundOptions::default()
    };
    let fetch = background_fetch(
        &tokio::runtime::Handle::current(),
        cached.clone(),
        options,
        CancellationToken::new(),
    );
    let progress = fetch.progress().clone();
    assert_eq!(fetch.wait().await, FetchState::Complete);
    assert_eq!(progress.state(), FetchState::Complete);
    assert_eq!((progress.done(), progress.total()), (1_000_000, 1_000_000));
    assert_eq!(cached.present_bytes(), 1_000_000);
    // What was cached already was not fetched again.
    let fetched: u64 = counting.requests().iter().map(|r| r.end - r.start).sum();
    assert_eq!(fetched, 1_000_000);
    assert_eq!(progress.fetched(), 900_000);
    let n = counting.requests().len();
    cached.read_range(0..1_000_000).await.unwrap();
    assert_eq!(counting.requests().len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_respects_the_rate_limit() {
    let (_dir, _counting, cached) = cached_blob(300 << 10, 4 << 20);
    let options = BackgroundOptions {
        rate_limit: Some(RateLimiter::new(600 << 10)), // 0.5 s for the blob
        ..BackgroundOptions::default()
    };
    let started = Instant::now();
    let fetch = background_fetch(
        &tokio::runtime::Handle::current(),
        cached.clone(),
        options.clone(),
        CancellationToken::new(),
    );
    assert_eq!(fetch.wait().await, FetchState::Complete);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert_eq!(cached.present_bytes(), 300 << 10);

    // Two fetches sharing the limiter (and one slot) share the rate: 300 KiB more
    // take another 0.5 s or so.
    let options = BackgroundOptions {
        rate_limit: Some(RateLimiter::new(600 << 10)),
        slots: Some(Arc::new(tokio::sync::Semaphore::new(1))),
        ..options
    };
    let (_d1, _c1, one) = cached_blob(150 << 10, 4 << 20);
    let (_d2, _c2, two) = cached_blob(150 << 10, 4 << 20);
    let started = Instant::now();
    let runtime = tokio::runtime::Handle::current();
    let a = background_fetch(&runtime, one, options.clone(), CancellationToken::new());
    let b = background_fetch(&runtime, two, options, CancellationToken::new());
    assert_eq!(a.wait().await, FetchState::Complete);
    assert_eq!(b.wait().await, FetchState::Complete);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_stops_when_cancelled() {
    let (_dir, counting, cached) = cached_blob(4 << 20, 8 << 20);
    let options = BackgroundOptions {
        rate_limit: Some(RateLimiter::new(256 << 10)), // 16 s for the blob
        ..BackgroundOptions::default()
    };
    let cancel = CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    let fetch = background_fetch(
        &tokio::runtime::Handle::current(),
        cached.clone(),
        options,
        cancel,
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(guard); // as when the mount goes away
    let progress = fetch.progress().clone();
    let state = tokio::time::timeout(Duration::from_secs(5), fetch.wait())
        .await
        .expect("stops promptly");
    assert_eq!(state, FetchState::Cancelled);
    assert!(progress.done() < progress.total());
    let n = counting.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counting.requests().len(), n, "no requests after cancelling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_gives_up_after_retries() {
    let (_dir, counting, cached) = cached_blob(100_000, 1 << 20);
    counting.fail(100);
    let options = BackgroundOptions {
        attempts: 3,
        retry_delay: Duration::from_millis(10),
        ..BackgroundOptions::default()
    };
    let fetch = background_fetch(
        &tokio::runtime::Handle::current(),
        cached.clone(),
        options,
        CancellationToken::new(),
    );
    assert_eq!(fetch.wait().await, FetchState::Failed);
    assert_eq!(counting.requests().len(), 3);
    // A transient failure is retried.
    counting.fail(0);
    counting.fail(1);
    let fetch = background_fetch(
        &tokio::runtime::Handle::current(),
        cached.clone(),
        BackgroundOptions {
            retry_delay: Duration::from_millis(10),
            ..BackgroundOptions::default()
        },
        CancellationToken::new(),
    );
    assert_eq!(fetch.wait().await, FetchState::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_skips_blobs_larger_than_the_cache() {
    let (_dir, counting, cached) = cached_blob(100_000, 50_000);
    let fetch = background_fetch(
        &tokio::runtime::Handle::current(),
        cached,
        BackgroundOptions::default(),
        CancellationToken::new(),
    );
    assert_eq!(fetch.wait().await, FetchState::Skipped);
    assert!(counting.requests().is_empty());
}
