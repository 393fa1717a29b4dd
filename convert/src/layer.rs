//! Rewriting one layer: the source blob (tar, tar.gz or tar.zst; eStargz and
//! zstd:chunked are tar.gz and tar.zst too) is decompressed to a temporary tar file,
//! checked against the source digest and the config's diff ID, then written as an
//! eStargz or zstd:chunked blob, encrypted on the way when asked.
//!
//! The layer writers read the tar twice (an index pass, then a copy pass), so the tar
//! must be a seekable file: it is PLAINTEXT on the local disk for as long as the layer
//! takes. That is acceptable here because `veil convert` runs on the image owner's build
//! machine, which has the plaintext image anyway, never in the confidential guest. The
//! file lives in the run's private temporary directory and is deleted as soon as the
//! layer is written. The encrypted blob is encrypted as it is written: the plaintext
//! blob itself never reaches the disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use veil_formats::estargz::{self, BuildOptions};
use veil_formats::tar_index::{clean_name, index_tar};
use veil_formats::zstdchunked::{self, ZstdBuildOptions};
use veil_keyprovider::ocicrypt::{encrypted_media_type, is_encrypted_media_type};

use super::encrypt::{LayerKey, Recipients};
use veil_registry::{BlobDescriptor, Digest};

/// The OCI media type of an eStargz layer.
pub const MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The OCI media type of a zstd:chunked layer.
pub const MEDIA_TYPE_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The lazily readable format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// eStargz (gzip members, TOC before a 51-byte footer).
    Estargz,
    /// zstd:chunked (zstd frames, TOC in skippable frames; containers/storage layout).
    ZstdChunked,
}

impl LayerFormat {
    /// Every format, by the name [`std::fmt::Display`] and [`std::str::FromStr`] use.
    pub const ALL: [LayerFormat; 2] = [LayerFormat::Estargz, LayerFormat::ZstdChunked];
}

impl std::str::FromStr for LayerFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.to_string() == s)
            .ok_or_else(|| format!("unknown layer format {s:?} (estargz, zstd-chunked)"))
    }
}

impl std::fmt::Display for LayerFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerFormat::Estargz => "estargz",
            LayerFormat::ZstdChunked => "zstd-chunked",
        })
    }
}

/// How to write each layer.
#[derive(Debug)]
pub struct LayerSpec<'a> {
    /// The format.
    pub format: LayerFormat,
    /// Largest payload chunk.
    pub chunk_size: u64,
    /// Paths to place first (those present in the layer), ended by the landmark.
    pub prefetch: &'a [String],
    /// Encrypt for these recipients; `None`: leave the layer in the clear.
    pub encrypt: Option<&'a Recipients>,
}

/// The layer to convert.
#[derive(Debug)]
pub struct SourceLayer<'a> {
    /// Its descriptor in the source manifest.
    pub desc: &'a BlobDescriptor,
    /// The blob, on disk.
    pub path: &'a Path,
    /// The diff ID the source config gives it.
    pub expected_diff_id: Option<&'a str>,
}

/// What a layer became.
#[derive(Debug, Clone)]
pub struct ConvertedLayer {
    /// Media type (`+encrypted` when encrypted).
    pub media_type: String,
    /// Digest of the blob as stored (the ciphertext when encrypted).
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The descriptor annotations: the format's TOC annotations, and ocicrypt's.
    pub annotations: BTreeMap<String, String>,
    /// The new diff ID (the uncompressed stream, TOC entries and landmark included).
    pub diff_id: String,
    /// The blob file.
    pub blob: PathBuf,
    /// The uncompressed size of the new layer.
    pub uncompressed_size: u64,
    /// The size of the source layer's tar.
    pub source_tar_size: u64,
    /// Whether the layer is encrypted.
    pub encrypted: bool,
    /// Prefetch-list paths placed first in this layer.
    pub prioritized: usize,
}

/// The stage a layer is in, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decompressing the source (position: compressed bytes read).
    Decompress,
    /// Writing the new blob (position: tar bytes read).
    Write,
}

/// Converts one layer; temporary files go into `work`, named after `name`.
pub fn convert_layer(
    src: SourceLayer<'_>,
    spec: &LayerSpec<'_>,
    work: &Path,
    name: &str,
    progress: &(dyn Fn(Stage, u64, u64) + Sync),
) -> Result<ConvertedLayer, String> {
    let tar_path = work.join(format!("{name}.tar"));
    let result = convert_inner(&src, spec, work, name, &tar_path, progress);
    // The plaintext tar goes away whatever happened.
    let _ = std::fs::remove_file(&tar_path);
    result
}

fn convert_inner(
    src: &SourceLayer<'_>,
    spec: &LayerSpec<'_>,
    work: &Path,
    name: &str,
    tar_path: &Path,
    progress: &(dyn Fn(Stage, u64, u64) + Sync),
) -> Result<ConvertedLayer, String> {
    let desc = src.desc;
    if is_encrypted_media_type(&desc.media_type) {
        return Err(format!(
            "layer {} is already encrypted ({}): decrypt the image first",
            desc.digest, desc.media_type
        ));
    }
    let tar_size = decompress(src, tar_path, progress)?;

    // The prefetch paths this layer has.
    let prioritized: Vec<String> = if spec.prefetch.is_empty() {
        Vec::new()
    } else {
        let file = File::open(tar_path).map_err(|e| format!("reading the layer tar: {e}"))?;
        let names: std::collections::BTreeSet<String> = index_tar(BufReader::new(file))
            .map_err(|e| format!("layer {}: {e}", desc.digest))?
            .into_iter()
            .map(|e| e.meta.name)
            .collect();
        spec.prefetch
            .iter()
            .filter(|p| names.contains(&clean_name(p)))
            .cloned()
            .collect()
    };

    let blob_path = work.join(format!("{name}.blob"));
    let out =
        File::create(&blob_path).map_err(|e| format!("creating {}: {e}", blob_path.display()))?;
    let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
    let tar = CountingReader {
        inner: BufReader::with_capacity(
            1 << 20,
            File::open(tar_path).map_err(|e| format!("reading the layer tar: {e}"))?,
        ),
        count: 0,
        total: tar_size,
        progress,
    };
    let key = match spec.encrypt {
        Some(_) => Some(LayerKey::generate()?),
        None => None,
    };
    let built = match &key {
        Some(key) => {
            let mut w = BufWriter::with_capacity(1 << 20, key.writer(hashing));
            let built = build(tar, &mut w, spec, &prioritized)?;
            let enc = w
                .into_inner()
                .map_err(|e| format!("writing the blob: {}", e.error()))?;
            let (hashing, hmac) = enc.finish().map_err(|e| format!("writing the blob: {e}"))?;
            (built, hashing, Some(hmac))
        }
        None => {
            let mut hashing = hashing;
            let built = build(tar, &mut hashing, spec, &prioritized)?;
            (built, hashing, None)
        }
    };
    let (built, hashing, hmac) = built;
    let (digest, size) = hashing
        .finish()
        .map_err(|e| format!("writing the blob: {e}"))?;
    let base_media = match spec.format {
        LayerFormat::Estargz => MEDIA_TYPE_GZIP,
        LayerFormat::ZstdChunked => MEDIA_TYPE_ZSTD,
    };
    let mut annotations = built.annotations.clone();
    let media_type = match (key, hmac, spec.encrypt) {
        (Some(key), Some(hmac), Some(recipients)) => {
            let enc = key.finish(&built.plain_digest, &built.sealed_digest, hmac, recipients)?;
            annotations.extend(enc.to_annotations());
            encrypted_media_type(base_media)
        }
        _ => base_media.to_string(),
    };
    if spec.encrypt.is_none() && digest.to_string() != built.plain_digest {
        return Err(format!(
            "internal error: the blob written has digest {digest}, the writer says {}",
            built.plain_digest
        ));
    }
    Ok(ConvertedLayer {
        media_type,
        digest,
        size,
        annotations,
        diff_id: built.diff_id,
        blob: blob_path,
        uncompressed_size: built.uncompressed_size,
        source_tar_size: tar_size,
        encrypted: spec.encrypt.is_some(),
        prioritized: prioritized.len(),
    })
}

/// What the format writer reported.
struct Built {
    annotations: BTreeMap<String, String>,
    diff_id: String,
    uncompressed_size: u64,
    plain_digest: String,
    /// The digest to seal: eStargz's TOC digest, zstd:chunked's manifest checksum.
    sealed_digest: String,
}

fn build<R: Read + Seek, W: Write>(
    tar: R,
    out: W,
    spec: &LayerSpec<'_>,
    prioritized: &[String],
) -> Result<Built, String> {
    match spec.format {
        LayerFormat::Estargz => {
            let opts = BuildOptions {
                chunk_size: spec.chunk_size,
                level: None,
                prioritized_files: prioritized.to_vec(),
            };
            let o = estargz::build(tar, out, &opts).map_err(|e| e.to_string())?;
            Ok(Built {
                annotations: o.annotations(),
                diff_id: o.diff_id,
                uncompressed_size: o.uncompressed_size,
                plain_digest: o.blob_digest,
                sealed_digest: o.toc_digest,
            })
        }
        LayerFormat::ZstdChunked => {
            let opts = ZstdBuildOptions {
                chunk_size: spec.chunk_size,
                level: None,
                prioritized_files: prioritized.to_vec(),
                ..ZstdBuildOptions::default()
            };
            let o = zstdchunked::build(tar, out, &opts).map_err(|e| e.to_string())?;
            Ok(Built {
                annotations: o.annotations,
                diff_id: o.diff_id,
                uncompressed_size: o.uncompressed_size,
                plain_digest: o.blob_digest,
                sealed_digest: o.manifest_checksum,
            })
        }
    }
}

/// How a source blob is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sniff(path: &Path) -> io::Result<Compression> {
    let mut head = [0u8; 4];
    let mut f = File::open(path)?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(match &head[..got] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

/// Decompresses the source blob into `tar_path`, checking the blob digest and the diff
/// ID; returns the tar's size.
fn decompress(
    src: &SourceLayer<'_>,
    tar_path: &Path,
    progress: &(dyn Fn(Stage, u64, u64) + Sync),
) -> Result<u64, String> {
    let desc = src.desc;
    let fail = |e: io::Error| format!("layer {}: decompressing: {e}", desc.digest);
    let compression = sniff(src.path).map_err(fail)?;
    let media = desc.media_type.as_str();
    let looks_like_layer = media.contains(".layer.") || media.contains("rootfs");
    if !looks_like_layer {
        return Err(format!(
            "layer {} has media type {media:?}, which is not an image layer",
            desc.digest
        ));
    }
    let file = File::open(src.path).map_err(fail)?;
    let mut hashed = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        count: 0,
        total: desc.size,
        progress,
    };
    let out = File::create(tar_path).map_err(fail)?;
    let mut tar = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
    match compression {
        Compression::Gzip => io::copy(
            &mut flate2::read::MultiGzDecoder::new(&mut hashed),
            &mut tar,
        )
        .map_err(fail)?,
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(&mut hashed).map_err(fail)?;
            io::copy(&mut d, &mut tar).map_err(fail)?
        }
        Compression::None => io::copy(&mut hashed, &mut tar).map_err(fail)?,
    };
    // Read to the end (a decompressor may stop before trailing bytes), for the digest.
    io::copy(&mut hashed, &mut io::sink()).map_err(fail)?;
    let (diff_id, tar_size) = tar.finish().map_err(fail)?;
    let blob_digest = format!("sha256:{}", hex::encode(hashed.hasher.finalize()));
    if hashed.count != desc.size {
        return Err(format!(
            "layer {}: the blob is {} bytes, the manifest says {}",
            desc.digest, hashed.count, desc.size
        ));
    }
    if desc.digest.algorithm() == veil_registry::digest::DigestAlgorithm::Sha256
        && blob_digest != desc.digest.to_string()
    {
        return Err(format!(
            "layer {}: the blob's digest is {blob_digest}",
            desc.digest
        ));
    }
    if let Some(expected) = src.expected_diff_id {
        if diff_id.to_string() != expected {
            return Err(format!(
                "layer {}: its uncompressed digest is {diff_id}, but the image config's \
                 diff_id is {expected}",
                desc.digest
            ));
        }
    }
    Ok(tar_size)
}

/// A reader that hashes and counts what passes through, reporting decompress progress.
struct HashingReader<'a, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    total: u64,
    progress: &'a (dyn Fn(Stage, u64, u64) + Sync),
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        (self.progress)(Stage::Decompress, self.count.min(self.total), self.total);
        Ok(n)
    }
}

/// A reader that counts the bytes read (not skipped), reporting write progress.
struct CountingReader<'a, R> {
    inner: R,
    count: u64,
    total: u64,
    progress: &'a (dyn Fn(Stage, u64, u64) + Sync),
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        (self.progress)(Stage::Write, self.count.min(self.total), self.total);
        Ok(n)
    }
}

impl<R: Seek> Seek for CountingReader<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// A writer that hashes and counts what passes through.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Flushes; returns the digest and the byte count.
    fn finish(mut self) -> io::Result<(Digest, u64)> {
        self.inner.flush()?;
        let digest = Digest::from_sha256_hash(self.hasher.finalize().into());
        Ok((digest, self.count))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
