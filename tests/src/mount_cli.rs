//! `veil mount` / `veil umount` driven from a test, and reading through the mount without
//! ever blocking the test.
//!
//! `veil mount` starts a detached serving process (in its own session) and returns once
//! the image is mounted, printing that process's PID. A [`VeilMount`] remembers the mount
//! point, the `--state-dir` (inside the test's directory) and that PID, and when dropped
//! takes down whatever is left: the stacked mount at the mount point, the serving process
//! (by PID, and any other `veil mount --foreground` process whose command line names this
//! test's mount point, in case `veil mount` itself failed before printing one), and the
//! layers' FUSE mounts under the state directory.

use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::containerd::process_alive;
use crate::process::{bounded, run_with_timeout};

/// How long `veil mount` may take (it resolves the image and reads every layer's TOC).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);

/// One image mount point made by `veil mount`.
pub struct VeilMount {
    /// The mount point.
    pub dir: PathBuf,
    /// What `--state-dir` is given.
    pub state_dir: PathBuf,
    /// Where the outputs of `veil` commands are kept.
    work: PathBuf,
    /// The serving process, as `veil mount` printed it.
    pid: Option<u32>,
    runs: u32,
}

impl VeilMount {
    /// A mount point `dir` with the state directory `state_dir`, outputs kept in `work`
    /// (all inside the test's directory; `dir` is created unless it exists).
    pub fn new(dir: &Path, state_dir: &Path, work: &Path) -> anyhow::Result<Self> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::create_dir_all(work)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            work: work.to_path_buf(),
            pid: None,
            runs: 0,
        })
    }

    fn veil(&mut self, args: &[&std::ffi::OsStr], timeout: Duration) -> anyhow::Result<Output> {
        self.runs += 1;
        let mut cmd = Command::new(crate::veil_binary("veil"));
        cmd.args(args);
        run_with_timeout(cmd, timeout, &self.work.join(format!("veil-{}", self.runs)))
    }

    /// `veil mount --plain-http --state-dir STATE REF DIR`. Remembers the serving PID when
    /// it succeeds.
    pub fn mount(&mut self, reference: &str) -> anyhow::Result<Output> {
        self.mount_with(reference, &[])
    }

    /// [`mount`](Self::mount) with `extra` options before REF (e.g. `--keys-dir DIR`).
    pub fn mount_with(
        &mut self,
        reference: &str,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Output> {
        let (state, dir) = (self.state_dir.clone(), self.dir.clone());
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "mount".as_ref(),
            "--plain-http".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ];
        args.extend_from_slice(extra);
        args.push(reference.as_ref());
        args.push(dir.as_os_str());
        let out = self.veil(&args, MOUNT_TIMEOUT)?;
        if out.status.success() {
            self.pid = parse_serving_pid(&String::from_utf8_lossy(&out.stdout));
        }
        Ok(out)
    }

    /// `veil umount DIR`.
    pub fn umount(&mut self) -> anyhow::Result<Output> {
        let dir = self.dir.clone();
        self.veil(
            &["umount".as_ref(), dir.as_os_str()],
            Duration::from_secs(30),
        )
    }

    /// The serving process's PID, as `veil mount` printed it.
    pub fn serving_pid(&self) -> Option<u32> {
        self.pid
    }

    /// The serving process's log: `STATE/<mount point with every non-alphanumeric
    /// character replaced by _>.log`, as `veil mount` names it.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.log", self.mount_name()))
    }

    /// The per-mount state directory (holding the layers' mount points).
    pub fn mount_state_dir(&self) -> PathBuf {
        self.state_dir.join(self.mount_name())
    }

    fn mount_name(&self) -> String {
        let dir = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        dir.to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    }

    /// What the serving process has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the mount point is mounted.
    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.dir)
    }

    /// Waits until the serving process has exited; `false` if it is still alive after
    /// `timeout`.
    pub fn wait_serving_exit(&self, timeout: Duration) -> bool {
        let Some(pid) = self.pid else {
            return true;
        };
        let start = Instant::now();
        while process_alive(pid) {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Serving processes of this mount point still alive: the PID `veil mount` printed,
    /// and any `veil mount --foreground` whose arguments name this mount point.
    pub fn serving_processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.pid.filter(|p| process_alive(*p)).into_iter().collect();
        let dir = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        let dir = std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).to_vec();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let ours = args.contains(&b"mount".as_slice())
                    && args.contains(&b"--foreground".as_slice())
                    && args.contains(&dir.as_slice());
                if ours && process_alive(pid) && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Takes down whatever is left (see the module docs); returns what it found, for
    /// tests that check the clean-up happened by itself.
    pub fn cleanup(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        if self.is_mounted() {
            found.push(format!("{} still mounted", self.dir.display()));
            crate::unmount_below(&self.dir);
        }
        for pid in self.serving_processes() {
            found.push(format!("serving process {pid} still alive"));
            stop_pid(pid);
        }
        let mounts = crate::mounts::mounts_below(&self.state_dir);
        if !mounts.is_empty() {
            found.push(format!("mounts left under the state dir: {mounts:?}"));
            crate::unmount_below(&self.state_dir);
        }
        found
    }
}

impl Drop for VeilMount {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// SIGTERM to `pid`, then SIGKILL if it is still alive after five seconds.
fn stop_pid(pid: u32) {
    // SAFETY: kill(2) on a PID whose command line we just checked is ours.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    while process_alive(pid) {
        if start.elapsed() > Duration::from_secs(5) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The PID in `veil mount`'s "… (served by pid N, log …)".
pub fn parse_serving_pid(stdout: &str) -> Option<u32> {
    let (_, rest) = stdout.split_once("served by pid ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether `path` is a mount point (`/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    crate::mounts::mounts_below(&path)
        .iter()
        .any(|m| Path::new(m) == path)
}

/// How long one read through a mount may take before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads all of `path` (bounded by `timeout`).
pub fn read_file(path: &Path, timeout: Duration) -> anyhow::Result<std::io::Result<Vec<u8>>> {
    let p = path.to_path_buf();
    bounded(&format!("reading {}", path.display()), timeout, move || {
        std::fs::read(p)
    })
}

/// Reads `len` bytes of `path` at `offset` (bounded by `timeout`); fewer only at the end
/// of the file.
pub fn read_at(
    path: &Path,
    offset: u64,
    len: usize,
    timeout: Duration,
) -> anyhow::Result<std::io::Result<Vec<u8>>> {
    let p = path.to_path_buf();
    bounded(
        &format!("reading {len} bytes of {} at {offset}", path.display()),
        timeout,
        move || {
            let file = std::fs::File::open(p)?;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match file.read_at(&mut buf[got..], offset + got as u64)? {
                    0 => break,
                    n => got += n,
                }
            }
            buf.truncate(got);
            Ok(buf)
        },
    )
}

/// Reads `path` from the start, 1 MiB at a time, until its end or the first error:
/// returns the bytes read before it stopped and the error, if any (bounded by `timeout`).
pub fn read_until_error(
    path: &Path,
    timeout: Duration,
) -> anyhow::Result<(Vec<u8>, Option<std::io::Error>)> {
    let p = path.to_path_buf();
    bounded(&format!("reading {}", path.display()), timeout, move || {
        let mut file = match std::fs::File::open(p) {
            Ok(f) => f,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return (out, Some(e)),
            }
        }
    })
}

/// The hex SHA-256 of `path`'s contents (bounded by `timeout`).
pub fn sha256_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    let (data, err) = read_until_error(path, timeout)?;
    if let Some(e) = err {
        return Err(e).with_context(|| {
            format!(
                "reading {} failed after {} bytes",
                path.display(),
                data.len()
            )
        });
    }
    Ok(crate::lazy_image::sha256_hex(&data))
}

/// Fails unless `out` is a successful run, showing its output.
pub fn expect_success(what: &str, out: &Output) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
