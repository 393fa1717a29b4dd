//! `veil-bench` (also run as `veil bench`): see `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;
use veil_bench::proxy::Shaping;
use veil_bench::run::{self, Binaries, Format, ModeKind, Plan};
use veil_bench::sample::SampleKind;

/// The shaping points of --sweep: (RTT ms, Mbit/s).
const SWEEP: &[(f64, f64)] = &[(2.0, 1000.0), (20.0, 200.0), (50.0, 100.0), (100.0, 50.0)];

/// Cold-start benchmark of Veil against the status quo, through a shaped registry.
///
/// Builds a sample image locally (by default this machine's python3 with its libraries
/// and standard library, plus large random data files: ~512 MiB), pushes it to a
/// registry on loopback (Debian's docker-registry) behind a shaping proxy (round-trip
/// time and bandwidth), converts it with `veil convert`, and measures the cold start of
/// each mode: from the start of the pull to the end of the workload's container, through
/// a private containerd:
///
///   status-quo                   ctr images pull (download + unpack into overlayfs) + ctr run
///   status-quo-enc-FORMAT        the encrypted status quo: skopeo copy --decryption-key of
///                                the -enc image (whole, decrypted) + ctr images import
///                                (unpack into overlayfs) + ctr run
///   stargz-snapshotter           ctr-remote images rpull + ctr run --snapshotter stargz (the
///                                peer, built from Debian's Go sources; eStargz, unencrypted)
///   veil-FORMAT                  veil pull + ctr run --snapshotter veil (lazy)
///   veil-FORMAT-enc              the same, layers encrypted (ocicrypt, JWE recipient)
///   veil-FORMAT-enc-prefetch     encrypted, the workload's files prefetched (landmark)
///   veil-FORMAT-enc-optimized    encrypted, made by `veil optimize` (a recording run of the
///                                workload: the files it read first, then the landmark)
///
/// FORMAT is estargz and/or zstd-chunked (--format). Every run is cold: a fresh Veil
/// (empty caches) and a fresh containerd (empty content store), the page cache dropped.
/// Prints a table (median / min / max, bytes fetched from the registry, speed-up over the
/// status quo, times the two physical limits) per shaping point, with --sweep one more
/// with every mode's median at every point side by side, and writes OUT/results.json, OUT/cold-start.png and OUT/cold-start.svg.
///
/// Scale mode (--scale, or --sizes): the same workload on images of growing size (the
/// sample's runtime plus random data; 512, 2048, 4096, 10240 MiB for --scale), each cold
/// start with the daemon side and the container in a memory cgroup of --memory-limit
/// (like a small confidential VM; cgroup v1 or v2) and the guest's files on a tmpfs of
/// half of it (a CoCo guest's /run): Veil's encrypted lazy pull (one --format:
/// zstd-chunked unless estargz is asked for; --modes enc) against the status quo
/// (--modes status-quo), whose running out of memory or space is a result. Per size: cold
/// start, bytes fetched, veil-snapshotter's peak RSS, the cgroup's peak memory; the
/// images are built and converted on disk, one size at a time (below --work-dir; a
/// 10 GiB size needs ~40 GB free). Writes OUT/scale.json, OUT/scale.txt and
/// OUT/scale.png / .svg.
///
/// Needs root (containerd, mounts, drop_caches) and Debian's containerd, runc,
/// docker-registry, busybox-static and fonts-dejavu-core (./scripts/setup installs them).
/// Everything it starts is stopped by PID and everything it mounts is unmounted when it
/// ends, also on failure or Ctrl-C; it touches no other containerd or mount.
#[derive(Debug, Parser)]
#[command(name = "veil bench", version, verbatim_doc_comment)]
struct Cli {
    /// The sample image's runtime: python (this machine's python3; the workload imports
    /// json, email, http.client) or busybox (a tree of small files; the workload cats a
    /// few).
    #[arg(long, value_enum, default_value_t = SampleKind::Python)]
    sample: SampleKind,
    /// Image size in MiB (file contents; the rest beyond the runtime is random data).
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    size: u64,
    /// Cold starts per mode (and per shaping point).
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: usize,
    /// Round-trip time to the registry, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    rtt_ms: f64,
    /// Bandwidth to the registry, Mbit/s (each direction); 0: unlimited.
    #[arg(long, value_name = "MBIT", default_value_t = 200.0)]
    mbit: f64,
    /// Run every mode at several shaping points instead of one: RTT/bandwidth of
    /// 2 ms/1000, 20 ms/200, 50 ms/100, 100 ms/50 Mbit/s (or --sweep-points).
    #[arg(long)]
    sweep: bool,
    /// The points of --sweep instead of its defaults: RTT_MS:MBIT, comma-separated (e.g.
    /// 20:200,100:50).
    #[arg(long, value_name = "MS:MBIT,...", value_delimiter = ',', value_parser = parse_point)]
    sweep_points: Vec<(f64, f64)>,
    /// Veil's layer format(s).
    #[arg(long, value_enum, default_value_t = FormatArg::Both)]
    format: FormatArg,
    /// Which modes to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "status-quo,enc-status-quo,stargz,lazy,enc,enc-prefetch,enc-optimized"
    )]
    modes: Vec<ModeKind>,
    /// The workload instead of the sample's: a command line run with /bin/sh -c in the
    /// container (busybox sh; the image has busybox's applets and the sample's runtime),
    /// or `heavy`: python3 importing 24 standard library modules (the python sample).
    /// Its read set, and so the physical limit, is measured in an unshaped warm-up run.
    #[arg(long, value_name = "CMD|heavy")]
    workload: Option<String>,
    /// Text the workload's output must contain (default: the sample workload's output;
    /// nothing for a custom --workload).
    #[arg(long, value_name = "TEXT")]
    expect: Option<String>,
    /// The prefetch list of the -prefetch modes (paths, one a line) instead of the files
    /// the sample workload reads.
    #[arg(long, value_name = "FILE")]
    prefetch_list: Option<PathBuf>,
    /// veil convert's --chunk-size (default: veil convert's).
    #[arg(long, value_name = "N")]
    chunk_size: Option<String>,
    /// Let Veil fetch whole layers in the background after mounting them (off by default:
    /// the numbers then show what the workload alone costs).
    #[arg(long)]
    background_fetch: bool,
    /// Do not drop the page cache before each run.
    #[arg(long)]
    no_drop_caches: bool,
    /// Where the results go: results.json, table.txt, cold-start.png / .svg (one pair
    /// per shaping point with --sweep).
    #[arg(long, value_name = "DIR", default_value = "veil-bench-results")]
    out: PathBuf,
    /// Also write the JSON results to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Where the temporary work directory (registry, containerd and Veil roots) is made.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Instead of the cold start: read a file whose chunks Veil has cached through Veil's
    /// FUSE filesystem (page cache dropped, hot, and promoted to FUSE passthrough from a
    /// memfd) against the same file on tmpfs
    /// (--size-mib, --runs, --json, --work-dir apply; see veil_bench::fuse_read).
    #[arg(long)]
    fuse_read: bool,
    /// --fuse-read: the file's size in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    size_mib: u64,
    /// --fuse-read: another veil-bench (e.g. built from main) to run first with the same
    /// options, its figures shown beside these as "before".
    #[arg(long, value_name = "BIN")]
    baseline: Option<PathBuf>,
    /// A `[lazy]` key of veil-snapshotter's configuration for the Veil modes but the
    /// baseline ones, `KEY=VALUE` (VALUE as TOML; repeatable), e.g. to tune the fetch
    /// windows: `--lazy window_max_bytes=1048576`.
    #[arg(long, value_name = "KEY=VALUE")]
    lazy: Vec<String>,
    /// The `[lazy]` keys of the -baseline modes instead of theirs (no windows, the
    /// prefetch waiting for all): `KEY=VALUE`, repeatable; e.g. an older default.
    #[arg(long, value_name = "KEY=VALUE")]
    baseline_lazy: Vec<String>,
    /// Keep the work directory (logs; the status quo's unpacked layers are removed anyway).
    #[arg(long)]
    keep: bool,
    /// Where `veil` and `veil-snapshotter` are (default: beside this program).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the stargz-snapshotter peer is built (GOPATH, Go build cache, binaries);
    /// kept between runs so that later builds take seconds.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/veil-bench-go")]
    go_cache: PathBuf,
    /// Scale mode over 512, 2048, 4096 and 10240 MiB images.
    #[arg(long)]
    scale: bool,
    /// Scale mode over these image sizes (MiB, comma-separated).
    #[arg(long, value_name = "MIB,...", value_delimiter = ',')]
    sizes: Vec<u64>,
    /// Scale mode: the guest's memory, the cgroup's limit (MiB); its tmpfs gets half.
    #[arg(long, value_name = "MIB", default_value_t = veil_bench::scale::DEFAULT_MEMORY_LIMIT_MIB)]
    memory_limit: u64,
}

/// One `--sweep-points` entry, `RTT_MS:MBIT`.
fn parse_point(s: &str) -> Result<(f64, f64), String> {
    let (rtt, mbit) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not RTT_MS:MBIT (e.g. 100:50)"))?;
    let num = |v: &str, what: &str| match v.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("{s:?}: the {what} {v:?} is not a number ≥ 0")),
    };
    Ok((num(rtt, "RTT")?, num(mbit, "bandwidth")?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    Estargz,
    ZstdChunked,
    /// Both formats, side by side.
    Both,
}

fn machine() -> serde_json::Value {
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "os": os,
        "kernel": kernel,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "veil bench: must run as root: it starts containerd and veil-snapshotter, mounts \
             FUSE and overlay filesystems and drops the page cache (sudo veil bench ...)"
        );
        return ExitCode::from(2);
    }
    if cli.fuse_read {
        let plan = veil_bench::fuse_read::FuseReadPlan {
            size_mib: cli.size_mib,
            runs: cli.runs,
            work_dir: cli.work_dir.clone(),
            baseline: cli.baseline.clone(),
            json: cli.json.clone(),
        };
        return match veil_bench::fuse_read::run(&plan) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("veil bench --fuse-read: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    run::catch_signals();
    match bench(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("veil bench: {e:#}");
            if run::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                // What it started is stopped and unmounted; exit as killed by SIGINT.
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn bin_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(d) = &cli.bin_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().context("finding this program")?;
    Ok(exe.parent().unwrap_or(Path::new("/")).to_path_buf())
}

fn bench(cli: &Cli) -> anyhow::Result<bool> {
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if cli.scale || !cli.sizes.is_empty() {
        return scale_bench(cli);
    }
    let bins = Binaries::in_dir(&bin_dir(cli)?)?;
    let formats = match cli.format {
        FormatArg::Estargz => vec![Format::Estargz],
        FormatArg::ZstdChunked => vec![Format::ZstdChunked],
        FormatArg::Both => vec![Format::Estargz, Format::ZstdChunked],
    };
    let mut modes = run::modes(&formats, &cli.modes);
    let mut stargz = None;
    if modes.contains(&run::Mode::Stargz) {
        eprintln!(
            "[veil-bench] building the stargz-snapshotter peer from Debian's Go sources in {}",
            cli.go_cache.display()
        );
        match veil_bench::stargz::build(&cli.go_cache) {
            Ok(tools) => stargz = Some(tools),
            Err(e) => {
                eprintln!("[veil-bench] NOT running the stargz-snapshotter mode: {e:#}");
                modes.retain(|m| *m != run::Mode::Stargz);
            }
        }
    }
    if modes.is_empty() {
        bail!("no mode to run (--modes)");
    }
    let shapings = if !cli.sweep_points.is_empty() {
        cli.sweep_points
            .iter()
            .map(|&(r, b)| Shaping::new(r, b))
            .collect()
    } else if cli.sweep {
        SWEEP.iter().map(|&(r, b)| Shaping::new(r, b)).collect()
    } else {
        vec![Shaping::new(cli.rtt_ms, cli.mbit)]
    };
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    std::fs::create_dir_all(&cli.work_dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("veil-bench-")
        .tempdir_in(&cli.work_dir)?;
    let dir = tmp.path().canonicalize()?;
    eprintln!("[veil-bench] work directory {}", dir.display());
    let plan = Plan {
        sample: cli.sample,
        size: cli.size << 20,
        runs: cli.runs,
        shapings,
        modes,
        workload: match cli.workload.as_deref() {
            Some("heavy") => Some(veil_bench::sample::heavy_workload()),
            w => w.map(str::to_string),
        },
        expect: match (cli.workload.as_deref(), &cli.expect) {
            (Some("heavy"), None) => Some(veil_bench::sample::HEAVY_EXPECT.to_string()),
            (_, e) => e.clone(),
        },
        prefetch_list: cli.prefetch_list.clone(),
        background_fetch: cli.background_fetch,
        drop_caches: !cli.no_drop_caches,
        chunk_size: cli.chunk_size.clone(),
        bins,
        stargz,
        dir: dir.clone(),
        keep: cli.keep,
        lazy: run::LazyOverrides {
            measured: cli.lazy.clone(),
            baseline: (!cli.baseline_lazy.is_empty()).then(|| cli.baseline_lazy.clone()),
        },
    };
    let result = run::run(&plan);
    // Whatever happened: nothing of ours may stay mounted.
    veil_tests::unmount_below(&dir);
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            if cli.keep {
                let _ = tmp.keep();
            }
            return Err(e);
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (alive, mounts) = run::leftovers(&outcome.started, &dir);
    let kept = if cli.keep {
        Some(tmp.keep())
    } else {
        tmp.close()
            .with_context(|| format!("removing {}", dir.display()))?;
        None
    };

    let mut plots = Vec::new();
    for (i, p) in outcome.points.iter().enumerate() {
        let stem = if outcome.points.len() == 1 {
            cli.out.join("cold-start")
        } else {
            cli.out
                .join(format!("cold-start-{}ms-{}mbit", p.rtt_ms, p.mbit))
        };
        match veil_bench::plot::write(&outcome, p, &stem) {
            Ok(files) => plots.extend(files),
            Err(e) => eprintln!("[veil-bench] plot {}: {e:#}", i + 1),
        }
    }
    let tables = veil_bench::report::tables(&outcome);
    let all_ok = outcome.points.iter().all(|p| {
        p.modes
            .iter()
            .all(|m| m.runs.iter().all(|r| r.error.is_none() && r.output_ok))
    });
    let doc = json!({
        "machine": machine(),
        "shaping": "a TCP proxy on loopback: one-way delay RTT/2 per direction (+1 RTT per new connection), token-bucket bandwidth per direction shared by all connections",
        "status_quo": "containerd's own pull of the plain tar.gz image (unencrypted: the status quo's best case) into overlayfs, then ctr run",
        "status_quo_enc": "skopeo copy --decryption-key of the -enc image (every layer downloaded whole and decrypted) to an OCI archive, ctr images import (unpack into overlayfs), ctr run",
        "limits": "limit_s: the read set's compressed bytes ÷ bandwidth + 2 RTT; limit_with_run_s: limit_s + local_run_s, the status-quo modes' median run part (the workload from a local overlayfs snapshot)",
        "result": outcome,
        "lazy": { "measured": cli.lazy, "baseline": cli.baseline_lazy },
        "all_ok": all_ok,
        "plots": plots,
        "cleanup": {
            "work_dir": dir,
            "work_dir_kept": kept.is_some(),
            "work_dir_exists": dir.exists(),
            "processes_left": alive,
            "mounts_left": mounts,
        },
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(cli.out.join("results.json"), &text)?;
    if let Some(j) = &cli.json {
        std::fs::write(j, &text).with_context(|| format!("writing {}", j.display()))?;
    }
    std::fs::write(cli.out.join("table.txt"), &tables)?;
    println!("{tables}");
    for p in &plots {
        println!("plot: {}", p.display());
    }
    println!("results: {}", cli.out.join("results.json").display());
    if !alive.is_empty() || !mounts.is_empty() {
        eprintln!("veil bench: LEFT BEHIND: processes {alive:?}, mounts {mounts:?}");
        return Ok(false);
    }
    Ok(all_ok)
}

/// The scale mode (`--scale`, `--sizes`).
fn scale_bench(cli: &Cli) -> anyhow::Result<bool> {
    let sizes = if cli.sizes.is_empty() {
        veil_bench::scale::DEFAULT_SIZES_MIB.to_vec()
    } else {
        cli.sizes.clone()
    };
    if sizes.contains(&0) {
        bail!("--sizes: every size must be at least 1 MiB");
    }
    if !cli.modes.contains(&ModeKind::Enc) && !cli.modes.contains(&ModeKind::StatusQuo) {
        bail!("--modes: the scale mode runs enc and/or status-quo");
    }
    if cli.memory_limit < 64 {
        bail!("--memory-limit must be at least 64 MiB");
    }
    let bins = Binaries::in_dir(&bin_dir(cli)?)?;
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    std::fs::create_dir_all(&cli.work_dir)
        .with_context(|| format!("creating {}", cli.work_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("vbs-")
        .tempdir_in(&cli.work_dir)
        .with_context(|| format!("making a work directory in {}", cli.work_dir.display()))?;
    let dir = tmp.path().canonicalize()?;
    eprintln!("[veil-bench] scale mode, work directory {}", dir.display());
    let plan = veil_bench::scale::ScalePlan {
        sample: cli.sample,
        sizes: sizes.iter().map(|s| s << 20).collect(),
        runs: cli.runs,
        shaping: Shaping::new(cli.rtt_ms, cli.mbit),
        format: match cli.format {
            FormatArg::Estargz => Format::Estargz,
            FormatArg::ZstdChunked | FormatArg::Both => Format::ZstdChunked,
        },
        memory_limit: cli.memory_limit << 20,
        veil: cli.modes.contains(&ModeKind::Enc),
        status_quo: cli.modes.contains(&ModeKind::StatusQuo),
        drop_caches: !cli.no_drop_caches,
        background_fetch: cli.background_fetch,
        chunk_size: cli.chunk_size.clone(),
        bins,
        dir: dir.clone(),
    };
    let result = veil_bench::scale::run(&plan);
    // Whatever happened: nothing of ours may stay mounted, and the images go.
    veil_tests::unmount_below(&dir);
    let outcome = result?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (alive, mounts) = run::leftovers(&outcome.started, &dir);
    tmp.close()
        .with_context(|| format!("removing {}", dir.display()))?;

    let table = veil_bench::scale::table(&outcome);
    let plots = match veil_bench::scale_plot::write(&outcome, &cli.out.join("scale")) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("[veil-bench] plot: {e:#}");
            Vec::new()
        }
    };
    let doc = json!({
        "machine": machine(),
        "result": outcome,
        "veil_ok": outcome.veil_ok(),
        "status_quo_largest_bytes": outcome.status_quo_largest(),
        "plots": plots,
        "cleanup": { "processes_left": alive, "mounts_left": mounts },
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(cli.out.join("scale.json"), &text)?;
    if let Some(j) = &cli.json {
        std::fs::write(j, &text).with_context(|| format!("writing {}", j.display()))?;
    }
    std::fs::write(cli.out.join("scale.txt"), &table)?;
    println!("{table}");
    for p in &plots {
        println!("plot: {}", p.display());
    }
    println!("results: {}", cli.out.join("scale.json").display());
    if !alive.is_empty() || !mounts.is_empty() {
        eprintln!("veil bench: LEFT BEHIND: processes {alive:?}, mounts {mounts:?}");
        return Ok(false);
    }
    Ok(outcome.veil_ok())
}
