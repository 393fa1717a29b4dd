//! Veil's main job, end to end, shared by `veil-demo` and the `demo` test: a container
//! started from an image whose layers are never downloaded.
//!
//! 1. Debian's `docker-registry` is started on loopback, its data in the scenario's
//!    directory.
//! 2. A two-layer image is built in memory (busybox-static and small files; a large random
//!    file) and each layer converted to eStargz (or zstd:chunked) with Veil's own writers.
//! 3. It is pushed to the registry.
//! 4. veil-snapshotter is started with `[registry] plain_http = ["127.0.0.1:PORT"]`, and a
//!    private containerd with Veil as its proxy snapshotter `veil`.
//! 5. `veil pull --plain-http` puts the image into containerd: manifest and config only.
//! 6. `ctr run --snapshotter veil` runs a container that reads two small files; the
//!    registry's access log says how much of the layers that cost.
//! 7. A second container computes the SHA-256 of the large file, which must match.
//! 8. `veil status` shows what the daemon serves.
//! 9. veil-snapshotter is restarted on the same root (it mounts its remote layers again)
//!    and the first container is run once more.
//! 10. The status quo, side by side: the same image pulled by containerd itself (`ctr images
//!     pull --plain-http`, every layer downloaded and unpacked into its default overlayfs
//!     snapshotter) in a namespace of its own, the first container run from it with `ctr
//!     run --snapshotter overlayfs`, then its image, content and snapshots removed. It
//!     comes after the Veil path, so that Veil's byte counts are Veil's alone.
//! 11. Everything is stopped and unmounted.
//!
//! Each step is told to a narrator callback in plain words; the caller decides where that
//! goes. Everything started is stopped again by PID and everything mounted below the
//! scenario's directory is unmounted, also on failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cleanup::Cleanup;
use crate::containerd::{parse_snapshots, Containerd, NAMESPACE, SNAPSHOTTER};
use crate::lazy_image::{
    base_entries, pack, push_image, random_bytes, sha256_hex, tar_of, top_entries, Layer,
    LayerFormat, BIG_PATH, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use crate::local_registry::LocalRegistry;
use crate::process::run_with_timeout;
use crate::registry::Pusher;
use crate::registry_log::blob_served;
use crate::scenario::{indent, tail, wait_for_reconnect, VeilSnapshotter};

/// The repository the image is pushed to.
pub const REPO: &str = "veil-demo/busybox";
/// Its tag.
pub const TAG: &str = "lazy";
/// Default size of the large random file.
pub const DEFAULT_BIG_SIZE: usize = 64 << 20;
/// veil-snapshotter's config file in the scenario directory.
const VEIL_CONFIG: &str = "veil-config.toml";
/// How long `veil pull` / `veil status` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// The containerd namespace of the status-quo path (containerd's own pull).
pub const STATUS_QUO_NAMESPACE: &str = "veil-demo-ctr";
/// containerd's default snapshotter, which the status-quo path uses.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// How long `ctr images pull` may take (it downloads and unpacks every layer).
const CTR_PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Veil's two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `veil-snapshotter`, the daemon.
    pub snapshotter: PathBuf,
    /// `veil`, the command-line tool.
    pub veil: PathBuf,
}

impl Binaries {
    /// Both, built first if needed (panics if the build fails, like
    /// [`crate::veil_binary`]).
    pub fn build() -> Self {
        Self {
            snapshotter: crate::veil_binary("veil-snapshotter"),
            veil: crate::veil_binary("veil"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How the layers are packed: eStargz or zstd:chunked.
    pub format: LayerFormat,
    /// Size of the random file in the second layer.
    pub big_size: usize,
    /// Let Veil fetch whole layers into its disk cache in the background after mounting
    /// them (`[lazy] background_fetch`). Off by default, so the numbers show what the
    /// containers' reads alone fetch.
    pub background_fetch: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            format: LayerFormat::Estargz,
            big_size: DEFAULT_BIG_SIZE,
            background_fetch: false,
        }
    }
}

/// The name of a layer format, as people write it.
pub fn format_name(format: LayerFormat) -> &'static str {
    match format {
        LayerFormat::Estargz => "eStargz",
        LayerFormat::ZstdChunked => "zstd:chunked",
        LayerFormat::PlainGzip => "plain tar.gz",
    }
}

/// One step's cost, for the summary table.
#[derive(Debug, Clone)]
pub struct StepCost {
    /// What the step did, in a few words.
    pub step: String,
    /// How long it took.
    pub time: Duration,
    /// Layer-blob bytes the registry served during the step.
    pub layer_bytes: u64,
}

/// One pushed layer.
#[derive(Debug, Clone)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub annotations: BTreeMap<String, String>,
    /// What is in it, in words.
    pub contents: String,
}

/// A container run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The command line inside the container.
    pub command: Vec<String>,
    /// What it printed, or the error `ctr` reported.
    pub output: Result<String, String>,
    /// How long `ctr run` took.
    pub time: Duration,
    /// Layer bytes the registry served while it ran, per layer (base first).
    pub fetched: Vec<u64>,
}

impl Run {
    /// Layer bytes fetched while it ran, all layers.
    pub fn fetched_total(&self) -> u64 {
        self.fetched.iter().sum()
    }

    /// Its output, empty on failure.
    pub fn stdout(&self) -> &str {
        self.output.as_deref().unwrap_or("")
    }
}

/// The restart of veil-snapshotter and the run after it.
#[derive(Debug, Clone)]
pub struct Restart {
    /// PID of the stopped instance.
    pub old_pid: u32,
    /// Its exit status on SIGTERM.
    pub exit: Option<ExitStatus>,
    /// Mounts below Veil's root right after it stopped (its FUSE layer mounts should go).
    pub mounts_after_stop: Vec<String>,
    /// PID of the new instance (0 if it did not start).
    pub new_pid: u32,
    /// What the new instance logged about mounting its remote layers again: the
    /// "mounted remote layers again" line and any "could not mount remote layer again".
    pub remount_log: Vec<String>,
    /// How long containerd took to reach the new instance.
    pub reconnect_time: Duration,
    /// Errors `ctr` reported while containerd reconnected.
    pub reconnect_errors: Vec<String>,
    /// `veil status` after the restart, or its error.
    pub status_text: Result<String, String>,
    /// The container run after the restart (its `output` holds the error if it failed).
    pub run: Option<Run>,
    /// Why the restart failed before the container could run, if it did.
    pub failure: Option<String>,
}

/// The status quo, for comparison: the same image pulled by containerd itself (`ctr images
/// pull`: every layer downloaded into its content store and unpacked into its default
/// overlayfs snapshotter) in the namespace [`STATUS_QUO_NAMESPACE`], and the first
/// container run from it; then removed again.
#[derive(Debug, Clone)]
pub struct StatusQuo {
    /// The containerd namespace it used.
    pub namespace: String,
    /// The pull's command line, as shown.
    pub pull_command: String,
    /// The last lines `ctr images pull` printed (unpacking, done), or its error.
    pub pull_output: Result<String, String>,
    /// How long `ctr images pull` took.
    pub pull_time: Duration,
    /// Layer bytes the registry served for the pull, per layer (base first).
    pub pull_fetched: Vec<u64>,
    /// overlayfs snapshots in the namespace after the pull.
    pub snapshots: usize,
    /// Bytes of the layer blobs in containerd's content store after the pull.
    pub content_disk: u64,
    /// Bytes in the regular files of the overlayfs snapshots after the pull.
    pub overlay_disk: u64,
    /// The container that reads two small files (`None` if the pull failed).
    pub small: Option<Run>,
    /// Each step's time and fetched bytes.
    pub steps: Vec<StepCost>,
    /// What was left after the image was removed (should be empty).
    pub left_after_cleanup: Vec<String>,
    /// Why the path failed, if it did.
    pub failure: Option<String>,
}

impl StatusQuo {
    fn new() -> Self {
        Self {
            namespace: STATUS_QUO_NAMESPACE.into(),
            pull_command: String::new(),
            pull_output: Err("not run".into()),
            pull_time: Duration::ZERO,
            pull_fetched: Vec::new(),
            snapshots: 0,
            content_disk: 0,
            overlay_disk: 0,
            small: None,
            steps: Vec::new(),
            left_after_cleanup: Vec::new(),
            failure: None,
        }
    }

    /// Layer bytes the registry served for the pull, all layers.
    pub fn pull_fetched_total(&self) -> u64 {
        self.pull_fetched.iter().sum()
    }

    /// Pull start to the end of the small-file container: the pull's time plus the
    /// container's (`None` if the container did not run).
    pub fn cold_start(&self) -> Option<Duration> {
        self.small.as_ref().map(|r| self.pull_time + r.time)
    }

    /// Layer bytes the registry served for the pull and the small-file container.
    pub fn served_through_small(&self) -> u64 {
        self.pull_fetched_total() + self.small.as_ref().map_or(0, Run::fetched_total)
    }
}

/// `a / b`, for ratios of times or byte counts (`None` when `b` is zero).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// A ratio as `12.3×`, or `n/a`.
pub fn times(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}×"),
        Some(r) => format!("{r:.1}×"),
        None => "n/a".into(),
    }
}

/// What happened, for the caller to show or check.
#[derive(Debug, Clone)]
pub struct LazyReport {
    pub options: Options,
    /// `127.0.0.1:PORT`.
    pub registry: String,
    /// The image reference.
    pub reference: String,
    pub manifest_digest: String,
    /// Base first.
    pub layers: Vec<LayerInfo>,
    /// SHA-256 (hex) of the large file, computed when it was generated.
    pub big_sha256: String,
    /// veil-snapshotter's config file and its contents.
    pub veil_config_path: PathBuf,
    pub veil_config: String,
    /// veil's status socket.
    pub status_socket: PathBuf,
    /// The `ctr plugins ls` status of the `veil` snapshotter.
    pub plugin_status: String,
    /// `veil pull` stdout lines, stderr and how long it took.
    pub pull_lines: Vec<String>,
    pub pull_stderr: String,
    pub pull_time: Duration,
    /// Layers `veil pull` reported as lazy.
    pub lazy_layers: usize,
    /// Layer digests found in containerd's content store after the pull (should be none).
    pub layers_in_content_store: Vec<String>,
    /// Layer bytes the registry served for `veil pull`, per layer.
    pub pull_fetched: Vec<u64>,
    /// The container that reads two small files, and what it should print.
    pub small: Run,
    pub small_expected: String,
    /// The container that computes the large file's SHA-256.
    pub sha: Run,
    pub sha_matches: bool,
    /// `veil status` (text) and `veil status --json` before the restart.
    pub status_text: String,
    pub status_json: serde_json::Value,
    /// The restart.
    pub restart: Restart,
    /// The status quo: the same image pulled and run by containerd alone.
    pub status_quo: StatusQuo,
    /// Each step's time and fetched bytes (Veil's path and the final clean-up; the status
    /// quo's steps are in [`StatusQuo::steps`]).
    pub steps: Vec<StepCost>,
    /// WARN / ERROR lines veil-snapshotter logged (all instances).
    pub veil_warnings: Vec<String>,
    /// What the clean-up at the end found.
    pub cleanup: Cleanup,
}

impl LazyReport {
    /// Total size of the layer blobs.
    pub fn layer_bytes_total(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Layer bytes the registry served for `veil pull` and the container that reads two
    /// small files, all layers.
    pub fn served_through_small(&self) -> u64 {
        self.pull_fetched.iter().sum::<u64>() + self.small.fetched_total()
    }

    /// Pull start to the end of the small-file container with Veil: `veil pull`'s time
    /// plus the container's.
    pub fn veil_cold_start(&self) -> Duration {
        self.pull_time + self.small.time
    }

    /// The same for the layer with the large file only (the last layer): (served, blob
    /// size).
    pub fn big_layer_served_through_small(&self) -> (u64, u64) {
        let i = self.layers.len().saturating_sub(1);
        (
            self.pull_fetched.get(i).copied().unwrap_or(0)
                + self.small.fetched.get(i).copied().unwrap_or(0),
            self.layers.get(i).map_or(0, |l| l.size),
        )
    }

    /// What went wrong (empty when everything went as it should): every layer lazy and
    /// none downloaded, both containers' output right, the small read cheap, the restart
    /// and the run after it right, and nothing left running or mounted.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.lazy_layers != self.layers.len() {
            p.push(format!(
                "veil pull reported {} of {} layers as lazy",
                self.lazy_layers,
                self.layers.len()
            ));
        }
        if !self.layers_in_content_store.is_empty() {
            p.push(format!(
                "containerd downloaded layer(s) {:?}",
                self.layers_in_content_store
            ));
        }
        if self.small.output.as_deref() != Ok(self.small_expected.as_str()) {
            p.push(format!(
                "the first container printed {:?}, expected {:?}",
                self.small.output, self.small_expected
            ));
        }
        // The small read must leave the large file's layer alone. (With background
        // fetching the layers are fetched whole anyway. The base layer holds busybox,
        // which running any command reads.)
        let (big_served, big_size) = self.big_layer_served_through_small();
        if !self.options.background_fetch && big_served * 10 >= big_size {
            p.push(format!(
                "reading two small files cost {big_served} of the large file's layer's \
                 {big_size} bytes (10 % or more)"
            ));
        }
        if !self.sha_matches {
            p.push(format!(
                "sha256sum printed {:?}, expected {}",
                self.sha.output, self.big_sha256
            ));
        }
        if let Some(f) = &self.restart.failure {
            p.push(format!("the restart failed: {f}"));
        }
        match &self.restart.run {
            Some(run) if run.output.as_deref() == Ok(self.small_expected.as_str()) => {}
            Some(run) => p.push(format!(
                "the container after the restart printed {:?}, expected {:?}",
                run.output, self.small_expected
            )),
            None => p.push("the container was not run after the restart".into()),
        }
        let sq = &self.status_quo;
        if let Some(f) = &sq.failure {
            p.push(format!("the status-quo path (ctr images pull) failed: {f}"));
        }
        for (i, (l, got)) in self.layers.iter().zip(&sq.pull_fetched).enumerate() {
            if *got < l.size {
                p.push(format!(
                    "ctr images pull fetched {got} of layer {}'s {} bytes",
                    i + 1,
                    l.size
                ));
            }
        }
        match &sq.small {
            Some(run) if run.output.as_deref() == Ok(self.small_expected.as_str()) => {}
            Some(run) => p.push(format!(
                "the container on overlayfs printed {:?}, expected {:?}",
                run.output, self.small_expected
            )),
            None => p.push("the container was not run on overlayfs".into()),
        }
        if !sq.left_after_cleanup.is_empty() {
            p.push(format!(
                "left after removing the status quo's image: {:?}",
                sq.left_after_cleanup
            ));
        }
        p.extend(self.cleanup.problems());
        p
    }
}

/// The running parts. Field order is drop order: containerd, Veil, then the registry.
struct Stack {
    containerd: Option<Containerd>,
    veil: VeilSnapshotter,
    registry: Option<LocalRegistry>,
    dir: PathBuf,
    /// Layer digests, base first (known after the image is built).
    layer_digests: Vec<String>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            c.shutdown();
        }
        self.veil.stop();
        crate::mounts::unmount_below(&self.dir);
        if let Some(mut r) = self.registry.take() {
            r.stop();
        }
    }
}

impl Stack {
    fn registry(&self) -> &LocalRegistry {
        self.registry.as_ref().expect("registry started")
    }

    fn cd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd started")
    }

    /// Layer-blob bytes the registry has served so far, per layer.
    fn served(&self) -> Vec<u64> {
        let Some(r) = &self.registry else {
            return vec![0; self.layer_digests.len()];
        };
        let log = r.log_text();
        self.layer_digests
            .iter()
            .map(|d| blob_served(&log, d).1)
            .collect()
    }

    fn served_total(&self) -> u64 {
        self.served().iter().sum()
    }

    /// Runs `veil ARGS...` to its end; output kept in `DIR/<stem>.stdout|stderr`.
    fn veil_tool(&self, veil: &Path, args: &[&str], stem: &str) -> anyhow::Result<Output> {
        let mut cmd = Command::new(veil);
        cmd.args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        run_with_timeout(cmd, TOOL_TIMEOUT, &self.dir.join(stem))
    }

    fn logs(&self) -> String {
        let mut msg = String::new();
        for log in &self.veil.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            msg.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                log.display(),
                tail(&text, 40).join("\n")
            ));
        }
        if let Some(cd) = &self.containerd {
            msg.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                cd.log_path().display(),
                tail(&cd.log_text(), 40).join("\n")
            ));
        }
        if let Some(r) = &self.registry {
            msg.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                r.log_path().display(),
                tail(&r.log_text(), 20).join("\n")
            ));
        }
        msg
    }
}

/// Bytes in binary units (`1.5 KiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `part` as a percentage of `whole`.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A duration as seconds with two decimals (`0.42 s`).
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `sha256:0123456789ab…`.
fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}…", &hex[..hex.len().min(12)])
}

/// Runs the scenario in `dir` (an empty directory owned by the caller), telling each step
/// to `say`.
pub fn run(
    dir: &Path,
    bins: &Binaries,
    opts: &Options,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<LazyReport> {
    if opts.format == LayerFormat::PlainGzip {
        bail!("a plain tar.gz image cannot be served lazily: use eStargz or zstd:chunked");
    }
    let dir = dir.canonicalize()?;
    let veil = VeilSnapshotter::new(
        bins.snapshotter.clone(),
        dir.join("veil"),
        dir.join("veil.sock"),
        dir.clone(),
    )
    .with_config(dir.join(VEIL_CONFIG));
    let mut stack = Stack {
        containerd: None,
        veil,
        registry: None,
        dir: dir.clone(),
        layer_digests: Vec::new(),
    };
    let mut steps: Vec<StepCost> = Vec::new();
    match steps_until_restart(&dir, bins, opts, &mut stack, &mut steps, say) {
        Ok(mut report) => {
            report.restart = restart(&mut stack, bins, &report, &mut steps, say);
            report.status_quo = status_quo(&stack, &report, say);
            let t = Instant::now();
            say(
                "Cleaning up: deleting leftover tasks and containers, stopping containerd, \
                 veil-snapshotter (SIGTERM) and the registry, unmounting what is left below \
                 the working directory.",
            );
            let cd = stack.containerd.take().expect("containerd was started");
            let registry = stack.registry.take();
            report.cleanup = Cleanup::run(&dir, cd, &mut stack.veil, registry);
            for log in &stack.veil.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                report.veil_warnings.extend(
                    text.lines()
                        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                        .map(str::to_string),
                );
            }
            steps.push(StepCost {
                step: "clean up".into(),
                time: t.elapsed(),
                layer_bytes: 0,
            });
            report.steps = steps;
            Ok(report)
        }
        Err(e) => {
            let logs = stack.logs();
            drop(stack);
            Err(anyhow::anyhow!("{e:#}\n\nThe logs:{logs}"))
        }
    }
}

/// Measures one step: its time and the layer bytes the registry served meanwhile.
fn measured<T>(
    stack: &mut Stack,
    steps: &mut Vec<StepCost>,
    name: &str,
    body: impl FnOnce(&mut Stack) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let before = stack.served_total();
    let t = Instant::now();
    let value = body(stack)?;
    let time = t.elapsed();
    steps.push(StepCost {
        step: name.into(),
        time,
        layer_bytes: stack.served_total().saturating_sub(before),
    });
    Ok((value, time))
}

/// Runs a container to its end with `ctr run --rm --snapshotter veil`.
fn run_container(stack: &Stack, reference: &str, id: &str, command: &[&str]) -> Run {
    run_container_in(stack, NAMESPACE, SNAPSHOTTER, reference, id, command)
}

/// Runs a container to its end with `ctr -n NAMESPACE run --rm --snapshotter SNAPSHOTTER`.
fn run_container_in(
    stack: &Stack,
    namespace: &str,
    snapshotter: &str,
    reference: &str,
    id: &str,
    command: &[&str],
) -> Run {
    let before = stack.served();
    let t = Instant::now();
    let output = stack
        .cd()
        .run_container_in(namespace, snapshotter, reference, id, command)
        .map_err(|e| format!("{e:#}"));
    let time = t.elapsed();
    let after = stack.served();
    Run {
        command: command.iter().map(|s| s.to_string()).collect(),
        output,
        time,
        fetched: after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
    }
}

fn steps_until_restart(
    dir: &Path,
    bins: &Binaries,
    opts: &Options,
    stack: &mut Stack,
    steps: &mut Vec<StepCost>,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<LazyReport> {
    let format = format_name(opts.format);

    // 1. The registry.
    let ((), _) = measured(stack, steps, "start docker-registry", |s| {
        s.registry =
            Some(LocalRegistry::start(&dir.join("registry")).context("starting the registry")?);
        Ok(())
    })?;
    let registry = stack.registry().host();
    say(&format!(
        "Started Debian's docker-registry (PID {}) on {registry}, with its storage in {} and its \
         access log in {}. This registry is the only place the image will be; the access log \
         tells how many bytes of each layer it served.",
        stack.registry().pid(),
        stack.registry().dir().join("data").display(),
        stack.registry().log_path().display()
    ));

    // 2. The image.
    let big_size = opts.big_size;
    let ((layers, big_sha256), took) = measured(
        stack,
        steps,
        &format!("build + convert to {format}"),
        |_| {
            let big = random_bytes(big_size, 0x5eed);
            let big_sha = sha256_hex(&big);
            let layers = vec![
                pack(tar_of(&base_entries()?)?, opts.format)?,
                pack(tar_of(&top_entries(big))?, opts.format)?,
            ];
            Ok((layers, big_sha))
        },
    )?;
    stack.layer_digests = layers.iter().map(|l| l.digest.clone()).collect();
    let busybox_size = std::fs::metadata(crate::image::BUSYBOX)
        .map(|m| m.len())
        .unwrap_or(0);
    let infos: Vec<LayerInfo> = layers
        .iter()
        .zip([
            format!(
                "busybox-static ({}) with applet links in /bin, {HELLO_PATH}, /etc/veil-notes.txt",
                human(busybox_size)
            ),
            format!(
                "{BIG_PATH} ({} of random bytes), {LAYER2_PATH}",
                human(big_size as u64)
            ),
        ])
        .map(|(l, contents): (&Layer, String)| LayerInfo {
            digest: l.digest.clone(),
            size: l.size(),
            media_type: l.media_type.clone(),
            annotations: l.annotations.clone(),
            contents,
        })
        .collect();
    let total: u64 = infos.iter().map(|l| l.size).sum();
    let mut built = format!(
        "Built a two-layer image in memory and converted each layer to {format} with Veil's \
         own writer, in {}:\n",
        secs(took)
    );
    for (i, l) in infos.iter().enumerate() {
        built.push_str(&format!(
            "    layer {} {}  {:>9}  {}\n",
            i + 1,
            short(&l.digest),
            human(l.size),
            l.contents
        ));
        for (k, v) in &l.annotations {
            built.push_str(&format!("        annotation {k} = {v}\n"));
        }
    }
    built.push_str(&format!(
        "The SHA-256 of {BIG_PATH} is {big_sha256}. Each layer ends in a table of contents \
         (the annotations above point at it) that lets Veil find any file's compressed chunks \
         and fetch just those with HTTP range requests."
    ));
    say(&built);

    // 3. Push.
    let (pushed, took) = measured(stack, steps, "push to the registry", |s| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let pusher = Pusher::new(s.registry().base(), None);
        runtime.block_on(push_image(&pusher, REPO, TAG, &layers))
    })?;
    drop(layers);
    let reference = format!("{registry}/{REPO}:{TAG}");
    say(&format!(
        "Pushed the config, both layers ({} in all) and the OCI manifest to the registry in {}. \
         The image is {reference} (manifest {}).",
        human(total),
        secs(took),
        pushed.manifest_digest
    ));

    // 4. veil-snapshotter.
    // The snapshotter was set up with this path (see `run`).
    let veil_config_path = dir.join(VEIL_CONFIG);
    let veil_config = format!(
        "# veil-snapshotter config written by veil-demo\n\
         [registry]\n\
         # The demo's registry speaks plain HTTP on loopback.\n\
         plain_http = [\"{registry}\"]\n\
         \n\
         [lazy]\n\
         # {}\n\
         background_fetch = {}\n",
        if opts.background_fetch {
            "Fetch whole layers into the disk cache in the background once mounted."
        } else {
            "No background fetching: the registry serves only what containers read."
        },
        opts.background_fetch
    );
    std::fs::write(&veil_config_path, &veil_config)?;
    let status_socket = stack.veil.socket().with_file_name("status.sock");
    let (pid, _) = measured(stack, steps, "start veil-snapshotter", |s| {
        s.veil.start().context("starting veil-snapshotter")
    })?;
    say(&format!(
        "Started veil-snapshotter (PID {pid}) with the config {}:\n{}\nIt keeps its metadata in \
         {}, serves containerd's snapshots API on {} and answers `veil status` on {}.",
        veil_config_path.display(),
        indent(veil_config.trim_end()),
        stack.veil.root().display(),
        stack.veil.socket().display(),
        status_socket.display()
    ));

    // 5. containerd.
    let (cd, _) = measured(stack, steps, "start containerd", |s| {
        Containerd::start(&dir.join("containerd"), s.veil.socket()).context("starting containerd")
    })?;
    let cd = stack.containerd.insert(cd);
    let containerd_config = std::fs::read_to_string(cd.config_path())?;
    let proxy_section: String = containerd_config
        .lines()
        .skip_while(|l| !l.starts_with("[proxy_plugins]"))
        .collect::<Vec<_>>()
        .join("\n");
    let plugin_status = cd
        .plugin_status("io.containerd.snapshotter.v1", SNAPSHOTTER)?
        .with_context(|| {
            format!(
                "`ctr plugins ls` does not list io.containerd.snapshotter.v1 {SNAPSHOTTER}:\n{}",
                cd.ctr_stdout(&["plugins", "ls"]).unwrap_or_default()
            )
        })?;
    say(&format!(
        "Started a private containerd (PID {}, socket {}; a system containerd, if any, is not \
         touched). This part of its config {} registers Veil as the snapshotter \
         \"{SNAPSHOTTER}\":\n{}\n`ctr plugins ls` lists it with status {plugin_status}.",
        cd.pid(),
        cd.address().display(),
        cd.config_path().display(),
        indent(&proxy_section)
    ));

    // 6. veil pull.
    let address = cd.address().to_string_lossy().into_owned();
    let veil_bin = bins.veil.clone();
    let before_pull = stack.served();
    let (out, pull_time) = measured(stack, steps, "veil pull", |s| {
        let out = s.veil_tool(
            &veil_bin,
            &[
                "pull",
                "--plain-http",
                "-a",
                &address,
                "-n",
                NAMESPACE,
                &reference,
            ],
            "veil-pull",
        )?;
        if !out.status.success() {
            bail!(
                "veil pull failed ({}):\n{}{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        Ok(out)
    })?;
    let pull_stdout = text(&out.stdout);
    let pull_stderr = text(&out.stderr);
    let pull_lines: Vec<String> = pull_stdout.lines().map(str::to_string).collect();
    let lazy_layers = pull_lines
        .iter()
        .filter(|l| l.starts_with("layer ") && l.contains(" lazy"))
        .count();
    let content: Vec<String> = stack
        .cd()
        .ctr_stdout(&["content", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let layers_in_content_store: Vec<String> = infos
        .iter()
        .filter(|l| content.contains(&l.digest))
        .map(|l| l.digest.clone())
        .collect();
    let pull_fetched: Vec<u64> = stack
        .served()
        .iter()
        .zip(&before_pull)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let served_now = stack.served_total();
    say(&format!(
        "Ran `veil pull --plain-http -a {address} -n {NAMESPACE} {reference}`; it took {}. It \
         printed:\n{}{}\ncontainerd's content store now holds the manifest and the config, and \
         {} of the {} layer blobs. For the pull the registry served {} of the layers ({} of {} \
         layer bytes, {:.2} %): Veil read each layer's footer and table of contents.",
        secs(pull_time),
        indent(pull_stdout.trim_end()),
        if pull_stderr.trim().is_empty() {
            String::new()
        } else {
            format!("\nand on stderr:\n{}", indent(pull_stderr.trim_end()))
        },
        layers_in_content_store.len(),
        infos.len(),
        human(served_now),
        served_now,
        total,
        percent(served_now, total)
    ));

    // 7. A small read.
    let small_cmd = ["/bin/cat", HELLO_PATH, LAYER2_PATH];
    let small_expected = format!("{HELLO_TEXT}{LAYER2_TEXT}");
    let (small, _) = measured(stack, steps, "container: cat two small files", |s| {
        Ok(run_container(s, &reference, "veil-demo-cat", &small_cmd))
    })?;
    if let Err(e) = &small.output {
        bail!("running the first container failed:\n{e}");
    }
    let served_now = stack.served_total();
    say(&format!(
        "Ran a container: `ctr run --rm --snapshotter {SNAPSHOTTER} {reference} veil-demo-cat {}`. \
         It took {} and printed ({}):\n{}\nregistry served {} of {} layer bytes ({:.2} %) so far. \
         This container made it fetch {} from layer 1 (busybox itself, which the kernel had to \
         read to run `cat`) and {} from layer 2 (the {} file was not touched).",
        small_cmd.join(" "),
        secs(small.time),
        if small.stdout() == small_expected {
            "as expected"
        } else {
            "NOT what was expected"
        },
        indent(small.stdout()),
        human(served_now),
        human(total),
        percent(served_now, total),
        human(small.fetched[0]),
        human(small.fetched[1]),
        human(big_size as u64)
    ));

    // 8. The whole big file.
    let sha_cmd = ["/bin/sha256sum", BIG_PATH];
    let (sha, _) = measured(stack, steps, "container: sha256sum the big file", |s| {
        Ok(run_container(s, &reference, "veil-demo-sha", &sha_cmd))
    })?;
    if let Err(e) = &sha.output {
        bail!("running the second container failed:\n{e}");
    }
    let sha_matches = sha.stdout().split_whitespace().next() == Some(big_sha256.as_str());
    let served_now = stack.served_total();
    say(&format!(
        "Ran a second container: `sha256sum {BIG_PATH}`, reading all {} of it. It took {} and \
         printed:\n{}\nThat {} the SHA-256 computed when the image was built. Veil fetched {} \
         more for it; the registry has now served {} of {} layer bytes ({:.2} %).",
        human(big_size as u64),
        secs(sha.time),
        indent(sha.stdout()),
        if sha_matches {
            "matches"
        } else {
            "DOES NOT match"
        },
        human(sha.fetched_total()),
        human(served_now),
        human(total),
        percent(served_now, total)
    ));

    // 9. veil status.
    let status_arg = status_socket.to_string_lossy().into_owned();
    let veil_bin = bins.veil.clone();
    let ((status_text, status_json), took) = measured(stack, steps, "veil status", |s| {
        let out = s.veil_tool(
            &veil_bin,
            &["status", "--address", &status_arg],
            "veil-status",
        )?;
        if !out.status.success() {
            bail!(
                "veil status failed ({}):\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        let json = s.veil_tool(
            &veil_bin,
            &["status", "--address", &status_arg, "--json"],
            "veil-status-json",
        )?;
        if !json.status.success() {
            bail!(
                "veil status --json failed ({}):\n{}",
                json.status,
                text(&json.stderr)
            );
        }
        let value: serde_json::Value = serde_json::from_slice(&json.stdout)
            .context("veil status --json printed no valid JSON")?;
        Ok((text(&out.stdout), value))
    })?;
    let veil_counted = status_json["registry_bytes_fetched"].as_u64().unwrap_or(0);
    let served_now = stack.served_total();
    say(&format!(
        "Asked the daemon what it serves: `veil status --address {status_arg}` ({}):\n{}\n\
         Veil counts {} fetched from the registry ({veil_counted} bytes); the registry's access \
         log says it served {served_now} bytes of layer blobs.",
        secs(took),
        indent(status_text.trim_end()),
        human(veil_counted)
    ));

    Ok(LazyReport {
        options: opts.clone(),
        registry,
        reference,
        manifest_digest: pushed.manifest_digest,
        layers: infos,
        big_sha256,
        veil_config_path,
        veil_config,
        status_socket,
        plugin_status,
        pull_lines,
        pull_stderr,
        pull_time,
        lazy_layers,
        layers_in_content_store,
        pull_fetched,
        small,
        small_expected,
        sha,
        sha_matches,
        status_text,
        status_json,
        status_quo: StatusQuo::new(),
        restart: Restart {
            old_pid: 0,
            exit: None,
            mounts_after_stop: Vec::new(),
            new_pid: 0,
            remount_log: Vec::new(),
            reconnect_time: Duration::ZERO,
            reconnect_errors: Vec::new(),
            status_text: Err("not run".into()),
            run: None,
            failure: None,
        },
        steps: Vec::new(),
        veil_warnings: Vec::new(),
        cleanup: Cleanup::default(),
    })
}

/// Restarts veil-snapshotter and runs the first container again. Failures are recorded
/// in the result (with the logs' relevant lines), not returned, so that the caller still
/// cleans up and shows everything else.
fn restart(
    stack: &mut Stack,
    bins: &Binaries,
    report: &LazyReport,
    steps: &mut Vec<StepCost>,
    say: &mut dyn FnMut(&str),
) -> Restart {
    let mut r = Restart {
        old_pid: *stack.veil.pids.last().unwrap_or(&0),
        exit: None,
        mounts_after_stop: Vec::new(),
        new_pid: 0,
        remount_log: Vec::new(),
        reconnect_time: Duration::ZERO,
        reconnect_errors: Vec::new(),
        status_text: Err("not run".into()),
        run: None,
        failure: None,
    };
    let before = stack.served_total();
    let t = Instant::now();
    r.exit = stack.veil.stop();
    r.mounts_after_stop = crate::mounts::mounts_below(stack.veil.root());
    let started = stack
        .veil
        .start()
        .context("starting veil-snapshotter again on the same root");
    let reconnected = started.and_then(|pid| {
        r.new_pid = pid;
        let cd = stack.containerd.as_ref().expect("containerd started");
        wait_for_reconnect(cd, &mut stack.veil)
    });
    let log = stack.veil.log_text();
    r.remount_log = log
        .lines()
        .filter(|l| {
            l.contains("mounted remote layers again")
                || l.contains("could not mount remote layer")
                || l.contains("disk cache ready")
        })
        .map(str::to_string)
        .collect();
    steps.push(StepCost {
        step: "restart veil-snapshotter".into(),
        time: t.elapsed(),
        layer_bytes: stack.served_total().saturating_sub(before),
    });
    let exit = r
        .exit
        .map(|s| s.to_string())
        .unwrap_or_else(|| "no exit status".into());
    let stopped = format!(
        "Stopped veil-snapshotter (PID {}) with SIGTERM: {exit}; {} mount(s) left below its root \
         {}.",
        r.old_pid,
        r.mounts_after_stop.len(),
        stack.veil.root().display()
    );
    match reconnected {
        Ok(rc) => {
            r.reconnect_time = rc.time;
            r.reconnect_errors = rc.errors;
        }
        Err(e) => {
            let msg = format!(
                "{e:#}\n--- last lines of the restarted veil-snapshotter's log ---\n{}",
                tail(&log, 30).join("\n")
            );
            say(&format!(
                "{stopped} Starting it again on the same root FAILED:\n{}",
                indent(&msg)
            ));
            r.failure = Some(msg);
            return r;
        }
    }
    let status_arg = report.status_socket.to_string_lossy().into_owned();
    r.status_text = stack
        .veil_tool(
            &bins.veil,
            &["status", "--address", &status_arg],
            "veil-status-after-restart",
        )
        .map_err(|e| format!("{e:#}"))
        .and_then(|out| {
            if out.status.success() {
                Ok(text(&out.stdout))
            } else {
                Err(format!(
                    "veil status failed ({}): {}",
                    out.status,
                    text(&out.stderr)
                ))
            }
        });
    say(&format!(
        "{stopped} Started it again (PID {}) on the same root. It logged about its remote \
         layers:\n{}\ncontainerd reached it after {}{}. `veil status` now says:\n{}",
        r.new_pid,
        indent(&r.remount_log.join("\n")),
        secs(r.reconnect_time),
        if r.reconnect_errors.is_empty() {
            String::new()
        } else {
            format!(
                " (with {} distinct error(s) on the way: {})",
                r.reconnect_errors.len(),
                r.reconnect_errors.join(" | ")
            )
        },
        indent(match &r.status_text {
            Ok(t) => t.trim_end(),
            Err(e) => e.as_str(),
        })
    ));

    // The container again.
    let small_cmd: Vec<&str> = report.small.command.iter().map(String::as_str).collect();
    let before = stack.served_total();
    let run = run_container(stack, &report.reference, "veil-demo-again", &small_cmd);
    steps.push(StepCost {
        step: "container again after restart".into(),
        time: run.time,
        layer_bytes: stack.served_total().saturating_sub(before),
    });
    match &run.output {
        Ok(out) => say(&format!(
            "Ran the first container again after the restart: `{}`. It took {} and printed \
             ({}):\n{}\n{}",
            small_cmd.join(" "),
            secs(run.time),
            if *out == report.small_expected {
                "as expected"
            } else {
                "NOT what was expected"
            },
            indent(out),
            if run.fetched_total() == 0 {
                format!(
                    "The registry served nothing for it: Veil's disk cache ({}), which outlives \
                     the process, already held every byte it read.",
                    stack.veil.root().join("cache").display()
                )
            } else {
                format!(
                    "It made the registry serve {}: the new process started with an empty \
                     memory cache.",
                    human(run.fetched_total())
                )
            }
        )),
        Err(e) => {
            let log = stack.veil.log_text();
            say(&format!(
                "Running the first container again after the restart FAILED ({}):\n{}\n\
                 The restarted veil-snapshotter's last log lines:\n{}",
                secs(run.time),
                indent(e),
                indent(&tail(&log, 20).join("\n"))
            ));
        }
    }
    r.run = Some(run);
    r
}

/// containerd's content store below its root: where a layer blob lives.
fn content_blob_path(root: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    root.join("io.containerd.content.v1.content")
        .join("blobs")
        .join(algorithm)
        .join(hex)
}

/// Where containerd's overlayfs snapshotter keeps its snapshots, below containerd's root.
fn overlay_snapshots_dir(root: &Path) -> PathBuf {
    root.join("io.containerd.snapshotter.v1.overlayfs")
        .join("snapshots")
}

/// Bytes in the regular files below `dir` (each inode once); 0 if it does not exist.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                dirs.push(entry.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// The final lines of `ctr images pull`'s output: it redraws a progress table with
/// terminal escape sequences (its last frame may predate the download's end, so the
/// registry's access log is what counts bytes); what is kept is the `unpacking` / `done`
/// lines.
fn pull_summary(stdout: &str) -> String {
    let mut plain = String::with_capacity(stdout.len());
    let mut chars = stdout.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // A CSI sequence: ESC [ parameters, then a final byte in @..~.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(if c == '\r' { '\n' } else { c });
    }
    // Table cells are padded with runs of spaces; one is enough here.
    let lines: Vec<String> = plain
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines
        .iter()
        .filter(|l| l.starts_with("unpacking") || l.starts_with("done"))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The status quo: the same image pulled and run by containerd alone, then removed.
/// Failures are recorded in the result, not returned, so that the caller still cleans up
/// and shows everything else.
fn status_quo(stack: &Stack, report: &LazyReport, say: &mut dyn FnMut(&str)) -> StatusQuo {
    let mut sq = StatusQuo::new();
    if let Err(e) = status_quo_steps(stack, report, &mut sq, say) {
        let msg = format!("{e:#}");
        say(&format!(
            "The status-quo path (containerd's own pull) FAILED:\n{}",
            indent(&msg)
        ));
        sq.failure = Some(msg);
    }
    status_quo_cleanup(stack, report, &mut sq, say);
    sq
}

fn status_quo_steps(
    stack: &Stack,
    report: &LazyReport,
    sq: &mut StatusQuo,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let cd = stack.cd();
    let ns = sq.namespace.clone();
    let reference = report.reference.as_str();
    let total = report.layer_bytes_total();

    // The pull: every layer downloaded and unpacked.
    sq.pull_command = format!(
        "ctr -a {} -n {ns} images pull --plain-http {reference}",
        cd.address().display()
    );
    let before = stack.served();
    let t = Instant::now();
    let pulled = cd.ctr_like(
        Path::new("ctr"),
        &ns,
        &["images", "pull", "--plain-http", reference],
        CTR_PULL_TIMEOUT,
    );
    sq.pull_time = t.elapsed();
    sq.pull_fetched = stack
        .served()
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    sq.steps.push(StepCost {
        step: format!("ctr images pull ({DEFAULT_SNAPSHOTTER})"),
        time: sq.pull_time,
        layer_bytes: sq.pull_fetched_total(),
    });
    sq.pull_output = pulled
        .map(|o| pull_summary(&o.stdout))
        .map_err(|e| format!("{e:#}"));
    if let Err(e) = &sq.pull_output {
        bail!("{e}");
    }
    let images = cd.ctr_in(&ns, &["images", "ls", "-q"])?.stdout;
    if !images.lines().any(|l| l.trim() == reference) {
        bail!("after the pull containerd does not list {reference} in {ns}:\n{images}");
    }
    let root = cd.root();
    sq.snapshots = parse_snapshots(
        &cd.ctr_in(
            &ns,
            &["snapshots", "--snapshotter", DEFAULT_SNAPSHOTTER, "ls"],
        )?
        .stdout,
    )
    .len();
    sq.content_disk = report
        .layers
        .iter()
        .filter_map(|l| std::fs::metadata(content_blob_path(&root, &l.digest)).ok())
        .map(|m| m.len())
        .sum();
    sq.overlay_disk = disk_usage(&overlay_snapshots_dir(&root));
    let fetched = sq.pull_fetched_total();
    say(&format!(
        "Now the status quo, side by side: the same image pulled by containerd itself, as \
         without Veil, in a namespace of its own ({ns}) so that the two do not mix. Ran \
         `{}` (containerd's default snapshotter, {DEFAULT_SNAPSHOTTER}); it took {}, {} as long \
         as `veil pull` ({}). It printed (last lines):\n{}\nFor this pull the registry served \
         {} of the layers ({fetched} of {total} layer bytes, {:.2} %): containerd downloaded \
         every layer whole into its content store ({} of layer blobs in {}) and unpacked them \
         into {} {DEFAULT_SNAPSHOTTER} snapshots ({} of files in {}) before the pull returned.",
        sq.pull_command,
        secs(sq.pull_time),
        times(ratio(
            sq.pull_time.as_secs_f64(),
            report.pull_time.as_secs_f64()
        )),
        secs(report.pull_time),
        indent(sq.pull_output.as_deref().unwrap_or("")),
        human(fetched),
        percent(fetched, total),
        human(sq.content_disk),
        content_blob_path(&root, "sha256:")
            .parent()
            .unwrap_or(&root)
            .display(),
        sq.snapshots,
        human(sq.overlay_disk),
        overlay_snapshots_dir(&root).display()
    ));

    // The same small-file container, on overlayfs.
    let small_cmd: Vec<&str> = report.small.command.iter().map(String::as_str).collect();
    let small = run_container_in(
        stack,
        &ns,
        DEFAULT_SNAPSHOTTER,
        reference,
        "veil-demo-ctr-cat",
        &small_cmd,
    );
    sq.steps.push(StepCost {
        step: "container: cat two small files".into(),
        time: small.time,
        layer_bytes: small.fetched_total(),
    });
    let (pull_time, pull_fetched) = (sq.pull_time, sq.pull_fetched_total());
    let small = sq.small.insert(small);
    if let Err(e) = &small.output {
        bail!("running the container on {DEFAULT_SNAPSHOTTER} failed:\n{e}");
    }
    let cold = pull_time + small.time;
    let veil_cold = report.veil_cold_start();
    let served = pull_fetched + small.fetched_total();
    let veil_served = report.served_through_small();
    say(&format!(
        "Ran the same small-file container on it: `ctr -n {ns} run --rm --snapshotter \
         {DEFAULT_SNAPSHOTTER} {reference} veil-demo-ctr-cat {}`. It took {} and printed \
         ({}):\n{}\nThe registry served {} for it: every byte was on local disk already. From \
         the pull's start to this container's end (pull + container), containerd alone took {}, \
         {} as long as Veil's {} (`veil pull` {} + container {}); by then the registry had \
         served {} ({:.2} % of the layers) against Veil's {} ({:.2} %).",
        small_cmd.join(" "),
        secs(small.time),
        if small.stdout() == report.small_expected {
            "as expected"
        } else {
            "NOT what was expected"
        },
        indent(small.stdout()),
        human(small.fetched_total()),
        secs(cold),
        times(ratio(cold.as_secs_f64(), veil_cold.as_secs_f64())),
        secs(veil_cold),
        secs(report.pull_time),
        secs(report.small.time),
        human(served),
        percent(served, total),
        human(veil_served),
        percent(veil_served, total)
    ));
    Ok(())
}

/// Removes what the status quo put into containerd (its container if it is still there,
/// the image, and through containerd's garbage collector the layer blobs and overlayfs
/// snapshots, then the namespace) and checks that nothing of it is left.
fn status_quo_cleanup(
    stack: &Stack,
    report: &LazyReport,
    sq: &mut StatusQuo,
    say: &mut dyn FnMut(&str),
) {
    let cd = stack.cd();
    let ns = sq.namespace.clone();
    let root = cd.root();
    let t = Instant::now();
    let mut left = Vec::new();
    let (tasks, containers) = cd.clear_namespace(&ns);
    left.extend(tasks.iter().map(|id| format!("task {id} (killed)")));
    left.extend(
        containers
            .iter()
            .map(|id| format!("container {id} (deleted)")),
    );
    // Fails when the pull did not get as far as the image; the checks below tell.
    let _ = cd.ctr_in(&ns, &["images", "rm", "--sync", &report.reference]);
    let list = |args: &[&str]| -> Vec<String> {
        match cd.ctr_in(&ns, args) {
            Ok(out) => out.stdout.lines().map(str::to_string).collect(),
            Err(e) => vec![format!("(`ctr {}` failed: {e:#})", args.join(" "))],
        }
    };
    left.extend(
        list(&["images", "ls", "-q"])
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("image {l}")),
    );
    left.extend(
        list(&["content", "ls", "-q"])
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("content {l}")),
    );
    left.extend(
        parse_snapshots(
            &list(&["snapshots", "--snapshotter", DEFAULT_SNAPSHOTTER, "ls"]).join("\n"),
        )
        .into_iter()
        .map(|r| format!("{DEFAULT_SNAPSHOTTER} snapshot {}", r.key)),
    );
    // containerd refuses to remove a namespace that still holds anything.
    let exists = cd
        .ctr_stdout(&["namespaces", "ls", "-q"])
        .map_or(true, |out| out.split_whitespace().any(|n| n == ns));
    if exists {
        if let Err(e) = cd.ctr(&["namespaces", "rm", &ns]) {
            left.push(format!(
                "namespace {ns} (`ctr namespaces rm` failed: {e:#})"
            ));
        }
    }
    // On disk: the layer blobs (unless Veil's namespace holds them too) and the snapshot
    // directories, which the garbage collector removes.
    let overlay_dir = overlay_snapshots_dir(&root);
    let start = Instant::now();
    let on_disk = loop {
        let mut found: Vec<String> = report
            .layers
            .iter()
            .filter(|l| !report.layers_in_content_store.contains(&l.digest))
            .map(|l| content_blob_path(&root, &l.digest))
            .filter(|p| p.exists())
            .map(|p| format!("file {}", p.display()))
            .collect();
        found.extend(
            std::fs::read_dir(&overlay_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| format!("directory {}", e.path().display())),
        );
        if found.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    left.extend(on_disk);
    sq.left_after_cleanup = left;
    let time = t.elapsed();
    sq.steps.push(StepCost {
        step: "remove image, blobs, snapshots".into(),
        time,
        layer_bytes: 0,
    });
    say(&format!(
        "Removed the status quo again, in {}: `ctr -n {ns} images rm --sync {}` (containerd's \
         garbage collector deleted the layer blobs and the {DEFAULT_SNAPSHOTTER} snapshots with \
         it) and `ctr namespaces rm {ns}`. {}",
        secs(time),
        report.reference,
        if sq.left_after_cleanup.is_empty() {
            format!(
                "Nothing of it is left: no layer blob in {}, no snapshot in {}, no namespace \
                 {ns}; Veil's namespace {NAMESPACE} is untouched.",
                content_blob_path(&root, "sha256:")
                    .parent()
                    .unwrap_or(&root)
                    .display(),
                overlay_dir.display()
            )
        } else {
            format!(
                "LEFT BEHIND:\n{}",
                indent(&sq.left_after_cleanup.join("\n"))
            )
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_summary_keeps_the_final_lines() {
        let out = "\u{1b}[2Kmanifest-sha256:ab: downloading |---| 0.0 B/935 B\n\
                   elapsed: 0.1 s    total:   0.0 B (0.0 B/s)\n\u{1b}[2A\u{1b}[J\
                   manifest-sha256:ab: done |+++| 935 B/935 B\r\n\
                   elapsed: 0.6 s      total:  65.2 M (107.9 MiB/s)\n\
                   unpacking linux/amd64 sha256:ab...\n\
                   done: 874.7ms\n";
        assert_eq!(
            pull_summary(out),
            "unpacking linux/amd64 sha256:ab...\n\
             done: 874.7ms"
        );
    }

    #[test]
    fn ratios() {
        assert_eq!(times(ratio(3.0, 2.0)), "1.5×");
        assert_eq!(times(ratio(250.0, 2.0)), "125×");
        assert_eq!(times(ratio(1.0, 0.0)), "n/a");
    }
}
