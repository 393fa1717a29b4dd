//! The demo's guest flow (`veil-demo --flow guest`, and the `demo` test): a pod-shaped
//! pull inside a CoCo guest, with every part real except the TEE and kata-agent.
//!
//! An image (busybox and small files, then a large random file; eStargz) is encrypted
//! for the kid `kbs:///default/image_key/veil-guest-demo` as `veil convert --encrypt
//! --kbs-kid` does (every layer; the KEK wraps the layer keys) and pushed to Debian's
//! docker-registry on loopback; the test KBS (sample TEE) holds the KEK. `veil-guest` runs
//! on a temporary "CDH socket" with the CDH and attestation-agent stand-ins behind it and
//! `kek_sources = ["kbs"]`: it attests to the KBS itself. A kata-agent-like ttrpc client
//! makes the bundle directory and calls `PullImage`, then runs the bundle with `runc`
//! (the container prints a small file of each layer), as kata-agent would. The report
//! has the time from `PullImage` to the container's first output, the bytes the registry
//! served against the image's size (what CDH's own puller downloads, decrypts and unpacks
//! into guest memory before the container can start), the KBS's request counts, the
//! runtime measurement, and whether kata-agent's `umount` left nothing mounted. Then, in
//! the same run, the status quo on the same image ([`crate::status_quo_pull`]: CDH's own
//! puller, the image fetched whole, decrypted and unpacked into a work dir, overlaid, the
//! same command run with runc) and a side-by-side table: time to first output, bytes
//! fetched, bytes written to the work dir.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_formats::estargz::TOC_DIGEST_ANNOTATION;

use crate::bundle::{runc_run_timed, unmount_rootfs};
use crate::encrypted_support::kbs_kid_encrypt;
use crate::guest_stack::GuestStack;
use crate::lazy_image::{
    base_entries, pack, random_bytes, tar_of, top_entries, LayerFormat, HELLO_PATH, HELLO_TEXT,
    LAYER2_PATH, LAYER2_TEXT,
};
use crate::lazy_scenario::{human, percent, secs};
use crate::registry_log::blob_served;
use crate::status_quo_pull::{self, file_bytes, WholePull};
use crate::test_kbs::{count, resource_reads, ATTESTATION_REQUESTS, AUTH_REQUESTS};

/// The kid the demo image is encrypted for.
pub const GUEST_KID: &str = "kbs:///default/image_key/veil-guest-demo";
/// Its resource path in the KBS.
pub const GUEST_RESOURCE: &str = "default/image_key/veil-guest-demo";
/// How long `PullImage` may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// One layer of the demo image.
#[derive(Debug, Clone)]
pub struct GuestLayer {
    /// Its digest.
    pub digest: String,
    /// Its size in the registry.
    pub size: u64,
    /// Bytes of it the registry served up to the container's exit.
    pub served: u64,
}

/// What the guest flow measured.
#[derive(Debug, Clone)]
pub struct GuestReport {
    /// The image reference.
    pub image: String,
    /// The manifest digest pushed, and the one `PullImage` answered.
    pub pushed_digest: String,
    /// What `PullImage` answered.
    pub answered_digest: String,
    /// The layers, lowest first.
    pub layers: Vec<GuestLayer>,
    /// From the `PullImage` call to its answer.
    pub pull_time: Duration,
    /// From the `PullImage` call to the container's first output.
    pub first_output: Duration,
    /// From the `PullImage` call to the container's exit.
    pub exited: Duration,
    /// What the container printed.
    pub output: String,
    /// What it should print.
    pub expected_output: String,
    /// KBS authentications, attestations and reads of the KEK.
    pub kbs_auth: u64,
    /// Attestations.
    pub kbs_attest: u64,
    /// Reads of the KEK's resource.
    pub kbs_kek_reads: u64,
    /// Runtime measurements recorded for the pull (image, digest).
    pub measurements: Vec<(String, String)>,
    /// Mounts left after kata-agent's `umount` and the watcher (none expected).
    pub left_mounted: Vec<String>,
    /// Bytes of regular files in veil-guest's work directory when the container had
    /// exited (its FUSE layer mounts not counted: they hold no files of their own).
    pub work_dir_bytes: u64,
    /// The same image pulled as CDH's own puller does, the same command run (or why that
    /// failed), after Veil's pull in the same run.
    pub status_quo: Result<WholePull, String>,
}

impl GuestReport {
    /// Layer bytes the registry served.
    pub fn served(&self) -> u64 {
        self.layers.iter().map(|l| l.served).sum()
    }

    /// The image's layer bytes.
    pub fn image_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Veil against CDH's puller, side by side: time to first output, bytes fetched,
    /// bytes written to the work directory, and the ratios.
    pub fn comparison_table(&self) -> String {
        let sq = match &self.status_quo {
            Ok(sq) => sq,
            Err(e) => return format!("The status quo's whole pull failed: {e}\n"),
        };
        let ratio = |v: f64, s: f64| {
            if s == 0.0 {
                "-".to_string()
            } else {
                format!("{:.3}", v / s)
            }
        };
        let rows = [
            (
                "time from pull start to first output",
                secs(self.first_output),
                secs(sq.first_output),
                ratio(
                    self.first_output.as_secs_f64(),
                    sq.first_output.as_secs_f64(),
                ),
            ),
            (
                "bytes fetched from the registry",
                human(self.served()),
                human(sq.served()),
                ratio(self.served() as f64, sq.served() as f64),
            ),
            (
                "bytes written to the work dir",
                human(self.work_dir_bytes),
                human(sq.work_dir_bytes),
                ratio(self.work_dir_bytes as f64, sq.work_dir_bytes as f64),
            ),
        ];
        let mut s = format!(
            "Guest pull of {} ({} of layers), same run:\n| {:<38} | {:>12} | {:>26} | {:>17} |\n|{}|{}|{}|{}|\n",
            self.image,
            human(self.image_bytes()),
            "",
            "Veil (lazy)",
            "CDH's puller (status quo)",
            "Veil / status quo",
            "-".repeat(40),
            "-".repeat(14),
            "-".repeat(28),
            "-".repeat(19)
        );
        for (what, veil, quo, r) in rows {
            s.push_str(&format!(
                "| {what:<38} | {veil:>12} | {quo:>26} | {r:>17} |\n"
            ));
        }
        s.push_str(&format!(
            "(status quo: pull done in {} (fetching {}; KEK, decrypting, unpacking {}), {} unpacked from {} of uncompressed tar; Veil: \
             PullImage answered in {}, its plaintext cache in RAM within its configured \
             budget, no disk cache in the guest unless [cache] disk_dir is set)\n",
            secs(sq.pull_time),
            secs(sq.fetch_time),
            secs(sq.unpack_time),
            human(sq.unpacked()),
            human(sq.layers.iter().map(|l| l.tar_bytes).sum()),
            secs(self.pull_time)
        ));
        s
    }

    /// The summary the demo prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "PullImage answered in {} (manifest {}).\n",
            secs(self.pull_time),
            self.answered_digest
        ));
        s.push_str(&format!(
            "Time from PullImage to the container's first output: {} (exited after {}).\n",
            secs(self.first_output),
            secs(self.exited)
        ));
        for (i, l) in self.layers.iter().enumerate() {
            s.push_str(&format!(
                "  layer {i} {}: {} of {} fetched ({:.1} %)\n",
                &l.digest[..19.min(l.digest.len())],
                human(l.served),
                human(l.size),
                percent(l.served, l.size)
            ));
        }
        s.push_str(&format!(
            "Bytes fetched: {} of the image's {} ({:.1} %). CDH's own puller downloads all {}, \
             decrypts and unpacks it into guest memory before the container can start.\n",
            human(self.served()),
            human(self.image_bytes()),
            percent(self.served(), self.image_bytes()),
            human(self.image_bytes())
        ));
        s.push_str(&format!(
            "KBS: {} authentication(s), {} attestation(s), {} read(s) of the KEK for the whole image.\n",
            self.kbs_auth, self.kbs_attest, self.kbs_kek_reads
        ));
        s.push_str(&format!(
            "Runtime measurements recorded: {:?}\n",
            self.measurements
        ));
        s.push_str(&if self.left_mounted.is_empty() {
            "After kata-agent's umount of rootfs: nothing of Veil's left mounted.\n".to_string()
        } else {
            format!("Left mounted: {:?}\n", self.left_mounted)
        });
        s.push_str(&self.comparison_table());
        s
    }
}

/// Runs the guest flow with a `big_size`-byte file in the top layer, telling `step` what
/// happens as it goes.
pub fn run(big_size: usize, step: &mut dyn FnMut(&str)) -> anyhow::Result<GuestReport> {
    let kek = random_bytes(32, 0x6775_6573);
    step(&format!(
        "Building the image (busybox and small files; a {} random file) as eStargz, encrypting \
         every layer for {GUEST_KID} (the layer keys wrapped with a KEK only the KBS holds).",
        human(big_size as u64)
    ));
    let plain = [
        pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
        pack(
            tar_of(&top_entries(random_bytes(big_size, 0x6775_6d65)))?,
            LayerFormat::Estargz,
        )?,
    ];
    let layers = plain
        .iter()
        .map(|l| {
            let toc = l
                .annotations
                .get(TOC_DIGEST_ANNOTATION)
                .context("eStargz layer without TOC digest")?;
            kbs_kid_encrypt(l, Some(toc), GUEST_KID, &kek)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut guest = GuestStack::new("veil-demo-guest-", HashMap::new())?;
    let (image, pushed_digest) = guest.push("pod-app", &layers)?;
    step(&format!(
        "Pushed {image} to the registry on loopback; the test KBS (sample TEE) at {} holds the KEK \
         as {GUEST_RESOURCE}.",
        guest.kbs.url()
    ));
    guest.kbs.put(GUEST_RESOURCE, &kek)?;
    guest.write_config(&["kbs"], None)?;
    guest.start()?;
    step(&format!(
        "veil-guest is serving kata-agent's CDH socket {} (the CDH stand-in behind it at {}, the \
         attestation-agent stand-in at {}); KEK source \"kbs\": Veil attests to the KBS itself.",
        guest.socket.display(),
        guest.upstream.display(),
        guest.aa_socket.display()
    ));
    let mut report = pod(&mut guest, &image, &pushed_digest, &layers, step);
    match &mut report {
        Err(_) => step(&guest.logs()),
        Ok(report) => {
            step(
                "The status quo on the same image: CDH's puller fetches every layer whole, \
                 gets the KEK from the KBS after attestation, decrypts, decompresses and unpacks \
                 each layer into its work dir (/run, a tmpfs in a guest), checks the diff_ids, \
                 overlays them at the bundle's rootfs; then runc runs the same command.",
            );
            report.status_quo =
                status_quo_pull::run(&guest, &image, &guest_script()).map_err(|e| format!("{e:#}"));
            match &report.status_quo {
                Ok(sq) => step(&format!(
                    "Status quo: the container printed {:?} after {}; {} fetched, {} written \
                     to the work dir.",
                    sq.output,
                    secs(sq.first_output),
                    human(sq.served()),
                    human(sq.work_dir_bytes)
                )),
                Err(e) => step(&format!("The status quo's whole pull failed: {e}")),
            }
        }
    }
    report
}

/// The command both containers run: a small file of each layer.
fn guest_script() -> String {
    format!("cat {HELLO_PATH} {LAYER2_PATH}")
}

/// kata-agent's part: the pull, the container, the teardown.
fn pod(
    guest: &mut GuestStack,
    image: &str,
    pushed_digest: &str,
    layers: &[crate::lazy_image::Layer],
    step: &mut dyn FnMut(&str),
) -> anyhow::Result<GuestReport> {
    let bundle = guest.bundle("pod-app")?;
    let client = guest.client()?;
    step(&format!(
        "kata-agent: PullImage {{image_url: {image}, bundle_path: {}}}",
        bundle.display()
    ));
    let started = Instant::now();
    let answered_digest = guest
        .runtime
        .block_on(client.pull_image(image, &bundle, PULL_TIMEOUT))
        .map_err(|e| anyhow::anyhow!("PullImage: {e:?}"))?;
    let pull_time = started.elapsed();
    step(&format!(
        "PullImage answered {answered_digest} after {}: the root is one overlay of the lazily \
         served layers at {}/rootfs.",
        secs(pull_time),
        bundle.display()
    ));
    let run = runc_run_timed(&guest.dir, &bundle, "pod-app", &guest_script(), started)?;
    let work_dir_bytes = file_bytes(&guest.dir.join("work"))?;
    step(&format!(
        "runc run (kata-agent starts the container): it printed {:?}",
        run.stdout
    ));
    let log = guest.registry.log();
    let layer_report: Vec<GuestLayer> = layers
        .iter()
        .map(|l| GuestLayer {
            digest: l.digest.clone(),
            size: l.size(),
            served: blob_served(&log, &l.digest).1,
        })
        .collect();
    let metrics = guest.kbs.metrics()?;
    let measurements = guest
        .measurements()
        .into_iter()
        .map(|m| (m.image, m.digest))
        .collect();
    step("kata-agent tears the container down: umount rootfs.");
    unmount_rootfs(&bundle)?;
    let left_mounted = match guest.wait_nothing_mounted("the umount") {
        Ok(()) => Vec::new(),
        Err(_) => guest.mounts(),
    };
    drop(client);
    let status = guest.veil()?.stop();
    if !status.is_some_and(|s| s.success()) {
        bail!("veil-guest did not stop cleanly: {status:?}");
    }
    guest.veil = None;
    Ok(GuestReport {
        image: image.to_string(),
        pushed_digest: pushed_digest.to_string(),
        answered_digest,
        layers: layer_report,
        pull_time,
        first_output: run.first_output,
        exited: run.exited,
        output: run.stdout,
        expected_output: format!("{HELLO_TEXT}{LAYER2_TEXT}"),
        kbs_auth: count(&metrics, AUTH_REQUESTS),
        kbs_attest: count(&metrics, ATTESTATION_REQUESTS),
        kbs_kek_reads: count(&metrics, &resource_reads(GUEST_RESOURCE)),
        measurements,
        left_mounted,
        work_dir_bytes,
        status_quo: Err("not run".to_string()),
    })
}
