//! Promotion of files whole in the plaintext cache to FUSE passthrough from a memfd
//! (`veil_fusefs::promote`), through real mounts: what the kernel reads, what reaches
//! Veil, where the plaintext is (locked, out of core dumps, nowhere on disk) and that the
//! cache's budget holds; and in a session resumed through a socketpair
//! (`veil_fusefs::resume`), registration through a copy of the connection's device fd
//! (`veil_fusefs::backing`), with and without `FUSE_PASSTHROUGH` negotiated.
//!
//! Needs root, `/dev/fuse` and a kernel with FUSE passthrough (Linux 6.9+); skipped with
//! a message otherwise. Every mount is undone by a guard, also when an assertion fails.

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use sha2::{Digest, Sha256};
use veil_blob::{BlobSource, MemoryBlob};
use veil_formats::estargz;
use veil_fusefs::backing::BackingRegistrar;
use veil_fusefs::cache::{ChunkCache, ChunkKey};
use veil_fusefs::disk_cache::DiskCache;
use veil_fusefs::fs::{FsOptions, LayerFs};
use veil_fusefs::handover::KernelInit;
use veil_fusefs::mount::{self, LayerMount, MountOptions};
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::promote::{PromoteOptions, MAX_PROMOTED_PERCENT};
use veil_fusefs::resume::resume;
use veil_fusefs::tree::LayerTree;
use veil_fusefs::tuning::answer_init;

const MIB: usize = 1 << 20;
/// Chunk size of the test layers: several chunks per file.
const CHUNK: u64 = 256 << 10;

/// Bytes that gzip really compresses (16 letters, no long repeats): the blob, and so
/// the disk cache, never holds them verbatim.
fn letters(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state & 15) as u8
        })
        .collect()
}

fn sha(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// Unmounts on drop (also on panic): overlays first, then the layer.
struct Guard {
    overlays: Vec<PathBuf>,
    mount: Option<LayerMount>,
    path: PathBuf,
    /// For a resumed mount: the session that made the connection (never run), dropped
    /// once the mount is gone.
    first: Option<fuser::Session<FirstSession>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for o in &self.overlays {
            let _ = Command::new("umount").arg("-l").arg(o).status();
        }
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
        drop(self.first.take());
        if mount::is_mountpoint(&self.path).unwrap_or(false) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A mounted layer of `files` (name, bytes) with its reader and cache.
struct Mounted {
    reader: Arc<ChunkReader>,
    cache: Arc<ChunkCache>,
    tmp: tempfile::TempDir,
    guard: Guard,
}

/// A layer of `files` (name, bytes) read through a disk cache into a plaintext cache of
/// `budget` bytes: its reader, cache, directory and filesystem (not mounted).
fn layer(
    files: &[(&str, &[u8])],
    budget: u64,
) -> (
    Arc<ChunkReader>,
    Arc<ChunkCache>,
    tempfile::TempDir,
    LayerFs,
) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, *data).unwrap();
    }
    let opts = estargz::BuildOptions {
        chunk_size: CHUNK,
        ..Default::default()
    };
    let (blob, out) = estargz::build_to_vec(Cursor::new(tar.into_inner().unwrap()), &opts).unwrap();
    let toc = block_on(estargz::read_toc(
        &MemoryBlob(blob.clone()),
        Some(&out.toc_digest),
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Blob bytes go through a disk cache, as in the daemon.
    let disk = DiskCache::open(tmp.path().join("cache"), 1 << 30).unwrap();
    let source: Arc<dyn BlobSource> = disk.wrap("sha256:promote", Arc::new(MemoryBlob(blob)));
    let cache = Arc::new(ChunkCache::new(budget));
    let tree = LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap();
    let reader = Arc::new(ChunkReader::new(
        "sha256:promote",
        Arc::new(tree),
        source,
        cache.clone(),
        ReaderOptions::default(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fs = LayerFs::new(
        reader.clone(),
        runtime.handle().clone(),
        FsOptions::default(),
    );
    // The runtime lives as long as the test process: the mount's reads run on it.
    std::mem::forget(runtime);
    (reader, cache, tmp, fs)
}

impl Mounted {
    fn new(files: &[(&str, &[u8])], budget: u64, promote: PromoteOptions) -> Self {
        let (reader, cache, tmp, fs) = layer(files, budget);
        let mnt = tmp.path().join("layer");
        fs::create_dir(&mnt).unwrap();
        let options = MountOptions {
            promote,
            ..MountOptions::default()
        };
        let guard = Guard {
            overlays: Vec::new(),
            mount: Some(mount::mount(fs, &mnt, &options).unwrap()),
            path: mnt,
            first: None,
        };
        Self {
            reader,
            cache,
            tmp,
            guard,
        }
    }

    /// The same, served as after a restart: a first session makes the connection (with
    /// `FUSE_PASSTHROUGH` in its INIT answer when `passthrough`) and is never run; the
    /// layer's filesystem resumes it through a socketpair (`veil_fusefs::resume`),
    /// promoting as `promote` says through a copy of the connection's fd.
    fn resumed(
        files: &[(&str, &[u8])],
        budget: u64,
        promote: PromoteOptions,
        passthrough: bool,
    ) -> Self {
        let (reader, cache, tmp, fs) = layer(files, budget);
        let mnt = tmp.path().join("layer");
        fs::create_dir(&mnt).unwrap();
        let offer = Arc::new(Mutex::new(None));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::RO,
            fuser::MountOption::FSName("veil-test".to_string()),
            fuser::MountOption::CUSTOM("subtype=veil".to_string()),
        ];
        let first = FirstSession {
            passthrough,
            offer: offer.clone(),
        };
        // The handshake is over once the session is made.
        let first = fuser::Session::new(first, &mnt, &config).unwrap();
        let init = offer
            .lock()
            .unwrap()
            .expect("the first session saw no INIT");
        let dev = first.as_fd().try_clone_to_owned().unwrap();
        let (fs, adopted) =
            fs.with_resumed_promotion(promote, Some(dev.try_clone().unwrap()), Vec::new());
        assert_eq!(adopted, 0);
        let mut guard = Guard {
            overlays: Vec::new(),
            mount: None,
            path: mnt.clone(),
            first: Some(first),
        };
        guard.mount = Some(resume(fs, dev, &init, &mnt, &MountOptions::default()).unwrap());
        Self {
            reader,
            cache,
            tmp,
            guard,
        }
    }

    /// A copy of the connection's `/dev/fuse` fd (a resumed mount's).
    fn device(&self) -> OwnedFd {
        let first = self.guard.first.as_ref().expect("not a resumed mount");
        first.as_fd().try_clone_to_owned().unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.guard.path.join(name)
    }

    /// Chunks Veil has served to FUSE reads so far (every read served counts one at
    /// least).
    fn served(&self) -> u64 {
        let s = self.reader.stats();
        s.chunk_hits + s.chunks_fetched + s.chunk_waits
    }

    fn promoted(&self) -> u64 {
        self.cache.stats().promoted
    }

    /// The budget holds: cached chunks and promoted files together, promoted files
    /// within their share.
    fn assert_within_budget(&self) {
        let s = self.cache.stats();
        assert!(s.bytes + s.promoted <= s.budget, "{s:?}");
        assert!(
            u128::from(s.promoted) * 100 <= u128::from(s.budget) * u128::from(MAX_PROMOTED_PERCENT),
            "{s:?}"
        );
    }

    /// The cache keys of `name`'s chunks.
    fn keys(&self, name: &str) -> Vec<ChunkKey> {
        let node = self.reader.tree().resolve(name).unwrap();
        node.chunks
            .clone()
            .map(|chunk| ChunkKey {
                layer: self.reader.layer_id(),
                chunk: chunk as u64,
            })
            .collect()
    }

    /// Opens `name` until it is opened by passthrough (promoted bytes reach `promoted`):
    /// the kernel sends the RELEASE of an earlier handle in the background, and until it
    /// arrives Veil must not promote.
    fn open_promoted(&self, name: &str, promoted: u64) -> File {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let file = File::open(self.path(name)).unwrap();
            if self.promoted() >= promoted {
                return file;
            }
            assert!(Instant::now() < deadline, "{name} was never promoted");
            drop(file);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The session that makes a connection for [`Mounted::resumed`]: it answers INIT (as
/// a mount that promotes when `passthrough`) and records the kernel's offer.
struct FirstSession {
    passthrough: bool,
    offer: Arc<Mutex<Option<KernelInit>>>,
}

impl fuser::Filesystem for FirstSession {
    fn init(&mut self, _req: &fuser::Request, config: &mut fuser::KernelConfig) -> io::Result<()> {
        *self.offer.lock().unwrap() = Some(KernelInit::from_config(config));
        answer_init(config, self.passthrough);
        Ok(())
    }
}

/// A sealed memfd holding `data`.
fn memfd_of(data: &[u8]) -> File {
    // SAFETY: a NUL-terminated name and valid flags; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(c"veil-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "{}", io::Error::last_os_error());
    // SAFETY: memfd_create returned a fresh fd nobody else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(data).unwrap();
    file
}

fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0;
    if !ok {
        eprintln!("SKIPPED: needs root and /dev/fuse");
    }
    ok
}

fn read_all(file: &mut File) -> Vec<u8> {
    let mut out = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut out).unwrap();
    out
}

/// Reads `name` whole through a handle of its own, then drops its pages from the
/// kernel's page cache (so later reads must come from somewhere else).
fn read_and_drop_pages(m: &Mounted, name: &str) -> Vec<u8> {
    let mut file = File::open(m.path(name)).unwrap();
    let data = read_all(&mut file);
    drop_pages(&file);
    data
}

fn drop_pages(file: &File) {
    // SAFETY: an advisory call on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

/// `Size`, `Locked` (KiB) and the `VmFlags` of the mappings of promoted memfds, from
/// `/proc/self/smaps`.
fn promoted_mappings() -> Vec<(u64, u64, String)> {
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
    let mut found = Vec::new();
    let mut current: Option<(u64, u64, String)> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            found.extend(current.take());
            if line.contains("/memfd:veil-promoted") {
                current = Some((0, 0, String::new()));
            }
            continue;
        }
        let Some((size, locked, flags)) = current.as_mut() else {
            continue;
        };
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        if line.starts_with("Size:") {
            *size = kib();
        } else if line.starts_with("Locked:") {
            *locked = kib();
        } else if let Some(f) = line.strip_prefix("VmFlags:") {
            *flags = f.trim().to_string();
        }
    }
    found.extend(current);
    found
}

/// Whether any regular file under `dir` (not entering `skip`) holds `needle`.
fn any_file_holds(dir: &Path, skip: &Path, needle: &[u8]) -> bool {
    fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path == skip {
            return false;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            any_file_holds(&path, skip, needle)
        } else if meta.is_file() {
            let data = fs::read(&path).unwrap();
            data.windows(needle.len()).any(|w| w == needle)
        } else {
            false
        }
    })
}

#[test]
fn a_file_whole_in_the_cache_is_read_by_the_kernel_from_a_locked_memfd() {
    if !available() {
        return;
    }
    let big = letters(4 * MIB, 1);
    let small = letters(100 << 10, 2);
    let m = Mounted::new(
        &[("big.bin", &big), ("small.txt", &small)],
        64 << 20,
        PromoteOptions::default(),
    );
    // First read: served by Veil (not whole at open), fills the cache.
    assert_eq!(sha(&read_and_drop_pages(&m, "big.bin")), sha(&big));
    assert_eq!(fs::read(m.path("small.txt")).unwrap(), small);
    assert_eq!(m.promoted(), 0);
    assert!(m.cache.contains_all(m.keys("big.bin")));

    // Opened again: promoted; the kernel reads the memfd, no read reaches Veil.
    let served = m.served();
    let mut file = m.open_promoted("big.bin", big.len() as u64);
    assert_eq!(sha(&read_all(&mut file)), sha(&big));
    assert_eq!(m.served(), served, "a FUSE read reached Veil");
    assert_eq!(m.promoted(), big.len() as u64);
    m.assert_within_budget();
    // Its chunks left the cache: the plaintext is held once.
    assert!(m.keys("big.bin").iter().all(|k| !m.cache.contains(*k)));
    // A small file is never promoted.
    drop(File::open(m.path("small.txt")).unwrap());
    assert_eq!(m.promoted(), big.len() as u64);

    // A second open while the first is held: passthrough too, same bytes.
    let mut again = File::open(m.path("big.bin")).unwrap();
    assert_eq!(sha(&read_all(&mut again)), sha(&big));
    assert_eq!(m.served(), served);

    // The memfd's mapping is locked whole and left out of core dumps (so are those of
    // the other tests, running beside this one in the same process).
    let mappings = promoted_mappings();
    assert!(
        mappings
            .iter()
            .any(|(size, _, _)| *size == (big.len() >> 10) as u64),
        "{mappings:?}"
    );
    for (size, locked, flags) in &mappings {
        assert_eq!(locked, size, "not locked whole: {mappings:?}");
        assert!(flags.split(' ').any(|f| f == "dd"), "{flags}");
    }
    // No file under the test's directories (disk cache included) holds the plaintext.
    let needle = &big[2 * MIB..2 * MIB + 4096];
    assert!(!any_file_holds(m.tmp.path(), &m.guard.path, needle));

    // overlayfs stacks on the mount and reads the promoted file through it.
    let (upper, work, merged) = (
        m.tmp.path().join("upper"),
        m.tmp.path().join("work"),
        m.tmp.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        m.guard.path.display(),
        upper.display(),
        work.display()
    );
    let mut m = m;
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success(), "overlay mount failed");
    m.guard.overlays.push(merged.clone());
    let mut through = File::open(merged.join("big.bin")).unwrap();
    assert_eq!(sha(&read_all(&mut through)), sha(&big));
    assert_eq!(m.served(), served);
}

#[test]
fn a_file_not_whole_is_read_lazily_and_the_switch_turns_promotion_off() {
    if !available() {
        return;
    }
    let data = letters(16 * MIB, 3);
    let m = Mounted::new(&[("lazy.bin", &data)], 64 << 20, PromoteOptions::default());
    // Only the head read (and the kernel's readahead, 4 MiB at most): not whole, not
    // promoted on the next open.
    let mut head = vec![0u8; 4096];
    File::open(m.path("lazy.bin"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, data[..4096]);
    assert!(!m.cache.contains_all(m.keys("lazy.bin")));
    std::thread::sleep(Duration::from_millis(100));
    let served = m.served();
    let mut file = File::open(m.path("lazy.bin")).unwrap();
    drop_pages(&file);
    assert_eq!(sha(&read_all(&mut file)), sha(&data));
    assert!(m.served() > served, "the lazy read was served by Veil");
    assert_eq!(m.promoted(), 0);
    drop(file);

    // Promotion off: a file whole in the cache is still served by Veil.
    let data = letters(4 * MIB, 5);
    let off = Mounted::new(&[("big.bin", &data)], 64 << 20, PromoteOptions::off());
    assert_eq!(sha(&read_and_drop_pages(&off, "big.bin")), sha(&data));
    std::thread::sleep(Duration::from_millis(100));
    let served = off.served();
    let mut file = File::open(off.path("big.bin")).unwrap();
    drop_pages(&file);
    assert_eq!(sha(&read_all(&mut file)), sha(&data));
    assert!(off.served() > served);
    assert_eq!(off.promoted(), 0);
}

#[test]
fn an_open_from_before_the_file_was_whole_and_new_opens_all_read_right() {
    if !available() {
        return;
    }
    let data = letters(3 * MIB, 4);
    let m = Mounted::new(&[("held.bin", &data)], 64 << 20, PromoteOptions::default());
    // Opened while not whole; read whole through it (now whole in the cache).
    let mut before = File::open(m.path("held.bin")).unwrap();
    assert_eq!(sha(&read_all(&mut before)), sha(&data));
    // A new open while that handle is held: not promoted (the kernel would refuse
    // passthrough beside a cached open), both read right.
    let mut after = File::open(m.path("held.bin")).unwrap();
    drop_pages(&after);
    assert_eq!(sha(&read_all(&mut after)), sha(&data));
    assert_eq!(sha(&read_all(&mut before)), sha(&data));
    assert_eq!(m.promoted(), 0);
    drop((before, after));

    // Once they are closed it is promoted; opens beside a passthrough one get
    // passthrough too.
    let served = m.served();
    let mut first = m.open_promoted("held.bin", data.len() as u64);
    let mut second = File::open(m.path("held.bin")).unwrap();
    assert_eq!(sha(&read_all(&mut first)), sha(&data));
    assert_eq!(sha(&read_all(&mut second)), sha(&data));
    drop(first);
    let mut third = File::open(m.path("held.bin")).unwrap();
    assert_eq!(sha(&read_all(&mut third)), sha(&data));
    assert_eq!(sha(&read_all(&mut second)), sha(&data));
    assert_eq!(m.served(), served);
}

#[test]
fn promoted_files_stay_within_the_cache_budget() {
    if !available() {
        return;
    }
    // Budget 8 MiB: promoted files may take 4 MiB, two files of 2 MiB.
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}"), letters(2 * MIB, 10 + i)))
        .collect();
    let listed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let m = Mounted::new(&listed, 8 << 20, PromoteOptions::default());
    let mut held = Vec::new();
    for (i, (name, data)) in files.iter().take(2).enumerate() {
        assert_eq!(sha(&read_and_drop_pages(&m, name)), sha(data));
        m.assert_within_budget();
        let mut file = m.open_promoted(name, ((i + 1) * 2 * MIB) as u64);
        assert_eq!(sha(&read_all(&mut file)), sha(data));
        m.assert_within_budget();
        held.push(file);
    }
    // The third does not fit while both are open: served by Veil, right.
    let (name, data) = &files[2];
    assert_eq!(sha(&read_and_drop_pages(&m, name)), sha(data));
    std::thread::sleep(Duration::from_millis(100));
    let mut third = File::open(m.path(name)).unwrap();
    assert_eq!(sha(&read_all(&mut third)), sha(data));
    assert_eq!(m.promoted(), (4 * MIB) as u64);
    m.assert_within_budget();
    drop(third);
    // Once the first is closed, promoting the third drops it (idle, least recently
    // opened) to make room; the budget still holds.
    drop(held.remove(0));
    assert_eq!(sha(&read_and_drop_pages(&m, name)), sha(data));
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let served = m.served();
        let mut file = File::open(m.path(name)).unwrap();
        let bytes = read_all(&mut file);
        assert_eq!(sha(&bytes), sha(data));
        if m.served() == served {
            break served;
        }
        assert!(
            Instant::now() < deadline,
            "the third file was never promoted"
        );
        drop_pages(&file);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(m.promoted(), (4 * MIB) as u64);
    m.assert_within_budget();
    // The dropped one reads right again, from Veil.
    let mut first = File::open(m.path(&files[0].0)).unwrap();
    assert_eq!(sha(&read_all(&mut first)), sha(&files[0].1));
    assert!(m.served() > served);
    m.assert_within_budget();
}

#[test]
fn a_layer_marked_bad_stops_serving_its_promoted_files() {
    if !available() {
        return;
    }
    let data = letters(2 * MIB, 6);
    let m = Mounted::new(&[("f.bin", &data)], 64 << 20, PromoteOptions::default());
    assert_eq!(sha(&read_and_drop_pages(&m, "f.bin")), sha(&data));
    let mut held = m.open_promoted("f.bin", data.len() as u64);
    assert_eq!(sha(&read_all(&mut held)), sha(&data));
    m.reader.mark_bad("the whole-layer check failed (test)");
    // While a passthrough handle is open, a new open fails.
    assert!(File::open(m.path("f.bin")).is_err());
    drop(held);
    // Once it is closed, the promoted file goes and reads fail like every read of a bad
    // layer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.promoted() > 0 {
        assert!(
            Instant::now() < deadline,
            "the promoted file was never dropped"
        );
        if let Ok(mut file) = File::open(m.path("f.bin")) {
            drop_pages(&file);
            let mut buf = Vec::new();
            assert!(
                file.read_to_end(&mut buf).is_err(),
                "a bad layer served bytes"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_resumed_session_registers_through_the_device_fd_and_promotes_new_files() {
    if !available() {
        return;
    }
    let big = letters(3 * MIB, 20);
    let m = Mounted::resumed(
        &[("big.bin", &big)],
        64 << 20,
        PromoteOptions::default(),
        true,
    );
    // The registrar on a copy of the connection's fd: an id registered, closed, and
    // refused when closed again.
    let registrar = BackingRegistrar::new(m.device());
    let memfd = memfd_of(b"registered");
    let id = registrar.open(memfd.as_fd()).unwrap();
    assert!(id >= 1);
    registrar.close(id).unwrap();
    assert!(registrar.close(id).is_err());

    // Read whole through Veil (served through the socketpair), then promoted on the
    // next open: registered through the device fd, read by the kernel from the memfd.
    assert_eq!(sha(&read_and_drop_pages(&m, "big.bin")), sha(&big));
    assert_eq!(m.promoted(), 0);
    let served = m.served();
    let mut file = m.open_promoted("big.bin", big.len() as u64);
    assert_eq!(sha(&read_all(&mut file)), sha(&big));
    assert_eq!(m.served(), served, "a FUSE read reached Veil");
    let mut again = File::open(m.path("big.bin")).unwrap();
    assert_eq!(sha(&read_all(&mut again)), sha(&big));
    assert_eq!(m.served(), served);
    let mappings = promoted_mappings();
    assert!(
        mappings
            .iter()
            .any(|(size, locked, _)| *size == (big.len() >> 10) as u64 && locked == size),
        "{mappings:?}"
    );
    m.assert_within_budget();
}

#[test]
fn a_resumed_session_of_a_connection_without_passthrough_reads_normally() {
    if !available() {
        return;
    }
    let big = letters(3 * MIB, 21);
    let m = Mounted::resumed(
        &[("big.bin", &big)],
        64 << 20,
        PromoteOptions::default(),
        false,
    );
    // The kernel refuses the registration: the connection did not negotiate it.
    let memfd = memfd_of(b"refused");
    let err = BackingRegistrar::new(m.device())
        .open(memfd.as_fd())
        .unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)),
        "{err}"
    );
    // So the open that would promote is answered normally, and so are the next ones:
    // every read served by Veil, right.
    assert_eq!(sha(&read_and_drop_pages(&m, "big.bin")), sha(&big));
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(100));
        let served = m.served();
        let mut file = File::open(m.path("big.bin")).unwrap();
        drop_pages(&file);
        assert_eq!(sha(&read_all(&mut file)), sha(&big));
        assert!(m.served() > served, "not served by Veil");
    }
    assert_eq!(m.promoted(), 0);
    // Its chunks stayed in the cache.
    assert!(m.cache.contains_all(m.keys("big.bin")));
}
