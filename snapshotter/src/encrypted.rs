//! Encrypted (ocicrypt) layers: from a layer descriptor's `org.opencontainers.image.enc.*`
//! annotations to a source of decrypted blob bytes and the TOC digest that authenticates
//! the layer.
//!
//! The layer key is unwrapped with the private keys of the keys directory (JWE
//! recipients); the decrypting source seeks the AES-256-CTR keystream, so single chunks
//! are fetched and decrypted alone. It sits above the disk cache, which therefore only
//! ever holds ciphertext. The TOC digest sealed in the wrapped private options
//! (`veil.toc-digest`) takes precedence over the manifest annotation; with
//! `require_sealed_toc` a layer without one is refused. Key material never leaves memory
//! and is never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use veil_fusefs::ctr::{CtrDecryptingSource, HmacVerifier};
use veil_fusefs::source::BlobSource;
use veil_keyprovider::keys::KeyRing;
use veil_keyprovider::ocicrypt::{
    is_encrypted_media_type, layer_cipher_params, plain_media_type, sealed_toc_digest,
    EncryptedLayer,
};
use veil_keyprovider::unwrap::unwrap_private_options;
use zeroize::Zeroizing;

use crate::registry::BlobDescriptor;

/// Where decryption keys come from and what an encrypted layer must carry.
pub struct Decryption {
    keys: Result<Arc<KeyRing>, String>,
    keys_dir: PathBuf,
    require_sealed_toc: bool,
}

/// An encrypted layer opened for reading.
pub struct OpenedLayer {
    /// The descriptor as if unencrypted: media type without `+encrypted`, the other
    /// annotations kept (TOC annotations among them).
    pub plain: BlobDescriptor,
    /// Decrypted blob bytes, at the same offsets as the ciphertext.
    pub source: Arc<dyn BlobSource>,
    /// The TOC digest sealed in the private options, when the layer has one.
    pub sealed_toc_digest: Option<String>,
    /// What checks the whole ciphertext once it has all been fetched.
    pub hmac: HmacCheck,
}

/// The ocicrypt HMAC-SHA256 over a layer's whole ciphertext: the only integrity check
/// ocicrypt itself has, usable once the whole blob is at hand.
pub struct HmacCheck {
    key: Zeroizing<[u8; 32]>,
    expected: [u8; 32],
}

impl HmacCheck {
    /// Reads `ciphertext` from start to end and checks its HMAC.
    pub async fn verify(&self, ciphertext: &dyn BlobSource) -> Result<(), String> {
        const PIECE: u64 = 8 << 20;
        let mut verifier =
            HmacVerifier::new(&self.key, &self.expected).map_err(|e| e.to_string())?;
        let size = ciphertext.size();
        let mut offset = 0;
        while offset < size {
            let end = (offset + PIECE).min(size);
            let bytes = ciphertext
                .read_range(offset..end)
                .await
                .map_err(|e| format!("reading the ciphertext at {offset}: {e}"))?;
            verifier.update(&bytes);
            offset = end;
        }
        verifier.finish().map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for Decryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryption")
            .field("keys_dir", &self.keys_dir)
            .field(
                "keys",
                &self
                    .keys
                    .as_ref()
                    .map(|k| k.keys().len())
                    .map_err(|_| "unreadable"),
            )
            .field("require_sealed_toc", &self.require_sealed_toc)
            .finish()
    }
}

impl Decryption {
    /// Loads the private keys of `keys_dir`. A directory that does not exist gives an
    /// empty key ring; one that cannot be read is remembered and reported when an
    /// encrypted layer needs it.
    pub fn load(keys_dir: &Path, require_sealed_toc: bool) -> Self {
        let keys = if keys_dir.exists() {
            KeyRing::load_dir(keys_dir)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        } else {
            Ok(Arc::new(KeyRing::from_keys(Vec::new())))
        };
        match &keys {
            Ok(ring) => tracing::info!(
                dir = %keys_dir.display(),
                keys = ring.keys().len(),
                "decryption keys loaded"
            ),
            Err(e) => {
                tracing::error!(dir = %keys_dir.display(), error = %e, "cannot load decryption keys")
            }
        }
        Self {
            keys,
            keys_dir: keys_dir.to_path_buf(),
            require_sealed_toc,
        }
    }

    /// Whether `desc` is an ocicrypt-encrypted layer.
    pub fn is_encrypted(desc: &BlobDescriptor) -> bool {
        is_encrypted_media_type(&desc.media_type)
    }

    /// Opens the encrypted layer `desc` (named `layer` in errors) whose ciphertext is
    /// `ciphertext`. Errors name the layer, the recipients and the keys tried, never key
    /// material.
    pub fn open(
        &self,
        layer: &str,
        desc: &BlobDescriptor,
        ciphertext: Arc<dyn BlobSource>,
    ) -> Result<OpenedLayer, String> {
        let keys = self.keys.as_ref().map_err(|e| {
            format!(
                "encrypted layer {layer}: the keys directory {} could not be loaded: {e}",
                self.keys_dir.display()
            )
        })?;
        let enc = EncryptedLayer::from_annotations(&desc.annotations)
            .map_err(|e| format!("encrypted layer {layer}: bad encryption annotations: {e}"))?;
        let private = unwrap_private_options(layer, &enc, keys).map_err(|e| e.to_string())?;
        let params = layer_cipher_params(&enc.pubopts, &private)
            .map_err(|e| format!("encrypted layer {layer}: {e}"))?;
        let sealed = sealed_toc_digest(&private)
            .map_err(|e| format!("encrypted layer {layer}: bad sealed TOC digest: {e}"))?;
        if sealed.is_none() && self.require_sealed_toc {
            return Err(format!(
                "encrypted layer {layer} has no sealed TOC digest and require_sealed_toc is set \
                 (streamed verification of whole encrypted layers is not implemented yet)"
            ));
        }
        let mut plain = desc.clone();
        plain.media_type = plain_media_type(&desc.media_type).to_string();
        Ok(OpenedLayer {
            plain,
            source: Arc::new(CtrDecryptingSource::new(
                ciphertext,
                &params.key,
                &params.nonce,
            )),
            sealed_toc_digest: sealed,
            hmac: HmacCheck {
                key: Zeroizing::new(*params.key),
                expected: params.hmac,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_fusefs::ctr::hmac_sha256;
    use veil_fusefs::source::MemoryBlob;

    #[tokio::test]
    async fn whole_layer_hmac_accepts_the_original_and_refuses_a_flipped_byte() {
        let key = [7u8; 32];
        let mut blob: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        let check = HmacCheck {
            key: Zeroizing::new(key),
            expected: hmac_sha256(&key, &blob),
        };
        check.verify(&MemoryBlob(blob.clone())).await.unwrap();
        blob[12_345_678] ^= 1;
        let err = check.verify(&MemoryBlob(blob)).await.unwrap_err();
        assert!(err.contains("does not match"), "{err}");
    }
}
