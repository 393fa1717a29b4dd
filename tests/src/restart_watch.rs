//! Watching reads across daemon restarts (issue 14's tests): a loop that hashes a big
//! lazily served file into a file the test checks, `read-prober`'s timed reads, and how
//! long reads paused across each restart.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;

use crate::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer, LayerFormat,
    BIG_PATH,
};

/// How long the container keeps hashing between restarts.
pub const SETTLE: Duration = Duration::from_secs(3);

/// The longest a read may pause across one restart before the test calls it a hang.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

/// What containers and logs must never say.
pub const ENOTCONN_TEXT: &str = "Transport endpoint is not connected";

/// The container's loop: hash the big file, forever, every line (or error) to /out.
pub const LOOP: &str = "while true; do /bin/sha256sum /data/random.bin >> /out/hashes 2>&1 \
                    || echo \"sha256sum failed: $?\" >> /out/hashes; done";

/// One read of the prober: when it started (wall clock), how long it took, whether it
/// failed.
pub struct Probe {
    /// When it started.
    pub start: SystemTime,
    /// How long it took.
    pub took: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The reads `read-prober` printed to `log`.
pub fn probes_of(log: &Path) -> Vec<Probe> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let start: u64 = parts.next()?.parse().ok()?;
            let took: u64 = parts.next()?.parse().ok()?;
            let status = parts.next()?;
            Some(Probe {
                start: UNIX_EPOCH + Duration::from_nanos(start),
                took: Duration::from_nanos(took),
                error: (status != "ok").then(|| status.to_string()),
            })
        })
        .collect()
}

/// The container's output so far, checked: every line the right hash of the big file
/// ([`BIG_PATH`], in whichever mount the reader found it). Returns how many.
pub fn check_hashes(out: &Path, want: &str) -> anyhow::Result<usize> {
    let hashes = std::fs::read_to_string(out).unwrap_or_default();
    let mut n = 0;
    let prefix = format!("{want}  ");
    for line in hashes.lines() {
        let right = line
            .strip_prefix(&prefix)
            .is_some_and(|path| path.ends_with(BIG_PATH));
        if !right {
            bail!(
                "the container printed {line:?} (want the hash {want}); all it printed:\n{hashes}"
            );
        }
        n += 1;
    }
    Ok(n)
}

/// Waits until the container has printed more than `seen` hashes (all checked).
pub fn wait_for_more(
    out: &Path,
    want: &str,
    seen: usize,
    within: Duration,
) -> anyhow::Result<usize> {
    let start = Instant::now();
    loop {
        let n = check_hashes(out, want)?;
        if n > seen {
            return Ok(n);
        }
        if start.elapsed() > within {
            bail!("the container printed no new hash in {within:?} (still {n})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After `restart`: waits (up to [`MAX_PAUSE`]) for a hash beyond the `seen` ones, lets
/// the loop run [`SETTLE`] more, checks every hash so far, logs how long the daemon was
/// away under `name`, and records the restart. Returns the hashes seen.
pub fn confirm_back(
    name: &str,
    restart: Restart,
    hashes: &Path,
    want: &str,
    seen: usize,
    restarts: &mut Vec<Restart>,
) -> anyhow::Result<usize> {
    wait_for_more(hashes, want, seen + 1, MAX_PAUSE)?;
    std::thread::sleep(SETTLE);
    let seen = check_hashes(hashes, want)?;
    eprintln!(
        "[{name}] {}: back in {:.2?}; {seen} hashes so far, all right",
        restart.what,
        restart
            .ready
            .duration_since(restart.stopped)
            .unwrap_or_default()
    );
    restarts.push(restart);
    Ok(seen)
}

/// How one restart went: when the old process was stopped, when the new one served.
pub struct Restart {
    /// How the daemon was stopped.
    pub what: &'static str,
    /// When it was stopped.
    pub stopped: SystemTime,
    /// When the new process served again.
    pub ready: SystemTime,
}

/// The longest read that overlapped the restart (started before the new process was
/// ready and ended after the old one was stopped).
pub fn pause_of(restart: &Restart, probes: &[Probe]) -> Duration {
    probes
        .iter()
        .filter(|p| p.start < restart.ready + SETTLE && p.start + p.took > restart.stopped)
        .map(|p| p.took)
        .max()
        .unwrap_or_default()
}

/// Prints the pause of every restart, their median and worst (with the reads' median)
/// under `name`; fails if a read failed or the worst pause passed [`MAX_PAUSE`].
pub fn report_pauses(name: &str, restarts: &[Restart], probes: &[Probe]) -> anyhow::Result<()> {
    if let Some(p) = probes.iter().find(|p| p.error.is_some()) {
        bail!("a read of the layer failed: {:?}", p.error);
    }
    if restarts.is_empty() || probes.is_empty() {
        bail!("no restart or no read to report on");
    }
    let mut pauses: Vec<Duration> = restarts.iter().map(|r| pause_of(r, probes)).collect();
    for (r, p) in restarts.iter().zip(&pauses) {
        eprintln!(
            "[{name}] reads paused {p:.3?} across the {} restart",
            r.what
        );
    }
    pauses.sort();
    let median = pauses[pauses.len() / 2];
    let worst = pauses[pauses.len() - 1];
    let mut lat: Vec<Duration> = probes.iter().map(|p| p.took).collect();
    lat.sort();
    eprintln!(
        "[{name}] pause across a restart: median {median:.3?}, worst {worst:.3?} \
         ({} reads, median read {:.3?})",
        probes.len(),
        lat[lat.len() / 2]
    );
    if worst > MAX_PAUSE {
        bail!("reads paused {worst:?} across a restart");
    }
    Ok(())
}

/// Waits up to `within` until the fd store at `socket` holds `count` entries (the layer
/// connections, then a promoted file's memfd, kept just before the first open by
/// passthrough is answered).
pub fn wait_for_stored(socket: &Path, count: usize, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let stored = veil_snapshotter::fdstore::FdStoreClient::new(socket).take_all()?;
        if stored.len() == count {
            return Ok(());
        }
        if start.elapsed() > within {
            let names: Vec<&str> = stored.iter().map(|s| s.name.as_str()).collect();
            bail!("the fd store holds {names:?}, not the connections and the promoted file");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The restart tests' file the pauses are measured on (below their
/// `passthrough_min_bytes`: never promoted), its size and the seed of its bytes.
pub const LAZY_PATH: &str = "data/lazy.bin";
/// Size of [`LAZY_PATH`].
pub const LAZY_SIZE: usize = 8 << 20;
/// Seed of [`LAZY_PATH`]'s bytes.
pub const LAZY_SEED: u64 = 0x1a2b_3c4d;

/// Size of the big file the restart tests' containers hash ([`BIG_PATH`]).
pub const BIG_SIZE: usize = 16 << 20;

/// A second file above the promotion threshold, first read after the first restart
/// (promoted by the resumed process).
pub const SECOND_PATH: &str = "data/second.bin";
/// Size of [`SECOND_PATH`]: not the big file's (the mappings are told apart by size);
/// both fit in the promoted files' half of the default 64 MiB cache.
pub const SECOND_SIZE: usize = 13 << 20;

/// The restart tests' `passthrough_min_bytes`: the big and second files are promoted,
/// the lazy one is not.
pub const PROMOTE_FROM: usize = 12 << 20;

/// The restart tests' image: its two eStargz layers (the base, then the big file, the
/// lazy file and the second file, their bytes from the seeds given), the big file's
/// SHA-256 (hex) and the second file's bytes.
pub fn restart_image(big_seed: u64, second_seed: u64) -> anyhow::Result<RestartImage> {
    let big = random_bytes(BIG_SIZE, big_seed);
    let big_sha = sha256_hex(&big);
    let mut top = top_entries(big);
    top.push(Entry::File(
        LAZY_PATH.into(),
        random_bytes(LAZY_SIZE, LAZY_SEED),
        0o644,
    ));
    let second = random_bytes(SECOND_SIZE, second_seed);
    top.push(Entry::File(SECOND_PATH.into(), second.clone(), 0o644));
    let layers = vec![
        pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
        pack(tar_of(&top)?, LayerFormat::Estargz)?,
    ];
    Ok(RestartImage {
        layers,
        big_sha,
        second,
    })
}

/// What [`restart_image`] built.
pub struct RestartImage {
    /// The layer blobs, bottom first.
    pub layers: Vec<Layer>,
    /// The big file's SHA-256, hex.
    pub big_sha: String,
    /// The second file's bytes.
    pub second: Vec<u8>,
}
