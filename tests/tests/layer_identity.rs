//! A layer's identity cannot be borrowed (issue 16, attacks 1 and 2), with real parts:
//! Debian's `docker-registry`, containerd 1.6 and Veil's snapshotter on loopback, images
//! built here, `veil pull` into one or two containerd namespaces, containers run with
//! `ctr run --snapshotter veil`.
//!
//! 1. **No key, no run, whatever is cached.** A plain eStargz image is pulled (served
//!    lazily); its encrypted twin (the same diff_ids, so the same chainIDs) is then refused
//!    without the key, with the missing-key error naming the layer: in the same namespace
//!    (`veil pull` asks Veil about the present snapshots) and in another one (Veil checks
//!    the key before answering ALREADY_EXISTS for an existing target).
//! 2. **No borrowed chainID.** `evil:1`'s config copies the victim's diff_ids, but its
//!    second layer holds other content. Pulled first, it does not stand in for the victim:
//!    in the same namespace the victim's pull is refused naming the conflict; in another
//!    namespace Veil does not share the snapshot, containerd unpacks the victim's own
//!    layer (and checks its diff_id) and the victim's container prints the victim's file;
//!    the encrypted victim (which containerd cannot unpack) is refused naming the conflict.
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static, FUSE and openssl.
//! Run with `cargo test -p veil-tests --test layer_identity -- --nocapture`.

use anyhow::{anyhow, bail};
use veil_keyprovider::keys::PublicKey;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::encrypted_support::{pull_fails, pull_ok, sealed_encrypt, write_veil_config, Keys};
use veil_tests::lazy_image::{base_entries, pack, tar_of, Entry, Layer, LayerFormat};
use veil_tests::lazy_stack::{text, with_stack, LazyStack};

/// The victim's file, in its second layer.
const FILE: &str = "/etc/veil-identity.txt";
const VICTIM_TEXT: &str = "the victim's own file\n";
const EVIL_TEXT: &str = "the attacker's file, served in the victim's place\n";
/// The second namespace.
const OTHER_NS: &str = "veil-other";

/// The base layer and a second layer holding [`FILE`] with `text`, eStargz.
fn layers(text: &str) -> anyhow::Result<Vec<Layer>> {
    Ok(vec![
        pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?,
        pack(
            tar_of(&[
                Entry::Dir("etc", 0o755),
                Entry::File(FILE.trim_start_matches('/').into(), text.into(), 0o644),
            ])?,
            LayerFormat::Estargz,
        )?,
    ])
}

/// A third namespace, where no snapshot of the victim exists.
const THIRD_NS: &str = "veil-third";

/// `veil pull` into [`OTHER_NS`]; its success and output.
fn pull_other(stack: &LazyStack, name: &str, reference: &str) -> anyhow::Result<(bool, String)> {
    pull_in(stack, name, OTHER_NS, reference)
}

/// `veil pull` into `ns`; its success and output.
fn pull_in(
    stack: &LazyStack,
    name: &str,
    ns: &str,
    reference: &str,
) -> anyhow::Result<(bool, String)> {
    let (out, took) = stack.veil_pull_in(ns, reference, &[])?;
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!(
        "[{name}] veil pull -n {ns} {reference} ({}, {took:.2?}):\n{shown}",
        out.status
    );
    Ok((out.status.success(), shown))
}

fn must_say(what: &str, shown: &str, needles: &[&str]) -> anyhow::Result<()> {
    for needle in needles {
        if !shown.contains(needle) {
            bail!("{what} does not say {needle:?}:\n{shown}");
        }
    }
    Ok(())
}

#[test]
fn encrypted_twin_needs_its_key_although_plain_snapshots_exist() {
    let name = "identity-keys";
    with_stack(name, |stack| {
        let plain = layers(VICTIM_TEXT)?;
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let enc = sealed_encrypt(&plain, &public)?;
        stack.push("plain", "1", &plain)?;
        stack.push("enc", "1", &enc)?;
        write_veil_config(stack, &keys.empty_dir, false)?;
        stack.start()?;

        let stdout = pull_ok(stack, name, &stack.image_ref("plain", "1"))?;
        if !stdout.contains("2 lazy") {
            bail!("the plain image was not served lazily:\n{stdout}");
        }
        let reference = stack.image_ref("enc", "1");
        // The same namespace: containerd has snapshots for every chainID.
        let shown = pull_fails(stack, name, &reference)?;
        let layer1 = format!("layer 1/2 {}", enc[0].digest);
        must_say(
            "veil pull's error (same namespace)",
            &shown,
            &[
                &layer1,
                "cannot unwrap the layer key",
                "no private key to try",
            ],
        )?;
        // Another namespace: Veil is asked with the target existing in its store.
        let (ok, shown) = pull_other(stack, name, &reference)?;
        if ok {
            bail!("the encrypted twin was pulled into {OTHER_NS} without its key:\n{shown}");
        }
        must_say(
            "veil pull's error (other namespace)",
            &shown,
            &[
                &layer1,
                "cannot unwrap the layer key",
                "no private key to try",
            ],
        )?;
        let images = stack.cd().ctr_stdout(&["images", "ls", "-q"])?;
        if images.contains("enc:1") {
            bail!("the refused image was recorded: {images}");
        }
        stack.cd().clear_namespace(OTHER_NS);
        Ok(())
    });
}

#[test]
fn a_layer_claiming_another_layers_chain_id_is_not_served_in_its_place() {
    let name = "identity-chain";
    with_stack(name, |stack| {
        let victim = layers(VICTIM_TEXT)?;
        let mut evil = layers(EVIL_TEXT)?;
        // The attack: evil's config claims the victim's diff_ids.
        for (e, v) in evil.iter_mut().zip(&victim) {
            e.diff_id = v.diff_id.clone();
        }
        if evil[1].digest == victim[1].digest {
            bail!("the two second layers must differ");
        }
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let victim_enc = sealed_encrypt(&victim, &public)?;
        stack.push("victim", "1", &victim)?;
        stack.push("evil", "1", &evil)?;
        stack.push("victim-enc", "1", &victim_enc)?;
        write_veil_config(stack, &keys.keys_dir, false)?;
        stack.start()?;

        let stdout = pull_ok(stack, name, &stack.image_ref("evil", "1"))?;
        if !stdout.contains("2 lazy") {
            bail!("evil was not served lazily:\n{stdout}");
        }
        let victim_ref = stack.image_ref("victim", "1");

        // The same namespace: refused, naming the conflict.
        let shown = pull_fails(stack, name, &victim_ref)?;
        let layer2 = format!("layer 2/2 {}", victim[1].digest);
        must_say(
            "veil pull's error (same namespace)",
            &shown,
            &[&layer2, "claims the same chainID", &evil[1].digest],
        )?;

        // Another namespace: not shared; containerd unpacks the victim's own layer.
        let (ok, shown) = pull_other(stack, name, &victim_ref)?;
        if !ok {
            bail!("the victim's pull into {OTHER_NS} failed:\n{shown}");
        }
        must_say(
            "veil pull (other namespace)",
            &shown,
            &["1 lazy, 1 unpacked"],
        )?;
        let log = stack.veil.log_text();
        if !log.contains("layer identity conflict") {
            bail!("the veil log does not report the identity conflict");
        }
        let printed = stack.cd().run_container_in(
            OTHER_NS,
            SNAPSHOTTER,
            &victim_ref,
            &format!("{name}-victim"),
            &["/bin/cat", FILE],
        )?;
        if printed != VICTIM_TEXT {
            bail!("the victim's container printed {printed:?}, expected {VICTIM_TEXT:?}");
        }

        // The encrypted victim (containerd cannot unpack it): refused, naming the
        // conflict, although its key is there: by `veil pull` where the namespace has the
        // snapshots, by Veil where it has none.
        let enc_ref = stack.image_ref("victim-enc", "1");
        let (ok, shown) = pull_other(stack, name, &enc_ref)?;
        if ok {
            bail!("the encrypted victim was pulled onto other snapshots:\n{shown}");
        }
        must_say(
            "veil pull's error (encrypted victim)",
            &shown,
            &["claims the same chainID"],
        )?;
        let (ok, shown) = pull_in(stack, name, THIRD_NS, &enc_ref)?;
        if ok {
            bail!("the encrypted victim was pulled onto evil's snapshots:\n{shown}");
        }
        must_say(
            "veil pull's error (encrypted victim, third namespace)",
            &shown,
            &[
                &format!("layer 1/2 {}", victim_enc[0].digest),
                "claims the same chainID",
                "Veil does not share the snapshot",
            ],
        )?;
        stack.cd().clear_namespace(OTHER_NS);
        stack.cd().clear_namespace(THIRD_NS);
        Ok(())
    });
}
