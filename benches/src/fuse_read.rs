//! `veil bench --fuse-read`: how fast a file whose chunks Veil has cached reads through
//! Veil's FUSE filesystem, side by side with the same file on tmpfs.
//!
//! A one-file eStargz layer (default 1 GiB, 4 MiB chunks, built with Veil's own writer
//! from a generated tar) is served by Veil's FUSE filesystem from an in-memory blob (the
//! "network"), through the same `veil_fusefs` API the daemon mounts layers with
//! (default [`MountOptions`] and [`FsOptions`]), twice, from one plaintext cache: one
//! mount with promotion to FUSE passthrough off ([`PromoteOptions::off`]), one with it
//! on (the default, `veil_fusefs::promote`). The file is read once front to back through
//! each mount from the blob (fetch, decompress, verify: the warm-up, also timed; the
//! first mount's is reported), then opened again on the second mount, which promotes it
//! to a memfd. Every run reads it four ways, each front to back with a 1 MiB buffer:
//!
//! * **Veil, page cache dropped** (promotion off): the kernel's page cache of the file is
//!   dropped first (`posix_fadvise(DONTNEED)`, this file only), so every byte is a FUSE
//!   read answered from Veil's plaintext chunk cache: FUSE round trips, Veil's read
//!   path, copying.
//! * **Veil, hot** (promotion off): read again right after, pages kept: what the page
//!   cache gives a second reader (`FOPEN_KEEP_CACHE`, long TTLs).
//! * **Veil, promoted**: the page cache dropped the same way, on the mount that promoted
//!   the file: the kernel reads the memfd's pages itself (FUSE passthrough), no request
//!   reaches Veil.
//! * **tmpfs**: the same bytes in a file under `/dev/shm` (its pages are the file: a
//!   memory copy, the floor).
//!
//! Medians of the runs are printed (GiB/s and the ratio to tmpfs) and, with `--json`,
//! written as JSON. `--baseline BIN` first runs another build of `veil-bench` (e.g. one
//! built from main) with the same options and prints its figures beside these: before
//! and after in one run.
//!
//! The helpers the criterion micro-benchmark (`benches/fuse_read.rs`) shares live here
//! too: [`Mounted`] and [`read_dropping_cache`].

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use veil_blob::MemoryBlob;
use veil_formats::estargz::{self, BuildOptions};
use veil_fusefs::cache::ChunkCache;
use veil_fusefs::fs::{FsOptions, LayerFs};
use veil_fusefs::mount::{self, LayerMount, MountOptions};
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::promote::PromoteOptions;
use veil_fusefs::tree::LayerTree;

/// The file's name in the layer and on tmpfs.
const FILE_NAME: &str = "data.bin";

/// Bytes each `read(2)` of the benchmark asks for.
pub const READ_SIZE: usize = 1 << 20;

/// gzip level of the layer (fast: building a 1 GiB layer should take seconds).
const GZIP_LEVEL: i32 = 1;

/// How long the bench tries to have the file promoted (the kernel sends the warm-up
/// handle's RELEASE in the background; until Veil has it, an open is not promoted).
const PROMOTION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What to measure.
#[derive(Debug, Clone)]
pub struct FuseReadPlan {
    /// File size in MiB.
    pub size_mib: u64,
    /// Timed runs (each: Veil with the page cache dropped, Veil hot, Veil promoted,
    /// tmpfs).
    pub runs: usize,
    /// Where the generated tar is written (removed again).
    pub work_dir: PathBuf,
    /// Another `veil-bench` to run first with the same options, shown as "before".
    pub baseline: Option<PathBuf>,
    /// Also write the results as JSON here.
    pub json: Option<PathBuf>,
}

/// Medians (and every run) of one build's measurement, GiB/s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FuseReadResult {
    /// File size in bytes.
    pub bytes: u64,
    /// The warm-up read from the in-memory blob (fetch, decompress, verify, cache).
    pub warm_up: f64,
    /// Veil, page cache dropped before each run (served from Veil's chunk cache).
    pub cached: Vec<f64>,
    /// Veil, page cache kept.
    pub hot: Vec<f64>,
    /// tmpfs.
    pub tmpfs: Vec<f64>,
    /// Veil with the file promoted to FUSE passthrough from a memfd, page cache dropped
    /// (empty for a build without promotion).
    #[serde(default)]
    pub promoted: Vec<f64>,
    /// Why the file was not promoted, if it was not.
    #[serde(default)]
    pub promoted_error: Option<String>,
}

impl FuseReadResult {
    /// Median of Veil with the page cache dropped.
    pub fn cached_median(&self) -> f64 {
        median(&self.cached)
    }
    /// Median of Veil hot.
    pub fn hot_median(&self) -> f64 {
        median(&self.hot)
    }
    /// Median of tmpfs.
    pub fn tmpfs_median(&self) -> f64 {
        median(&self.tmpfs)
    }
    /// Median of Veil promoted.
    pub fn promoted_median(&self) -> f64 {
        median(&self.promoted)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the measurement (and the baseline's first, if any), prints the table; returns
/// this build's result.
pub fn run(plan: &FuseReadPlan) -> anyhow::Result<FuseReadResult> {
    if plan.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if plan.size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("--fuse-read needs /dev/fuse");
    }
    let baseline = match &plan.baseline {
        Some(bin) => Some(run_baseline(bin, plan)?),
        None => None,
    };
    let result = measure(plan)?;
    if let Some(path) = &plan.json {
        let json = serde_json::to_vec_pretty(&result)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    print_table(&result, baseline.as_ref());
    Ok(result)
}

/// Runs `bin --fuse-read` with the same options and reads back its JSON.
fn run_baseline(bin: &Path, plan: &FuseReadPlan) -> anyhow::Result<FuseReadResult> {
    let dir = tempfile::tempdir_in(&plan.work_dir)
        .with_context(|| format!("making a directory in {}", plan.work_dir.display()))?;
    let json = dir.path().join("baseline.json");
    eprintln!("fuse-read: running the baseline {}", bin.display());
    let status = std::process::Command::new(bin)
        .arg("--fuse-read")
        .arg("--size-mib")
        .arg(plan.size_mib.to_string())
        .arg("--runs")
        .arg(plan.runs.to_string())
        .arg("--work-dir")
        .arg(&plan.work_dir)
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("the baseline {} failed: {status}", bin.display());
    }
    let text = std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", json.display()))
}

fn print_table(after: &FuseReadResult, before: Option<&FuseReadResult>) {
    let gib = after.bytes as f64 / (1u64 << 30) as f64;
    println!(
        "sequential read of a {gib:.2} GiB file, {} KiB reads, medians of {} runs (GiB/s; % of tmpfs)",
        READ_SIZE >> 10,
        after.cached.len()
    );
    let row = |name: &str, r: &FuseReadResult| {
        let t = r.tmpfs_median();
        if let Some(e) = &r.promoted_error {
            println!("  {name:<8} Veil promoted: not measured: {e}");
        } else if !r.promoted.is_empty() {
            let p = r.promoted_median();
            println!(
                "  {name:<8} Veil promoted (FUSE passthrough from a memfd), page cache dropped: {p:.2} ({:.1} %)",
                100.0 * p / t
            );
        }
        println!(
            "  {name:<8} warm-up {:>6.2}   Veil cached {:>6.2} ({:>5.1} %)   Veil hot {:>6.2} ({:>5.1} %)   tmpfs {:>6.2}",
            r.warm_up,
            r.cached_median(),
            100.0 * r.cached_median() / t,
            r.hot_median(),
            100.0 * r.hot_median() / t,
            t
        );
    };
    if let Some(before) = before {
        row("before", before);
    }
    row(if before.is_some() { "after" } else { "Veil" }, after);
    if let Some(before) = before {
        println!(
            "  speed-up, page cache dropped: {:.2}x; hot: {:.2}x",
            after.cached_median() / before.cached_median(),
            after.hot_median() / before.hot_median()
        );
    }
}

/// Builds the layer, mounts it, warms it and times the runs.
fn measure(plan: &FuseReadPlan) -> anyhow::Result<FuseReadResult> {
    let size = plan.size_mib << 20;
    let work = tempfile::tempdir_in(&plan.work_dir)
        .with_context(|| format!("making a directory in {}", plan.work_dir.display()))?;
    eprintln!("fuse-read: building a {} MiB eStargz layer", plan.size_mib);
    let tar_path = work.path().join("layer.tar");
    write_tar(&tar_path, size)?;
    let tar = File::open(&tar_path).context("opening the tar")?;
    let (blob, _) = estargz::build_to_vec(
        tar,
        &BuildOptions {
            level: Some(GZIP_LEVEL),
            ..BuildOptions::default()
        },
    )
    .context("building the eStargz layer")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let blob = MemoryBlob(blob);
    let toc = runtime
        .block_on(estargz::read_toc(&blob, None))
        .context("reading the layer's TOC")?;
    let tree = LayerTree::build(&toc, &veil_formats::limits::Limits::default())
        .context("building the layer's tree")?;
    // Room for both mounts' copies: the chunks of one, the promoted file of the other
    // (promoted files may take half the budget).
    let cache = Arc::new(ChunkCache::new(size * 3));
    let (tree, blob) = (Arc::new(tree), Arc::new(blob));
    let mount_at = |name: &str, promote: PromoteOptions| -> anyhow::Result<Mounted> {
        let reader = Arc::new(ChunkReader::new(
            format!("sha256:fuse-read-bench-{name}"),
            tree.clone(),
            blob.clone(),
            cache.clone(),
            ReaderOptions::default(),
        ));
        let fs = LayerFs::new(reader, runtime.handle().clone(), FsOptions::default());
        let mnt = work.path().join(name);
        std::fs::create_dir(&mnt).context("making the mount point")?;
        let options = MountOptions {
            promote,
            ..MountOptions::default()
        };
        Ok(Mounted::new(
            mount::mount(fs, &mnt, &options).context("mounting the layer")?,
        ))
    };
    let plain = mount_at("layer", PromoteOptions::off())?;
    let promoting = mount_at("promoting", PromoteOptions::default())?;
    let on_fuse = plain.path.join(FILE_NAME);
    let on_promoting = promoting.path.join(FILE_NAME);
    // The tmpfs copy is the tar's payload: made from the same generator.
    let shm = tempfile::tempdir_in("/dev/shm").context("making a directory in /dev/shm")?;
    let on_tmpfs = shm.path().join(FILE_NAME);
    write_file(&on_tmpfs, size)?;
    std::fs::remove_file(&tar_path).context("removing the tar")?;

    let mut buf = vec![0u8; READ_SIZE];
    eprintln!("fuse-read: warming Veil's chunk cache (fetch, decompress, verify)");
    let warm_up = timed(|| digest_of(&on_fuse, &mut buf))?;
    let expected = timed(|| digest_of(&on_tmpfs, &mut buf))?;
    if warm_up.1 != expected.1 {
        bail!("Veil's FUSE served other bytes than the file on tmpfs");
    }
    eprintln!("fuse-read: warming the promoting mount, then opening it again to promote");
    if digest_of(&on_promoting, &mut buf)? != expected.1 {
        bail!("Veil's FUSE (promoting mount) served other bytes than the file on tmpfs");
    }
    let promoted_error = promote(&on_promoting, &cache, size).err();
    if promoted_error.is_none() && digest_of(&on_promoting, &mut buf)? != expected.1 {
        bail!("the promoted file holds other bytes than the file on tmpfs");
    }
    let mut result = FuseReadResult {
        bytes: size,
        warm_up: rate(size, warm_up.0),
        cached: Vec::new(),
        hot: Vec::new(),
        tmpfs: Vec::new(),
        promoted: Vec::new(),
        promoted_error,
    };
    for run in 1..=plan.runs {
        let cached = timed(|| read_dropping_cache(&on_fuse, &mut buf))?;
        let hot = timed(|| read_all(&on_fuse, &mut buf))?;
        let promoted = if result.promoted_error.is_none() {
            Some(timed(|| read_dropping_cache(&on_promoting, &mut buf))?)
        } else {
            None
        };
        let tmpfs = timed(|| read_all(&on_tmpfs, &mut buf))?;
        for (_, bytes) in [cached, hot, tmpfs].iter().chain(promoted.as_ref()) {
            if *bytes != size {
                bail!("read {bytes} bytes, expected {size}");
            }
        }
        result.cached.push(rate(size, cached.0));
        result.hot.push(rate(size, hot.0));
        result.tmpfs.push(rate(size, tmpfs.0));
        if let Some((secs, _)) = promoted {
            result.promoted.push(rate(size, secs));
        }
        eprintln!(
            "fuse-read: run {run}: Veil cached {:.2} GiB/s, hot {:.2} GiB/s, promoted {}, tmpfs {:.2} GiB/s",
            rate(size, cached.0),
            rate(size, hot.0),
            promoted.map_or("-".to_string(), |(secs, _)| format!("{:.2} GiB/s", rate(size, secs))),
            rate(size, tmpfs.0)
        );
    }
    if cache.stats().promoted != size && result.promoted_error.is_none() {
        bail!("the promoted file was dropped during the runs");
    }
    drop((plain, promoting));
    Ok(result)
}

/// Opens `path` (whole in the cache) until its mount promotes it, at most
/// [`PROMOTION_WAIT`]; an error says why not.
fn promote(path: &Path, cache: &ChunkCache, size: u64) -> Result<(), String> {
    let deadline = Instant::now() + PROMOTION_WAIT;
    loop {
        let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        if cache.stats().promoted >= size {
            return Ok(());
        }
        drop(file);
        if Instant::now() > deadline {
            return Err(format!(
                "not promoted within {PROMOTION_WAIT:?} (no FUSE passthrough: Linux 6.9+ and \
                 CAP_SYS_ADMIN needed; see the log)"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / secs.max(1e-9)
}

/// Runs `f`, returning its seconds and result.
fn timed<T>(f: impl FnOnce() -> io::Result<T>) -> anyhow::Result<(f64, T)> {
    let start = Instant::now();
    let value = f()?;
    Ok((start.elapsed().as_secs_f64(), value))
}

/// The file's contents: a pattern with noise (compresses a little, like real data).
struct Generator {
    left: u64,
    index: u64,
    state: u64,
}

impl Generator {
    fn new(size: u64) -> Self {
        Self {
            left: size,
            index: 0,
            state: 0x2545_f491_4f6c_dd1d,
        }
    }
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        for b in &mut buf[..n] {
            let x = &mut self.state;
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *b = if self.index.is_multiple_of(3) {
                *x as u8
            } else {
                (self.index / 7) as u8
            };
            self.index += 1;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A tar with one file, [`FILE_NAME`], of `size` generated bytes.
fn write_tar(path: &Path, size: u64) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, FILE_NAME, Generator::new(size))
        .context("writing the tar")?;
    let mut out = tar.into_inner().context("writing the tar")?;
    out.flush().context("writing the tar")?;
    Ok(())
}

/// The same bytes as [`write_tar`]'s file, as a plain file.
fn write_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    io::copy(&mut Generator::new(size), &mut file)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads `path` front to back with `buf`; returns the bytes read.
pub fn read_all(path: &Path, buf: &mut [u8]) -> io::Result<u64> {
    read_with(File::open(path)?, buf, |_| {})
}

/// Drops the kernel's page cache of `path` (this file only), then reads it front to
/// back with `buf`; returns the bytes read.
pub fn read_dropping_cache(path: &Path, buf: &mut [u8]) -> io::Result<u64> {
    let file = File::open(path)?;
    // SAFETY: a plain advisory call on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    read_with(file, buf, |_| {})
}

/// SHA-256 of `path`'s contents, read with `buf`.
fn digest_of(path: &Path, buf: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut sha = openssl::sha::Sha256::new();
    read_with(File::open(path)?, buf, |piece| sha.update(piece))?;
    Ok(sha.finish())
}

fn read_with(mut file: File, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> io::Result<u64> {
    file.rewind()?;
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                each(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A layer mount that is unmounted on drop (also on panic), by handle and then by path.
#[derive(Debug)]
pub struct Mounted {
    mount: Option<LayerMount>,
    /// Where it is mounted.
    pub path: PathBuf,
}

impl Mounted {
    /// Takes care of `mount`.
    pub fn new(mount: LayerMount) -> Self {
        Self {
            path: mount.mountpoint().to_path_buf(),
            mount: Some(mount),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
        if mount::is_mountpoint(&self.path).unwrap_or(false) {
            let _ = mount::unmount_path(&self.path);
        }
    }
}
