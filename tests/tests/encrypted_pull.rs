//! Encrypted images pulled lazily, end to end: Debian's `docker-registry` on loopback,
//! eStargz and zstd:chunked images built here (busybox-static and small files in one
//! layer; a 64 MiB random file and a small secret file in another) and pushed, then
//! encrypted by **skopeo** 1.9.3 (`--encryption-key jwe:pub.pem`, registry to registry) or
//! by Veil's own key provider (sealed TOC digest, no TOC annotation in the manifest).
//! Veil's snapshotter (with `[decryption] keys_dir`) behind a private containerd,
//! `veil pull`, and containers run with `ctr run --snapshotter veil`.
//!
//! Checked: the layers are served lazily (pull output, daemon log, `veil status`); a
//! container reads the small file exactly while the registry has served well under 10 %
//! of the layer bytes; `sha256sum` of the big file matches; without the private key the
//! pull fails naming the layer, the recipients and the key files tried, and leaves no
//! image (with the key but `require_sealed_toc`, the layers are streamed and verified
//! whole instead); a wrong sealed TOC digest gets the layer refused; and no plaintext reaches the
//! disk: Veil's root (disk cache included) and containerd's directories are searched for the
//! secret text, windows of the big file and windows of the plaintext layer blobs, while a
//! window of the ciphertext must be found in Veil's disk cache (so the search can see).
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static, FUSE, skopeo and
//! openssl. Run with `cargo test -p veil-tests --test encrypted_pull -- --nocapture`.

use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use veil_formats::estargz::TOC_DIGEST_ANNOTATION;
use veil_formats::zstdchunked::MANIFEST_POSITION_ANNOTATION;
use veil_keyprovider::keys::PublicKey;
use veil_keyprovider::ocicrypt::{ANNOTATION_KEYS_PREFIX, ANNOTATION_PUBOPTS};
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::encrypted_support::{
    check_no_key_in_logs, check_no_plaintext, ocicrypt_encrypt, pull_fails, pull_ok,
    registry_manifest, restart_veil, scan_tree, skopeo_encrypt, stored_blob, windows,
    write_veil_config, Desc, Keys, Needles, READ_CHUNK,
};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer, LayerFormat,
    BIG_PATH, HELLO_PATH, HELLO_TEXT,
};
use veil_tests::lazy_stack::{lines_with, status_layer, with_stack, LazyStack};

/// Size of the big random file.
const BIG_SIZE: usize = 64 << 20;
/// A small file in the big layer whose text is unique: it must never be found on disk.
const SECRET_PATH: &str = "/etc/veil-secret.txt";
const SECRET_TEXT: &str =
    "veil-enc marker 5c1d8e2f9a47b3e6: plaintext of an encrypted layer, never on disk\n";

// ---------------------------------------------------------------------------------------
// Keys, images, encryption.

/// The plain two-layer image: busybox and small files; the big random file, a small
/// file and the secret file.
struct PlainImage {
    layers: Vec<Layer>,
    big: Vec<u8>,
}

impl PlainImage {
    fn build(format: LayerFormat) -> anyhow::Result<Self> {
        let big = random_bytes(BIG_SIZE, 0xe5c0_5eed_0bad_cafe);
        let mut top = top_entries(big.clone());
        top.push(secret_entry());
        let layers = vec![
            pack(tar_of(&base_entries()?)?, format)?,
            pack(tar_of(&top)?, format)?,
        ];
        Ok(Self { layers, big })
    }

    /// What must never be found on disk: the secret text, windows of the big file and
    /// windows of the plaintext layer blobs.
    fn needles(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![("secret text".to_string(), SECRET_TEXT.as_bytes().to_vec())];
        out.extend(windows("big file", &self.big, 16));
        for (i, layer) in self.layers.iter().enumerate() {
            out.extend(windows(
                &format!("plaintext blob of layer {}", i + 1),
                &layer.blob,
                8,
            ));
        }
        out
    }
}

fn secret_entry() -> Entry {
    Entry::File(
        SECRET_PATH.trim_start_matches('/').into(),
        SECRET_TEXT.into(),
        0o644,
    )
}

/// Checks what skopeo made of `plain`: same sizes, `+encrypted` media types, every
/// original annotation kept, the ocicrypt annotations added.
fn check_skopeo_kept(name: &str, plain: &[Layer], enc: &[Desc]) -> anyhow::Result<()> {
    if plain.len() != enc.len() {
        bail!("skopeo wrote {} layers for {}", enc.len(), plain.len());
    }
    let mut problems = Vec::new();
    for (i, (p, e)) in plain.iter().zip(enc).enumerate() {
        let n = i + 1;
        if e.media_type != format!("{}+encrypted", p.media_type) {
            problems.push(format!("layer {n}: media type {:?}", e.media_type));
        }
        if e.size != p.size() {
            problems.push(format!(
                "layer {n}: blob size {} (plain {})",
                e.size,
                p.size()
            ));
        }
        for (k, v) in &p.annotations {
            match e.annotations.get(k) {
                Some(got) if got == v => {}
                Some(got) => {
                    problems.push(format!("layer {n}: annotation {k} = {got:?}, was {v:?}"))
                }
                None => problems.push(format!("layer {n}: annotation {k} dropped")),
            }
        }
        if !e.annotations.contains_key(ANNOTATION_PUBOPTS)
            || !e
                .annotations
                .contains_key(&format!("{ANNOTATION_KEYS_PREFIX}jwe"))
        {
            problems.push(format!(
                "layer {n}: no ocicrypt jwe annotations: {:?}",
                e.annotations.keys()
            ));
        }
        eprintln!(
            "[{name}] skopeo layer {n}: {} {} bytes (plain {} {} bytes); annotations {:?}",
            e.media_type,
            e.size,
            p.media_type,
            p.size(),
            e.annotations.keys().collect::<Vec<_>>()
        );
    }
    if !problems.is_empty() {
        bail!(
            "skopeo 1.9.3 did not keep the layers as Veil needs them:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The stack.

/// Checks the pull output says layer `index` (1-based, of `count`) with `digest` was
/// served lazily, and the daemon log agrees.
fn check_lazy(
    stack: &LazyStack,
    stdout: &str,
    index: usize,
    count: usize,
    digest: &str,
) -> anyhow::Result<()> {
    let line = format!("layer {index}/{count} {digest}");
    if lines_with(stdout, &[&line, "lazy"]).is_empty() {
        bail!("veil pull did not report layer {index} as lazy:\n{stdout}");
    }
    if lines_with(&stack.veil.log_text(), &["layer served lazily", digest]).is_empty() {
        bail!("the veil log does not say layer {digest} was served lazily");
    }
    Ok(())
}

/// The digests `ctr content ls` lists.
fn content_digests(stack: &LazyStack) -> anyhow::Result<Vec<String>> {
    Ok(stack
        .cd()
        .ctr_stdout(&["content", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// After a failed pull of `reference`: no image record, no active pull snapshot, none of
/// `layers` in containerd's content store (containerd cannot decrypt: nothing to fetch).
fn check_nothing_left(stack: &LazyStack, reference: &str, layers: &[&str]) -> anyhow::Result<()> {
    let images = stack.cd().ctr_stdout(&["images", "ls"])?;
    if images
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().next() == Some(reference))
    {
        bail!("a failed pull left the image record {reference}:\n{images}");
    }
    let snapshots = stack
        .cd()
        .ctr_stdout(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])?;
    if snapshots.contains("veil-pull-") {
        bail!("the failed pull left its active snapshot behind:\n{snapshots}");
    }
    let content = content_digests(stack)?;
    for digest in layers {
        if content.iter().any(|c| c == digest) {
            bail!("the failed pull downloaded the encrypted layer {digest} into containerd");
        }
    }
    Ok(())
}

/// `veil status --json`: every `(digest, size)` listed as a lazily served layer with
/// sane counters. Returns the report.
fn check_status(stack: &LazyStack, name: &str, lazy: &[(&str, u64)]) -> anyhow::Result<Value> {
    let report = stack.status_json()?;
    for (digest, size) in lazy {
        let l = status_layer(&report, digest)?;
        let fetched = l["bytes_fetched"].as_u64().unwrap_or(u64::MAX);
        if l["mode"].as_str() != Some("lazy")
            || l["blob_size"].as_u64() != Some(*size)
            || fetched > *size
            || l["verify_failures"].as_u64() != Some(0)
        {
            bail!("veil status reports layer {digest} wrongly: {l:#}");
        }
        eprintln!(
            "[{name}] veil status: layer {digest}: mode lazy, {fetched} of {size} bytes fetched, \
             {} chunks fetched, {} range requests",
            l["chunks_fetched"], l["range_requests"]
        );
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// Searching the disk for plaintext.

/// A window of `blob` (a layer's ciphertext) that Veil must have fetched to read the TOC.
fn toc_window(layer: &Desc, blob: &[u8]) -> (String, Vec<u8>) {
    let at = layer
        .annotations
        .get(MANIFEST_POSITION_ANNOTATION)
        .and_then(|p| p.split(':').next()?.parse::<usize>().ok())
        .filter(|&at| at + 64 <= blob.len())
        .unwrap_or(blob.len().saturating_sub(64));
    (
        format!("TOC of {} @{at}", layer.digest),
        blob[at..(at + 64).min(blob.len())].to_vec(),
    )
}

// ---------------------------------------------------------------------------------------
// The tests.

/// An image in `format` encrypted by skopeo, pulled lazily with the key, run twice; then
/// no plaintext on disk.
fn skopeo_encrypted(format: LayerFormat) {
    let name = match format {
        LayerFormat::Estargz => "enc-skopeo-estargz",
        LayerFormat::ZstdChunked => "enc-skopeo-zstdchunked",
        LayerFormat::PlainGzip => unreachable!(),
    };
    with_stack(name, |stack| {
        let t = Instant::now();
        let plain = PlainImage::build(format)?;
        let big_sha = sha256_hex(&plain.big);
        stack.push("plain", "1", &plain.layers)?;
        eprintln!(
            "[{name}] built and pushed 2 {format:?} layers ({} + {} bytes) in {:.1?}",
            plain.layers[0].size(),
            plain.layers[1].size(),
            t.elapsed()
        );
        let keys = Keys::make(&stack.dir)?;
        let t = Instant::now();
        skopeo_encrypt(stack, "plain:1", "enc:1", &keys.public)?;
        let (manifest, enc) = registry_manifest(stack, "enc", "1")?;
        eprintln!(
            "[{name}] skopeo copy --encryption-key jwe:… took {:.1?}; config {}",
            t.elapsed(),
            manifest["config"]["digest"]
        );
        check_skopeo_kept(name, &plain.layers, &enc)?;
        let total: u64 = enc.iter().map(|l| l.size).sum();

        write_veil_config(stack, &keys.keys_dir, false)?;
        stack.start()?;
        let reference = stack.image_ref("enc", "1");
        let stdout = pull_ok(stack, name, &reference)?;
        for (i, layer) in enc.iter().enumerate() {
            check_lazy(stack, &stdout, i + 1, 2, &layer.digest)?;
        }
        if !stdout.contains("2 lazy, 0 unpacked, 0 already present") {
            bail!("unexpected summary:\n{stdout}");
        }
        let content = content_digests(stack)?;
        if let Some(l) = enc.iter().find(|l| content.contains(&l.digest)) {
            bail!("containerd's content store has the layer {}", l.digest);
        }
        let after_pull: Vec<(usize, u64)> = enc.iter().map(|l| stack.served(&l.digest)).collect();

        // The small files, exactly, for a small part of the layers.
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-cat"),
            &["/bin/cat", HELLO_PATH, SECRET_PATH],
        )?;
        if printed != format!("{HELLO_TEXT}{SECRET_TEXT}") {
            bail!("the container printed {printed:?}");
        }
        let after_cat: Vec<(usize, u64)> = enc.iter().map(|l| stack.served(&l.digest)).collect();
        let served: u64 = after_cat.iter().map(|(_, b)| b).sum();
        eprintln!(
            "[{name}] registry served for the encrypted layers: after veil pull {} / {} bytes \
             ({} / {} requests); after `cat` in a container {} / {} bytes ({} / {} requests); \
             {served} of {total} layer bytes = {:.2} %",
            after_pull[0].1,
            after_pull[1].1,
            after_pull[0].0,
            after_pull[1].0,
            after_cat[0].1,
            after_cat[1].1,
            after_cat[0].0,
            after_cat[1].0,
            served as f64 * 100.0 / total as f64
        );
        if served * 10 >= total || after_cat[1].1 * 10 >= enc[1].size {
            bail!("the registry served {served} of {total} layer bytes for a `cat` (10 % or more)");
        }
        check_status(
            stack,
            name,
            &[(&enc[0].digest, enc[0].size), (&enc[1].digest, enc[1].size)],
        )?;

        // The big file, read whole, is exact.
        let sum = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-sha"),
            &["/bin/sha256sum", BIG_PATH],
        )?;
        if sum.split_whitespace().next() != Some(big_sha.as_str()) {
            bail!("sha256sum in the container printed {sum:?}, expected {big_sha}");
        }
        let after_sum = stack.served(&enc[1].digest);
        eprintln!(
            "[{name}] sha256sum of the {BIG_SIZE}-byte file matched; the registry has now served \
             {} of the big layer's {} bytes in {} requests",
            after_sum.1, enc[1].size, after_sum.0
        );
        check_status(
            stack,
            name,
            &[(&enc[0].digest, enc[0].size), (&enc[1].digest, enc[1].size)],
        )?;
        check_no_key_in_logs(stack, &keys)?;

        // No plaintext on disk; the ciphertext Veil fetched is in its disk cache.
        let mut controls = Vec::new();
        for layer in &enc {
            controls.push(toc_window(layer, &stored_blob(stack, &layer.digest)?));
        }
        check_no_plaintext(stack, name, plain.needles(), controls)?;
        eprintln!(
            "[{name}] containerd's content store holds {:?} (manifest and config only)",
            content_digests(stack)?
        );
        Ok(())
    });
}

#[test]
fn skopeo_encrypted_estargz_is_pulled_lazily() {
    skopeo_encrypted(LayerFormat::Estargz);
}

#[test]
fn skopeo_encrypted_zstd_chunked_is_pulled_lazily() {
    skopeo_encrypted(LayerFormat::ZstdChunked);
}

/// Without the private key (an unrelated key; then no key at all) `veil pull` fails,
/// naming the layer, the recipients and the key files tried, and leaves nothing behind.
/// With the key but `require_sealed_toc`, skopeo's layers (no sealed digest) are not
/// served lazily but streamed: fetched whole and verified before anything is served.
#[test]
fn encrypted_image_without_its_key_is_refused() {
    let name = "enc-nokey";
    with_stack(name, |stack| {
        let layers = vec![
            pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
            pack(
                tar_of(&[Entry::Dir("etc", 0o755), secret_entry()])?,
                LayerFormat::Estargz,
            )?,
        ];
        stack.push("plain", "1", &layers)?;
        let keys = Keys::make(&stack.dir)?;
        skopeo_encrypt(stack, "plain:1", "enc:1", &keys.public)?;
        let (_, enc) = registry_manifest(stack, "enc", "1")?;
        let digests: Vec<&str> = enc.iter().map(|l| l.digest.as_str()).collect();
        let reference = stack.image_ref("enc", "1");

        // An unrelated key.
        write_veil_config(stack, &keys.stranger_dir, false)?;
        stack.start()?;
        let shown = pull_fails(stack, name, &reference)?;
        let stranger = keys.stranger_dir.join("stranger.pem");
        for needle in [
            format!("layer 1/2 {}", enc[0].digest),
            "cannot unwrap the layer key".into(),
            "recipients found: jwe".into(),
            format!("key files tried: {}", stranger.display()),
        ] {
            if !shown.contains(&needle) {
                bail!("veil pull's error does not say {needle:?}:\n{shown}");
            }
        }
        let log = stack.veil.log_text();
        let logged = lines_with(
            &log,
            &[
                "layer cannot be served",
                &enc[0].digest,
                "cannot unwrap the layer key",
            ],
        );
        if logged.is_empty() {
            bail!(
                "the veil log does not report the refused layer {}",
                enc[0].digest
            );
        }
        eprintln!("[{name}] the veil log says:\n    {}", logged.join("\n    "));
        check_nothing_left(stack, &reference, &digests)?;
        let report = stack.status_json()?;
        let refused = report["fallbacks"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|f| f["digest"].as_str() == Some(&enc[0].digest))
            })
            .and_then(|f| f["reason"].as_str())
            .unwrap_or("")
            .to_string();
        if !refused.starts_with("refused:") || !refused.contains("cannot unwrap") {
            bail!("veil status does not show the layer refused: {refused:?}\n{report:#}");
        }

        // No key at all: an empty keys directory.
        write_veil_config(stack, &keys.empty_dir, false)?;
        restart_veil(stack)?;
        let shown = pull_fails(stack, name, &reference)?;
        for needle in [
            format!("layer 1/2 {}", enc[0].digest),
            "cannot unwrap the layer key".into(),
            "recipients found: jwe".into(),
            "no private key to try".into(),
        ] {
            if !shown.contains(&needle) {
                bail!("veil pull's error does not say {needle:?}:\n{shown}");
            }
        }
        check_nothing_left(stack, &reference, &digests)?;

        // The right key, but sealed TOC digests required: skopeo's layers have none, so
        // they are not served lazily but streamed (fetched whole, HMAC checked, indexed).
        write_veil_config(stack, &keys.keys_dir, true)?;
        restart_veil(stack)?;
        pull_ok(stack, name, &reference)?;
        let report = stack.status_json()?;
        for layer in &enc {
            let listed = status_layer(&report, &layer.digest)?;
            if listed["mode"].as_str() != Some("streamed")
                || listed["bytes_fetched"].as_u64() != Some(layer.size)
            {
                bail!(
                    "with require_sealed_toc, layer {} must be streamed whole: {listed:#}",
                    layer.digest
                );
            }
        }
        let log = stack.veil.log_text();
        if lines_with(
            &log,
            &["no sealed TOC digest and require_sealed_toc is set"],
        )
        .is_empty()
        {
            bail!("the veil log does not say why the layers were streamed");
        }
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-streamed"),
            &["/bin/cat", SECRET_PATH],
        )?;
        if printed != SECRET_TEXT {
            bail!("the container printed {printed:?} from the streamed layer");
        }
        check_no_key_in_logs(stack, &keys)?;
        let mut needles = vec![("secret text".to_string(), SECRET_TEXT.as_bytes().to_vec())];
        for (i, l) in layers.iter().enumerate() {
            needles.extend(windows(
                &format!("plaintext blob of layer {}", i + 1),
                &l.blob,
                4,
            ));
        }
        check_no_plaintext(stack, name, needles, Vec::new())?;
        Ok(())
    });
}

/// Layers encrypted by Veil with the TOC digest sealed in the wrapped options and no TOC
/// annotation: served lazily (only the sealed digest can authenticate them); a wrong
/// sealed digest gets the layer refused; a forged annotation is ignored.
#[test]
fn sealed_toc_digest_authenticates_encrypted_layers() {
    let name = "enc-sealed";
    with_stack(name, |stack| {
        let t = Instant::now();
        let plain = PlainImage::build(LayerFormat::Estargz)?;
        let big_sha = sha256_hex(&plain.big);
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let toc = |l: &Layer| -> anyhow::Result<String> {
            l.annotations
                .get(TOC_DIGEST_ANNOTATION)
                .cloned()
                .context("the eStargz writer gave no TOC digest")
        };
        let wrong = format!("sha256:{}", sha256_hex(b"not the TOC of this layer"));
        // Each with 4 MiB of random bytes, so that downloading a whole layer shows.
        let small = |path: &str, body: &str, seed: u64| -> anyhow::Result<Layer> {
            pack(
                tar_of(&[
                    Entry::Dir("etc", 0o755),
                    Entry::File(path.trim_start_matches('/').into(), body.into(), 0o644),
                    Entry::File(
                        format!("{}.bin", path.trim_start_matches('/')),
                        random_bytes(4 << 20, seed),
                        0o644,
                    ),
                ])?,
                LayerFormat::Estargz,
            )
        };
        let (tampered_path, tampered_text) = ("/etc/veil-tampered.txt", "sealed digest is wrong\n");
        let (forged_path, forged_text) = ("/etc/veil-forged.txt", "annotation is forged\n");
        let tampered_plain = small(tampered_path, tampered_text, 11)?;
        let forged_plain = small(forged_path, forged_text, 12)?;

        let base = ocicrypt_encrypt(
            &plain.layers[0],
            Some(&toc(&plain.layers[0])?),
            None,
            &public,
        )?;
        let top = ocicrypt_encrypt(
            &plain.layers[1],
            Some(&toc(&plain.layers[1])?),
            None,
            &public,
        )?;
        let tampered = ocicrypt_encrypt(&tampered_plain, Some(&wrong), None, &public)?;
        let forged = ocicrypt_encrypt(
            &forged_plain,
            Some(&toc(&forged_plain)?),
            Some(&wrong),
            &public,
        )?;
        let pushed = stack.push_image("sealed", "1", &[base.clone(), top.clone()])?;
        stack.push("tampered", "1", &[base.clone(), tampered.clone()])?;
        stack.push("forged", "1", &[base.clone(), forged.clone()])?;
        let manifest: Value = serde_json::from_slice(&pushed.manifest)?;
        for l in manifest["layers"].as_array().into_iter().flatten() {
            if l["annotations"].get(TOC_DIGEST_ANNOTATION).is_some() {
                bail!("the sealed image's manifest still has the TOC annotation: {l}");
            }
        }
        eprintln!(
            "[{name}] built, encrypted (sealed TOC digests, no TOC annotation) and pushed 4 \
             layers in {:.1?}",
            t.elapsed()
        );

        // Only sealed layers are accepted, and these are served lazily.
        write_veil_config(stack, &keys.keys_dir, true)?;
        stack.start()?;
        let reference = stack.image_ref("sealed", "1");
        let stdout = pull_ok(stack, name, &reference)?;
        check_lazy(stack, &stdout, 1, 2, &base.digest)?;
        check_lazy(stack, &stdout, 2, 2, &top.digest)?;
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-cat"),
            &["/bin/cat", HELLO_PATH, SECRET_PATH],
        )?;
        if printed != format!("{HELLO_TEXT}{SECRET_TEXT}") {
            bail!("the container printed {printed:?}");
        }
        let total = base.size() + top.size();
        let served = stack.served(&base.digest).1 + stack.served(&top.digest).1;
        eprintln!(
            "[{name}] after `cat`: the registry served {served} of {total} layer bytes = {:.2} %",
            served as f64 * 100.0 / total as f64
        );
        if served * 10 >= total {
            bail!("the registry served {served} of {total} layer bytes for a `cat`");
        }
        let sum = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-sha"),
            &["/bin/sha256sum", BIG_PATH],
        )?;
        if sum.split_whitespace().next() != Some(big_sha.as_str()) {
            bail!("sha256sum in the container printed {sum:?}, expected {big_sha}");
        }
        check_status(
            stack,
            name,
            &[(&base.digest, base.size()), (&top.digest, top.size())],
        )?;

        // A forged TOC annotation beside the right sealed digest: the sealed one wins.
        let forged_ref = stack.image_ref("forged", "1");
        let stdout = pull_ok(stack, name, &forged_ref)?;
        check_lazy(stack, &stdout, 2, 2, &forged.digest)?;
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &forged_ref,
            &format!("{name}-forged"),
            &["/bin/cat", forged_path],
        )?;
        if printed != forged_text {
            bail!("the container printed {printed:?}, expected {forged_text:?}");
        }

        // A wrong sealed digest: the layer is refused, the pull fails naming it. Every
        // problem is collected, so that the search for plaintext below runs anyway.
        let tampered_ref = stack.image_ref("tampered", "1");
        let shown = pull_fails(stack, name, &tampered_ref)?;
        let mut problems = Vec::new();
        for needle in [
            format!("layer 2/2 {}", tampered.digest),
            "TOC digest mismatch".into(),
        ] {
            if !shown.contains(&needle) {
                problems.push(format!("veil pull's error does not say {needle:?}"));
            }
        }
        if lines_with(
            &stack.veil.log_text(),
            &["layer cannot be served", &tampered.digest],
        )
        .is_empty()
        {
            problems.push(format!(
                "the veil log does not report the refused layer {} (ERROR \"layer cannot be \
                 served\"); it says:\n    {}",
                tampered.digest,
                lines_with(&stack.veil.log_text(), &[&tampered.digest]).join("\n    ")
            ));
        }
        let (requests, bytes) = stack.served(&tampered.digest);
        eprintln!(
            "[{name}] for the tampered layer ({} bytes) the registry served {bytes} bytes in \
             {requests} request(s)",
            tampered.size()
        );
        if bytes * 2 >= tampered.size() {
            problems.push(format!(
                "the registry served {bytes} of the tampered layer's {} bytes: it was \
                 downloaded (a fallback to containerd, which cannot decrypt it)",
                tampered.size()
            ));
        }
        if let Err(e) = check_nothing_left(stack, &tampered_ref, &[&tampered.digest]) {
            problems.push(format!("{e:#}"));
        }
        check_no_key_in_logs(stack, &keys)?;

        let needles = plain.needles();
        let controls = vec![toc_window(
            &Desc {
                media_type: top.media_type.clone(),
                digest: top.digest.clone(),
                size: top.size(),
                annotations: top.annotations.clone(),
            },
            &top.blob,
        )];
        check_no_plaintext(stack, name, needles, controls)?;
        if !problems.is_empty() {
            bail!(
                "a wrong sealed TOC digest was not refused cleanly:\n  {}\nveil pull said:\n{shown}",
                problems.join("\n  ")
            );
        }
        Ok(())
    });
}

/// The search itself (no root needed): needles at odd offsets, across a read boundary,
/// at the very end of a file, in a subdirectory; nothing found where nothing is.
#[test]
fn the_plaintext_search_finds_needles_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a/b");
    std::fs::create_dir_all(&sub).unwrap();
    let bytes = random_bytes(256, 3);
    let (long, short) = (bytes[..64].to_vec(), bytes[100..139].to_vec());
    let needles = Needles::new(vec![
        ("long".into(), long.clone()),
        ("short".into(), short.clone()),
    ]);
    let mut data = random_bytes(2 * READ_CHUNK + 1001, 4);
    let across = READ_CHUNK - 31;
    let end = data.len() - short.len();
    data[7..71].copy_from_slice(&long);
    data[across..across + 64].copy_from_slice(&long);
    data[end..].copy_from_slice(&short);
    std::fs::write(sub.join("blob"), &data).unwrap();
    std::fs::write(dir.path().join("clean"), random_bytes(3 * READ_CHUNK, 5)).unwrap();
    let scan = scan_tree(dir.path(), &needles).unwrap();
    let mut found: Vec<(String, u64)> = scan.hits.iter().map(|h| (h.1.clone(), h.2)).collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("long".to_string(), 7),
            ("long".to_string(), across as u64),
            ("short".to_string(), end as u64)
        ]
    );
    assert!(scan.hits.iter().all(|h| h.0 == sub.join("blob")));
    assert_eq!(scan.files, 2);
}
