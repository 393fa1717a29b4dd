//! Layer encryption for `veil convert`, exactly as ocicrypt does it (PROTOCOLS.md §1):
//! a fresh 32-byte key and 16-byte nonce per layer, AES-256-CTR over the whole blob,
//! HMAC-SHA256 (same key) over the whole ciphertext in the public options, and the
//! private options (key, nonce, plaintext blob digest, and Veil's sealed TOC digest,
//! §0) wrapped for each recipient: JWE to RSA/EC public keys, and/or an
//! attestation-agent annotation packet (AES-256-GCM with a KEK named by a KBS kid, as
//! coco_keyprovider writes it).
//!
//! The blob is encrypted while the layer writer produces it ([`EncryptingWriter`]), so
//! the plaintext blob never reaches the disk. Keys live in zeroizing buffers and are
//! never printed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use veil_keyprovider::aa_packet::AnnotationPacket;
use veil_keyprovider::cipher::apply_keystream_at;
use veil_keyprovider::jwe;
use veil_keyprovider::kek::Kid;
use veil_keyprovider::keys::PublicKey;
use veil_keyprovider::ocicrypt::{
    layer_cipher_params, set_sealed_toc_digest, EncryptedLayer, PrivateLayerBlockCipherOptions,
    PublicLayerBlockCipherOptions, Recipient, KEY_LEN, NONCE_LEN,
};
use veil_keyprovider::secret::{b64_decode, SecretBytes};
use zeroize::Zeroizing;

/// Whom the layer keys are wrapped for.
#[derive(Default)]
pub struct Recipients {
    /// JWE recipients (one JWE, with one recipient entry per key, as ocicrypt writes it).
    pub jwe: Vec<PublicKey>,
    /// The attestation-agent recipient: KBS kid and KEK.
    pub kbs: Option<KbsRecipient>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipients")
            .field("jwe", &self.jwe)
            .field("kbs", &self.kbs.as_ref().map(|k| k.kid.uri.clone()))
            .finish()
    }
}

/// A KEK and the KBS resource that holds it.
pub struct KbsRecipient {
    /// The KBS resource URI written as the packet's `kid`.
    pub kid: Kid,
    kek: SecretBytes,
}

impl KbsRecipient {
    /// The kid `kid` (`kbs:///repo/type/tag`) and the KEK in `kek_file`: 32 raw bytes,
    /// or their standard base64 (as `encrypt.sh -k` takes it).
    pub fn load(kid: &str, kek_file: &Path) -> Result<Self, String> {
        let kid = Kid::parse(kid).map_err(|e| e.to_string())?;
        if !kid.is_resource() {
            return Err(format!(
                "kid {kid}: only kbs:///<repo>/<type>/<tag> resources can be decrypted by CoCo"
            ));
        }
        let raw = Zeroizing::new(
            std::fs::read(kek_file)
                .map_err(|e| format!("reading the KEK file {}: {e}", kek_file.display()))?,
        );
        let kek = if raw.len() == KEY_LEN {
            SecretBytes::new(raw.to_vec())
        } else {
            let text = std::str::from_utf8(&raw).unwrap_or_default().trim();
            match b64_decode(text) {
                Ok(bytes) if bytes.len() == KEY_LEN => SecretBytes::new(bytes),
                _ => {
                    return Err(format!(
                        "the KEK file {} holds {} bytes: expected 32 raw bytes or their base64 \
                         (e.g. `openssl rand 32 > {}`)",
                        kek_file.display(),
                        raw.len(),
                        kek_file.display()
                    ))
                }
            }
        };
        Ok(Self { kid, kek })
    }
}

impl Recipients {
    /// Whether there is anyone to wrap for.
    pub fn is_empty(&self) -> bool {
        self.jwe.is_empty() && self.kbs.is_none()
    }

    /// Reads the public keys of `jwe_files`.
    pub fn load(jwe_files: &[PathBuf], kbs: Option<KbsRecipient>) -> Result<Self, String> {
        let jwe = jwe_files
            .iter()
            .map(|p| PublicKey::from_file(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { jwe, kbs })
    }

    /// The wrapped copies of `private`, one per scheme.
    fn wrap(&self, private: &PrivateLayerBlockCipherOptions) -> Result<Vec<Recipient>, String> {
        let json = private.to_json();
        let mut out = Vec::new();
        if !self.jwe.is_empty() {
            let wrapped = jwe::encrypt(&json, &self.jwe).map_err(|e| e.to_string())?;
            out.push(Recipient {
                scheme: jwe::SCHEME.to_string(),
                wrapped,
            });
        }
        if let Some(kbs) = &self.kbs {
            let packet =
                AnnotationPacket::wrap(&kbs.kid.uri, &kbs.kek, &json).map_err(|e| e.to_string())?;
            out.push(Recipient {
                scheme: veil_keyprovider::aa_packet::SCHEME.to_string(),
                wrapped: packet.to_json(),
            });
        }
        if out.is_empty() {
            return Err("no recipient to wrap the layer key for".into());
        }
        Ok(out)
    }
}

/// One layer's fresh key material.
pub struct LayerKey {
    private: PrivateLayerBlockCipherOptions,
    key: Zeroizing<[u8; KEY_LEN]>,
    nonce: Zeroizing<[u8; NONCE_LEN]>,
}

impl LayerKey {
    /// A random key and nonce (OpenSSL's CSPRNG).
    pub fn generate() -> Result<Self, String> {
        let private = PrivateLayerBlockCipherOptions::generate("")
            .map_err(|e| format!("generating a layer key: {e}"))?;
        let stub = PublicLayerBlockCipherOptions::new([0; 32]);
        let params = layer_cipher_params(&stub, &private).map_err(|e| e.to_string())?;
        Ok(Self {
            private,
            key: params.key,
            nonce: params.nonce,
        })
    }

    /// A writer that encrypts what it is given into `inner`.
    pub fn writer<W: Write>(&self, inner: W) -> EncryptingWriter<W> {
        EncryptingWriter {
            inner,
            key: Zeroizing::new(*self.key),
            nonce: Zeroizing::new(*self.nonce),
            offset: 0,
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..])
                .expect("HMAC takes a key of any length"),
            buf: Vec::new(),
        }
    }

    /// The layer's ocicrypt annotations: the private options (with `plain_digest`, the
    /// plaintext blob's digest, and the sealed `toc_digest`) wrapped for `recipients`,
    /// and the public options with `hmac`.
    pub fn finish(
        mut self,
        plain_digest: &str,
        toc_digest: &str,
        hmac: [u8; 32],
        recipients: &Recipients,
    ) -> Result<EncryptedLayer, String> {
        self.private.digest = plain_digest.to_string();
        set_sealed_toc_digest(&mut self.private, toc_digest).map_err(|e| e.to_string())?;
        Ok(EncryptedLayer {
            pubopts: PublicLayerBlockCipherOptions::new(hmac),
            recipients: recipients.wrap(&self.private)?,
        })
    }
}

/// Encrypts with AES-256-CTR at the running offset and MACs the ciphertext.
pub struct EncryptingWriter<W: Write> {
    inner: W,
    key: Zeroizing<[u8; KEY_LEN]>,
    nonce: Zeroizing<[u8; NONCE_LEN]>,
    offset: u64,
    mac: Hmac<Sha256>,
    buf: Vec<u8>,
}

impl<W: Write> EncryptingWriter<W> {
    /// The inner writer and the HMAC-SHA256 of everything written.
    pub fn finish(mut self) -> io::Result<(W, [u8; 32])> {
        self.inner.flush()?;
        let tag = self.mac.finalize().into_bytes().into();
        Ok((self.inner, tag))
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.clear();
        self.buf.extend_from_slice(data);
        apply_keystream_at(&self.key, &self.nonce, self.offset, &mut self.buf);
        self.inner.write_all(&self.buf)?;
        self.mac.update(&self.buf);
        self.offset += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_keyprovider::cipher::hmac_sha256;

    #[test]
    fn encrypting_writer_matches_one_shot_ctr_and_hmac() {
        let key = LayerKey::generate().unwrap();
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = key.writer(Vec::new());
        for piece in plain.chunks(3333) {
            w.write_all(piece).unwrap();
        }
        let (cipher, tag) = w.finish().unwrap();
        let mut expected = plain.clone();
        apply_keystream_at(&key.key, &key.nonce, 0, &mut expected);
        assert_eq!(cipher, expected);
        assert_eq!(tag, hmac_sha256(&key.key, &cipher));
    }

    #[test]
    fn kek_files_raw_or_base64() {
        let tmp = tempfile::tempdir().unwrap();
        let raw = tmp.path().join("raw");
        std::fs::write(&raw, [9u8; 32]).unwrap();
        let b64 = tmp.path().join("b64");
        std::fs::write(
            &b64,
            format!("{}\n", veil_keyprovider::secret::b64_encode(&[9u8; 32])),
        )
        .unwrap();
        let short = tmp.path().join("short");
        std::fs::write(&short, [1u8; 16]).unwrap();
        let a = KbsRecipient::load("kbs:///default/key/k1", &raw).unwrap();
        let b = KbsRecipient::load("kbs:///default/key/k1", &b64).unwrap();
        assert_eq!(a.kek.expose(), b.kek.expose());
        let err = KbsRecipient::load("kbs:///default/key/k1", &short)
            .err()
            .unwrap();
        assert!(err.contains("16 bytes"), "{err}");
        assert!(KbsRecipient::load("/default/key/k1", &raw).is_err());
    }
}
