//! The parts of a lazy-pull test, started and stopped together: Debian's `docker-registry`
//! on loopback, Veil's snapshotter (plain HTTP to that registry) and a private containerd
//! using it. Images are pushed before Veil and containerd start; tests that need only
//! the registry (`veil mount`) never start them.
//!
//! Everything started is stopped again by PID and everything mounted below the stack's
//! temporary directory is unmounted, when the test ends, also on failure.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::containerd::{process_alive, Containerd, NAMESPACE};
use crate::lazy_image::{push_image, Layer, PushedLazyImage};
use crate::process::{run_with_timeout, ChildGuard};
use crate::registry::{Pusher, Registry, TokenAuth, REGISTRY_BIN};
use crate::registry_log::blob_served;
use crate::scenario::{wait_for_reconnect, Reconnect, VeilSnapshotter};

/// containerd tests share `/run/containerd`; they run one at a time in a test binary.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// How long `veil pull` may take.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(180);

/// Registry, snapshotter and containerd for one test. Dropped in this order: containerd
/// (shut down), Veil, mounts, the registry.
pub struct LazyStack {
    containerd: Option<Containerd>,
    pub veil: VeilSnapshotter,
    pub registry: Registry,
    /// The registry started again by [`restart_registry`](Self::restart_registry).
    registry_again: Option<ChildGuard>,
    pub runtime: tokio::runtime::Runtime,
    /// The test's directory (canonical); everything the stack makes is below it.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for LazyStack {
    fn drop(&mut self) {
        if let Some(mut cd) = self.containerd.take() {
            cd.shutdown();
        }
        self.veil.stop();
        crate::unmount_below(&self.dir);
        self.registry_again.take();
        self.registry.stop();
    }
}

impl LazyStack {
    /// Starts the registry only (images are pushed before the rest starts), in a fresh
    /// temporary directory named after `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        Self::new_with_auth(name, None)
    }

    /// [`new`](Self::new) with the registry in token-auth mode (`auth`; see
    /// `crate::token` for the token service).
    pub fn new_with_auth(name: &str, auth: Option<&TokenAuth>) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("veil-{name}-"))
            .tempdir()?;
        let dir = tmp.path().canonicalize()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let registry = runtime.block_on(Registry::start(auth));
        // Veil reaches the registry over plain HTTP.
        let config = dir.join("veil-config.toml");
        std::fs::write(
            &config,
            // No background fetch: the tests count what reads alone fetch.
            format!(
                "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = false\n",
                registry.host()
            ),
        )?;
        let veil = VeilSnapshotter::new(
            crate::veil_binary("veil-snapshotter"),
            dir.join("veil"),
            dir.join("veil.sock"),
            dir.clone(),
        )
        .with_config(config);
        Ok(Self {
            containerd: None,
            veil,
            registry,
            registry_again: None,
            runtime,
            dir,
            _tmp: tmp,
        })
    }

    /// Pushes `layers` as `repo:tag`; returns the manifest digest.
    pub fn push(&self, repo: &str, tag: &str, layers: &[Layer]) -> anyhow::Result<String> {
        Ok(self.push_image(repo, tag, layers)?.manifest_digest)
    }

    /// Pushes `layers` as `repo:tag`; returns what was pushed.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Layer],
    ) -> anyhow::Result<PushedLazyImage> {
        let pusher = Pusher::new(self.registry.base(), None);
        self.runtime
            .block_on(push_image(&pusher, repo, tag, layers))
    }

    /// Starts Veil and containerd.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.veil.start().context("starting veil-snapshotter")?;
        let cd = Containerd::start(&self.dir.join("containerd"), self.veil.socket())
            .context("starting containerd")?;
        self.containerd = Some(cd);
        Ok(())
    }

    /// Starts Veil and a containerd with its CRI plugin on (Veil as the CRI snapshotter,
    /// plain HTTP to this stack's registry, `sandbox_image` as the pods' sandbox image;
    /// see [`crate::cri::cri_config`]).
    pub fn start_cri(&mut self, sandbox_image: &str) -> anyhow::Result<()> {
        self.veil.start().context("starting veil-snapshotter")?;
        let host = self.registry.host();
        let cd = Containerd::start_cri(&self.dir.join("containerd"), self.veil.socket(), &|dir| {
            crate::cri::cri_config(dir, &host, sandbox_image)
        })
        .context("starting containerd with its CRI plugin")?;
        self.containerd = Some(cd);
        Ok(())
    }

    /// Stops veil-snapshotter (SIGTERM) and starts it again on the same root, waiting
    /// until containerd reaches it.
    pub fn restart_veil(&mut self) -> anyhow::Result<Reconnect> {
        let exit = self.veil.stop();
        if !exit.map(|e| e.success()).unwrap_or(false) {
            bail!("veil-snapshotter exited with {exit:?} on SIGTERM");
        }
        self.start_veil_again()
    }

    /// Starts veil-snapshotter again on the same root (after it was stopped or killed),
    /// waiting until containerd reaches it.
    pub fn start_veil_again(&mut self) -> anyhow::Result<Reconnect> {
        self.veil
            .start()
            .context("starting veil-snapshotter again")?;
        let cd = self
            .containerd
            .as_ref()
            .context("containerd is not running")?;
        wait_for_reconnect(cd, &mut self.veil)
    }

    /// The running containerd.
    pub fn cd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd started")
    }

    /// `HOST:PORT/repo:tag` on this stack's registry.
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.registry.host())
    }

    /// `veil pull --plain-http -a SOCK -n NS EXTRA... REF`, with its duration.
    pub fn veil_pull(&self, reference: &str, extra: &[&str]) -> anyhow::Result<(Output, Duration)> {
        self.veil_pull_in(NAMESPACE, reference, extra)
    }

    /// [`LazyStack::veil_pull`] into containerd namespace `namespace`.
    pub fn veil_pull_in(
        &self,
        namespace: &str,
        reference: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Output, Duration)> {
        let mut cmd = Command::new(crate::veil_binary("veil"));
        cmd.arg("pull")
            .arg("--plain-http")
            .arg("-a")
            .arg(self.cd().address())
            .arg("-n")
            .arg(namespace)
            .args(extra)
            .arg(reference)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        let start = Instant::now();
        let out = run_with_timeout(cmd, PULL_TIMEOUT, &self.dir.join("veil-pull"))?;
        Ok((out, start.elapsed()))
    }

    /// The daemon's status socket: `status.sock` beside its snapshots socket.
    pub fn status_address(&self) -> PathBuf {
        self.veil.socket().with_file_name("status.sock")
    }

    /// `veil status --address <status socket> [--json]` (bounded by 30 s).
    pub fn veil_status(&self, json: bool) -> anyhow::Result<Output> {
        let mut cmd = Command::new(crate::veil_binary("veil"));
        cmd.arg("status")
            .arg("--address")
            .arg(self.status_address());
        if json {
            cmd.arg("--json");
        }
        run_with_timeout(cmd, Duration::from_secs(30), &self.dir.join("veil-status"))
    }

    /// `veil status --json`, parsed; fails with what the command printed when it fails
    /// or prints no JSON.
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.veil_status(true)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            anyhow::bail!(
                "veil status --json failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow::anyhow!("veil status --json printed no JSON ({e}):\n{stdout}"))
    }

    /// The registry's access log so far (both runs, when it was restarted).
    pub fn registry_log(&self) -> String {
        let mut log = self.registry.log();
        if let Ok(again) = std::fs::read_to_string(self.registry_again_log()) {
            log.push_str(&again);
        }
        log
    }

    fn registry_again_log(&self) -> PathBuf {
        self.dir.join("registry-restarted.log")
    }

    /// Kills the registry (by its PID); its data directory stays.
    pub fn kill_registry(&mut self) {
        self.registry_again.take();
        self.registry.stop();
    }

    /// Starts the registry again on the same port with the same data directory (after
    /// [`kill_registry`](Self::kill_registry)), waiting (at most 15 s) until it answers.
    pub fn restart_registry(&mut self) -> anyhow::Result<()> {
        if self.registry_again.is_some() {
            bail!("the registry was already started again");
        }
        let config = self.registry.dir.path().join("config.yml");
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve").arg(&config);
        let mut guard = ChildGuard::spawn("docker-registry", cmd, &self.registry_again_log())?;
        let probe = format!("{}/v2/", self.registry.base());
        let deadline = Instant::now() + Duration::from_secs(15);
        let answered = self.runtime.block_on(async {
            let http = reqwest::Client::new();
            while Instant::now() < deadline {
                let sent = http
                    .get(&probe)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if sent.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        });
        if !answered {
            guard.check_running()?;
            bail!(
                "the restarted registry did not answer within 15 s:\n{}",
                guard.output()
            );
        }
        self.registry_again = Some(guard);
        Ok(())
    }

    /// Body bytes the registry served for `digest` so far (requests, bytes).
    pub fn served(&self, digest: &str) -> (usize, u64) {
        blob_served(&self.registry_log(), digest)
    }

    /// The last lines of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, text) in [
            ("veil-snapshotter", self.veil.log_text()),
            (
                "containerd",
                self.containerd
                    .as_ref()
                    .map(|c| c.log_text())
                    .unwrap_or_default(),
            ),
            ("registry", self.registry_log()),
        ] {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "\n--- last lines of the {name} log ---\n{}",
                tail.join("\n")
            ));
        }
        out
    }

    /// Shuts everything down and checks nothing is left running or mounted.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let mut pids = self.veil.pids.clone();
        if let Some(mut cd) = self.containerd.take() {
            pids.push(cd.pid());
            let report = cd.shutdown();
            if !report.shims_left.is_empty() {
                bail!("containerd shims outlived containerd: {report:?}");
            }
        }
        if !self.veil.pids.is_empty() {
            let exit = self.veil.stop();
            if !exit.map(|e| e.success()).unwrap_or(false) {
                bail!("veil-snapshotter exited with {exit:?} on SIGTERM");
            }
        }
        let mounts = crate::mounts::mounts_below(&self.dir);
        crate::unmount_below(&self.dir);
        if !mounts.is_empty() {
            bail!("mounts left below the test directory: {mounts:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
        let alive: Vec<u32> = pids.into_iter().filter(|p| process_alive(*p)).collect();
        if !alive.is_empty() {
            bail!("processes still alive after clean-up: {alive:?}");
        }
        Ok(())
    }
}

/// The entry of layer `digest` in a `veil status --json` report; the error shows the
/// report.
pub fn status_layer<'a>(
    report: &'a serde_json::Value,
    digest: &str,
) -> anyhow::Result<&'a serde_json::Value> {
    report["layers"]
        .as_array()
        .and_then(|layers| layers.iter().find(|l| l["digest"].as_str() == Some(digest)))
        .with_context(|| format!("veil status does not list layer {digest}:\n{report:#}"))
}

/// Runs `body` on a fresh stack named `name` (one test at a time, see [`SERIAL`]); on
/// failure, panics with the error and the logs; on success, shows the snapshotter's
/// warnings and checks the clean-up.
pub fn with_stack(name: &str, body: impl FnOnce(&mut LazyStack) -> anyhow::Result<()>) {
    with_auth_stack(name, None, body)
}

/// [`with_stack`] with the registry in token-auth mode (`auth`).
pub fn with_auth_stack(
    name: &str,
    auth: Option<&TokenAuth>,
    body: impl FnOnce(&mut LazyStack) -> anyhow::Result<()>,
) {
    crate::require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut stack = LazyStack::new_with_auth(name, auth).unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) = body(&mut stack) {
        let logs = stack.logs();
        drop(stack);
        panic!("{e:#}\n{logs}");
    }
    // Worth seeing even when the test passes.
    if !stack.veil.pids.is_empty() {
        let log = stack.veil.log_text();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        eprintln!(
            "[{name}] veil-snapshotter logged {} warning(s)/error(s){}",
            notable.len(),
            notable
                .iter()
                .take(20)
                .map(|l| format!("\n    {l}"))
                .collect::<String>()
        );
    }
    stack.finish().unwrap_or_else(|e| panic!("{e:#}"));
}

/// Bytes as text (lossy UTF-8).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The lines of `log` that contain every one of `needles`.
pub fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}
