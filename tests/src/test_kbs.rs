//! The test KBS ([`crate::kbs_server`]) run inside the calling process, on 127.0.0.1 and a
//! free port, with a resources directory of its own: for the end-to-end tests and the demo,
//! which need a KBS beside containerd and Veil but not a process of its own to stop.
//!
//! The server runs on a small runtime owned by [`InProcessKbs`]; dropping it stops the
//! server. Resources are files (`<resources>/<repo>/<type>/<tag>`) that can be added and
//! removed while it runs; its Prometheus counters are read back with
//! [`metrics`](InProcessKbs::metrics).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::kbs_server::{self, parse_metrics, KbsServerConfig};

/// Counter of successful attestations with the sample TEE.
pub const SAMPLE_ATTESTATIONS: &str = "kbs_attestation_successes_total{tee_type=\"sample\"}";
/// Counter of `POST /kbs/v0/auth` requests.
pub const AUTH_REQUESTS: &str = "kbs_auth_requests_total";
/// Counter of `POST /kbs/v0/attest` requests.
pub const ATTESTATION_REQUESTS: &str = "kbs_attestation_requests_total";
/// Counter of resource requests that reached the policy (a valid token).
pub const POLICY_EVALUATIONS: &str = "kbs_policy_evaluations_total";

/// The counter of reads of the resource `repo/type/tag`.
pub fn resource_reads(path: &str) -> String {
    format!("kbs_resource_reads_total{{resource_path=\"{path}\"}}")
}

/// A running test KBS (plain HTTP, sample TEE, allow-all policy).
pub struct InProcessKbs {
    url: String,
    resources: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InProcessKbs {
    /// Starts a KBS serving the resources below `dir/resources` (made if missing).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let resources = dir.join("resources");
        std::fs::create_dir_all(&resources)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-kbs")
            .enable_all()
            .build()?;
        let router = kbs_server::router(KbsServerConfig::new(&resources))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the test KBS to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            if let Err(e) = kbs_server::serve(listener, router, None).await {
                eprintln!("test KBS: {e:#}");
            }
        });
        Ok(Self {
            url: format!("http://{addr}"),
            resources,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stores `bytes` as the resource `repo/type/tag`.
    pub fn put(&self, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let file = self.resources.join(path);
        std::fs::create_dir_all(file.parent().context("a resource path has a parent")?)?;
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))
    }

    /// Removes the resource `repo/type/tag`.
    pub fn remove(&self, path: &str) -> anyhow::Result<()> {
        let file = self.resources.join(path);
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))
    }

    /// The KBS's counters (`GET /metrics`): `name{labels}` → value.
    pub fn metrics(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let url = format!("{}/metrics", self.url);
        let runtime = self.runtime.as_ref().context("the test KBS was stopped")?;
        let text = runtime.block_on(async {
            reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        })?;
        Ok(parse_metrics(&text))
    }
}

/// The value of counter `name` in `metrics` (0 when absent).
pub fn count(metrics: &BTreeMap<String, u64>, name: &str) -> u64 {
    metrics.get(name).copied().unwrap_or(0)
}

impl Drop for InProcessKbs {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
