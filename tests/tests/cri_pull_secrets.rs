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

use anyhow::{bail, Context};
use veil_tests::cri::{CgroupParent, CriClient};
use veil_tests::cri_private::{
    cat_both_files, check_served_lazily, with_private_cri_stack, Account,
};
use veil_tests::lazy_stack::LazyStack;

/// The only credentials the token service accepts.
const ACCOUNT: Account = Account {
    user: "pod-user",
    password: "pod-secret-7f3a9c2e51",
};

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
    let images = ["private-a", "private-b"];
    let seeds = [0xa11c_e5ee, 0xb0b5_5eed];
    let no_hook = |_: &std::path::Path| Ok(String::new());
    with_private_cri_stack(name, ACCOUNT, images, seeds, no_hook, |stack, images| {
        let cgroup = CgroupParent::new();
        let stack_ref: &LazyStack = stack;
        let [ref_a, ref_b] = &images.refs;
        let [a, b] = &images.layers;
        stack_ref.runtime.block_on(async {
            let mut direct = CriClient::connect(stack_ref.cd().address()).await?;
            let mut proxied = CriClient::connect(&images.proxy_socket)
                .await
                .context("connecting to Veil's CRI proxy")?;
            // The sandbox image through the proxy too, as kubelet would.
            proxied.pull(&images.sandbox, Some(ACCOUNT.auth())).await?;
            let pod = direct
                .run_pod(name, &stack_ref.dir.join("pod-logs"), &cgroup.path())
                .await?;
            let result = async {
                // 1. Without the proxy: containerd has the credentials, Veil has not.
                let (_, took) = direct.pull(ref_a, Some(ACCOUNT.auth())).await?;
                eprintln!("[{name}] image A pulled straight from containerd in {took:.2?}");
                cat_both_files(&mut direct, &pod, "without-proxy", ref_a).await?;
                let report = stack_ref.status_json()?;
                for layer in a {
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
                let (_, took) = proxied.pull(ref_b, Some(ACCOUNT.auth())).await?;
                eprintln!("[{name}] image B pulled through Veil's CRI proxy in {took:.2?}");
                cat_both_files(&mut direct, &pod, "through-proxy", ref_b).await?;
                check_served_lazily(stack_ref, b, "image B")
            }
            .await;
            let _ = direct.remove_pod(&pod.0).await;
            result
        })
    });
}
