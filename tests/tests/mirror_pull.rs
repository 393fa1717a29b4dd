//! Lazy pulls through a real pull-through mirror (issue 15): Debian's `docker-registry`
//! as the origin and a second `docker-registry` in pull-through-cache mode
//! (`proxy: remoteurl:` the origin) named as the origin's mirror in a containerd-style
//! `hosts.toml`, both on loopback. Two "nodes" (two `veil mount`s with their own empty
//! state and no disk cache) mount the same two-layer eStargz image through the mirror.
//!
//! - Lazy reads go through the mirror: running busybox from the image (`chroot`) reads a
//!   small fraction of the big layer, and node 2's reads are range requests the mirror
//!   answers with 206 from its cache; the big file hashes right on both nodes.
//! - The origin serves each layer for both nodes once: it made exactly one complete copy
//!   of each layer (the mirror filling its cache), at most one more copy that the mirror
//!   abandoned (distribution 2.8's proxy opens a second stream from the origin for the
//!   request that found it cold; see the README's Mirrors section), and nothing at all
//!   for node 2. The numbers are printed.
//! - The mirror is killed (by its PID): node 2's next read of bytes it never fetched
//!   falls back to the origin and succeeds in seconds, well inside the read's retry
//!   budget; the time is printed.
//!
//! Needs root, docker-registry, busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test mirror_pull -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Layer, LayerFormat,
    BIG_PATH, HELLO_PATH, HELLO_TEXT,
};
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::local_registry::LocalRegistry;
use veil_tests::mount_cli::{expect_success, read_at, sha256_file, VeilMount, READ_TIMEOUT};
use veil_tests::process::run_with_timeout;
use veil_tests::registry_log::{parse_access_log, Served};

/// Size of the big random file (three 4 MiB chunks).
const BIG_SIZE: usize = 12 << 20;

/// How much of the big file node 2 reads at its start (with the mirror up) and at its end
/// (with the mirror down).
const PIECE: usize = 1 << 20;

/// Reading a small file may cost at most this fraction of the big layer.
const SMALL_FRACTION: f64 = 0.10;

/// Answers from the cold mirror per layer: Veil skips a cold mirror for a while (doubling)
/// instead of asking it again each read.
const MAX_COLD_ANSWERS: usize = 2;

/// How long the mirror may take to finish copying the layers into its cache.
const FILL_TIMEOUT: Duration = Duration::from_secs(30);

/// The read's retry budget the nodes are configured with (`read_retry_seconds`).
const READ_RETRY_SECONDS: u64 = 60;

/// A read that falls back from the dead mirror must finish well inside the budget.
const FALLBACK_LIMIT: Duration = Duration::from_secs(20);

/// How long a serving process may take to exit after `veil umount`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One node: a `veil mount` of the image with its own state directory.
struct Node {
    name: &'static str,
    mount: VeilMount,
}

impl Node {
    /// Mounts `reference` with `config` (the mirror's `hosts_dir`) in `stack.dir/NAME`.
    fn mount(
        stack: &LazyStack,
        name: &'static str,
        reference: &str,
        config: &Path,
    ) -> anyhow::Result<Self> {
        let base = stack.dir.join(name);
        let mut mount =
            VeilMount::new(&base.join("rootfs"), &base.join("state"), &base.join("cli"))?;
        let t = Instant::now();
        let out = mount.mount_with(reference, &["--config".as_ref(), config.as_os_str()])?;
        expect_success(&format!("veil mount on {name}"), &out)?;
        eprintln!("[mirror-pull] {name}: veil mount took {:.2?}", t.elapsed());
        Ok(Self { name, mount })
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.mount.dir.join(inside.trim_start_matches('/'))
    }

    /// Runs `args` from the image (`chroot` into the mount); its stdout.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.mount.dir).args(args);
        let stem = self
            .mount
            .state_dir
            .join(format!("run-{}", args.join("-").replace('/', "_")));
        let out = run_with_timeout(cmd, READ_TIMEOUT, &stem)?;
        expect_success(&format!("{args:?} on {}", self.name), &out)?;
        Ok(text(&out.stdout))
    }

    /// Unmounts, checking nothing is left behind.
    fn unmount(mut self) -> anyhow::Result<()> {
        let out = self.mount.umount()?;
        expect_success(&format!("veil umount on {}", self.name), &out)?;
        if !self.mount.wait_serving_exit(EXIT_TIMEOUT) {
            bail!(
                "{}: the serving process outlived veil umount by {EXIT_TIMEOUT:?}",
                self.name
            );
        }
        let left = self.mount.cleanup();
        if !left.is_empty() {
            bail!("{}: veil umount left {left:?}", self.name);
        }
        Ok(())
    }
}

/// The blob GETs of `digest` in an access log, from index `from` of its requests on.
fn blob_gets(log: &str, from: usize, digest: &str) -> Vec<Served> {
    let suffix = format!("/blobs/{digest}");
    parse_access_log(log)
        .into_iter()
        .skip(from)
        .filter(|s| s.method == "GET" && s.path.ends_with(&suffix))
        .collect()
}

fn sum(served: &[Served]) -> u64 {
    served.iter().map(|s| s.bytes).sum()
}

fn from_veil(s: &Served) -> bool {
    s.agent.starts_with("veil")
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Waits until the mirror's storage holds every layer whole.
fn wait_for_fill(mirror: &LocalRegistry, layers: &[Layer]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let stored = |l: &Layer| {
        let hex = l.digest.trim_start_matches("sha256:");
        let data = mirror
            .dir()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        std::fs::metadata(data).is_ok_and(|m| m.len() == l.size())
    };
    while !layers.iter().all(stored) {
        if t.elapsed() > FILL_TIMEOUT {
            bail!("the mirror did not hold every layer within {FILL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(t.elapsed())
}

/// What one node's lazy reads of the big (top) layer cost after running busybox: bytes
/// the mirror answered with 206, bytes Veil read from the origin directly.
fn small_read_cost(
    node: &str,
    top: &Layer,
    mirror_log: &str,
    origin_log: &str,
    (mirror_from, origin_from): (usize, usize),
) -> anyhow::Result<u64> {
    let via_mirror = blob_gets(mirror_log, mirror_from, &top.digest);
    let ranges: Vec<&Served> = via_mirror.iter().filter(|s| s.status == 206).collect();
    let direct: Vec<Served> = blob_gets(origin_log, origin_from, &top.digest)
        .into_iter()
        .filter(from_veil)
        .collect();
    let fetched = ranges.iter().map(|s| s.bytes).sum::<u64>() + sum(&direct);
    eprintln!(
        "[mirror-pull] {node}: running busybox read {} of the {} big layer ({:.1} %): \
         {} range GET(s) answered 206 by the mirror, {} whole-blob answer(s) from it \
         (cold) dropped, {} range GET(s) from the origin directly",
        mib(fetched),
        mib(top.size()),
        100.0 * fetched as f64 / top.size() as f64,
        ranges.len(),
        via_mirror.iter().filter(|s| s.status != 206).count(),
        direct.len(),
    );
    if fetched as f64 > SMALL_FRACTION * top.size() as f64 {
        bail!(
            "{node}: running busybox fetched {fetched} bytes of the {}-byte big layer",
            top.size()
        );
    }
    Ok(fetched)
}

#[test]
fn pull_through_mirror_serves_two_nodes_and_falls_back_when_down() {
    with_stack("mirror-pull", |stack| {
        let started = Instant::now();
        let big = random_bytes(BIG_SIZE, 0x3177);
        let big_sha = sha256_hex(&big);
        let layers = vec![
            pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
            pack(tar_of(&top_entries(big.clone()))?, LayerFormat::Estargz)?,
        ];
        stack.push("mirrored", "1", &layers)?;
        let top = &layers[1];
        let origin = stack.registry.host();

        // The mirror: docker-registry as a pull-through cache of the origin.
        let mut mirror = LocalRegistry::start_with(
            &stack.dir.join("mirror"),
            &format!("proxy:\n  remoteurl: {}\n", stack.registry.base()),
        )?;
        let certs = stack.dir.join("certs.d");
        std::fs::create_dir_all(certs.join(&origin))?;
        std::fs::write(
            certs.join(&origin).join("hosts.toml"),
            format!(
                "server = \"http://{origin}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                mirror.base()
            ),
        )?;
        let config = stack.dir.join("mirror-config.toml");
        std::fs::write(
            &config,
            format!(
                "[registry]\nplain_http = [\"{origin}\"]\nhosts_dir = \"{}\"\n\
                 read_retry_seconds = {READ_RETRY_SECONDS}\n\n\
                 [lazy]\nbackground_fetch = false\n\n[cache]\ndisk_bytes = 0\n",
                certs.display()
            ),
        )?;
        let reference = stack.image_ref("mirrored", "1");
        let requests = |log: &str| parse_access_log(log).len();

        // Node 1 finds the mirror cold.
        let node1 = Node::mount(stack, "node1", &reference, &config)?;
        let hello = node1.run(&["/bin/busybox", "cat", HELLO_PATH])?;
        if hello != HELLO_TEXT {
            bail!("busybox cat on node1 printed {hello:?}");
        }
        small_read_cost(
            "node1",
            top,
            &mirror.log_text(),
            &stack.registry_log(),
            (0, 0),
        )?;
        let t = Instant::now();
        let sha = sha256_file(&node1.path(BIG_PATH), READ_TIMEOUT)?;
        if sha != big_sha {
            bail!("{BIG_PATH} on node1 has SHA-256 {sha}, not {big_sha}");
        }
        eprintln!(
            "[mirror-pull] node1: {BIG_PATH} hashes right ({:.2?})",
            t.elapsed()
        );
        let filled = wait_for_fill(&mirror, &layers)?;
        eprintln!("[mirror-pull] the mirror held both layers {filled:.2?} later");
        node1.unmount()?;

        // Node 2, with empty caches, finds the mirror filled.
        let (mirror_mark, origin_mark) = (
            requests(&mirror.log_text()),
            requests(&stack.registry_log()),
        );
        let node2 = Node::mount(stack, "node2", &reference, &config)?;
        let hello = node2.run(&["/bin/busybox", "cat", HELLO_PATH])?;
        if hello != HELLO_TEXT {
            bail!("busybox cat on node2 printed {hello:?}");
        }
        small_read_cost(
            "node2",
            top,
            &mirror.log_text(),
            &stack.registry_log(),
            (mirror_mark, origin_mark),
        )?;
        let first = read_at(&node2.path(BIG_PATH), 0, PIECE, READ_TIMEOUT)?
            .context("reading the start of the big file on node2")?;
        if first != big[..PIECE] {
            bail!("the start of {BIG_PATH} on node2 differs from what was pushed");
        }
        let mirror_log = mirror.log_text();
        let node2_via_mirror: Vec<Served> = layers
            .iter()
            .flat_map(|l| blob_gets(&mirror_log, mirror_mark, &l.digest))
            .collect();
        if node2_via_mirror.is_empty() || node2_via_mirror.iter().any(|s| s.status != 206) {
            bail!("node2's layer reads were not all range requests the mirror served with 206: {node2_via_mirror:?}");
        }
        eprintln!(
            "[mirror-pull] node2: {} range GET(s), {} served by the mirror with 206",
            node2_via_mirror.len(),
            mib(sum(&node2_via_mirror))
        );

        // What the origin served for both nodes: per layer, the mirror's fill (one whole
        // copy), one more stream per answer Veil got from the mirror while it was cold
        // (distribution's proxy opens it for that request and abandons it when Veil
        // hangs up), and the ranges Veil read from the origin itself meanwhile.
        let origin_log = stack.registry_log();
        let mut total = 0;
        for (layer, what) in layers.iter().zip(["base", "big"]) {
            let gets = blob_gets(&origin_log, 0, &layer.digest);
            let (from_mirror, direct): (Vec<Served>, Vec<Served>) =
                gets.iter().cloned().partition(|s| !from_veil(s));
            let cold = blob_gets(&mirror_log, 0, &layer.digest)
                .iter()
                .filter(|s| s.status != 206)
                .count();
            let complete = from_mirror
                .iter()
                .filter(|s| s.status == 200 && s.bytes == layer.size())
                .count();
            total += sum(&gets);
            eprintln!(
                "[mirror-pull] origin, {what} layer ({}): {} stream(s) to the mirror ({complete} whole; \
                 {cold} cold answer(s) to Veil), {}; {} range GET(s) from Veil directly, {}; \
                 in all {} = {:.2}x the layer",
                mib(layer.size()),
                from_mirror.len(),
                mib(sum(&from_mirror)),
                direct.len(),
                mib(sum(&direct)),
                mib(sum(&gets)),
                sum(&gets) as f64 / layer.size() as f64
            );
            if complete == 0 || from_mirror.len() > 1 + cold || cold > MAX_COLD_ANSWERS {
                bail!(
                    "the origin streamed the {what} layer {} time(s) to the mirror ({complete} \
                     whole) for {cold} cold answer(s) (expected one fill plus one per cold \
                     answer, at most {MAX_COLD_ANSWERS} of them): {from_mirror:?}",
                    from_mirror.len()
                );
            }
        }
        let node2_at_origin: Vec<Served> = layers
            .iter()
            .flat_map(|l| blob_gets(&origin_log, origin_mark, &l.digest))
            .collect();
        if !node2_at_origin.is_empty() {
            bail!("node2's pull reached the origin: {node2_at_origin:?}");
        }
        let sizes: u64 = layers.iter().map(Layer::size).sum();
        eprintln!(
            "[mirror-pull] origin, both nodes: {} for {} of layers ({:.2}x); node2: 0 bytes",
            mib(total),
            mib(sizes),
            total as f64 / sizes as f64
        );

        // The mirror goes down: node 2 reads the rest from the origin.
        let pid = mirror.pid();
        mirror.stop();
        let origin_mark = requests(&stack.registry_log());
        let t = Instant::now();
        let end = BIG_SIZE - PIECE;
        let last = read_at(&node2.path(BIG_PATH), end as u64, PIECE, READ_TIMEOUT)?
            .context("reading the end of the big file on node2 with the mirror down")?;
        let took = t.elapsed();
        if last != big[end..] {
            bail!("the end of {BIG_PATH} on node2 differs from what was pushed");
        }
        let direct = blob_gets(&stack.registry_log(), origin_mark, &top.digest);
        eprintln!(
            "[mirror-pull] mirror (pid {pid}) killed: node2 read the last {} in {took:.2?} \
             (retry budget {READ_RETRY_SECONDS} s), {} range GET(s) from the origin ({})",
            mib(PIECE as u64),
            direct.len(),
            mib(sum(&direct))
        );
        if direct.is_empty() || !direct.iter().all(|s| s.status == 206 && from_veil(s)) {
            bail!("after the mirror died the origin did not serve node2's ranges: {direct:?}");
        }
        if took > FALLBACK_LIMIT {
            bail!("falling back to the origin took {took:.2?} (limit {FALLBACK_LIMIT:?})");
        }
        let sha = sha256_file(&node2.path(BIG_PATH), READ_TIMEOUT)?;
        if sha != big_sha {
            bail!("{BIG_PATH} on node2 has SHA-256 {sha}, not {big_sha}, with the mirror down");
        }
        eprintln!("[mirror-pull] node2: {BIG_PATH} hashes right with the mirror down");
        node2.unmount()?;
        eprintln!("[mirror-pull] done in {:.1?}", started.elapsed());
        Ok(())
    });
}
