//! The status quo of a CoCo guest's image pull, for the guest flow to measure Veil
//! against: what CDH's own puller (image-rs, PROTOCOLS.md 8.3) does, on the same image
//! from the same registry, in the same run.
//!
//! Every layer blob is fetched whole (veil-registry's client, one `GET` a blob), its
//! layer key unwrapped the way CDH does it (the KEK fetched from the test KBS after
//! sample attestation, through veil-keyprovider's `Decryption` and its KBS KEK source),
//! decrypted and HMAC-checked in one pass (veil-keyprovider's stream cipher),
//! decompressed and unpacked with the `tar` crate as plaintext files into
//! `work/layers/<n>` (image-rs: `/run/kata-containers/image/layers/<n>`, a tmpfs), the
//! uncompressed tar's sha256 checked against the config's `diff_id`. Then one overlay of
//! the layer directories (upper/work in `work/overlay`) at `bundle/rootfs`, a
//! `config.json` (`runc spec`, with the image config's env and working directory), and
//! the container run with `runc` as kata-agent would. Whiteouts: `.wh.<name>` becomes an
//! overlay whiteout (a 0/0 character device), `.wh..wh..opq` the opaque xattr on its
//! directory (the sample image has none). eStargz's own entries (`stargz.index.json`,
//! the landmark) are unpacked as files, as image-rs does.
//!
//! The report: time from the pull's start to the container's first output, the bytes
//! the registry served (its access log), the bytes unpacked into the work directory
//! (what a tmpfs `/run` would hold in guest RAM). The root is unmounted and the work
//! directory removed afterwards, by path.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest as _, Sha256};
use veil_blob::MemoryBlob;
use veil_keyprovider::kbs::attester::SampleAttester;
use veil_keyprovider::kbs::{KbsClient, KbsClientConfig, KbsKekSource};
use veil_keyprovider::kek::KekChain;
use veil_keyprovider::layer::Decryption;
use veil_registry::{ClientOptions, Reference, RegistryClient};

use crate::bundle::{runc_run_timed, unmount_rootfs};
use crate::guest_stack::GuestStack;
use crate::mounts::mounts_below;
use crate::registry_log::blob_served;

/// The largest layer blob the whole pull fetches (the demo's image is far smaller).
const MAX_LAYER_BYTES: u64 = 4 << 30;
/// How long one registry operation of the whole pull may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one KBS request may take.
const KBS_TIMEOUT: Duration = Duration::from_secs(20);
/// The container id of the status quo's run.
const CONTAINER_ID: &str = "status-quo";

/// One layer as the whole pull handled it.
#[derive(Debug, Clone)]
pub struct WholeLayer {
    /// Its digest.
    pub digest: String,
    /// Its size in the registry.
    pub size: u64,
    /// Bytes of it the registry served to the whole pull.
    pub served: u64,
    /// Bytes of regular files unpacked from it.
    pub unpacked: u64,
    /// Size of its uncompressed tar (what the diff_id covers).
    pub tar_bytes: u64,
}

/// What the whole pull measured.
#[derive(Debug, Clone)]
pub struct WholePull {
    /// The layers, lowest first.
    pub layers: Vec<WholeLayer>,
    /// From the pull's start until the root was mounted and config.json written.
    pub pull_time: Duration,
    /// Of that, the time spent fetching the layer blobs.
    pub fetch_time: Duration,
    /// Of that, the time spent getting the KEK (attestation), decrypting, decompressing,
    /// hashing and unpacking them.
    pub unpack_time: Duration,
    /// From the pull's start to the container's first output.
    pub first_output: Duration,
    /// From the pull's start to the container's exit.
    pub exited: Duration,
    /// What the container printed.
    pub output: String,
    /// Bytes written to the work directory (the unpacked layers and the overlay's upper
    /// directory), measured when the container had exited.
    pub work_dir_bytes: u64,
    /// Mounts left below the status quo's directories after the teardown.
    pub left_mounted: Vec<String>,
}

impl WholePull {
    /// Layer bytes the registry served.
    pub fn served(&self) -> u64 {
        self.layers.iter().map(|l| l.served).sum()
    }

    /// The image's layer bytes.
    pub fn image_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Bytes of regular files unpacked from the layers.
    pub fn unpacked(&self) -> u64 {
        self.layers.iter().map(|l| l.unpacked).sum()
    }
}

/// Pulls `image` from `guest`'s registry as CDH's puller does (the KEK from `guest`'s
/// KBS), runs `script` in it with runc, tears it down; see the module doc.
pub fn run(guest: &GuestStack, image: &str, script: &str) -> anyhow::Result<WholePull> {
    let log_before = guest.registry.log().len();
    let top = guest.dir.join("status-quo");
    let work = top.join("work");
    let bundle = guest.bundle(CONTAINER_ID)?;
    let result = pull_and_run(guest, image, script, &work, &bundle, log_before);
    // Teardown by path, whatever happened: the root first, then the work directory.
    let rootfs = bundle.join("rootfs");
    let teardown = if mounts_below(&rootfs).is_empty() {
        Ok(())
    } else {
        unmount_rootfs(&bundle)
    };
    let _ = std::fs::remove_dir_all(&work);
    let mut report = result?;
    teardown?;
    report.left_mounted = [mounts_below(&top), mounts_below(&bundle)].concat();
    Ok(report)
}

fn pull_and_run(
    guest: &GuestStack,
    image: &str,
    script: &str,
    work: &Path,
    bundle: &Path,
    log_before: usize,
) -> anyhow::Result<WholePull> {
    let started = Instant::now();
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: vec![guest.registry.host()],
        max_blob_bytes: MAX_LAYER_BYTES,
        operation_timeout: REGISTRY_TIMEOUT,
        ..ClientOptions::default()
    })?;
    let reference = Reference::parse(image)?;
    let rt = &guest.runtime;
    let resolved = rt.block_on(client.resolve(&reference))?;
    let manifest = resolved.manifest;
    let config_bytes = rt.block_on(client.fetch_blob(&reference, &manifest.config.digest))?;
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).context("parsing the image config")?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("the image config has no rootfs.diff_ids")?
        .iter()
        .map(|d| d.as_str().unwrap_or_default().to_string())
        .collect();
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "{} layers but {} diff_ids in the image config",
            manifest.layers.len(),
            diff_ids.len()
        );
    }
    let kbs_url = guest.kbs.url().to_string();
    let decryption = Decryption::load(&guest.dir.join("no-keys"), false).with_kek_chain(
        move || -> Result<KekChain, veil_keyprovider::kbs::KbsError> {
            let mut cfg = KbsClientConfig::new(kbs_url);
            cfg.allow_plain_http = true;
            cfg.timeout = KBS_TIMEOUT;
            let kbs = KbsClient::new(&cfg, Arc::new(SampleAttester))?;
            Ok(KekChain::new(vec![Arc::new(KbsKekSource::new(Arc::new(
                kbs,
            )))]))
        },
    );

    let mut layers = Vec::new();
    let mut lowers = Vec::new();
    let (mut fetch_time, mut unpack_time) = (Duration::ZERO, Duration::ZERO);
    for (n, (desc, diff_id)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
        let name = desc.digest.to_string();
        let fetching = Instant::now();
        let blob = rt.block_on(client.fetch_blob(&reference, &desc.digest))?;
        fetch_time += fetching.elapsed();
        let unpacking = Instant::now();
        let size = blob.len() as u64;
        let dir = work.join("layers").join(n.to_string());
        std::fs::create_dir_all(&dir)?;
        let ciphertext: Arc<dyn veil_blob::BlobSource> = Arc::new(MemoryBlob(blob));
        let (media_type, plain) = if Decryption::is_encrypted(desc) {
            let opened = decryption
                .open(&name, desc, ciphertext.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let reader = opened.cipher.reader(ciphertext, rt.handle().clone());
            (opened.plain.media_type, Plain::Decrypting(Box::new(reader)))
        } else {
            let bytes = read_all(&*ciphertext)?;
            (
                desc.media_type.clone(),
                Plain::Clear(std::io::Cursor::new(bytes)),
            )
        };
        let (tar_bytes, digest, plain) = unpack_layer(plain, &media_type, &dir)
            .with_context(|| format!("unpacking layer {name}"))?;
        if &digest != diff_id {
            bail!("layer {name}: the uncompressed tar is {digest}, the config says {diff_id}");
        }
        if let Plain::Decrypting(reader) = plain {
            reader
                .finish()
                .map_err(|e| anyhow::anyhow!("layer {name} is not authentic: {e}"))?;
        }
        unpack_time += unpacking.elapsed();
        layers.push(WholeLayer {
            digest: name,
            size,
            served: 0,
            unpacked: file_bytes(&dir)?,
            tar_bytes,
        });
        lowers.push(dir);
    }
    let (upper, overlay_work) = (work.join("overlay/upper"), work.join("overlay/work"));
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&overlay_work)?;
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    mount_overlay(&lowers, &upper, &overlay_work, &rootfs)?;
    write_spec(bundle, &config)?;
    let pull_time = started.elapsed();
    let run = runc_run_timed(&guest.dir, bundle, CONTAINER_ID, script, started)?;
    let work_dir_bytes = file_bytes(work)?;
    let log = guest.registry.log();
    let since = log.get(log_before..).unwrap_or_default();
    for l in &mut layers {
        l.served = blob_served(since, &l.digest).1;
    }
    Ok(WholePull {
        layers,
        pull_time,
        fetch_time,
        unpack_time,
        first_output: run.first_output,
        exited: run.exited,
        output: run.stdout,
        work_dir_bytes,
        left_mounted: Vec::new(),
    })
}

fn read_all(blob: &dyn veil_blob::BlobSource) -> anyhow::Result<Vec<u8>> {
    let bytes = futures::executor::block_on(blob.read_range(0..blob.size()))?;
    Ok(bytes)
}

/// Counts and hashes what passes through (the uncompressed tar: its diff_id).
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A layer's compressed plaintext: decrypted on the way (its HMAC checked once read
/// whole), or the blob itself.
enum Plain {
    Decrypting(Box<veil_keyprovider::stream_cipher::VerifyingReader>),
    Clear(std::io::Cursor<Vec<u8>>),
}

impl Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Plain::Decrypting(r) => r.read(buf),
            Plain::Clear(r) => r.read(buf),
        }
    }
}

/// Decompresses `plain` (`media_type`: tar, tar+gzip) and unpacks it into `dir`; the
/// tar's size and `sha256:` digest, and `plain` back (read to its end).
fn unpack_layer(
    plain: Plain,
    media_type: &str,
    dir: &Path,
) -> anyhow::Result<(u64, String, Plain)> {
    enum Source {
        Gzip(flate2::read::MultiGzDecoder<Plain>),
        Tar(Plain),
    }
    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self {
                Source::Gzip(r) => r.read(buf),
                Source::Tar(r) => r.read(buf),
            }
        }
    }
    let source = if media_type.ends_with("tar+gzip") || media_type.ends_with(".tar.gzip") {
        Source::Gzip(flate2::read::MultiGzDecoder::new(plain))
    } else if media_type.ends_with("tar") {
        Source::Tar(plain)
    } else {
        bail!("media type {media_type} is not handled by the whole pull (tar, tar+gzip only)");
    };
    let mut archive = tar::Archive::new(Hashing {
        inner: source,
        hash: Sha256::new(),
        bytes: 0,
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if !path.components().all(|c| matches!(c, Component::Normal(_))) {
            if path.components().all(|c| matches!(c, Component::CurDir)) {
                continue;
            }
            bail!("tar entry {} is not a plain relative path", path.display());
        }
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        match file.as_deref().and_then(|f| f.strip_prefix(".wh.")) {
            Some(".wh..opq") => {
                let parent = dir.join(path.parent().unwrap_or(Path::new("")));
                std::fs::create_dir_all(&parent)?;
                set_opaque(&parent)?;
            }
            Some(hidden) => {
                let parent = dir.join(path.parent().unwrap_or(Path::new("")));
                std::fs::create_dir_all(&parent)?;
                whiteout(&parent.join(hidden))?;
            }
            None => {
                entry.unpack_in(dir)?;
            }
        }
    }
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())?;
    let digest = format!("sha256:{}", hex::encode(rest.hash.finalize_reset()));
    let plain = match rest.inner {
        Source::Gzip(r) => r.into_inner(),
        Source::Tar(r) => r,
    };
    Ok((rest.bytes, digest, plain))
}

/// An overlay whiteout (character device 0/0) at `path`.
fn whiteout(path: &Path) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        bail!(
            "whiteout {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Marks `dir` opaque for overlayfs.
fn set_opaque(dir: &Path) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: valid NUL-terminated path and name, a 1-byte value.
    if unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
        bail!(
            "opaque {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Mounts one overlay of `lowers` (lowest first) at `target`.
fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> anyhow::Result<()> {
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    let (src, fstype) = (c"overlay", c"overlay");
    let target_c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    let data_c = std::ffi::CString::new(data.clone())?;
    // SAFETY: valid NUL-terminated strings.
    if unsafe {
        libc::mount(
            src.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            data_c.as_ptr().cast(),
        )
    } != 0
    {
        bail!(
            "mount overlay {data} at {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `bundle/config.json`: runc's default spec, the root `rootfs` (writable), no terminal,
/// the image config's env and working directory.
fn write_spec(bundle: &Path, image_config: &serde_json::Value) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    let _ = std::fs::remove_file(&path);
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(bundle)
        .output()
        .context("running runc spec")?;
    if !out.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
    spec["process"]["terminal"] = serde_json::json!(false);
    let c = &image_config["config"];
    if let Some(env) = c["Env"].as_array() {
        spec["process"]["env"] = serde_json::json!(env);
    }
    if let Some(cwd) = c["WorkingDir"].as_str().filter(|w| !w.is_empty()) {
        spec["process"]["cwd"] = serde_json::json!(cwd);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// Bytes of regular files below `dir`, not crossing into other file systems.
pub fn file_bytes(dir: &Path) -> anyhow::Result<u64> {
    let dev = std::fs::symlink_metadata(dir)?.dev();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).expect("tar entry");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn unpacks_files_whiteouts_and_checks_the_tar_digest() {
        let tar = tar_with(&[
            ("etc/hello", b"hi\n"),
            ("etc/.wh.gone", b""),
            ("var/.wh..wh..opq", b""),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        let dir = tempfile::tempdir().expect("temp dir");
        let (bytes, digest, _) = unpack_layer(
            Plain::Clear(std::io::Cursor::new(gz.finish().expect("gzip"))),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            dir.path(),
        )
        .expect("unpack");
        assert_eq!(bytes, tar.len() as u64);
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(
            std::fs::read(dir.path().join("etc/hello")).expect("file"),
            b"hi\n"
        );
        let gone = std::fs::symlink_metadata(dir.path().join("etc/gone")).expect("whiteout");
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        assert!(!dir.path().join("var/.wh..wh..opq").exists());
        let var = std::ffi::CString::new(dir.path().join("var").as_os_str().as_encoded_bytes())
            .expect("path");
        let mut value = [0u8; 4];
        // SAFETY: valid NUL-terminated path and name, a 4-byte buffer.
        let n = unsafe {
            libc::getxattr(
                var.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert_eq!((n, value[0]), (1, b'y'), "var is not opaque");
        assert_eq!(file_bytes(dir.path()).expect("size"), 3);
    }

    #[test]
    fn refuses_paths_leaving_the_layer_and_unknown_media_types() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        let mut raw = h.as_bytes().to_vec();
        raw[..9].copy_from_slice(b"../escape");
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&raw);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[b'x'; 512]);
        tar.extend_from_slice(&[0; 1024]);
        let err = unpack_layer(
            Plain::Clear(std::io::Cursor::new(tar)),
            "application/vnd.oci.image.layer.v1.tar",
            dir.path(),
        )
        .err()
        .expect("an error");
        assert!(err.to_string().contains("../escape"), "{err}");
        assert!(!dir.path().parent().expect("parent").join("escape").exists());
        let err = unpack_layer(
            Plain::Clear(std::io::Cursor::new(Vec::new())),
            "application/vnd.oci.image.layer.v1.tar+zstd",
            dir.path(),
        )
        .err()
        .expect("an error");
        assert!(err.to_string().contains("tar+zstd"), "{err}");
    }
}
