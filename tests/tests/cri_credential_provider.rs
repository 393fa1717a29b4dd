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

use anyhow::{bail, Context};
use veil_tests::cri::{CgroupParent, CriClient};
use veil_tests::cri_private::{
    cat_both_files, check_served_lazily, with_private_cri_stack, Account,
};
use veil_tests::lazy_stack::LazyStack;

/// The only credentials the token service accepts.
const ACCOUNT: Account = Account {
    user: "hook-user",
    password: "hook-secret-4b8e1d7a90",
};

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
        "auth": { host: { "username": ACCOUNT.user, "password": ACCOUNT.password } },
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

#[test]
fn the_credential_provider_hook_authenticates_a_lazy_pull() {
    let name = "cri-hook";
    let images = ["hook-a", "hook-b"];
    let seeds = [0x400c_a11a, 0x400c_b11b];
    let hook = |dir: &Path| {
        let hook = write_hook(dir)?;
        Ok(format!("credential_provider = \"{}\"\n", hook.display()))
    };
    with_private_cri_stack(name, ACCOUNT, images, seeds, hook, |stack, images| {
        let cgroup = CgroupParent::new();
        let stack_ref: &LazyStack = stack;
        let [ref_a, ref_b] = &images.refs;
        let dir = stack_ref.dir.clone();
        stack_ref.runtime.block_on(async {
            let mut direct = CriClient::connect(stack_ref.cd().address()).await?;
            let mut proxied = CriClient::connect(&images.proxy_socket)
                .await
                .context("connecting to Veil's CRI proxy")?;
            // The sandbox image with its own credentials, as kubelet pulls it.
            direct.pull(&images.sandbox, Some(ACCOUNT.auth())).await?;
            let pod = direct
                .run_pod(name, &dir.join("pod-logs"), &cgroup.path())
                .await?;
            let result = async {
                // 1. The hook answers no credentials: the pull fails, the registry refused.
                let refused = proxied.pull(ref_a, None).await;
                let why = match refused {
                    Ok(_) => bail!("image A was pulled though nothing had its credentials"),
                    Err(e) => format!("{e:#}"),
                };
                eprintln!("[{name}] image A without credentials from the hook: {why}");
                let lower = why.to_lowercase();
                if !["401", "unauthorized", "authoriz"].iter().any(|w| lower.contains(w)) {
                    bail!("the failed pull of image A does not say the registry refused it: {why}");
                }
                if !hook_asked(&dir, ref_a) {
                    bail!("the credential hook was not asked for image A");
                }
                // 2. The hook answers the credentials: the pull succeeds, lazily.
                hook_answers(&dir, &stack_ref.registry.host())?;
                let (_, took) = proxied.pull(ref_b, None).await?;
                eprintln!("[{name}] image B pulled through Veil's CRI proxy with the hook's credentials in {took:.2?}");
                if !hook_asked(&dir, ref_b) {
                    bail!("the credential hook was not asked for image B");
                }
                cat_both_files(&mut direct, &pod, "hook-b", ref_b).await?;
                check_served_lazily(stack_ref, &images.layers[1], "image B")
            }
            .await;
            let _ = direct.remove_pod(&pod.0).await;
            result
        })
    });
}
