//! Pods through containerd's CRI plugin, the way kubelet starts them, with Veil as the CRI
//! snapshotter (`snapshotter = "veil"`, `disable_snapshot_annotations = false`): Debian's
//! `docker-registry` on loopback serving a sandbox image (busybox `sleep`, plain tar+gzip)
//! and three images of the same two layers (busybox and small files; an 8 MiB random file
//! and a small file): eStargz, eStargz encrypted with ocicrypt for a key on the node
//! (Veil's `[decryption] keys_dir`; containerd's `image_decryption` key model "node"), and
//! plain tar+gzip. A CRI v1 client (`k8s-cri`) on containerd's socket: `PullImage` of the
//! sandbox image, `RunPodSandbox` in the node's network namespace (no CNI), then for each
//! image `PullImage`, `CreateContainer`, `StartContainer`, `ContainerStatus` until it
//! exits, its CRI log file, `RemoveContainer`; `StopPodSandbox`, `RemovePodSandbox`.
//!
//! Each kind's layers differ (a file naming the kind in the base layer, its own random
//! file): containerd would otherwise share the snapshots of identical layers between the
//! images (same diff IDs), and only the first kind would be prepared.
//!
//! Checked: each container printed the small files (its kind's) exactly and exited 0; the eStargz
//! and encrypted images were served lazily (the registry served well under 10 % of the big
//! layer, `veil status` lists their layers as `lazy`), the plain image fell back to
//! containerd's unpack (`veil status` lists its layers as fallbacks with a reason, the
//! registry served the whole big layer); no log holds the private key. Printed: for each
//! kind, the time from `PullImage` to the container running and to its exit.
//!
//! Needs root, containerd 1.6 (CRI plugin built in), runc, docker-registry,
//! busybox-static, FUSE and openssl. Run with
//! `cargo test -p veil-tests --test cri_run -- --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use veil_keyprovider::keys::PublicKey;
use veil_tests::cri::{image_layers, push_sandbox_image, CgroupParent, CriClient, KIND_PATH};
use veil_tests::encrypted_support::{
    check_no_key_in_logs, sealed_encrypt, write_veil_config, Keys,
};
use veil_tests::lazy_image::{
    Layer, LayerFormat, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use veil_tests::lazy_stack::{status_layer, with_stack, LazyStack};
use veil_tests::log_secrets::check_no_secret_in_logs;

/// Size of the big random file in the second layer.
const BIG_SIZE: usize = 8 << 20;

/// The share of the big layer a lazily served image may have fetched to read two small
/// files (the TOC, the footer, the small files' chunks and the prefetched files).
const LAZY_SHARE: f64 = 0.10;

/// One image kind of the test.
struct Kind {
    name: &'static str,
    repo: &'static str,
    layers: Vec<Layer>,
    lazy: bool,
}

/// What one pod's container took.
struct Timing {
    kind: &'static str,
    pull: Duration,
    running: Duration,
    exited: Duration,
    big_served: u64,
    big_size: u64,
}

fn kinds(public: &PublicKey) -> anyhow::Result<Vec<Kind>> {
    let estargz = image_layers("estargz", 0xc12e_5eed_0001, BIG_SIZE, LayerFormat::Estargz)?;
    let to_encrypt = image_layers(
        "encrypted",
        0xc12e_5eed_0002,
        BIG_SIZE,
        LayerFormat::Estargz,
    )?;
    let encrypted = sealed_encrypt(&to_encrypt, public)?;
    Ok(vec![
        Kind {
            name: "estargz",
            repo: "cri/estargz",
            layers: estargz,
            lazy: true,
        },
        Kind {
            name: "encrypted",
            repo: "cri/encrypted",
            layers: encrypted,
            lazy: true,
        },
        Kind {
            name: "targz",
            repo: "cri/targz",
            layers: image_layers("targz", 0xc12e_5eed_0003, BIG_SIZE, LayerFormat::PlainGzip)?,
            lazy: false,
        },
    ])
}

/// `veil status --json` lists every layer of a lazy kind as `lazy`, and every layer of a
/// plain kind as a fallback with a reason.
fn check_status(stack: &LazyStack, kind: &Kind) -> anyhow::Result<()> {
    let report = stack.status_json()?;
    for layer in &kind.layers {
        if kind.lazy {
            let l = status_layer(&report, &layer.digest)?;
            if l["mode"].as_str() != Some("lazy") || l["blob_size"].as_u64() != Some(layer.size()) {
                bail!(
                    "[{}] veil status does not show layer {} as lazy: {l:#}",
                    kind.name,
                    layer.digest
                );
            }
        } else {
            let reason = report["fallbacks"]
                .as_array()
                .and_then(|f| {
                    f.iter()
                        .find(|f| f["digest"].as_str() == Some(&layer.digest))
                })
                .and_then(|f| f["reason"].as_str())
                .unwrap_or("");
            if reason.trim().is_empty() {
                bail!(
                    "[{}] veil status does not list the fallback {} with a reason:\n{report:#}",
                    kind.name,
                    layer.digest
                );
            }
            eprintln!(
                "[cri] {} layer {}: fallback, {reason}",
                kind.name, layer.digest
            );
        }
    }
    Ok(())
}

/// Runs one pod container of `kind` (pulled first, as kubelet does) and checks what it
/// printed and what the registry served.
async fn run_kind(
    stack: &LazyStack,
    cri: &mut CriClient,
    pod: &(String, k8s_cri::v1::PodSandboxConfig),
    kind: &Kind,
) -> anyhow::Result<Timing> {
    let reference = stack.image_ref(kind.repo, "1");
    let start = Instant::now();
    let (image_id, pull) = cri.pull(&reference, None).await?;
    let id = cri
        .start_container(
            pod,
            kind.name,
            &reference,
            &["/bin/cat", HELLO_PATH, LAYER2_PATH, KIND_PATH],
        )
        .await?;
    let running = start.elapsed();
    let done = cri.wait_exited(&id).await?;
    let exited = start.elapsed();
    cri.remove_container(&id).await?;
    eprintln!(
        "[cri] {}: PullImage {reference} -> {image_id} in {pull:.2?}",
        kind.name
    );
    let want = format!("{HELLO_TEXT}{LAYER2_TEXT}{}\n", kind.name);
    if done.exit_code != 0 || done.log != want {
        bail!(
            "[{}] the container exited with {} and logged {:?}, expected 0 and {want:?}",
            kind.name,
            done.exit_code,
            done.log
        );
    }
    let big = &kind.layers[1];
    let (_, big_served) = stack.served(&big.digest);
    let share = big_served as f64 / big.size() as f64;
    if kind.lazy && share >= LAZY_SHARE {
        bail!(
            "[{}] the registry served {big_served} of the big layer's {} bytes ({:.1} %) to \
             read two small files: not lazy",
            kind.name,
            big.size(),
            share * 100.0
        );
    }
    if !kind.lazy && big_served < big.size() {
        bail!(
            "[{}] the plain layer was served {big_served} of {} bytes: containerd did not \
             download it whole",
            kind.name,
            big.size()
        );
    }
    check_status(stack, kind)?;
    Ok(Timing {
        kind: kind.name,
        pull,
        running,
        exited,
        big_served,
        big_size: big.size(),
    })
}

#[test]
fn cri_runs_pods_from_estargz_encrypted_and_plain_images() {
    let name = "cri-run";
    with_stack(name, |stack| {
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let kinds = kinds(&public)?;
        for kind in &kinds {
            stack.push(kind.repo, "1", &kind.layers)?;
        }
        let pusher = veil_tests::registry::Pusher::new(stack.registry.base(), None);
        stack
            .runtime
            .block_on(push_sandbox_image(&pusher, "cri/pause", "1"))?;
        let sandbox = stack.image_ref("cri/pause", "1");
        write_veil_config(stack, &keys.keys_dir, true)?;
        stack.start_cri(&sandbox)?;

        let cgroup = CgroupParent::new();
        let stack_ref: &LazyStack = stack;
        let timings = stack_ref.runtime.block_on(async {
            let mut cri = CriClient::connect(stack_ref.cd().address()).await?;
            // kubelet has the sandbox image before it runs a pod; pulled the same way.
            cri.pull(&sandbox, None).await?;
            let pod = cri
                .run_pod(name, &stack_ref.dir.join("pod-logs"), &cgroup.path())
                .await?;
            let mut timings = Vec::new();
            for kind in &kinds {
                match run_kind(stack_ref, &mut cri, &pod, kind).await {
                    Ok(t) => timings.push(t),
                    Err(e) => {
                        let _ = cri.remove_pod(&pod.0).await;
                        return Err(e);
                    }
                }
            }
            cri.remove_pod(&pod.0).await?;
            anyhow::Ok(timings)
        })?;

        eprintln!("[cri] PullImage to running / to exit, per image kind (debug build):");
        eprintln!(
            "[cri] {:<10} {:>9} {:>12} {:>9} {:>22}",
            "kind", "pull", "running", "exited", "big layer served"
        );
        for t in &timings {
            eprintln!(
                "[cri] {:<10} {:>9.2?} {:>12.2?} {:>9.2?} {:>10} / {:>9} B",
                t.kind, t.pull, t.running, t.exited, t.big_served, t.big_size
            );
        }
        check_no_key_in_logs(stack, &keys)?;
        check_no_secret_in_logs(&[stack.cd().log_path().to_path_buf()], &keys.secret_lines())?;
        Ok(())
    });
}
