//! Helpers of the encrypted-image tests (`encrypted_pull`, `encrypted_stream`): key
//! pairs made with `openssl`, skopeo encryption registry to registry, manifests and
//! stored blobs read back from the registry, Veil's config with a keys directory,
//! `veil pull` expected to pass or fail, and the search of Veil's and containerd's
//! directories for plaintext that must never be on disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use veil_formats::estargz::TOC_DIGEST_ANNOTATION;
use veil_keyprovider::cipher::{apply_keystream_at, hmac_sha256};
use veil_keyprovider::jwe;
use veil_keyprovider::keys::PublicKey;
use veil_keyprovider::ocicrypt::{
    encrypted_media_type, layer_cipher_params, set_sealed_toc_digest, EncryptedLayer,
    PrivateLayerBlockCipherOptions, PublicLayerBlockCipherOptions, Recipient,
};

use crate::containerd::SNAPSHOTTER;
use crate::lazy_image::{sha256_hex, Layer};
use crate::lazy_stack::{text, LazyStack};
use crate::log_secrets::{check_no_secret_in_logs, pem_secret_lines};
use crate::process::run_with_timeout;

/// How long `skopeo copy` of the image may take.
pub const SKOPEO_TIMEOUT: Duration = Duration::from_secs(300);

/// How long `openssl` may take.
pub const OPENSSL_TIMEOUT: Duration = Duration::from_secs(60);

/// An RSA key pair made by the `openssl` CLI, and the keys directories the tests give Veil.
pub struct Keys {
    /// The public key images are encrypted to.
    pub public: PathBuf,
    /// Holds only the matching private key.
    pub keys_dir: PathBuf,
    /// Holds only an unrelated private key.
    pub stranger_dir: PathBuf,
    /// Exists, holds nothing.
    pub empty_dir: PathBuf,
}

impl Keys {
    pub fn make(dir: &Path) -> anyhow::Result<Self> {
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

    pub fn private(&self) -> PathBuf {
        self.keys_dir.join("priv.pem")
    }

    /// The private keys' base64 lines: secret text no log may contain.
    pub fn secret_lines(&self) -> Vec<String> {
        pem_secret_lines(&[self.private(), self.stranger_dir.join("stranger.pem")])
    }
}

pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
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

/// `count` windows of 64 bytes spread over `data`, the last one its tail; windows that
/// are not varied enough (runs of one byte) are moved on.
pub fn windows(what: &str, data: &[u8], count: usize) -> Vec<(String, Vec<u8>)> {
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

pub fn distinct(bytes: &[u8]) -> usize {
    bytes.iter().collect::<HashSet<_>>().len()
}

/// A layer descriptor of a manifest read back from the registry.
#[derive(Debug, Clone)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

/// `GET /v2/REPO/manifests/TAG` (OCI): the manifest and its layer descriptors. Manifest
/// requests do not count as blob bytes served.
pub fn registry_manifest(
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
pub fn stored_blob(stack: &LazyStack, digest: &str) -> anyhow::Result<Vec<u8>> {
    let path = stored_blob_path(stack, digest)?;
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// Where the registry keeps blob `digest` (`sha256:…`) on disk: changing that file changes
/// what it serves (it does not check digests on the way out).
pub fn stored_blob_path(stack: &LazyStack, digest: &str) -> anyhow::Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest}"))?;
    Ok(stack
        .registry
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data"))
}

/// `skopeo copy --encryption-key jwe:PUBLIC docker://HOST/FROM docker://HOST/TO`.
pub fn skopeo_encrypt(
    stack: &LazyStack,
    from: &str,
    to: &str,
    public: &Path,
) -> anyhow::Result<()> {
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

/// Veil's config for `stack`: plain HTTP to the registry, no background fetch (so byte
/// counts measure reads), the disk cache on (default, `<root>/cache`), keys from
/// `keys_dir`.
pub fn write_veil_config(
    stack: &LazyStack,
    keys_dir: &Path,
    require_sealed_toc: bool,
) -> anyhow::Result<()> {
    write_veil_config_with(stack, keys_dir, require_sealed_toc, "")
}

/// [`write_veil_config`] with `extra` TOML (whole sections, e.g. `[cache]`) appended.
pub fn write_veil_config_with(
    stack: &LazyStack,
    keys_dir: &Path,
    require_sealed_toc: bool,
    extra: &str,
) -> anyhow::Result<()> {
    std::fs::write(
        stack.dir.join("veil-config.toml"),
        format!(
            "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = false\n\n\
             [decryption]\nkeys_dir = \"{}\"\nrequire_sealed_toc = {require_sealed_toc}\n\n{extra}",
            stack.registry.host(),
            keys_dir.display()
        ),
    )?;
    Ok(())
}

/// Restarts Veil (same root) after its config changed; waits until containerd reaches it:
/// a throwaway snapshot can be prepared through it (listing snapshots would not tell, as
/// containerd answers that from its own metadata).
pub fn restart_veil(stack: &mut LazyStack) -> anyhow::Result<()> {
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
pub fn pull_ok(stack: &LazyStack, name: &str, reference: &str) -> anyhow::Result<String> {
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
pub fn pull_fails(stack: &LazyStack, name: &str, reference: &str) -> anyhow::Result<String> {
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

/// No line of the daemon logs holds a line of a private key.
pub fn check_no_key_in_logs(stack: &LazyStack, keys: &Keys) -> anyhow::Result<()> {
    check_no_secret_in_logs(&stack.veil.logs, &keys.secret_lines())
}

/// Positions looked at: every `STRIDE`-th byte of a file, 8 bytes each; every needle of at
/// least `STRIDE + 7` bytes covers one of them, at some offset of the needle.
pub const STRIDE: usize = 32;

pub const KEY: usize = 8;

/// Bytes read at a time.
pub const READ_CHUNK: usize = 4 << 20;

/// Byte strings to look for, indexed by each 8-byte substring.
pub struct Needles {
    pub list: Vec<(String, Vec<u8>)>,
    pub index: HashMap<u64, Vec<(usize, usize)>>,
    pub max_len: usize,
}

impl Needles {
    pub fn new(list: Vec<(String, Vec<u8>)>) -> Self {
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

pub fn key_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + KEY].try_into().expect("8 bytes"))
}

/// A needle found: file, needle name, file offset.
pub type Hit = (PathBuf, String, u64);

/// What a search of a directory tree read and found.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: usize,
    pub bytes: u64,
    /// Mount points (and other file systems) not entered.
    pub skipped: Vec<PathBuf>,
    pub hits: Vec<Hit>,
}

/// Searches every regular file below `root` for `needles`, in chunks, without entering
/// other file systems (Veil's FUSE mounts) or opening anything but regular files.
pub fn scan_tree(root: &Path, needles: &Needles) -> anyhow::Result<Scan> {
    let mut scan = Scan::default();
    let root_dev = std::fs::symlink_metadata(root)
        .with_context(|| root.display().to_string())?
        .dev();
    let mounts: HashSet<PathBuf> = crate::mounts::mounts_below(root)
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
pub fn scan_file(path: &Path, needles: &Needles, hits: &mut Vec<Hit>) -> std::io::Result<u64> {
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
pub fn check_no_plaintext(
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

/// Encrypts `layer` as ocicrypt does (AES-256-CTR over the blob, HMAC-SHA256 over the
/// ciphertext, private options wrapped in a JWE for `recipient`) with `sealed` as the
/// sealed TOC digest (if any). The TOC digest annotation is removed, or set to
/// `annotation`.
pub fn ocicrypt_encrypt(
    layer: &Layer,
    sealed: Option<&str>,
    annotation: Option<&str>,
    recipient: &PublicKey,
) -> anyhow::Result<Layer> {
    encrypt_for(layer, sealed, annotation, |options| {
        Ok(Recipient {
            scheme: jwe::SCHEME.to_string(),
            wrapped: jwe::encrypt(options, std::slice::from_ref(recipient))
                .map_err(|e| anyhow!("wrapping the layer options: {e}"))?,
        })
    })
}

/// eStargz `layers` encrypted to `public` (see [`ocicrypt_encrypt`]) with their TOC
/// digests sealed (as `veil convert` writes them): the same diff IDs, served lazily.
pub fn sealed_encrypt(layers: &[Layer], public: &PublicKey) -> anyhow::Result<Vec<Layer>> {
    layers
        .iter()
        .map(|l| {
            let toc = l
                .annotations
                .get(TOC_DIGEST_ANNOTATION)
                .context("the eStargz writer gave no TOC digest")?;
            ocicrypt_encrypt(l, Some(toc), None, public)
        })
        .collect()
}

/// Encrypts `layer` as coco_keyprovider does for `veil convert --kbs-kid KID`: the
/// private options (with `sealed` as the sealed TOC digest, if any) wrapped with `kek`
/// under `kid` (the `provider.attestation-agent` packet) and no other recipient; the TOC
/// digest annotation kept as the plain layer had it.
pub fn kbs_kid_encrypt(
    layer: &Layer,
    sealed: Option<&str>,
    kid: &str,
    kek: &[u8],
) -> anyhow::Result<Layer> {
    let annotation = layer.annotations.get(TOC_DIGEST_ANNOTATION).cloned();
    encrypt_for(layer, sealed, annotation.as_deref(), |options| {
        let kek = veil_keyprovider::secret::SecretBytes::new(kek.to_vec());
        let packet = veil_keyprovider::aa_packet::AnnotationPacket::wrap(kid, &kek, options)
            .map_err(|e| anyhow!("wrapping the layer options for {kid}: {e}"))?;
        Ok(Recipient {
            scheme: veil_keyprovider::aa_packet::SCHEME.to_string(),
            wrapped: packet.to_json(),
        })
    })
}

/// Encrypts `layer` (see [`ocicrypt_encrypt`]) for the one recipient `wrap` makes of the
/// private options' JSON.
fn encrypt_for(
    layer: &Layer,
    sealed: Option<&str>,
    annotation: Option<&str>,
    wrap: impl FnOnce(&[u8]) -> anyhow::Result<Recipient>,
) -> anyhow::Result<Layer> {
    let mut private = PrivateLayerBlockCipherOptions::generate(&layer.digest)?;
    if let Some(sealed) = sealed {
        set_sealed_toc_digest(&mut private, sealed)?;
    }
    let params = layer_cipher_params(&PublicLayerBlockCipherOptions::new([0; 32]), &private)?;
    let mut blob = layer.blob.clone();
    apply_keystream_at(&params.key, &params.nonce, 0, &mut blob);
    let pubopts = PublicLayerBlockCipherOptions::new(hmac_sha256(&params.key, &blob));
    let enc = EncryptedLayer {
        pubopts,
        recipients: vec![wrap(&private.to_json())?],
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
