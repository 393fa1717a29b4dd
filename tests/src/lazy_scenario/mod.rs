//! Veil's main job, end to end, shared by `veil-demo` and the `demo` test: a container
//! started from an image whose layers are never downloaded.
//!
//! 1. Debian's `docker-registry` is started on loopback, its data in the scenario's
//!    directory.
//! 2. A two-layer image is built in memory (busybox-static and small files; a large random
//!    file) and each layer converted to eStargz (or zstd:chunked) with Veil's own writers.
//! 3. It is pushed to the registry.
//! 4. veil-snapshotter is started with `[registry] plain_http = ["127.0.0.1:PORT"]`, and a
//!    private containerd with Veil as its proxy snapshotter `veil`.
//! 5. `veil pull --plain-http` puts the image into containerd: manifest and config only.
//! 6. `ctr run --snapshotter veil` runs a container that reads two small files; the
//!    registry's access log says how much of the layers that cost.
//! 7. A second container computes the SHA-256 of the large file, which must match.
//! 8. `veil status` shows what the daemon serves.
//! 9. veil-snapshotter is restarted on the same root (it mounts its remote layers again)
//!    and the first container is run once more.
//! 10. The status quo, side by side: the same image pulled by containerd itself (`ctr images
//!     pull --plain-http`, every layer downloaded and unpacked into its default overlayfs
//!     snapshotter) in a namespace of its own, the first container run from it with `ctr
//!     run --snapshotter overlayfs`, then its image, content and snapshots removed. It
//!     comes after the Veil path, so that Veil's byte counts are Veil's alone.
//! 11. Everything is stopped and unmounted.
//!
//! Each step is told to a narrator callback in plain words; the caller decides where that
//! goes. Everything started is stopped again by PID and everything mounted below the
//! scenario's directory is unmounted, also on failure.
//!
//! Files: this one (the stack and steps 1–8), `restart.rs` (step 9), `status_quo.rs`
//! (step 10), `report.rs` (what the scenario measured, and how it is shown).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cleanup::Cleanup;
use crate::containerd::{parse_snapshots, Containerd, NAMESPACE, SNAPSHOTTER};
use crate::lazy_image::{
    base_entries, pack, push_image, random_bytes, sha256_hex, tar_of, top_entries, Layer,
    LayerFormat, BIG_PATH, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use crate::local_registry::LocalRegistry;
use crate::process::run_with_timeout;
use crate::registry::Pusher;
use crate::registry_log::blob_served;
use crate::scenario::{indent, log_tails, tail, wait_for_reconnect, VeilSnapshotter};

mod report;
mod restart;
mod status_quo;

pub use report::*;
use restart::restart;
use status_quo::status_quo;

/// The repository the image is pushed to.
pub const REPO: &str = "veil-demo/busybox";
/// Its tag.
pub const TAG: &str = "lazy";
/// Default size of the large random file.
pub const DEFAULT_BIG_SIZE: usize = 64 << 20;
/// veil-snapshotter's config file in the scenario directory.
const VEIL_CONFIG: &str = "veil-config.toml";
/// How long `veil pull` / `veil status` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// The containerd namespace of the status-quo path (containerd's own pull).
pub const STATUS_QUO_NAMESPACE: &str = "veil-demo-ctr";
/// containerd's default snapshotter, which the status-quo path uses.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// How long `ctr images pull` may take (it downloads and unpacks every layer).
const CTR_PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Veil's two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `veil-snapshotter`, the daemon.
    pub snapshotter: PathBuf,
    /// `veil`, the command-line tool.
    pub veil: PathBuf,
}

impl Binaries {
    /// Both, built first if needed (panics if the build fails, like
    /// [`crate::veil_binary`]).
    pub fn build() -> Self {
        Self {
            snapshotter: crate::veil_binary("veil-snapshotter"),
            veil: crate::veil_binary("veil"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How the layers are packed: eStargz or zstd:chunked.
    pub format: LayerFormat,
    /// Size of the random file in the second layer.
    pub big_size: usize,
    /// Let Veil fetch whole layers into its disk cache in the background after mounting
    /// them (`[lazy] background_fetch`). Off by default, so the numbers show what the
    /// containers' reads alone fetch.
    pub background_fetch: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            format: LayerFormat::Estargz,
            big_size: DEFAULT_BIG_SIZE,
            background_fetch: false,
        }
    }
}

/// The name of a layer format, as people write it.
pub fn format_name(format: LayerFormat) -> &'static str {
    match format {
        LayerFormat::Estargz => "eStargz",
        LayerFormat::ZstdChunked => "zstd:chunked",
        LayerFormat::PlainGzip => "plain tar.gz",
    }
}

/// The running parts. Field order is drop order: containerd, Veil, then the registry.
struct Stack {
    containerd: Option<Containerd>,
    veil: VeilSnapshotter,
    registry: Option<LocalRegistry>,
    dir: PathBuf,
    /// Layer digests, base first (known after the image is built).
    layer_digests: Vec<String>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            c.shutdown();
        }
        self.veil.stop();
        crate::mounts::unmount_below(&self.dir);
        if let Some(mut r) = self.registry.take() {
            r.stop();
        }
    }
}

impl Stack {
    fn registry(&self) -> &LocalRegistry {
        self.registry.as_ref().expect("registry started")
    }

    fn cd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd started")
    }

    /// Layer-blob bytes the registry has served so far, per layer.
    fn served(&self) -> Vec<u64> {
        let Some(r) = &self.registry else {
            return vec![0; self.layer_digests.len()];
        };
        let log = r.log_text();
        self.layer_digests
            .iter()
            .map(|d| blob_served(&log, d).1)
            .collect()
    }

    fn served_total(&self) -> u64 {
        self.served().iter().sum()
    }

    /// Runs `veil ARGS...` to its end; output kept in `DIR/<stem>.stdout|stderr`.
    fn veil_tool(&self, veil: &Path, args: &[&str], stem: &str) -> anyhow::Result<Output> {
        let mut cmd = Command::new(veil);
        cmd.args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        run_with_timeout(cmd, TOOL_TIMEOUT, &self.dir.join(stem))
    }

    fn logs(&self) -> String {
        let mut msg = log_tails(&self.veil, self.containerd.as_ref());
        if let Some(r) = &self.registry {
            msg.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                r.log_path().display(),
                tail(&r.log_text(), 20).join("\n")
            ));
        }
        msg
    }
}

/// Runs the scenario in `dir` (an empty directory owned by the caller), telling each step
/// to `say`.
pub fn run(
    dir: &Path,
    bins: &Binaries,
    opts: &Options,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<LazyReport> {
    if opts.format == LayerFormat::PlainGzip {
        bail!("a plain tar.gz image cannot be served lazily: use eStargz or zstd:chunked");
    }
    let dir = dir.canonicalize()?;
    let veil = VeilSnapshotter::new(
        bins.snapshotter.clone(),
        dir.join("veil"),
        dir.join("veil.sock"),
        dir.clone(),
    )
    .with_config(dir.join(VEIL_CONFIG));
    let mut stack = Stack {
        containerd: None,
        veil,
        registry: None,
        dir: dir.clone(),
        layer_digests: Vec::new(),
    };
    let mut steps: Vec<StepCost> = Vec::new();
    match steps_until_restart(&dir, bins, opts, &mut stack, &mut steps, say) {
        Ok(mut report) => {
            report.restart = restart(&mut stack, bins, &report, &mut steps, say);
            report.status_quo = status_quo(&stack, &report, say);
            let t = Instant::now();
            say(
                "Cleaning up: deleting leftover tasks and containers, stopping containerd, \
                 veil-snapshotter (SIGTERM) and the registry, unmounting what is left below \
                 the working directory.",
            );
            let cd = stack.containerd.take().expect("containerd was started");
            let registry = stack.registry.take();
            report.cleanup = Cleanup::run(&dir, cd, &mut stack.veil, registry);
            for log in &stack.veil.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                report.veil_warnings.extend(
                    text.lines()
                        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                        .map(str::to_string),
                );
            }
            steps.push(StepCost {
                step: "clean up".into(),
                time: t.elapsed(),
                layer_bytes: 0,
            });
            report.steps = steps;
            Ok(report)
        }
        Err(e) => {
            let logs = stack.logs();
            drop(stack);
            Err(anyhow::anyhow!("{e:#}\n\nThe logs:{logs}"))
        }
    }
}

/// Measures one step: its time and the layer bytes the registry served meanwhile.
fn measured<T>(
    stack: &mut Stack,
    steps: &mut Vec<StepCost>,
    name: &str,
    body: impl FnOnce(&mut Stack) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let before = stack.served_total();
    let t = Instant::now();
    let value = body(stack)?;
    let time = t.elapsed();
    steps.push(StepCost {
        step: name.into(),
        time,
        layer_bytes: stack.served_total().saturating_sub(before),
    });
    Ok((value, time))
}

/// Runs a container to its end with `ctr run --rm --snapshotter veil`.
fn run_container(stack: &Stack, reference: &str, id: &str, command: &[&str]) -> Run {
    run_container_in(stack, NAMESPACE, SNAPSHOTTER, reference, id, command)
}

/// Runs a container to its end with `ctr -n NAMESPACE run --rm --snapshotter SNAPSHOTTER`.
fn run_container_in(
    stack: &Stack,
    namespace: &str,
    snapshotter: &str,
    reference: &str,
    id: &str,
    command: &[&str],
) -> Run {
    let before = stack.served();
    let t = Instant::now();
    let output = stack
        .cd()
        .run_container_in(namespace, snapshotter, reference, id, command)
        .map_err(|e| format!("{e:#}"));
    let time = t.elapsed();
    let after = stack.served();
    Run {
        command: command.iter().map(|s| s.to_string()).collect(),
        output,
        time,
        fetched: after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
    }
}

fn steps_until_restart(
    dir: &Path,
    bins: &Binaries,
    opts: &Options,
    stack: &mut Stack,
    steps: &mut Vec<StepCost>,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<LazyReport> {
    let format = format_name(opts.format);

    // 1. The registry.
    let ((), _) = measured(stack, steps, "start docker-registry", |s| {
        s.registry =
            Some(LocalRegistry::start(&dir.join("registry")).context("starting the registry")?);
        Ok(())
    })?;
    let registry = stack.registry().host();
    say(&format!(
        "Started Debian's docker-registry (PID {}) on {registry}, with its storage in {} and its \
         access log in {}. This registry is the only place the image will be; the access log \
         tells how many bytes of each layer it served.",
        stack.registry().pid(),
        stack.registry().dir().join("data").display(),
        stack.registry().log_path().display()
    ));

    // 2. The image.
    let big_size = opts.big_size;
    let ((layers, big_sha256), took) = measured(
        stack,
        steps,
        &format!("build + convert to {format}"),
        |_| {
            let big = random_bytes(big_size, 0x5eed);
            let big_sha = sha256_hex(&big);
            let layers = vec![
                pack(tar_of(&base_entries()?)?, opts.format)?,
                pack(tar_of(&top_entries(big))?, opts.format)?,
            ];
            Ok((layers, big_sha))
        },
    )?;
    stack.layer_digests = layers.iter().map(|l| l.digest.clone()).collect();
    let busybox_size = std::fs::metadata(crate::image::BUSYBOX)
        .map(|m| m.len())
        .unwrap_or(0);
    let infos: Vec<LayerInfo> = layers
        .iter()
        .zip([
            format!(
                "busybox-static ({}) with applet links in /bin, {HELLO_PATH}, /etc/veil-notes.txt",
                human(busybox_size)
            ),
            format!(
                "{BIG_PATH} ({} of random bytes), {LAYER2_PATH}",
                human(big_size as u64)
            ),
        ])
        .map(|(l, contents): (&Layer, String)| LayerInfo {
            digest: l.digest.clone(),
            size: l.size(),
            media_type: l.media_type.clone(),
            annotations: l.annotations.clone(),
            contents,
        })
        .collect();
    let total: u64 = infos.iter().map(|l| l.size).sum();
    let mut built = format!(
        "Built a two-layer image in memory and converted each layer to {format} with Veil's \
         own writer, in {}:\n",
        secs(took)
    );
    for (i, l) in infos.iter().enumerate() {
        built.push_str(&format!(
            "    layer {} {}  {:>9}  {}\n",
            i + 1,
            short(&l.digest),
            human(l.size),
            l.contents
        ));
        for (k, v) in &l.annotations {
            built.push_str(&format!("        annotation {k} = {v}\n"));
        }
    }
    built.push_str(&format!(
        "The SHA-256 of {BIG_PATH} is {big_sha256}. Each layer ends in a table of contents \
         (the annotations above point at it) that lets Veil find any file's compressed chunks \
         and fetch just those with HTTP range requests."
    ));
    say(&built);

    // 3. Push.
    let (pushed, took) = measured(stack, steps, "push to the registry", |s| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let pusher = Pusher::new(s.registry().base(), None);
        runtime.block_on(push_image(&pusher, REPO, TAG, &layers))
    })?;
    drop(layers);
    let reference = format!("{registry}/{REPO}:{TAG}");
    say(&format!(
        "Pushed the config, both layers ({} in all) and the OCI manifest to the registry in {}. \
         The image is {reference} (manifest {}).",
        human(total),
        secs(took),
        pushed.manifest_digest
    ));

    // 4. veil-snapshotter.
    // The snapshotter was set up with this path (see `run`).
    let veil_config_path = dir.join(VEIL_CONFIG);
    let veil_config = format!(
        "# veil-snapshotter config written by veil-demo\n\
         [registry]\n\
         # The demo's registry speaks plain HTTP on loopback.\n\
         plain_http = [\"{registry}\"]\n\
         \n\
         [lazy]\n\
         # {}\n\
         background_fetch = {}\n",
        if opts.background_fetch {
            "Fetch whole layers into the disk cache in the background once mounted."
        } else {
            "No background fetching: the registry serves only what containers read."
        },
        opts.background_fetch
    );
    std::fs::write(&veil_config_path, &veil_config)?;
    let status_socket = stack.veil.socket().with_file_name("status.sock");
    let (pid, _) = measured(stack, steps, "start veil-snapshotter", |s| {
        s.veil.start().context("starting veil-snapshotter")
    })?;
    say(&format!(
        "Started veil-snapshotter (PID {pid}) with the config {}:\n{}\nIt keeps its metadata in \
         {}, serves containerd's snapshots API on {} and answers `veil status` on {}.",
        veil_config_path.display(),
        indent(veil_config.trim_end()),
        stack.veil.root().display(),
        stack.veil.socket().display(),
        status_socket.display()
    ));

    // 5. containerd.
    let (cd, _) = measured(stack, steps, "start containerd", |s| {
        Containerd::start(&dir.join("containerd"), s.veil.socket()).context("starting containerd")
    })?;
    let cd = stack.containerd.insert(cd);
    let containerd_config = std::fs::read_to_string(cd.config_path())?;
    let proxy_section: String = containerd_config
        .lines()
        .skip_while(|l| !l.starts_with("[proxy_plugins]"))
        .collect::<Vec<_>>()
        .join("\n");
    let plugin_status = cd
        .plugin_status("io.containerd.snapshotter.v1", SNAPSHOTTER)?
        .with_context(|| {
            format!(
                "`ctr plugins ls` does not list io.containerd.snapshotter.v1 {SNAPSHOTTER}:\n{}",
                cd.ctr_stdout(&["plugins", "ls"]).unwrap_or_default()
            )
        })?;
    say(&format!(
        "Started a private containerd (PID {}, socket {}; a system containerd, if any, is not \
         touched). This part of its config {} registers Veil as the snapshotter \
         \"{SNAPSHOTTER}\":\n{}\n`ctr plugins ls` lists it with status {plugin_status}.",
        cd.pid(),
        cd.address().display(),
        cd.config_path().display(),
        indent(&proxy_section)
    ));

    // 6. veil pull.
    let address = cd.address().to_string_lossy().into_owned();
    let veil_bin = bins.veil.clone();
    let before_pull = stack.served();
    let (out, pull_time) = measured(stack, steps, "veil pull", |s| {
        let out = s.veil_tool(
            &veil_bin,
            &[
                "pull",
                "--plain-http",
                "-a",
                &address,
                "-n",
                NAMESPACE,
                &reference,
            ],
            "veil-pull",
        )?;
        if !out.status.success() {
            bail!(
                "veil pull failed ({}):\n{}{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        Ok(out)
    })?;
    let pull_stdout = text(&out.stdout);
    let pull_stderr = text(&out.stderr);
    let pull_lines: Vec<String> = pull_stdout.lines().map(str::to_string).collect();
    let lazy_layers = pull_lines
        .iter()
        .filter(|l| l.starts_with("layer ") && l.contains(" lazy"))
        .count();
    let content: Vec<String> = stack
        .cd()
        .ctr_stdout(&["content", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let layers_in_content_store: Vec<String> = infos
        .iter()
        .filter(|l| content.contains(&l.digest))
        .map(|l| l.digest.clone())
        .collect();
    let pull_fetched: Vec<u64> = stack
        .served()
        .iter()
        .zip(&before_pull)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let served_now = stack.served_total();
    say(&format!(
        "Ran `veil pull --plain-http -a {address} -n {NAMESPACE} {reference}`; it took {}. It \
         printed:\n{}{}\ncontainerd's content store now holds the manifest and the config, and \
         {} of the {} layer blobs. For the pull the registry served {} of the layers ({} of {} \
         layer bytes, {:.2} %): Veil read each layer's footer and table of contents.",
        secs(pull_time),
        indent(pull_stdout.trim_end()),
        if pull_stderr.trim().is_empty() {
            String::new()
        } else {
            format!("\nand on stderr:\n{}", indent(pull_stderr.trim_end()))
        },
        layers_in_content_store.len(),
        infos.len(),
        human(served_now),
        served_now,
        total,
        percent(served_now, total)
    ));

    // 7. A small read.
    let small_cmd = ["/bin/cat", HELLO_PATH, LAYER2_PATH];
    let small_expected = format!("{HELLO_TEXT}{LAYER2_TEXT}");
    let (small, _) = measured(stack, steps, "container: cat two small files", |s| {
        Ok(run_container(s, &reference, "veil-demo-cat", &small_cmd))
    })?;
    if let Err(e) = &small.output {
        bail!("running the first container failed:\n{e}");
    }
    let served_now = stack.served_total();
    say(&format!(
        "Ran a container: `ctr run --rm --snapshotter {SNAPSHOTTER} {reference} veil-demo-cat {}`. \
         It took {} and printed ({}):\n{}\nregistry served {} of {} layer bytes ({:.2} %) so far. \
         This container made it fetch {} from layer 1 (busybox itself, which the kernel had to \
         read to run `cat`) and {} from layer 2 (the {} file was not touched).",
        small_cmd.join(" "),
        secs(small.time),
        if small.stdout() == small_expected {
            "as expected"
        } else {
            "NOT what was expected"
        },
        indent(small.stdout()),
        human(served_now),
        human(total),
        percent(served_now, total),
        human(small.fetched[0]),
        human(small.fetched[1]),
        human(big_size as u64)
    ));

    // 8. The whole big file.
    let sha_cmd = ["/bin/sha256sum", BIG_PATH];
    let (sha, _) = measured(stack, steps, "container: sha256sum the big file", |s| {
        Ok(run_container(s, &reference, "veil-demo-sha", &sha_cmd))
    })?;
    if let Err(e) = &sha.output {
        bail!("running the second container failed:\n{e}");
    }
    let sha_matches = sha.stdout().split_whitespace().next() == Some(big_sha256.as_str());
    let served_now = stack.served_total();
    say(&format!(
        "Ran a second container: `sha256sum {BIG_PATH}`, reading all {} of it. It took {} and \
         printed:\n{}\nThat {} the SHA-256 computed when the image was built. Veil fetched {} \
         more for it; the registry has now served {} of {} layer bytes ({:.2} %).",
        human(big_size as u64),
        secs(sha.time),
        indent(sha.stdout()),
        if sha_matches {
            "matches"
        } else {
            "DOES NOT match"
        },
        human(sha.fetched_total()),
        human(served_now),
        human(total),
        percent(served_now, total)
    ));

    // 9. veil status.
    let status_arg = status_socket.to_string_lossy().into_owned();
    let veil_bin = bins.veil.clone();
    let ((status_text, status_json), took) = measured(stack, steps, "veil status", |s| {
        let out = s.veil_tool(
            &veil_bin,
            &["status", "--address", &status_arg],
            "veil-status",
        )?;
        if !out.status.success() {
            bail!(
                "veil status failed ({}):\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        let json = s.veil_tool(
            &veil_bin,
            &["status", "--address", &status_arg, "--json"],
            "veil-status-json",
        )?;
        if !json.status.success() {
            bail!(
                "veil status --json failed ({}):\n{}",
                json.status,
                text(&json.stderr)
            );
        }
        let value: serde_json::Value = serde_json::from_slice(&json.stdout)
            .context("veil status --json printed no valid JSON")?;
        Ok((text(&out.stdout), value))
    })?;
    let veil_counted = status_json["registry_bytes_fetched"].as_u64().unwrap_or(0);
    let served_now = stack.served_total();
    say(&format!(
        "Asked the daemon what it serves: `veil status --address {status_arg}` ({}):\n{}\n\
         Veil counts {} fetched from the registry ({veil_counted} bytes); the registry's access \
         log says it served {served_now} bytes of layer blobs.",
        secs(took),
        indent(status_text.trim_end()),
        human(veil_counted)
    ));

    Ok(LazyReport {
        options: opts.clone(),
        registry,
        reference,
        manifest_digest: pushed.manifest_digest,
        layers: infos,
        big_sha256,
        veil_config_path,
        veil_config,
        status_socket,
        plugin_status,
        pull_lines,
        pull_stderr,
        pull_time,
        lazy_layers,
        layers_in_content_store,
        pull_fetched,
        small,
        small_expected,
        sha,
        sha_matches,
        status_text,
        status_json,
        status_quo: StatusQuo::new(),
        restart: Restart {
            old_pid: 0,
            exit: None,
            mounts_after_stop: Vec::new(),
            new_pid: 0,
            remount_log: Vec::new(),
            reconnect_time: Duration::ZERO,
            reconnect_errors: Vec::new(),
            status_text: Err("not run".into()),
            run: None,
            failure: None,
        },
        steps: Vec::new(),
        veil_warnings: Vec::new(),
        cleanup: Cleanup::default(),
    })
}
