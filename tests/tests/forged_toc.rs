//! A forged TOC in an encrypted eStargz layer without a sealed TOC digest is never served
//! (issue 16, attack 3), with real parts: Debian's registry, skopeo, containerd, FUSE.
//!
//! skopeo encrypts an eStargz image as ocicrypt does (AES-256-CTR, HMAC-SHA256 over the
//! whole blob, the layer key wrapped for a JWE recipient) and keeps the manifest's TOC
//! annotation, which the key does not cover. CTR is malleable: an attacker who knows the
//! layer's plaintext (a public layer) but not the key XORs the ciphertext with the known
//! plaintext and the plaintext of its choice — here a whole eStargz layer whose TOC points
//! the victim's file at other content — sets the TOC annotation to the forged TOC's
//! digest, and pushes the result. Only the HMAC, checked over the whole blob, can tell.
//!
//! - The control (the old default, `require_sealed_toc = false`, with `veil mount`): the
//!   forged layer is served lazily and the forged content is read — the attack works.
//! - The default (`require_sealed_toc = true`): the genuine skopeo image is streamed
//!   (fetched whole, HMAC checked) and its container prints the victim's file; the forged
//!   image is streamed and refused by the HMAC before anything is served (`veil pull`
//!   and `veil mount` fail naming the authentication failure) and no container prints the
//!   forged content.
//!
//! Needs root, docker-registry, skopeo, containerd, runc, busybox-static, openssl, FUSE.
//! Run with `cargo test -p veil-tests --test forged_toc -- --nocapture`.

use anyhow::bail;
use veil_formats::estargz::TOC_DIGEST_ANNOTATION;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::encrypted_support::{
    pull_fails, pull_ok, registry_manifest, skopeo_encrypt, stored_blob, Keys,
};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, Entry, Layer, LayerFormat,
};
use veil_tests::lazy_stack::{status_layer, text, with_stack};
use veil_tests::mount_cli::{read_file, VeilMount, READ_TIMEOUT};

const VICTIM_PATH: &str = "/etc/motd.txt";
const VICTIM_TEXT: &str = "the genuine file of the victim's image\n";
const FORGED_TEXT: &str = "FORGED: served by an attacker who never had the key\n";

/// The victim's top layer: its file, and incompressible padding (so that the attacker's
/// layer fits in the ciphertext's length: CTR gives the keystream of that length only).
fn victim_top() -> anyhow::Result<Layer> {
    pack(
        tar_of(&[
            Entry::Dir("data", 0o755),
            Entry::Dir("etc", 0o755),
            Entry::File(
                VICTIM_PATH.trim_start_matches('/').into(),
                VICTIM_TEXT.into(),
                0o644,
            ),
            Entry::File(
                "data/pad.bin".into(),
                random_bytes(256 << 10, 0xf0e9),
                0o644,
            ),
        ])?,
        LayerFormat::Estargz,
    )
}

/// What the attacker wants served: the same path with other content.
fn attacker_top() -> anyhow::Result<Layer> {
    pack(
        tar_of(&[
            Entry::Dir("etc", 0o755),
            Entry::File(
                VICTIM_PATH.trim_start_matches('/').into(),
                FORGED_TEXT.into(),
                0o644,
            ),
        ])?,
        LayerFormat::Estargz,
    )
}

#[test]
fn a_forged_toc_without_a_seal_is_refused_by_the_hmac_before_any_read() {
    let name = "forged-toc";
    with_stack(name, |stack| {
        let keys = Keys::make(&stack.dir)?;
        let base = pack(tar_of(&base_entries()?)?, LayerFormat::Estargz)?;
        let top = victim_top()?;
        stack.push("victim", "plain", &[base.clone(), top.clone()])?;
        skopeo_encrypt(stack, "victim:plain", "victim:enc", &keys.public)?;
        let (_, descs) = registry_manifest(stack, "victim", "enc")?;
        let [enc_base, enc_top] = descs.as_slice() else {
            bail!("skopeo's image has {} layers, not 2", descs.len());
        };
        if enc_top.annotations.get(TOC_DIGEST_ANNOTATION)
            != top.annotations.get(TOC_DIGEST_ANNOTATION)
        {
            bail!(
                "skopeo did not keep the TOC annotation: {:?}",
                enc_top.annotations
            );
        }

        // The forgery, with the ciphertext and the known plaintext only.
        let cipher = stored_blob(stack, &enc_top.digest)?;
        let forged_plain = attacker_top()?;
        if cipher.len() != top.blob.len() || forged_plain.blob.len() > cipher.len() {
            bail!(
                "lengths: ciphertext {}, known plaintext {}, forged plaintext {}",
                cipher.len(),
                top.blob.len(),
                forged_plain.blob.len()
            );
        }
        let forged_blob: Vec<u8> = (0..forged_plain.blob.len())
            .map(|i| cipher[i] ^ top.blob[i] ^ forged_plain.blob[i])
            .collect();
        // ocicrypt's annotations (wrapped key, public options with the HMAC) are kept as
        // they are; the eStargz ones (TOC digest) are the forged layer's.
        let mut annotations = enc_top.annotations.clone();
        annotations.extend(forged_plain.annotations.clone());
        let forged = Layer {
            format: LayerFormat::Estargz,
            digest: format!("sha256:{}", sha256_hex(&forged_blob)),
            diff_id: forged_plain.diff_id.clone(),
            media_type: enc_top.media_type.clone(),
            annotations,
            blob: forged_blob,
        };
        let base_layer = Layer {
            format: LayerFormat::Estargz,
            blob: stored_blob(stack, &enc_base.digest)?,
            digest: enc_base.digest.clone(),
            diff_id: base.diff_id.clone(),
            media_type: enc_base.media_type.clone(),
            annotations: enc_base.annotations.clone(),
        };
        stack.push("victim", "forged", &[base_layer, forged.clone()])?;
        let genuine_ref = stack.image_ref("victim", "enc");
        let forged_ref = stack.image_ref("victim", "forged");
        eprintln!(
            "[{name}] skopeo encrypted the victim's image; forged its top layer ({} bytes of \
             {}) without the key and pushed {forged_ref}",
            forged.blob.len(),
            cipher.len()
        );

        // The control: with the old default, the forged TOC is served lazily.
        let keys_dir = keys.keys_dir.as_os_str().to_owned();
        let lazy_config = stack.dir.join("unsealed-lazy.toml");
        std::fs::write(
            &lazy_config,
            format!(
                "[decryption]\nkeys_dir = \"{}\"\nrequire_sealed_toc = false\n",
                keys.keys_dir.display()
            ),
        )?;
        {
            let case = stack.dir.join("control");
            let mut m = VeilMount::new(&case.join("mnt"), &case.join("state"), &case.join("cli"))?;
            let out = m.mount_with(&forged_ref, &["--config".as_ref(), lazy_config.as_os_str()])?;
            if !out.status.success() {
                bail!(
                    "control: with require_sealed_toc = false the forged image did not mount: {}",
                    text(&out.stderr)
                );
            }
            let read = read_file(
                &m.dir.join(VICTIM_PATH.trim_start_matches('/')),
                READ_TIMEOUT,
            )?;
            let _ = m.umount();
            m.wait_serving_exit(std::time::Duration::from_secs(10));
            m.cleanup();
            match read {
                Ok(bytes) if bytes == FORGED_TEXT.as_bytes() => eprintln!(
                    "[{name}] control: with require_sealed_toc = false, veil mount served the \
                     forged content: {:?}",
                    text(&bytes).trim()
                ),
                other => bail!(
                    "control: the forgery did not work with require_sealed_toc = false \
                     ({other:?}): the test proves nothing"
                ),
            }
        }

        // The default, veil mount: refused.
        {
            let case = stack.dir.join("default-mount");
            let mut m = VeilMount::new(&case.join("mnt"), &case.join("state"), &case.join("cli"))?;
            let out = m.mount_with(&forged_ref, &["--keys-dir".as_ref(), keys_dir.as_os_str()])?;
            let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
            let mounted = m.is_mounted();
            m.cleanup();
            if out.status.success() || mounted {
                bail!("veil mount of the forged image succeeded under the default:\n{said}");
            }
            if !said.contains("failed authentication") {
                bail!("veil mount refused the forged image, but not by the HMAC:\n{said}");
            }
            eprintln!(
                "[{name}] default: veil mount refused the forged image: {}",
                said.lines().last().unwrap_or_default()
            );
        }

        // The default, through containerd.
        std::fs::write(
            stack.dir.join("veil-config.toml"),
            format!(
                "[registry]\nplain_http = [\"{}\"]\n\n[lazy]\nbackground_fetch = false\n\n\
                 [decryption]\nkeys_dir = \"{}\"\n",
                stack.registry.host(),
                keys.keys_dir.display()
            ),
        )?;
        stack.start()?;
        pull_ok(stack, name, &genuine_ref)?;
        let report = stack.status_json()?;
        let listed = status_layer(&report, &enc_top.digest)?;
        if listed["mode"].as_str() != Some("streamed") {
            bail!("skopeo's unsealed layer was not streamed under the default: {listed:#}");
        }
        let printed = stack.cd().run_container(
            SNAPSHOTTER,
            &genuine_ref,
            &format!("{name}-genuine"),
            &["cat", VICTIM_PATH],
        )?;
        if printed != VICTIM_TEXT {
            bail!("the genuine image printed {printed:?}");
        }
        eprintln!("[{name}] default: the genuine skopeo image was streamed and read exactly");

        let said = pull_fails(stack, name, &forged_ref)?;
        if !said.contains("failed authentication") {
            bail!("veil pull refused the forged image, but not by the HMAC:\n{said}");
        }
        let log = stack.veil.log_text();
        if !log.contains("streamed layer failed authentication") {
            bail!("the snapshotter's log does not say the forged layer failed its HMAC");
        }
        let run = stack.cd().run_container(
            SNAPSHOTTER,
            &forged_ref,
            &format!("{name}-forged"),
            &["cat", VICTIM_PATH],
        );
        let shown = match &run {
            Ok(out) => out.clone(),
            Err(e) => format!("{e:#}"),
        };
        if shown.contains(FORGED_TEXT.trim_end()) {
            bail!("a container printed the forged content: {shown}");
        }
        let report = stack.status_json()?;
        if status_layer(&report, &forged.digest).is_ok() {
            bail!("the forged layer is listed as served: {report:#}");
        }
        eprintln!(
            "[{name}] default: veil pull refused the forged image (HMAC) and no container \
             printed it: {}",
            shown.lines().next().unwrap_or_default()
        );
        Ok(())
    });
}
