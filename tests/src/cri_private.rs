//! The private-registry CRI scenario of the pull-credential tests (imagePullSecrets
//! through Veil's CRI proxy, the kubelet-style credential provider hook): Debian's
//! `docker-registry` in token-auth mode whose token service grants pulls for one user
//! name and password only, two pod images and the sandbox image pushed to it, Veil with
//! `[cri] image_service_socket` forwarding to containerd's CRI plugin (Veil as the CRI
//! snapshotter), and no credentials on the node (Veil's docker `config.json` is empty).
//! After the test's body: the password and its base64 forms are in no log (Veil's,
//! containerd's).

use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use k8s_cri::v1::{AuthConfig, PodSandboxConfig};

use crate::cri::{image_layers, push_sandbox_image, CriClient};
use crate::lazy_image::{Layer, LayerFormat, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT};
use crate::lazy_stack::{status_layer, with_auth_stack, LazyStack};
use crate::log_secrets::check_no_secret_in_logs;
use crate::registry::{Pusher, TokenAuth};
use crate::token::{token_server, Issuer, ISSUER, SERVICE};

/// Size of the big random file in each pod image's second layer.
pub const BIG_SIZE: usize = 8 << 20;

/// The share of the big layer a lazily served image may have fetched.
pub const LAZY_SHARE: f64 = 0.10;

/// The repository of the pod sandbox image.
const SANDBOX_REPO: &str = "cri/pause";

/// The registry's only credentials.
#[derive(Clone, Copy)]
pub struct Account {
    /// The user name the token service accepts.
    pub user: &'static str,
    /// Its password.
    pub password: &'static str,
}

impl Account {
    /// The credentials as kubelet sends them in `PullImage`.
    pub fn auth(&self) -> AuthConfig {
        AuthConfig {
            username: self.user.into(),
            password: self.password.into(),
            ..Default::default()
        }
    }
}

/// What the scenario pushed.
pub struct PrivateImages {
    /// The sandbox image's reference.
    pub sandbox: String,
    /// The two pod images' references (repositories `cri/<name>`, tag `1`).
    pub refs: [String; 2],
    /// Their layers.
    pub layers: [Vec<Layer>; 2],
    /// The socket of Veil's CRI proxy.
    pub proxy_socket: std::path::PathBuf,
}

/// Runs `body` with the scenario up: images `cri/<names[i]>` (seeded by `seeds[i]`)
/// pushed, Veil configured with the lines `extra_cri` returns (given the test's
/// directory) appended to its `[cri]` section, the CRI stack started; then checks that no log holds the account's secrets.
pub fn with_private_cri_stack(
    name: &str,
    account: Account,
    names: [&str; 2],
    seeds: [u64; 2],
    extra_cri: impl FnOnce(&std::path::Path) -> anyhow::Result<String>,
    body: impl FnOnce(&mut LazyStack, &PrivateImages) -> anyhow::Result<()>,
) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let issuer = Arc::new(Issuer::new());
    let (tokens, _token_log) = runtime.block_on(token_server(
        issuer.clone(),
        Some((account.user, account.password)),
    ));
    let auth = TokenAuth {
        realm: format!("{}/token", tokens.base()),
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        root_cert_pem: issuer.cert_pem.clone(),
    };
    with_auth_stack(name, Some(&auth), |stack| {
        let repos = names.map(|n| format!("cri/{n}"));
        let mut scopes = vec![format!("repository:{SANDBOX_REPO}:push,pull")];
        scopes.extend(repos.iter().map(|r| format!("repository:{r}:push,pull")));
        let push_token = issuer.token(&scopes, 600);
        let pusher = Pusher::new(stack.registry.base(), Some(format!("Bearer {push_token}")));
        let layers = [
            image_layers(names[0], seeds[0], BIG_SIZE, LayerFormat::Estargz)?,
            image_layers(names[1], seeds[1], BIG_SIZE, LayerFormat::Estargz)?,
        ];
        for (repo, layers) in repos.iter().zip(&layers) {
            stack
                .runtime
                .block_on(crate::lazy_image::push_image(&pusher, repo, "1", layers))?;
        }
        stack
            .runtime
            .block_on(push_sandbox_image(&pusher, SANDBOX_REPO, "1"))?;
        let images = PrivateImages {
            sandbox: stack.image_ref(SANDBOX_REPO, "1"),
            refs: repos.clone().map(|r| stack.image_ref(&r, "1")),
            layers,
            proxy_socket: stack.dir.join("cri-proxy.sock"),
        };
        let containerd_socket = stack.dir.join("containerd").join("containerd.sock");
        let empty_docker_config = stack.dir.join("docker-config.json");
        std::fs::write(&empty_docker_config, "{}")?;
        let extra_cri = extra_cri(&stack.dir)?;
        std::fs::write(
            stack.dir.join("veil-config.toml"),
            format!(
                "[registry]\nplain_http = [\"{}\"]\ndocker_config = \"{}\"\n\n\
                 [lazy]\nbackground_fetch = false\n\n\
                 [cri]\nimage_service_socket = \"{}\"\ncontainerd_socket = \"{}\"\n{extra_cri}",
                stack.registry.host(),
                empty_docker_config.display(),
                images.proxy_socket.display(),
                containerd_socket.display(),
            ),
        )?;
        stack.start_cri(&images.sandbox)?;
        body(stack, &images)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let secrets = vec![
            account.password.to_string(),
            b64.encode(format!("{}:{}", account.user, account.password)),
            b64.encode(account.password),
        ];
        let mut logs = stack.veil.logs.clone();
        logs.push(stack.cd().log_path().to_path_buf());
        check_no_secret_in_logs(&logs, &secrets)
    });
    drop(tokens);
}

/// Runs `cat` of the pod image's two small files from `reference` in `pod` as container
/// `name`; checks that it exits 0 having printed both.
pub async fn cat_both_files(
    cri: &mut CriClient,
    pod: &(String, PodSandboxConfig),
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
            "container {name} of {reference} exited with {} and logged {:?}, expected 0 and {want:?}",
            done.exit_code,
            done.log
        );
    }
    Ok(())
}

/// Checks that `veil status` shows every layer of `layers` served lazily and that well
/// under [`LAZY_SHARE`] of the big (second) layer was fetched; `what` names the image.
pub fn check_served_lazily(stack: &LazyStack, layers: &[Layer], what: &str) -> anyhow::Result<()> {
    let report = stack.status_json()?;
    for layer in layers {
        let l = status_layer(&report, &layer.digest)?;
        if l["mode"].as_str() != Some("lazy") {
            bail!("{what} layer {} is not lazy: {l:#}", layer.digest);
        }
    }
    let big = layers.get(1).context("a pod image has two layers")?;
    let (_, served) = stack.served(&big.digest);
    let share = served as f64 / big.size() as f64;
    eprintln!(
        "{what}'s big layer: {served} of {} bytes served ({:.1} %)",
        big.size(),
        share * 100.0
    );
    if share >= LAZY_SHARE {
        bail!("{what}'s big layer was not read lazily: {served} bytes served");
    }
    Ok(())
}
