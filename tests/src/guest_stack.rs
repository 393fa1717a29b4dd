//! A CoCo guest's image-pull stack for tests and the demo, all below one temporary
//! directory: Debian's docker-registry on loopback, the test KBS, the CDH and
//! attestation-agent stand-ins ([`crate::cdh_standin`]) on their sockets, and the real
//! `veil-guest` binary (a process, its config file written here) binding the "CDH socket"
//! with the stand-in as its upstream. Dropped: veil-guest stopped by PID, the stand-ins
//! stopped, every mount below the directory detached, the registry stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cdh_standin::{AaStandIn, CdhStandIn, TtrpcClient};
use crate::lazy_image::{push_image, Layer};
use crate::mounts::{mounts_below, unmount_below};
use crate::process::ChildGuard;
use crate::registry::{Pusher, Registry};
use crate::test_kbs::InProcessKbs;
use crate::{require_root, veil_binary};

/// How long veil-guest may take to bind its socket and log its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the watcher may take to release what an unmounted root held.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

/// One `ExtendRuntimeMeasurement` the attestation agent received, decoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PullMeasurement {
    /// `Domain`.
    pub domain: String,
    /// `Operation`.
    pub operation: String,
    /// `image` of the content.
    pub image: String,
    /// `digest` of the content.
    pub digest: String,
}

/// The stack; see the module doc.
pub struct GuestStack {
    /// The running veil-guest, if started.
    pub veil: Option<ChildGuard>,
    /// The CDH stand-in (upstream), until stopped.
    pub cdh: Option<CdhStandIn>,
    /// The attestation-agent stand-in.
    pub aa: Option<AaStandIn>,
    /// The test KBS (sample TEE, plain HTTP).
    pub kbs: InProcessKbs,
    /// The registry.
    pub registry: Registry,
    /// The runtime the stand-ins and clients run on.
    pub runtime: tokio::runtime::Runtime,
    /// The stack's directory (canonical).
    pub dir: PathBuf,
    /// Veil's socket (kata-agent's).
    pub socket: PathBuf,
    /// The CDH stand-in's socket.
    pub upstream: PathBuf,
    /// The attestation agent's socket.
    pub aa_socket: PathBuf,
    /// veil-guest's config file.
    pub config: PathBuf,
    starts: usize,
    _tmp: tempfile::TempDir,
}

impl Drop for GuestStack {
    fn drop(&mut self) {
        if let Some(mut v) = self.veil.take() {
            v.stop();
        }
        if let Some(cdh) = self.cdh.take() {
            self.runtime.block_on(cdh.stop());
        }
        if let Some(aa) = self.aa.take() {
            self.runtime.block_on(aa.stop());
        }
        unmount_below(&self.dir);
        self.registry.stop();
    }
}

impl GuestStack {
    /// Starts the registry, the KBS and the stand-ins (the CDH serving `cdh_resources`
    /// through `GetResource`) in a new directory named after `prefix`.
    pub fn new(prefix: &str, cdh_resources: HashMap<String, Vec<u8>>) -> anyhow::Result<Self> {
        require_root();
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let dir = tmp.path().canonicalize()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let registry = runtime.block_on(Registry::start(None));
        let kbs = InProcessKbs::start(&dir.join("kbs"))?;
        let (socket, upstream, aa_socket) = (
            dir.join("cdh.sock"),
            dir.join("cdh-upstream.sock"),
            dir.join("aa.sock"),
        );
        let cdh = runtime.block_on(CdhStandIn::start(&upstream, cdh_resources))?;
        let aa = runtime.block_on(AaStandIn::start(&aa_socket, 0))?;
        Ok(Self {
            veil: None,
            cdh: Some(cdh),
            aa: Some(aa),
            kbs,
            registry,
            runtime,
            config: dir.join("veil-guest.toml"),
            dir,
            socket,
            upstream,
            aa_socket,
            starts: 0,
            _tmp: tmp,
        })
    }

    /// Writes veil-guest's config: the registry over plain HTTP, no background fetch,
    /// `kek_sources` (the `kbs` source at the test KBS with the sample attester), the
    /// stack's sockets, a work directory below the stack's, `cdh_config` (none: `""`).
    pub fn write_config(
        &self,
        kek_sources: &[&str],
        cdh_config: Option<&Path>,
    ) -> anyhow::Result<()> {
        self.write_config_with(kek_sources, cdh_config, "")
    }

    /// [`Self::write_config`] with `extra` appended (further sections, e.g. `[cache]`).
    pub fn write_config_with(
        &self,
        kek_sources: &[&str],
        cdh_config: Option<&Path>,
        extra: &str,
    ) -> anyhow::Result<()> {
        let sources: Vec<String> = kek_sources.iter().map(|s| format!("\"{s}\"")).collect();
        std::fs::write(
            &self.config,
            format!(
                "log_level = \"info\"\n\n[registry]\nplain_http = [\"{host}\"]\nread_retry_seconds = 5\n\n\
                 [lazy]\nbackground_fetch = false\n\n\
                 [decryption]\nkeys_dir = \"{no_keys}\"\nkek_sources = [{sources}]\n\
                 kbs_url = \"{kbs}\"\nkbs_allow_plain_http = true\nattester = \"sample\"\n\n\
                 [guest]\nsocket = \"{socket}\"\nupstream_socket = \"{upstream}\"\n\
                 aa_socket = \"{aa}\"\nwork_dir = \"{work}\"\nwatch_interval_ms = 300\n\
                 cdh_config = \"{cdh_config}\"\nshutdown_grace_seconds = 10\nupstream_wait_seconds = 2\n\n{extra}",
                host = self.registry.host(),
                no_keys = self.dir.join("no-keys").display(),
                sources = sources.join(", "),
                kbs = self.kbs.url(),
                socket = self.socket.display(),
                upstream = self.upstream.display(),
                aa = self.aa_socket.display(),
                work = self.dir.join("work").display(),
                cdh_config = cdh_config.map(|p| p.display().to_string()).unwrap_or_default(),
            ),
        )?;
        Ok(())
    }

    /// Starts veil-guest on the config and waits for its ready line.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut cmd = Command::new(veil_binary("veil-guest"));
        cmd.arg("--config").arg(&self.config);
        let log = self.dir.join(format!("veil-guest-{}.log", self.starts));
        let mut veil = ChildGuard::spawn("veil-guest", cmd, &log)?;
        veil.wait_for_path(&self.socket, START_TIMEOUT)?;
        let start = Instant::now();
        while !veil.output().contains("veil-guest ready") {
            veil.check_running()?;
            if start.elapsed() > START_TIMEOUT {
                bail!("no ready line from veil-guest: {}", veil.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.veil = Some(veil);
        Ok(())
    }

    /// The running veil-guest.
    pub fn veil(&mut self) -> anyhow::Result<&mut ChildGuard> {
        self.veil.as_mut().context("veil-guest is not running")
    }

    /// What every veil-guest started so far logged, one block per start.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                let log = self.dir.join(format!("veil-guest-{i}.log"));
                format!(
                    "--- {}:\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Pushes `layers` as `repo:1`; the image reference and the manifest digest.
    pub fn push(&self, repo: &str, layers: &[Layer]) -> anyhow::Result<(String, String)> {
        let pusher = Pusher::new(self.registry.base(), None);
        let pushed = self
            .runtime
            .block_on(push_image(&pusher, repo, "1", layers))?;
        Ok((self.image(repo), pushed.manifest_digest))
    }

    /// `host:port/repo:1`.
    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:1", self.registry.host())
    }

    /// A fresh bundle directory, as kata-agent makes one.
    pub fn bundle(&self, name: &str) -> anyhow::Result<PathBuf> {
        let b = self.dir.join("bundles").join(name);
        std::fs::create_dir_all(&b)?;
        Ok(b)
    }

    /// A kata-agent-like client on Veil's socket (one connection).
    pub fn client(&self) -> anyhow::Result<TtrpcClient> {
        self.runtime.block_on(TtrpcClient::connect(&self.socket))
    }

    /// The runtime measurements the attestation agent recorded, decoded.
    pub fn measurements(&self) -> Vec<PullMeasurement> {
        let aa = self
            .aa
            .as_ref()
            .map(|a| a.measurements())
            .unwrap_or_default();
        aa.into_iter()
            .map(|m| {
                let v: serde_json::Value =
                    serde_json::from_str(&m.content).unwrap_or(serde_json::Value::Null);
                PullMeasurement {
                    domain: m.domain,
                    operation: m.operation,
                    image: v["image"].as_str().unwrap_or_default().to_string(),
                    digest: v["digest"].as_str().unwrap_or_default().to_string(),
                }
            })
            .collect()
    }

    /// Every mount below the stack's directory (Veil's layer mounts in the work directory
    /// and the roots in the bundles).
    pub fn mounts(&self) -> Vec<String> {
        mounts_below(&self.dir)
    }

    /// Waits until nothing is mounted below the stack's directory.
    pub fn wait_nothing_mounted(&self, after: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let left = self.mounts();
            if left.is_empty() {
                return Ok(());
            }
            if start.elapsed() > RELEASE_TIMEOUT {
                bail!("after {after}: still mounted: {left:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
