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
//! image; a wrong sealed TOC digest gets the layer refused; and no plaintext reaches the
//! disk: Veil's root (disk cache included) and containerd's directories are searched for the
//! secret text, windows of the big file and windows of the plaintext layer blobs, while a
//! window of the ciphertext must be found in Veil's disk cache (so the search can see).
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static, FUSE, skopeo and
//! openssl. Run with `cargo test -p veil-tests --test encrypted_pull -- --nocapture`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use veil_fusefs::ctr::{apply_keystream_at, hmac_sha256};
use veil_fusefs::estargz::TOC_DIGEST_ANNOTATION;
use veil_fusefs::zstdchunked::MANIFEST_POSITION_ANNOTATION;
use veil_keyprovider::jwe;
use veil_keyprovider::keys::PublicKey;
use veil_keyprovider::ocicrypt::{
    encrypted_media_type, layer_cipher_params, set_sealed_toc_digest, EncryptedLayer,
    PrivateLayerBlockCipherOptions, PublicLayerBlockCipherOptions, Recipient,
    ANNOTATION_KEYS_PREFIX, ANNOTATION_PUBOPTS,
};
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer, LayerFormat,
    BIG_PATH, HELLO_PATH, HELLO_TEXT,
};
use veil_tests::lazy_stack::{lines_with, text, with_stack, LazyStack};
use veil_tests::process::run_with_timeout;

/// Size of the big random file.
const BIG_SIZE: usize = 64 << 20;
/// A small file in the big layer whose text is unique: it must never be found on disk.
const SECRET_PATH: &str = "/etc/veil-secret.txt";
const SECRET_TEXT: &str =
    "veil-enc marker 5c1d8e2f9a47b3e6: plaintext of an encrypted layer, never on disk\n";
/// How long `skopeo copy` of the image may take.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `openssl` may take.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Keys, images, encryption.

/// An RSA key pair made by the `openssl` CLI, and the keys directories the tests give Veil.
struct Keys {
    /// The public key images are encrypted to.
    public: PathBuf,
    /// Holds only the matching private key.
    keys_dir: PathBuf,
    /// Holds only an unrelated private key.
    stranger_dir: PathBuf,
    /// Exists, holds nothing.
    empty_dir: PathBuf,
}

impl Keys {
    fn make(dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("keys");
        let keys = Self {
            public: root.join("pub.pem"),
            keys_dir: root.join("keys"),
            stranger_dir: root.join("stranger"),
            empty_dir: root.join("empty"),
        };
        for d in [&keys.keys_dir, &keys.stranger_dir, &keys.empty_dir] {
            std::fs::create_dir_all(d)?;
        }
        let private = keys.private();
        let stranger = keys.stranger_dir.join("stranger.pem");
        openssl(dir, &["genrsa", "-out", &private.to_string_lossy(), "2048"])?;
        openssl(
            dir,
            &[
                "rsa",
                "-in",
                &private.to_string_lossy(),
                "-pubout",
                "-out",
                &keys.public.to_string_lossy(),
            ],
        )?;
        openssl(
            dir,
            &["genrsa", "-out", &stranger.to_string_lossy(), "2048"],
        )?;
        Ok(keys)
    }

    fn private(&self) -> PathBuf {
        self.keys_dir.join("priv.pem")
    }

    /// The private keys' base64 lines: secret text no log may contain.
    fn secret_lines(&self) -> Vec<String> {
        [self.private(), self.stranger_dir.join("stranger.pem")]
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    let out = run_with_timeout(cmd, OPENSSL_TIMEOUT, &dir.join("openssl"))
        .context("running openssl (Debian: apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
    }
    Ok(())
}

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

/// `count` windows of 64 bytes spread over `data`, the last one its tail; windows that
/// are not varied enough (runs of one byte) are moved on.
fn windows(what: &str, data: &[u8], count: usize) -> Vec<(String, Vec<u8>)> {
    const LEN: usize = 64;
    let mut out = Vec::new();
    if data.len() < LEN {
        return out;
    }
    let last = data.len() - LEN;
    for i in 0..count {
        let mut at = if i + 1 == count {
            last
        } else {
            (i * data.len() / count + 4099).min(last)
        };
        while at > 0 && distinct(&data[at..at + LEN]) < 24 {
            at -= 1;
        }
        if distinct(&data[at..at + LEN]) >= 24 {
            out.push((format!("{what} @{at}"), data[at..at + LEN].to_vec()));
        }
    }
    out
}

fn distinct(bytes: &[u8]) -> usize {
    bytes.iter().collect::<HashSet<_>>().len()
}

/// Encrypts `layer` as ocicrypt does (AES-256-CTR over the blob, HMAC-SHA256 over the
/// ciphertext, private options wrapped in a JWE for `recipient`) with `sealed` as the
/// sealed TOC digest. The TOC digest annotation is removed, or set to `annotation`.
fn veil_encrypt(
    layer: &Layer,
    sealed: &str,
    annotation: Option<&str>,
    recipient: &PublicKey,
) -> anyhow::Result<Layer> {
    let mut private = PrivateLayerBlockCipherOptions::generate(&layer.digest)?;
    set_sealed_toc_digest(&mut private, sealed)?;
    let params = layer_cipher_params(&PublicLayerBlockCipherOptions::new([0; 32]), &private)?;
    let mut blob = layer.blob.clone();
    apply_keystream_at(&params.key, &params.nonce, 0, &mut blob);
    let pubopts = PublicLayerBlockCipherOptions::new(hmac_sha256(&params.key, &blob));
    let wrapped = jwe::encrypt(&private.to_json(), std::slice::from_ref(recipient))
        .map_err(|e| anyhow!("wrapping the layer options: {e}"))?;
    let enc = EncryptedLayer {
        pubopts,
        recipients: vec![Recipient {
            scheme: jwe::SCHEME.to_string(),
            wrapped,
        }],
    };
    let mut annotations = layer.annotations.clone();
    annotations.remove(TOC_DIGEST_ANNOTATION);
    if let Some(a) = annotation {
        annotations.insert(TOC_DIGEST_ANNOTATION.into(), a.into());
    }
    annotations.extend(enc.to_annotations());
    Ok(Layer {
        format: layer.format,
        digest: format!("sha256:{}", sha256_hex(&blob)),
        diff_id: layer.diff_id.clone(),
        media_type: encrypted_media_type(&layer.media_type),
        annotations,
        blob,
    })
}

/// A layer descriptor of a manifest read back from the registry.
#[derive(Debug, Clone)]
struct Desc {
    media_type: String,
    digest: String,
    size: u64,
    annotations: BTreeMap<String, String>,
}

/// `GET /v2/REPO/manifests/TAG` (OCI): the manifest and its layer descriptors. Manifest
/// requests do not count as blob bytes served.
fn registry_manifest(
    stack: &LazyStack,
    repo: &str,
    tag: &str,
) -> anyhow::Result<(Value, Vec<Desc>)> {
    let url = format!("{}/v2/{repo}/manifests/{tag}", stack.registry.base());
    let body = stack.runtime.block_on(async {
        let resp = reqwest::Client::new()
            .get(&url)
            .header(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .timeout(Duration::from_secs(30))
            .send()
            .await?
            .error_for_status()?;
        resp.bytes().await
    })?;
    let manifest: Value = serde_json::from_slice(&body).with_context(|| url.clone())?;
    let layers = manifest["layers"]
        .as_array()
        .with_context(|| format!("{url} has no layers: {manifest}"))?
        .iter()
        .map(|l| Desc {
            media_type: l["mediaType"].as_str().unwrap_or("").to_string(),
            digest: l["digest"].as_str().unwrap_or("").to_string(),
            size: l["size"].as_u64().unwrap_or(0),
            annotations: l["annotations"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok((manifest, layers))
}

/// A blob as the registry stores it (read from its storage: not counted as served).
fn stored_blob(stack: &LazyStack, digest: &str) -> anyhow::Result<Vec<u8>> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest}"))?;
    let path = stack
        .registry
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `skopeo copy --encryption-key jwe:PUBLIC docker://HOST/FROM docker://HOST/TO`.
fn skopeo_encrypt(stack: &LazyStack, from: &str, to: &str, public: &Path) -> anyhow::Result<()> {
    let host = stack.registry.host();
    let tmp = stack.dir.join("skopeo-tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg("--encryption-key")
    .arg(format!("jwe:{}", public.display()))
    .arg(format!("docker://{host}/{from}"))
    .arg(format!("docker://{host}/{to}"))
    .env("TMPDIR", &tmp);
    let out = run_with_timeout(cmd, SKOPEO_TIMEOUT, &stack.dir.join("skopeo-copy"))
        .context("running skopeo (Debian: apt-get install skopeo)")?;
    if !out.status.success() {
        bail!(
            "skopeo copy failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    Ok(())
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

/// Veil's config for `stack`: plain HTTP to the registry, no background fetch (so byte
/// counts measure reads), the disk cache on (default, `<root>/cache`), keys from
/// `keys_dir`.
fn write_veil_config(
    stack: &LazyStack,
    keys_dir: &Path,
    require_sealed_toc: bool,
) -> anyhow::Result<()> {
    std::fs::write(
        stack.dir.join("veil-config.toml"),
        format!(
            "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = false\n\n\
             [decryption]\nkeys_dir = \"{}\"\nrequire_sealed_toc = {require_sealed_toc}\n",
            stack.registry.host(),
            keys_dir.display()
        ),
    )?;
    Ok(())
}

/// Restarts Veil (same root) after its config changed; waits until containerd reaches it:
/// a throwaway snapshot can be prepared through it (listing snapshots would not tell, as
/// containerd answers that from its own metadata).
fn restart_veil(stack: &mut LazyStack) -> anyhow::Result<()> {
    stack.veil.stop();
    stack.veil.start().context("restarting veil-snapshotter")?;
    let start = Instant::now();
    for n in 0.. {
        stack.veil.check_running()?;
        let key = format!("reconnect-probe-{n}");
        match stack
            .cd()
            .ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "prepare", &key])
        {
            Ok(_) => {
                stack
                    .cd()
                    .ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", &key])?;
                eprintln!(
                    "containerd reached the restarted snapshotter after {:.1?}",
                    start.elapsed()
                );
                return Ok(());
            }
            Err(e) if start.elapsed() > Duration::from_secs(60) => {
                return Err(e.context("containerd did not reach the restarted snapshotter"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    unreachable!()
}

/// `veil pull REF`, which must succeed with `lazy` of its layers served lazily; returns
/// its stdout.
fn pull_ok(stack: &LazyStack, name: &str, reference: &str) -> anyhow::Result<String> {
    let (out, took) = stack.veil_pull(reference, &[])?;
    let stdout = text(&out.stdout);
    eprintln!(
        "[{name}] veil pull {reference} took {took:.2?}:\n{stdout}{}",
        text(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "veil pull {reference} failed ({}):\n{stdout}\n{}",
            out.status,
            text(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `veil pull REF`, which must fail; returns its stdout and stderr together.
fn pull_fails(stack: &LazyStack, name: &str, reference: &str) -> anyhow::Result<String> {
    let (out, took) = stack.veil_pull(reference, &[])?;
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!(
        "[{name}] veil pull {reference} ({}, {took:.2?}):\n{shown}",
        out.status
    );
    if out.status.success() {
        bail!("veil pull {reference} succeeded, it must fail:\n{shown}");
    }
    Ok(shown)
}

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
    let listed = report["layers"].as_array().cloned().unwrap_or_default();
    for (digest, size) in lazy {
        let Some(l) = listed.iter().find(|l| l["digest"].as_str() == Some(digest)) else {
            bail!("veil status does not list the lazily served layer {digest}:\n{report:#}");
        };
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

/// No line of the daemon logs holds a line of a private key.
fn check_no_key_in_logs(stack: &LazyStack, keys: &Keys) -> anyhow::Result<()> {
    let secrets = keys.secret_lines();
    for log in &stack.veil.logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(s) = secrets.iter().find(|s| text.contains(s.as_str())) {
            bail!("{} contains private key material ({s})", log.display());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Searching the disk for plaintext.

/// Positions looked at: every `STRIDE`-th byte of a file, 8 bytes each; every needle of at
/// least `STRIDE + 7` bytes covers one of them, at some offset of the needle.
const STRIDE: usize = 32;
const KEY: usize = 8;
/// Bytes read at a time.
const READ_CHUNK: usize = 4 << 20;

/// Byte strings to look for, indexed by each 8-byte substring.
struct Needles {
    list: Vec<(String, Vec<u8>)>,
    index: HashMap<u64, Vec<(usize, usize)>>,
    max_len: usize,
}

impl Needles {
    fn new(list: Vec<(String, Vec<u8>)>) -> Self {
        let mut index: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
        for (i, (name, bytes)) in list.iter().enumerate() {
            assert!(
                bytes.len() >= STRIDE + KEY - 1,
                "needle {name} is too short to be found"
            );
            for off in 0..=bytes.len() - KEY {
                index.entry(key_at(bytes, off)).or_default().push((i, off));
            }
        }
        let max_len = list.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
        Self {
            list,
            index,
            max_len,
        }
    }
}

fn key_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + KEY].try_into().expect("8 bytes"))
}

/// A needle found: file, needle name, file offset.
type Hit = (PathBuf, String, u64);

/// What a search of a directory tree read and found.
#[derive(Debug, Default)]
struct Scan {
    files: usize,
    bytes: u64,
    /// Mount points (and other file systems) not entered.
    skipped: Vec<PathBuf>,
    hits: Vec<Hit>,
}

/// Searches every regular file below `root` for `needles`, in chunks, without entering
/// other file systems (Veil's FUSE mounts) or opening anything but regular files.
fn scan_tree(root: &Path, needles: &Needles) -> anyhow::Result<Scan> {
    let mut scan = Scan::default();
    let root_dev = std::fs::symlink_metadata(root)
        .with_context(|| root.display().to_string())?
        .dev();
    let mounts: HashSet<PathBuf> = veil_tests::mounts::mounts_below(root)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Gone meanwhile (a snapshot removed): nothing to read there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(anyhow!("listing {}: {e}", dir.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if mounts.contains(&path) {
                scan.skipped.push(path);
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if md.is_dir() {
                if md.dev() == root_dev {
                    dirs.push(path);
                } else {
                    scan.skipped.push(path);
                }
            } else if md.is_file() {
                scan.files += 1;
                scan.bytes += scan_file(&path, needles, &mut scan.hits)
                    .with_context(|| format!("reading {}", path.display()))?;
            }
        }
    }
    let mut seen = HashSet::new();
    scan.hits.retain(|h| seen.insert(h.clone()));
    Ok(scan)
}

/// Searches one file; returns the bytes read.
fn scan_file(path: &Path, needles: &Needles, hits: &mut Vec<Hit>) -> std::io::Result<u64> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let max = needles.max_len as u64;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK + 2 * needles.max_len);
    let mut buf_start = 0u64; // file offset of buf[0]
    let mut next = 0u64; // next position looked at (a multiple of STRIDE)
    let mut total = 0u64;
    loop {
        let old = buf.len();
        buf.resize(old + READ_CHUNK, 0);
        let n = file.read(&mut buf[old..])?;
        buf.truncate(old + n);
        total += n as u64;
        let eof = n == 0;
        let end = buf_start + buf.len() as u64;
        // Look only where every needle through this position is wholly in `buf`.
        while next + KEY as u64 <= end && (eof || next + max <= end) {
            let i = (next - buf_start) as usize;
            if let Some(candidates) = needles.index.get(&key_at(&buf, i)) {
                for &(n, off) in candidates {
                    let Some(start) = next.checked_sub(off as u64) else {
                        continue;
                    };
                    let needle = &needles.list[n].1;
                    if start < buf_start {
                        continue;
                    }
                    let s = (start - buf_start) as usize;
                    if s + needle.len() <= buf.len() && buf[s..s + needle.len()] == needle[..] {
                        hits.push((path.to_path_buf(), needles.list[n].0.clone(), start));
                    }
                }
            }
            next += STRIDE as u64;
        }
        if eof {
            return Ok(total);
        }
        // Keep what a needle through a later position may start in.
        let keep_from = next.saturating_sub(max).max(buf_start);
        buf.drain(..(keep_from - buf_start) as usize);
        buf_start = keep_from;
    }
}

/// Searches Veil's root (disk cache included) and containerd's directory for `plaintext`
/// (none may be found) and for `ciphertext` (at least one must be found in Veil's disk
/// cache, else the search proves nothing).
fn check_no_plaintext(
    stack: &LazyStack,
    name: &str,
    plaintext: Vec<(String, Vec<u8>)>,
    ciphertext: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let controls = ciphertext.len();
    let plain_count = plaintext.len();
    let mut list = plaintext;
    list.extend(
        ciphertext
            .into_iter()
            .map(|(n, b)| (format!("ciphertext: {n}"), b)),
    );
    let needles = Needles::new(list);
    let veil_root = stack.veil.root().to_path_buf();
    // containerd's root (content store, metadata), state, temporary directory, FIFOs.
    let cd_root = stack.dir.join("containerd");
    let mut plain_hits = Vec::new();
    let mut cipher_in_cache = Vec::new();
    for root in [&veil_root, &cd_root] {
        let scan = scan_tree(root, &needles)?;
        eprintln!(
            "[{name}] searched {} regular files, {} bytes below {} for {plain_count} plaintext \
             and {controls} ciphertext needles; not entered: {:?}; hits: {}",
            scan.files,
            scan.bytes,
            root.display(),
            scan.skipped,
            scan.hits.len()
        );
        for hit in scan.hits {
            eprintln!(
                "[{name}]   found {} in {} at {}",
                hit.1,
                hit.0.display(),
                hit.2
            );
            if !hit.1.starts_with("ciphertext: ") {
                plain_hits.push(hit);
            } else if hit.0.starts_with(veil_root.join("cache")) {
                cipher_in_cache.push(hit);
            }
        }
    }
    eprintln!("[{name}] the search took {:.1?}", t.elapsed());
    if !plain_hits.is_empty() {
        bail!("plaintext found on disk: {plain_hits:?}");
    }
    if controls > 0 && cipher_in_cache.is_empty() {
        bail!(
            "no ciphertext window was found in Veil's disk cache {}: the search cannot be trusted",
            veil_root.join("cache").display()
        );
    }
    Ok(())
}

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
/// With the key but `require_sealed_toc`, skopeo's layers (no sealed digest) are refused.
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

        // The right key, but sealed TOC digests required: skopeo's layers have none.
        write_veil_config(stack, &keys.keys_dir, true)?;
        restart_veil(stack)?;
        let shown = pull_fails(stack, name, &reference)?;
        for needle in [
            format!("layer 1/2 {}", enc[0].digest),
            "has no sealed TOC digest and require_sealed_toc is set".into(),
        ] {
            if !shown.contains(&needle) {
                bail!("veil pull's error does not say {needle:?}:\n{shown}");
            }
        }
        check_nothing_left(stack, &reference, &digests)?;
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

        let base = veil_encrypt(&plain.layers[0], &toc(&plain.layers[0])?, None, &public)?;
        let top = veil_encrypt(&plain.layers[1], &toc(&plain.layers[1])?, None, &public)?;
        let tampered = veil_encrypt(&tampered_plain, &wrong, None, &public)?;
        let forged = veil_encrypt(&forged_plain, &toc(&forged_plain)?, Some(&wrong), &public)?;
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
