//! The sample image: built locally, nothing pulled from the internet.
//!
//! Two layers, like an application image:
//! 1. the runtime: busybox (for `sh`) and, for the `python` sample, this machine's
//!    `python3` with the shared libraries `ldd` names for it and for its extension modules
//!    and the whole standard library (`/usr/lib/python3.X`, ~1,400 files); for the
//!    `busybox` sample, a tree of small generated text files instead;
//! 2. data: large random (incompressible) files up to the requested image size.
//!
//! The workload reads a small, realistic fraction: `python3 -c 'import json, email,
//! http.client'` (the interpreter, its libraries and the modules it imports), or `cat` of
//! one package of the small-file tree. The files it reads (the read set) are known: for
//! python from `python3 -v` run on this machine with the same files, for busybox by
//! construction. The read set is the prefetch list of the `+prefetch` modes and the
//! bytes behind the plot's physical-limit line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use veil_tests::lazy_image::{random_bytes, sha256_hex};

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

    /// The layer's tar (owner root; files keep their modification times).
    fn into_tar(self) -> anyhow::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
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
        Ok(builder.into_inner()?)
    }
}

/// `/usr/lib/x` → `usr/lib/x`.
fn rel_of(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_string()
}

/// The sample image's layers (uncompressed tars) and what the workload does with them.
#[derive(Debug)]
pub struct SampleImage {
    pub kind: SampleKind,
    /// Layer tars, base first.
    pub tars: Vec<Vec<u8>>,
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

/// Builds the sample image of `kind` with about `size` bytes of file contents.
pub fn build(kind: SampleKind, size: u64) -> anyhow::Result<SampleImage> {
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

    let mut data = Tree::default();
    data.dir("data", 0o755);
    let mut left = size.saturating_sub(runtime_bytes).max(1 << 20);
    let mut i = 0u64;
    while left > 0 {
        let len = left.min(DATA_FILE);
        data.file(
            &format!("data/weights-{i:03}.bin"),
            random_bytes(len as usize, 0x5eed_0000 + i),
            0o644,
        );
        left -= len;
        i += 1;
    }
    let content_bytes = runtime_bytes + data.bytes();
    let files = runtime.files() + data.files();
    Ok(SampleImage {
        kind,
        tars: vec![runtime.into_tar()?, data.into_tar()?],
        content_bytes,
        files,
        runtime_bytes,
        workload,
        expect,
        read_set,
        read_set_bytes,
        read_set_compressed,
    })
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
        let img = build(SampleKind::Busybox, 6 << 20).unwrap();
        assert_eq!(img.tars.len(), 2);
        assert_eq!(img.read_set.len(), BB_FILES_PER_PACKAGE + 1);
        assert!(img.files > BB_PACKAGES * BB_FILES_PER_PACKAGE);
        assert!(img.content_bytes >= 6 << 20);
        assert!(img.read_set_bytes < img.content_bytes / 4);
        assert!(img
            .prefetch_list()
            .contains("/usr/lib/app/pkg00/mod000.py\n"));
    }
}
