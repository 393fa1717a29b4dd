//! imagePullSecrets through Veil's CRI image-service proxy, end to end: Debian's
//! `docker-registry` in token-auth mode (the token service of `veil_tests::token` grants
//! pulls only for one user name and password), Veil with `[cri] image_service_socket`
//! forwarding to a containerd with its CRI plugin (Veil as the CRI snapshotter), and no
//! credentials on the node (Veil's docker `config.json` is empty).
//!
//! 1. A pod pulls image A straight from containerd's CRI (kubelet without the proxy), with
//!    the credentials in `PullImage`: containerd has them, Veil does not, so Veil cannot
//!    read the layers lazily; they fall back to containerd's unpack, and `veil status`
//!    says why (the registry refused Veil: 401). The container still runs.
//! 2. A pod pulls image B through the proxy (kubelet's `--image-service-endpoint`), the
//!    same credentials in `PullImage`: the proxy keeps them for B, Veil's lazy fetches use
//!    them, the layers are served lazily (`veil status`: `lazy`, well under 10 % of the
//!    big layer fetched), the container prints its files.
//!
//! Checked too: the password and its base64 forms are in no log (Veil's, containerd's).
//!
//! Needs root, containerd 1.6 (CRI plugin built in), runc, docker-registry,
//! busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test cri_pull_secrets -- --nocapture`.

use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use k8s_cri::v1::AuthConfig;
use veil_tests::cri::{image_layers, push_sandbox_image, CgroupParent, CriClient};
use veil_tests::lazy_image::{LayerFormat, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT};
use veil_tests::lazy_stack::{status_layer, with_auth_stack, LazyStack};
use veil_tests::log_secrets::check_no_secret_in_logs;
use veil_tests::registry::{Pusher, TokenAuth};
use veil_tests::token::{token_server, Issuer, ISSUER, SERVICE};

/// The only credentials the token service accepts.
const USER: &str = "pod-user";
const PASSWORD: &str = "pod-secret-7f3a9c2e51";

/// Size of the big random file in the second layer.
const BIG_SIZE: usize = 8 << 20;

/// The share of the big layer a lazily served image may have fetched.
const LAZY_SHARE: f64 = 0.10;

fn pod_auth() -> AuthConfig {
    AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    }
}

/// Runs `cat` of the two small files from `reference` in `pod`; checks the output.
async fn run_cat(
    cri: &mut CriClient,
    pod: &(String, k8s_cri::v1::PodSandboxConfig),
    name: &str,
    reference: &str,
) -> anyhow::Result<()> {
    let id = cri
        .start_container(pod, name, reference, &["/bin/cat", HELLO_PATH, LAYER2_PATH])
        .await?;
    let done = cri.wait_exited(&id).await?;
    cri.remove_container(&id).await?;
    let want = format!("{HELLO_TEXT}{LAYER2_TEXT}");
    if done.exit_code != 0 || done.log != want {
        bail!(
            "[{name}] the container exited with {} and logged {:?}, expected 0 and {want:?}",
            done.exit_code,
            done.log
        );
    }
    Ok(())
}

fn fallback_reason(report: &serde_json::Value, digest: &str) -> Option<String> {
    report["fallbacks"]
        .as_array()?
        .iter()
        .find(|f| f["digest"].as_str() == Some(digest))
        .and_then(|f| f["reason"].as_str())
        .map(str::to_string)
}

#[test]
fn pod_credentials_reach_lazy_fetches_through_the_cri_proxy() {
    let name = "cri-secrets";
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let issuer = Arc::new(Issuer::new());
    let (tokens, _token_log) =
        runtime.block_on(token_server(issuer.clone(), Some((USER, PASSWORD))));
    let auth = TokenAuth {
        realm: format!("{}/token", tokens.base()),
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        root_cert_pem: issuer.cert_pem.clone(),
    };
    with_auth_stack(name, Some(&auth), |stack| {
        let push_token = issuer.token(
            &[
                "repository:cri/pause:push,pull".to_string(),
                "repository:cri/private-a:push,pull".to_string(),
                "repository:cri/private-b:push,pull".to_string(),
            ],
            600,
        );
        let pusher = Pusher::new(stack.registry.base(), Some(format!("Bearer {push_token}")));
        let a = image_layers("private-a", 0xa11c_e5ee, BIG_SIZE, LayerFormat::Estargz)?;
        let b = image_layers("private-b", 0xb0b5_5eed, BIG_SIZE, LayerFormat::Estargz)?;
        for (repo, layers) in [("cri/private-a", &a), ("cri/private-b", &b)] {
            stack.runtime.block_on(veil_tests::lazy_image::push_image(
                &pusher, repo, "1", layers,
            ))?;
        }
        stack
            .runtime
            .block_on(push_sandbox_image(&pusher, "cri/pause", "1"))?;
        let sandbox = stack.image_ref("cri/pause", "1");
        let proxy_socket = stack.dir.join("cri-proxy.sock");
        let containerd_socket = stack.dir.join("containerd").join("containerd.sock");
        let empty_docker_config = stack.dir.join("docker-config.json");
        std::fs::write(&empty_docker_config, "{}")?;
        std::fs::write(
            stack.dir.join("veil-config.toml"),
            format!(
                "[registry]\nplain_http = [\"{}\"]\ndocker_config = \"{}\"\n\n\
                 [lazy]\nbackground_fetch = false\n\n\
                 [cri]\nimage_service_socket = \"{}\"\ncontainerd_socket = \"{}\"\n",
                stack.registry.host(),
                empty_docker_config.display(),
                proxy_socket.display(),
                containerd_socket.display(),
            ),
        )?;
        stack.start_cri(&sandbox)?;

        let cgroup = CgroupParent::new();
        let stack_ref: &LazyStack = stack;
        let (ref_a, ref_b) = (
            stack_ref.image_ref("cri/private-a", "1"),
            stack_ref.image_ref("cri/private-b", "1"),
        );
        stack_ref.runtime.block_on(async {
            let mut direct = CriClient::connect(stack_ref.cd().address()).await?;
            let mut proxied = CriClient::connect(&proxy_socket)
                .await
                .context("connecting to Veil's CRI proxy")?;
            // The sandbox image through the proxy too, as kubelet would.
            proxied.pull(&sandbox, Some(pod_auth())).await?;
            let pod = direct
                .run_pod(name, &stack_ref.dir.join("pod-logs"), &cgroup.path())
                .await?;
            let result = async {
                // 1. Without the proxy: containerd has the credentials, Veil has not.
                let (_, took) = direct.pull(&ref_a, Some(pod_auth())).await?;
                eprintln!("[{name}] image A pulled straight from containerd in {took:.2?}");
                run_cat(&mut direct, &pod, "without-proxy", &ref_a).await?;
                let report = stack_ref.status_json()?;
                for layer in &a {
                    let reason = fallback_reason(&report, &layer.digest).with_context(|| {
                        format!(
                            "layer {} of image A (pulled without the proxy) is not listed as a \
                             fallback:\n{report:#}",
                            layer.digest
                        )
                    })?;
                    eprintln!("[{name}] image A layer {}: fallback, {reason}", layer.digest);
                    let lower = reason.to_lowercase();
                    if !["401", "auth", "credential"].iter().any(|w| lower.contains(w)) {
                        bail!("the fallback reason does not say the registry refused Veil: {reason:?}");
                    }
                }
                // 2. Through the proxy: the pod's credentials reach Veil's lazy fetches.
                let (_, took) = proxied.pull(&ref_b, Some(pod_auth())).await?;
                eprintln!("[{name}] image B pulled through Veil's CRI proxy in {took:.2?}");
                run_cat(&mut direct, &pod, "through-proxy", &ref_b).await?;
                let report = stack_ref.status_json()?;
                for layer in &b {
                    let l = status_layer(&report, &layer.digest)?;
                    if l["mode"].as_str() != Some("lazy") {
                        bail!("image B layer {} is not lazy: {l:#}", layer.digest);
                    }
                }
                let (_, served) = stack_ref.served(&b[1].digest);
                let share = served as f64 / b[1].size() as f64;
                eprintln!(
                    "[{name}] image B big layer: {served} of {} bytes served ({:.1} %)",
                    b[1].size(),
                    share * 100.0
                );
                if share >= LAZY_SHARE {
                    bail!("image B's big layer was not read lazily: {served} bytes served");
                }
                anyhow::Ok(())
            }
            .await;
            let _ = direct.remove_pod(&pod.0).await;
            result
        })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let secrets = vec![
            PASSWORD.to_string(),
            b64.encode(format!("{USER}:{PASSWORD}")),
            b64.encode(PASSWORD),
        ];
        let mut logs = stack.veil.logs.clone();
        logs.push(stack.cd().log_path().to_path_buf());
        check_no_secret_in_logs(&logs, &secrets)?;
        Ok(())
    });
    drop(tokens);
}
