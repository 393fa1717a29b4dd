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
