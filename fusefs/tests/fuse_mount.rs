//! End to end: a layer blob built in memory is mounted through FUSE and checked with
//! plain `std::fs` calls and the usual tools (`ls`, `stat`, `readlink`), then used as an
//! overlayfs lower directory the way a container sees it.
//!
//! Needs root and `/dev/fuse` (skipped with a message otherwise). Every mount is undone
//! by a guard, also when an assertion fails.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use veil_blob::{BlobSource, MemoryBlob};
use veil_formats::codec::sha256_digest;
use veil_formats::toc::{Chunk, Compression, Entry, EntryKind, Format, LayerToc};
use veil_fusefs::cache::ChunkCache;
use veil_fusefs::fs::{FsOptions, LayerFs};
use veil_fusefs::mount::{self, LayerMount, MountOptions};
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::tree::LayerTree;

const MIB: usize = 1 << 20;
const MTIME: i64 = 1_700_000_000;

// ---------------------------------------------------------------- layer building

/// Builds a blob of gzip members (one per chunk) and the matching [`LayerToc`].
#[derive(Default)]
struct LayerBuilder {
    blob: Vec<u8>,
    entries: Vec<Entry>,
}

fn entry(name: &str, kind: EntryKind, mode: u32) -> Entry {
    let mut e = Entry::new(name, kind);
    e.mode = mode;
    e.mtime = MTIME;
    e
}

impl LayerBuilder {
    fn push(&mut self, e: Entry) -> &mut Self {
        self.entries.push(e);
        self
    }

    fn file(&mut self, mut e: Entry, data: &[u8], chunk_size: usize) -> &mut Self {
        e.size = data.len() as u64;
        e.digest = Some(sha256_digest(data));
        for (i, piece) in data.chunks(chunk_size).enumerate() {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(piece).unwrap();
            let member = enc.finish().unwrap();
            let blob_offset = self.blob.len() as u64;
            self.blob.extend_from_slice(&member);
            e.chunks.push(Chunk {
                file_offset: (i * chunk_size) as u64,
                size: piece.len() as u64,
                blob_offset,
                blob_end: self.blob.len() as u64,
                inner_offset: 0,
                digest: sha256_digest(piece),
                compression: Compression::Gzip,
            });
        }
        self.push(e)
    }

    fn link(&mut self, name: &str, kind: EntryKind, target: &str) -> &mut Self {
        let mut e = entry(name, kind, 0o777);
        e.link_name = target.to_string();
        self.push(e)
    }

    fn device(&mut self, name: &str, kind: EntryKind, major: u32, minor: u32) -> &mut Self {
        let mut e = entry(name, kind, 0o666);
        e.dev_major = major;
        e.dev_minor = minor;
        self.push(e)
    }

    fn finish(self) -> (LayerToc, Vec<u8>) {
        let toc = LayerToc {
            format: Format::Estargz,
            entries: self.entries,
            prefetch_end: None,
            blob_size: self.blob.len() as u64,
        };
        (toc, self.blob)
    }
}

/// Deterministic incompressible bytes.
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

// ---------------------------------------------------------------- the blob source

/// A memory blob that counts bytes served and can hold back requests in a range.
struct TestSource {
    blob: MemoryBlob,
    bytes: AtomicU64,
    requests: AtomicU64,
    gate_closed: AtomicBool,
    gated: Mutex<Range<u64>>,
}

impl BlobSource for TestSource {
    fn size(&self) -> u64 {
        self.blob.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            let gated = self.gated.lock().unwrap().clone();
            if range.start < gated.end && gated.start < range.end {
                // Held back while the gate is closed, at most 20 s: never a hang.
                let deadline = Instant::now() + Duration::from_secs(20);
                while self.gate_closed.load(Ordering::SeqCst) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.bytes
                .fetch_add(range.end - range.start, Ordering::SeqCst);
            self.blob.read_range(range).await
        })
    }
}

// ---------------------------------------------------------------- guards

/// Unmounts the FUSE mount on drop (also on panic), by handle and then by path.
struct FuseGuard {
    mount: Option<LayerMount>,
    path: PathBuf,
}

impl Drop for FuseGuard {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            if let Err(err) = m.unmount() {
                eprintln!("unmount: {err}");
            }
        }
        if mount::is_mountpoint(&self.path).unwrap_or(false) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Unmounts an overlay on drop.
struct OverlayGuard(PathBuf);

impl Drop for OverlayGuard {
    fn drop(&mut self) {
        if mount::is_mountpoint(&self.0).unwrap_or(false) {
            let _ = Command::new("umount").arg(&self.0).status();
            if mount::is_mountpoint(&self.0).unwrap_or(false) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
}

// ---------------------------------------------------------------- helpers

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn listxattr(path: &Path) -> Vec<String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: valid NUL-terminated string and a buffer of the length passed.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr: {}", io::Error::last_os_error());
    buf.truncate(n as usize);
    buf.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------- the test

struct Layer {
    toc: LayerToc,
    blob: Vec<u8>,
    big: Vec<u8>,
    big_blob: Range<u64>,
    bad: Vec<u8>,
}

fn build_layer() -> Layer {
    let mut b = LayerBuilder::default();
    b.push(entry("./", EntryKind::Dir, 0o755));
    b.push(entry("etc/", EntryKind::Dir, 0o755));
    let mut hostname = entry("etc/hostname", EntryKind::Reg, 0o640);
    hostname.uid = 1000;
    hostname.gid = 2000;
    hostname.mtime_nsec = 123_456_789;
    hostname.xattrs = BTreeMap::from([("user.veil".to_string(), b"yes".to_vec())]);
    b.file(hostname, b"veil\n", 4096);
    b.push(entry("etc/.wh.removed", EntryKind::Reg, 0o644));
    b.file(
        entry("bin/busybox", EntryKind::Reg, 0o755),
        &noise(300_000, 7),
        64 * 1024,
    );
    b.link("bin/sh", EntryKind::Hardlink, "bin/busybox");
    b.link("bin/ls", EntryKind::Symlink, "busybox");
    b.file(
        entry("bin/su", EntryKind::Reg, 0o4755),
        b"#!/bin/false\n",
        4096,
    );
    b.device("dev/null", EntryKind::Char, 1, 3);
    b.device("dev/sda", EntryKind::Block, 8, 0);
    b.push(entry("run/fifo", EntryKind::Fifo, 0o600));
    b.push(entry("opaque/.wh..wh..opq", EntryKind::Reg, 0o644));
    b.file(entry("opaque/keep", EntryKind::Reg, 0o644), b"kept\n", 4096);
    b.file(
        entry("deep/a/b/c.txt", EntryKind::Reg, 0o644),
        b"implied dirs\n",
        4096,
    );
    let big = noise(10 * MIB, 42);
    let big_start = b.blob.len() as u64;
    b.file(entry("data/big.bin", EntryKind::Reg, 0o644), &big, MIB);
    let big_blob = big_start..b.blob.len() as u64;
    let bad = noise(3 * MIB, 99);
    b.file(entry("data/bad.bin", EntryKind::Reg, 0o644), &bad, MIB);
    let (toc, mut blob) = b.finish();
    // Flip one byte in the middle of bad.bin's second chunk.
    let second = &toc.entries.last().unwrap().chunks[1];
    let at = ((second.blob_offset + second.blob_end) / 2) as usize;
    blob[at] ^= 0x01;
    Layer {
        toc,
        blob,
        big,
        big_blob,
        bad,
    }
}

#[test]
fn layer_mounts_and_serves_exact_files() {
    if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root and /dev/fuse");
        return;
    }
    let layer = build_layer();
    let blob_len = layer.blob.len() as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tree =
        Arc::new(LayerTree::build(&layer.toc, &veil_formats::limits::Limits::default()).unwrap());
    let source = Arc::new(TestSource {
        blob: MemoryBlob(layer.blob),
        bytes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        gate_closed: AtomicBool::new(false),
        gated: Mutex::new(layer.big_blob.clone()),
    });
    let reader = Arc::new(ChunkReader::new(
        "sha256:fuse-test",
        tree,
        source.clone(),
        Arc::new(ChunkCache::new(64 << 20)),
        ReaderOptions::default(),
    ));
    let fs_impl = LayerFs::new(
        reader.clone(),
        runtime.handle().clone(),
        FsOptions::default(),
    );

    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("layer");
    fs::create_dir(&mnt).unwrap();
    let mut guard = FuseGuard {
        mount: Some(mount::mount(fs_impl, &mnt, &MountOptions::default()).unwrap()),
        path: mnt.clone(),
    };
    assert!(mount::is_mountpoint(&mnt).unwrap());
    assert!(mount::veil_mounts().unwrap().contains(&mnt));
    let findmnt = run(
        "findmnt",
        &["-n", "-o", "SOURCE,FSTYPE,OPTIONS", mnt.to_str().unwrap()],
    );
    let findmnt = findmnt.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(findmnt.starts_with("veil fuse.veil ro,"), "{findmnt}");
    assert!(
        findmnt.contains("default_permissions") && findmnt.contains("allow_other"),
        "{findmnt}"
    );
    let p = |rel: &str| mnt.join(rel);

    // A small file, and only a small part of the blob fetched for it.
    assert_eq!(fs::read(p("etc/hostname")).unwrap(), b"veil\n");
    let fetched = source.bytes.load(Ordering::SeqCst);
    assert!(
        fetched > 0 && fetched * 1000 < blob_len,
        "fetched {fetched} of {blob_len}"
    );

    // Metadata, exactly.
    let md = fs::metadata(p("etc/hostname")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert!(md.file_type().is_file());
    assert_eq!(
        (md.uid(), md.gid(), md.size(), md.nlink()),
        (1000, 2000, 5, 1)
    );
    assert_eq!((md.mtime(), md.mtime_nsec()), (MTIME, 123_456_789));
    assert_eq!(fs::metadata(p("bin/su")).unwrap().mode() & 0o7777, 0o4755);
    let root = fs::metadata(&mnt).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.mode() & 0o7777, 0o755);

    // Symlink and hard links.
    assert_eq!(
        fs::read_link(p("bin/ls")).unwrap(),
        PathBuf::from("busybox")
    );
    assert!(fs::symlink_metadata(p("bin/ls"))
        .unwrap()
        .file_type()
        .is_symlink());
    let busybox = fs::metadata(p("bin/busybox")).unwrap();
    let sh = fs::metadata(p("bin/sh")).unwrap();
    assert_eq!(busybox.ino(), sh.ino());
    assert_eq!((busybox.nlink(), sh.nlink()), (2, 2));
    assert_eq!(fs::read(p("bin/sh")).unwrap(), noise(300_000, 7));

    // Devices, fifo, whiteout.
    let null = fs::metadata(p("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    let sda = fs::metadata(p("dev/sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!((libc::major(sda.rdev()), libc::minor(sda.rdev())), (8, 0));
    assert!(fs::metadata(p("run/fifo")).unwrap().file_type().is_fifo());
    let wh = fs::metadata(p("etc/removed")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);

    // Xattrs, including the opaque marker.
    assert_eq!(getxattr(&p("etc/hostname"), "user.veil").unwrap(), b"yes");
    assert_eq!(listxattr(&p("etc/hostname")), vec!["user.veil"]);
    assert_eq!(
        getxattr(&p("opaque"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    let missing = getxattr(&p("etc/hostname"), "user.nope").unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENODATA));

    // Directory listings, implied directories.
    assert_eq!(
        names(&mnt),
        vec!["bin", "data", "deep", "dev", "etc", "opaque", "run"]
    );
    assert_eq!(names(&p("etc")), vec!["hostname", "removed"]);
    assert_eq!(names(&p("opaque")), vec!["keep"]);
    assert_eq!(fs::read(p("deep/a/b/c.txt")).unwrap(), b"implied dirs\n");
    assert_eq!(fs::metadata(p("deep/a")).unwrap().mode() & 0o7777, 0o755);

    // The usual tools agree.
    let ls = run("ls", &["-ln", p("etc").to_str().unwrap()]);
    let ls: String = ls
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    assert!(ls.contains("-rw-r----- 1 1000 2000 5 "), "{ls}");
    assert!(ls.contains("c--------- 1 0 0 0, 0 "), "{ls}");
    let stat = run(
        "stat",
        &[
            "-c",
            "%a %u %g %s %h %F",
            p("bin/busybox").to_str().unwrap(),
        ],
    );
    assert_eq!(stat.trim(), "755 0 0 300000 2 regular file");
    assert_eq!(
        run("readlink", &[p("bin/ls").to_str().unwrap()]).trim(),
        "busybox"
    );

    // Read-only.
    let err = fs::File::create(p("etc/new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = fs::OpenOptions::new()
        .write(true)
        .open(p("etc/hostname"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // A slow fetch does not hold up other requests: hold back the big file's blob range.
    source.gate_closed.store(true, Ordering::SeqCst);
    let big_path = p("data/big.bin");
    let slow = std::thread::spawn(move || fs::read(big_path));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(fs::read(p("opaque/keep")).unwrap(), b"kept\n");
    assert!(fs::metadata(p("run")).unwrap().is_dir());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !slow.is_finished(),
        "the big read should still be held back"
    );
    source.gate_closed.store(false, Ordering::SeqCst);
    let big = slow.join().unwrap().unwrap();
    assert_eq!(big.len(), 10 * MIB);
    assert_eq!(sha256_hex(&big), sha256_hex(&layer.big));

    // The kernel keeps what it read (FOPEN_KEEP_CACHE, a year's attribute TTL): the file
    // read again, opened anew, costs Veil no read at all.
    let before = reader.stats();
    assert_eq!(
        sha256_hex(&fs::read(p("data/big.bin")).unwrap()),
        sha256_hex(&layer.big)
    );
    let after = reader.stats();
    assert_eq!(
        (after.chunk_hits, after.chunks_fetched, after.chunk_waits),
        (before.chunk_hits, before.chunks_fetched, before.chunk_waits),
        "a second read of a file must come from the page cache"
    );
    // And the mount's readahead was raised (larger FUSE reads).
    let device = run("findmnt", &["-n", "-o", "MAJ:MIN", mnt.to_str().unwrap()]);
    let read_ahead =
        fs::read_to_string(format!("/sys/class/bdi/{}/read_ahead_kb", device.trim())).unwrap();
    assert_eq!(
        read_ahead.trim(),
        veil_fusefs::tuning::READ_AHEAD_KB.to_string()
    );

    // Tampered chunk: EIO, never wrong bytes; the intact chunk before it still reads.
    let mut bad = fs::File::open(p("data/bad.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    bad.read_exact(&mut head).unwrap();
    assert_eq!(head, layer.bad[..4096]);
    bad.seek(SeekFrom::Start((MIB + MIB / 2) as u64)).unwrap();
    let err = bad.read(&mut head).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = fs::read(p("data/bad.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(reader.stats().verify_failures >= 1);

    // statfs works.
    let statfs = run("stat", &["-f", "-c", "%T", mnt.to_str().unwrap()]);
    assert!(statfs.contains("fuse"), "{statfs}");

    // overlayfs on top, as a container sees it: lowerdir = this layer over a base layer
    // whose etc/removed is whited out and whose opaque/ is hidden.
    let base = tmp.path().join("base");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::create_dir_all(base.join("opaque")).unwrap();
    fs::write(base.join("etc/removed"), b"should be hidden").unwrap();
    fs::write(base.join("etc/base-only"), b"from base").unwrap();
    fs::write(base.join("opaque/gone"), b"hidden by opaque").unwrap();
    let (upper, work, merged) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        mnt.display(),
        base.display(),
        upper.display(),
        work.display()
    );
    run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &opts,
            merged.to_str().unwrap(),
        ],
    );
    let overlay = OverlayGuard(merged.clone());
    assert_eq!(fs::read(merged.join("etc/hostname")).unwrap(), b"veil\n");
    assert_eq!(
        fs::read(merged.join("etc/base-only")).unwrap(),
        b"from base"
    );
    assert!(
        !merged.join("etc/removed").exists(),
        "whiteout must hide the base file"
    );
    assert_eq!(names(&merged.join("etc")), vec!["base-only", "hostname"]);
    assert_eq!(names(&merged.join("opaque")), vec!["keep"]);
    assert_eq!(fs::read(merged.join("bin/sh")).unwrap().len(), 300_000);
    let big = fs::read(merged.join("data/big.bin")).unwrap();
    assert_eq!(sha256_hex(&big), sha256_hex(&layer.big));
    // Writes go to the upper dir.
    fs::write(merged.join("etc/hostname"), b"changed\n").unwrap();
    assert_eq!(fs::read(upper.join("etc/hostname")).unwrap(), b"changed\n");
    assert_eq!(fs::read(p("etc/hostname")).unwrap(), b"veil\n");
    drop(overlay);
    assert!(!mount::is_mountpoint(&merged).unwrap());

    // Unmount explicitly.
    guard.mount.take().unwrap().unmount().unwrap();
    assert!(!mount::is_mountpoint(&mnt).unwrap());
    eprintln!(
        "blob {blob_len} bytes, fetched {} in {} requests; stats {:?}",
        source.bytes.load(Ordering::SeqCst),
        source.requests.load(Ordering::SeqCst),
        reader.stats()
    );
}

#[test]
fn busy_unmount_detaches_and_unmount_by_path_recovers() {
    if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root and /dev/fuse");
        return;
    }
    let mut b = LayerBuilder::default();
    b.file(
        entry("f", EntryKind::Reg, 0o644),
        &noise(200_000, 3),
        64 * 1024,
    );
    let (toc, blob) = b.finish();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tree = Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap());
    let source: Arc<dyn BlobSource> = Arc::new(MemoryBlob(blob));
    let cache = Arc::new(ChunkCache::default());
    let new_fs = || {
        let reader = ChunkReader::new(
            "sha256:recovery",
            tree.clone(),
            source.clone(),
            cache.clone(),
            ReaderOptions::default(),
        );
        LayerFs::new(
            Arc::new(reader),
            runtime.handle().clone(),
            FsOptions::default(),
        )
    };
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("layer");
    fs::create_dir(&mnt).unwrap();

    // Not a directory: a clear error, nothing mounted.
    let file = tmp.path().join("plain");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        mount::mount(new_fs(), &file, &MountOptions::default()),
        Err(mount::MountError::NotADirectory(_))
    ));

    // Busy: an open file keeps the mount in use; unmount detaches it lazily and the open
    // file still reads.
    let mut guard = FuseGuard {
        mount: Some(mount::mount(new_fs(), &mnt, &MountOptions::default()).unwrap()),
        path: mnt.clone(),
    };
    let mut open = fs::File::open(mnt.join("f")).unwrap();
    let mut head = [0u8; 16];
    open.read_exact(&mut head).unwrap();
    let started = Instant::now();
    guard.mount.take().unwrap().unmount().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!mount::is_mountpoint(&mnt).unwrap());
    open.seek(SeekFrom::Start(150_000)).unwrap();
    open.read_exact(&mut head).unwrap();
    assert_eq!(head, noise(200_000, 3)[150_000..150_016]);
    drop(open);

    // Recovery: unmount by path, then the handle's own unmount is a no-op, not an error.
    guard.mount = Some(mount::mount(new_fs(), &mnt, &MountOptions::default()).unwrap());
    assert!(mount::is_mountpoint(&mnt).unwrap());
    mount::unmount_path(&mnt).unwrap();
    assert!(!mount::is_mountpoint(&mnt).unwrap());
    guard.mount.take().unwrap().unmount().unwrap();
    assert!(
        mount::unmount_path(&mnt).is_err(),
        "nothing is mounted there any more"
    );
}
