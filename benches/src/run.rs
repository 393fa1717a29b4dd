//! The benchmark itself: the image built and converted once, then every mode measured
//! cold, N times, through the shaping proxy.
//!
//! Each measured run gets a fresh veil-snapshotter (new root: empty metadata, chunk and
//! disk caches) and a fresh containerd (new root: empty content store, no snapshots),
//! started before the clock starts, after the page cache was dropped. The clock runs
//! from the start of the pull to the end of the workload's container:
//! - status quo: `ctr images pull --plain-http REF` (every layer downloaded and unpacked
//!   into containerd's overlayfs snapshotter), then `ctr run --snapshotter overlayfs`;
//! - Veil: `veil pull --plain-http REF` (manifest and config; layers mounted lazily),
//!   then `ctr run --snapshotter veil`.
//!
//! Everything started is stopped by PID and everything mounted below the work directory
//! is unmounted after each run, on failure and on Ctrl-C too (the run in progress fails,
//! the guards' clean-up runs, then the program exits).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use veil_tests::containerd::process_alive;
use veil_tests::local_registry::LocalRegistry;
use veil_tests::process::run_with_timeout;

use crate::cold_run::one_run_recording;
pub use crate::mode::{modes, Format, Mode, ModeKind};
use crate::proxy::{Shaping, ShapingProxy};
use crate::read_set::ReadSet;
use crate::sample::{SampleImage, SampleKind};

/// The repository the images are pushed to.
pub const REPO: &str = "veil-bench/app";
/// The containerd namespace of the measured runs.
pub const NAMESPACE: &str = "veil-bench";
/// How long one pull may take (the status quo downloads the whole image).
pub(crate) const PULL_TIMEOUT: Duration = Duration::from_secs(1800);

/// Set by SIGINT/SIGTERM: stop after cleaning up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`INTERRUPTED`] instead of killing the process, so that what it
/// started is stopped and unmounted before it exits.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Fails once SIGINT or SIGTERM came.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Where Veil's binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub veil: PathBuf,
    pub snapshotter: PathBuf,
}

impl Binaries {
    /// `veil` and `veil-snapshotter` in `dir`.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let b = Self {
            veil: dir.join("veil"),
            snapshotter: dir.join("veil-snapshotter"),
        };
        for p in [&b.veil, &b.snapshotter] {
            if !p.exists() {
                bail!(
                    "{} is missing: build Veil first (cargo build --release) or give --bin-dir",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sample: SampleKind,
    /// Bytes of file contents in the image.
    pub size: u64,
    pub runs: usize,
    pub shapings: Vec<Shaping>,
    pub modes: Vec<Mode>,
    /// Overrides the sample's workload (a `sh -c` command line) and expected output.
    pub workload: Option<String>,
    pub expect: Option<String>,
    /// Overrides the prefetch list (default: the sample's read set).
    pub prefetch_list: Option<PathBuf>,
    pub background_fetch: bool,
    pub drop_caches: bool,
    pub chunk_size: Option<String>,
    pub bins: Binaries,
    /// stargz-snapshotter and ctr-remote, for [`Mode::Stargz`].
    pub stargz: Option<crate::stargz::StargzTools>,
    /// The work directory (made and removed by the caller).
    pub dir: PathBuf,
    pub keep: bool,
    /// `[lazy]` keys of veil-snapshotter's configuration given on the command line.
    pub lazy: LazyOverrides,
}

/// `[lazy]` keys given on the command line (`KEY=VALUE`, VALUE as TOML), for tuning
/// runs: `measured` apply to every Veil mode but the baseline ones; `baseline`, when
/// given, replaces the baseline modes' keys ([`BASELINE_LAZY`]) altogether.
#[derive(Debug, Clone, Default)]
pub struct LazyOverrides {
    /// Keys of the non-baseline Veil modes.
    pub measured: Vec<String>,
    /// Keys of the baseline modes instead of [`BASELINE_LAZY`].
    pub baseline: Option<Vec<String>>,
}

impl LazyOverrides {
    /// The `[lazy]` lines of a mode (baseline or not); a key given twice: the last one.
    pub fn lines(&self, baseline: bool) -> String {
        let keys: Vec<String> = match (baseline, &self.baseline) {
            (false, _) => self.measured.clone(),
            (true, Some(keys)) => keys.clone(),
            (true, None) => BASELINE_LAZY.lines().map(str::to_string).collect(),
        };
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
        let mut out: Vec<String> = Vec::new();
        for line in keys {
            out.retain(|l| key(l) != key(&line));
            out.push(line);
        }
        out.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub round: usize,
    /// From the start of the pull to the container's end.
    pub total_s: f64,
    pub pull_s: f64,
    pub run_s: f64,
    /// Bytes the registry sent through the proxy.
    pub fetched_bytes: u64,
    /// Connections opened through the proxy.
    pub connections: u64,
    /// HTTP requests sent through the proxy (range requests and the rest).
    #[serde(default)]
    pub requests: u64,
    /// Whether the workload printed what it should.
    pub output_ok: bool,
    pub output: String,
    pub error: Option<String>,
}

/// A mode's runs at one shaping point.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub mode: String,
    pub label: String,
    pub description: String,
    /// Total size of the image's layer blobs as pushed.
    pub image_bytes: u64,
    /// A status-quo mode (the whole image unpacked before the container starts): its
    /// `run` part is the workload on a local snapshot.
    pub status_quo: bool,
    pub runs: Vec<RunResult>,
}

/// Median, min and max of `v` (sorted copy); None when empty.
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((median, s[0], s[n - 1]))
}

impl ModeResult {
    fn ok_runs(&self) -> impl Iterator<Item = &RunResult> {
        self.runs.iter().filter(|r| r.error.is_none())
    }

    /// (median, min, max) of the cold-start times of the runs that worked.
    pub fn total(&self) -> Option<(f64, f64, f64)> {
        stats(&self.ok_runs().map(|r| r.total_s).collect::<Vec<_>>())
    }

    pub fn pull(&self) -> Option<(f64, f64, f64)> {
        stats(&self.ok_runs().map(|r| r.pull_s).collect::<Vec<_>>())
    }

    pub fn run(&self) -> Option<(f64, f64, f64)> {
        stats(&self.ok_runs().map(|r| r.run_s).collect::<Vec<_>>())
    }

    /// Median bytes fetched.
    pub fn fetched(&self) -> Option<u64> {
        stats(
            &self
                .ok_runs()
                .map(|r| r.fetched_bytes as f64)
                .collect::<Vec<_>>(),
        )
        .map(|(m, _, _)| m as u64)
    }
}

/// The results at one shaping point.
#[derive(Debug, Clone, Serialize)]
pub struct PointResult {
    pub rtt_ms: f64,
    pub mbit: f64,
    /// The physical (transfer) limit: the read set (compressed) over the bandwidth, plus
    /// two RTTs (manifest, then the data); see [`crate::limit`].
    pub limit_s: f64,
    /// The workload's run from a local snapshot: the status-quo modes' median `run` part
    /// at this point (None without a status-quo mode).
    pub local_run_s: Option<f64>,
    /// The limit with the local run: `limit_s + local_run_s`.
    pub limit_with_run_s: Option<f64>,
    pub modes: Vec<ModeResult>,
}

/// A process the bench started.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    pub what: String,
    pub pid: u32,
}

/// Everything the bench measured and did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub sample: String,
    pub content_bytes: u64,
    pub files: usize,
    pub workload: String,
    pub expect: String,
    pub read_set_files: usize,
    pub read_set_bytes: u64,
    pub read_set_compressed_bytes: u64,
    /// Where the read set comes from: `measured` (Veil's access accounting in an
    /// unshaped warm-up run of the workload).
    pub read_set_source: String,
    pub runs_per_mode: usize,
    pub background_fetch: bool,
    pub drop_caches: bool,
    /// Seconds each `veil convert` took (tag → seconds).
    pub convert_s: Vec<(String, f64)>,
    pub points: Vec<PointResult>,
    pub started: Vec<Started>,
}

/// Prints a progress line on stderr.
pub(crate) fn say(msg: &str) {
    eprintln!("[veil-bench] {msg}");
}

/// Runs the plan: build, push, convert, measure. The caller cleans the directory.
pub fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let dir = &plan.dir;
    let mut started = Vec::new();
    say(&format!(
        "building the {:?} sample image (~{} MiB of files) on disk",
        plan.sample,
        plan.size >> 20
    ));
    let t = Instant::now();
    let image = crate::sample::build(plan.sample, plan.size, &dir.join("sample"))?;
    let workload = plan.workload.clone().unwrap_or(image.workload.clone());
    let expect = match (&plan.workload, &plan.expect) {
        (_, Some(e)) => e.clone(),
        (None, None) => image.expect.clone(),
        (Some(_), None) => String::new(),
    };
    say(&format!(
        "built: {} files, {} MiB, read set {} files / {:.1} MiB, in {:.1} s",
        image.files,
        image.content_bytes >> 20,
        image.read_set.len(),
        image.read_set_bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    ));

    let mut registry = LocalRegistry::start(&dir.join("registry"))?;
    started.push(Started {
        what: "docker-registry".into(),
        pid: registry.pid(),
    });
    let result = measure_all(plan, &image, &workload, &expect, &registry, &mut started);
    registry.stop();
    let mut outcome = result?;
    outcome.started = started;
    Ok(outcome)
}

fn measure_all(
    plan: &Plan,
    image: &SampleImage,
    workload: &str,
    expect: &str,
    registry: &LocalRegistry,
    started: &mut Vec<Started>,
) -> anyhow::Result<Outcome> {
    let dir = &plan.dir;
    // The plain tar.gz image (the status quo, and what `veil convert` starts from).
    let secs = crate::convert::push_plain(image, &registry.host())?;
    for layer in &image.layers {
        let _ = std::fs::remove_file(&layer.path);
    }
    say(&format!(
        "pushed {}/{REPO}:plain (tar.gz) in {secs:.1} s",
        registry.host()
    ));

    // A JWE recipient for the encrypted images; Veil gets the private key.
    let recipient = crate::convert::Recipient::generate(dir)?;
    // Convert once per Veil mode; the unencrypted eStargz image first: the workload's
    // read set is measured on it (an unshaped warm-up run) before the others are made.
    let mut convert_s = Vec::new();
    let mut image_bytes = std::collections::BTreeMap::new();
    image_bytes.insert(
        "plain".to_string(),
        manifest_layer_bytes(registry, "plain")?,
    );
    let warm_up_mode = Mode::Veil {
        format: Format::Estargz,
        encrypted: false,
        prefetch: false,
        baseline: false,
    };
    let mut images: Vec<Mode> = vec![warm_up_mode];
    for mode in &plan.modes {
        // The peer pulls Veil's unencrypted eStargz image; a baseline mode and the
        // encrypted status quo run on another mode's image.
        let Some(image) = mode.veil_image() else {
            continue;
        };
        if !images.contains(&image) {
            images.push(image);
        }
    }
    let mut read_set = None;
    let mut prefetch = dir.join("prefetch.txt");
    for (i, mode) in images.iter().enumerate() {
        check_interrupted()?;
        let secs = convert_image(plan, registry, *mode, &recipient, &prefetch, workload)?;
        let tag = mode.tag();
        say(&format!(
            "{} → :{tag} in {secs:.1} s",
            match mode {
                Mode::Optimized { .. } => "veil optimize",
                _ => "veil convert",
            }
        ));
        convert_s.push((tag.clone(), secs));
        image_bytes.insert(tag.clone(), manifest_layer_bytes(registry, &tag)?);
        if i == 0 {
            let measured = measure_read_set(plan, registry, workload, expect, started)?;
            say(&format!(
                "the workload's read set (measured): {} files, {:.2} MiB, {:.2} MiB compressed",
                measured.paths.len(),
                measured.bytes as f64 / (1 << 20) as f64,
                measured.compressed_bytes as f64 / (1 << 20) as f64
            ));
            // The -prefetch modes: the given list, else the sample's own for its own
            // workload, else what the workload was measured to read.
            match (&plan.prefetch_list, &plan.workload) {
                (Some(p), _) => prefetch = p.clone(),
                (None, None) => std::fs::write(&prefetch, image.prefetch_list())?,
                (None, Some(_)) => std::fs::write(&prefetch, measured.prefetch_list())?,
            }
            read_set = Some(measured);
        }
    }
    let read_set = read_set.context("the read set was not measured")?;

    let upstream: SocketAddr = registry.host().parse()?;
    let mut points = Vec::new();
    for (pi, shaping) in plan.shapings.iter().enumerate() {
        let proxy = ShapingProxy::start(upstream, *shaping)?;
        say(&format!(
            "shaping point {}/{}: RTT {} ms, {} Mbit/s (proxy {} → registry {})",
            pi + 1,
            plan.shapings.len(),
            shaping.rtt_ms(),
            shaping.mbit(),
            proxy.host(),
            registry.host()
        ));
        let mut results: Vec<ModeResult> = plan
            .modes
            .iter()
            .map(|m| ModeResult {
                mode: m.name(),
                label: m.short(),
                description: m.describe(),
                image_bytes: image_bytes.get(&m.tag()).copied().unwrap_or(0),
                status_quo: m.is_status_quo(),
                runs: Vec::new(),
            })
            .collect();
        // Round-robin, so that drifts of the machine spread over every mode.
        for round in 0..plan.runs {
            for (mi, mode) in plan.modes.iter().enumerate() {
                check_interrupted()?;
                // Short: containerd's sockets below it must fit a unix socket path.
                let name = format!("{pi}-{mi}-{round}");
                let r = match one_run_recording(
                    plan, *mode, &proxy, &name, workload, expect, started, None,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        // Ctrl-C ends the bench; anything else fails this run only.
                        check_interrupted()?;
                        RunResult {
                            round,
                            total_s: 0.0,
                            pull_s: 0.0,
                            run_s: 0.0,
                            fetched_bytes: 0,
                            connections: 0,
                            requests: 0,
                            output_ok: false,
                            output: String::new(),
                            error: Some(format!("setting the run up: {e:#}")),
                        }
                    }
                };
                let r = RunResult { round, ..r };
                match &r.error {
                    None => say(&format!(
                        "{:<28} run {}: {:.2} s (pull {:.2} s + run {:.2} s), {:.1} MiB fetched{}",
                        mode.name(),
                        round + 1,
                        r.total_s,
                        r.pull_s,
                        r.run_s,
                        r.fetched_bytes as f64 / (1 << 20) as f64,
                        if r.output_ok { "" } else { ", WRONG OUTPUT" }
                    )),
                    Some(e) => say(&format!(
                        "{:<28} run {}: FAILED: {e}",
                        mode.name(),
                        round + 1
                    )),
                }
                results[mi].runs.push(r);
            }
        }
        let limit_s = crate::limit::transfer(shaping, read_set.compressed_bytes);
        let local_run_s = crate::limit::local_run(&results);
        points.push(PointResult {
            rtt_ms: shaping.rtt_ms(),
            mbit: shaping.mbit(),
            limit_s,
            local_run_s,
            limit_with_run_s: crate::limit::with_run(limit_s, local_run_s),
            modes: results,
        });
    }
    Ok(Outcome {
        sample: format!("{:?}", plan.sample).to_lowercase(),
        content_bytes: image.content_bytes,
        files: image.files,
        workload: workload.to_string(),
        expect: expect.to_string(),
        read_set_files: read_set.paths.len(),
        read_set_bytes: read_set.bytes,
        read_set_compressed_bytes: read_set.compressed_bytes,
        read_set_source: read_set.source.clone(),
        runs_per_mode: plan.runs,
        background_fetch: plan.background_fetch,
        drop_caches: plan.drop_caches,
        convert_s,
        points,
        started: Vec::new(),
    })
}

/// Makes the image `mode` pulls from the plain one: `veil convert` (with `prefetch` for
/// the -prefetch modes), or `veil optimize --cmd WORKLOAD` for [`Mode::Optimized`]
/// (unshaped: against the registry itself). Returns the seconds it took.
fn convert_image(
    plan: &Plan,
    registry: &LocalRegistry,
    mode: Mode,
    recipient: &crate::convert::Recipient,
    prefetch: &Path,
    workload: &str,
) -> anyhow::Result<f64> {
    let (format, encrypted, pf, optimize_cmd) = match mode {
        Mode::Veil {
            format,
            encrypted,
            prefetch,
            ..
        } => (format, encrypted, prefetch, None),
        Mode::Optimized { format } => (format, true, false, Some(workload)),
        Mode::StatusQuo | Mode::EncStatusQuo { .. } | Mode::Stargz => return Ok(0.0),
    };
    let host = registry.host();
    let tag = mode.tag();
    crate::convert::Conversion {
        veil: &plan.bins.veil,
        host: &host,
        tag: &tag,
        format,
        encrypt_for: encrypted.then_some(recipient),
        prefetch_list: pf.then_some(prefetch),
        chunk_size: plan.chunk_size.as_deref(),
        optimize_cmd,
        dir: &plan.dir,
    }
    .run()
}

/// The workload's read set: one unshaped run on the unencrypted eStargz image, then the
/// daemon's access accounting.
fn measure_read_set(
    plan: &Plan,
    registry: &LocalRegistry,
    workload: &str,
    expect: &str,
    started: &mut Vec<Started>,
) -> anyhow::Result<ReadSet> {
    let proxy = ShapingProxy::start(registry.host().parse()?, Shaping::new(0.0, 0.0))?;
    let mode = Mode::Veil {
        format: Format::Estargz,
        encrypted: false,
        prefetch: false,
        baseline: false,
    };
    let mut orders = None;
    let r = one_run_recording(
        plan,
        mode,
        &proxy,
        "warm-up",
        workload,
        expect,
        started,
        Some(&mut orders),
    )?;
    if let Some(e) = &r.error {
        bail!("the warm-up run of the workload failed: {e}");
    }
    if !r.output_ok {
        bail!(
            "the warm-up run of the workload printed {:?}, not {expect:?}",
            r.output
        );
    }
    let orders = orders.context("no access order was asked for")??;
    ReadSet::from_access_orders(&orders)
}

/// Drops the page cache (dentries, inodes, pages) after writing dirty pages back.
pub fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("writing /proc/sys/vm/drop_caches")
}

/// veil-snapshotter's configuration for a measured run: the registry (behind the proxy
/// at `host`) is plain HTTP, the private keys are in `keys_dir`.
pub fn veil_config(host: &str, background_fetch: bool, baseline: bool, keys_dir: &Path) -> String {
    let lazy = LazyOverrides::default().lines(baseline);
    veil_config_lazy(host, background_fetch, &lazy, keys_dir)
}

/// [`veil_config`] with these `[lazy]` lines ([`LazyOverrides::lines`]).
pub fn veil_config_lazy(host: &str, background_fetch: bool, lazy: &str, keys_dir: &Path) -> String {
    format!(
        "[registry]\nplain_http = [\"{host}\"]\n\n[lazy]\nbackground_fetch = {background_fetch}\n{lazy}\n\
         [decryption]\nkeys_dir = \"{}\"\n",
        keys_dir.display()
    )
}

/// `[lazy]` keys of the baseline modes: fetching as before issue 13 (no neighbourhood
/// windows, the prefetch waits for every prioritized file in 8 MiB requests, the footer
/// read before the TOC, no layer's TOC fetched ahead).
const BASELINE_LAZY: &str = "window_max_bytes = 0\nprefetch_wait_bytes = 4611686018427387904\n\
                             prefetch_piece_bytes = 8388608\n\
                             toc_tail_bytes = 0\nlook_ahead_layers = 0\n";

/// The sum of the layer sizes in `REPO:tag`'s manifest (asked of the registry directly).
pub fn manifest_layer_bytes(registry: &LocalRegistry, tag: &str) -> anyhow::Result<u64> {
    let addr: SocketAddr = registry.host().parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET /v2/{REPO}/manifests/{tag} HTTP/1.0\r\nHost: {}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n",
        registry.host()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header end")?;
    let manifest: serde_json::Value = serde_json::from_slice(&resp[split + 4..])
        .with_context(|| format!("the manifest of :{tag} is not JSON"))?;
    Ok(manifest["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum())
        .unwrap_or(0))
}

/// Started processes still alive, and mounts left below `dir`.
pub fn leftovers(started: &[Started], dir: &Path) -> (Vec<Started>, Vec<String>) {
    let alive = started
        .iter()
        .filter(|s| process_alive(s.pid))
        .cloned()
        .collect();
    (alive, veil_tests::mounts::mounts_below(dir))
}

/// `veil pull --plain-http REFERENCE` into the containerd at `address` (namespace
/// [`NAMESPACE`]); its output goes to `dir/veil-pull.*`, and into the error if it fails.
pub(crate) fn veil_pull(
    veil: &Path,
    address: &Path,
    reference: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(veil);
    cmd.arg("pull")
        .arg("--plain-http")
        .arg("-a")
        .arg(address)
        .arg("-n")
        .arg(NAMESPACE)
        .arg(reference)
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE");
    let out = run_with_timeout(cmd, PULL_TIMEOUT, &dir.join("veil-pull"))?;
    if !out.status.success() {
        bail!(
            "veil pull failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn lazy_keys_from_the_command_line() {
        let none = LazyOverrides::default();
        assert_eq!(none.lines(false), "");
        assert_eq!(none.lines(true), BASELINE_LAZY);
        let given = LazyOverrides {
            measured: vec!["window_max_bytes = 1".into(), "window_max_bytes=2".into()],
            baseline: Some(vec!["window_dir_bytes = 0".into()]),
        };
        // The last of a key given twice; the baseline's own keys replaced.
        assert_eq!(given.lines(false), "window_max_bytes=2\n");
        assert_eq!(given.lines(true), "window_dir_bytes = 0\n");
    }
}
