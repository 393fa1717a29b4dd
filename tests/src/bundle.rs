//! OCI bundles a guest pull made (`bundle/config.json` + `bundle/rootfs`), used as
//! kata-agent uses them: run with real `runc` (the process rewritten to a test script),
//! and the root unmounted with umount(2) afterwards.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::run_with_timeout;

/// How long one `runc run` may take.
pub const RUNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Rewrites `bundle/config.json`'s `process.args` to `/bin/sh -c script` (the rest as
/// the puller wrote it; its root must be `rootfs`), runs the bundle with `runc run` as
/// container `id` (state below `dir/runc-state`, output kept in `dir/runc-<id>.*`), and
/// returns what it printed; fails with its output if it did not exit 0.
pub fn runc_run_script(
    dir: &Path,
    bundle: &Path,
    id: &str,
    script: &str,
) -> anyhow::Result<String> {
    let cmd = runc_command(dir, bundle, id, script)?;
    let out = run_with_timeout(cmd, RUNC_TIMEOUT, &dir.join(format!("runc-{id}")))?;
    if !out.status.success() {
        bail!(
            "runc run {id} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `runc run` of `bundle` as container `id`, its process rewritten to `/bin/sh -c script`.
fn runc_command(dir: &Path, bundle: &Path, id: &str, script: &str) -> anyhow::Result<Command> {
    runc_command_with(dir, bundle, id, script, &[])
}

/// [`runc_command`] with `flags` for `runc run` (e.g. `--detach`).
fn runc_command_with(
    dir: &Path,
    bundle: &Path,
    id: &str,
    script: &str,
    flags: &[&str],
) -> anyhow::Result<Command> {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    if spec["root"]["path"] != "rootfs" {
        bail!("config.json's root is {}, expected rootfs", spec["root"]);
    }
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    let state = dir.join("runc-state");
    std::fs::create_dir_all(&state)?;
    let mut cmd = Command::new("runc");
    cmd.arg("--root")
        .arg(&state)
        .arg("run")
        .args(flags)
        .arg("--bundle")
        .arg(bundle)
        .arg(id);
    Ok(cmd)
}

/// Starts `bundle` with `runc run --detach` as container `id`, its process rewritten to
/// `/bin/sh -c script` (a long-running one: the caller stops it with
/// [`runc_kill_remove`]); runc's own output goes to `dir/runc-<id>.*`.
pub fn runc_run_detached(dir: &Path, bundle: &Path, id: &str, script: &str) -> anyhow::Result<()> {
    let cmd = runc_command_with(dir, bundle, id, script, &["--detach"])?;
    let out = run_with_timeout(cmd, RUNC_TIMEOUT, &dir.join(format!("runc-{id}")))?;
    if !out.status.success() {
        bail!(
            "runc run --detach {id} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Kills container `id` (SIGKILL) and deletes it (`runc delete --force`).
pub fn runc_kill_remove(dir: &Path, id: &str) -> anyhow::Result<()> {
    let state = dir.join("runc-state");
    let mut cmd = Command::new("runc");
    cmd.arg("--root")
        .arg(&state)
        .args(["delete", "--force", id]);
    let out = run_with_timeout(cmd, RUNC_TIMEOUT, &dir.join(format!("runc-delete-{id}")))?;
    if !out.status.success() {
        bail!(
            "runc delete --force {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What a timed container run printed, and when.
#[derive(Debug, Clone)]
pub struct TimedRun {
    /// When the first byte of its output came, measured from `since`.
    pub first_output: Duration,
    /// When it exited, measured from `since`.
    pub exited: Duration,
    /// Everything it printed on stdout.
    pub stdout: String,
}

/// As [`runc_run_script`], timing the container's first output byte and its exit from
/// `since`; killed (by PID) after [`RUNC_TIMEOUT`].
pub fn runc_run_timed(
    dir: &Path,
    bundle: &Path,
    id: &str,
    script: &str,
    since: Instant,
) -> anyhow::Result<TimedRun> {
    let mut cmd = runc_command(dir, bundle, id, script)?;
    let stderr = std::fs::File::create(dir.join(format!("runc-{id}.stderr")))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .context("starting runc")?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("runc's stdout")?;
    let reader = std::thread::spawn(move || -> (Option<Duration>, Vec<u8>) {
        let (mut first, mut all, mut buf) = (None, Vec::new(), [0u8; 4096]);
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            first.get_or_insert_with(|| since.elapsed());
            all.extend_from_slice(&buf[..n]);
        }
        (first, all)
    });
    let deadline = Instant::now() + RUNC_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the PID of our own unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = child.wait();
            bail!("runc run {id} did not finish within {RUNC_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let exited = since.elapsed();
    let (first, out) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader of runc's output panicked"))?;
    let stdout = String::from_utf8_lossy(&out).into_owned();
    if !status.success() {
        bail!(
            "runc run {id} failed ({status}): {stdout}{}",
            std::fs::read_to_string(dir.join(format!("runc-{id}.stderr"))).unwrap_or_default()
        );
    }
    Ok(TimedRun {
        first_output: first.context("the container printed nothing")?,
        exited,
        stdout,
    })
}

/// Unmounts `bundle/rootfs` as kata-agent does (umount(2), not lazy) and fails unless the
/// directory is empty afterwards.
pub fn unmount_rootfs(bundle: &Path) -> anyhow::Result<()> {
    let rootfs = bundle.join("rootfs");
    let c = std::ffi::CString::new(rootfs.to_string_lossy().as_bytes())?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        bail!(
            "umount {}: {}",
            rootfs.display(),
            std::io::Error::last_os_error()
        );
    }
    let entries: Vec<_> = std::fs::read_dir(&rootfs)?.collect();
    if !entries.is_empty() {
        bail!(
            "{} is not empty after umount: {entries:?}",
            rootfs.display()
        );
    }
    Ok(())
}
