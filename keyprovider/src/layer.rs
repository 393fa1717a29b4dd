//! Encrypted (ocicrypt) layers: from a layer descriptor's `org.opencontainers.image.enc.*`
//! annotations to a source of decrypted blob bytes and the TOC digest that authenticates
//! the layer.
//!
//! The layer key is unwrapped with the private keys of the keys directory (JWE
//! recipients) and, when `[decryption] kek_sources` is set, with the key-encryption keys
//! of CoCo attestation-agent recipients, released by a KBS after attestation (or by the
//! Confidential Data Hub, or read from files). KEK fetches run on a small runtime of
//! their own; `open` waits for them (once per kid: KEKs are cached for the daemon's
//! life). The decrypting source seeks the AES-256-CTR keystream, so single chunks
//! are fetched and decrypted alone. It sits above the disk cache, which therefore only
//! ever holds ciphertext. The TOC digest sealed in the wrapped private options
//! (`veil.toc-digest`) takes precedence over the manifest annotation; with
//! `require_sealed_toc` a layer without one is not served lazily but streamed
//! ([`OpenedLayer::must_stream`]). For the streamed path,
//! [`StreamCipher::reader`](crate::stream_cipher::StreamCipher::reader) decrypts the whole
//! blob front to back while computing the ocicrypt HMAC. Key material never leaves memory
//! and is never logged.
//!
//! This takes a KEK chain, not a configuration: the daemon's wiring builds the chain
//! ([`Decryption::with_kek_chain`]).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use veil_blob::BlobSource;
use veil_registry::BlobDescriptor;

use crate::aa_packet;
use crate::cipher::CtrDecryptingSource;
use crate::kek::KekChain;
use crate::keys::KeyRing;
use crate::ocicrypt::{
    is_encrypted_media_type, layer_cipher_params, plain_media_type, sealed_toc_digest,
    EncryptedLayer,
};
use crate::stream_cipher::{HmacCheck, StreamCipher};
use crate::unwrap::{unwrap_private_options, unwrap_private_options_with_keks};

/// Why an encrypted layer could not be opened. Messages name the layer, the recipients
/// and the keys tried, never key material.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The keys directory could not be loaded.
    #[error("encrypted layer {layer}: the keys directory {} could not be loaded: {reason}", dir.display())]
    KeysDir {
        /// The layer.
        layer: String,
        /// The keys directory.
        dir: PathBuf,
        /// Why it could not be loaded.
        reason: String,
    },
    /// The `org.opencontainers.image.enc.*` annotations are malformed.
    #[error("encrypted layer {layer}: bad encryption annotations: {reason}")]
    Annotations {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// The layer has attestation-agent recipients but the KEK sources cannot be used.
    #[error(
        "encrypted layer {layer} has {} recipients but the KEK sources cannot be used: {reason}",
        aa_packet::SCHEME
    )]
    KekSources {
        /// The layer.
        layer: String,
        /// Why the sources cannot be used.
        reason: String,
    },
    /// The KEK runtime thread is gone.
    #[error("encrypted layer {layer}: the KEK runtime stopped")]
    KekRuntime {
        /// The layer.
        layer: String,
    },
    /// No recipient could be unwrapped with the keys at hand.
    #[error("{reason} (keys directory {})", keys_dir.display())]
    Unwrap {
        /// What was tried (names the layer and its recipients).
        reason: String,
        /// The keys directory.
        keys_dir: PathBuf,
    },
    /// The unwrapped options do not give a usable layer cipher.
    #[error("encrypted layer {layer}: {reason}")]
    Cipher {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// The sealed TOC digest in the private options is malformed.
    #[error("encrypted layer {layer}: bad sealed TOC digest: {reason}")]
    SealedDigest {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where decryption keys come from and what an encrypted layer must carry.
pub struct Decryption {
    keys: Result<Arc<KeyRing>, String>,
    keys_dir: PathBuf,
    require_sealed_toc: bool,
    /// KEK sources of attestation-agent recipients (none: such recipients are skipped);
    /// an error if the configuration could not be used.
    keks: Option<Result<KekRuntime, String>>,
}

/// The KEK chain and the runtime its fetches run on: a thread of its own, so `open`
/// (called from async code without awaiting) can wait for a fetch without blocking the
/// runtime that drives it. The thread ends when this is dropped.
struct KekRuntime {
    chain: Arc<KekChain>,
    handle: tokio::runtime::Handle,
    _stop: std::sync::mpsc::SyncSender<()>,
}

impl KekRuntime {
    /// Starts the runtime thread; `build` makes the chain on it (HTTP clients bind to it).
    fn start(
        build: impl FnOnce() -> Result<KekChain, String> + Send + 'static,
    ) -> Result<Self, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("veil-keks".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("KEK runtime: {e}")));
                        return;
                    }
                };
                let chain = {
                    let _entered = runtime.enter();
                    build()
                };
                let _ = ready_tx.send(chain.map(|c| (Arc::new(c), runtime.handle().clone())));
                // Drive spawned fetches until the owner goes away.
                runtime.block_on(async move {
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                });
            })
            .map_err(|e| format!("KEK runtime thread: {e}"))?;
        let (chain, handle) = ready_rx
            .recv()
            .map_err(|_| "KEK runtime thread ended".to_string())??;
        Ok(Self {
            chain,
            handle,
            _stop: stop_tx,
        })
    }
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
    /// Why the layer must be streamed and verified whole even if it could be read
    /// lazily (no sealed TOC digest under `require_sealed_toc`); `None`: it may be lazy.
    pub must_stream: Option<String>,
    /// What checks the whole ciphertext once it has all been fetched.
    pub hmac: HmacCheck,
    /// Decrypts and authenticates the whole blob in one pass (the streamed path).
    pub cipher: StreamCipher,
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
            .field(
                "kek_sources",
                &self
                    .keks
                    .as_ref()
                    .map(|k| k.as_ref().map(|r| r.chain.source_names())),
            )
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
            keks: None,
        }
    }

    /// Adds the KEK sources of attestation-agent recipients: `build` makes the chain on
    /// the KEK runtime's own thread (HTTP clients bind to the runtime they are made on).
    /// A chain that cannot be built (no KBS URL, no TEE for the attester, an unreadable
    /// CA) is logged now and reported by every layer that needs a KEK.
    pub fn with_kek_chain<E: Display>(
        mut self,
        build: impl FnOnce() -> Result<KekChain, E> + Send + 'static,
    ) -> Self {
        let keks = KekRuntime::start(move || build().map_err(|e| e.to_string()));
        match &keks {
            Ok(k) => {
                tracing::info!(sources = ?k.chain.source_names(), "KEK sources configured")
            }
            Err(e) => tracing::error!(error = %e, "cannot use the configured KEK sources"),
        }
        self.keks = Some(keks);
        self
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
    ) -> Result<OpenedLayer, OpenError> {
        let keys = self.keys.as_ref().map_err(|e| OpenError::KeysDir {
            layer: layer.to_string(),
            dir: self.keys_dir.clone(),
            reason: e.clone(),
        })?;
        let enc = EncryptedLayer::from_annotations(&desc.annotations).map_err(|e| {
            OpenError::Annotations {
                layer: layer.to_string(),
                reason: e.to_string(),
            }
        })?;
        let unwrap_error = |e: &dyn Display| OpenError::Unwrap {
            reason: e.to_string(),
            keys_dir: self.keys_dir.clone(),
        };
        let has_aa = enc.recipients.iter().any(|r| r.scheme == aa_packet::SCHEME);
        let private = match (&self.keks, has_aa) {
            (Some(Ok(runtime)), true) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let (chain, keys, enc2, name) = (
                    runtime.chain.clone(),
                    keys.clone(),
                    enc.clone(),
                    layer.to_string(),
                );
                runtime.handle.spawn(async move {
                    let result =
                        unwrap_private_options_with_keks(&name, &enc2, &keys, &chain).await;
                    let _ = tx.send(result);
                });
                rx.recv()
                    .map_err(|_| OpenError::KekRuntime {
                        layer: layer.to_string(),
                    })?
                    .map_err(|e| unwrap_error(&e))?
            }
            (Some(Err(config_error)), true) => {
                return Err(OpenError::KekSources {
                    layer: layer.to_string(),
                    reason: config_error.clone(),
                })
            }
            _ => unwrap_private_options(layer, &enc, keys).map_err(|e| unwrap_error(&e))?,
        };
        let params =
            layer_cipher_params(&enc.pubopts, &private).map_err(|e| OpenError::Cipher {
                layer: layer.to_string(),
                reason: e.to_string(),
            })?;
        let sealed = sealed_toc_digest(&private).map_err(|e| OpenError::SealedDigest {
            layer: layer.to_string(),
            reason: e.to_string(),
        })?;
        let mut plain = desc.clone();
        plain.media_type = plain_media_type(&desc.media_type).to_string();
        let must_stream = (sealed.is_none() && self.require_sealed_toc)
            .then(|| "it has no sealed TOC digest and require_sealed_toc is set".to_string());
        Ok(OpenedLayer {
            plain,
            source: Arc::new(CtrDecryptingSource::new(
                ciphertext,
                &params.key,
                &params.nonce,
            )),
            sealed_toc_digest: sealed,
            must_stream,
            hmac: HmacCheck::new(&params.key, params.hmac),
            cipher: StreamCipher::new(&params.key, &params.nonce, params.hmac),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_blob::MemoryBlob;

    #[test]
    fn attestation_agent_layers_use_the_configured_kek_sources() {
        use crate::aa_packet::AnnotationPacket;
        use crate::kek::FileKekSource;
        use crate::ocicrypt::{
            PrivateLayerBlockCipherOptions, PublicLayerBlockCipherOptions, Recipient,
        };
        use crate::secret::SecretBytes;

        let kid = "kbs:///default/image_key/test";
        let kek = SecretBytes::new(vec![8u8; 32]);
        let private = PrivateLayerBlockCipherOptions::generate("sha256:00").unwrap();
        let layer = EncryptedLayer {
            pubopts: PublicLayerBlockCipherOptions::new([0; 32]),
            recipients: vec![Recipient {
                scheme: aa_packet::SCHEME.into(),
                wrapped: AnnotationPacket::wrap(kid, &kek, &private.to_json())
                    .unwrap()
                    .to_json(),
            }],
        };
        let desc = BlobDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into(),
            digest: veil_registry::Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
            size: 4,
            annotations: layer.to_annotations(),
            urls: Vec::new(),
        };
        let blob: Arc<dyn BlobSource> = Arc::new(MemoryBlob(vec![0; 4]));
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let kek_dir = dir.path().join("keks");

        // Without KEK sources the recipient cannot be used, and the error says so.
        let plain = Decryption::load(&keys_dir, false);
        let err = plain
            .open("L", &desc, blob.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("provider.attestation-agent"), "{err}");

        let decryption = Decryption::load(&keys_dir, false).with_kek_chain(move || {
            Ok::<_, String>(KekChain::new(vec![Arc::new(FileKekSource::new(&kek_dir))]))
        });
        let err = decryption
            .open("L", &desc, blob.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("no KEK for kid {kid}")) && err.contains("does not exist"),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("keks/default/image_key")).unwrap();
        std::fs::write(dir.path().join("keks/default/image_key/test"), kek.expose()).unwrap();
        let opened = decryption.open("L", &desc, blob.clone()).unwrap();
        assert_eq!(
            opened.plain.media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );

        // A chain that cannot be built (here: a kbs source without a URL, as the daemon's
        // wiring reports it) is a configuration error, reported per layer.
        let broken = Decryption::load(&keys_dir, false).with_kek_chain(|| {
            Err::<KekChain, _>(
                "kek source kbs needs [decryption] kbs_url (the KBS, https://host:port)",
            )
        });
        let err = broken.open("L", &desc, blob).err().unwrap().to_string();
        assert!(err.contains("needs [decryption] kbs_url"), "{err}");
    }
}
