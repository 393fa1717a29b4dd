//! Attested key release end to end: an image encrypted by `veil convert --encrypt
//! --kbs-kid kbs:///default/image_key/test --kek-file F` (coco_keyprovider's
//! attestation-agent packet on every layer, no other recipient) is pushed to a loopback
//! registry; the test KBS (`veil_tests::kbs_server`, sample TEE) runs on loopback with the
//! KEK as resource `default/image_key/test`; veil-snapshotter is configured with
//! `[decryption] kek_sources = ["kbs"]`, the KBS's plain-HTTP URL and `attester = "sample"`.
//!
//! 1. `veil pull` serves both encrypted layers lazily and `ctr run --snapshotter veil`
//!    prints the image's files; the registry served under 10 % of the big layer; the KBS
//!    saw one auth, one attestation and one resource request for the whole image (the
//!    KEK is cached and reused by the second layer); the KEK appears in no daemon log.
//! 2. With the resource removed from the KBS, `veil pull` fails and what it prints names
//!    the layer, the kid, the resource URL and the KBS's answer (HTTP 401,
//!    `PluginInternalError: Plugin internal error`: trustee says no more about a missing
//!    resource); nothing of the KEK is logged.
//!
//! Needs root, umoci, busybox-static, docker-registry, containerd, runc, FUSE. Run with
//! `cargo test -p veil-tests --test kbs_pull -- --nocapture`.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::image::{build_test_image_with, TestImage};
use veil_tests::lazy_image::random_bytes;
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::log_secrets::{check_no_secret_in_logs, text_forms};
use veil_tests::mount_cli::expect_success;
use veil_tests::process::run_with_timeout;
use veil_tests::test_kbs::{
    count, resource_reads, InProcessKbs, ATTESTATION_REQUESTS, AUTH_REQUESTS, POLICY_EVALUATIONS,
    SAMPLE_ATTESTATIONS,
};

const KID: &str = "kbs:///default/image_key/test";
const RESOURCE: &str = "default/image_key/test";
const BIG_PATH: &str = "/data/big.bin";
const BIG_SIZE: usize = 16 << 20;
const NOTES_PATH: &str = "/data/notes.txt";
const NOTES_TEXT: &str = "released by the KBS after attestation\n";
const CONVERT_TIMEOUT: Duration = Duration::from_secs(300);

/// The image as `veil convert` wrote it to the registry.
struct Encrypted {
    image: TestImage,
    reference: String,
    kek: Vec<u8>,
    /// (digest, size) of each layer, lowest first.
    layers: Vec<(String, u64)>,
}

/// Builds the two-layer busybox image with a big random file, converts it to encrypted
/// eStargz with the attestation-agent recipient only, and pushes it to the stack's
/// registry.
fn encrypted_image(stack: &LazyStack) -> anyhow::Result<Encrypted> {
    let work = stack.dir.join("image");
    std::fs::create_dir_all(&work)?;
    let big = random_bytes(BIG_SIZE, 0x6b62_7370);
    let image = build_test_image_with(
        &work,
        "veil.test/kbs-pull",
        "v1",
        &[(BIG_PATH, &big), (NOTES_PATH, NOTES_TEXT.as_bytes())],
    )?;
    let kek = random_bytes(32, 0x6b65_6b21);
    let kek_file = stack.dir.join("kek.bin");
    std::fs::write(&kek_file, &kek)?;
    let reference = stack.image_ref("kbs-enc", "v1");
    let mut cmd = Command::new(veil_tests::veil_binary("veil"));
    cmd.arg("convert")
        .arg("--json")
        .arg("--plain-http")
        .arg(format!("oci:{}:{}", image.layout.display(), image.tag))
        .arg(&reference)
        .args(["--encrypt", "--kbs-kid", KID, "--kek-file"])
        .arg(&kek_file);
    let out = run_with_timeout(cmd, CONVERT_TIMEOUT, &stack.dir.join("veil-convert"))?;
    expect_success("veil convert --encrypt --kbs-kid", &out)?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("veil convert --json printed {:?}", text(&out.stdout)))?;
    let listed = report["layers"].as_array().cloned().unwrap_or_default();
    let layers: Vec<(String, u64)> = listed
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap_or_default().to_string(),
                l["size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    if layers.len() < 2 || listed.iter().any(|l| l["encrypted"] != true) {
        bail!("veil convert must encrypt every layer of two: {report:#}");
    }
    Ok(Encrypted {
        image,
        reference,
        kek,
        layers,
    })
}

/// veil-snapshotter's config: the registry over plain HTTP, no background fetch (the
/// test counts what reads alone fetch), the `kbs` KEK source at `kbs` with the sample
/// attester, and no JWE keys.
fn write_kbs_config(stack: &LazyStack, kbs: &InProcessKbs) -> anyhow::Result<()> {
    std::fs::write(
        stack.dir.join("veil-config.toml"),
        format!(
            "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = false\n\n\
             [decryption]\nkeys_dir = \"{}\"\nkek_sources = [\"kbs\"]\nkbs_url = \"{}\"\n\
             kbs_allow_plain_http = true\nattester = \"sample\"\n",
            stack.registry.host(),
            stack.dir.join("no-keys").display(),
            kbs.url()
        ),
    )?;
    Ok(())
}

#[test]
fn an_image_encrypted_for_a_kbs_kid_runs_lazily_with_one_attestation() {
    let name = "kbs-pull";
    with_stack(name, |stack| {
        let enc = encrypted_image(stack)?;
        let kbs = InProcessKbs::start(&stack.dir.join("kbs"))?;
        kbs.put(RESOURCE, &enc.kek)?;
        write_kbs_config(stack, &kbs)?;
        stack.start()?;

        let (out, took) = stack.veil_pull(&enc.reference, &[])?;
        expect_success("veil pull", &out)?;
        let stdout = text(&out.stdout);
        eprintln!("[{name}] veil pull took {took:.2?}:\n{stdout}");
        if !stdout.contains("2 lazy, 0 unpacked") {
            bail!("veil pull did not serve both encrypted layers lazily:\n{stdout}");
        }
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &enc.reference,
            "kbs-pull",
            &[
                "/bin/cat",
                enc.image.marker_path,
                enc.image.layer2_path,
                NOTES_PATH,
            ],
        )?;
        let want = format!(
            "{}{}{NOTES_TEXT}",
            enc.image.marker_text, enc.image.layer2_text
        );
        if printed != want {
            bail!("the container printed {printed:?}, expected {want:?}");
        }

        let (big, size) = &enc.layers[1];
        let served = stack.served(big).1;
        let total: u64 = enc.layers.iter().map(|(_, s)| s).sum();
        let served_all: u64 = enc.layers.iter().map(|(d, _)| stack.served(d).1).sum();
        eprintln!(
            "[{name}] ctr run printed the files; the registry served {served} of the big \
             layer's {size} bytes ({served_all} of {total} bytes of all layers)"
        );
        if served * 10 >= *size {
            bail!("the container's reads fetched {served} of {size} bytes: not lazy");
        }

        let metrics = kbs.metrics()?;
        let seen = [
            (AUTH_REQUESTS.to_string(), count(&metrics, AUTH_REQUESTS)),
            (
                ATTESTATION_REQUESTS.to_string(),
                count(&metrics, ATTESTATION_REQUESTS),
            ),
            (
                SAMPLE_ATTESTATIONS.to_string(),
                count(&metrics, SAMPLE_ATTESTATIONS),
            ),
            (
                POLICY_EVALUATIONS.to_string(),
                count(&metrics, POLICY_EVALUATIONS),
            ),
            (
                resource_reads(RESOURCE),
                count(&metrics, &resource_reads(RESOURCE)),
            ),
        ];
        eprintln!(
            "[{name}] the KBS saw, for {} encrypted layers: {}",
            enc.layers.len(),
            seen.iter()
                .map(|(n, v)| format!("{n} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some((n, v)) = seen.iter().find(|(_, v)| *v != 1) {
            bail!("the KBS counted {n} = {v}, expected 1 for the whole image: {metrics:?}");
        }
        if !stack.veil.log_text().contains("KEK obtained") {
            bail!("the veil log does not say the KEK was obtained");
        }
        check_no_secret_in_logs(&stack.veil.logs, &text_forms(&enc.kek))
    });
}

#[test]
fn without_the_kbs_resource_the_pull_fails_naming_the_kid_and_the_kbs_answer() {
    let name = "kbs-pull-gone";
    with_stack(name, |stack| {
        let enc = encrypted_image(stack)?;
        let kbs = InProcessKbs::start(&stack.dir.join("kbs"))?;
        kbs.put(RESOURCE, &enc.kek)?;
        kbs.remove(RESOURCE)?;
        write_kbs_config(stack, &kbs)?;
        stack.start()?;

        let (out, took) = stack.veil_pull(&enc.reference, &[])?;
        let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
        eprintln!(
            "[{name}] veil pull ({}, {took:.2?}) printed:\n{shown}",
            out.status
        );
        if out.status.success() {
            bail!("veil pull succeeded without the KEK in the KBS");
        }
        for needle in [
            format!("layer 1/2 {}", enc.layers[0].0),
            "cannot unwrap the layer key".to_string(),
            format!("no KEK for kid {KID}"),
            format!(
                "KBS refused resource {}/kbs/v0/resource/{RESOURCE}: HTTP 401, KBS error \
                 PluginInternalError: Plugin internal error",
                kbs.url()
            ),
        ] {
            if !shown.contains(&needle) {
                bail!("veil pull's error does not say {needle:?}:\n{shown}");
            }
        }
        let metrics = kbs.metrics()?;
        if count(&metrics, SAMPLE_ATTESTATIONS) == 0 {
            bail!("the KBS saw no attestation: {metrics:?}");
        }
        check_no_secret_in_logs(&stack.veil.logs, &text_forms(&enc.kek))
    });
}
