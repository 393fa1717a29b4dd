//! What an operator sees of a lazy, encrypted image: `veil-snapshotter` with `[metrics]
//! address` on a loopback port, Debian's `docker-registry`, a private containerd, an
//! eStargz image encrypted here (JWE, sealed TOC digests), `veil pull` and containers
//! run with `ctr run --snapshotter veil`.
//!
//! Checked: `/metrics` is scraped before and after a container reads a 4 MiB random file
//! of the top layer: that layer's on-demand bytes grow by at least the file's size (random
//! data does not compress: its compressed chunks are at least as big), the chunk cache
//! misses, the layer's chunk misses, FUSE reads, registry range reads (with their latency
//! histogram) and registry bytes all move; both layers are counted as mounted lazily; the
//! cache budgets are the configured ones; and no file name of the encrypted layers is on
//! the page. `veil status --json` lists the image (2 of 2 layers lazy) and a created
//! container with both layers under it (lazy, serving, fetched bytes), and `veil status`
//! shows them.
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test metrics_status -- --nocapture`.

use anyhow::{anyhow, bail, Context};
use veil_formats::estargz::DEFAULT_TOC_TAIL_BYTES;
use veil_keyprovider::keys::PublicKey;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::encrypted_support::{pull_ok, sealed_encrypt, write_veil_config_with, Keys};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer, LayerFormat,
    BIG_PATH, HELLO_PATH, HELLO_TEXT,
};
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::prometheus::{free_loopback_address, has, scrape, sum};

/// Size of the random file read between the two scrapes.
const BIG_SIZE: usize = 4 << 20;
/// A file of the top layer whose name must never be on the metrics page.
const SECRET_PATH: &str = "/etc/veil-metrics-secret.txt";
/// Plaintext chunk cache budget configured (and expected on the page).
const MEMORY_BUDGET: u64 = 48 << 20;

/// The plain eStargz layers, encrypted to `public` with sealed TOC digests.
fn encrypted_layers(public: &PublicKey) -> anyhow::Result<Vec<Layer>> {
    let mut top = top_entries(random_bytes(BIG_SIZE, 0x3e7));
    top.push(Entry::File(
        SECRET_PATH.trim_start_matches('/').into(),
        b"not to be named\n".to_vec(),
        0o644,
    ));
    let plain = [
        pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
        pack(tar_of(&top)?, LayerFormat::Estargz)?,
    ];
    sealed_encrypt(&plain, public)
}

fn scrape_page(stack: &LazyStack, address: &str) -> anyhow::Result<String> {
    stack.runtime.block_on(scrape(address))
}

/// The page's value of `name` with `labels`, summed.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum(page, name, labels)
}

/// Checks that `name{labels}` grew from `before` to `after` by at least `at_least`.
fn grew(
    before: &str,
    after: &str,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> anyhow::Result<f64> {
    let delta = value(after, name, labels) - value(before, name, labels);
    if delta < at_least || delta <= 0.0 {
        bail!("{name}{labels:?} grew by {delta}, expected at least {at_least} (and > 0)");
    }
    Ok(delta)
}

/// The file names of the image's layers: none may be on the metrics page.
fn check_no_file_names(page: &str) -> anyhow::Result<()> {
    for name in [
        SECRET_PATH,
        BIG_PATH,
        HELLO_PATH,
        "veil-metrics-secret",
        "random.bin",
        "veil-hello",
        "busybox",
    ] {
        if page.contains(name) {
            bail!("the metrics page names {name:?}, a file of an encrypted layer");
        }
    }
    Ok(())
}

/// `veil status --json`: the image with both layers lazy, and container `id` with both
/// layers under it, serving; `veil status` shows both.
fn check_status_views(
    stack: &LazyStack,
    reference: &str,
    id: &str,
    layers: &[Layer],
) -> anyhow::Result<()> {
    let report = stack.status_json()?;
    let image = report["images"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["image"].as_str() == Some(reference)))
        .with_context(|| format!("veil status lists no image {reference}:\n{report:#}"))?;
    let image_layers = image["layers"].as_array().cloned().unwrap_or_default();
    let lazy = image_layers.iter().filter(|l| l["mode"] == "lazy").count();
    if image_layers.len() != layers.len() || lazy != layers.len() {
        bail!(
            "veil status shows image {reference} with {lazy} of {} layers lazy:\n{image:#}",
            image_layers.len()
        );
    }
    let container = report["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["container"].as_str() == Some(id)))
        .with_context(|| format!("veil status lists no container {id}:\n{report:#}"))?;
    let under = container["layers"].as_array().cloned().unwrap_or_default();
    // Top first: the chain from the container's root down.
    let digests: Vec<&str> = under.iter().filter_map(|l| l["digest"].as_str()).collect();
    let expected: Vec<&str> = layers.iter().rev().map(|l| l.digest.as_str()).collect();
    if digests != expected
        || container["image"].as_str() != Some(reference)
        || container["kind"].as_str() != Some("active")
    {
        bail!("veil status shows container {id} wrongly (expected layers {expected:?}):\n{container:#}");
    }
    for l in &under {
        let fetched = l["bytes_fetched"].as_u64().unwrap_or(0);
        let size = l["blob_size"].as_u64().unwrap_or(0);
        if l["mode"] != "lazy" || l["state"] != "serving" || size == 0 || fetched > size {
            bail!("container {id}'s layer is not shown lazy and serving: {l:#}");
        }
    }
    let out = stack.veil_status(false)?;
    let shown = text(&out.stdout);
    for needle in ["IMAGES", "CONTAINERS", id, "2/2 layers lazy"] {
        if !shown.contains(needle) {
            bail!("veil status does not show {needle:?}:\n{shown}");
        }
    }
    eprintln!("[metrics] veil status:\n{}", shown.trim_end());
    Ok(())
}

#[test]
fn metrics_and_status_views_of_an_encrypted_lazy_image() {
    let name = "metrics";
    with_stack(name, |stack| {
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let layers = encrypted_layers(&public)?;
        stack.push("metered", "1", &layers)?;
        let address = free_loopback_address()?;
        write_veil_config_with(
            stack,
            &keys.keys_dir,
            true,
            &format!(
                "[cache]\nmemory_bytes = {MEMORY_BUDGET}\n\n[metrics]\naddress = \"{address}\"\n"
            ),
        )?;
        stack.start()?;
        let reference = stack.image_ref("metered", "1");
        pull_ok(stack, name, &reference)?;
        let hello = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-cat"),
            &["/bin/cat", HELLO_PATH],
        )?;
        if hello != HELLO_TEXT {
            bail!("the container printed {hello:?}");
        }

        let before = scrape_page(stack, &address)?;
        let mounted = value(&before, "veil_mounted_layers", &[("state", "serving")]);
        let lazy = value(&before, "veil_mounted_layers", &[("mode", "lazy")]);
        if mounted != layers.len() as f64 || lazy != mounted {
            bail!(
                "veil_mounted_layers: {mounted} serving, {lazy} lazy; expected {} lazy",
                layers.len()
            );
        }
        if value(&before, "veil_chunk_cache_budget_bytes", &[]) != MEMORY_BUDGET as f64 {
            bail!("veil_chunk_cache_budget_bytes is not the configured {MEMORY_BUDGET}");
        }
        if !has(&before, "veil_disk_cache_budget_bytes") {
            bail!("no disk cache metrics on the page");
        }
        let top = layers[1].digest.as_str();
        if value(&before, "veil_layer_blob_bytes", &[("layer", top)]) != layers[1].size() as f64 {
            bail!(
                "veil_layer_blob_bytes of the top layer is not its size {}",
                layers[1].size()
            );
        }

        // The per-container view, while a container exists.
        let id = format!("{name}-created");
        stack.cd().ctr(&[
            "containers",
            "create",
            "--snapshotter",
            SNAPSHOTTER,
            &reference,
            &id,
        ])?;
        check_status_views(stack, &reference, &id, &layers)?;
        stack.cd().ctr(&["containers", "rm", &id])?;

        // Read the big file: its chunks are fetched on demand.
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-sum"),
            &["/bin/sha256sum", BIG_PATH],
        )?;
        let big_sha = sha256_hex(&random_bytes(BIG_SIZE, 0x3e7));
        if !printed.starts_with(&big_sha) {
            bail!("sha256sum printed {printed:?}, expected {big_sha}");
        }
        let after = scrape_page(stack, &address)?;
        // The first TOC request read the blob's last 128 KiB (footer, TOC, the end of
        // the big file): the read fetches at least the rest of it.
        let size = (BIG_SIZE as u64 - DEFAULT_TOC_TAIL_BYTES) as f64;
        let on_demand = [("layer", top), ("source", "on_demand")];
        let fetched = grew(
            &before,
            &after,
            "veil_layer_fetched_bytes_total",
            &on_demand,
            size,
        )?;
        grew(&before, &after, "veil_registry_bytes_total", &[], size)?;
        grew(&before, &after, "veil_chunk_cache_misses_total", &[], 1.0)?;
        grew(
            &before,
            &after,
            "veil_layer_chunk_misses_total",
            &[("layer", top)],
            1.0,
        )?;
        grew(
            &before,
            &after,
            "veil_layer_range_requests_total",
            &[("layer", top)],
            1.0,
        )?;
        grew(
            &before,
            &after,
            "veil_fuse_operations_total",
            &[("op", "read")],
            1.0,
        )?;
        grew(
            &before,
            &after,
            "veil_fuse_operation_duration_seconds_count",
            &[("op", "read")],
            1.0,
        )?;
        grew(
            &before,
            &after,
            "veil_registry_range_reads_total",
            &[("outcome", "ok")],
            1.0,
        )?;
        grew(
            &before,
            &after,
            "veil_registry_range_read_duration_seconds_count",
            &[],
            1.0,
        )?;
        if value(&after, "veil_layer_verify_failures_total", &[]) != 0.0 {
            bail!("verification failures counted on an untampered image");
        }
        check_no_file_names(&before)?;
        check_no_file_names(&after)?;
        eprintln!(
            "[{name}] reading the {BIG_SIZE}-byte file fetched {fetched} bytes on demand; page after:\n{}",
            after
                .lines()
                .filter(|l| !l.starts_with('#') && (l.starts_with("veil_layer_fetched") || l.starts_with("veil_mounted") || l.starts_with("veil_chunk_cache")))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    });
}
