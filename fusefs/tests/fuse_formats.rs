//! The real formats through FUSE: a tar is converted with Veil's own eStargz and
//! zstd:chunked writers, the TOC read back (and authenticated) by their readers, and the
//! layer mounted and checked with `std::fs`.
//!
//! Needs root and `/dev/fuse` (skipped with a message otherwise). Mounts are undone by a
//! guard, also when an assertion fails.

use std::fs;
use std::io::{self, Cursor};
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::executor::block_on;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use veil_blob::{BlobSource, MemoryBlob};
use veil_formats::toc::LayerToc;
use veil_formats::{estargz, zstdchunked};
use veil_fusefs::cache::ChunkCache;
use veil_fusefs::fs::{FsOptions, LayerFs};
use veil_fusefs::mount::{self, LayerMount, MountOptions};
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::tree::LayerTree;

const MTIME: u64 = 1_700_000_000;

/// Counts the bytes served.
struct Counting {
    blob: MemoryBlob,
    bytes: AtomicU64,
}

impl BlobSource for Counting {
    fn size(&self) -> u64 {
        self.blob.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        self.bytes
            .fetch_add(range.end - range.start, Ordering::SeqCst);
        self.blob.read_range(range)
    }
}

/// Unmounts on drop, by handle and then by path.
struct Guard {
    mount: Option<LayerMount>,
    path: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
        if mount::is_mountpoint(&self.path).unwrap_or(false) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn noise(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

/// A layer tar with every kind of entry the filesystem presents.
fn layer_tar(big: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in ["etc/", "usr/", "usr/bin/", "var/"] {
        let mut h = header(tar::EntryType::Directory, 0o755);
        b.append_data(&mut h, d, io::empty()).unwrap();
    }
    b.append_pax_extensions([("SCHILY.xattr.user.veil", &b"yes"[..])])
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o640);
    h.set_uid(1000);
    h.set_gid(2000);
    h.set_size(5);
    b.append_data(&mut h, "etc/hostname", &b"veil\n"[..])
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o4755);
    h.set_size(big.len() as u64);
    b.append_data(&mut h, "usr/bin/tool", big).unwrap();
    let mut h = header(tar::EntryType::Link, 0o4755);
    b.append_link(&mut h, "usr/bin/tool2", "usr/bin/tool")
        .unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777);
    b.append_link(&mut h, "usr/bin/link", "tool").unwrap();
    let mut h = header(tar::EntryType::Char, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", io::empty()).unwrap();
    let mut h = header(tar::EntryType::Fifo, 0o600);
    b.append_data(&mut h, "run/fifo", io::empty()).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644);
    b.append_data(&mut h, "etc/.wh.removed", io::empty())
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644);
    b.append_data(&mut h, "var/.wh..wh..opq", io::empty())
        .unwrap();
    b.into_inner().unwrap()
}

fn check_mounted_layer(name: &str, toc: LayerToc, blob: Vec<u8>, big: &[u8]) {
    let blob_len = blob.len() as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let source = Arc::new(Counting {
        blob: MemoryBlob(blob),
        bytes: AtomicU64::new(0),
    });
    let reader = ChunkReader::new(
        name,
        Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap()),
        source.clone(),
        Arc::new(ChunkCache::default()),
        ReaderOptions::default(),
    );
    let layer_fs = LayerFs::new(
        Arc::new(reader),
        runtime.handle().clone(),
        FsOptions::default(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("layer");
    fs::create_dir(&mnt).unwrap();
    let mut guard = Guard {
        mount: Some(mount::mount(layer_fs, &mnt, &MountOptions::default()).unwrap()),
        path: mnt.clone(),
    };
    let p = |rel: &str| mnt.join(rel);

    assert_eq!(fs::read(p("etc/hostname")).unwrap(), b"veil\n", "{name}");
    let fetched = source.bytes.load(Ordering::SeqCst);
    assert!(
        fetched * 100 < blob_len,
        "{name}: fetched {fetched} of {blob_len} for 5 bytes"
    );

    let md = fs::metadata(p("etc/hostname")).unwrap();
    assert_eq!(
        (
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.mtime() as u64,
            md.size()
        ),
        (0o640, 1000, 2000, MTIME, 5),
        "{name}"
    );
    let value = xattr(&p("etc/hostname"), "user.veil");
    assert_eq!(value.as_deref(), Some(&b"yes"[..]), "{name}");

    let tool = fs::metadata(p("usr/bin/tool")).unwrap();
    let tool2 = fs::metadata(p("usr/bin/tool2")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755, "{name}");
    assert_eq!((tool.ino(), tool.nlink()), (tool2.ino(), 2), "{name}");
    let data = fs::read(p("usr/bin/tool2")).unwrap();
    assert_eq!(Sha256::digest(&data), Sha256::digest(big), "{name}");
    assert_eq!(fs::read_link(p("usr/bin/link")).unwrap(), Path::new("tool"));

    let null = fs::metadata(p("dev/null")).unwrap();
    assert!(null.file_type().is_char_device(), "{name}");
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    assert!(fs::metadata(p("run/fifo")).unwrap().file_type().is_fifo());
    let wh = fs::metadata(p("etc/removed")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{name}");
    assert_eq!(
        xattr(&p("var"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..]),
        "{name}"
    );
    let mut names: Vec<_> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // Landmark files the writers add are part of the layer, as in the reference tools.
    names.retain(|n| !n.starts_with(".no.prefetch") && !n.starts_with(".prefetch"));
    assert_eq!(names, ["dev", "etc", "run", "usr", "var"], "{name}");

    guard.mount.take().unwrap().unmount().unwrap();
    assert!(!mount::is_mountpoint(&mnt).unwrap());
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0;
    if !ok {
        eprintln!("SKIPPED: needs root and /dev/fuse");
    }
    ok
}

#[test]
fn estargz_layer_mounts() {
    if !fuse_available() {
        return;
    }
    let big = noise(10 << 20, 5);
    let tar = layer_tar(&big);
    let opts = estargz::BuildOptions {
        chunk_size: 1 << 20,
        ..Default::default()
    };
    let (blob, out) = estargz::build_to_vec(Cursor::new(tar), &opts).unwrap();
    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    check_mounted_layer("estargz", toc, blob, &big);
}

#[test]
fn zstd_chunked_layer_mounts() {
    if !fuse_available() {
        return;
    }
    let big = noise(10 << 20, 6);
    let tar = layer_tar(&big);
    let opts = zstdchunked::ZstdBuildOptions {
        chunk_size: 1 << 20,
        ..Default::default()
    };
    let (blob, out) = zstdchunked::build_to_vec(Cursor::new(tar), &opts).unwrap();
    let info = zstdchunked::ManifestInfo::from_annotations(&out.annotations).unwrap();
    let toc = block_on(zstdchunked::read_toc(&MemoryBlob(blob.clone()), &info)).unwrap();
    check_mounted_layer("zstd:chunked", toc, blob, &big);
}
