//! One cold start inside a memory-limited cgroup, sized like a small confidential VM:
//! the daemon side (containerd and its shims, and for Veil veil-snapshotter) and the
//! workload's container are charged to one cgroup, whose limit is the guest's memory;
//! the guest's files (containerd's root: content store, metadata, snapshots; Veil's root:
//! metadata, caches) are on a tmpfs of half that size, as in a CoCo guest, whose `/run`
//! is memory. Sockets, logs and the clients' output stay on disk, so that an error
//! message survives a full tmpfs.
//!
//! The cgroup is made below the bench's own memory cgroup (cgroup v1:
//! `memory.limit_in_bytes`, peak `memory.max_usage_in_bytes`, OOM kills in
//! `memory.oom_control`; v2: `memory.max`, `memory.peak`, `memory.events`). The processes
//! are moved in right after they start (what they allocated before stays charged where
//! it was: their start-up). The container gets a cgroup of its own inside it: on v1 a
//! relative `ctr run --cgroup` path, which runc resolves below its own cgroup (the
//! shim's, ours) in the memory hierarchy; on v2 (where a cgroup with processes cannot
//! have children with controllers) the daemons go into a `daemon` leaf and the
//! container into a sibling, by absolute path. The `ctr` and `veil pull` clients are
//! not charged: in a guest, the puller is part of the agent the daemon stands for, and
//! their memory is a few MiB.
//!
//! Running out of memory (the kernel's OOM killer in the cgroup) or out of space on the
//! tmpfs is a result ([`Verdict`]), not an error of the bench.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use veil_tests::containerd::{shim_pids_for, Containerd, SNAPSHOTTER};
use veil_tests::memory_cgroup::{rss, MemoryCgroup};
use veil_tests::scenario::VeilSnapshotter;

use crate::proxy::ShapingProxy;
use crate::run::{Binaries, Started, NAMESPACE, PULL_TIMEOUT};

/// How long the workload's container may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// The guest's tmpfs, below a run's directory.
const TMPFS: &str = "run";
/// How much of a failed run's error (the end: the cause) the result keeps.
const ERROR_KEPT: usize = 4000;
/// Guest runs so far (names their cgroups).
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The v1 cgroup hierarchy of the memory controller.
const CGROUP_V1_MEMORY: &str = "/sys/fs/cgroup/memory";
/// The v2 (unified) hierarchy.
const CGROUP_V2: &str = "/sys/fs/cgroup";

/// What starts the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GuestMode {
    /// `veil pull` + `ctr run --snapshotter veil` (lazy).
    #[serde(rename = "veil")]
    Veil,
    /// `ctr images pull` (download and unpack into overlayfs) + `ctr run`.
    #[serde(rename = "status-quo")]
    StatusQuo,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The workload ran and printed what it should.
    #[serde(rename = "ok")]
    Ok,
    /// The kernel's OOM killer killed a process of the cgroup.
    #[serde(rename = "out-of-memory")]
    OutOfMemory,
    /// The guest's tmpfs filled up (ENOSPC).
    #[serde(rename = "out-of-space")]
    OutOfSpace,
    /// Anything else (the error says what).
    #[serde(rename = "failed")]
    Failed,
}

impl Verdict {
    /// A short word for the table.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::OutOfMemory => "OOM",
            Verdict::OutOfSpace => "ENOSPC",
            Verdict::Failed => "failed",
        }
    }

    /// The verdict of a run that ended with `error` (if any) and `oom_kills` OOM kills.
    pub fn of(error: Option<&str>, output_ok: bool, oom_kills: u64) -> Self {
        if oom_kills > 0 {
            return Verdict::OutOfMemory;
        }
        match error {
            Some(e) if e.to_lowercase().contains("no space left on device") => Verdict::OutOfSpace,
            Some(e) if e.contains("out of memory") || e.contains("OOM") => Verdict::OutOfMemory,
            Some(_) => Verdict::Failed,
            None if output_ok => Verdict::Ok,
            None => Verdict::Failed,
        }
    }
}

/// One measured cold start in the cgroup.
#[derive(Debug, Clone, Serialize)]
pub struct GuestRun {
    pub mode: GuestMode,
    pub round: usize,
    pub verdict: Verdict,
    /// From the start of the pull to the container's end (or the failure).
    pub total_s: f64,
    pub pull_s: f64,
    pub run_s: f64,
    /// Bytes the registry sent through the proxy.
    pub fetched_bytes: u64,
    /// veil-snapshotter's peak resident set (`VmHWM`), Veil only.
    pub daemon_peak_rss: Option<u64>,
    /// The cgroup's peak memory: every process in it and the page cache and tmpfs pages
    /// charged to it.
    pub cgroup_peak: Option<u64>,
    /// The tmpfs's use at the end (what the run left in the guest's memory-backed /run).
    pub tmpfs_used: Option<u64>,
    pub oom_kills: u64,
    pub output_ok: bool,
    pub error: Option<String>,
}

/// What every guest run shares.
#[derive(Debug, Clone)]
pub struct Guest<'a> {
    pub bins: &'a Binaries,
    /// Veil's private keys.
    pub keys_dir: &'a Path,
    /// The cgroup's memory limit, bytes.
    pub memory_limit: u64,
    /// The tmpfs's size, bytes.
    pub tmpfs_size: u64,
    pub drop_caches: bool,
    pub background_fetch: bool,
    /// A `sh -c` command line and what its output must contain.
    pub workload: &'a str,
    pub expect: &'a str,
}

/// Whether this machine's memory controller is on cgroup v2 (else v1).
pub fn cgroup_v2() -> bool {
    !Path::new(CGROUP_V1_MEMORY)
        .join("memory.limit_in_bytes")
        .exists()
        && Path::new(CGROUP_V2).join("cgroup.controllers").exists()
}

impl Guest<'_> {
    /// One cold start of `mode` pulling `reference` (through `proxy`), everything below
    /// `dir` (made here, a tmpfs mounted on it, unmounted and removed at the end). A
    /// failure of the run (out of memory or space included) is recorded in the result;
    /// an error is returned only when the run could not be set up.
    pub fn run(
        &self,
        mode: GuestMode,
        round: usize,
        reference: &str,
        proxy: &ShapingProxy,
        dir: &Path,
        started: &mut Vec<Started>,
    ) -> anyhow::Result<GuestRun> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let tmpfs = dir.join(TMPFS);
        std::fs::create_dir_all(&tmpfs)?;
        mount_tmpfs(&tmpfs, self.tmpfs_size)?;
        let result = self.run_on_tmpfs(mode, round, reference, proxy, &dir, started);
        veil_tests::unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn run_on_tmpfs(
        &self,
        mode: GuestMode,
        round: usize,
        reference: &str,
        proxy: &ShapingProxy,
        dir: &Path,
        started: &mut Vec<Started>,
    ) -> anyhow::Result<GuestRun> {
        let name = format!(
            "veil-bench-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let cgroup = GuestCgroup::create(&name, self.memory_limit)?;
        let config = dir.join("veil-config.toml");
        std::fs::write(
            &config,
            crate::run::veil_config(&proxy.host(), self.background_fetch, false, self.keys_dir),
        )?;
        let tmpfs = dir.join(TMPFS);
        let mut veil = VeilSnapshotter::new(
            self.bins.snapshotter.clone(),
            tmpfs.join("veil"),
            dir.join("veil.sock"),
            dir.to_path_buf(),
        )
        .with_config(config);
        let result = (|| -> anyhow::Result<GuestRun> {
            if self.drop_caches {
                crate::run::drop_caches()?;
            }
            let veil_pid = veil.start().context("starting veil-snapshotter")?;
            started.push(Started {
                what: format!("veil-snapshotter ({name})"),
                pid: veil_pid,
            });
            // The status quo does not use Veil: it runs (idle) outside the cgroup, only
            // because containerd's configuration names its socket.
            if mode == GuestMode::Veil {
                cgroup.add(veil_pid)?;
            }
            // containerd's root (content store, snapshots) on the tmpfs; the rest of its
            // directory (sockets, log, ctr's output) on disk.
            let cd_dir = dir.join("containerd");
            let cd_root = tmpfs.join("containerd");
            std::fs::create_dir_all(&cd_dir)?;
            std::fs::create_dir_all(&cd_root)?;
            std::os::unix::fs::symlink(&cd_root, cd_dir.join("root"))
                .context("linking containerd's root to the tmpfs")?;
            let mut cd =
                Containerd::start(&cd_dir, veil.socket()).context("starting containerd")?;
            started.push(Started {
                what: format!("containerd ({name})"),
                pid: cd.pid(),
            });
            cgroup.add(cd.pid())?;
            let mut r = self.measured(mode, reference, proxy, &cd, dir, &cgroup);
            r.round = round;
            if mode == GuestMode::Veil {
                r.daemon_peak_rss = rss(veil_pid).ok().map(|(_, peak)| peak);
            }
            r.tmpfs_used = tmpfs_used(&tmpfs);
            for pid in shim_pids_for(cd.address()) {
                started.push(Started {
                    what: format!("containerd-shim ({name})"),
                    pid,
                });
            }
            cd.shutdown();
            Ok(r)
        })();
        veil.stop();
        veil_tests::unmount_below(&tmpfs.join("veil"));
        drop(cgroup);
        result
    }

    /// The measured part: pull, then run the workload in the cgroup.
    fn measured(
        &self,
        mode: GuestMode,
        reference: &str,
        proxy: &ShapingProxy,
        cd: &Containerd,
        dir: &Path,
        cgroup: &GuestCgroup,
    ) -> GuestRun {
        let down = proxy.bytes_down();
        let t = Instant::now();
        let pulled: anyhow::Result<()> = match mode {
            GuestMode::StatusQuo => cd
                .ctr_like(
                    Path::new("ctr"),
                    NAMESPACE,
                    &["images", "pull", "--plain-http", reference],
                    PULL_TIMEOUT,
                )
                .map(|_| ()),
            GuestMode::Veil => crate::run::veil_pull(&self.bins.veil, cd.address(), reference, dir),
        };
        let pull_s = t.elapsed().as_secs_f64();
        let ran = pulled.and_then(|()| {
            let snapshotter = match mode {
                GuestMode::StatusQuo => "overlayfs",
                GuestMode::Veil => SNAPSHOTTER,
            };
            let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
            args.push("--snapshotter".into());
            args.push(snapshotter.into());
            // containerd's FIFO and runc directories, and the container's cgroup: ours.
            let mut run_args = cd.run_args();
            if let Some(i) = run_args.iter().position(|a| a == "--cgroup") {
                run_args.drain(i..(i + 2).min(run_args.len()));
            }
            args.extend(run_args);
            args.push("--cgroup".into());
            args.push(cgroup.container_path());
            args.extend([
                reference.to_string(),
                "veil-bench-workload".into(),
                "/bin/sh".into(),
                "-c".into(),
                self.workload.to_string(),
            ]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cd.ctr_like(Path::new("ctr"), NAMESPACE, &refs, RUN_TIMEOUT)
                .map(|o| o.stdout)
        });
        let total_s = t.elapsed().as_secs_f64();
        let fetched_bytes = proxy.bytes_down() - down;
        let (output, error) = match ran {
            Ok(out) => (out, None),
            Err(e) => (String::new(), Some(shortened(&format!("{e:#}")))),
        };
        let output_ok = error.is_none() && output.contains(self.expect);
        let oom_kills = cgroup.oom_kills();
        let error = match (&error, output_ok) {
            (None, false) => Some(format!(
                "the workload's output lacks {:?}: {:?}",
                self.expect,
                output.trim_end()
            )),
            _ => error,
        };
        GuestRun {
            mode,
            round: 0,
            verdict: Verdict::of(error.as_deref(), output_ok, oom_kills),
            total_s,
            pull_s,
            run_s: total_s - pull_s,
            fetched_bytes,
            daemon_peak_rss: None,
            cgroup_peak: cgroup.peak(),
            tmpfs_used: None,
            oom_kills,
            output_ok,
            error,
        }
    }
}

/// The guest's cgroup: the limited one, and where its processes and container go.
struct GuestCgroup {
    limited: MemoryCgroup,
    /// v2: the leaf the daemons go into (a cgroup with children holds no processes).
    daemon_leaf: Option<MemoryCgroup>,
    /// The container's cgroup path for `ctr run --cgroup`.
    container: String,
}

impl GuestCgroup {
    fn create(name: &str, limit: u64) -> anyhow::Result<Self> {
        let limited = MemoryCgroup::create(name, limit)
            .with_context(|| format!("making the guest's memory cgroup {name}"))?;
        if !limited.is_v2() {
            // Relative: runc puts it below its own cgroup, the shim's, which is ours.
            return Ok(Self {
                limited,
                daemon_leaf: None,
                container: format!("{name}-ctr"),
            });
        }
        std::fs::write(limited.dir().join("cgroup.subtree_control"), "+memory").with_context(
            || {
                format!(
                    "delegating the memory controller below {} (cgroup v2: run the bench in \
                     a cgroup that delegates it, e.g. systemd-run --scope -p Delegate=yes)",
                    limited.dir().display()
                )
            },
        )?;
        let leaf_name = format!("{name}/daemon");
        let leaf = MemoryCgroup::create(&leaf_name, limit)?;
        let relative = limited
            .dir()
            .strip_prefix(CGROUP_V2)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            limited,
            daemon_leaf: Some(leaf),
            container: format!("/{relative}/container"),
        })
    }

    fn add(&self, pid: u32) -> anyhow::Result<()> {
        self.daemon_leaf.as_ref().unwrap_or(&self.limited).add(pid)
    }

    fn container_path(&self) -> String {
        self.container.clone()
    }

    fn peak(&self) -> Option<u64> {
        self.limited.peak()
    }

    fn oom_kills(&self) -> u64 {
        self.limited.oom_kills().unwrap_or(0)
    }
}

impl Drop for GuestCgroup {
    fn drop(&mut self) {
        // The daemon leaf first, then whatever runc left (only empty cgroups can go).
        self.daemon_leaf.take();
        if let Ok(entries) = std::fs::read_dir(self.limited.dir()) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

/// `error`'s first line and its last [`ERROR_KEPT`] characters (a client's progress
/// output in between is left out).
fn shortened(error: &str) -> String {
    let chars: Vec<char> = error.chars().collect();
    if chars.len() <= ERROR_KEPT {
        return error.to_string();
    }
    let first = error.lines().next().unwrap_or_default();
    let tail: String = chars[chars.len() - ERROR_KEPT..].iter().collect();
    format!("{first}\n[...]\n{tail}")
}

/// Mounts a tmpfs of `size` bytes (mode 0700) on `dir`.
fn mount_tmpfs(dir: &Path, size: u64) -> anyhow::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(dir.as_os_str().as_bytes())?;
    let options = CString::new(format!("size={size},mode=0700"))?;
    let fstype = CString::new("tmpfs")?;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting a tmpfs of {size} bytes on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Bytes in use on the filesystem of `dir`.
fn tmpfs_used(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_blocks - st.f_bfree) * st.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(None, true, 0), Verdict::Ok);
        assert_eq!(Verdict::of(None, false, 0), Verdict::Failed);
        assert_eq!(Verdict::of(Some("x"), false, 1), Verdict::OutOfMemory);
        assert_eq!(
            Verdict::of(
                Some("ctr: failed to copy: write /x: No space left on device"),
                false,
                0
            ),
            Verdict::OutOfSpace
        );
        assert_eq!(Verdict::of(Some("boom"), false, 0), Verdict::Failed);
    }

    #[test]
    fn long_errors_keep_their_first_line_and_end() {
        assert_eq!(shortened("short"), "short");
        let long = format!(
            "ctr failed\n{}\nno space left on device",
            "x".repeat(10_000)
        );
        let s = shortened(&long);
        assert!(s.starts_with("ctr failed\n[...]\n"));
        assert!(s.ends_with("no space left on device"));
        assert!(s.len() < ERROR_KEPT + 100);
    }
}
