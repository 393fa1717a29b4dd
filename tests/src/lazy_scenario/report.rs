//! What the lazy scenario measured ([`LazyReport`] and its parts), the checks a run must
//! pass, and the small formatting helpers its narration uses.

use super::*;

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
    pub(super) fn new() -> Self {
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

/// Bytes in binary units (`1.5 KiB`): the shipped tools' formatter.
pub use veil_blob::display::human_bytes as human;

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

pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `sha256:0123456789ab…`.
pub(super) fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}…", &hex[..hex.len().min(12)])
}
