//! Core dumps on demand, for the test that a core dump of Veil holds no secret: processes
//! started with `RLIMIT_CORE` raised and their working directory in the test's directory,
//! and the kernel's `core_pattern` pointed there while the test runs.
//!
//! A plain relative `core_pattern` (Debian's default, `core`) already writes into the
//! dumping process's working directory and is used as it is. Any other pattern (a pipe to
//! systemd-coredump or apport, or an absolute path elsewhere) is replaced by
//! `<dir>/core.%p` for the test and restored when the [`CoreDumps`] guard is dropped, so
//! no core of a test process lands outside the test's directory.
//!
//! [`CoreDumps::control`] proves the set-up works: a dumpable process (`sleep`) under the
//! same conditions must leave a core file on SIGABRT, so "no core file" from Veil means
//! Veil refused to dump, not that the machine never dumps.

use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// Core files go to one directory while this lives (see the module documentation).
pub struct CoreDumps {
    dir: PathBuf,
    /// The pattern to put back, when this guard changed it.
    restore: Option<String>,
}

impl CoreDumps {
    /// Makes core files of processes started with [`raise_core_limit`] land in `dir`
    /// (created).
    pub fn prepare(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pattern = std::fs::read_to_string(CORE_PATTERN)
            .with_context(|| format!("reading {CORE_PATTERN}"))?;
        let pattern = pattern.trim_end_matches('\n').to_string();
        let plain_relative = !pattern.starts_with('|') && !pattern.starts_with('/');
        let mut restore = None;
        if !plain_relative {
            let ours = format!("{}/core.%p", dir.display());
            std::fs::write(CORE_PATTERN, &ours)
                .with_context(|| format!("setting {CORE_PATTERN} to {ours}"))?;
            eprintln!("[core-dumps] core_pattern {pattern:?} set to {ours:?} for the test");
            restore = Some(pattern);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            restore,
        })
    }

    /// Where core files land.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Core files in the directory now (names starting with `core`).
    pub fn cores(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// Dumps a dumpable `sleep` with SIGABRT under the same conditions: it must leave a
    /// core file here (removed again). Fails, saying why, when this machine writes none.
    pub fn control(&self) -> anyhow::Result<()> {
        let before = self.cores();
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        raise_core_limit(&mut cmd, &self.dir);
        let mut child = cmd.spawn().context("starting sleep")?;
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill(2) on the PID of the child we just started.
        unsafe { libc::kill(child.id() as i32, libc::SIGABRT) };
        let status = child.wait()?;
        let start = Instant::now();
        let mut new: Vec<PathBuf> = Vec::new();
        while start.elapsed() < Duration::from_secs(10) {
            new = self
                .cores()
                .into_iter()
                .filter(|c| !before.contains(c))
                .collect();
            if !new.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for core in &new {
            let _ = std::fs::remove_file(core);
        }
        if !status.core_dumped() || new.is_empty() {
            bail!(
                "control: a dumpable process killed by SIGABRT left no core file in {} \
                 (status {status}, core_pattern {:?}): this machine cannot show whether \
                 Veil dumps core",
                self.dir.display(),
                std::fs::read_to_string(CORE_PATTERN)
                    .unwrap_or_default()
                    .trim()
            );
        }
        Ok(())
    }
}

impl Drop for CoreDumps {
    fn drop(&mut self) {
        if let Some(pattern) = self.restore.take() {
            if let Err(e) = std::fs::write(CORE_PATTERN, &pattern) {
                eprintln!("[core-dumps] could not restore core_pattern {pattern:?}: {e}");
            }
        }
    }
}

/// Starts `cmd` with an unlimited `RLIMIT_CORE` and `dir` as its working directory (where
/// a relative `core_pattern` writes).
pub fn raise_core_limit(cmd: &mut Command, dir: &Path) {
    cmd.current_dir(dir);
    // SAFETY: setrlimit is async-signal-safe and only changes the child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &unlimited) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
