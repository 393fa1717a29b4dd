//! OCI bundles a guest pull made (`bundle/config.json` + `bundle/rootfs`), used as
//! kata-agent uses them: run with real `runc` (the process rewritten to a test script),
//! and the root unmounted with umount(2) afterwards.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id);
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
