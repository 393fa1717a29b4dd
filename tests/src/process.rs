//! Child processes owned by a test: stopped by PID when the guard is dropped.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process a test started. Dropping the guard sends SIGTERM to that PID, waits up to
/// five seconds, then sends SIGKILL. Its stdout and stderr go to a log file so a failing
/// test can show them.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl ChildGuard {
    /// Starts `cmd` with its output sent to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({cmd:?}): {e}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What the process has written so far.
    pub fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Fails with the process's output if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "{} exited early ({status}); its output:\n{}",
                    self.name,
                    self.output()
                );
            }
        }
        Ok(())
    }

    /// Waits until `path` exists (a socket, a pid file), failing if the process exits
    /// first or `timeout` passes.
    pub fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !path.exists() {
            self.check_running()?;
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "{} did not create {} within {:?}; its output:\n{}",
                    self.name,
                    path.display(),
                    timeout,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Sends `signal` and waits for the process to exit, returning its exit status.
    pub fn stop_with(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process with SIGTERM (SIGKILL after five seconds).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.stop_with(libc::SIGTERM, Duration::from_secs(5))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` to its end, its output kept in files named after `stem` (`STEM.stdout`,
/// `STEM.stderr`); if it has not exited after `timeout`, it is killed (by its PID) and
/// this fails with what it printed.
pub fn run_with_timeout(
    mut cmd: Command,
    timeout: Duration,
    stem: &Path,
) -> anyhow::Result<std::process::Output> {
    let out_path = stem.with_extension("stdout");
    let err_path = stem.with_extension("stderr");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {cmd:?}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "{cmd:?} did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(std::process::Output {
        status,
        stdout: std::fs::read(&out_path)?,
        stderr: std::fs::read(&err_path)?,
    })
}

/// Runs `f` on its own thread and waits at most `timeout` for it: a call that hangs (a
/// read from a FUSE mount that never answers) fails the test instead of blocking it. The
/// thread of a call that timed out is left behind; it ends once whatever blocks it is
/// taken away (the test's clean-up stops the serving process).
pub fn bounded<T, F>(what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    rx.recv_timeout(timeout)
        .map_err(|_| anyhow::anyhow!("{what} did not finish within {timeout:?}"))
}
