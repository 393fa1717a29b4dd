//! A private containerd for a test: Debian's `containerd` started as a child process with
//! its own root, state, sockets and config in a test directory, the CRI plugin disabled and
//! Veil registered as the proxy snapshotter `veil`.
//!
//! Nothing here touches a system containerd: every path is below the test directory, `ctr`
//! is always given this containerd's socket, and the processes stopped are the one this
//! module started and the shims whose command line names its socket.
//!
//! What is outside the test directory and why:
//! - containerd 1.6 puts shim sockets in `/run/containerd/s/<hash of our address>`, a path
//!   compiled in. The shims remove their sockets; if `/run/containerd` did not exist before,
//!   the now empty directories are removed again (rmdir only: never anything non-empty).
//! - `ctr run` would put its FIFOs in `/run/containerd/fifo`, runc its state in
//!   `/run/containerd/runc/<ns>` and the container in the cgroup `/<ns>/<id>` (whose parent
//!   would stay behind). [`Containerd::run_args`] passes `--fifo-dir`, `--runc-root` below the
//!   test directory and `--cgroup ""` (runc then makes `/<id>` and removes it again).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::ChildGuard;

/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "veil-test";

/// The proxy plugin name Veil is registered under.
pub const SNAPSHOTTER: &str = "veil";

/// How long a `ctr` command may take before it is killed.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);

const RUN_CONTAINERD: &str = "/run/containerd";

/// Makes the CRI plugin's TOML from containerd's (canonical) directory.
pub type CriToml<'a> = &'a dyn Fn(&Path) -> anyhow::Result<String>;

/// One containerd started by a test.
pub struct Containerd {
    dir: PathBuf,
    address: PathBuf,
    config: PathBuf,
    log: PathBuf,
    guard: Option<ChildGuard>,
    pid: u32,
    run_dir_existed: bool,
    ctr_count: std::cell::Cell<u32>,
}

/// What [`Containerd::shutdown`] found and did.
#[derive(Debug, Default, Clone)]
pub struct Shutdown {
    /// Tasks that were still there and were killed (`NAMESPACE/ID` outside [`NAMESPACE`]).
    pub tasks_killed: Vec<String>,
    /// Containers that were still there and were deleted (`NAMESPACE/ID` outside
    /// [`NAMESPACE`]).
    pub containers_deleted: Vec<String>,
    /// Shim PIDs (command line naming our socket) still alive after containerd stopped;
    /// they were sent SIGKILL. Empty when everything exited by itself.
    pub shims_left: Vec<u32>,
    /// Mount points below the test directory that were still mounted and were unmounted.
    pub mounts_left: Vec<String>,
    /// containerd's exit status.
    pub exit: Option<std::process::ExitStatus>,
}

/// The output of one `ctr` command.
#[derive(Debug, Clone)]
pub struct CtrOutput {
    pub stdout: String,
    pub stderr: String,
}

/// The `config.toml` (version 2) for a private containerd.
pub fn config_toml(dir: &Path, address: &Path, veil_socket: &Path) -> String {
    config_toml_with(dir, address, veil_socket, &[])
}

/// [`config_toml`] with more proxy snapshotters: (name, socket) each.
pub fn config_toml_with(
    dir: &Path,
    address: &Path,
    veil_socket: &Path,
    more_snapshotters: &[(&str, &Path)],
) -> String {
    config_toml_full(dir, address, veil_socket, more_snapshotters, None)
}

/// [`config_toml_with`] with the CRI plugin enabled and configured by `cri` (TOML
/// appended to the config, see `crate::cri`) when it is given.
pub fn config_toml_full(
    dir: &Path,
    address: &Path,
    veil_socket: &Path,
    more_snapshotters: &[(&str, &Path)],
    cri: Option<&str>,
) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    let mut more = String::new();
    for (name, socket) in more_snapshotters {
        more.push_str(&format!(
            "  [proxy_plugins.{name}]\n    type = \"snapshot\"\n    address = {}\n",
            q(socket)
        ));
    }
    let disabled = if cri.is_some() {
        "[]"
    } else {
        "[\"io.containerd.grpc.v1.cri\"]"
    };
    format!(
        r#"# containerd config written by veil-tests
version = 2
root = {root}
state = {state}
disabled_plugins = {disabled}

[grpc]
  address = {address}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[proxy_plugins]
  [proxy_plugins.{name}]
    type = "snapshot"
    address = {veil}
{more}{cri}"#,
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        address = q(address),
        ttrpc = q(&dir.join("containerd.sock.ttrpc")),
        opt = q(&dir.join("opt")),
        name = SNAPSHOTTER,
        veil = q(veil_socket),
        cri = cri.unwrap_or_default(),
    )
}

/// `s` as a TOML basic string (quoted, `"` and `\\` escaped).
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Containerd {
    /// Starts containerd with everything below `dir` (created if needed), Veil's proxy
    /// snapshotter at `veil_socket`, and waits for its gRPC socket.
    pub fn start(dir: &Path, veil_socket: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, veil_socket, &[])
    }

    /// [`start`](Self::start) with more proxy snapshotters: (name, socket) each.
    pub fn start_with(
        dir: &Path,
        veil_socket: &Path,
        more_snapshotters: &[(&str, &Path)],
    ) -> anyhow::Result<Self> {
        Self::start_full(dir, veil_socket, more_snapshotters, None)
    }

    /// [`start`](Self::start) with the CRI plugin enabled: `cri` makes its TOML from
    /// containerd's (canonical) directory, see `crate::cri::cri_config`.
    pub fn start_cri(dir: &Path, veil_socket: &Path, cri: CriToml<'_>) -> anyhow::Result<Self> {
        Self::start_full(dir, veil_socket, &[], Some(cri))
    }

    fn start_full(
        dir: &Path,
        veil_socket: &Path,
        more_snapshotters: &[(&str, &Path)],
        cri: Option<CriToml<'_>>,
    ) -> anyhow::Result<Self> {
        for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "runc"] {
            if which(tool).is_none() {
                bail!("{tool} is not installed (Debian: apt-get install containerd runc)");
            }
        }
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let address = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let log = dir.join("containerd.log");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let cri = cri.map(|make| make(&dir)).transpose()?;
        std::fs::write(
            &config,
            config_toml_full(
                &dir,
                &address,
                veil_socket,
                more_snapshotters,
                cri.as_deref(),
            ),
        )?;
        let run_dir_existed = Path::new(RUN_CONTAINERD).exists();

        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("info")
            // Temporary mounts (image unpacking) go below the test directory.
            .env("TMPDIR", &tmp)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        let mut guard = ChildGuard::spawn("containerd", cmd, &log)?;
        let pid = guard.pid();
        guard.wait_for_path(&address, Duration::from_secs(30))?;
        let me = Self {
            dir,
            address,
            config,
            log,
            guard: Some(guard),
            pid,
            run_dir_existed,
            ctr_count: std::cell::Cell::new(0),
        };
        // The socket file appears just before containerd serves; make sure it answers.
        let start = Instant::now();
        loop {
            match me.ctr(&["version"]) {
                Ok(_) => break,
                Err(e) if start.elapsed() > Duration::from_secs(20) => {
                    return Err(e.context(format!("containerd log:\n{}", me.log_text())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(me)
    }

    /// containerd's gRPC socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The config file containerd was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// containerd's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything containerd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// containerd's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// containerd's root directory (content store, metadata, built-in snapshotters).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Runs `ctr --address <ours> -n veil-test ARGS` with [`CTR_TIMEOUT`]; fails with the
    /// command, exit status, stdout and stderr unless it exits with 0.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<CtrOutput> {
        self.ctr_timeout(args, CTR_TIMEOUT)
    }

    /// Like [`ctr`](Self::ctr) returning only stdout.
    pub fn ctr_stdout(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(self.ctr(args)?.stdout)
    }

    /// [`ctr`](Self::ctr) in another namespace.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> anyhow::Result<CtrOutput> {
        self.ctr_like(Path::new("ctr"), namespace, args, CTR_TIMEOUT)
    }

    /// [`ctr`](Self::ctr) with an explicit timeout.
    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> anyhow::Result<CtrOutput> {
        self.ctr_like(Path::new("ctr"), NAMESPACE, args, timeout)
    }

    /// Runs `PROGRAM --address <ours> --namespace NAMESPACE ARGS` for a ctr-compatible
    /// `program` (`ctr`, or `ctr-remote`, which is ctr with more commands), killed (by its
    /// PID) after `timeout`; fails with the command, exit status, stdout and stderr unless
    /// it exits with 0.
    pub fn ctr_like(
        &self,
        program: &Path,
        namespace: &str,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<CtrOutput> {
        let n = self.ctr_count.get() + 1;
        self.ctr_count.set(n);
        let out_dir = self.dir.join("ctr-output");
        std::fs::create_dir_all(&out_dir)?;
        let out_path = out_dir.join(format!("{n}.stdout"));
        let err_path = out_dir.join(format!("{n}.stderr"));
        let mut cmd = Command::new(program);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .env("TMPDIR", self.dir.join("tmp"))
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?);
        let shown = format!(
            "{} -n {namespace} {}",
            program
                .file_name()
                .unwrap_or(program.as_os_str())
                .to_string_lossy(),
            shell_words(args)
        );
        let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() > timeout {
                // Our own child, by PID.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        match status {
            None => bail!(
                "`{shown}` did not finish within {timeout:?} and was killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
            ),
            Some(s) if !s.success() => bail!(
                "`{shown}` failed ({s})\nstdout:\n{stdout}\nstderr:\n{}",
                stderr.trim_end()
            ),
            Some(_) => Ok(CtrOutput { stdout, stderr }),
        }
    }

    /// The STATUS column of `ctr plugins ls` for the plugin `TYPE` / `ID`, if listed.
    pub fn plugin_status(&self, plugin_type: &str, id: &str) -> anyhow::Result<Option<String>> {
        let out = self.ctr_stdout(&["plugins", "ls"])?;
        Ok(out.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 4 && cols[0] == plugin_type && cols[1] == id)
                .then(|| cols[cols.len() - 1].to_string())
        }))
    }

    /// The options `ctr run` needs so that nothing lands outside the test directory:
    /// FIFOs and runc's state below it, cgroup `/<id>` (removed by runc) instead of
    /// `/<namespace>/<id>` (whose parent would stay).
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "--fifo-dir".into(),
            self.dir.join("fifo").to_string_lossy().into_owned(),
            "--runc-root".into(),
            self.dir.join("runc").to_string_lossy().into_owned(),
            "--cgroup".into(),
            String::new(),
        ]
    }

    /// `ctr run --rm --snapshotter SNAPSHOTTER IMAGE ID CMD...`: runs a container to its end
    /// and returns what it printed.
    pub fn run_container(
        &self,
        snapshotter: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> anyhow::Result<String> {
        self.run_container_in(NAMESPACE, snapshotter, image, id, cmd)
    }

    /// [`run_container`](Self::run_container) in another namespace.
    pub fn run_container_in(
        &self,
        namespace: &str,
        snapshotter: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> anyhow::Result<String> {
        let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
        args.push("--snapshotter".into());
        args.push(snapshotter.into());
        args.extend(self.run_args());
        args.push(image.into());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(self.ctr_in(namespace, &refs)?.stdout)
    }

    /// `ctr run -d --null-io --snapshotter SNAPSHOTTER IMAGE ID CMD...`: starts a container
    /// in the background (stdio to /dev/null) and returns once its task runs.
    pub fn run_detached(
        &self,
        snapshotter: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> anyhow::Result<()> {
        let mut args: Vec<String> = vec!["run".into(), "--detach".into(), "--null-io".into()];
        args.push("--snapshotter".into());
        args.push(snapshotter.into());
        args.extend(self.run_args());
        args.push(image.into());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&refs)?;
        Ok(())
    }

    /// `ctr images import --snapshotter SNAPSHOTTER --base-name REPO ARCHIVE`: imports and
    /// unpacks an OCI archive, then checks containerd knows `reference`. Returns ctr's output.
    pub fn import(
        &self,
        snapshotter: &str,
        archive: &Path,
        base_name: &str,
        reference: &str,
    ) -> anyhow::Result<String> {
        let archive = archive.to_string_lossy();
        let out = self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            snapshotter,
            "--base-name",
            base_name,
            &archive,
        ])?;
        let images = self.ctr_stdout(&["images", "ls", "-q"])?;
        if !images.lines().any(|l| l.trim() == reference) {
            bail!(
                "after the import containerd does not know {reference}; `ctr images ls -q`:\n{images}"
            );
        }
        Ok(format!("{}{}", out.stdout, out.stderr))
    }

    /// PIDs of the running tasks, by container ID (`ctr tasks ls`).
    pub fn task_pids(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let out = self.ctr_stdout(&["tasks", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.to_string(), cols.get(1)?.parse().ok()?))
            })
            .collect())
    }

    /// Keys of the snapshots `ctr snapshots --snapshotter S ls` lists (key, parent, kind).
    pub fn snapshots(&self, snapshotter: &str) -> anyhow::Result<Vec<SnapshotRow>> {
        let out = self.ctr_stdout(&["snapshots", "--snapshotter", snapshotter, "ls"])?;
        Ok(parse_snapshots(&out))
    }

    /// PIDs of shim processes serving this containerd (their command line names its
    /// socket after `-address`).
    pub fn shim_pids(&self) -> Vec<u32> {
        shim_pids_for(&self.address)
    }

    /// Kills and deletes the tasks of `namespace`, then deletes its containers; returns
    /// the IDs of the tasks and the containers that were there.
    pub fn clear_namespace(&self, namespace: &str) -> (Vec<String>, Vec<String>) {
        let quick = Duration::from_secs(30);
        let ctr = |args: &[&str]| self.ctr_like(Path::new("ctr"), namespace, args, quick);
        let mut tasks = Vec::new();
        let mut containers = Vec::new();
        if let Ok(out) = ctr(&["tasks", "ls", "-q"]) {
            for id in out.stdout.split_whitespace() {
                let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                // The task must have exited before it can be deleted.
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(10) {
                    if ctr(&["tasks", "delete", id]).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                tasks.push(id.to_string());
            }
        }
        if let Ok(out) = ctr(&["containers", "ls", "-q"]) {
            for id in out.stdout.split_whitespace() {
                let _ = ctr(&["containers", "delete", id]);
                containers.push(id.to_string());
            }
        }
        (tasks, containers)
    }

    /// Removes what a test left in containerd (tasks, containers, in every namespace), stops
    /// containerd, kills shims of ours that outlived it, unmounts what is below the test
    /// directory and removes `/run/containerd` again if it did not exist before. Idempotent.
    pub fn shutdown(&mut self) -> Shutdown {
        let mut report = Shutdown::default();
        let Some(mut guard) = self.guard.take() else {
            return report;
        };
        if guard.check_running().is_ok() {
            // Every namespace of this containerd (a test may use more than ours).
            let mut namespaces: Vec<String> = self
                .ctr_timeout(&["namespaces", "ls", "-q"], Duration::from_secs(30))
                .map(|o| o.stdout.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
            if !namespaces.iter().any(|n| n == NAMESPACE) {
                namespaces.push(NAMESPACE.to_string());
            }
            for ns in &namespaces {
                let (tasks, containers) = self.clear_namespace(ns);
                let name = |id: String| {
                    if ns == NAMESPACE {
                        id
                    } else {
                        format!("{ns}/{id}")
                    }
                };
                report.tasks_killed.extend(tasks.into_iter().map(name));
                report
                    .containers_deleted
                    .extend(containers.into_iter().map(name));
            }
        }
        // Shims exit once their task is deleted; give them a moment before containerd goes.
        let start = Instant::now();
        while !self.shim_pids().is_empty() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        report.exit = guard.stop();
        drop(guard);
        report.shims_left = self.shim_pids();
        for pid in &report.shims_left {
            // SAFETY: kill(2) on a shim whose command line names our containerd's socket.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        report.mounts_left = crate::mounts::mounts_below(&self.dir);
        crate::mounts::unmount_below(&self.dir);
        if !self.run_dir_existed {
            // Only empty directories go (rmdir); anything else there is not ours.
            for d in ["s", "fifo", "runc"] {
                let _ = std::fs::remove_dir(Path::new(RUN_CONTAINERD).join(d));
            }
            let _ = std::fs::remove_dir(RUN_CONTAINERD);
        }
        report
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One row of `ctr snapshots ls`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotRow {
    pub key: String,
    pub parent: String,
    pub kind: String,
}

/// Parses `ctr snapshots ls` output (`KEY PARENT KIND`, parent may be empty).
pub fn parse_snapshots(out: &str) -> Vec<SnapshotRow> {
    let mut rows: Vec<SnapshotRow> = out
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.as_slice() {
                [key, kind] => Some(SnapshotRow {
                    key: key.to_string(),
                    parent: String::new(),
                    kind: kind.to_string(),
                }),
                [key, parent, kind] => Some(SnapshotRow {
                    key: key.to_string(),
                    parent: parent.to_string(),
                    kind: kind.to_string(),
                }),
                _ => None,
            }
        })
        .collect();
    rows.sort();
    rows
}

/// PIDs of live `containerd-shim*` processes whose `-address` argument is `address`.
pub fn shim_pids_for(address: &Path) -> Vec<u32> {
    let want = address.to_string_lossy();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
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
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args
            .first()
            .map(|a| {
                a.rsplit('/')
                    .next()
                    .unwrap_or(a)
                    .starts_with("containerd-shim")
            })
            .unwrap_or(false);
        let ours = args
            .windows(2)
            .any(|w| w[0].trim_start_matches('-') == "address" && w[1] == want);
        if is_shim && ours && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` names a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|state| state != "Z" && state != "X")
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;&|".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snapshot_rows() {
        let out = "KEY PARENT KIND\n\
                   sha256:bb sha256:aa Committed\n\
                   sha256:aa           Committed\n\
                   c1        sha256:bb Active\n";
        let rows = parse_snapshots(out);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].key, "sha256:aa");
        assert_eq!(rows[1].parent, "");
        assert_eq!(rows[0].kind, "Active");
    }

    #[test]
    fn config_names_the_proxy_plugin() {
        let c = config_toml(
            Path::new("/t"),
            Path::new("/t/c.sock"),
            Path::new("/t/veil.sock"),
        );
        assert!(c.contains("[proxy_plugins.veil]"));
        assert!(c.contains("address = \"/t/veil.sock\""));
        assert!(c.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
    }
}
