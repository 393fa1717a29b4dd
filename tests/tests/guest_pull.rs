//! The guest pull (`veil-guest`) end to end, as kata-agent drives CDH's `PullImage`:
//! Debian's `docker-registry` on loopback, images built here and pushed (plain tar.gz,
//! eStargz, zstd:chunked, and an encrypted one: a JWE-wrapped eStargz base layer with a
//! sealed TOC digest served lazily, and an encrypted plain tar.gz top layer streamed and
//! HMAC-checked), Veil's image service in this process with `stream_plain` on, and
//! [`GuestPuller::pull`] into a bundle directory the test creates as kata-agent does.
//! Each bundle is then run with real `runc run` (config.json's `process.args` rewritten
//! to print files of the image, one per layer, and whether a whited-out file shows);
//! then `rootfs` is unmounted with umount(2) as kata-agent does, the directory must be
//! empty, and once the watcher has run nothing of Veil's is left in the mount table.
//! Two concurrent pulls of one image share its layer mounts and both run. Bad input —
//! an unknown image, a registry that is down, a policy that rejects (or requires a
//! signature Veil cannot check, or does not parse), a missing key, a plain layer whose
//! bytes the registry altered, a bundle that does not exist or whose rootfs is already
//! mounted — each fails with a clear error and leaves nothing mounted.
//!
//! Needs root, docker-registry, busybox-static, openssl, runc, FUSE and overlayfs. Run
//! with `cargo test -p veil-tests --test guest_pull -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use veil_formats::estargz::TOC_DIGEST_ANNOTATION;
use veil_fusefs::cache::ChunkCache;
use veil_guest::{GuestError, GuestOptions, GuestPuller};
use veil_image::layers::{LazyLayers, LazyOptions};
use veil_keyprovider::keys::PublicKey;
use veil_keyprovider::layer::Decryption;
use veil_registry::{ClientOptions, RegistryClient, RetryPolicy};
use veil_tests::bundle::{runc_run_script, unmount_rootfs};
use veil_tests::encrypted_support::{ocicrypt_encrypt, Keys};
use veil_tests::lazy_image::{
    base_entries, pack, push_image, random_bytes, tar_of, top_entries, whiteout_of, Layer,
    LayerFormat, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT, NOTES_PATH,
};
use veil_tests::mounts::mounts_below;
use veil_tests::registry::{Pusher, Registry};
use veil_tests::{require_root, unmount_below};

/// Size of the random file in the top layer.
const BIG_SIZE: usize = 2 << 20;
/// Plaintext cache of the image service.
const CACHE_BYTES: u64 = 64 << 20;
/// How long the watcher may take to release a container after its root is unmounted.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the test's puller checks the mount table besides change events.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What runc prints for a correct image: both layers' files, the whiteout honoured.
fn expected_output() -> String {
    format!("{HELLO_TEXT}{LAYER2_TEXT}notes: hidden\n")
}

/// The image's layers (base and top, the top deleting [`NOTES_PATH`]) in `format`.
fn layers(format: LayerFormat) -> anyhow::Result<Vec<Layer>> {
    let mut top = top_entries(random_bytes(BIG_SIZE, 0x6e57));
    top.push(whiteout_of(NOTES_PATH));
    Ok(vec![
        pack(tar_of(&base_entries()?)?, format)?,
        pack(tar_of(&top)?, format)?,
    ])
}

/// A registry, an image service and a guest puller, all below one directory; dropped:
/// the puller shut down, every mount below the directory detached, the registry stopped.
struct Guest {
    puller: Option<GuestPuller>,
    lazy: Arc<LazyLayers>,
    registry: Registry,
    runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    policy: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(p) = self.puller.take() {
            p.shutdown();
        }
        unmount_below(&self.dir);
        self.registry.stop();
    }
}

/// The image service for `registry`'s images, keys from `keys_dir`.
fn image_service(
    runtime: &tokio::runtime::Runtime,
    host: &str,
    keys_dir: &Path,
) -> anyhow::Result<Arc<LazyLayers>> {
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: vec![host.to_string()],
        operation_timeout: Duration::from_secs(20),
        read_retry: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(2),
        },
        ..ClientOptions::default()
    })?;
    let options = LazyOptions {
        decryption: Some(Arc::new(Decryption::load(keys_dir, true))),
        stream_plain: true,
        ..LazyOptions::default()
    };
    Ok(Arc::new(
        LazyLayers::new(
            client,
            Arc::new(ChunkCache::new(CACHE_BYTES)),
            runtime.handle().clone(),
        )
        .with_options(options),
    ))
}

impl Guest {
    fn new(
        name: &str,
        keys_dir: impl FnOnce(&Path) -> anyhow::Result<PathBuf>,
    ) -> anyhow::Result<Self> {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("veil-{name}-"))
            .tempdir()?;
        let dir = tmp.path().canonicalize()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()?;
        let registry = runtime.block_on(Registry::start(None));
        let keys_dir = keys_dir(&dir)?;
        let lazy = image_service(&runtime, &registry.host(), &keys_dir)?;
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        let options = GuestOptions {
            work_dir: dir.join("work"),
            policy: Some(policy.clone()),
            auth_file: None,
            watch_interval: WATCH_INTERVAL,
        };
        let puller = GuestPuller::new(lazy.clone(), options)?;
        Ok(Self {
            puller: Some(puller),
            lazy,
            registry,
            runtime,
            dir,
            policy,
            _tmp: tmp,
        })
    }

    fn puller(&self) -> &GuestPuller {
        self.puller
            .as_ref()
            .expect("the puller lives as long as the test")
    }

    fn push(&self, repo: &str, layers: &[Layer]) -> anyhow::Result<String> {
        let pusher = Pusher::new(self.registry.base(), None);
        let pushed = self
            .runtime
            .block_on(push_image(&pusher, repo, "1", layers))?;
        Ok(pushed.manifest_digest)
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:1", self.registry.host())
    }

    /// A fresh bundle directory, as kata-agent makes one.
    fn bundle(&self, name: &str) -> anyhow::Result<PathBuf> {
        let b = self.dir.join("bundles").join(name);
        std::fs::create_dir_all(&b)?;
        Ok(b)
    }

    fn pull(&self, image: &str, bundle: &Path) -> Result<veil_guest::PulledImage, GuestError> {
        self.runtime.block_on(self.puller().pull(image, bundle))
    }

    /// Veil's mounts left: below the test's directory, or Veil's overlay or FUSE sources.
    fn veil_mounts(&self) -> Vec<String> {
        let mut left = mounts_below(&self.dir);
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let work = self.dir.join("work").to_string_lossy().into_owned();
        left.extend(
            info.lines()
                .filter(|l| l.contains(&work))
                .map(str::to_string),
        );
        left
    }

    /// Fails unless nothing of Veil's is mounted and no layer is counted.
    fn check_nothing_left(&self, after: &str) -> anyhow::Result<()> {
        let left = self.veil_mounts();
        let counts = self.puller().layer_counts();
        if !left.is_empty() || counts != (0, 0) || !self.puller().bundles().is_empty() {
            bail!(
                "after {after}: mounts left {left:?}, layer mounts/users {counts:?}, bundles {:?}",
                self.puller().bundles()
            );
        }
        Ok(())
    }
}

/// Rewrites `bundle/config.json` to run the check script, runs it with runc, returns
/// what it printed.
fn runc_run(dir: &Path, bundle: &Path, id: &str) -> anyhow::Result<String> {
    let path = bundle.join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    if spec["root"]["path"] != "rootfs" {
        bail!("config.json's root is {}, expected rootfs", spec["root"]);
    }
    let script = serde_json::json!([
        "/bin/sh",
        "-c",
        format!(
            "cat {HELLO_PATH} {LAYER2_PATH}; if test -e {NOTES_PATH}; then echo 'notes: VISIBLE'; \
             else echo 'notes: hidden'; fi"
        )
    ]);
    // As Veil wrote it (the image's Cmd and Env), or already rewritten by a run before.
    let args = spec["process"]["args"].clone();
    if args != serde_json::json!(["/bin/sh"]) && args != script {
        bail!("config.json's process.args are {args}, the image's Cmd is [\"/bin/sh\"]");
    }
    if spec["process"]["env"] != serde_json::json!(["PATH=/bin"]) {
        bail!("config.json's process.env is {}", spec["process"]["env"]);
    }
    let script = script[2].as_str().unwrap_or_default().to_string();
    runc_run_script(dir, bundle, id, &script)
}

/// Unmounts `bundle/rootfs` as kata-agent does, checks it is empty, and waits until the
/// watcher released the container.
fn unmount_like_kata(guest: &Guest, bundle: &Path) -> anyhow::Result<Duration> {
    unmount_rootfs(bundle)?;
    let canon = bundle.canonicalize()?;
    let start = Instant::now();
    while guest.puller().bundles().contains(&canon) {
        if start.elapsed() > RELEASE_TIMEOUT {
            bail!(
                "the watcher did not release {} within {RELEASE_TIMEOUT:?}",
                bundle.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// Pulls `repo` into a fresh bundle, runs it, unmounts it; checks each step.
fn pull_run_release(guest: &Guest, repo: &str, layers: &[Layer]) -> anyhow::Result<()> {
    let manifest = guest.push(repo, layers)?;
    let bundle = guest.bundle(repo)?;
    let t = Instant::now();
    let pulled = guest
        .pull(&guest.image(repo), &bundle)
        .map_err(|e| anyhow!("pulling {repo}: {e}"))?;
    let took = t.elapsed();
    if pulled.manifest_digest != manifest || pulled.layers != layers.len() {
        bail!("pull of {repo} returned {pulled:?}, pushed manifest {manifest}");
    }
    let output = runc_run(&guest.dir, &bundle, repo)?;
    if output != expected_output() {
        bail!(
            "{repo}: the container printed {output:?}, expected {:?}",
            expected_output()
        );
    }
    let released = unmount_like_kata(guest, &bundle)?;
    eprintln!(
        "[guest_pull] {repo}: pulled in {took:.2?} ({} + {} byte layers), ran, released {released:.2?} after umount",
        layers[0].size(),
        layers[1].size()
    );
    guest.check_nothing_left(&format!("releasing {repo}"))
}

#[test]
fn guest_pull_runs_plain_lazy_and_encrypted_images_and_releases_them_on_umount() {
    let mut public = None;
    let guest = Guest::new("guest-pull", |dir| {
        let keys = Keys::make(dir)?;
        public = Some(PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?);
        Ok(keys.keys_dir.clone())
    })
    .unwrap();
    let public = public.unwrap();
    let run = || -> anyhow::Result<()> {
        pull_run_release(&guest, "plain", &layers(LayerFormat::PlainGzip)?)?;
        pull_run_release(&guest, "estargz", &layers(LayerFormat::Estargz)?)?;
        pull_run_release(&guest, "zstd", &layers(LayerFormat::ZstdChunked)?)?;
        // Encrypted: a lazily served base layer (sealed TOC digest) and a plain tar.gz
        // top layer, streamed and HMAC-checked.
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let toc = base
            .annotations
            .get(TOC_DIGEST_ANNOTATION)
            .context("eStargz layer without TOC digest")?
            .clone();
        let top = layers(LayerFormat::PlainGzip)?.remove(1);
        let encrypted = vec![
            ocicrypt_encrypt(&base, Some(&toc), None, &public)?,
            ocicrypt_encrypt(&top, None, None, &public)?,
        ];
        pull_run_release(&guest, "encrypted", &encrypted)?;
        let status = {
            let mut report = veil_image::status::StatusReport::default();
            veil_image::resolver::LayerResolver::fill_status(guest.lazy.as_ref(), &mut report);
            report
        };
        let modes: Vec<(String, String)> = status
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.mode.clone()))
            .collect();
        for (layer, want) in [(&encrypted[0], "lazy"), (&encrypted[1], "streamed")] {
            if !modes.contains(&(layer.digest.clone(), want.to_string())) {
                bail!("layer {} should be served {want}: {modes:?}", layer.digest);
            }
        }
        Ok(())
    };
    run().unwrap();
}

#[test]
fn two_pulls_of_one_image_share_layer_mounts_and_both_run() {
    let guest = Guest::new("guest-share", |dir| Ok(dir.join("no-keys"))).unwrap();
    let run = || -> anyhow::Result<()> {
        let image_layers = layers(LayerFormat::Estargz)?;
        guest.push("shared", &image_layers)?;
        let image = guest.image("shared");
        let (a, b) = (guest.bundle("a")?, guest.bundle("b")?);
        let (ra, rb) = guest.runtime.block_on(async {
            futures::join!(
                guest.puller().pull(&image, &a),
                guest.puller().pull(&image, &b)
            )
        });
        let (ra, rb) = (ra?, rb?);
        if ra.container_id == rb.container_id {
            bail!("two pulls got one container id {}", ra.container_id);
        }
        let counts = guest.puller().layer_counts();
        if counts != (2, 4) {
            bail!(
                "two containers of a 2-layer image: layer mounts/users {counts:?}, expected (2, 4)"
            );
        }
        let overlays: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .filter(|l| l.contains(" - fuse.veil "))
            .filter(|l| l.contains(&*guest.dir.to_string_lossy()))
            .map(str::to_string)
            .collect();
        if overlays.len() != 2 {
            bail!("expected 2 layer FUSE mounts, found {overlays:#?}");
        }
        for (bundle, id) in [(&a, "share-a"), (&b, "share-b")] {
            let out = runc_run(&guest.dir, bundle, id)?;
            if out != expected_output() {
                bail!("{id} printed {out:?}");
            }
        }
        unmount_like_kata(&guest, &a)?;
        // The other container still holds both layers, mounted.
        if guest.puller().layer_counts() != (2, 2) {
            bail!("after releasing a: {:?}", guest.puller().layer_counts());
        }
        let out = runc_run(&guest.dir, &b, "share-b2")?;
        if out != expected_output() {
            bail!("b after a was released printed {out:?}");
        }
        // The explicit release API does what the watcher does.
        if !guest.runtime.block_on(guest.puller().release(&b))? {
            bail!("release(b) found nothing to release");
        }
        if std::fs::read_dir(b.join("rootfs"))?.next().is_some() {
            bail!("b/rootfs is not empty after release");
        }
        guest.check_nothing_left("releasing both containers")
    };
    run().unwrap();
}

/// Fails unless `result` is an error whose message contains every one of `want`, and
/// nothing is left mounted.
fn expect_error(
    guest: &Guest,
    what: &str,
    result: Result<veil_guest::PulledImage, GuestError>,
    want: &[&str],
) -> anyhow::Result<()> {
    let err = match result {
        Ok(p) => bail!("{what}: the pull succeeded: {p:?}"),
        Err(e) => e.to_string(),
    };
    for w in want {
        if !err.contains(w) {
            bail!("{what}: the error does not say {w:?}: {err}");
        }
    }
    eprintln!("[guest_pull] {what}: {err}");
    guest.check_nothing_left(what)
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing_mounted() {
    let mut public = None;
    let guest = Guest::new("guest-bad", |dir| {
        let keys = Keys::make(dir)?;
        public = Some(PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?);
        // The guest holds only an unrelated key: encrypted images cannot be decrypted.
        Ok(keys.stranger_dir.clone())
    })
    .unwrap();
    let public = public.unwrap();
    let run = || -> anyhow::Result<()> {
        let plain = layers(LayerFormat::Estargz)?;
        guest.push("app", &plain)?;
        let image = guest.image("app");

        let b = guest.bundle("unknown")?;
        let r = guest.pull(&guest.image("nothing-here"), &b);
        expect_error(
            &guest,
            "unknown image",
            r,
            &["no such image", "nothing-here"],
        )?;

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let t = Instant::now();
        let r = guest.pull(&format!("127.0.0.1:{closed}/app:1"), &b);
        expect_error(
            &guest,
            "registry down",
            r,
            &["registry failed", &closed.to_string()],
        )?;
        eprintln!(
            "[guest_pull] registry down: failed after {:.2?}",
            t.elapsed()
        );

        std::fs::write(
            &guest.policy,
            format!(
                r#"{{"default":[{{"type":"insecureAcceptAnything"}}],
                   "transports":{{"docker":{{
                     "{host}/app":[{{"type":"reject"}}],
                     "{host}/signed":[{{"type":"sigstoreSigned","keyPath":"/k.pub"}}]}}}}}}"#,
                host = guest.registry.host()
            ),
        )?;
        let r = guest.pull(&image, &b);
        expect_error(
            &guest,
            "policy reject",
            r,
            &["rejects it", "/app", "\"reject\""],
        )?;
        let r = guest.pull(&guest.image("signed"), &b);
        expect_error(
            &guest,
            "policy sigstoreSigned",
            r,
            &["sigstoreSigned", "cannot check"],
        )?;
        std::fs::write(&guest.policy, "{ not json")?;
        let r = guest.pull(&image, &b);
        expect_error(
            &guest,
            "unreadable policy",
            r,
            &["cannot be used", "not JSON"],
        )?;
        std::fs::write(
            &guest.policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;

        // A missing key: the encrypted layer is named, nothing of the plain base layer
        // (pulled alongside) stays mounted.
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let top = layers(LayerFormat::PlainGzip)?.remove(1);
        let enc_top = ocicrypt_encrypt(&top, None, None, &public)?;
        guest.push("locked", &[base, enc_top.clone()])?;
        let r = guest.pull(&guest.image("locked"), &b);
        expect_error(
            &guest,
            "missing key",
            r,
            &["cannot be decrypted", &enc_top.digest],
        )?;

        // A plain (streamed) layer whose bytes the registry alters: refused by the blob
        // digest check before anything of it is served.
        let plain = layers(LayerFormat::PlainGzip)?;
        guest.push("tampered", &plain)?;
        let hex = plain[1].digest.trim_start_matches("sha256:");
        let stored = guest
            .registry
            .dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut blob = std::fs::read(&stored).with_context(|| format!("{}", stored.display()))?;
        let at = blob.len() / 2;
        blob[at] ^= 0x01;
        std::fs::write(&stored, &blob)?;
        let r = guest.pull(&guest.image("tampered"), &b);
        expect_error(
            &guest,
            "tampered plain layer",
            r,
            &["failed authentication", "blob digest", &plain[1].digest],
        )?;

        let r = guest.pull(&image, &guest.dir.join("bundles/never-made"));
        expect_error(
            &guest,
            "missing bundle",
            r,
            &["does not exist", "never-made"],
        )?;

        // A rootfs that is already a mount point (a tmpfs the test mounts and removes).
        let busy = guest.bundle("busy")?;
        let rootfs = busy.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "veil-test", &rootfs.to_string_lossy()])
            .status()?;
        if !status.success() {
            bail!("mounting a tmpfs at {} failed", rootfs.display());
        }
        let r = guest.pull(&image, &busy);
        let unmounted = Command::new("umount").arg(&rootfs).status()?;
        if !unmounted.success() {
            bail!("unmounting the test's tmpfs at {} failed", rootfs.display());
        }
        expect_error(
            &guest,
            "rootfs already mounted",
            r,
            &["already a mount point"],
        )?;

        // After all that, a good pull still works, and takes everything down again.
        let good = guest.bundle("good")?;
        guest.pull(&image, &good).map_err(|e| anyhow!("{e}"))?;
        let r = guest.pull(&image, &good);
        if r.is_ok() {
            bail!("a second pull into the same bundle succeeded");
        }
        unmount_like_kata(&guest, &good)?;
        guest.check_nothing_left("the good pull")
    };
    run().unwrap();
}
