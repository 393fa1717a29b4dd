//! Veil's main job with keys released after attestation, end to end, shared by
//! `veil-demo` and the `demo` test: an encrypted image whose layers are never downloaded,
//! its key-encryption key released by a KBS to the sample TEE.
//!
//! 1. Debian's `docker-registry` starts on loopback (a [`LazyStack`]); the demo image
//!    (busybox-static and small files; a large random file) is pushed to it as a plain
//!    `tar+gzip` image, as an image build would leave it.
//! 2. `veil convert --encrypt --kbs-kid kbs:///default/image_key/veil-demo --kek-file F`
//!    turns it into an encrypted eStargz (or zstd:chunked) image: every layer under a fresh
//!    AES-256-CTR key, wrapped in coco_keyprovider's attestation-agent packet with the KEK.
//! 3. The test KBS (Trustee's protocol, sample TEE) starts on loopback with the KEK as
//!    resource `default/image_key/veil-demo`.
//! 4. veil-snapshotter starts with `[decryption] kek_sources = ["kbs"]`, the KBS's URL and
//!    `attester = "sample"`, and a private containerd with Veil as snapshotter `veil`.
//! 5. `veil pull`: Veil attests to the KBS, gets the KEK, unwraps each layer's key and
//!    mounts the layers lazily.
//! 6. `ctr run --snapshotter veil` reads two small files; then the large file's SHA-256.
//!    The registry's access log says how much of each layer that cost.
//! 7. The KBS's counters: authentications, attestations, resource reads for the image;
//!    the daemon's log is searched for the KEK.
//! 8. Everything is stopped and unmounted (and checked).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::containerd::SNAPSHOTTER;
use crate::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, LayerFormat, BIG_PATH,
    HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use crate::lazy_scenario::{format_name, human, percent, secs, Options};
use crate::lazy_stack::{text, LazyStack};
use crate::log_secrets::{check_no_secret_in_logs, text_forms};
use crate::process::run_with_timeout;
use crate::test_kbs::{
    count, resource_reads, InProcessKbs, ATTESTATION_REQUESTS, AUTH_REQUESTS, POLICY_EVALUATIONS,
    SAMPLE_ATTESTATIONS,
};

/// The repository of the demo image (plain and encrypted tags).
pub const REPO: &str = "veil-demo/busybox";
/// The tag of the image as built (plain tar+gzip).
pub const PLAIN_TAG: &str = "plain";
/// The tag of the encrypted conversion.
pub const ENCRYPTED_TAG: &str = "encrypted";
/// The kid of the layers' attestation-agent recipients.
pub const KID: &str = "kbs:///default/image_key/veil-demo";
/// The KBS resource the kid names.
pub const RESOURCE: &str = "default/image_key/veil-demo";
/// How long `veil convert` may take.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(600);

/// One layer of the encrypted image.
#[derive(Debug, Clone)]
pub struct AttestedLayer {
    /// Digest of the encrypted blob.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Bytes of it the registry served up to and including the small-file container.
    pub served_through_small: u64,
    /// ... and up to and including the SHA-256 container.
    pub served_through_sha: u64,
}

/// The KBS's counters for the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KbsCounts {
    /// `POST /kbs/v0/auth`.
    pub auth: u64,
    /// `POST /kbs/v0/attest`.
    pub attest: u64,
    /// Successful attestations with the sample TEE.
    pub sample_attested: u64,
    /// Resource requests that reached the policy (a valid token).
    pub resource_requests: u64,
    /// Reads of the image's KEK resource.
    pub kek_reads: u64,
}

/// What happened, for the summary and the `demo` test.
#[derive(Debug)]
pub struct AttestedReport {
    /// The options it ran with.
    pub options: Options,
    /// The encrypted image's reference.
    pub reference: String,
    /// The KBS's URL.
    pub kbs_url: String,
    /// `veil convert`'s wall-clock time.
    pub convert_time: Duration,
    /// Layers, lowest first.
    pub layers: Vec<AttestedLayer>,
    /// Whether every layer's media type says encrypted.
    pub all_encrypted: bool,
    /// `veil pull`'s output lines and time.
    pub pull_lines: Vec<String>,
    /// `veil pull`'s wall-clock time.
    pub pull_time: Duration,
    /// Layers `veil pull` reported as served lazily.
    pub lazy_layers: usize,
    /// The KBS's counters right after `veil pull`.
    pub kbs_after_pull: KbsCounts,
    /// The small-file container's output (or error) and time.
    pub small: Result<String, String>,
    /// What it should print.
    pub small_expected: String,
    /// Its wall-clock time.
    pub small_time: Duration,
    /// The SHA-256 container's output (or error) and time.
    pub sha: Result<String, String>,
    /// The SHA-256 of the large file.
    pub big_sha256: String,
    /// The SHA-256 container's wall-clock time.
    pub sha_time: Duration,
    /// The KBS's counters at the end.
    pub kbs: KbsCounts,
    /// Whether the KEK turned up in a daemon log (the error says where).
    pub key_in_logs: Result<(), String>,
    /// veil-snapshotter's warnings and errors.
    pub veil_warnings: Vec<String>,
    /// The clean-up's check (nothing left running or mounted).
    pub cleanup: Result<(), String>,
}

impl AttestedReport {
    /// Total size of the encrypted layers.
    pub fn layer_bytes_total(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Layer bytes served up to and including the small-file container.
    pub fn served_through_small(&self) -> u64 {
        self.layers.iter().map(|l| l.served_through_small).sum()
    }

    /// Whether the SHA-256 container printed the large file's digest.
    pub fn sha_matches(&self) -> bool {
        self.sha
            .as_deref()
            .map(|out| out.split_whitespace().next() == Some(self.big_sha256.as_str()))
            .unwrap_or(false)
    }

    /// Every check that failed, in words (empty: all passed).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.all_encrypted {
            p.push("veil convert left a layer unencrypted".into());
        }
        if self.lazy_layers != self.layers.len() {
            p.push(format!(
                "veil pull served {} of {} layers lazily",
                self.lazy_layers,
                self.layers.len()
            ));
        }
        if self.small.as_deref() != Ok(self.small_expected.as_str()) {
            p.push(format!(
                "the small-file container printed {:?}, expected {:?}",
                self.small, self.small_expected
            ));
        }
        if let Some(big) = self.layers.last() {
            if big.served_through_small * 10 >= big.size {
                p.push(format!(
                    "reading two small files made the registry serve {} of the large layer's {} \
                     bytes: not lazy",
                    big.served_through_small, big.size
                ));
            }
        }
        if !self.sha_matches() {
            p.push(format!(
                "sha256sum printed {:?}, expected {}",
                self.sha, self.big_sha256
            ));
        }
        let one = KbsCounts {
            auth: 1,
            attest: 1,
            sample_attested: 1,
            resource_requests: 1,
            kek_reads: 1,
        };
        if self.kbs != one {
            p.push(format!(
                "the KBS saw {:?} for the whole image, expected one of each",
                self.kbs
            ));
        }
        if let Err(e) = &self.key_in_logs {
            p.push(e.clone());
        }
        if let Err(e) = &self.cleanup {
            p.push(format!("clean-up: {e}"));
        }
        p
    }

    /// The summary the demo prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let total = self.layer_bytes_total();
        s.push_str(&format!(
            "Encrypted image {} ({} {} layers, {} in all; every layer's key wrapped for kid {KID}) \
             pulled with `veil pull`: {} of {} layers lazy.\n",
            self.reference,
            self.layers.len(),
            format_name(self.options.format),
            human(total),
            self.lazy_layers,
            self.layers.len()
        ));
        s.push_str(&format!(
            "    {:<74} {:>10} {:>22} {:>22}\n",
            "LAYER", "SIZE", "FETCHED: SMALL FILES", "FETCHED: + SHA256SUM"
        ));
        for l in &self.layers {
            s.push_str(&format!(
                "    {:<74} {:>10} {:>22} {:>22}\n",
                l.digest,
                human(l.size),
                format!(
                    "{} ({:.2} %)",
                    human(l.served_through_small),
                    percent(l.served_through_small, l.size)
                ),
                format!(
                    "{} ({:.2} %)",
                    human(l.served_through_sha),
                    percent(l.served_through_sha, l.size)
                ),
            ));
        }
        let served = self.served_through_small();
        s.push_str(&format!(
            "Reading two small files in a container: registry served {} of {} layer bytes ({:.2} \
             %); pull {}, container {}.\n",
            human(served),
            human(total),
            percent(served, total),
            secs(self.pull_time),
            secs(self.small_time)
        ));
        s.push_str(&format!(
            "sha256sum of the {} file in a container: {} ({}).\n",
            human(self.options.big_size as u64),
            if self.sha_matches() {
                "matched"
            } else {
                "DID NOT match"
            },
            secs(self.sha_time)
        ));
        s.push_str(&format!(
            "The KBS ({}) saw, for the whole image: {} auth, {} attestation ({} sample evidence \
             accepted), {} resource request ({} read of {RESOURCE}).\n",
            self.kbs_url,
            self.kbs.auth,
            self.kbs.attest,
            self.kbs.sample_attested,
            self.kbs.resource_requests,
            self.kbs.kek_reads
        ));
        s.push_str(&format!(
            "The KEK in veil-snapshotter's log: {}.\n",
            match &self.key_in_logs {
                Ok(()) => "nowhere".to_string(),
                Err(e) => format!("FOUND: {e}"),
            }
        ));
        if !self.veil_warnings.is_empty() {
            s.push_str(&format!(
                "veil-snapshotter logged {} warning(s)/error(s):\n{}\n",
                self.veil_warnings.len(),
                crate::scenario::indent(&self.veil_warnings.join("\n"))
            ));
        }
        s.push_str(&format!(
            "Clean-up: {}.\n",
            match &self.cleanup {
                Ok(()) => "containerd, veil-snapshotter, the registry and the KBS stopped; \
                           nothing left running or mounted"
                    .to_string(),
                Err(e) => format!("FAILED: {e}"),
            }
        ));
        s
    }
}

fn counts(kbs: &InProcessKbs) -> anyhow::Result<KbsCounts> {
    let m = kbs.metrics()?;
    Ok(KbsCounts {
        auth: count(&m, AUTH_REQUESTS),
        attest: count(&m, ATTESTATION_REQUESTS),
        sample_attested: count(&m, SAMPLE_ATTESTATIONS),
        resource_requests: count(&m, POLICY_EVALUATIONS),
        kek_reads: count(&m, &resource_reads(RESOURCE)),
    })
}

/// A layer as converted: digest, size, media type.
type Converted = (String, u64, String);

/// Converts the plain image; returns the encrypted image's reference, its layers and the
/// time it took.
fn convert(
    stack: &LazyStack,
    opts: &Options,
    kek_file: &Path,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<(String, Vec<Converted>, Duration)> {
    let source = stack.image_ref(REPO, PLAIN_TAG);
    let reference = stack.image_ref(REPO, ENCRYPTED_TAG);
    let format = match opts.format {
        LayerFormat::ZstdChunked => "zstd-chunked",
        _ => "estargz",
    };
    let kek = kek_file.to_string_lossy().into_owned();
    let args = [
        "convert",
        "--json",
        "--plain-http",
        &source,
        &reference,
        "--format",
        format,
        "--encrypt",
        "--kbs-kid",
        KID,
        "--kek-file",
        &kek,
    ];
    let mut cmd = Command::new(crate::veil_binary("veil"));
    cmd.args(args);
    let start = Instant::now();
    let out = run_with_timeout(cmd, CONVERT_TIMEOUT, &stack.dir.join("veil-convert"))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "veil convert failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("veil convert --json printed {:?}", text(&out.stdout)))?;
    let layers: Vec<Converted> = report["layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    (
                        l["digest"].as_str().unwrap_or_default().to_string(),
                        l["size"].as_u64().unwrap_or(0),
                        l["media_type"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    say(&format!(
        "Converted and encrypted it with Veil, in {}:\n    veil {}\n    (the KEK is 32 random \
         bytes in {}; each layer gets a fresh AES-256-CTR key, wrapped with the KEK in \
         coco_keyprovider's attestation-agent packet for kid {KID})\n{}",
        secs(took),
        args.iter()
            .filter(|a| **a != "--json")
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
        kek_file.display(),
        layers
            .iter()
            .map(|(d, size, media)| format!("    {d}  {:>10}  {media}", human(*size)))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    Ok((reference, layers, took))
}

/// Runs the attested scenario, telling each step to `say`. Everything it starts is stopped
/// again, also on failure.
pub fn run(opts: &Options, say: &mut dyn FnMut(&str)) -> anyhow::Result<AttestedReport> {
    if opts.format == LayerFormat::PlainGzip {
        bail!("a plain tar.gz image cannot be served lazily: use eStargz or zstd:chunked");
    }
    let mut stack = LazyStack::new("demo-attested")?;
    let result = run_on(&mut stack, opts, say);
    let veil_warnings: Vec<String> = stack
        .veil
        .log_text()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect();
    let failure_logs = result.is_err().then(|| stack.logs());
    let cleanup = stack.finish().map_err(|e| format!("{e:#}"));
    match result {
        Ok(mut report) => {
            report.veil_warnings = veil_warnings;
            report.cleanup = cleanup;
            say("Stopped containerd, veil-snapshotter, the KBS and the registry; unmounted Veil's layers.");
            Ok(report)
        }
        Err(e) => Err(e.context(failure_logs.unwrap_or_default())),
    }
}

fn run_on(
    stack: &mut LazyStack,
    opts: &Options,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<AttestedReport> {
    say(&format!(
        "Started Debian's docker-registry on {} (data in {}).",
        stack.registry.host(),
        stack.dir.display()
    ));

    let big = random_bytes(opts.big_size, 0x5ee1_a77e);
    let big_sha256 = sha256_hex(&big);
    let layers = vec![
        pack(tar_of(&base_entries()?)?, LayerFormat::PlainGzip)?,
        pack(tar_of(&top_entries(big))?, LayerFormat::PlainGzip)?,
    ];
    stack.push(REPO, PLAIN_TAG, &layers)?;
    say(&format!(
        "Built a two-layer image (busybox-static and small files; a {} random file at \
         {BIG_PATH}) and pushed it as {} in plain tar+gzip layers, as an image build leaves \
         it.",
        human(opts.big_size as u64),
        stack.image_ref(REPO, PLAIN_TAG)
    ));

    let kek = random_bytes(32, 0x6b65_6b64);
    let kek_file = stack.dir.join("kek.bin");
    std::fs::write(&kek_file, &kek)?;
    let (reference, converted, convert_time) = convert(stack, opts, &kek_file, say)?;
    let all_encrypted = !converted.is_empty()
        && converted
            .iter()
            .all(|(_, _, media)| media.ends_with("+encrypted"));

    let kbs = InProcessKbs::start(&stack.dir.join("kbs"))?;
    kbs.put(RESOURCE, &kek)?;
    say(&format!(
        "Started the test KBS on {} (Trustee's KBS protocol 0.4.0, sample TEE verifier, \
         allow-all policy) and stored the KEK as its resource {RESOURCE}. The KEK now exists \
         only there (and in the build's {}).",
        kbs.url(),
        kek_file.display()
    ));

    let config = format!(
        "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = {}\n\n[decryption]\n\
         keys_dir = \"{}\"\nkek_sources = [\"kbs\"]\nkbs_url = \"{}\"\n\
         kbs_allow_plain_http = true\nattester = \"sample\"\n",
        stack.registry.host(),
        opts.background_fetch,
        stack.dir.join("no-keys").display(),
        kbs.url()
    );
    std::fs::write(stack.dir.join("veil-config.toml"), &config)?;
    stack.start()?;
    say(&format!(
        "Started veil-snapshotter and a private containerd using it as snapshotter \
         \"{SNAPSHOTTER}\". Veil's config:\n{}",
        crate::scenario::indent(config.trim_end())
    ));

    let (out, pull_time) = stack.veil_pull(&reference, &[])?;
    let pull_text = format!("{}{}", text(&out.stdout), text(&out.stderr));
    if !out.status.success() {
        bail!(
            "veil pull {reference} failed ({}):\n{pull_text}",
            out.status
        );
    }
    let pull_lines: Vec<String> = pull_text.lines().map(str::to_string).collect();
    let lazy_layers = pull_lines
        .iter()
        .filter(|l| l.starts_with("layer ") && l.contains(" lazy"))
        .count();
    let kbs_after_pull = counts(&kbs)?;
    say(&format!(
        "`veil pull {reference}` took {}: Veil attested to the KBS with sample evidence, got \
         the KEK for {KID} (KBS so far: {} attestation, {} resource read), unwrapped each \
         layer's key and mounted the layers lazily:\n{}",
        secs(pull_time),
        kbs_after_pull.attest,
        kbs_after_pull.kek_reads,
        crate::scenario::indent(pull_text.trim_end())
    ));

    let small_cmd = ["/bin/cat", HELLO_PATH, LAYER2_PATH];
    let start = Instant::now();
    let small = stack
        .cd()
        .run_container(
            SNAPSHOTTER,
            &reference,
            "veil-demo-attested-cat",
            &small_cmd,
        )
        .map_err(|e| format!("{e:#}"));
    let small_time = start.elapsed();
    let served_small: Vec<u64> = converted
        .iter()
        .map(|(d, _, _)| stack.served(d).1)
        .collect();
    let total: u64 = converted.iter().map(|(_, s, _)| s).sum();
    say(&format!(
        "`ctr run --snapshotter {SNAPSHOTTER}` of `{}` took {} and printed:\n{}\n    The \
         registry has served {} of the {} of encrypted layers so far ({:.2} %): each chunk \
         read was fetched, decrypted at its offset and checked.",
        small_cmd.join(" "),
        secs(small_time),
        crate::scenario::indent(small.as_deref().unwrap_or_else(|e| e)),
        human(served_small.iter().sum()),
        human(total),
        percent(served_small.iter().sum(), total)
    ));

    let sha_cmd = ["/bin/sha256sum", BIG_PATH];
    let start = Instant::now();
    let sha = stack
        .cd()
        .run_container(SNAPSHOTTER, &reference, "veil-demo-attested-sha", &sha_cmd)
        .map_err(|e| format!("{e:#}"));
    let sha_time = start.elapsed();
    say(&format!(
        "A second container ran `{}` in {}, reading all of it: {} (expected {big_sha256}).",
        sha_cmd.join(" "),
        secs(sha_time),
        sha.as_deref().map(str::trim_end).unwrap_or_else(|e| e)
    ));

    let kbs_counts = counts(&kbs)?;
    let kbs_url = kbs.url().to_string();
    let key_in_logs =
        check_no_secret_in_logs(&stack.veil.logs, &text_forms(&kek)).map_err(|e| format!("{e:#}"));
    drop(kbs);
    let layers = converted
        .into_iter()
        .zip(served_small)
        .map(|((digest, size, media_type), small)| AttestedLayer {
            served_through_sha: stack.served(&digest).1,
            digest,
            size,
            media_type,
            served_through_small: small,
        })
        .collect();
    Ok(AttestedReport {
        options: opts.clone(),
        reference,
        kbs_url,
        convert_time,
        layers,
        all_encrypted,
        pull_lines,
        pull_time,
        lazy_layers,
        kbs_after_pull,
        small,
        small_expected: format!("{HELLO_TEXT}{LAYER2_TEXT}"),
        small_time,
        sha,
        big_sha256,
        sha_time,
        kbs: kbs_counts,
        key_in_logs,
        veil_warnings: Vec::new(),
        cleanup: Ok(()),
    })
}
