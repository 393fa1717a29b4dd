//! systemd's fd store under a real systemd (issue 14): veil-snapshotter installed from
//! `systemd/veil-snapshotter.service` in a Debian 12 container booted with
//! `systemd-nspawn --boot` (systemd 252 as its PID 1), containerd beside it, an image
//! pulled with `veil pull`. A reader hashes the big lazily served file in a loop (and
//! `read-prober` reads it with its page cache dropped) while `systemctl restart
//! veil-snapshotter` and a SIGKILL (`systemctl kill -s KILL`, then `Restart=on-failure`)
//! happen: every hash is right, no read fails, nothing says `Transport endpoint is not
//! connected`, and systemd holds one fd per layer throughout (`NFileDescriptorStore`).
//!
//! Ignored by default: it needs `debootstrap` and `systemd-nspawn` (scripts/setup
//! installs them), and on its first run builds the Debian root with debootstrap from the
//! Debian mirror (minutes, network) into `$VEIL_NSPAWN_ROOTFS` (default
//! [`DEFAULT_ROOTFS`]); later runs reuse it, booted with `--volatile=overlay` so it stays
//! as built. The host's containerd and Veil's binaries are bound into the container.
//! Run with `cargo test -p veil-tests --test systemd_fdstore -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use veil_tests::containerd::{config_toml, NAMESPACE};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, LayerFormat, BIG_PATH,
};
use veil_tests::lazy_stack::{text, with_stack};
use veil_tests::process::{run_with_timeout, ChildGuard};
use veil_tests::restart_watch::{
    check_hashes, probes_of, report_pauses, wait_for_more, Restart, ENOTCONN_TEXT, MAX_PAUSE,
    SETTLE,
};

/// Where the Debian root is built (and reused), unless `$VEIL_NSPAWN_ROOTFS` says.
const DEFAULT_ROOTFS: &str = "/var/cache/veil-tests/nspawn-bookworm";

/// The Debian release booted (systemd 252: no `$FDSTORE`, no `FileDescriptorStorePreserve=`).
const SUITE: &str = "bookworm";

/// What debootstrap adds to the minimal base: an init that boots.
const PACKAGES: &str = "systemd,systemd-sysv,dbus";

/// Size of the big random file.
const BIG_SIZE: usize = 16 << 20;

/// How long building the root may take.
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(1200);

/// How long booting (and each command in the container) may take.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Inside the container: the shared directory (hash output, logs).
const SHARED: &str = "/srv/trial";

/// The Debian root, built with debootstrap if it is not there yet.
fn rootfs(log_dir: &Path) -> anyhow::Result<PathBuf> {
    let root = std::env::var_os("VEIL_NSPAWN_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS));
    if root.join("lib/systemd/systemd").exists() {
        return Ok(root);
    }
    let building = root.with_extension("building");
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(building.parent().context("rootfs has no parent")?)?;
    eprintln!(
        "[systemd-fdstore] building {} with debootstrap (minutes)",
        root.display()
    );
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={PACKAGES}"))
        .arg(SUITE)
        .arg(&building);
    let out = run_with_timeout(cmd, DEBOOTSTRAP_TIMEOUT, &log_dir.join("debootstrap"))
        .context("running debootstrap (apt-get install debootstrap)")?;
    if !out.status.success() {
        bail!(
            "debootstrap failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    std::fs::rename(&building, &root)?;
    Ok(root)
}

/// The booted container: nspawn and the container's PID 1 (whose namespaces commands
/// enter).
struct Machine {
    nspawn: ChildGuard,
    leader: u32,
    log_dir: PathBuf,
    runs: usize,
}

impl Machine {
    /// Boots `root` with `binds` (`--bind`/`--bind-ro` arguments).
    fn boot(root: &Path, binds: &[String], log_dir: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--boot",
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
        ])
        .arg(format!("--machine=veil-trial-{}", std::process::id()))
        .arg("-D")
        .arg(root)
        .arg("--bind=/dev/fuse")
        .args(binds);
        let nspawn = ChildGuard::spawn("systemd-nspawn", cmd, &log_dir.join("nspawn.log"))?;
        let start = Instant::now();
        let leader = loop {
            if let Some(pid) = container_init(nspawn.pid()) {
                break pid;
            }
            if start.elapsed() > BOOT_TIMEOUT {
                bail!(
                    "no systemd in the container after {BOOT_TIMEOUT:?}:\n{}",
                    nspawn.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut me = Self {
            nspawn,
            leader,
            log_dir: log_dir.to_path_buf(),
            runs: 0,
        };
        // is-system-running --wait returns once boot is over (running or degraded); until
        // systemd's private socket exists it fails at once.
        let state = loop {
            let (_, state) = me.run_status(&["systemctl", "is-system-running", "--wait"])?;
            let state = state.trim().to_string();
            if state == "running" || state == "degraded" {
                break state;
            }
            if start.elapsed() > BOOT_TIMEOUT {
                bail!("the container did not boot in {BOOT_TIMEOUT:?}: {state}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("[systemd-fdstore] the container booted: {state}");
        Ok(me)
    }

    /// The command line that runs `args` in the container's mount namespace (a
    /// long-running reader: killing nsenter kills it).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.leader.to_string())
            .arg("-m")
            .arg("--")
            .args(args);
        cmd
    }

    /// The command line that runs `args` in all the container's namespaces: PID 1 and
    /// systemd-run see a caller of their own PID namespace (from the host's, systemd
    /// answers `systemctl start` with ENOTCONN and systemd-run fails with EBADF).
    fn command_inside(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "-C", "--"])
            .args(args);
        cmd
    }

    /// Runs `args` in the container; its stdout (stderr too when it fails).
    fn run_status(&mut self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        self.runs += 1;
        let stem = self.log_dir.join(format!("in-container-{}", self.runs));
        let out = run_with_timeout(self.command_inside(args), BOOT_TIMEOUT, &stem)?;
        let mut said = text(&out.stdout);
        if !out.status.success() {
            said.push_str(&text(&out.stderr));
        }
        Ok((out.status.success(), said))
    }

    /// Runs `args` in the container; fails unless it succeeds.
    fn run(&mut self, args: &[&str]) -> anyhow::Result<String> {
        match self.run_status(args)? {
            (true, out) => Ok(out),
            (false, out) => bail!("{args:?} in the container failed:\n{out}"),
        }
    }

    /// A property of a unit (`systemctl show -p NAME --value`).
    fn property(&mut self, unit: &str, name: &str) -> anyhow::Result<String> {
        Ok(self
            .run(&["systemctl", "show", "-p", name, "--value", unit])?
            .trim()
            .to_string())
    }

    /// Waits until `unit` is active with a main PID other than `old` (0: any); its PID.
    fn wait_active(&mut self, unit: &str, old: &str) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let state = self.property(unit, "ActiveState")?;
            let pid = self.property(unit, "MainPID")?;
            if state == "active" && pid != "0" && pid != old {
                return Ok(pid);
            }
            if start.elapsed() > MAX_PAUSE {
                let journal = self.journal(unit)?;
                bail!("{unit} is {state} (PID {pid}) after {MAX_PAUSE:?}:\n{journal}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What `unit` logged.
    fn journal(&mut self, unit: &str) -> anyhow::Result<String> {
        self.run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
    }

    /// The file `path` of the container, seen from the host.
    fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader)).join(path.trim_start_matches('/'))
    }

    /// Shuts the container down: SIGTERM to nspawn powers it off (SIGKILL if that takes
    /// too long).
    fn shut_down(mut self) {
        let _ = self.nspawn.stop_with(libc::SIGTERM, BOOT_TIMEOUT);
    }
}

/// The container's PID 1: the process named `systemd` whose parent is nspawn.
fn container_init(nspawn: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if comm.ends_with("(systemd") && ppid == Some(nspawn) {
            return Some(pid);
        }
    }
    None
}

/// The Veil FUSE mounts in the container (mount points as the container sees them).
fn veil_mounts(leader: u32) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/{leader}/mountinfo")).unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            tail.starts_with("fuse.veil ")
                .then(|| head.split(' ').nth(4).map(str::to_string))?
        })
        .collect()
}

#[test]
#[ignore = "boots Debian 12 under systemd-nspawn; builds it with debootstrap on first run"]
fn systemd_fd_store_keeps_connections_across_restart_and_kill() {
    let name = "systemd-fdstore";
    with_stack(name, |stack| {
        let root = rootfs(&stack.dir)?;
        let big = random_bytes(BIG_SIZE, 0x0005_7d00);
        let want = sha256_hex(&big);
        let layers = vec![
            pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
            pack(tar_of(&top_entries(big))?, LayerFormat::Estargz)?,
        ];
        stack.push("fdstore", "1", &layers)?;
        let reference = stack.image_ref("fdstore", "1");

        // What the container gets: the shipped unit, a config, containerd's unit.
        let shared = stack.dir.join("shared");
        std::fs::create_dir_all(&shared)?;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let unit = repo.join("systemd/veil-snapshotter.service");
        let config = shared.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "systemd_fd_store = true\n\n[registry]\nplain_http = [\"{}\"]\n\n\
                 [lazy]\nbackground_fetch = false\n",
                stack.registry.host()
            ),
        )?;
        let cd_dir = Path::new("/var/lib/containerd-trial");
        let cd_socket = Path::new("/run/containerd/containerd.sock");
        let cd_config = shared.join("containerd.toml");
        std::fs::write(
            &cd_config,
            config_toml(cd_dir, cd_socket, Path::new("/run/veil/snapshotter.sock")),
        )?;
        let veil_root = stack.dir.join("veil-root");
        std::fs::create_dir_all(&veil_root)?;
        let bin = |n: &str| veil_tests::veil_binary(n).display().to_string();
        let binds = vec![
            format!(
                "--bind-ro={}:/usr/local/bin/veil-snapshotter",
                bin("veil-snapshotter")
            ),
            format!("--bind-ro={}:/usr/local/bin/veil", bin("veil")),
            format!(
                "--bind-ro={}:/usr/local/bin/read-prober",
                env!("CARGO_BIN_EXE_read-prober")
            ),
            "--bind-ro=/usr/bin/containerd".into(),
            format!(
                "--bind-ro={}:/etc/systemd/system/veil-snapshotter.service",
                unit.display()
            ),
            format!("--bind-ro={}:/etc/veil/config.toml", config.display()),
            format!(
                "--bind-ro={}:/etc/containerd/config.toml",
                cd_config.display()
            ),
            format!("--bind={}:/var/lib/veil", veil_root.display()),
            format!("--bind={}:{SHARED}", shared.display()),
        ];
        let mut m = Machine::boot(&root, &binds, &stack.dir)?;
        let result = trial(stack, &mut m, &reference, &want, layers.len());
        m.shut_down();
        result
    });
}

/// The trial in the booted container `m`.
fn trial(
    stack: &mut veil_tests::lazy_stack::LazyStack,
    m: &mut Machine,
    reference: &str,
    want: &str,
    layers: usize,
) -> anyhow::Result<()> {
    let name = "systemd-fdstore";
    eprintln!(
        "[{name}] {}",
        m.run(&["systemctl", "--version"])?
            .lines()
            .next()
            .unwrap_or("")
    );
    // systemd 252 in nspawn here sometimes answers a start right after boot with
    // ENOTCONN ("Transport endpoint is not connected", from PID 1): retried.
    let mut tries = 0;
    loop {
        tries += 1;
        match m.run_status(&["systemctl", "start", "veil-snapshotter.service"])? {
            (true, _) => break,
            (false, why) if tries < 5 => {
                eprintln!("[{name}] systemctl start (try {tries}): {}", why.trim());
                std::thread::sleep(Duration::from_secs(2));
            }
            (false, why) => bail!(
                "systemctl start veil-snapshotter failed: {why}\n{}",
                m.run_status(&["journalctl", "--no-pager", "-b", "-n", "60"])?
                    .1
            ),
        }
    }
    let mut pid = m.wait_active("veil-snapshotter.service", "0")?;
    // containerd as a transient service (the container has no containerd package).
    m.run(&[
        "systemd-run",
        "--unit=containerd",
        "--property=KillMode=process",
        "/usr/bin/containerd",
        "--config",
        "/etc/containerd/config.toml",
    ])?;
    let start = Instant::now();
    while !m.host_path("/run/containerd/containerd.sock").exists() {
        if start.elapsed() > BOOT_TIMEOUT {
            bail!(
                "containerd did not start:\n{}",
                m.journal("containerd.service")?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    m.run(&[
        "/usr/local/bin/veil",
        "pull",
        "--plain-http",
        "-a",
        "/run/containerd/containerd.sock",
        "-n",
        NAMESPACE,
        reference,
    ])?;
    let held = m.property("veil-snapshotter.service", "NFileDescriptorStore")?;
    if held != layers.to_string() {
        bail!(
            "systemd holds {held} fds for veil-snapshotter after the pull, not {layers}:\n{}",
            m.journal("veil-snapshotter.service")?
        );
    }
    eprintln!("[{name}] pulled; systemd's fd store holds {held} layer connections");

    let file = veil_mounts(m.leader)
        .into_iter()
        .map(|mp| format!("{mp}{BIG_PATH}"))
        .find(|p| m.host_path(p).exists())
        .context("no Veil mount in the container has the big file")?;
    let hashes = stack.dir.join("shared/hashes");
    let hash_loop = format!(
        "while true; do sha256sum {file} >> {SHARED}/hashes 2>&1 \
         || echo \"sha256sum failed: $?\" >> {SHARED}/hashes; done"
    );
    let _reader = ChildGuard::spawn(
        "hash loop",
        m.command(&["sh", "-c", &hash_loop]),
        &stack.dir.join("hash-loop.log"),
    )?;
    let probe_log = stack.dir.join("probes.log");
    let mut prober = ChildGuard::spawn(
        "read-prober",
        m.command(&["/usr/local/bin/read-prober", &file, &BIG_SIZE.to_string()]),
        &probe_log,
    )?;
    let mut seen = wait_for_more(&hashes, want, 2, Duration::from_secs(60))?;
    eprintln!("[{name}] the reader is hashing {file} ({seen} hashes so far, all right)");

    let mut restarts = Vec::new();
    for what in ["systemctl restart", "SIGKILL"] {
        let stopped = SystemTime::now();
        match what {
            "SIGKILL" => {
                m.run(&[
                    "systemctl",
                    "kill",
                    "--kill-who=main",
                    "-s",
                    "KILL",
                    "veil-snapshotter.service",
                ])?;
            }
            _ => {
                m.run(&[
                    "systemctl",
                    "restart",
                    "--no-block",
                    "veil-snapshotter.service",
                ])?;
            }
        }
        pid = m.wait_active("veil-snapshotter.service", &pid)?;
        let ready = SystemTime::now();
        let held = m.property("veil-snapshotter.service", "NFileDescriptorStore")?;
        wait_for_more(&hashes, want, seen + 1, MAX_PAUSE)?;
        std::thread::sleep(SETTLE);
        seen = check_hashes(&hashes, want)?;
        eprintln!(
            "[{name}] {what}: back in {:.2?} (PID {pid}, systemd holds {held} fds); {seen} \
             hashes so far, all right",
            ready.duration_since(stopped).unwrap_or_default()
        );
        if held != layers.to_string() {
            bail!("systemd holds {held} fds after the {what}, not {layers}");
        }
        restarts.push(Restart {
            what,
            stopped,
            ready,
        });
    }
    prober.check_running()?;
    prober.stop();
    report_pauses(name, &restarts, &probes_of(&probe_log))?;

    let journal = m.journal("veil-snapshotter.service")?;
    let handed = journal
        .lines()
        .filter(|l| l.contains("the fd store handed back layer connections"))
        .count();
    if handed < restarts.len() {
        bail!(
            "veil-snapshotter took the connections back {handed} times, not {}:\n{journal}",
            restarts.len()
        );
    }
    let mut logs = journal;
    logs.push_str(&std::fs::read_to_string(&hashes).unwrap_or_default());
    logs.push_str(&m.journal("containerd.service")?);
    if let Some(line) = logs.lines().find(|l| l.contains(ENOTCONN_TEXT)) {
        bail!("a log says {ENOTCONN_TEXT:?}: {line}");
    }
    eprintln!("[{name}] every hash right, no read failed, no ENOTCONN");
    Ok(())
}
