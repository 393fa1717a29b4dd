//! `veil status`: what the daemon is serving, as a JSON report on a unix socket.
//!
//! The daemon listens on a second socket (config `status_address`); a client connects
//! and reads one JSON [`StatusReport`], then the connection closes. Nothing secret is in
//! the report: layer digests, image references, counters.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One layer Veil serves lazily.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStatus {
    /// Layer blob digest.
    pub digest: String,
    /// Image the layer was resolved for.
    pub image: String,
    /// How it is served: `lazy` (chunks fetched on demand), or `streamed` (an encrypted
    /// layer fetched whole and verified before it is served).
    pub mode: String,
    /// Size of the layer blob.
    pub blob_size: u64,
    /// Bytes of it fetched from the registry so far.
    pub bytes_fetched: u64,
    /// Range requests sent for it.
    pub range_requests: u64,
    /// Chunks served from the plaintext cache.
    pub chunk_hits: u64,
    /// Chunks fetched and decoded.
    pub chunks_fetched: u64,
    /// Chunks that failed verification (served as EIO).
    pub verify_failures: u64,
    /// Bytes of the blob the background fetch has in the disk cache.
    pub background_done: u64,
    /// State of the background fetch: off, running, complete, cancelled, failed, skipped.
    pub background_state: String,
}

/// A layer containerd unpacked itself because Veil could not serve it lazily.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackStatus {
    /// Layer blob digest.
    pub digest: String,
    /// Image it belongs to.
    pub image: String,
    /// Why it was not served lazily.
    pub reason: String,
}

/// The plaintext chunk cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// Bytes held.
    pub bytes: u64,
    /// Byte budget.
    pub budget: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that missed.
    pub misses: u64,
}

/// The disk cache of blob bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCacheStatus {
    /// Bytes held.
    pub bytes: u64,
    /// Byte budget.
    pub budget: u64,
    /// Bytes read answered from disk.
    pub bytes_from_disk: u64,
    /// Bytes read that came from the network.
    pub bytes_from_network: u64,
}

/// The daemon's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Veil's version.
    pub version: String,
    /// Root directory.
    pub root: String,
    /// Snapshots on record.
    pub snapshots: usize,
    /// Of which served remotely (lazily).
    pub remote_snapshots: usize,
    /// Layers served lazily.
    pub layers: Vec<LayerStatus>,
    /// Layers left to containerd.
    pub fallbacks: Vec<FallbackStatus>,
    /// Bytes fetched from registries in all (manifests, TOCs, chunks).
    pub registry_bytes_fetched: u64,
    /// The plaintext cache.
    pub cache: CacheStatus,
    /// The disk cache, when enabled.
    pub disk_cache: Option<DiskCacheStatus>,
}

/// Answers status requests on `listener` with whatever `report` returns, until the task
/// is dropped.
pub async fn serve<F>(listener: tokio::net::UnixListener, report: F)
where
    F: Fn() -> StatusReport + Send + Sync + 'static,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let body = match serde_json::to_vec_pretty(&report()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not encode status");
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Reads the status report from the daemon at `address`.
pub async fn fetch(address: &Path) -> anyhow::Result<StatusReport> {
    use anyhow::Context;
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::UnixStream::connect(address),
    )
    .await
    .with_context(|| format!("connecting to {}: timed out", address.display()))?
    .with_context(|| {
        format!(
            "connecting to {} (is veil-snapshotter running? see `status_address` in its config)",
            address.display()
        )
    })?;
    let mut body = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut body),
    )
    .await
    .with_context(|| format!("reading status from {}: timed out", address.display()))??;
    serde_json::from_slice(&body)
        .with_context(|| format!("status from {} is not valid", address.display()))
}

/// The report as a human-readable table.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "veil {}  root {}", report.version, report.root);
    let _ = writeln!(
        out,
        "snapshots: {} ({} served lazily)   registry: {} fetched   plaintext cache: {} / {} ({} hits, {} misses)",
        report.snapshots,
        report.remote_snapshots,
        human(report.registry_bytes_fetched),
        human(report.cache.bytes),
        human(report.cache.budget),
        report.cache.hits,
        report.cache.misses
    );
    if let Some(d) = &report.disk_cache {
        let _ = writeln!(
            out,
            "disk cache: {} / {} ({} read from disk, {} from the network)",
            human(d.bytes),
            human(d.budget),
            human(d.bytes_from_disk),
            human(d.bytes_from_network)
        );
    }
    if !report.layers.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<20} {:<6} {:>10} {:>10} {:>7} {:>5} {:>10}  IMAGE",
            "LAYER", "MODE", "FETCHED", "SIZE", "%", "BAD", "BACKGROUND"
        );
        for l in &report.layers {
            let pct = if l.blob_size > 0 {
                100.0 * l.bytes_fetched as f64 / l.blob_size as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "{:<20} {:<6} {:>10} {:>10} {:>6.1}% {:>5} {:>10}  {}",
                short(&l.digest),
                l.mode,
                human(l.bytes_fetched),
                human(l.blob_size),
                pct,
                l.verify_failures,
                l.background_state,
                l.image
            );
        }
    }
    if !report.fallbacks.is_empty() {
        let _ = writeln!(out, "\nunpacked by containerd:");
        for f in &report.fallbacks {
            let _ = writeln!(out, "  {}  {}  ({})", short(&f.digest), f.image, f.reason);
        }
    }
    out
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

/// Bytes in binary units.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_layers_and_fallbacks() {
        let r = StatusReport {
            version: "0.1.0".into(),
            layers: vec![LayerStatus {
                digest: format!("sha256:{}", "a".repeat(64)),
                image: "127.0.0.1:5000/app:1".into(),
                mode: "lazy".into(),
                blob_size: 1000,
                bytes_fetched: 50,
                ..Default::default()
            }],
            fallbacks: vec![FallbackStatus {
                digest: "sha256:bb".into(),
                image: "x".into(),
                reason: "plain gzip".into(),
            }],
            ..Default::default()
        };
        let text = render(&r);
        assert!(text.contains("sha256:aaaaaaaaaaaa"), "{text}");
        assert!(text.contains("5.0%"), "{text}");
        assert!(text.contains("plain gzip"), "{text}");
        assert_eq!(human(1536), "1.5 KiB");
    }

    #[tokio::test]
    async fn report_round_trips_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(serve(listener, || StatusReport {
            snapshots: 3,
            ..Default::default()
        }));
        let got = fetch(&path).await.unwrap();
        assert_eq!(got.snapshots, 3);
        task.abort();
        let err = fetch(&dir.path().join("nope.sock")).await.unwrap_err();
        assert!(format!("{err:#}").contains("is veil-snapshotter running"));
    }
}
