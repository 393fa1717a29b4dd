//! Running an image's workload once for `veil optimize`: an OCI bundle over a mounted
//! image (a writable overlay on top, in a private temporary directory) run with `runc`,
//! the process being the image's Entrypoint + Cmd (or `/bin/sh -c CMD`), with a time
//! limit. The runtime spec is the one `veil-guest` writes for kata-agent
//! (`veil_guest::spec::runtime_spec`: env, cwd and user from the image config).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_spec::image::ImageConfiguration;
use veil_guest::spec::{runtime_spec, BUNDLE_CONFIG, BUNDLE_ROOTFS};
use veil_image::image_mount::{detach, mount_overlay, Writable};

/// How often the runner looks whether the workload has ended.
const POLL: Duration = Duration::from_millis(50);
/// The most bytes of the workload's output kept for an error message.
const OUTPUT_TAIL: usize = 4096;

/// The command to run: the image's own, or a shell command.
#[derive(Debug, Clone)]
pub enum Workload {
    /// The image config's Entrypoint + Cmd.
    Image,
    /// `/bin/sh -c CMD` in the image.
    Shell(String),
}

/// How a workload run ended.
#[derive(Debug)]
pub struct Finished {
    /// runc's exit status (the container process's).
    pub status: ExitStatus,
    /// How long it ran.
    pub took: Duration,
    /// The end of what it wrote to stdout and stderr.
    pub output: String,
}

/// An OCI bundle whose root is a writable overlay over a mounted image; the overlay is
/// unmounted when it is dropped.
pub struct Bundle {
    dir: PathBuf,
    rootfs: PathBuf,
    mounted: bool,
}

impl Bundle {
    /// Makes the bundle in `dir` (an empty private directory) over the image mounted at
    /// `image_root`, with the process of `workload` as `config` says.
    pub fn new(
        dir: &Path,
        image_root: &Path,
        config: &ImageConfiguration,
        workload: &Workload,
    ) -> anyhow::Result<Self> {
        let rootfs = dir.join(BUNDLE_ROOTFS);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        mount_overlay(
            "veil-optimize",
            &[image_root.to_path_buf()],
            Some(Writable {
                upper: &upper,
                work: &work,
            }),
            &rootfs,
        )
        .context("mounting the container's writable root over the image")?;
        let bundle = Self {
            dir: dir.to_path_buf(),
            rootfs,
            mounted: true,
        };
        let mut spec = runtime_spec(config, &bundle.rootfs).map_err(anyhow::Error::msg)?;
        let mut process = spec.process().clone().unwrap_or_default();
        match workload {
            Workload::Shell(cmd) => {
                process.set_args(Some(vec!["/bin/sh".into(), "-c".into(), cmd.clone()]));
            }
            Workload::Image
                if spec
                    .process()
                    .as_ref()
                    .and_then(|p| p.args().as_ref())
                    .is_none() =>
            {
                bail!("the image has no Entrypoint or Cmd: give the command with --cmd")
            }
            Workload::Image => {}
        }
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        let path = dir.join(BUNDLE_CONFIG);
        spec.save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(bundle)
    }

    /// Runs the bundle with `runc` as container `id`, killing it after `limit`.
    pub fn run(&self, id: &str, limit: Duration) -> anyhow::Result<Finished> {
        let state = self.dir.join("runc-state");
        std::fs::create_dir_all(&state)?;
        let log = self.dir.join("output");
        let out = std::fs::File::create(&log)?;
        let started = Instant::now();
        let mut child = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&self.dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting runc (is it installed?)")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > limit {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&state)
                    .args(["kill", id, "KILL"])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&state)
                    .args(["delete", "-f", id])
                    .status();
                bail!(
                    "the workload did not end within {} s (--timeout); killed it. Its output:\n{}",
                    limit.as_secs(),
                    tail(&log)
                );
            }
            std::thread::sleep(POLL);
        };
        Ok(Finished {
            status,
            took: started.elapsed(),
            output: tail(&log),
        })
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = detach(&self.rootfs) {
                eprintln!("veil optimize: unmounting {}: {e}", self.rootfs.display());
            }
            self.mounted = false;
        }
    }
}

/// The last [`OUTPUT_TAIL`] bytes of the file at `path`, as text.
fn tail(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    let from = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[from..])
        .trim_end()
        .to_string()
}
