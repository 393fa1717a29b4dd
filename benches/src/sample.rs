//! The sample image: built locally, nothing pulled from the internet.
//!
//! Two layers, like an application image:
//! 1. the runtime: busybox (for `sh`) and, for the `python` sample, this machine's
//!    `python3` with the shared libraries `ldd` names for it and for its extension modules
//!    and the whole standard library (`/usr/lib/python3.X`, ~1,400 files); for the
//!    `busybox` sample, a tree of small generated text files instead;
//! 2. data: large random (incompressible) files up to the requested image size.
//!
//! Both layers are written straight to disk as tar.gz files (hashed as they are written:
//! the blob digest and the diff ID), never held in memory whole: the data layer's files
//! are generated as the tar is written, so a 10 GiB sample needs a few MiB of memory. A
//! progress bar shows the data layer being written (on a terminal). Random data does not
//! compress, so the data layer's gzip stream is made of stored blocks: the same bytes as
//! any compression level would give, without the CPU time.
//!
//! The workload reads a small, realistic fraction: `python3 -c 'import json, email,
//! http.client'` (the interpreter, its libraries and the modules it imports), or `cat` of
//! one package of the small-file tree. The files it reads (the read set) are known: for
//! python from `python3 -v` run on this machine with the same files, for busybox by
//! construction. The read set is the prefetch list of the `+prefetch` modes and the
//! bytes behind the plot's physical-limit line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest as _, Sha256};
use veil_tests::lazy_image::{sha256_hex, GZIP_LAYER};

/// Which runtime the image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SampleKind {
    /// This machine's python3, its libraries and standard library; the workload imports
    /// json, email and http.client.
    Python,
    /// busybox and a tree of small text files; the workload `cat`s one package of them.
    Busybox,
}

/// Size of each large data file.
const DATA_FILE: u64 = 32 << 20;
/// The write buffer of a layer file.
const WRITE_BUFFER: usize = 1 << 20;
/// The busybox sample's tree: packages of small files.
const BB_PACKAGES: usize = 40;
const BB_FILES_PER_PACKAGE: usize = 60;

/// One node of the image's filesystem.
#[derive(Debug, Clone)]
enum Node {
    Dir(u32),
    /// Contents, mode, modification time (seconds).
    File(Vec<u8>, u32, u64),
    Symlink(String),
}

/// The modification time of generated files.
const MTIME: u64 = 1_700_000_000;

/// A layer's tree: relative path → node (sorted, so parents come first).
#[derive(Debug, Default)]
struct Tree(BTreeMap<String, Node>);

impl Tree {
    fn dirs_for(&mut self, rel: &str) {
        let mut p = rel;
        while let Some((parent, _)) = p.rsplit_once('/') {
            self.0.entry(parent.to_string()).or_insert(Node::Dir(0o755));
            p = parent;
        }
    }

    fn dir(&mut self, rel: &str, mode: u32) {
        self.dirs_for(rel);
        self.0.insert(rel.to_string(), Node::Dir(mode));
    }

    fn file(&mut self, rel: &str, data: Vec<u8>, mode: u32) {
        self.file_at(rel, data, mode, MTIME);
    }

    fn file_at(&mut self, rel: &str, data: Vec<u8>, mode: u32, mtime: u64) {
        self.dirs_for(rel);
        self.0
            .insert(rel.to_string(), Node::File(data, mode, mtime));
    }

    fn symlink(&mut self, rel: &str, target: &str) {
        self.dirs_for(rel);
        self.0
            .insert(rel.to_string(), Node::Symlink(target.to_string()));
    }

    /// Copies the host's `path` (absolute) into the tree at the same place: a symlink
    /// stays a symlink (its target copied too), directories of the path are resolved.
    fn copy_host(&mut self, path: &Path) -> anyhow::Result<()> {
        let parent = path
            .parent()
            .context("a path with a parent")?
            .canonicalize()?;
        let name = path.file_name().context("a file name")?;
        let here = parent.join(name);
        let rel = rel_of(&here);
        if self.0.contains_key(&rel) {
            return Ok(());
        }
        let meta = std::fs::symlink_metadata(&here)
            .with_context(|| format!("reading {}", here.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&here)?;
            self.symlink(&rel, &target.to_string_lossy());
            let resolved = here.canonicalize()?;
            self.copy_host(&resolved)?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let data = std::fs::read(&here)?;
            // The host's mtime: Python's .pyc files record their source's, and stay
            // valid (no recompiling in the container) only if it is kept.
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(MTIME, |d| d.as_secs());
            self.file_at(&rel, data, meta.permissions().mode() & 0o7777, mtime);
        } else if meta.is_dir() {
            self.dir(&rel, 0o755);
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.0
            .values()
            .map(|n| match n {
                Node::File(d, ..) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn files(&self) -> usize {
        self.0
            .values()
            .filter(|n| matches!(n, Node::File(..)))
            .count()
    }

    /// Writes the layer's tar (owner root; files keep their modification times) into
    /// `builder`.
    fn append_to<W: Write>(self, builder: &mut tar::Builder<W>) -> anyhow::Result<()> {
        for (path, node) in self.0 {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(MTIME);
            match node {
                Node::Dir(mode) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(mode);
                    header.set_size(0);
                    builder.append_data(&mut header, &path, std::io::empty())?;
                }
                Node::File(data, mode, mtime) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(mode);
                    header.set_mtime(mtime);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, &path, data.as_slice())?;
                }
                Node::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, &path, &target)?;
                }
            }
        }
        Ok(())
    }
}

/// `/usr/lib/x` → `usr/lib/x`.
fn rel_of(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_string()
}

/// A layer blob (tar.gz) written to disk.
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// The blob.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// `sha256:` digest of the blob.
    pub digest: String,
    /// `sha256:` digest of the uncompressed tar.
    pub diff_id: String,
    /// The OCI media type (tar+gzip).
    pub media_type: &'static str,
}

/// The sample image's layers (tar.gz files) and what the workload does with them.
#[derive(Debug)]
pub struct SampleImage {
    pub kind: SampleKind,
    /// Layer blobs, base first.
    pub layers: Vec<LayerFile>,
    /// Bytes of regular files in all layers.
    pub content_bytes: u64,
    /// Regular files in all layers.
    pub files: usize,
    /// Bytes of the runtime layer's files.
    pub runtime_bytes: u64,
    /// The workload: a `sh -c` command line.
    pub workload: String,
    /// What its output must contain.
    pub expect: String,
    /// Absolute paths of the files the workload reads.
    pub read_set: Vec<String>,
    /// Their bytes, uncompressed.
    pub read_set_bytes: u64,
    /// Their bytes, gzip-compressed file by file (what a fetch of just them would cost).
    pub read_set_compressed: u64,
}

impl SampleImage {
    /// The read set as a prefetch list (one absolute path a line).
    pub fn prefetch_list(&self) -> String {
        let mut s = String::from("# the files the veil-bench workload reads\n");
        for p in &self.read_set {
            s.push_str(p);
            s.push('\n');
        }
        s
    }
}

/// The Python workload.
pub const PYTHON_CODE: &str =
    "import json, email, http.client; print('veil-bench: imported json, email, http.client')";

/// The modules the heavier built-in workload (`--workload heavy`) imports: 24 of the
/// standard library, pure Python, many files each.
pub const HEAVY_MODULES: &str = "json, email, http.client, xml.dom.minidom, \
    xml.etree.ElementTree, csv, argparse, logging, fractions, textwrap, difflib, pathlib, \
    tempfile, shutil, urllib.request, html.parser, configparser, dataclasses, unittest, \
    zipfile, tarfile, gzip, uuid, pprint";

/// What the heavier built-in workload prints.
pub const HEAVY_EXPECT: &str = "veil-bench: imported the heavy set";

/// The heavier built-in workload (`--workload heavy`): a `sh -c` command line.
pub fn heavy_workload() -> String {
    let modules: String = HEAVY_MODULES
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    format!("python3 -c 'import {modules}; print(\"{HEAVY_EXPECT}\")'")
}

/// Builds the sample image of `kind` with about `size` bytes of file contents, its layer
/// blobs written into `dir` (made if missing).
pub fn build(kind: SampleKind, size: u64, dir: &Path) -> anyhow::Result<SampleImage> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut runtime = Tree::default();
    for (d, mode) in [("etc", 0o755), ("tmp", 0o1777), ("usr/bin", 0o755)] {
        runtime.dir(d, mode);
    }
    // Debian's merged /usr: /bin, /lib, /lib64 are links into /usr.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        runtime.symlink(link, target);
        runtime.dir(target, 0o755);
    }
    let busybox = std::fs::read(veil_tests::image::BUSYBOX).with_context(|| {
        format!(
            "{} is missing: install Debian's busybox-static",
            veil_tests::image::BUSYBOX
        )
    })?;
    runtime.file("usr/bin/busybox", busybox, 0o755);
    for applet in ["sh", "cat", "ls", "sha256sum", "echo", "wc", "true"] {
        runtime.symlink(&format!("usr/bin/{applet}"), "busybox");
    }
    let (workload, expect, mut read_set) = match kind {
        SampleKind::Python => python_runtime(&mut runtime)?,
        SampleKind::Busybox => busybox_runtime(&mut runtime),
    };
    read_set.push("/usr/bin/busybox".into());
    read_set.sort();
    read_set.dedup();
    let mut read_set_bytes = 0;
    let mut read_set_compressed = 0;
    for p in &read_set {
        if let Some(Node::File(data, ..)) = runtime.0.get(p.trim_start_matches('/')) {
            read_set_bytes += data.len() as u64;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data)?;
            read_set_compressed += gz.finish()?.len() as u64;
        }
    }
    let runtime_bytes = runtime.bytes();
    let runtime_files = runtime.files();
    let base = write_layer(
        &dir.join("layer-0.tar.gz"),
        flate2::Compression::fast(),
        |b| runtime.append_to(b),
    )?;

    let data_bytes = size.saturating_sub(runtime_bytes).max(1 << 20);
    let data_files = data_bytes.div_ceil(DATA_FILE) as usize;
    let bar = progress_bar(data_bytes, "writing the data layer");
    let data = write_layer(
        &dir.join("layer-1.tar.gz"),
        flate2::Compression::none(),
        |b| append_random_files(b, data_bytes, &bar),
    )?;
    bar.finish_and_clear();
    Ok(SampleImage {
        kind,
        layers: vec![base, data],
        content_bytes: runtime_bytes + data_bytes,
        files: runtime_files + data_files,
        runtime_bytes,
        workload,
        expect,
        read_set,
        read_set_bytes,
        read_set_compressed,
    })
}

/// A progress bar of `total` bytes on stderr (drawn only on a terminal).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[veil-bench] {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// The data layer's files: `data/weights-NNN.bin`, [`DATA_FILE`] bytes each (the last
/// one shorter), `total` bytes of pseudo-random data generated as they are written.
fn append_random_files<W: Write>(
    builder: &mut tar::Builder<W>,
    total: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(0);
    builder.append_data(&mut header, "data", std::io::empty())?;
    let mut left = total;
    let mut i = 0u64;
    while left > 0 {
        let len = left.min(DATA_FILE);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(len);
        let data = RandomReader::new(len, 0x5eed_0000 + i);
        builder
            .append_data(&mut header, format!("data/weights-{i:03}.bin"), data)
            .with_context(|| format!("writing data/weights-{i:03}.bin"))?;
        bar.inc(len);
        left -= len;
        i += 1;
    }
    Ok(())
}

/// Writes one layer: the tar `fill` appends, gzip-compressed at `level`, into `path`;
/// returns the blob's size, digest and diff ID.
fn write_layer(
    path: &Path,
    level: flate2::Compression,
    fill: impl FnOnce(
        &mut tar::Builder<Hashing<flate2::write::GzEncoder<Hashing<BufWriter<File>>>>>,
    ) -> anyhow::Result<()>,
) -> anyhow::Result<LayerFile> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let blob = Hashing::new(BufWriter::with_capacity(WRITE_BUFFER, file));
    let tar = Hashing::new(flate2::write::GzEncoder::new(blob, level));
    let mut builder = tar::Builder::new(tar);
    fill(&mut builder).with_context(|| format!("writing {}", path.display()))?;
    let tar = builder
        .into_inner()
        .with_context(|| format!("writing {}", path.display()))?;
    let (gz, diff_id, _) = tar.finish();
    let blob = gz
        .finish()
        .with_context(|| format!("writing {}", path.display()))?;
    let (mut file, digest, size) = blob.finish();
    file.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(LayerFile {
        path: path.to_path_buf(),
        size,
        digest,
        diff_id,
        media_type: GZIP_LAYER,
    })
}

/// A writer that hashes (SHA-256) and counts what goes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the `sha256:` digest and the byte count.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex_of(&self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64*, eight bytes a step), generated as
/// they are read.
struct RandomReader {
    left: u64,
    state: u64,
}

impl RandomReader {
    fn new(len: u64, seed: u64) -> Self {
        Self {
            left: len,
            state: seed | 1,
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// python3, its libraries and standard library; the import workload and its read set.
fn python_runtime(tree: &mut Tree) -> anyhow::Result<(String, String, Vec<String>)> {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        bail!("/usr/bin/python3 is missing: use --sample busybox, or install python3");
    }
    tree.copy_host(python)?;
    let real = python.canonicalize()?;
    let version = real
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches("python").to_string())
        .unwrap_or_default();
    let stdlib = PathBuf::from(format!("/usr/lib/python{version}"));
    if !stdlib.join("os.py").exists() {
        bail!("{} has no os.py: use --sample busybox", stdlib.display());
    }
    let mut dirs = vec![stdlib.clone()];
    let mut objects = vec![real.clone()];
    while let Some(d) = dirs.pop() {
        tree.copy_host(&d)?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                dirs.push(entry.path());
            } else {
                tree.copy_host(&entry.path())?;
                if entry.path().extension().is_some_and(|e| e == "so") {
                    objects.push(entry.path());
                }
            }
        }
    }
    for lib in ldd(&objects)? {
        tree.copy_host(&lib)?;
    }

    // What the workload reads: the interpreter, the libraries the dynamic loader maps, the
    // compiled modules it imports, as `python3 -v` tells on this machine's identical files.
    let out = Command::new(python)
        .args(["-v", "-c", PYTHON_CODE])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .context("running python3 -v")?;
    if !out.status.success() {
        bail!(
            "python3 -v -c ... failed here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verbose = String::from_utf8_lossy(&out.stderr);
    let mut read: Vec<PathBuf> = vec![real.clone()];
    let mut extensions = vec![real];
    for line in verbose.lines() {
        if let Some(rest) = line.strip_prefix("# code object from ") {
            read.push(PathBuf::from(rest.trim_matches('\'')));
        } else if let Some((_, path)) = line.split_once("loaded from '") {
            let p = PathBuf::from(path.trim_end_matches('\''));
            extensions.push(p.clone());
            read.push(p);
        }
    }
    for lib in ldd(&extensions)? {
        read.push(lib);
    }
    let mut read_set = Vec::new();
    for p in read {
        if let Ok(c) = p.canonicalize() {
            if tree.0.contains_key(&rel_of(&c)) {
                read_set.push(c.to_string_lossy().into_owned());
            }
        }
    }
    let workload = format!("/usr/bin/python3 -c \"{PYTHON_CODE}\"");
    Ok((
        workload,
        "veil-bench: imported json, email, http.client".into(),
        read_set,
    ))
}

/// The shared libraries (and the dynamic loader) `ldd` names for `objects`.
fn ldd(objects: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for chunk in objects.chunks(64) {
        let out = Command::new("ldd")
            .args(chunk)
            .output()
            .context("running ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            // With several files ldd heads each one's list with "FILE:".
            if let Some(p) = path.filter(|p| p.starts_with('/') && !p.ends_with(':')) {
                libs.push(PathBuf::from(p));
            }
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// A generated small-file tree; the workload `cat`s one package and hashes it.
fn busybox_runtime(tree: &mut Tree) -> (String, String, Vec<String>) {
    let mut wanted = Vec::new();
    let mut read_set = Vec::new();
    for p in 0..BB_PACKAGES {
        for f in 0..BB_FILES_PER_PACKAGE {
            // 1-12 KiB of text that compresses like source code does.
            let len = 1024 + (p * 7919 + f * 104_729) % (11 << 10);
            let mut text = String::with_capacity(len + 80);
            let mut n = 0usize;
            while text.len() < len {
                text.push_str(&format!(
                    "def function_{p}_{f}_{n}(value):\n    return value * {n} + {p}\n"
                ));
                n += 1;
            }
            text.truncate(len);
            let path = format!("usr/lib/app/pkg{p:02}/mod{f:03}.py");
            if p == 0 {
                wanted.extend_from_slice(text.as_bytes());
                read_set.push(format!("/{path}"));
            }
            tree.file(&path, text.into_bytes(), 0o644);
        }
    }
    let workload = "cat /usr/lib/app/pkg00/*.py | sha256sum".to_string();
    let expect = sha256_hex(&wanted);
    (workload, expect, read_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_sample_has_its_read_set_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let img = build(SampleKind::Busybox, 6 << 20, dir.path()).unwrap();
        assert_eq!(img.layers.len(), 2);
        // The files on disk are what the digests and sizes say, and the data layer holds
        // the random files.
        for layer in &img.layers {
            let blob = std::fs::read(&layer.path).unwrap();
            assert_eq!(blob.len() as u64, layer.size);
            assert_eq!(layer.digest, format!("sha256:{}", sha256_hex(&blob)));
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut tar)
                .unwrap();
            assert_eq!(layer.diff_id, format!("sha256:{}", sha256_hex(&tar)));
        }
        let data = std::fs::read(&img.layers[1].path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&data[..]));
        let sizes: u64 = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().size().unwrap())
            .sum();
        assert_eq!(sizes + img.runtime_bytes, img.content_bytes);
        assert_eq!(img.read_set.len(), BB_FILES_PER_PACKAGE + 1);
        assert!(img.files > BB_PACKAGES * BB_FILES_PER_PACKAGE);
        assert!(img.content_bytes >= 6 << 20);
        assert!(img.read_set_bytes < img.content_bytes / 4);
        assert!(img
            .prefetch_list()
            .contains("/usr/lib/app/pkg00/mod000.py\n"));
    }
}
