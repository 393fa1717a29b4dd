//! The end-to-end scenario shared by the `containerd_run` test and the `veil-demo` program:
//! Veil's snapshotter behind a private containerd, a locally built two-layer image imported
//! into Veil, a container run from it, the snapshotter restarted on the same root, and the
//! container run again.
//!
//! Every step is told to a narrator callback in plain words; the caller decides where that
//! goes (the test's stderr, the demo's stdout). Everything started is stopped again, by PID,
//! and everything mounted below the scenario's directory is unmounted, also on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cleanup::Cleanup;
use crate::containerd::{Containerd, SnapshotRow, SNAPSHOTTER};
use crate::image::{build_test_image, TestImage};
use crate::process::ChildGuard;

/// The repository name the test image gets in containerd.
pub const IMAGE_REPO: &str = "veil.test/busybox-markers";
/// Its tag.
pub const IMAGE_TAG: &str = "v1";

/// How long the snapshotter may take to create its socket.
const VEIL_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd may take to reach a restarted snapshotter.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `veil-snapshotter` as a child process.
pub struct VeilSnapshotter {
    binary: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    log_dir: PathBuf,
    config: Option<PathBuf>,
    /// Start with core dumps allowed, working in this directory ([`crate::core_dumps`]).
    core_dir: Option<PathBuf>,
    guard: Option<ChildGuard>,
    /// PIDs of every instance started, in order.
    pub pids: Vec<u32>,
    /// Log files of every instance started, in order.
    pub logs: Vec<PathBuf>,
}

impl VeilSnapshotter {
    /// A snapshotter that will keep its metadata in `root` and serve on `socket`; its logs go
    /// to `log_dir/veil-snapshotter-<n>.log`. Not started yet.
    pub fn new(binary: PathBuf, root: PathBuf, socket: PathBuf, log_dir: PathBuf) -> Self {
        Self {
            binary,
            root,
            socket,
            log_dir,
            config: None,
            core_dir: None,
            guard: None,
            pids: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// Starts it with `--config FILE` (the daemon's TOML config) from now on.
    pub fn with_config(mut self, file: PathBuf) -> Self {
        self.config = Some(file);
        self
    }

    /// From the next start on, start it with `RLIMIT_CORE` unlimited and `dir` as its
    /// working directory (where a core file would land), or as usual (`None`).
    pub fn set_core_dumps(&mut self, dir: Option<PathBuf>) {
        self.core_dir = dir;
    }

    /// The socket containerd's proxy plugin dials.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The metadata root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts `veil-snapshotter [--config FILE] --root ROOT --address SOCKET` (RUST_LOG=info
    /// unless set) and waits for the socket to appear. Returns the PID.
    pub fn start(&mut self) -> anyhow::Result<u32> {
        if self.guard.is_some() {
            bail!("veil-snapshotter is already running");
        }
        let log = self
            .log_dir
            .join(format!("veil-snapshotter-{}.log", self.pids.len() + 1));
        let mut cmd = Command::new(&self.binary);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--address")
            .arg(&self.socket)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if let Some(dir) = &self.core_dir {
            crate::core_dumps::raise_core_limit(&mut cmd, dir);
        }
        let mut guard = ChildGuard::spawn("veil-snapshotter", cmd, &log)?;
        let pid = guard.pid();
        self.pids.push(pid);
        self.logs.push(log);
        let waited = guard.wait_for_path(&self.socket, VEIL_START_TIMEOUT);
        self.guard = Some(guard);
        waited?;
        Ok(pid)
    }

    /// Stops the running instance with SIGTERM (SIGKILL after five seconds); returns its exit
    /// status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.guard.take().and_then(|mut g| g.stop())
    }

    /// Kills the running instance with SIGKILL (no clean-up of its own); returns its exit
    /// status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.guard
            .take()
            .and_then(|mut g| g.stop_with(libc::SIGKILL, Duration::from_secs(5)))
    }

    /// Starts `binary` from the next start on (an upgrade: another copy of the program).
    pub fn set_binary(&mut self, binary: PathBuf) {
        self.binary = binary;
    }

    /// Fails with the log if the running instance has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.guard.as_mut() {
            Some(g) => g.check_running(),
            None => bail!("veil-snapshotter is not running"),
        }
    }

    /// The log of the latest instance.
    pub fn log_text(&self) -> String {
        self.logs
            .last()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for VeilSnapshotter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What happened, for the caller to check or show.
#[derive(Debug)]
pub struct Report {
    pub image: TestImage,
    /// The `ctr plugins ls` status of the `veil` snapshotter.
    pub plugin_status: String,
    /// containerd's config file (kept only while the scenario runs).
    pub containerd_config: String,
    /// `ctr images import` output.
    pub import_output: String,
    /// Snapshots in Veil after the import.
    pub snapshots_after_import: Vec<SnapshotRow>,
    /// Output of the container run before the restart.
    pub first_run: String,
    /// Exit status of the first snapshotter on SIGTERM.
    pub veil_exit: Option<ExitStatus>,
    /// Whether the first snapshotter left its socket file behind when it stopped.
    pub socket_left_after_stop: bool,
    /// Errors `ctr` reported while containerd reconnected to the restarted snapshotter.
    pub reconnect_errors: Vec<String>,
    /// How long containerd took to reach the restarted snapshotter.
    pub reconnect_time: Duration,
    /// Snapshots in Veil after the restart (before the second run).
    pub snapshots_after_restart: Vec<SnapshotRow>,
    /// Output of the container run after the restart.
    pub second_run: String,
    /// Snapshots in Veil at the end (after the second run).
    pub snapshots_at_end: Vec<SnapshotRow>,
    /// Last lines of the snapshotters' logs.
    pub veil_log_tail: Vec<String>,
    /// What the clean-up at the end found.
    pub cleanup: Cleanup,
}

/// The running parts. Field order is drop order: containerd goes before the snapshotter.
struct Stack {
    containerd: Option<Containerd>,
    veil: VeilSnapshotter,
    dir: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            c.shutdown();
        }
        self.veil.stop();
        crate::mounts::unmount_below(&self.dir);
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Runs the whole scenario in `dir` (an empty directory owned by the caller), telling each
/// step to `say`. `veil_bin` is the `veil-snapshotter` binary.
pub fn run(dir: &Path, veil_bin: &Path, say: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let dir = dir.canonicalize()?;
    let veil = VeilSnapshotter::new(
        veil_bin.to_path_buf(),
        dir.join("veil"),
        dir.join("veil.sock"),
        dir.clone(),
    );
    let mut stack = Stack {
        containerd: None,
        veil,
        dir: dir.clone(),
    };
    let result = steps(&dir, &mut stack, say);
    match result {
        Ok(mut report) => {
            say(
                "Cleaning up: deleting leftover tasks and containers, stopping containerd, \
                 then veil-snapshotter (SIGTERM).",
            );
            let cd = stack.containerd.take().expect("containerd was started");
            report.cleanup = Cleanup::run(&dir, cd, &mut stack.veil, None);
            report.veil_log_tail = tail(&stack.veil.log_text(), 15);
            Ok(report)
        }
        Err(e) => {
            // Gather logs before the stack's Drop cleans everything up.
            let msg = log_tails(&stack.veil, stack.containerd.as_ref());
            drop(stack);
            Err(anyhow::anyhow!("{e:#}\n\nThe logs:{msg}"))
        }
    }
}

/// The last 40 lines of every veil-snapshotter log and of containerd's, for errors.
pub fn log_tails(veil: &VeilSnapshotter, containerd: Option<&Containerd>) -> String {
    let mut msg = String::new();
    let mut add = |path: &Path, text: &str| {
        msg.push_str(&format!(
            "\n--- last lines of {} ---\n{}",
            path.display(),
            tail(text, 40).join("\n")
        ));
    };
    for log in &veil.logs {
        add(log, &std::fs::read_to_string(log).unwrap_or_default());
    }
    if let Some(cd) = containerd {
        add(cd.log_path(), &cd.log_text());
    }
    msg
}

fn steps(dir: &Path, stack: &mut Stack, say: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    // 1. The image.
    let image_dir = dir.join("image");
    std::fs::create_dir_all(&image_dir)?;
    let image =
        build_test_image(&image_dir, IMAGE_REPO, IMAGE_TAG).context("building the image")?;
    say(&format!(
        "Built the OCI image {} locally with umoci: {} layers (busybox-static and {} in layer 1; \
         layer 2 adds {} and deletes {}). Packed as the OCI archive {}.",
        image.reference,
        image.layer_count(),
        image.marker_path,
        image.layer2_path,
        image.deleted_path,
        image.archive.display()
    ));

    // 2. The snapshotter.
    let pid = stack.veil.start().context("starting veil-snapshotter")?;
    say(&format!(
        "Started veil-snapshotter (PID {pid}) with its metadata in {} and its gRPC socket at {}.",
        stack.veil.root().display(),
        stack.veil.socket().display()
    ));

    // 3. containerd.
    let cd = Containerd::start(&dir.join("containerd"), stack.veil.socket())
        .context("starting containerd")?;
    say(&format!(
        "Started a private containerd (PID {}, socket {}) with the CRI plugin disabled and the \
         proxy snapshotter plugin \"{SNAPSHOTTER}\" pointing at {}. Its config is {}.",
        cd.pid(),
        cd.address().display(),
        stack.veil.socket().display(),
        cd.config_path().display()
    ));
    let containerd_config = std::fs::read_to_string(cd.config_path())?;
    let proxy_section: String = containerd_config
        .lines()
        .skip_while(|l| !l.starts_with("[proxy_plugins]"))
        .collect::<Vec<_>>()
        .join("\n");
    say(&format!(
        "The part of containerd's config that registers Veil:\n{}",
        indent(&proxy_section)
    ));
    let cd = stack.containerd.insert(cd);

    // 4. The plugin is registered.
    let plugin_status = cd
        .plugin_status("io.containerd.snapshotter.v1", SNAPSHOTTER)?
        .with_context(|| {
            format!(
                "`ctr plugins ls` does not list io.containerd.snapshotter.v1 {SNAPSHOTTER}:\n{}",
                cd.ctr_stdout(&["plugins", "ls"]).unwrap_or_default()
            )
        })?;
    say(&format!(
        "`ctr plugins ls` lists the snapshotter \"{SNAPSHOTTER}\" with status {plugin_status}."
    ));

    // 5. Import into Veil.
    let import_output = cd
        .import(
            SNAPSHOTTER,
            &image.archive,
            &image.base_name,
            &image.reference,
        )
        .context("importing the image into the veil snapshotter")?;
    let snapshots_after_import = cd.snapshots(SNAPSHOTTER)?;
    say(&format!(
        "Imported the image with `ctr images import --snapshotter {SNAPSHOTTER}`: containerd \
         unpacked its layers into Veil, which now holds {} snapshot(s):\n{}",
        snapshots_after_import.len(),
        show_snapshots(&snapshots_after_import)
    ));

    // 6. First run.
    let script = image.check_script();
    let cmd = ["/bin/sh", "-c", script.as_str()];
    let first_run = cd
        .run_container(SNAPSHOTTER, &image.reference, "veil-run-1", &cmd)
        .context("running the first container")?;
    say(&format!(
        "Ran container veil-run-1 with `ctr run --rm --snapshotter {SNAPSHOTTER}`; it read files \
         from both layers. Its output was:\n{}",
        indent(&first_run)
    ));

    // 7. Restart the snapshotter.
    let old_pid = *stack.veil.pids.last().unwrap_or(&0);
    let veil_exit = stack.veil.stop();
    let socket_left_after_stop = stack.veil.socket().exists();
    say(&format!(
        "Stopped veil-snapshotter (PID {old_pid}) with SIGTERM: {}{}.",
        veil_exit
            .map(|s| s.to_string())
            .unwrap_or_else(|| "no exit status".into()),
        if socket_left_after_stop {
            "; it left its socket file behind"
        } else {
            "; it removed its socket file"
        }
    ));
    let pid = stack
        .veil
        .start()
        .context("starting veil-snapshotter again on the same root")?;
    let cd = stack.containerd.as_ref().expect("started above");
    let Reconnect {
        snapshots: snapshots_after_restart,
        time: reconnect_time,
        errors: reconnect_errors,
    } = wait_for_reconnect(cd, &mut stack.veil)?;
    say(&format!(
        "Started veil-snapshotter again (PID {pid}) on the same root. containerd reached it after \
         {reconnect_time:.1?}{}. Veil still holds {} snapshot(s):\n{}",
        if reconnect_errors.is_empty() {
            String::new()
        } else {
            format!(
                " ({} distinct error(s) while reconnecting)",
                reconnect_errors.len()
            )
        },
        snapshots_after_restart.len(),
        show_snapshots(&snapshots_after_restart)
    ));

    // 8. Second run.
    let second_run = cd
        .run_container(SNAPSHOTTER, &image.reference, "veil-run-2", &cmd)
        .context("running the container again after the snapshotter restarted")?;
    say(&format!(
        "Ran container veil-run-2 from the same image after the restart. Its output was:\n{}",
        indent(&second_run)
    ));
    let snapshots_at_end = cd.snapshots(SNAPSHOTTER)?;
    say(&format!(
        "`ctr snapshots --snapshotter {SNAPSHOTTER} ls` now shows:\n{}",
        show_snapshots(&snapshots_at_end)
    ));

    Ok(Report {
        image,
        plugin_status,
        containerd_config,
        import_output,
        snapshots_after_import,
        first_run,
        veil_exit,
        socket_left_after_stop,
        reconnect_errors,
        reconnect_time,
        snapshots_after_restart,
        second_run,
        snapshots_at_end,
        veil_log_tail: Vec::new(),
        cleanup: Cleanup::default(),
    })
}

/// What [`wait_for_reconnect`] saw.
#[derive(Debug, Clone, Default)]
pub struct Reconnect {
    /// `ctr snapshots ls` once it worked.
    pub snapshots: Vec<SnapshotRow>,
    /// How long it took.
    pub time: Duration,
    /// Distinct errors `ctr` reported on the way (its last line each).
    pub errors: Vec<String>,
}

/// Waits (at most [`RECONNECT_TIMEOUT`]) until containerd reaches a restarted snapshotter:
/// `ctr snapshots --snapshotter veil ls` works again. Fails if the snapshotter exits.
pub fn wait_for_reconnect(
    cd: &Containerd,
    veil: &mut VeilSnapshotter,
) -> anyhow::Result<Reconnect> {
    let start = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    loop {
        veil.check_running()?;
        match cd.snapshots(SNAPSHOTTER) {
            Ok(snapshots) => {
                return Ok(Reconnect {
                    snapshots,
                    time: start.elapsed(),
                    errors,
                })
            }
            Err(e) => {
                // ctr's own message is the last line of the error.
                let e = format!("{e:#}");
                let e = e
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .to_string();
                if !errors.contains(&e) {
                    errors.push(e.clone());
                }
                if start.elapsed() > RECONNECT_TIMEOUT {
                    bail!(
                        "containerd could not reach the restarted snapshotter within \
                         {RECONNECT_TIMEOUT:?}; last error:\n{e}"
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// Snapshot rows as an indented table.
pub fn show_snapshots(rows: &[SnapshotRow]) -> String {
    if rows.is_empty() {
        return "    (none)".into();
    }
    rows.iter()
        .map(|r| {
            format!(
                "    {:<10} {}{}",
                r.kind,
                r.key,
                if r.parent.is_empty() {
                    String::new()
                } else {
                    format!("  (parent {})", r.parent)
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text indented by four spaces, one line per line.
pub fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (nothing)".into();
    }
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
