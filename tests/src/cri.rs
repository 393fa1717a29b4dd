//! Driving containerd's CRI plugin the way kubelet does: the CRI section of a test
//! containerd's config (Veil as the CRI snapshotter with the remote-snapshot annotations,
//! the sandbox image from the test registry, plain HTTP to it through `hosts.toml`, runc's
//! state below the test directory), a CRI v1 client (`k8s-cri`, tonic) on containerd's
//! socket, the pod sandbox image (busybox `sleep`, built here), and the steps of a pod:
//! `PullImage`, `RunPodSandbox` in the node's network namespace (no CNI),
//! `CreateContainer`, `StartContainer`, `ContainerStatus` until it exits, its log file.
//!
//! What stays outside the test directory: the pod's cgroups, below a parent named for the
//! test ([`CgroupParent`]), which is removed again (rmdir, empty directories only).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ContainerConfig, ContainerMetadata, ContainerState, CreateContainerRequest,
    ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{toml_string, SNAPSHOTTER};
use crate::lazy_image::{oci_arch, pack, tar_of, Entry, LayerFormat};
use crate::registry::{sha256, Pusher, OCI_CONFIG, OCI_MANIFEST};

/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How long one CRI call may take (a pull fetches a whole plain image).
pub const CRI_CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a container may run before [`CriClient::wait_exited`] gives up.
pub const CONTAINER_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The pod sandbox's command: sleeps until the sandbox is stopped (CRI kills it).
const SANDBOX_COMMAND: &[&str] = &["/bin/sleep", "86400"];

/// The CRI section of a test containerd's config (version 2), for containerd's
/// directory `dir`: Veil as the snapshotter with the remote-snapshot annotations,
/// `sandbox_image`, the runc runtime with its state below `dir`, registry hosts from
/// `dir/certs.d` (written here: plain HTTP to `registry_host`), no CNI configuration
/// (pods use the node's network), and the node key model of image decryption.
pub fn cri_config(dir: &Path, registry_host: &str, sandbox_image: &str) -> anyhow::Result<String> {
    let certs = dir.join("certs.d");
    let host_dir = certs.join(registry_host);
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{registry_host}\"\n\n[host.\"http://{registry_host}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni)?;
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    Ok(format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = {restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{SNAPSHOTTER}"
    disable_snapshot_annotations = false
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = {runc}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {certs}
  [plugins."io.containerd.grpc.v1.cri".image_decryption]
    key_model = "node"
"#,
        sandbox = toml_string(sandbox_image),
        restrict_oom = !can_lower_oom_score_adj(),
        runc = q(&dir.join("cri-runc")),
        cni = q(&cni),
        certs = q(&certs),
    ))
}

/// A file naming the image in its base layer (see [`image_layers`]).
pub const KIND_PATH: &str = "/etc/veil-kind.txt";

/// The two layers of a pod image named `kind`: busybox, small files and [`KIND_PATH`]
/// holding `kind`; a random file of `big_size` bytes (from `seed`) and a small file. The
/// layers of two names differ: containerd shares the snapshots of layers with the same
/// diff IDs between images, so identical layers would be prepared for the first image
/// only.
pub fn image_layers(
    kind: &str,
    seed: u64,
    big_size: usize,
    format: LayerFormat,
) -> anyhow::Result<Vec<crate::lazy_image::Layer>> {
    let mut base = crate::lazy_image::base_entries()?;
    base.push(Entry::File(
        KIND_PATH.trim_start_matches('/').into(),
        format!("{kind}\n").into_bytes(),
        0o644,
    ));
    Ok(vec![
        pack(tar_of(&base)?, format)?,
        pack(
            tar_of(&crate::lazy_image::top_entries(
                crate::lazy_image::random_bytes(big_size, seed),
            ))?,
            format,
        )?,
    ])
}

/// Whether this process may lower an OOM score adjustment (`CAP_SYS_RESOURCE`): CRI gives
/// the sandbox -998, which runc cannot set without it (containerd in a container, as on
/// some CI machines); `restrict_oom_score_adj` then keeps scores at containerd's.
pub fn can_lower_oom_score_adj() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .map(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
        .unwrap_or(false)
}

/// Pushes the pod sandbox image (busybox-static running [`SANDBOX_COMMAND`], one plain
/// tar+gzip layer) to `repo:tag`; returns its manifest digest.
pub async fn push_sandbox_image(pusher: &Pusher, repo: &str, tag: &str) -> anyhow::Result<String> {
    let busybox = std::fs::read(crate::image::BUSYBOX).with_context(|| {
        format!(
            "{} is missing: install Debian's busybox-static",
            crate::image::BUSYBOX
        )
    })?;
    let layer = pack(
        tar_of(&[
            Entry::Dir("bin", 0o755),
            Entry::File("bin/busybox".into(), busybox, 0o755),
            Entry::Symlink("bin/sleep".into(), "busybox".into()),
        ])?,
        LayerFormat::PlainGzip,
    )?;
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Entrypoint": SANDBOX_COMMAND },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": layer.media_type, "digest": layer.digest, "size": layer.blob.len() }],
    }))?;
    pusher.blob(repo, &config).await;
    pusher.blob(repo, &layer.blob).await;
    Ok(pusher.manifest(repo, tag, OCI_MANIFEST, &manifest).await)
}

/// The cgroup parent of a test's pods (cgroupfs driver): `veil-test-cri-<pid>`, removed
/// again from every hierarchy by [`CgroupParent::remove`] or on drop (rmdir: only when
/// empty, never anything runc did not make for us).
pub struct CgroupParent {
    name: String,
}

impl CgroupParent {
    /// A name unique to this test process.
    pub fn new() -> Self {
        Self {
            name: format!("veil-test-cri-{}", std::process::id()),
        }
    }

    /// The parent as the pod's `cgroup_parent`.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Removes the (empty) parent directories from every cgroup hierarchy.
    pub fn remove(&self) {
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join(&self.name))
            .collect();
        // cgroup v2: the parent is right below the root.
        dirs.push(Path::new("/sys/fs/cgroup").join(&self.name));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Default for CgroupParent {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A CRI v1 client on containerd's socket: the runtime and image services.
pub struct CriClient {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// What a container did: its exit code and what it logged (stdout and stderr, in order).
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit_code: i32,
    pub log: String,
}

impl CriClient {
    /// Connects to the CRI services on the unix socket `socket` (containerd's, or a proxy's
    /// for the image service).
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let channel = unix_channel(socket).await?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `PullImage` of `image` (with `auth`, as kubelet sends an imagePullSecret); returns
    /// the image reference containerd answers (the image ID) and the call's duration.
    pub async fn pull(
        &mut self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> anyhow::Result<(String, Duration)> {
        let start = Instant::now();
        let response = tokio::time::timeout(
            CRI_CALL_TIMEOUT,
            self.images.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    annotations: HashMap::new(),
                }),
                auth,
                sandbox_config: None,
            }),
        )
        .await
        .with_context(|| format!("PullImage {image} did not answer in {CRI_CALL_TIMEOUT:?}"))?
        .map_err(|s| anyhow::anyhow!("PullImage {image}: {} ({:?})", s.message(), s.code()))?;
        Ok((response.into_inner().image_ref, start.elapsed()))
    }

    /// `RunPodSandbox` of a pod named `name` in the node's network, PID and IPC namespaces
    /// (no CNI), its cgroups below `cgroup_parent`, its containers' logs below `log_dir`;
    /// returns the sandbox ID.
    pub async fn run_pod(
        &mut self,
        name: &str,
        log_dir: &Path,
        cgroup_parent: &str,
    ) -> anyhow::Result<(String, PodSandboxConfig)> {
        std::fs::create_dir_all(log_dir)?;
        let node = NamespaceMode::Node as i32;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{name}-uid"),
                namespace: "veil-test".into(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.to_string(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: node,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let response = tokio::time::timeout(
            CRI_CALL_TIMEOUT,
            self.runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await
        .context("RunPodSandbox did not answer")?
        .map_err(|s| anyhow::anyhow!("RunPodSandbox {name}: {}", s.message()))?;
        Ok((response.into_inner().pod_sandbox_id, config))
    }

    /// `CreateContainer` + `StartContainer` of `image` running `command` in the pod,
    /// logging to `<pod log dir>/<name>.log`; returns the container ID.
    pub async fn start_container(
        &mut self,
        pod: &(String, PodSandboxConfig),
        name: &str,
        image: &str,
        command: &[&str],
    ) -> anyhow::Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                annotations: HashMap::new(),
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let created = tokio::time::timeout(
            CRI_CALL_TIMEOUT,
            self.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            }),
        )
        .await
        .context("CreateContainer did not answer")?
        .map_err(|s| anyhow::anyhow!("CreateContainer {name} ({image}): {}", s.message()))?
        .into_inner()
        .container_id;
        tokio::time::timeout(
            CRI_CALL_TIMEOUT,
            self.runtime.start_container(StartContainerRequest {
                container_id: created.clone(),
            }),
        )
        .await
        .context("StartContainer did not answer")?
        .map_err(|s| anyhow::anyhow!("StartContainer {name} ({image}): {}", s.message()))?;
        Ok(created)
    }

    /// Polls `ContainerStatus` until the container has exited; returns its exit code and
    /// its log file's messages.
    pub async fn wait_exited(&mut self, id: &str) -> anyhow::Result<Finished> {
        let start = Instant::now();
        loop {
            let status = self
                .runtime
                .container_status(k8s_cri::v1::ContainerStatusRequest {
                    container_id: id.to_string(),
                    verbose: false,
                })
                .await
                .map_err(|s| anyhow::anyhow!("ContainerStatus {id}: {}", s.message()))?
                .into_inner()
                .status
                .with_context(|| format!("ContainerStatus {id} answered no status"))?;
            if status.state == ContainerState::ContainerExited as i32 {
                let raw = std::fs::read_to_string(&status.log_path)
                    .with_context(|| format!("reading the container's log {}", status.log_path))?;
                return Ok(Finished {
                    exit_code: status.exit_code,
                    log: cri_log_messages(&raw),
                });
            }
            if start.elapsed() > CONTAINER_EXIT_TIMEOUT {
                bail!("container {id} did not exit within {CONTAINER_EXIT_TIMEOUT:?}: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&mut self, id: &str) -> anyhow::Result<()> {
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("RemoveContainer {id}: {}", s.message()))?;
        Ok(())
    }

    /// `StopPodSandbox` + `RemovePodSandbox`.
    pub async fn remove_pod(&mut self, id: &str) -> anyhow::Result<()> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("StopPodSandbox {id}: {}", s.message()))?;
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("RemovePodSandbox {id}: {}", s.message()))?;
        Ok(())
    }
}

/// A tonic channel whose every connection goes to the unix socket `socket`.
pub async fn unix_channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_path_buf();
    // The URI is not used: every connection goes to the socket.
    Endpoint::try_from("http://cri.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
        .context("connecting to the CRI socket")
}

/// The messages of a CRI log file (`TIME STREAM TAG MESSAGE` per line; `F` full lines end
/// with a newline, `P` partial ones are joined to the next).
pub fn cri_log_messages(raw: &str) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag, message) = (parts.next(), parts.next(), parts.next(), parts.next());
        out.push_str(message.unwrap_or(""));
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cri_log_lines() {
        let raw = "2026-01-01T00:00:00.1Z stdout F hello\n\
                   2026-01-01T00:00:00.2Z stdout P par\n\
                   2026-01-01T00:00:00.3Z stdout F tial\n\
                   2026-01-01T00:00:00.4Z stderr F \n";
        assert_eq!(cri_log_messages(raw), "hello\npartial\n\n");
    }

    #[test]
    fn config_names_veil_and_keeps_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let toml = cri_config(dir.path(), "127.0.0.1:5000", "127.0.0.1:5000/pause:1").unwrap();
        assert!(toml.contains("snapshotter = \"veil\""));
        assert!(toml.contains("disable_snapshot_annotations = false"));
        assert!(toml.contains("key_model = \"node\""));
        let hosts =
            std::fs::read_to_string(dir.path().join("certs.d/127.0.0.1:5000/hosts.toml")).unwrap();
        assert!(hosts.contains("server = \"http://127.0.0.1:5000\""));
    }
}
