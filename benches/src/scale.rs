//! `veil bench --scale`: the same workload on images of growing size (the sample's
//! runtime plus random data: 0.5, 2, 4, 10 GiB by default), each cold start in a
//! memory-limited cgroup like a small confidential VM ([`crate::cgroup_run`]): Veil's
//! encrypted lazy pull against the status quo (containerd's pull and unpack onto the
//! guest's tmpfs), which may not fit at all.
//!
//! Per size: the sample is built on disk (streamed, [`crate::sample`]), pushed to a fresh
//! registry (its own directory, deleted after the size is measured, so the disk holds one
//! size at a time), converted once with `veil convert --encrypt`, and each mode is
//! started `runs` times, round-robin, through the shaping proxy. The build and
//! conversion times are part of the result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use veil_tests::local_registry::LocalRegistry;

use crate::cgroup_run::{Guest, GuestMode, GuestRun, Verdict};
use crate::convert::{Conversion, Recipient};
use crate::proxy::{Shaping, ShapingProxy};
use crate::run::{stats, Binaries, Format, Mode, Started, REPO};
use crate::sample::SampleKind;

/// The sizes of `--scale`, MiB.
pub const DEFAULT_SIZES_MIB: &[u64] = &[512, 2048, 4096, 10240];
/// The guest's memory of `--memory-limit`'s default, MiB.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 2048;

/// What to run.
#[derive(Debug, Clone)]
pub struct ScalePlan {
    pub sample: SampleKind,
    /// Image sizes (file contents), bytes.
    pub sizes: Vec<u64>,
    pub runs: usize,
    pub shaping: Shaping,
    pub format: Format,
    /// The cgroup's memory limit, bytes (the tmpfs gets half).
    pub memory_limit: u64,
    /// Measure Veil (encrypted) and/or the status quo.
    pub veil: bool,
    pub status_quo: bool,
    pub drop_caches: bool,
    pub background_fetch: bool,
    pub chunk_size: Option<String>,
    pub bins: Binaries,
    /// The work directory (made and removed by the caller).
    pub dir: PathBuf,
}

/// The results of one image size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// The requested size (file contents), bytes.
    pub size: u64,
    pub content_bytes: u64,
    pub files: usize,
    /// Seconds to build the sample on disk, push it, and `veil convert` it.
    pub build_s: f64,
    pub push_s: f64,
    pub convert_s: f64,
    /// Layer bytes of the plain (tar.gz) and of Veil's encrypted image.
    pub plain_bytes: u64,
    pub veil_bytes: u64,
    pub veil: Vec<GuestRun>,
    pub status_quo: Vec<GuestRun>,
}

/// Median (over the runs that worked) of `f`.
fn median_of(runs: &[GuestRun], f: impl Fn(&GuestRun) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter(|r| r.verdict == Verdict::Ok)
        .filter_map(f)
        .collect();
    stats(&v).map(|(m, _, _)| m)
}

/// Largest of `f` over all runs (the worked and the failed).
fn max_of(runs: &[GuestRun], f: impl Fn(&GuestRun) -> Option<u64>) -> Option<u64> {
    runs.iter().filter_map(f).max()
}

impl SizeResult {
    /// Median cold start of Veil's runs that worked.
    pub fn veil_total(&self) -> Option<f64> {
        median_of(&self.veil, |r| Some(r.total_s))
    }

    /// Median bytes Veil fetched.
    pub fn veil_fetched(&self) -> Option<u64> {
        median_of(&self.veil, |r| Some(r.fetched_bytes as f64)).map(|m| m as u64)
    }

    /// Largest peak RSS of veil-snapshotter.
    pub fn veil_daemon_peak(&self) -> Option<u64> {
        max_of(&self.veil, |r| r.daemon_peak_rss)
    }

    /// Largest cgroup peak of Veil's runs.
    pub fn veil_cgroup_peak(&self) -> Option<u64> {
        max_of(&self.veil, |r| r.cgroup_peak)
    }

    /// Median cold start of the status quo's runs that worked.
    pub fn status_quo_total(&self) -> Option<f64> {
        median_of(&self.status_quo, |r| Some(r.total_s))
    }

    /// Largest cgroup peak of the status quo's runs.
    pub fn status_quo_cgroup_peak(&self) -> Option<u64> {
        max_of(&self.status_quo, |r| r.cgroup_peak)
    }

    /// The status quo's verdict: ok if every run was, else the first failure's.
    pub fn status_quo_verdict(&self) -> Option<Verdict> {
        let first = self.status_quo.first()?;
        Some(
            self.status_quo
                .iter()
                .map(|r| r.verdict)
                .find(|v| *v != Verdict::Ok)
                .unwrap_or(first.verdict),
        )
    }

    /// Veil's verdict: ok if every run was, else the first failure's.
    pub fn veil_verdict(&self) -> Option<Verdict> {
        let first = self.veil.first()?;
        Some(
            self.veil
                .iter()
                .map(|r| r.verdict)
                .find(|v| *v != Verdict::Ok)
                .unwrap_or(first.verdict),
        )
    }
}

/// Everything the scale mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOutcome {
    pub sample: String,
    pub workload: String,
    pub read_set_bytes: u64,
    pub format: Format,
    /// The mode Veil ran in.
    pub veil_mode: String,
    pub memory_limit: u64,
    pub tmpfs_size: u64,
    pub cgroup: &'static str,
    pub rtt_ms: f64,
    pub mbit: f64,
    pub runs: usize,
    pub sizes: Vec<SizeResult>,
    pub started: Vec<Started>,
}

impl ScaleOutcome {
    /// Whether every Veil run worked (the status quo may fail: that is a result).
    pub fn veil_ok(&self) -> bool {
        self.sizes
            .iter()
            .all(|s| s.veil.iter().all(|r| r.verdict == Verdict::Ok))
    }

    /// The largest size the status quo started in every run.
    pub fn status_quo_largest(&self) -> Option<u64> {
        self.sizes
            .iter()
            .filter(|s| s.status_quo_verdict() == Some(Verdict::Ok))
            .map(|s| s.size)
            .max()
    }
}

fn say(msg: &str) {
    eprintln!("[veil-bench] {msg}");
}

/// Runs the plan, size by size. The caller removes the work directory.
pub fn run(plan: &ScalePlan) -> anyhow::Result<ScaleOutcome> {
    let mut started = Vec::new();
    let recipient = Recipient::generate(&plan.dir)?;
    let veil_mode = Mode::Veil {
        format: plan.format,
        encrypted: true,
        prefetch: false,
        baseline: false,
    };
    let tmpfs_size = plan.memory_limit / 2;
    let mut outcome = ScaleOutcome {
        sample: format!("{:?}", plan.sample).to_lowercase(),
        workload: String::new(),
        read_set_bytes: 0,
        format: plan.format,
        veil_mode: veil_mode.name(),
        memory_limit: plan.memory_limit,
        tmpfs_size,
        cgroup: if crate::cgroup_run::cgroup_v2() {
            "v2"
        } else {
            "v1"
        },
        rtt_ms: plan.shaping.rtt_ms(),
        mbit: plan.shaping.mbit(),
        runs: plan.runs,
        sizes: Vec::new(),
        started: Vec::new(),
    };
    let mut result = Ok(());
    for &size in &plan.sizes {
        let sdir = plan.dir.join(format!("{}m", size >> 20));
        let r = one_size(
            plan,
            size,
            &sdir,
            &recipient,
            veil_mode,
            tmpfs_size,
            &mut outcome,
            &mut started,
        );
        // The size's sample, registry and runs go, whatever happened.
        veil_tests::unmount_below(&sdir);
        let _ = std::fs::remove_dir_all(&sdir);
        if let Err(e) = r {
            result = Err(e.context(format!("the {} MiB image", size >> 20)));
            break;
        }
    }
    outcome.started = started;
    result.map(|()| outcome)
}

#[allow(clippy::too_many_arguments)]
fn one_size(
    plan: &ScalePlan,
    size: u64,
    sdir: &std::path::Path,
    recipient: &Recipient,
    veil_mode: Mode,
    tmpfs_size: u64,
    outcome: &mut ScaleOutcome,
    started: &mut Vec<Started>,
) -> anyhow::Result<()> {
    crate::run::check_interrupted()?;
    std::fs::create_dir_all(sdir).with_context(|| format!("creating {}", sdir.display()))?;
    say(&format!(
        "size {} MiB: building the {:?} sample on disk",
        size >> 20,
        plan.sample
    ));
    let t = Instant::now();
    let image = crate::sample::build(plan.sample, size, &sdir.join("sample"))?;
    let build_s = t.elapsed().as_secs_f64();
    say(&format!(
        "built {} files, {} MiB in {build_s:.1} s",
        image.files,
        image.content_bytes >> 20
    ));
    outcome.workload = image.workload.clone();
    outcome.read_set_bytes = image.read_set_bytes;

    let mut registry = LocalRegistry::start(&sdir.join("registry"))?;
    started.push(Started {
        what: format!("docker-registry ({} MiB)", size >> 20),
        pid: registry.pid(),
    });
    let r = (|| -> anyhow::Result<SizeResult> {
        let host = registry.host();
        let push_s = crate::convert::push_plain(&image, &host)?;
        for layer in &image.layers {
            let _ = std::fs::remove_file(&layer.path);
        }
        say(&format!("pushed :plain in {push_s:.1} s"));
        crate::run::check_interrupted()?;
        let tag = veil_mode.tag();
        let convert_s = if !plan.veil {
            0.0
        } else {
            Conversion {
                veil: &plan.bins.veil,
                host: &host,
                tag: &tag,
                format: plan.format,
                encrypt_for: Some(recipient),
                prefetch_list: None,
                chunk_size: plan.chunk_size.as_deref(),
                optimize_cmd: None,
                dir: sdir,
            }
            .run()?
        };
        if plan.veil {
            say(&format!("veil convert → :{tag} in {convert_s:.1} s"));
        }
        let plain_bytes = crate::run::manifest_layer_bytes(&registry, "plain")?;
        let veil_bytes = if plan.veil {
            crate::run::manifest_layer_bytes(&registry, &tag)?
        } else {
            0
        };

        let upstream: SocketAddr = host
            .parse()
            .with_context(|| format!("registry address {host:?}"))?;
        let proxy = ShapingProxy::start(upstream, plan.shaping)?;
        let guest = Guest {
            bins: &plan.bins,
            keys_dir: &recipient.keys_dir,
            memory_limit: plan.memory_limit,
            tmpfs_size,
            drop_caches: plan.drop_caches,
            background_fetch: plan.background_fetch,
            workload: &image.workload,
            expect: &image.expect,
        };
        let mut modes = Vec::new();
        if plan.veil {
            modes.push((GuestMode::Veil, tag.clone()));
        }
        if plan.status_quo {
            modes.push((GuestMode::StatusQuo, Mode::StatusQuo.tag()));
        }
        let mut veil = Vec::new();
        let mut status_quo = Vec::new();
        for round in 0..plan.runs {
            for (mode, tag) in &modes {
                crate::run::check_interrupted()?;
                let reference = format!("{}/{REPO}:{tag}", proxy.host());
                // Short: containerd's sockets below it must fit a unix socket path.
                let name = match mode {
                    GuestMode::Veil => format!("v{round}"),
                    GuestMode::StatusQuo => format!("s{round}"),
                };
                let r = guest.run(
                    *mode,
                    round,
                    &reference,
                    &proxy,
                    &sdir.join("r").join(name),
                    started,
                )?;
                say(&format!(
                    "{:>6} MiB {:<11} run {}: {} {:.2} s, {:.1} MiB fetched, cgroup peak {} MiB{}{}",
                    size >> 20,
                    match mode {
                        GuestMode::Veil => "veil",
                        GuestMode::StatusQuo => "status-quo",
                    },
                    round + 1,
                    r.verdict.word(),
                    r.total_s,
                    r.fetched_bytes as f64 / (1 << 20) as f64,
                    r.cgroup_peak.map_or(0, |p| p >> 20),
                    r.daemon_peak_rss
                        .map(|p| format!(", daemon peak RSS {} MiB", p >> 20))
                        .unwrap_or_default(),
                    r.error
                        .as_deref()
                        .map(|e| format!(": {}", first_line(e)))
                        .unwrap_or_default(),
                ));
                match mode {
                    GuestMode::Veil => veil.push(r),
                    GuestMode::StatusQuo => status_quo.push(r),
                }
            }
        }
        Ok(SizeResult {
            size,
            content_bytes: image.content_bytes,
            files: image.files,
            build_s,
            push_s,
            convert_s,
            plain_bytes,
            veil_bytes,
            veil,
            status_quo,
        })
    })();
    registry.stop();
    outcome.sizes.push(r?);
    Ok(())
}

/// The first non-empty line of an error, at most [`ERROR_SHOWN`] characters.
fn first_line(e: &str) -> String {
    let line = e.lines().find(|l| !l.trim().is_empty()).unwrap_or(e).trim();
    line.chars().take(ERROR_SHOWN).collect()
}

/// How much of an error a progress line shows.
const ERROR_SHOWN: usize = 240;

/// MiB, or "-".
fn mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |b| format!("{}", b >> 20))
}

/// Seconds, or "-".
fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2}"))
}

/// The results as a text table (one row per size) with a header saying how they were
/// measured.
pub fn table(o: &ScaleOutcome) -> String {
    let mut t = format!(
        "veil bench --scale: {} sample, workload {:?}; every cold start in a memory cgroup \
         of {} MiB (cgroup {}), the guest's files on a tmpfs of {} MiB; registry at RTT {} ms, \
         {} Mbit/s; {} run(s) per mode and size (median; peaks: the largest)\n\
         Veil: {} (veil pull + ctr run, lazy, encrypted); status quo: ctr images pull \
         (download + unpack into overlayfs on the tmpfs) + ctr run\n\n",
        o.sample,
        o.workload,
        o.memory_limit >> 20,
        o.cgroup,
        o.tmpfs_size >> 20,
        o.rtt_ms,
        o.mbit,
        o.runs,
        o.veil_mode
    );
    t.push_str(&format!(
        "{:>9} {:>8} {:>8} | {:>9} {:>9} {:>9} {:>9} {:>6} | {:>9} {:>9} {:>8}\n",
        "image MiB",
        "build s",
        "conv s",
        "veil s",
        "fetch MiB",
        "RSS MiB",
        "peak MiB",
        "x0.5",
        "sq s",
        "peak MiB",
        "sq"
    ));
    let base = o.sizes.first().and_then(SizeResult::veil_total);
    for s in &o.sizes {
        let ratio = match (s.veil_total(), base) {
            (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
            _ => "-".into(),
        };
        t.push_str(&format!(
            "{:>9} {:>8.1} {:>8.1} | {:>9} {:>9} {:>9} {:>9} {:>6} | {:>9} {:>9} {:>8}\n",
            s.content_bytes >> 20,
            s.build_s + s.push_s,
            s.convert_s,
            match s.veil_verdict() {
                Some(Verdict::Ok) | None => secs(s.veil_total()),
                Some(v) => v.word().to_string(),
            },
            mib(s.veil_fetched()),
            mib(s.veil_daemon_peak()),
            mib(s.veil_cgroup_peak()),
            ratio,
            secs(s.status_quo_total()),
            mib(s.status_quo_cgroup_peak()),
            s.status_quo_verdict().map_or("-", Verdict::word),
        ));
    }
    t.push_str(&format!(
        "\nbuild s: build on disk + push; conv s: veil convert --encrypt; veil s: cold start; \
         fetch: bytes from the registry; RSS: veil-snapshotter's peak; peak: the cgroup's \
         (all its processes, page cache, tmpfs); x0.5: Veil's cold start over the smallest \
         image's; sq: the status quo.\nlargest image the status quo started: {}\n",
        o.status_quo_largest()
            .map_or("none of these".into(), |b| format!("{} MiB", b >> 20))
    ));
    t
}
