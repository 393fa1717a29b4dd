//! End to end lazy pulling: Debian's `docker-registry` on loopback, an image built here
//! (busybox-static and small files in one layer, a 64 MiB random file in another)
//! converted to eStargz or zstd:chunked with Veil's writers and pushed, Veil's
//! snapshotter behind a private containerd, `veil pull` putting the image into containerd
//! without downloading its layers, and containers run from it with `ctr run`. The
//! registry's access log counts the bytes it served: a container reading a small file
//! must cost well under 10 % of the layers; reading the big file must give its exact
//! SHA-256. A layer Veil cannot serve lazily (a plain tar.gz) is reported by `veil pull
//! --lazy-only`, and otherwise downloaded and unpacked by containerd.
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test lazy_pull -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_tests::containerd::{process_alive, Containerd, NAMESPACE, SNAPSHOTTER};
use veil_tests::lazy_image::{
    base_entries, pack, push_image, random_bytes, sha256_hex, tar_of, top_entries, Entry, Layer,
    LayerFormat, BIG_PATH, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use veil_tests::registry::{Pusher, Registry};
use veil_tests::registry_log::blob_served;
use veil_tests::scenario::VeilSnapshotter;

/// The containerd tests share `/run/containerd`; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Size of the big random file.
const BIG_SIZE: usize = 64 << 20;
/// How long `veil pull` may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(180);

/// Registry, snapshotter and containerd for one test. Dropped in field order after
/// containerd is shut down: containerd, then Veil, then mounts, then the registry.
struct Stack {
    containerd: Option<Containerd>,
    veil: VeilSnapshotter,
    registry: Registry,
    runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut cd) = self.containerd.take() {
            cd.shutdown();
        }
        self.veil.stop();
        veil_tests::unmount_below(&self.dir);
        self.registry.stop();
    }
}

impl Stack {
    /// Starts the registry only (images are pushed before the rest starts).
    fn registry(name: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("veil-{name}-"))
            .tempdir()?;
        let dir = tmp.path().canonicalize()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let registry = runtime.block_on(Registry::start(None));
        // Veil reaches the registry over plain HTTP.
        let config = dir.join("veil-config.toml");
        std::fs::write(
            &config,
            // No background fetch: the test counts what reads alone fetch.
            format!(
                "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = false\n",
                registry.host()
            ),
        )?;
        let veil = VeilSnapshotter::new(
            veil_tests::veil_binary("veil-snapshotter"),
            dir.join("veil"),
            dir.join("veil.sock"),
            dir.clone(),
        )
        .with_config(config);
        Ok(Self {
            containerd: None,
            veil,
            registry,
            runtime,
            dir,
            _tmp: tmp,
        })
    }

    fn push(&self, repo: &str, tag: &str, layers: &[Layer]) -> anyhow::Result<String> {
        let pusher = Pusher::new(self.registry.base(), None);
        let pushed = self
            .runtime
            .block_on(push_image(&pusher, repo, tag, layers))?;
        Ok(pushed.manifest_digest)
    }

    /// Starts Veil and containerd.
    fn start(&mut self) -> anyhow::Result<()> {
        self.veil.start().context("starting veil-snapshotter")?;
        let cd = Containerd::start(&self.dir.join("containerd"), self.veil.socket())
            .context("starting containerd")?;
        self.containerd = Some(cd);
        Ok(())
    }

    fn cd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd started")
    }

    fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.registry.host())
    }

    /// `veil pull --plain-http -a SOCK -n NS EXTRA... REF`, with its duration.
    fn veil_pull(&self, reference: &str, extra: &[&str]) -> anyhow::Result<(Output, Duration)> {
        let mut cmd = Command::new(veil_tests::veil_binary("veil"));
        cmd.arg("pull")
            .arg("--plain-http")
            .arg("-a")
            .arg(self.cd().address())
            .arg("-n")
            .arg(NAMESPACE)
            .args(extra)
            .arg(reference)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        let start = Instant::now();
        let out = run_with_timeout(cmd, PULL_TIMEOUT, &self.dir.join("veil-pull"))?;
        Ok((out, start.elapsed()))
    }

    /// Body bytes the registry served for `digest` so far (requests, bytes).
    fn served(&self, digest: &str) -> (usize, u64) {
        blob_served(&self.registry.log(), digest)
    }

    /// The logs, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, text) in [
            ("veil-snapshotter", self.veil.log_text()),
            (
                "containerd",
                self.containerd
                    .as_ref()
                    .map(|c| c.log_text())
                    .unwrap_or_default(),
            ),
            ("registry", self.registry.log()),
        ] {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "\n--- last lines of the {name} log ---\n{}",
                tail.join("\n")
            ));
        }
        out
    }

    /// Shuts everything down and checks nothing is left running or mounted.
    fn finish(mut self) -> anyhow::Result<()> {
        let mut pids = self.veil.pids.clone();
        if let Some(mut cd) = self.containerd.take() {
            pids.push(cd.pid());
            let report = cd.shutdown();
            if !report.shims_left.is_empty() {
                bail!("containerd shims outlived containerd: {report:?}");
            }
        }
        let exit = self.veil.stop();
        if !exit.map(|e| e.success()).unwrap_or(false) {
            bail!("veil-snapshotter exited with {exit:?} on SIGTERM");
        }
        let mounts = veil_tests::mounts::mounts_below(&self.dir);
        veil_tests::unmount_below(&self.dir);
        if !mounts.is_empty() {
            bail!("mounts left below the test directory: {mounts:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
        let alive: Vec<u32> = pids.into_iter().filter(|p| process_alive(*p)).collect();
        if !alive.is_empty() {
            bail!("processes still alive after clean-up: {alive:?}");
        }
        Ok(())
    }
}

/// Runs `cmd` to its end (killed by PID after `timeout`), output kept in files named
/// after `stem`.
fn run_with_timeout(mut cmd: Command, timeout: Duration, stem: &Path) -> anyhow::Result<Output> {
    let out_path = stem.with_extension("stdout");
    let err_path = stem.with_extension("stderr");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{cmd:?} did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: std::fs::read(&out_path)?,
        stderr: std::fs::read(&err_path)?,
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `body` on a fresh stack; on failure, panics with the error and the logs.
fn with_stack(name: &str, body: impl FnOnce(&mut Stack) -> anyhow::Result<()>) {
    veil_tests::require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut stack = Stack::registry(name).unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) = body(&mut stack) {
        let logs = stack.logs();
        drop(stack);
        panic!("{e:#}\n{logs}");
    }
    // Worth seeing even when the test passes.
    let log = stack.veil.log_text();
    let notable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    eprintln!(
        "[{name}] veil-snapshotter logged {} warning(s)/error(s){}",
        notable.len(),
        notable
            .iter()
            .take(20)
            .map(|l| format!("\n    {l}"))
            .collect::<String>()
    );
    stack.finish().unwrap_or_else(|e| panic!("{e:#}"));
}

/// The digests `ctr content ls` lists (its first column).
fn content_digests(cd: &Containerd) -> anyhow::Result<Vec<String>> {
    Ok(cd
        .ctr_stdout(&["content", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// The two-layer image in `format`, pulled lazily, run twice.
fn lazy_pull(format: LayerFormat) {
    let name = match format {
        LayerFormat::Estargz => "lazy-estargz",
        LayerFormat::ZstdChunked => "lazy-zstdchunked",
        LayerFormat::PlainGzip => unreachable!(),
    };
    with_stack(name, |stack| {
        // The image.
        let t = Instant::now();
        let big = random_bytes(BIG_SIZE, 0x5eed);
        let big_sha = sha256_hex(&big);
        let layers = vec![
            pack(tar_of(&base_entries()?)?, format)?,
            pack(tar_of(&top_entries(big))?, format)?,
        ];
        let total: u64 = layers.iter().map(Layer::size).sum();
        let manifest_digest = stack.push("lazy", "1", &layers)?;
        eprintln!(
            "[{name}] built and pushed 2 {format:?} layers ({} + {} bytes) in {:.1?}; manifest {manifest_digest}",
            layers[0].size(),
            layers[1].size(),
            t.elapsed()
        );
        stack.start()?;
        let reference = stack.image_ref("lazy", "1");

        // veil pull.
        let (out, took) = stack.veil_pull(&reference, &[])?;
        let stdout = text(&out.stdout);
        eprintln!(
            "[{name}] veil pull took {took:.2?}:\n{stdout}{}",
            text(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "veil pull failed ({}):\n{stdout}\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        for (i, layer) in layers.iter().enumerate() {
            let line = format!("layer {}/2 {}", i + 1, layer.digest);
            if lines_with(&stdout, &[&line, "lazy"]).is_empty() {
                bail!(
                    "veil pull did not report layer {} as lazy:\n{stdout}",
                    i + 1
                );
            }
            let veil_log = stack.veil.log_text();
            if lines_with(&veil_log, &["layer served lazily", &layer.digest]).is_empty() {
                bail!(
                    "the veil log does not say layer {} was served lazily",
                    layer.digest
                );
            }
        }
        if !stdout.contains("2 lazy, 0 unpacked, 0 already present") {
            bail!("unexpected summary:\n{stdout}");
        }

        // containerd has the manifest and config, not the layers.
        let content = content_digests(stack.cd())?;
        if !content.contains(&manifest_digest) {
            bail!("containerd's content store lacks the manifest: {content:?}");
        }
        for layer in &layers {
            if content.contains(&layer.digest) {
                bail!(
                    "containerd's content store has layer {}: {content:?}",
                    layer.digest
                );
            }
            if stack.cd().ctr(&["content", "get", &layer.digest]).is_ok() {
                bail!(
                    "`ctr content get {}` succeeded: the layer was downloaded",
                    layer.digest
                );
            }
        }
        let images = stack.cd().ctr_stdout(&["images", "ls", "-q"])?;
        if !images.lines().any(|l| l.trim() == reference) {
            bail!("containerd has no image {reference}:\n{images}");
        }
        let after_pull: Vec<(usize, u64)> =
            layers.iter().map(|l| stack.served(&l.digest)).collect();

        // A small file, with exact contents, for a small part of the layers.
        let hello = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-cat"),
            &["/bin/cat", HELLO_PATH, LAYER2_PATH],
        )?;
        if hello != format!("{HELLO_TEXT}{LAYER2_TEXT}") {
            bail!("the container printed {hello:?}");
        }
        let after_cat: Vec<(usize, u64)> = layers.iter().map(|l| stack.served(&l.digest)).collect();
        let served: u64 = after_cat.iter().map(|(_, b)| b).sum();
        eprintln!(
            "[{name}] registry served for the layers: after veil pull {} / {} bytes ({} / {} requests); \
             after `cat` in a container {} / {} bytes ({} / {} requests); total {served} of {total} \
             layer bytes = {:.2} %",
            after_pull[0].1, after_pull[1].1, after_pull[0].0, after_pull[1].0,
            after_cat[0].1, after_cat[1].1, after_cat[0].0, after_cat[1].0,
            served as f64 * 100.0 / total as f64
        );
        if served * 10 >= total {
            bail!("the registry served {served} of {total} layer bytes for a `cat` (10 % or more)");
        }
        if after_cat[1].1 * 10 >= layers[1].size() {
            bail!(
                "the registry served {} of the big layer's {} bytes for a `cat`",
                after_cat[1].1,
                layers[1].size()
            );
        }

        // The big file, read whole, is exact.
        let sum = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-sha"),
            &["/bin/sha256sum", BIG_PATH],
        )?;
        if sum.split_whitespace().next() != Some(big_sha.as_str()) {
            bail!("sha256sum in the container printed {sum:?}, expected {big_sha}");
        }
        let after_sum = stack.served(&layers[1].digest);
        eprintln!(
            "[{name}] sha256sum of the {BIG_SIZE}-byte file in a container matched; the registry has now \
             served {} bytes of the {}-byte big layer in {} requests",
            after_sum.1,
            layers[1].size(),
            after_sum.0
        );

        // Pulling again changes nothing.
        let (again, took) = stack.veil_pull(&reference, &[])?;
        let again_out = text(&again.stdout);
        if !again.status.success() || !again_out.contains("0 lazy, 0 unpacked, 2 already present") {
            bail!("second veil pull:\n{again_out}\n{}", text(&again.stderr));
        }
        eprintln!("[{name}] a second veil pull found both layers present in {took:.2?}");
        Ok(())
    });
}

#[test]
fn estargz_image_is_pulled_lazily() {
    lazy_pull(LayerFormat::Estargz);
}

#[test]
fn zstd_chunked_image_is_pulled_lazily() {
    lazy_pull(LayerFormat::ZstdChunked);
}

/// A plain tar.gz layer: `--lazy-only` refuses it by name; without it, containerd
/// downloads and unpacks it on top of a lazily served eStargz base layer.
#[test]
fn plain_layer_is_unpacked_by_containerd() {
    let name = "plain-layer";
    with_stack(name, |stack| {
        let small = random_bytes(1 << 20, 7);
        let small_sha = sha256_hex(&small);
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let plain = pack(
            tar_of(&[
                Entry::Dir("data", 0o755),
                Entry::Dir("etc", 0o755),
                Entry::File(BIG_PATH.trim_start_matches('/').into(), small, 0o644),
                Entry::File(
                    LAYER2_PATH.trim_start_matches('/').into(),
                    LAYER2_TEXT.into(),
                    0o644,
                ),
            ])?,
            LayerFormat::PlainGzip,
        )?;
        stack.push("plain", "1", std::slice::from_ref(&plain))?;
        stack.push("mixed", "1", &[base.clone(), plain.clone()])?;
        stack.start()?;

        // --lazy-only names the layer it cannot serve.
        let plain_ref = stack.image_ref("plain", "1");
        let (out, _) = stack.veil_pull(&plain_ref, &["--lazy-only"])?;
        let stderr = text(&out.stderr);
        eprintln!(
            "[{name}] veil pull --lazy-only {plain_ref}: {}\n{}{stderr}",
            out.status,
            text(&out.stdout)
        );
        if out.status.success() {
            bail!("veil pull --lazy-only of a plain layer succeeded");
        }
        if !(stderr.contains(&plain.digest) && stderr.contains("not lazily servable")) {
            bail!("veil pull --lazy-only did not name the layer clearly:\n{stderr}");
        }
        if lines_with(
            &stack.veil.log_text(),
            &["not served lazily", &plain.digest],
        )
        .is_empty()
        {
            bail!(
                "the veil log does not report the fallback for {}",
                plain.digest
            );
        }
        let snapshots =
            stack
                .cd()
                .ctr_stdout(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])?;
        if snapshots.contains("veil-pull-") {
            bail!("the failed pull left its active snapshot behind:\n{snapshots}");
        }
        if stack
            .cd()
            .ctr_stdout(&["images", "ls", "-q"])?
            .contains(&plain_ref)
        {
            bail!("a failed pull created the image record");
        }

        // Without it, the plain layer is unpacked on top of the lazy one.
        let reference = stack.image_ref("mixed", "1");
        let (out, took) = stack.veil_pull(&reference, &[])?;
        let stdout = text(&out.stdout);
        eprintln!(
            "[{name}] veil pull {reference} took {took:.2?}:\n{stdout}{}",
            text(&out.stderr)
        );
        if !out.status.success() {
            bail!("veil pull failed:\n{stdout}\n{}", text(&out.stderr));
        }
        if lines_with(&stdout, &[&format!("layer 1/2 {}", base.digest), "lazy"]).is_empty()
            || lines_with(
                &stdout,
                &[&format!("layer 2/2 {}", plain.digest), "unpacked"],
            )
            .is_empty()
        {
            bail!("veil pull did not report layer 1 lazy and layer 2 unpacked:\n{stdout}");
        }
        let content = content_digests(stack.cd())?;
        if !content.contains(&plain.digest) || content.contains(&base.digest) {
            bail!("the content store should hold the plain layer only: {content:?}");
        }
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &reference,
            &format!("{name}-run"),
            &[
                "/bin/sh",
                "-c",
                &format!("cat {HELLO_PATH} {LAYER2_PATH}; sha256sum {BIG_PATH}"),
            ],
        )?;
        let expected = format!("{HELLO_TEXT}{LAYER2_TEXT}{small_sha}  {BIG_PATH}\n");
        if printed != expected {
            bail!("the container printed {printed:?}, expected {expected:?}");
        }
        let (n, bytes) = stack.served(&plain.digest);
        eprintln!(
            "[{name}] container output matched; the plain layer ({} bytes) was fetched in {n} \
             request(s), {bytes} bytes",
            plain.size()
        );
        Ok(())
    });
}
