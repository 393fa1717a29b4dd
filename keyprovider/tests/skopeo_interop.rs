//! Byte-compatibility with ocicrypt as shipped in Debian's skopeo (1.9), both ways.
//!
//! 1. skopeo encrypts (`--encryption-key jwe:pub.pem`, RSA and EC keys made by the
//!    `openssl` CLI, one and two recipients) a small OCI image built with umoci; Veil parses
//!    the annotations, unwraps with a keys directory, decrypts the whole layer and random
//!    ranges through `CtrDecryptingSource`, checks the HMAC, and gets the original layer
//!    blob back byte for byte. A keys directory without the right key gives the clear
//!    error (layer, schemes, key files; no key bytes).
//! 2. Veil encrypts a layer (CTR + HMAC, options wrapped by `jwe::encrypt`, sealed TOC
//!    digest included) and writes the manifest; skopeo `--decryption-key` decrypts it to
//!    the original blob with the RSA key and with the EC key, and refuses a stranger's key.
//!
//! Needs `skopeo`, `umoci` and `openssl` on PATH (scripts/setup installs them).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use futures::executor::block_on;
use serde_json::Value;
use sha2::{Digest, Sha256};
use veil_blob::{BlobSource, MemoryBlob};
use veil_keyprovider::cipher::{
    apply_keystream_at, hmac_sha256, CtrDecryptingSource, HmacVerifier,
};
use veil_keyprovider::jwe;
use veil_keyprovider::keys::{KeyRing, PublicKey};
use veil_keyprovider::ocicrypt::{
    encrypted_media_type, is_encrypted_media_type, layer_cipher_params, plain_media_type,
    sealed_toc_digest, set_sealed_toc_digest, EncryptedLayer, PrivateLayerBlockCipherOptions,
    PublicLayerBlockCipherOptions, Recipient, ANNOTATION_PREFIX,
};
use veil_keyprovider::secret::b64_encode;
use veil_keyprovider::unwrap::{unwrap_private_options, UnwrapError};

/// Size of the incompressible file in the test layer.
const RANDOM_FILE: usize = 3 * 1024 * 1024 + 12_345;

fn run(cmd: &mut Command) -> std::process::Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shown}: cannot run ({e}); scripts/setup installs it"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn skopeo(dir: &Path) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.current_dir(dir).arg("--insecure-policy");
    cmd
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Keys, key directories and a plain source image in one temporary directory.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let f = Self { tmp };
        let d = f.dir();
        // RSA: PKCS#8 PEM (OpenSSL 3 default); EC P-256: SEC1 PEM, and PKCS#8 DER in its dir.
        run(Command::new("openssl")
            .current_dir(d)
            .args(["genrsa", "-out", "rsa.pem", "2048"]));
        run(Command::new("openssl")
            .current_dir(d)
            .args(["rsa", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]));
        run(Command::new("openssl").current_dir(d).args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ]));
        run(Command::new("openssl")
            .current_dir(d)
            .args(["ec", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]));
        // skopeo 1.9 takes an EC decryption key only as PKCS#8 (it reports SEC1 as missing).
        run(Command::new("openssl").current_dir(d).args([
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "ec.pem",
            "-out",
            "ec-pkcs8.pem",
        ]));
        run(Command::new("openssl").current_dir(d).args([
            "genrsa",
            "-out",
            "stranger.pem",
            "2048",
        ]));
        for dir in ["keys-rsa", "keys-ec", "keys-stranger"] {
            fs::create_dir(d.join(dir)).unwrap();
        }
        fs::copy(d.join("rsa.pem"), d.join("keys-rsa/rsa.pem")).unwrap();
        fs::copy(d.join("rsa.pub"), d.join("keys-rsa/rsa.pub")).unwrap();
        run(Command::new("openssl").current_dir(d).args([
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "ec.pem",
            "-outform",
            "DER",
            "-out",
            "keys-ec/ec.der",
        ]));
        fs::copy(d.join("stranger.pem"), d.join("keys-stranger/stranger.pem")).unwrap();

        // The plain image: a small file and a few MiB of random bytes, one tar+gzip layer.
        let content = d.join("content");
        fs::create_dir(&content).unwrap();
        fs::write(content.join("hello.txt"), b"hello from veil\n").unwrap();
        fs::write(
            content.join("random.bin"),
            pseudo_random(RANDOM_FILE, 0x5eed),
        )
        .unwrap();
        run(Command::new("umoci")
            .current_dir(d)
            .args(["init", "--layout", "src"]));
        run(Command::new("umoci")
            .current_dir(d)
            .args(["new", "--image", "src:v1"]));
        run(Command::new("umoci")
            .current_dir(d)
            .args(["insert", "--image", "src:v1", "content", "/data"]));
        f
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Secret text that must never appear in an error: the private keys' PEM lines.
    fn private_key_lines(&self) -> Vec<String> {
        ["rsa.pem", "ec.pem", "stranger.pem"]
            .iter()
            .flat_map(|name| {
                fs::read_to_string(self.dir().join(name))
                    .unwrap()
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// xorshift64*: reproducible incompressible bytes.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An OCI layout's only manifest, and the means to read and write its blobs.
struct Layout {
    root: PathBuf,
    manifest_digest: String,
    manifest: Value,
}

impl Layout {
    fn open(root: PathBuf) -> Self {
        let index: Value =
            serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let mut layout = Self {
            root,
            manifest_digest: manifest_digest.clone(),
            manifest: Value::Null,
        };
        layout.manifest = serde_json::from_slice(&layout.blob(&manifest_digest)).unwrap();
        layout
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.root.join("blobs/sha256").join(hex)
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).unwrap()
    }

    fn write_blob(&self, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        fs::write(self.blob_path(&digest), bytes).unwrap();
        digest
    }

    fn layer(&self) -> &Value {
        let layers = self.manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "the test image has one layer");
        &layers[0]
    }

    fn layer_digest(&self) -> String {
        self.layer()["digest"].as_str().unwrap().to_string()
    }

    fn layer_media_type(&self) -> String {
        self.layer()["mediaType"].as_str().unwrap().to_string()
    }

    fn layer_blob(&self) -> Vec<u8> {
        let blob = self.blob(&self.layer_digest());
        assert_eq!(blob.len() as u64, self.layer()["size"].as_u64().unwrap());
        assert_eq!(format!("sha256:{}", sha256_hex(&blob)), self.layer_digest());
        blob
    }

    fn layer_annotations(&self) -> Vec<(String, String)> {
        match self.layer().get("annotations") {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Rewrites the manifest (and index.json) after `self.manifest` was changed.
    fn save_manifest(&mut self) {
        let bytes = serde_json::to_vec(&self.manifest).unwrap();
        let digest = self.write_blob(&bytes);
        let index_path = self.root.join("index.json");
        let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
        index["manifests"][0]["digest"] = Value::from(digest.clone());
        index["manifests"][0]["size"] = Value::from(bytes.len());
        fs::write(index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        self.manifest_digest = digest;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Decrypts the encrypted layer of `enc` with the keys of `keys_dir` and checks everything
/// against the original layer blob `plain`.
fn check_veil_decrypts(
    enc: &Layout,
    keys_dir: &Path,
    plain: &[u8],
    plain_media: &str,
    plain_digest: &str,
) {
    let media = enc.layer_media_type();
    assert!(is_encrypted_media_type(&media), "{media}");
    assert_eq!(plain_media_type(&media), plain_media);

    let layer = EncryptedLayer::from_annotations(enc.layer_annotations()).unwrap();
    assert_eq!(layer.schemes(), ["jwe"]);
    let ring = KeyRing::load_dir(keys_dir).unwrap();
    let layer_name = enc.layer_digest();
    let private = unwrap_private_options(&layer_name, &layer, &ring).unwrap();
    // ocicrypt records the digest of the blob it was given.
    assert_eq!(private.digest, plain_digest);
    assert_eq!(sealed_toc_digest(&private).unwrap(), None);
    let params = layer_cipher_params(&layer.pubopts, &private).unwrap();

    let ciphertext = enc.layer_blob();
    assert_eq!(ciphertext.len(), plain.len(), "CTR keeps the length");
    assert_ne!(ciphertext, plain);

    let mut verifier = HmacVerifier::new(&params.key, &params.hmac).unwrap();
    for piece in ciphertext.chunks(64 * 1024 + 3) {
        verifier.update(piece);
    }
    verifier.finish().expect("the HMAC skopeo wrote matches");

    let size = ciphertext.len() as u64;
    let source =
        CtrDecryptingSource::new(Arc::new(MemoryBlob(ciphertext)), &params.key, &params.nonce);
    let whole = block_on(source.read_range(0..size)).unwrap();
    assert!(
        whole == plain,
        "the decrypted layer differs from the original blob"
    );

    let mut ranges = vec![
        0..1,
        0..4096,
        17..33,
        size / 2 - 7..size / 2 + 100_003,
        size - 1..size,
        size - 77..size,
        16..16,
    ];
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..40 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = (state >> 11) % size;
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (state >> 11) % 200_000;
        ranges.push(start..(start + len).min(size));
    }
    for range in ranges {
        let got = block_on(source.read_range(range.clone())).unwrap();
        assert!(
            got[..] == whole[range.start as usize..range.end as usize],
            "range {range:?} decrypts differently from the whole"
        );
    }
}

/// Asserts the unwrap error of `enc` with `keys_dir` is clear and secret-free.
fn check_clear_error(fixture: &Fixture, enc: &Layout, keys_dir: &Path, secrets: &[String]) {
    let layer = EncryptedLayer::from_annotations(enc.layer_annotations()).unwrap();
    let ring = KeyRing::load_dir(keys_dir).unwrap();
    let name = enc.layer_digest();
    let err = unwrap_private_options(&name, &layer, &ring).unwrap_err();
    assert!(matches!(err, UnwrapError::NoKey(_)));
    eprintln!("unwrap error, as logged: {err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains(&name), "names the layer: {text}");
    assert!(text.contains("jwe"), "names the scheme: {text}");
    for file in ring.files() {
        assert!(
            text.contains(&file.display().to_string()),
            "names {}: {text}",
            file.display()
        );
    }
    for secret in secrets.iter().chain(fixture.private_key_lines().iter()) {
        assert!(
            !text.contains(secret.as_str()),
            "the error leaks secret material: {text}"
        );
    }
}

/// The texts of a private options' key and nonce, as they could appear in output.
fn option_secrets(private: &PrivateLayerBlockCipherOptions) -> Vec<String> {
    let mut out = vec![
        b64_encode(private.symkey.expose()),
        hex::encode(private.symkey.expose()),
        format!("{:?}", private.symkey.expose()),
    ];
    for value in private.cipher_options.values() {
        out.push(b64_encode(value.expose()));
        out.push(hex::encode(value.expose()));
    }
    out
}

#[test]
fn skopeo_encrypted_layers_decrypt_with_veil() {
    let fixture = Fixture::new();
    let d = fixture.dir();
    let src = Layout::open(d.join("src"));
    let plain = src.layer_blob();
    let plain_media = src.layer_media_type();
    let plain_digest = src.layer_digest();
    assert!(plain.len() > RANDOM_FILE, "the layer holds the random file");

    for (name, keys) in [
        ("enc-rsa", vec!["rsa.pub"]),
        ("enc-ec", vec!["ec.pub"]),
        ("enc-both", vec!["rsa.pub", "ec.pub"]),
    ] {
        let mut cmd = skopeo(d);
        cmd.arg("copy");
        for key in &keys {
            cmd.arg("--encryption-key").arg(format!("jwe:{key}"));
        }
        run(cmd.arg("oci:src:v1").arg(format!("oci:{name}:v1")));
    }

    let enc_rsa = Layout::open(d.join("enc-rsa"));
    let enc_ec = Layout::open(d.join("enc-ec"));
    let enc_both = Layout::open(d.join("enc-both"));
    // One recipient: go-jose writes the flattened form; two: the general form.
    let wrapped = |l: &Layout| {
        EncryptedLayer::from_annotations(l.layer_annotations())
            .unwrap()
            .recipients
    };
    let flat: Value = serde_json::from_slice(&wrapped(&enc_rsa)[0].wrapped).unwrap();
    assert!(
        flat.get("recipients").is_none() && flat.get("protected").is_some(),
        "{flat}"
    );
    let general: Value = serde_json::from_slice(&wrapped(&enc_both)[0].wrapped).unwrap();
    assert_eq!(
        general["recipients"].as_array().map(Vec::len),
        Some(2),
        "{general}"
    );

    check_veil_decrypts(
        &enc_rsa,
        &d.join("keys-rsa"),
        &plain,
        &plain_media,
        &plain_digest,
    );
    check_veil_decrypts(
        &enc_ec,
        &d.join("keys-ec"),
        &plain,
        &plain_media,
        &plain_digest,
    );
    check_veil_decrypts(
        &enc_both,
        &d.join("keys-rsa"),
        &plain,
        &plain_media,
        &plain_digest,
    );
    check_veil_decrypts(
        &enc_both,
        &d.join("keys-ec"),
        &plain,
        &plain_media,
        &plain_digest,
    );

    // The right options, to know what must not leak.
    let layer = EncryptedLayer::from_annotations(enc_rsa.layer_annotations()).unwrap();
    let ring = KeyRing::load_dir(&d.join("keys-rsa")).unwrap();
    let private = unwrap_private_options("x", &layer, &ring).unwrap();
    let secrets = option_secrets(&private);
    assert!(!format!("{private:?}").contains(&secrets[0]));

    check_clear_error(&fixture, &enc_rsa, &d.join("keys-ec"), &secrets);
    check_clear_error(&fixture, &enc_rsa, &d.join("keys-stranger"), &secrets);
    let empty = d.join("keys-empty");
    fs::create_dir(&empty).unwrap();
    let err = unwrap_private_options("sha256:abc", &layer, &KeyRing::load_dir(&empty).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("no private key to try"), "{err}");
}

#[test]
fn veil_encrypted_layer_decrypts_with_skopeo() {
    let fixture = Fixture::new();
    let d = fixture.dir();
    let src = Layout::open(d.join("src"));
    let plain = src.layer_blob();
    let plain_media = src.layer_media_type();
    let plain_digest = src.layer_digest();

    // Encrypt as ocicrypt does: CTR over the blob, HMAC over the ciphertext, options wrapped.
    let mut private = PrivateLayerBlockCipherOptions::generate(&plain_digest).unwrap();
    let toc_digest = format!("sha256:{}", sha256_hex(b"a TOC"));
    set_sealed_toc_digest(&mut private, &toc_digest).unwrap();
    let pub_stub = PublicLayerBlockCipherOptions::new([0; 32]);
    let params = layer_cipher_params(&pub_stub, &private).unwrap();
    let mut ciphertext = plain.clone();
    apply_keystream_at(&params.key, &params.nonce, 0, &mut ciphertext);
    let pubopts = PublicLayerBlockCipherOptions::new(hmac_sha256(&params.key, &ciphertext));
    let recipients = [
        PublicKey::from_file(&d.join("rsa.pub")).unwrap(),
        PublicKey::from_file(&d.join("ec.pub")).unwrap(),
    ];
    let wrapped = jwe::encrypt(&private.to_json(), &recipients).unwrap();
    let layer = EncryptedLayer {
        pubopts,
        recipients: vec![Recipient {
            scheme: jwe::SCHEME.to_string(),
            wrapped,
        }],
    };

    copy_dir(&d.join("src"), &d.join("veil-enc"));
    let mut enc = Layout::open(d.join("veil-enc"));
    let enc_digest = enc.write_blob(&ciphertext);
    {
        let desc = &mut enc.manifest["layers"][0];
        desc["mediaType"] = Value::from(encrypted_media_type(&plain_media));
        desc["digest"] = Value::from(enc_digest.clone());
        desc["size"] = Value::from(ciphertext.len());
        let annotations = desc
            .as_object_mut()
            .unwrap()
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        for (k, v) in layer.to_annotations() {
            annotations[k] = Value::from(v);
        }
    }
    enc.save_manifest();

    // Veil reads its own image back, sealed digest included.
    let enc = Layout::open(d.join("veil-enc"));
    check_veil_decrypts_own(&enc, &d.join("keys-ec"), &toc_digest);

    // skopeo decrypts it with either private key, to the original blob.
    for (key, out) in [("rsa.pem", "dec-rsa"), ("ec-pkcs8.pem", "dec-ec")] {
        run(skopeo(d)
            .args(["copy", "--decryption-key", key, "oci:veil-enc:v1"])
            .arg(format!("oci:{out}:v1")));
        let dec = Layout::open(d.join(out));
        assert_eq!(dec.layer_media_type(), plain_media);
        assert!(
            dec.layer_blob() == plain,
            "skopeo's decryption differs from the original"
        );
        assert_eq!(dec.layer_digest(), plain_digest);
        assert!(
            dec.layer_annotations()
                .iter()
                .all(|(k, _)| !k.starts_with(ANNOTATION_PREFIX)),
            "skopeo drops the enc annotations"
        );
    }
    // And a stranger's key does not open it (skopeo really decrypted above).
    let out = skopeo(d)
        .args([
            "copy",
            "--decryption-key",
            "stranger.pem",
            "oci:veil-enc:v1",
            "oci:dec-stranger:v1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "skopeo decrypted with the wrong key");
}

fn check_veil_decrypts_own(enc: &Layout, keys_dir: &Path, toc_digest: &str) {
    let layer = EncryptedLayer::from_annotations(enc.layer_annotations()).unwrap();
    let private = unwrap_private_options(
        &enc.layer_digest(),
        &layer,
        &KeyRing::load_dir(keys_dir).unwrap(),
    )
    .unwrap();
    assert_eq!(
        sealed_toc_digest(&private).unwrap().as_deref(),
        Some(toc_digest)
    );
    let params = layer_cipher_params(&layer.pubopts, &private).unwrap();
    let mut verifier = HmacVerifier::new(&params.key, &params.hmac).unwrap();
    verifier.update(&enc.layer_blob());
    verifier.finish().unwrap();
}
