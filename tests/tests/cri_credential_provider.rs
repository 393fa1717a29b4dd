//! The kubelet-style credential provider exec hook, end to end: Debian's
//! `docker-registry` in token-auth mode (the token service of `veil_tests::token` grants
//! pulls only for one user name and password), Veil with `[cri] image_service_socket`
//! forwarding to a containerd with its CRI plugin (Veil as the CRI snapshotter), no
//! credentials on the node (Veil's docker `config.json` is empty), and `[cri]
//! credential_provider` set to a small script of this test: it appends each
//! `CredentialProviderRequest` it gets to a file and answers the
//! `CredentialProviderResponse` held in another file, or one with no credentials while
//! that file does not exist.
//!
//! 1. Image A is pulled through the proxy without credentials while the hook answers
//!    none: the pull fails, saying the registry refused (401 / unauthorized); the hook
//!    was asked for image A.
//! 2. The hook now answers the registry's credentials (`cacheDuration` 5m). Image B is
//!    pulled through the proxy, again without credentials: the pull succeeds only thanks
//!    to the hook (its answer reaches containerd's pull and Veil's lazy fetches), the
//!    hook was asked for image B, `veil status` shows B's layers `lazy`, well under 10 %
//!    of the big layer was fetched, and a container prints files of both layers.
//!
//! Checked too: the password and its base64 forms are in no log (Veil's, containerd's).
//!
//! Needs root, containerd 1.6 (CRI plugin built in), runc, docker-registry,
//! busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test cri_credential_provider -- --nocapture`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
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
const USER: &str = "hook-user";
const PASSWORD: &str = "hook-secret-4b8e1d7a90";

/// Size of the big random file in the second layer.
const BIG_SIZE: usize = 8 << 20;

/// The share of the big layer a lazily served image may have fetched.
const LAZY_SHARE: f64 = 0.10;

/// The kubelet credential provider API version.
const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

/// The hook: records each request, answers the response file, or no credentials.
fn write_hook(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let hook = dir.join("credential-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> '{requests}'\necho >> '{requests}'\n\
             if [ -f '{response}' ]; then cat '{response}'; else \
             echo '{{\"apiVersion\":\"{API_VERSION}\",\"kind\":\"CredentialProviderResponse\",\"auth\":{{}}}}'; fi\n",
            requests = dir.join("hook-requests.log").display(),
            response = dir.join("hook-response.json").display(),
        ),
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o700))?;
    Ok(hook)
}

/// From now on the hook answers the registry's credentials for `host`.
fn hook_answers(dir: &Path, host: &str) -> anyhow::Result<()> {
    let response = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": "5m",
        "auth": { host: { "username": USER, "password": PASSWORD } },
    });
    let path = dir.join("hook-response.json");
    std::fs::write(&path, response.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Whether the hook was asked for `image`.
fn hook_asked(dir: &Path, image: &str) -> bool {
    std::fs::read_to_string(dir.join("hook-requests.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|r| r["kind"] == "CredentialProviderRequest" && r["image"] == image)
}

/// The sandbox image's credentials, as kubelet would send them for it.
fn sandbox_auth() -> AuthConfig {
    AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    }
}

#[test]
fn the_credential_provider_hook_authenticates_a_lazy_pull() {
    let name = "cri-hook";
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
                "repository:cri/hook-a:push,pull".to_string(),
                "repository:cri/hook-b:push,pull".to_string(),
            ],
            600,
        );
        let pusher = Pusher::new(stack.registry.base(), Some(format!("Bearer {push_token}")));
        let a = image_layers("hook-a", 0x400c_a11a, BIG_SIZE, LayerFormat::Estargz)?;
        let b = image_layers("hook-b", 0x400c_b11b, BIG_SIZE, LayerFormat::Estargz)?;
        for (repo, layers) in [("cri/hook-a", &a), ("cri/hook-b", &b)] {
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
        let hook = write_hook(&stack.dir)?;
        std::fs::write(
            stack.dir.join("veil-config.toml"),
            format!(
                "[registry]\nplain_http = [\"{}\"]\ndocker_config = \"{}\"\n\n\
                 [lazy]\nbackground_fetch = false\n\n\
                 [cri]\nimage_service_socket = \"{}\"\ncontainerd_socket = \"{}\"\n\
                 credential_provider = \"{}\"\n",
                stack.registry.host(),
                empty_docker_config.display(),
                proxy_socket.display(),
                containerd_socket.display(),
                hook.display(),
            ),
        )?;
        stack.start_cri(&sandbox)?;

        let cgroup = CgroupParent::new();
        let stack_ref: &LazyStack = stack;
        let (ref_a, ref_b) = (
            stack_ref.image_ref("cri/hook-a", "1"),
            stack_ref.image_ref("cri/hook-b", "1"),
        );
        let dir = stack_ref.dir.clone();
        stack_ref.runtime.block_on(async {
            let mut direct = CriClient::connect(stack_ref.cd().address()).await?;
            let mut proxied = CriClient::connect(&proxy_socket)
                .await
                .context("connecting to Veil's CRI proxy")?;
            // The sandbox image with its own credentials, as kubelet pulls it.
            direct.pull(&sandbox, Some(sandbox_auth())).await?;
            let pod = direct
                .run_pod(name, &dir.join("pod-logs"), &cgroup.path())
                .await?;
            let result = async {
                // 1. The hook answers no credentials: the pull fails, the registry refused.
                let refused = proxied.pull(&ref_a, None).await;
                let why = match refused {
                    Ok(_) => bail!("image A was pulled though nothing had its credentials"),
                    Err(e) => format!("{e:#}"),
                };
                eprintln!("[{name}] image A without credentials from the hook: {why}");
                let lower = why.to_lowercase();
                if !["401", "unauthorized", "authoriz"].iter().any(|w| lower.contains(w)) {
                    bail!("the failed pull of image A does not say the registry refused it: {why}");
                }
                if !hook_asked(&dir, &ref_a) {
                    bail!("the credential hook was not asked for image A");
                }
                // 2. The hook answers the credentials: the pull succeeds, lazily.
                hook_answers(&dir, &stack_ref.registry.host())?;
                let (_, took) = proxied.pull(&ref_b, None).await?;
                eprintln!("[{name}] image B pulled through Veil's CRI proxy with the hook's credentials in {took:.2?}");
                if !hook_asked(&dir, &ref_b) {
                    bail!("the credential hook was not asked for image B");
                }
                let id = direct
                    .start_container(&pod, "hook-b", &ref_b, &["/bin/cat", HELLO_PATH, LAYER2_PATH])
                    .await?;
                let done = direct.wait_exited(&id).await?;
                direct.remove_container(&id).await?;
                let want = format!("{HELLO_TEXT}{LAYER2_TEXT}");
                if done.exit_code != 0 || done.log != want {
                    bail!(
                        "the container of image B exited with {} and logged {:?}, expected 0 and {want:?}",
                        done.exit_code,
                        done.log
                    );
                }
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
