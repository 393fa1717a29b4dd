//! A memory-limited cgroup for one process a test started, made below the test's own
//! memory cgroup and removed again when dropped (after the process has exited).
//! cgroup v1 (`memory.limit_in_bytes`) or v2 (`memory.max`), whichever this machine
//! mounts.

use std::path::PathBuf;

use anyhow::{bail, Context};

/// The cgroup; dropping it removes the directory (the kernel refuses while a process is
/// in it: stop the process first).
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// Makes cgroup `name` below this process's memory cgroup with a limit of `limit`
    /// bytes.
    pub fn create(name: &str, limit: u64) -> anyhow::Result<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let (base, v2) = if let Some(path) = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        {
            (
                PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
                false,
            )
        } else if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
            (
                PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/')),
                true,
            )
        } else {
            bail!("no memory cgroup in /proc/self/cgroup: {own}");
        };
        let dir = base.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let this = Self { dir, v2 };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(this.dir.join(file), limit.to_string())
            .with_context(|| format!("setting {file} of {}", this.dir.display()))?;
        Ok(this)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether it is a cgroup v2 (unified) cgroup.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// How many processes of the cgroup the kernel's OOM killer killed (`oom_kill` of
    /// v1 `memory.oom_control`, v2 `memory.events`), if the kernel reports it.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }

    /// Peak memory charged to the cgroup (process memory and its page cache), if the
    /// kernel reports it.
    pub fn peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// How often the limit was hit (v1 `memory.failcnt`; v2 `max` events).
    pub fn limit_hits(&self) -> Option<u64> {
        if self.v2 {
            let events = std::fs::read_to_string(self.dir.join("memory.events")).ok()?;
            events
                .lines()
                .find_map(|l| l.strip_prefix("max "))
                .and_then(|v| v.trim().parse().ok())
        } else {
            std::fs::read_to_string(self.dir.join("memory.failcnt"))
                .ok()?
                .trim()
                .parse()
                .ok()
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `VmRSS` and `VmHWM` (peak resident set) of process `pid`, in bytes.
pub fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kib << 10)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
