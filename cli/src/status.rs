//! `veil status`: reads the daemon's JSON report from its status socket and renders it.

use std::path::Path;

use tokio::io::AsyncReadExt;
use veil_blob::display::{human_bytes as human, short_digest as short};
use veil_image::status::{
    merged_access_list, AccessOrder, StackedLayer, StatusReport, StatusRequest,
};

/// Sends `request` (one JSON line; empty: the report) to the daemon's status socket at
/// `address` and reads its answer.
async fn ask(address: &Path, request: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use tokio::io::AsyncWriteExt;
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
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .with_context(|| format!("writing to {}", address.display()))?;
    let mut body = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut body),
    )
    .await
    .with_context(|| format!("reading status from {}: timed out", address.display()))??;
    Ok(body)
}

/// Reads the status report from the daemon at `address`.
pub async fn fetch(address: &Path) -> anyhow::Result<StatusReport> {
    use anyhow::Context;
    let body = ask(address, "").await?;
    serde_json::from_slice(&body)
        .with_context(|| format!("status from {} is not valid", address.display()))
}

/// Reads the access order of `layer` (a digest, or `all`) from the daemon at `address`.
pub async fn fetch_access_orders(address: &Path, layer: &str) -> anyhow::Result<Vec<AccessOrder>> {
    let request = serde_json::to_string(&StatusRequest {
        access_order: Some(layer.to_string()),
    })?;
    let body = ask(address, &request).await?;
    if let Ok(orders) = serde_json::from_slice::<Vec<AccessOrder>>(&body) {
        if orders.is_empty() {
            anyhow::bail!(
                "the daemon at {} serves no layer {layer}",
                address.display()
            );
        }
        return Ok(orders);
    }
    #[derive(serde::Deserialize)]
    struct Refused {
        error: String,
    }
    match serde_json::from_slice::<Refused>(&body) {
        Ok(r) => anyhow::bail!("{}: {}", address.display(), r.error),
        Err(_) => anyhow::bail!(
            "the access order from {} is not valid (an older daemon?)",
            address.display()
        ),
    }
}

/// Access orders as a list `veil optimize --access-list` reads: one absolute path a
/// line, first touch first, with a comment naming the layers.
pub fn render_access_list(orders: &[AccessOrder]) -> String {
    let mut out = String::new();
    for o in orders {
        out.push_str(&format!(
            "# layer {} ({}, {}): {} files{}\n",
            o.digest,
            o.image,
            o.mode,
            o.files.len(),
            if o.dropped > 0 {
                format!(", {} more not recorded", o.dropped)
            } else {
                String::new()
            }
        ));
    }
    for path in merged_access_list(orders) {
        out.push_str(&path);
        out.push('\n');
    }
    out
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
            "\n{:<20} {:<6} {:>10} {:>10} {:>7} {:>5} {:>10} {:>8}  IMAGE",
            "LAYER", "MODE", "FETCHED", "SIZE", "%", "BAD", "BACKGROUND", "DIFF_ID"
        );
        for l in &report.layers {
            let pct = if l.blob_size > 0 {
                100.0 * l.bytes_fetched as f64 / l.blob_size as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "{:<20} {:<6} {:>10} {:>10} {:>6.1}% {:>5} {:>10} {:>8}  {}",
                short(&l.digest),
                l.mode,
                human(l.bytes_fetched),
                human(l.blob_size),
                pct,
                l.verify_failures,
                l.background_state,
                l.diff_id,
                l.image
            );
        }
    }
    let bad: Vec<_> = report.layers.iter().filter(|l| l.bad.is_some()).collect();
    if !bad.is_empty() {
        let _ = writeln!(
            out,
            "\nNOT HEALTHY: {} layers marked bad (their files give EIO, snapshots on them are refused):",
            bad.len()
        );
        for l in bad {
            let why = l.bad.as_deref().unwrap_or_default();
            let _ = writeln!(out, "  {}  {}: {}", short(&l.digest), l.image, why);
        }
    }
    if !report.failed.is_empty() {
        let _ = writeln!(
            out,
            "\nNOT HEALTHY: {} remote layers could not be mounted again (their files give EIO; retrying):",
            report.failed.len()
        );
        for f in &report.failed {
            let _ = writeln!(
                out,
                "  {}  snapshot {}  {}  failed {} times for {}s: {}",
                short(&f.digest),
                f.snapshot,
                f.image,
                f.attempts,
                f.failing_for_secs,
                f.reason
            );
        }
    }
    render_images(&mut out, report);
    render_containers(&mut out, report);
    if !report.fallbacks.is_empty() {
        let _ = writeln!(out, "\nunpacked by containerd:");
        for f in &report.fallbacks {
            let _ = writeln!(out, "  {}  {}  ({})", short(&f.digest), f.image, f.reason);
        }
    }
    out
}

/// A layer under an image or container: digest, mode, fetched % (or `-`), state.
fn stacked(l: &StackedLayer) -> String {
    let pct = match l.blob_size {
        0 => "-".to_string(),
        size => format!("{:.1}%", 100.0 * l.bytes_fetched as f64 / size as f64),
    };
    let digest = match l.digest.is_empty() {
        true => "(unknown)".to_string(),
        false => short(&l.digest),
    };
    format!("{digest} {} {pct} {}", l.mode, l.state)
}

/// Per image: how many layers are lazy, how much is fetched.
fn render_images(out: &mut String, report: &StatusReport) {
    use std::fmt::Write;
    if report.images.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nIMAGES");
    for i in &report.images {
        let lazy = i
            .layers
            .iter()
            .filter(|l| l.mode == "lazy" || l.mode == "streamed")
            .count();
        let _ = writeln!(
            out,
            "  {}  {}/{} layers lazy, {} of {} fetched",
            i.image,
            lazy,
            i.layers.len(),
            human(i.bytes_fetched),
            human(i.blob_size)
        );
        for l in &i.layers {
            let _ = writeln!(out, "    {}", stacked(l));
        }
    }
}

/// Per container: the layers below its root, top first.
fn render_containers(out: &mut String, report: &StatusReport) {
    use std::fmt::Write;
    if report.containers.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nCONTAINERS");
    for c in &report.containers {
        let image = if c.image.is_empty() {
            "-"
        } else {
            c.image.as_str()
        };
        let _ = writeln!(
            out,
            "  {} ({})  {}  {} layers",
            c.container,
            c.kind,
            image,
            c.layers.len()
        );
        for l in &c.layers {
            let _ = writeln!(out, "    {}", stacked(l));
        }
    }
}

/// Runs `veil status`; with `access_order`, dumps that layer's access order instead.
pub fn run_status(
    address: &Path,
    json: bool,
    access_order: Option<&str>,
) -> std::process::ExitCode {
    let Some(rt) = crate::run::runtime("status") else {
        return std::process::ExitCode::FAILURE;
    };
    match access_order {
        Some(layer) => crate::run::print_report(
            "status",
            rt.block_on(fetch_access_orders(address, layer)),
            json,
            |orders| render_access_list(orders),
        ),
        None => crate::run::print_report("status", rt.block_on(fetch(address)), json, render),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_image::status::{FailedLayerStatus, FallbackStatus, LayerStatus};

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
            failed: vec![FailedLayerStatus {
                snapshot: "sha256:cc".into(),
                digest: "sha256:dd".into(),
                reason: "registry down".into(),
                attempts: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&r);
        assert!(text.contains("NOT HEALTHY"), "{text}");
        assert!(text.contains("registry down"), "{text}");
        assert!(text.contains("sha256:aaaaaaaaaaaa"), "{text}");
        assert!(text.contains("5.0%"), "{text}");
        assert!(text.contains("plain gzip"), "{text}");
        assert_eq!(human(1536), "1.5 KiB");
    }

    #[test]
    fn render_names_a_bad_layer_and_why() {
        let r = StatusReport {
            layers: vec![LayerStatus {
                digest: format!("sha256:{}", "e".repeat(64)),
                image: "127.0.0.1:5000/evil:1".into(),
                diff_id: "mismatch".into(),
                bad: Some("diff_id mismatch: the image config says sha256:x".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!r.healthy());
        let text = render(&r);
        assert!(text.contains("NOT HEALTHY: 1 layers marked bad"), "{text}");
        assert!(
            text.contains("diff_id mismatch: the image config says sha256:x"),
            "{text}"
        );
        assert!(text.contains("mismatch"), "{text}");
    }

    #[tokio::test]
    async fn report_round_trips_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(veil_daemon::status_server::serve(listener, || {
            StatusReport {
                snapshots: 3,
                ..Default::default()
            }
        }));
        let got = fetch(&path).await.unwrap();
        assert_eq!(got.snapshots, 3);
        task.abort();
        let err = fetch(&dir.path().join("nope.sock")).await.unwrap_err();
        assert!(format!("{err:#}").contains("is veil-snapshotter running"));
    }

    struct WithOrders;

    impl veil_daemon::status_server::StatusSource for WithOrders {
        fn report(&self) -> StatusReport {
            StatusReport {
                snapshots: 7,
                ..Default::default()
            }
        }

        fn access_orders(&self, digest: &str) -> Vec<AccessOrder> {
            let file = |path: &str, sequence| veil_image::status::AccessedFileStatus {
                path: path.into(),
                size: 1,
                compressed_bytes: 1,
                sequence,
            };
            let all = vec![
                AccessOrder {
                    digest: "sha256:lower".into(),
                    files: vec![file("bin/sh", 1), file("etc/app.conf", 3)],
                    ..Default::default()
                },
                AccessOrder {
                    digest: "sha256:upper".into(),
                    files: vec![file("app/main.py", 2)],
                    ..Default::default()
                },
            ];
            all.into_iter()
                .filter(|o| digest == "all" || o.digest == digest)
                .collect()
        }
    }

    #[tokio::test]
    async fn access_orders_are_asked_for_and_merged_into_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(veil_daemon::status_server::serve(listener, WithOrders));
        // The report still comes without a request.
        assert_eq!(fetch(&path).await.unwrap().snapshots, 7);
        let all = fetch_access_orders(&path, "all").await.unwrap();
        assert_eq!(all.len(), 2);
        let list = render_access_list(&all);
        let paths: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(paths, ["/bin/sh", "/app/main.py", "/etc/app.conf"]);
        let one = fetch_access_orders(&path, "sha256:upper").await.unwrap();
        assert_eq!(one[0].files[0].path, "app/main.py");
        let err = fetch_access_orders(&path, "sha256:absent")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("serves no layer sha256:absent"),
            "{err:#}"
        );
        // A line that is not a request is answered with an error, not the report.
        let body = ask(&path, "not json").await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("not a status request"));
        task.abort();
    }
}
