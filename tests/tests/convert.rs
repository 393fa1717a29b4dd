//! `veil convert` and `veil inspect` end to end, on the two-layer busybox image built with
//! umoci (tests/src/image.rs), with an 8 MiB random file and a small text file added to
//! the top layer.
//!
//! 1. Interop: `veil convert oci:SRC:v1 oci:ENC:v1 --encrypt --recipient jwe:rsa.pub
//!    --recipient jwe:ec.pub`; skopeo 1.9 (`--decryption-key`) decrypts it with either
//!    private key (and refuses a stranger's); `umoci unpack` of the decrypted image and of
//!    the source give the same root filesystem (paths, types, modes, owners, file mtimes,
//!    contents, link targets), except for the two metadata entries eStargz defines in the
//!    tar stream (`stargz.index.json` and the landmark; Veil's lazy mounts hide them). The
//!    same for zstd:chunked, compared layer tar by layer tar (umoci 0.4.7 cannot unpack
//!    zstd layers), where nothing may differ. The decrypted configs' diff IDs are the
//!    decompressed layers' digests.
//! 2. Determinism: converting twice without `--encrypt` gives the same layer and manifest
//!    digests (both formats); a second push to a registry uploads no blob; encrypted
//!    conversions differ (fresh keys), as they must.
//! 3. Lazy: converted, encrypted and pushed to a loopback registry, `veil mount
//!    --keys-dir` serves the small files exactly while the registry has served under 10 %
//!    of the big layer, then the big file whole (both formats); through containerd,
//!    `veil pull` serves the layers lazily and `ctr run` prints the files (both formats,
//!    both recipient kinds: JWE with `[decryption] keys_dir`, and the attestation-agent
//!    packet alone, its KEK from the daemon's `file` KEK source).
//! 4. `veil inspect` names the format, the encryption (JWE algorithms, the KBS kid of an
//!    attestation-agent recipient) and whether and why each layer mounts lazily; the
//!    attestation-agent packet has coco_keyprovider's exact shape and unwraps with the KEK
//!    to private options carrying the sealed TOC digest.
//!
//! Conversion throughput (MB/s) and the size change against the source are printed.
//! Needs root, umoci, skopeo, busybox-static, docker-registry, containerd, runc,
//! FUSE. Run with `cargo test -p veil-tests --test convert -- --nocapture`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::image::{build_test_image_with, TestImage};
use veil_tests::lazy_image::{random_bytes, sha256_hex};
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::local_registry::LocalRegistry;
use veil_tests::mount_cli::{expect_success, read_file, sha256_file, VeilMount, READ_TIMEOUT};
use veil_tests::process::run_with_timeout;

/// The big random file added by layer 2.
const BIG_PATH: &str = "/data/big.bin";
const BIG_SIZE: usize = 8 << 20;
/// A small file added by layer 2.
const NOTES_PATH: &str = "/data/notes.txt";
const NOTES_TEXT: &str = "veil convert: a small file beside a big one\n";
/// eStargz's own entries in the tar stream.
const ESTARGZ_EXTRAS: [&str; 3] = [
    "stargz.index.json",
    ".no.prefetch.landmark",
    ".prefetch.landmark",
];
const VEIL_TIMEOUT: Duration = Duration::from_secs(300);
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------
// Fixture: the image, the keys, running commands.

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    image: TestImage,
    big: Vec<u8>,
    runs: std::cell::Cell<u32>,
}

impl Fixture {
    fn new(name: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("veil-convert-{name}-"))
            .tempdir()?;
        let dir = tmp.path().canonicalize()?;
        Self::in_dir(tmp, dir)
    }

    fn in_dir(tmp: tempfile::TempDir, dir: PathBuf) -> anyhow::Result<Self> {
        let big = random_bytes(BIG_SIZE, 0xc0de);
        let work = dir.join("image");
        std::fs::create_dir_all(&work)?;
        let image = build_test_image_with(
            &work,
            "veil.test/convert",
            "v1",
            &[(BIG_PATH, &big), (NOTES_PATH, NOTES_TEXT.as_bytes())],
        )?;
        let f = Self {
            _tmp: tmp,
            dir,
            image,
            big,
            runs: std::cell::Cell::new(0),
        };
        f.make_keys()?;
        Ok(f)
    }

    /// The keys, made with `veil keys gen` (so skopeo's decryption below also checks that
    /// what it writes is what ocicrypt reads: PKCS#8 private keys, SPKI public keys).
    fn make_keys(&self) -> anyhow::Result<()> {
        for d in ["rsa", "ec", "stranger"] {
            std::fs::create_dir_all(self.key(d))?;
        }
        let key = |name: &str| self.key(name).to_string_lossy().into_owned();
        let (rsa, rsa_pub, ec, ec_pub) = (
            key("rsa/rsa.pem"),
            key("rsa.pub"),
            key("ec/ec.pem"),
            key("ec.pub"),
        );
        let (stranger, stranger_pub) = (key("stranger/stranger.pem"), key("stranger.pub"));
        let kek = key("kek.bin");
        let gens: [&[&str]; 4] = [
            &[
                "rsa",
                "--bits",
                "2048",
                "--out",
                &rsa,
                "--public-out",
                &rsa_pub,
            ],
            &["ec", "--out", &ec, "--public-out", &ec_pub],
            &[
                "rsa",
                "--bits",
                "2048",
                "--out",
                &stranger,
                "--public-out",
                &stranger_pub,
            ],
            &["kek", "--out", &kek],
        ];
        for gen in gens {
            let args = [&["keys", "gen"][..], gen].concat();
            expect_success(&format!("veil {}", args.join(" ")), &self.veil(&args)?)?;
        }
        Ok(())
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join("keys").join(name)
    }

    /// `oci:<layout>:v1` of the source image.
    fn source(&self) -> String {
        format!("oci:{}:{}", self.image.layout.display(), self.image.tag)
    }

    /// `oci:<dir>/<name>:v1`.
    fn layout(&self, name: &str) -> String {
        format!("oci:{}:v1", self.dir.join(name).display())
    }

    /// Runs `program args` in `cwd`, bounded; fails with its output unless it succeeds.
    fn tool(&self, program: &str, cwd: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.tool_status(program, cwd, args)?;
        expect_success(&format!("{program} {}", args.join(" ")), &out)?;
        Ok(out)
    }

    fn tool_status(&self, program: &str, cwd: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd).args(args);
        run_with_timeout(cmd, TOOL_TIMEOUT, &logs.join(format!("{n}-{program}")))
    }

    /// `veil ARGS`, bounded, in the fixture's directory.
    fn veil(&self, args: &[&str]) -> anyhow::Result<Output> {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut cmd = Command::new(veil_tests::veil_binary("veil"));
        cmd.current_dir(&self.dir).args(args);
        run_with_timeout(cmd, VEIL_TIMEOUT, &logs.join(format!("{n}-veil")))
    }

    /// `veil convert --json ARGS`; returns the report, printing the progress lines.
    fn convert(&self, what: &str, args: &[&str]) -> anyhow::Result<Report> {
        let mut all = vec!["convert", "--json"];
        all.extend_from_slice(args);
        let t = Instant::now();
        let out = self.veil(&all)?;
        expect_success(&format!("veil {}", all.join(" ")), &out)?;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("veil convert --json printed {:?}", text(&out.stdout)))?;
        let report = Report(report);
        eprintln!(
            "[{what}] veil convert took {:.2?}:\n{}{}",
            t.elapsed(),
            text(&out.stderr),
            report.throughput_line()
        );
        Ok(report)
    }
}

/// `veil convert --json`'s report.
struct Report(Value);

impl Report {
    fn manifest_digest(&self) -> String {
        self.0["manifest_digest"]
            .as_str()
            .unwrap_or_default()
            .into()
    }

    fn layers(&self) -> Vec<&Value> {
        self.0["layers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    fn layer_digests(&self) -> Vec<String> {
        self.layers()
            .iter()
            .map(|l| l["digest"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn sum(&self, key: &str) -> u64 {
        self.layers().iter().filter_map(|l| l[key].as_u64()).sum()
    }

    /// Throughput and size change, for the closing note.
    fn throughput_line(&self) -> String {
        let secs = self.0["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
        let (src, out, tar) = (
            self.sum("source_size"),
            self.sum("size"),
            self.sum("source_tar_size"),
        );
        format!(
            "THROUGHPUT: {} layers, {src} -> {out} bytes ({:+.2} % vs the source), {tar} bytes \
             uncompressed, {secs:.2} s: {:.1} MB/s of source blobs, {:.1} MB/s uncompressed \
             (debug build)\n",
            self.layers().len(),
            (out as f64 - src as f64) * 100.0 / src.max(1) as f64,
            src as f64 / secs / 1e6,
            tar as f64 / secs / 1e6,
        )
    }
}

// ---------------------------------------------------------------------------------------
// Comparing file systems and layer tars.

/// One file system object, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Regular files: mtime seconds.
    mtime: Option<i64>,
    /// Regular files: sha256 of the contents; symlinks: the target.
    data: String,
}

/// Every object below `root`, by path relative to it.
fn tree(root: &Path) -> anyhow::Result<BTreeMap<String, Node>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            let (kind, data, mtime) = if ft.is_dir() {
                stack.push(path.clone());
                ('d', String::new(), None)
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                ('l', target.to_string_lossy().into_owned(), None)
            } else if ft.is_file() {
                ('f', sha256_hex(&std::fs::read(&path)?), Some(meta.mtime()))
            } else {
                ('o', String::new(), None)
            };
            out.insert(
                rel,
                Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime,
                    data,
                },
            );
        }
    }
    Ok(out)
}

/// Compares two maps; returns the differences (at most 20 shown).
fn differences<T: PartialEq + std::fmt::Debug>(
    a: &BTreeMap<String, T>,
    b: &BTreeMap<String, T>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diffs.push(format!("only in the source: {k}")),
            Some(w) if w != v => diffs.push(format!("{k}: source {v:?}, converted {w:?}")),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("only in the converted image: {k}"));
        }
    }
    diffs
}

/// One tar entry, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TarItem {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: String,
    sha: String,
}

/// The entries of a layer blob (gzip, zstd or plain tar), by cleaned path.
fn layer_entries(blob: &[u8]) -> anyhow::Result<BTreeMap<String, TarItem>> {
    let tar_bytes = match blob {
        [0x1f, 0x8b, ..] => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out)?;
            out
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd::stream::decode_all(blob)?,
        _ => blob.to_vec(),
    };
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    for entry in archive.entries()? {
        let mut e = entry?;
        let path = e
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.insert(
            path,
            TarItem {
                kind: h.entry_type().as_byte(),
                mode: h.mode()? & 0o7777,
                uid: h.uid()?,
                gid: h.gid()?,
                mtime: h.mtime()?,
                size: h.size()?,
                link: e
                    .link_name()?
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha: sha256_hex(&data),
            },
        );
    }
    Ok(out)
}

/// An OCI layout's image `tag`: (manifest, config).
fn layout_image(dir: &Path, tag: &str) -> anyhow::Result<(Value, Value)> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
        })
        .with_context(|| format!("{} has no tag {tag}", dir.display()))?;
    let blob = |digest: &str| -> anyhow::Result<Vec<u8>> {
        let path = dir.join("blobs").join(digest.replacen(':', "/", 1));
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        if format!("sha256:{}", sha256_hex(&bytes)) != digest {
            bail!("blob {digest} of {} has other contents", dir.display());
        }
        Ok(bytes)
    };
    let manifest: Value =
        serde_json::from_slice(&blob(entry["digest"].as_str().unwrap_or_default())?)?;
    let config: Value = serde_json::from_slice(&blob(
        manifest["config"]["digest"].as_str().unwrap_or_default(),
    )?)?;
    Ok((manifest, config))
}

fn layout_blob(dir: &Path, digest: &str) -> anyhow::Result<Vec<u8>> {
    Ok(std::fs::read(
        dir.join("blobs").join(digest.replacen(':', "/", 1)),
    )?)
}

/// Checks that `dec` (a decrypted copy of a Veil conversion) holds, layer by layer, the
/// same tar entries as the source, apart from `extras`; and that its config's diff IDs
/// are its layers' uncompressed digests.
fn compare_layers(f: &Fixture, dec: &Path, extras: &[&str], what: &str) -> anyhow::Result<()> {
    let (src_manifest, _) = layout_image(&f.image.layout, &f.image.tag)?;
    let (dec_manifest, dec_config) = layout_image(dec, "v1")?;
    let src_layers = src_manifest["layers"].as_array().context("source layers")?;
    let dec_layers = dec_manifest["layers"]
        .as_array()
        .context("decrypted layers")?;
    if src_layers.len() != dec_layers.len() {
        bail!(
            "{what}: {} layers, the source has {}",
            dec_layers.len(),
            src_layers.len()
        );
    }
    for (i, (s, d)) in src_layers.iter().zip(dec_layers).enumerate() {
        let media = d["mediaType"].as_str().unwrap_or_default();
        if media.ends_with("+encrypted") {
            bail!("{what}: layer {i} is still {media}");
        }
        if d["annotations"].as_object().is_some_and(|a| {
            a.keys()
                .any(|k| k.starts_with("org.opencontainers.image.enc."))
        }) {
            bail!("{what}: layer {i} kept ocicrypt annotations");
        }
        let blob = layout_blob(dec, d["digest"].as_str().unwrap_or_default())?;
        let src = layer_entries(&layout_blob(
            &f.image.layout,
            s["digest"].as_str().unwrap_or_default(),
        )?)?;
        let mut got = layer_entries(&blob)?;
        for extra in extras {
            got.remove(*extra);
        }
        let diffs = differences(&src, &got);
        if !diffs.is_empty() {
            bail!(
                "{what}: layer {i} differs from the source:\n  {}",
                diffs.join("\n  ")
            );
        }
        // The config's diff ID is the decompressed layer's digest.
        let tar = match &blob[..] {
            [0x1f, 0x8b, ..] => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut out)?;
                out
            }
            _ => zstd::stream::decode_all(&blob[..])?,
        };
        let want = dec_config["rootfs"]["diff_ids"][i]
            .as_str()
            .unwrap_or_default();
        if format!("sha256:{}", sha256_hex(&tar)) != want {
            bail!("{what}: layer {i}'s uncompressed digest is not the config's diff_id {want}");
        }
    }
    eprintln!(
        "[{what}] skopeo's decryption has, layer by layer, the source's tar entries{}",
        if extras.is_empty() {
            String::new()
        } else {
            format!(" (plus eStargz's {extras:?})")
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1. skopeo decrypts what Veil encrypted; umoci unpacks the same tree.

#[test]
fn skopeo_decrypts_veil_encrypted_images_to_the_same_root_filesystem() {
    veil_tests::require_root();
    let f = Fixture::new("interop").unwrap_or_else(|e| panic!("{e:#}"));
    let run = || -> anyhow::Result<()> {
        let d = f.dir.clone();
        let rsa_pub = f.key("rsa.pub");
        let ec_pub = f.key("ec.pub");
        let recipients = [
            "--encrypt".to_string(),
            "--recipient".into(),
            format!("jwe:{}", rsa_pub.display()),
            "--recipient".into(),
            format!("jwe:{}", ec_pub.display()),
        ];
        let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();

        // eStargz (the default format).
        let src = f.source();
        let enc = f.layout("enc-estargz");
        let mut args = vec![src.as_str(), enc.as_str()];
        args.extend_from_slice(&recipients);
        let report = f.convert("interop estargz", &args)?;
        if report.layers().len() != 2 || report.layers().iter().any(|l| l["encrypted"] != true) {
            bail!("expected two encrypted layers: {}", report.0);
        }
        let rsa_key = f.key("rsa/rsa.pem");
        let ec_key = f.key("ec/ec.pem");
        for (key, out) in [(&rsa_key, "dec-rsa"), (&ec_key, "dec-ec")] {
            let key = key.to_string_lossy().into_owned();
            let dst = format!("oci:{out}:v1");
            f.tool(
                "skopeo",
                &d,
                &[
                    "--insecure-policy",
                    "copy",
                    "--decryption-key",
                    &key,
                    "oci:enc-estargz:v1",
                    &dst,
                ],
            )?;
        }
        let stranger = f
            .key("stranger/stranger.pem")
            .to_string_lossy()
            .into_owned();
        let refused = f.tool_status(
            "skopeo",
            &d,
            &[
                "--insecure-policy",
                "copy",
                "--decryption-key",
                &stranger,
                "oci:enc-estargz:v1",
                "oci:dec-stranger:v1",
            ],
        )?;
        if refused.status.success() {
            bail!("skopeo decrypted the image with a stranger's key");
        }
        eprintln!("[interop] skopeo decrypted with the RSA and the EC key, refused a stranger's");

        // umoci unpacks the source and the decrypted copy to the same tree.
        let src_image = format!("{}:{}", f.image.layout.display(), f.image.tag);
        f.tool(
            "umoci",
            &d,
            &["unpack", "--image", &src_image, "unpacked-src"],
        )?;
        f.tool(
            "umoci",
            &d,
            &["unpack", "--image", "dec-rsa:v1", "unpacked-dec"],
        )?;
        let want = tree(&d.join("unpacked-src/rootfs"))?;
        let mut got = tree(&d.join("unpacked-dec/rootfs"))?;
        let mut extras = Vec::new();
        for name in ESTARGZ_EXTRAS {
            if got.remove(name).is_some() {
                extras.push(name);
            }
        }
        if !extras.contains(&"stargz.index.json") {
            bail!("the unpacked eStargz image lacks stargz.index.json: the format changed?");
        }
        let diffs = differences(&want, &got);
        if !diffs.is_empty() {
            bail!("umoci unpacked different trees:\n  {}", diffs.join("\n  "));
        }
        eprintln!(
            "[interop] umoci unpack: {} objects identical (paths, types, modes, owners, file \
             mtimes, contents, link targets); eStargz's own {extras:?} extra, as the format \
             defines (Veil's mounts hide them)",
            want.len()
        );
        if !want.contains_key("data/big.bin") || !want.contains_key("bin/busybox") {
            bail!(
                "the compared tree lacks the test files: {:?}",
                want.keys().take(20).collect::<Vec<_>>()
            );
        }
        if want.contains_key("etc/veil-doomed") {
            bail!("the whiteout of layer 2 was not applied");
        }
        compare_layers(
            &f,
            &d.join("dec-ec"),
            &ESTARGZ_EXTRAS,
            "interop estargz (EC key)",
        )?;

        // zstd:chunked: nothing may differ.
        let encz = f.layout("enc-zstd");
        let mut args = vec![src.as_str(), encz.as_str(), "--format", "zstd-chunked"];
        args.extend_from_slice(&recipients);
        f.convert("interop zstd:chunked", &args)?;
        let key = ec_key.to_string_lossy().into_owned();
        f.tool(
            "skopeo",
            &d,
            &[
                "--insecure-policy",
                "copy",
                "--decryption-key",
                &key,
                "oci:enc-zstd:v1",
                "oci:dec-zstd:v1",
            ],
        )?;
        compare_layers(
            &f,
            &d.join("dec-zstd"),
            &[],
            "interop zstd:chunked (EC key)",
        )?;
        Ok(())
    };
    run().unwrap_or_else(|e| panic!("{e:#}\n(work directory {})", f.dir.display()));
}

// ---------------------------------------------------------------------------------------
// 2. Deterministic output.

#[test]
fn converting_twice_gives_the_same_digests_and_pushes_nothing_new() {
    veil_tests::require_root();
    let f = Fixture::new("determinism").unwrap_or_else(|e| panic!("{e:#}"));
    let run = || -> anyhow::Result<()> {
        let src = f.source();
        for format in ["estargz", "zstd-chunked"] {
            let (a, b) = (
                f.layout(&format!("{format}-a")),
                f.layout(&format!("{format}-b")),
            );
            let first = f.convert(format, &[&src, &a, "--format", format])?;
            let second = f.convert(format, &[&src, &b, "--format", format])?;
            if first.layer_digests() != second.layer_digests()
                || first.manifest_digest() != second.manifest_digest()
            {
                bail!(
                    "{format}: two conversions differ:\n{:?} {}\n{:?} {}",
                    first.layer_digests(),
                    first.manifest_digest(),
                    second.layer_digests(),
                    second.manifest_digest()
                );
            }
            eprintln!(
                "[determinism] {format}: both conversions give manifest {} and layers {:?}",
                first.manifest_digest(),
                first.layer_digests()
            );
        }

        // Pushed twice to a registry: the second run finds every blob there.
        let registry = LocalRegistry::start(&f.dir.join("registry"))?;
        let dst = format!("{}/det/app:v1", registry.host());
        let first = f.convert("determinism push 1", &["--plain-http", &src, &dst])?;
        let uploads = |log: &str| log.matches("POST /v2/det/app/blobs/uploads/").count();
        let before = uploads(&registry.log_text());
        let second = f.convert("determinism push 2", &["--plain-http", &src, &dst])?;
        let after = uploads(&registry.log_text());
        if first.layers().iter().any(|l| l["stored"] != true)
            || second.layers().iter().any(|l| l["stored"] != false)
            || after != before
            || first.manifest_digest() != second.manifest_digest()
        {
            bail!(
                "the second push uploaded again ({before} -> {after} upload sessions):\n{}\n{}",
                first.0,
                second.0
            );
        }
        eprintln!(
            "[determinism] pushed twice to {dst}: {before} blob uploads the first time, none the \
             second (manifest {})",
            second.manifest_digest()
        );

        // Converting the converted image again, read from the registry by ranges, is a
        // fixed point: eStargz's own entries are dropped and written again the same way.
        let again = f.layout("again");
        let third = f.convert(
            "determinism from the registry",
            &["--plain-http", &dst, &again],
        )?;
        if third.manifest_digest() != first.manifest_digest() {
            bail!(
                "converting the conversion (from the registry) changed it: {} -> {}",
                first.manifest_digest(),
                third.manifest_digest()
            );
        }
        eprintln!(
            "[determinism] converting the converted image again (registry source) changes nothing"
        );

        // Encrypted layers get a fresh key each time, so their digests differ.
        let rsa = format!("jwe:{}", f.key("rsa.pub").display());
        let (e1, e2) = (f.layout("enc-a"), f.layout("enc-b"));
        let x = f.convert(
            "determinism enc",
            &[&src, &e1, "--encrypt", "--recipient", &rsa],
        )?;
        let y = f.convert(
            "determinism enc",
            &[&src, &e2, "--encrypt", "--recipient", &rsa],
        )?;
        if x.layer_digests()
            .iter()
            .any(|d| y.layer_digests().contains(d))
        {
            bail!("two encryptions gave the same layer digest: the key was not fresh");
        }
        if x.0["layers"][0]["diff_id"] != y.0["layers"][0]["diff_id"] {
            bail!("the encrypted layers' diff IDs differ (the plaintext must not)");
        }
        Ok(())
    };
    run().unwrap_or_else(|e| panic!("{e:#}\n(work directory {})", f.dir.display()));
}

// ---------------------------------------------------------------------------------------
// 3. Veil mounts and runs what it converted, lazily.

/// Mounts `reference` with `veil mount --keys-dir`; checks the small files and the laziness,
/// then the big file.
fn mount_and_read(
    stack: &LazyStack,
    f: &Fixture,
    name: &str,
    reference: &str,
    report: &Report,
) -> anyhow::Result<()> {
    let mut m = VeilMount::new(
        &stack.dir.join(format!("mnt-{name}")),
        &stack.dir.join("state"),
        &stack.dir.join("cli"),
    )?;
    let keys = f.key("rsa");
    let out = m.mount_with(reference, &["--keys-dir".as_ref(), keys.as_os_str()])?;
    expect_success("veil mount --keys-dir", &out)?;
    eprintln!("[{name}] {}", text(&out.stdout).trim_end());
    let root = m.dir.clone();
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    for (path, want) in [
        (f.image.marker_path, f.image.marker_text.as_str()),
        (f.image.layer2_path, f.image.layer2_text.as_str()),
        (NOTES_PATH, NOTES_TEXT),
    ] {
        let got = read_file(&inside(path), READ_TIMEOUT)?
            .with_context(|| format!("reading {path} through the mount"))?;
        if got != want.as_bytes() {
            bail!("{path} reads {:?} through the mount", text(&got));
        }
    }
    if inside(f.image.deleted_path).exists() {
        bail!("the whited-out {} is visible", f.image.deleted_path);
    }
    for extra in ESTARGZ_EXTRAS {
        if inside(extra).exists() {
            bail!("the format's own {extra} is visible in the mount");
        }
    }
    let big_layer = report.layers()[1]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let big_size = report.layers()[1]["size"].as_u64().unwrap_or(0);
    let served = stack.served(&big_layer).1;
    eprintln!(
        "[{name}] small files exact; the registry has served {served} of the top layer's \
         {big_size} bytes ({:.2} %)",
        served as f64 * 100.0 / big_size.max(1) as f64
    );
    if served * 10 >= big_size {
        bail!("the registry served {served} of {big_size} bytes of the top layer: not lazy");
    }
    let sum = sha256_file(&inside(BIG_PATH), READ_TIMEOUT)?;
    if sum != sha256_hex(&f.big) {
        bail!("{BIG_PATH} has sha256 {sum} through the mount");
    }
    eprintln!(
        "[{name}] {BIG_PATH} ({BIG_SIZE} bytes) exact; registry served {} bytes of that layer",
        stack.served(&big_layer).1
    );
    let out = m.umount()?;
    expect_success("veil umount", &out)?;
    if !m.wait_serving_exit(Duration::from_secs(10)) {
        bail!("the serving process outlived veil umount by 10 s");
    }
    let left = m.cleanup();
    if !left.is_empty() {
        bail!("veil umount left {left:?}");
    }
    Ok(())
}

#[test]
fn veil_mounts_and_runs_converted_encrypted_images_lazily() {
    with_stack("convert-lazy", |stack| {
        let tmp = tempfile::Builder::new()
            .prefix("fixture-")
            .tempdir_in(&stack.dir)?;
        let dir = tmp.path().to_path_buf();
        let f = Fixture::in_dir(tmp, dir)?;
        let src = f.source();
        let rsa = format!("jwe:{}", f.key("rsa.pub").display());
        let mut images = Vec::new();
        for format in ["estargz", "zstd-chunked"] {
            let reference = stack.image_ref(&format!("conv-{format}"), "v1");
            let report = f.convert(
                &format!("lazy {format}"),
                &[
                    "--plain-http",
                    &src,
                    &reference,
                    "--format",
                    format,
                    "--encrypt",
                    "--recipient",
                    &rsa,
                ],
            )?;
            mount_and_read(stack, &f, &format!("mount {format}"), &reference, &report)?;
            images.push((format, reference, report));
        }

        // The attestation-agent recipient only (coco_keyprovider's packet, KEK named by a
        // KBS kid); the daemon gets the KEK from its `file` KEK source.
        let kid = "kbs:///default/image-kek/convert-lazy";
        let kek = f.key("kek.bin").to_string_lossy().into_owned();
        let kek_dir = stack.dir.join("keks");
        std::fs::create_dir_all(kek_dir.join("default/image-kek"))?;
        std::fs::copy(
            f.key("kek.bin"),
            kek_dir.join("default/image-kek/convert-lazy"),
        )?;
        // With a prefetch list, so that the layers' diff IDs differ from the JWE images'
        // (containerd would otherwise find their snapshots already present).
        let list = stack.dir.join("prefetch.txt");
        std::fs::write(
            &list,
            format!(
                "# files first\n{}\n{NOTES_PATH}\n{}\n/etc/absent-everywhere\n",
                f.image.marker_path, f.image.layer2_path
            ),
        )?;
        let list = list.to_string_lossy().into_owned();
        for format in ["estargz", "zstd-chunked"] {
            let reference = stack.image_ref(&format!("conv-kbs-{format}"), "v1");
            let report = f.convert(
                &format!("lazy kbs {format}"),
                &[
                    "--plain-http",
                    &src,
                    &reference,
                    "--format",
                    format,
                    "--encrypt",
                    "--kbs-kid",
                    kid,
                    "--kek-file",
                    &kek,
                    "--prefetch-list",
                    &list,
                ],
            )?;
            let prioritized: Vec<u64> = report
                .layers()
                .iter()
                .map(|l| l["prioritized"].as_u64().unwrap_or(0))
                .collect();
            if prioritized != [1, 2] {
                bail!("the prefetch list placed {prioritized:?} files first, expected [1, 2]");
            }
            images.push((format, reference, report));
        }

        // Through containerd: Veil's snapshotter with the keys directory and the KEKs.
        std::fs::write(
            stack.dir.join("veil-config.toml"),
            format!(
                "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = false\n\n\
                 [decryption]\nkeys_dir = \"{}\"\nkek_sources = [\"file\"]\nkek_dir = \"{}\"\n",
                stack.registry.host(),
                f.key("rsa").display(),
                kek_dir.display()
            ),
        )?;
        stack.start()?;
        for (n, (format, reference, report)) in images.iter().enumerate() {
            let format = format!("{format}, {}", if n < 2 { "jwe" } else { "kbs" });
            let big = report.layers()[1]["digest"].as_str().unwrap_or_default();
            let before = stack.served(big).1;
            let (out, took) = stack.veil_pull(reference, &[])?;
            expect_success("veil pull", &out)?;
            let stdout = text(&out.stdout);
            eprintln!("[ctr {format}] veil pull took {took:.2?}:\n{stdout}");
            if !stdout.contains("2 lazy, 0 unpacked") {
                bail!("veil pull did not serve both layers lazily:\n{stdout}");
            }
            let printed = stack.cd().run_container(
                SNAPSHOTTER,
                reference,
                &format!("convert-{n}"),
                &[
                    "/bin/cat",
                    f.image.marker_path,
                    f.image.layer2_path,
                    NOTES_PATH,
                ],
            )?;
            let want = format!("{}{}{NOTES_TEXT}", f.image.marker_text, f.image.layer2_text);
            if printed != want {
                bail!("the container printed {printed:?}, expected {want:?}");
            }
            let served = stack.served(big).1 - before;
            let size = report.layers()[1]["size"].as_u64().unwrap_or(0);
            eprintln!(
                "[ctr {format}] ctr run printed the files; pull and container made the registry \
                 serve {served} of the top layer's {size} bytes"
            );
            if served * 10 >= size {
                bail!("the container's reads fetched {served} of {size} bytes: not lazy");
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// 4. veil inspect; the attestation-agent recipient.

#[test]
fn veil_inspect_names_format_encryption_and_lazy_ability() {
    veil_tests::require_root();
    let f = Fixture::new("inspect").unwrap_or_else(|e| panic!("{e:#}"));
    let run = || -> anyhow::Result<()> {
        let src = f.source();
        let enc = f.layout("enc-kbs");
        let rsa = format!("jwe:{}", f.key("rsa.pub").display());
        let kek = f.key("kek.bin").to_string_lossy().into_owned();
        let kid = "kbs:///default/image-kek/convert-test";
        let report = f.convert(
            "inspect",
            &[
                &src,
                &enc,
                "--encrypt",
                "--recipient",
                &rsa,
                "--kbs-kid",
                kid,
                "--kek-file",
                &kek,
                "--layers",
                "-1",
            ],
        )?;
        let layers = report.layers();
        if layers[0]["encrypted"] != false || layers[1]["encrypted"] != true {
            bail!("--layers -1 must encrypt only the top layer: {}", report.0);
        }

        // The source: plain tar+gzip layers, not lazy, with the reason.
        let out = f.veil(&["inspect", &src])?;
        expect_success("veil inspect SRC", &out)?;
        let shown = text(&out.stdout);
        eprintln!("[inspect] veil inspect of the umoci image:\n{shown}");
        for needle in [
            "format       tar+gzip",
            "encryption   none",
            "lazy         no:",
            "toc.digest",
        ] {
            if !shown.contains(needle) {
                bail!("veil inspect of the source lacks {needle:?}");
            }
        }

        // The conversion, without keys.
        let out = f.veil(&["inspect", &enc])?;
        expect_success("veil inspect ENC", &out)?;
        let shown = text(&out.stdout);
        eprintln!("[inspect] veil inspect of the converted image:\n{shown}");
        for needle in [
            "2 (2 lazily mountable by Veil)",
            "format       eStargz",
            "jwe [RSA-OAEP]",
            &format!("provider.attestation-agent (KBS) [A256GCM; kid {kid}]"),
            "yes, with a key for one of its recipients",
            "chunks       unknown: not read: encrypted",
            "TOC authenticated by the manifest annotation",
        ] {
            if !shown.contains(needle) {
                bail!("veil inspect of the conversion lacks {needle:?}");
            }
        }

        // With the RSA key: the TOC of the encrypted layer is read and the seal seen.
        let keys = f.key("rsa").to_string_lossy().into_owned();
        let out = f.veil(&["inspect", "--json", "--keys-dir", &keys, &enc])?;
        expect_success("veil inspect --json --keys-dir", &out)?;
        let json: Value = serde_json::from_slice(&out.stdout)?;
        let top = &json["layers"][1];
        eprintln!("[inspect] top layer, with the key: {top}");
        if top["lazy"] != true
            || top["encryption"]["sealed_toc_digest"] != true
            || top["chunks"].as_u64().unwrap_or(0) < 3
            || top["files"].as_u64().unwrap_or(0) < 3
        {
            bail!("veil inspect --keys-dir: unexpected top layer {top}");
        }
        // zstd:chunked is named as such.
        let zs = f.layout("zstd");
        f.convert("inspect zstd", &[&src, &zs, "--format", "zstd-chunked"])?;
        let out = f.veil(&["inspect", &zs])?;
        let shown = text(&out.stdout);
        if !shown.contains("format       zstd:chunked")
            || !shown.contains("lazy         yes: zstd:chunked")
        {
            bail!("veil inspect of a zstd:chunked conversion:\n{shown}");
        }

        // The attestation-agent packet: coco_keyprovider's exact shape, unwrapped by the KEK.
        let (manifest, _) = layout_image(&f.dir.join("enc-kbs"), "v1")?;
        let annotations = &manifest["layers"][1]["annotations"];
        let packet_b64 = annotations
            ["org.opencontainers.image.enc.keys.provider.attestation-agent"]
            .as_str()
            .context("no attestation-agent recipient")?;
        let packet_json = veil_keyprovider::secret::b64_decode(packet_b64)?;
        let order: Vec<String> = {
            let text = String::from_utf8(packet_json.clone())?;
            ["\"kid\"", "\"wrapped_data\"", "\"iv\"", "\"wrap_type\""]
                .iter()
                .filter_map(|k| text.find(k).map(|i| (i, k.to_string())))
                .collect::<BTreeMap<_, _>>()
                .into_values()
                .collect()
        };
        let packet: Value = serde_json::from_slice(&packet_json)?;
        let keys: Vec<&String> = packet
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if keys.len() != 4 || order != ["\"kid\"", "\"wrapped_data\"", "\"iv\"", "\"wrap_type\""] {
            bail!("the packet is not coco_keyprovider's shape: {packet}");
        }
        let iv = veil_keyprovider::secret::b64_decode(packet["iv"].as_str().unwrap_or_default())?;
        if packet["kid"] != kid || packet["wrap_type"] != "A256GCM" || iv.len() != 12 {
            bail!("unexpected packet fields: {packet}");
        }
        let parsed = veil_keyprovider::aa_packet::AnnotationPacket::from_json(&packet_json)?;
        let kek = veil_keyprovider::secret::SecretBytes::new(std::fs::read(f.key("kek.bin"))?);
        let private_json = parsed.unwrap(&kek)?;
        let wrapped = veil_keyprovider::secret::b64_decode(
            packet["wrapped_data"].as_str().unwrap_or_default(),
        )?;
        if wrapped.len() != private_json.len() + 16 {
            bail!("wrapped_data is not the private options plus a 16-byte tag");
        }
        let private =
            veil_keyprovider::ocicrypt::PrivateLayerBlockCipherOptions::from_json(&private_json)?;
        let sealed = veil_keyprovider::ocicrypt::sealed_toc_digest(&private)?;
        let toc = annotations["containerd.io/snapshot/stargz/toc.digest"].as_str();
        if sealed.as_deref() != toc || toc.is_none() {
            bail!("the sealed TOC digest {sealed:?} is not the layer's TOC digest {toc:?}");
        }
        eprintln!(
            "[inspect] attestation-agent packet: {{kid, wrapped_data, iv (12 bytes), wrap_type \
             A256GCM}}, unwrapped with the KEK: {} bytes of private options with the sealed TOC \
             digest",
            private_json.len()
        );
        Ok(())
    };
    run().unwrap_or_else(|e| panic!("{e:#}\n(work directory {})", f.dir.display()));
}
