//! Images for the lazy-pull tests, built in memory and pushed to a local registry: a
//! busybox-static base layer with a few small files, and a layer with one large random
//! file, each converted to eStargz or zstd:chunked with Veil's own writers (or left a
//! plain tar.gz, which Veil cannot serve lazily), with an OCI config whose `diff_ids`
//! are the layers' uncompressed digests and an OCI manifest carrying each layer's
//! annotations (TOC digest and so on).

use std::collections::BTreeMap;
use std::io::{Cursor, Write};

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::image::BUSYBOX;
use crate::registry::{sha256, Pusher, OCI_CONFIG, OCI_MANIFEST};

/// Applets linked in `/bin`.
const APPLETS: &[&str] = &["sh", "cat", "ls", "sha256sum", "echo", "test", "true"];

/// Media type of gzip layers (plain and eStargz).
pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of zstd layers (zstd:chunked).
pub const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How a layer's tar is packed into a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// eStargz (Veil's writer): served lazily.
    Estargz,
    /// zstd:chunked (Veil's writer): served lazily.
    ZstdChunked,
    /// Plain gzip-compressed tar: not lazily servable.
    PlainGzip,
}

/// One entry of a layer's tar.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory with this mode.
    Dir(&'static str, u32),
    /// A regular file: path, contents, mode.
    File(String, Vec<u8>, u32),
    /// A symbolic link: path, target.
    Symlink(String, String),
}

/// A layer blob ready to push.
#[derive(Debug, Clone)]
pub struct Layer {
    pub format: LayerFormat,
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub annotations: BTreeMap<String, String>,
}

impl Layer {
    /// The layer as the image documents describe it.
    pub fn entry(&self) -> LayerEntry<'_> {
        LayerEntry {
            digest: &self.digest,
            diff_id: &self.diff_id,
            media_type: &self.media_type,
            size: self.blob.len() as u64,
            annotations: &self.annotations,
        }
    }

    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }
}

/// A tar of `entries` (owner root, a fixed mtime).
pub fn tar_of(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// Packs `tar` as a layer blob in `format`.
pub fn pack(tar: Vec<u8>, format: LayerFormat) -> anyhow::Result<Layer> {
    Ok(match format {
        LayerFormat::Estargz => {
            let opts = veil_formats::estargz::BuildOptions {
                level: Some(1),
                ..Default::default()
            };
            let (blob, out) = veil_formats::estargz::build_to_vec(Cursor::new(tar), &opts)
                .context("converting the layer to eStargz")?;
            Layer {
                format,
                digest: out.blob_digest.clone(),
                diff_id: out.diff_id.clone(),
                media_type: GZIP_LAYER.into(),
                annotations: out.annotations(),
                blob,
            }
        }
        LayerFormat::ZstdChunked => {
            let opts = veil_formats::zstdchunked::ZstdBuildOptions {
                level: Some(1),
                ..Default::default()
            };
            let (blob, out) = veil_formats::zstdchunked::build_to_vec(Cursor::new(tar), &opts)
                .context("converting the layer to zstd:chunked")?;
            Layer {
                format,
                digest: out.blob_digest.clone(),
                diff_id: out.diff_id.clone(),
                media_type: ZSTD_LAYER.into(),
                annotations: out.annotations.clone(),
                blob,
            }
        }
        LayerFormat::PlainGzip => {
            let diff_id = sha256(&tar);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar)?;
            let blob = gz.finish()?;
            Layer {
                format,
                digest: sha256(&blob),
                diff_id,
                media_type: GZIP_LAYER.into(),
                annotations: BTreeMap::new(),
                blob,
            }
        }
    })
}

/// `len` pseudo-random bytes from `seed` (xorshift64*, eight bytes a step).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The hex SHA-256 of `data` (what `sha256sum` prints).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A small file in the base layer and its exact contents.
pub const HELLO_PATH: &str = "/etc/veil-hello.txt";
pub const HELLO_TEXT: &str = "hello from a lazily served layer\n";
/// A small file in the second layer and its exact contents.
pub const LAYER2_PATH: &str = "/etc/veil-layer2.txt";
pub const LAYER2_TEXT: &str = "the second layer was here\n";
/// The large random file in the second layer.
pub const BIG_PATH: &str = "/data/random.bin";
/// A second small file in the base layer, which a layer above can delete with
/// [`whiteout_of`].
pub const NOTES_PATH: &str = "/etc/veil-notes.txt";
pub const NOTES_TEXT: &str = "a few small files in the base layer\n";

/// The entries of the base layer: busybox-static, applets, small files.
pub fn base_entries() -> anyhow::Result<Vec<Entry>> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} is missing: install Debian's busybox-static"))?;
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::Dir("tmp", 0o1777),
        Entry::File("bin/busybox".into(), busybox, 0o755),
    ];
    for applet in APPLETS {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    entries.push(Entry::File(
        HELLO_PATH.trim_start_matches('/').into(),
        HELLO_TEXT.into(),
        0o644,
    ));
    entries.push(Entry::File(
        NOTES_PATH.trim_start_matches('/').into(),
        NOTES_TEXT.into(),
        0o644,
    ));
    Ok(entries)
}

/// The entries of the second layer: one small file and `big` as [`BIG_PATH`].
pub fn top_entries(big: Vec<u8>) -> Vec<Entry> {
    vec![
        Entry::Dir("data", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::File(BIG_PATH.trim_start_matches('/').into(), big, 0o644),
        Entry::File(
            LAYER2_PATH.trim_start_matches('/').into(),
            LAYER2_TEXT.into(),
            0o644,
        ),
    ]
}

/// The tar entry that deletes `path` (absolute, in a layer below) from the layers above:
/// an OCI whiteout, the empty regular file `.wh.NAME` beside it.
pub fn whiteout_of(path: &str) -> Entry {
    let path = path.trim_start_matches('/');
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let wh = if dir.is_empty() {
        format!(".wh.{name}")
    } else {
        format!("{dir}/.wh.{name}")
    };
    Entry::File(wh, Vec::new(), 0o644)
}

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What [`push_image`] pushed.
#[derive(Debug, Clone)]
pub struct PushedLazyImage {
    pub manifest_digest: String,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
}

/// What an image's config and manifest say of one layer.
#[derive(Debug, Clone)]
pub struct LayerEntry<'a> {
    pub digest: &'a str,
    pub diff_id: &'a str,
    pub media_type: &'a str,
    pub size: u64,
    pub annotations: &'a BTreeMap<String, String>,
}

/// The config (with the layers' diff IDs) and the OCI manifest (with their annotations)
/// of an image of `layers`, as pushed by [`push_image`] and by `veil bench`.
pub fn image_documents(layers: &[Layer]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    image_documents_of(&layers.iter().map(Layer::entry).collect::<Vec<_>>())
}

/// [`image_documents`] of layers described by their entries (blobs that are files).
pub fn image_documents_of(layers: &[LayerEntry<'_>]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    if layers.is_empty() {
        bail!("an image needs at least one layer");
    }
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id).collect::<Vec<_>>(),
        },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.size,
            "annotations": l.annotations,
        })).collect::<Vec<_>>(),
    }))?;
    Ok((config, manifest))
}

/// Pushes `layers`, a config with their diff IDs and an OCI manifest with their
/// annotations to `repo:tag`.
pub async fn push_image(
    pusher: &Pusher,
    repo: &str,
    tag: &str,
    layers: &[Layer],
) -> anyhow::Result<PushedLazyImage> {
    let (config, manifest) = image_documents(layers)?;
    let config_digest = pusher.blob(repo, &config).await;
    for layer in layers {
        let pushed = pusher.blob(repo, &layer.blob).await;
        if pushed != layer.digest {
            bail!(
                "pushed layer has digest {pushed}, the writer said {}",
                layer.digest
            );
        }
    }
    let manifest_digest = pusher.manifest(repo, tag, OCI_MANIFEST, &manifest).await;
    Ok(PushedLazyImage {
        manifest_digest,
        config_digest,
        manifest,
        config,
    })
}
