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
//! ([`OpenedLayer::must_stream`]). For the streamed path, [`StreamCipher::reader`]
//! decrypts the whole blob front to back while computing the ocicrypt HMAC, which
//! [`VerifyingReader::finish`] checks at the end. Key material never leaves memory and
//! is never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use veil_fusefs::ctr::{apply_keystream_at, CtrDecryptingSource, HmacVerifier};
use veil_fusefs::source::BlobSource;
use veil_keyprovider::aa_packet;
use veil_keyprovider::kbs::attester::{self, AttesterKind};
use veil_keyprovider::kbs::{KbsClient, KbsClientConfig, KbsKekSource};
use veil_keyprovider::kek::{CdhKekSource, FileKekSource, KekChain, KekSource};
use veil_keyprovider::keys::KeyRing;
use veil_keyprovider::ocicrypt::{
    is_encrypted_media_type, layer_cipher_params, plain_media_type, sealed_toc_digest,
    EncryptedLayer,
};
use veil_keyprovider::unwrap::{unwrap_private_options, unwrap_private_options_with_keks};
use zeroize::Zeroizing;

use crate::config::{DecryptionConfig, KekSourceKind};
use crate::registry::BlobDescriptor;

/// Timeout of each KBS / CDH request.
const KEK_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The layer cipher for one front-to-back pass over the whole ciphertext:
/// [`StreamCipher::reader`] decrypts while it feeds the ocicrypt HMAC.
pub struct StreamCipher {
    key: Zeroizing<[u8; 32]>,
    nonce: Zeroizing<[u8; 16]>,
    expected: [u8; 32],
}

impl StreamCipher {
    /// A reader of the plaintext (still compressed) blob, decrypting `ciphertext` from
    /// its start a piece at a time through `handle`'s runtime (call its `read` from a
    /// blocking thread). Nothing it returns is authenticated until
    /// [`VerifyingReader::finish`] says so.
    pub fn reader(
        &self,
        ciphertext: Arc<dyn BlobSource>,
        handle: tokio::runtime::Handle,
    ) -> VerifyingReader {
        VerifyingReader {
            key: self.key.clone(),
            nonce: self.nonce.clone(),
            expected: self.expected,
            size: ciphertext.size(),
            ciphertext,
            handle,
            offset: 0,
            buf: Zeroizing::new(Vec::new()),
            buf_pos: 0,
            mac: None,
        }
    }
}

/// Ciphertext bytes read at a time by a [`VerifyingReader`].
const STREAM_PIECE: u64 = 4 << 20;

/// Decrypts an ocicrypt blob front to back and computes its HMAC on the way (see
/// [`StreamCipher::reader`]). Its buffer of plaintext is zeroized when replaced or
/// dropped.
pub struct VerifyingReader {
    key: Zeroizing<[u8; 32]>,
    nonce: Zeroizing<[u8; 16]>,
    expected: [u8; 32],
    ciphertext: Arc<dyn BlobSource>,
    handle: tokio::runtime::Handle,
    size: u64,
    offset: u64,
    buf: Zeroizing<Vec<u8>>,
    buf_pos: usize,
    mac: Option<HmacVerifier>,
}

impl VerifyingReader {
    /// Ciphertext bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Reads the next piece of ciphertext into the buffer, feeding the HMAC, and
    /// decrypts it; `false` at the end of the blob.
    fn next_piece(&mut self) -> std::io::Result<bool> {
        if self.offset >= self.size {
            return Ok(false);
        }
        if self.mac.is_none() {
            self.mac = Some(
                HmacVerifier::new(&self.key, &self.expected)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            );
        }
        let end = (self.offset + STREAM_PIECE).min(self.size);
        let mut bytes = self
            .handle
            .block_on(self.ciphertext.read_range(self.offset..end))?;
        if bytes.len() as u64 != end - self.offset {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the registry returned {} bytes for ciphertext range {}..{end}",
                    bytes.len(),
                    self.offset
                ),
            ));
        }
        if let Some(mac) = &mut self.mac {
            mac.update(&bytes);
        }
        apply_keystream_at(&self.key, &self.nonce, self.offset, &mut bytes);
        self.offset = end;
        self.buf = Zeroizing::new(bytes);
        self.buf_pos = 0;
        Ok(true)
    }

    /// Reads whatever of the blob has not been read yet, then checks the HMAC over the
    /// whole ciphertext. `Err` says why the blob is not authentic (or could not be read).
    pub fn finish(mut self) -> Result<(), String> {
        loop {
            match self.next_piece() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(format!("reading the ciphertext at {}: {e}", self.offset)),
            }
        }
        let mac = match self.mac.take() {
            Some(mac) => mac,
            None => HmacVerifier::new(&self.key, &self.expected).map_err(|e| e.to_string())?,
        };
        mac.finish().map_err(|e| e.to_string())
    }
}

impl std::io::Read for VerifyingReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.buf_pos == self.buf.len() && !self.next_piece()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
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

/// The KEK chain of `config.kek_sources` (built on the KEK runtime).
pub(crate) fn build_chain(config: &DecryptionConfig) -> Result<KekChain, String> {
    let mut sources: Vec<Arc<dyn KekSource>> = Vec::new();
    for kind in &config.kek_sources {
        match kind {
            KekSourceKind::File => sources.push(Arc::new(FileKekSource::new(&config.kek_dir))),
            KekSourceKind::Cdh => sources.push(Arc::new(
                CdhKekSource::new(&config.cdh_url, KEK_REQUEST_TIMEOUT)
                    .map_err(|e| format!("kek source cdh: {e}"))?,
            )),
            KekSourceKind::Kbs => {
                let url = config.kbs_url.as_deref().ok_or(
                    "kek source kbs needs [decryption] kbs_url (the KBS, https://host:port)",
                )?;
                let kind: AttesterKind = config
                    .attester
                    .parse()
                    .map_err(|e| format!("[decryption] attester: {e}"))?;
                let attester = attester::detect(kind, Path::new(attester::DEFAULT_TSM_REPORT_PATH))
                    .map_err(|e| format!("[decryption] attester {:?}: {e}", config.attester))?;
                let mut client_config = KbsClientConfig::new(url);
                client_config.allow_plain_http = config.kbs_allow_plain_http;
                client_config.timeout = KEK_REQUEST_TIMEOUT;
                if let Some(ca) = &config.kbs_ca {
                    client_config.ca_pem = Some(
                        std::fs::read(ca)
                            .map_err(|e| format!("[decryption] kbs_ca {}: {e}", ca.display()))?,
                    );
                }
                let client = KbsClient::new(&client_config, attester)
                    .map_err(|e| format!("kek source kbs: {e}"))?;
                sources.push(Arc::new(KbsKekSource::new(Arc::new(client))));
            }
        }
    }
    Ok(KekChain::new(sources))
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

    /// Everything `[decryption]` configures: the keys directory, and the KEK sources of
    /// attestation-agent recipients (`kek_sources`). A KEK configuration that cannot be
    /// used (no `kbs_url`, no TEE for `attester = "auto"`, an unreadable CA) is logged
    /// now and reported by every layer that needs a KEK.
    pub fn from_config(config: &DecryptionConfig) -> Self {
        let mut decryption = Self::load(&config.keys_dir, config.require_sealed_toc);
        if !config.kek_sources.is_empty() {
            let owned = config.clone();
            let keks = KekRuntime::start(move || build_chain(&owned));
            match &keks {
                Ok(k) => {
                    tracing::info!(sources = ?k.chain.source_names(), "KEK sources configured")
                }
                Err(e) => tracing::error!(error = %e, "cannot use the configured KEK sources"),
            }
            decryption.keks = Some(keks);
        }
        decryption
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
                    .map_err(|_| format!("encrypted layer {layer}: the KEK runtime stopped"))?
                    .map_err(|e| format!("{e} (keys directory {})", self.keys_dir.display()))?
            }
            (Some(Err(config_error)), true) => {
                return Err(format!(
                    "encrypted layer {layer} has {} recipients but the KEK sources cannot be used: {config_error}",
                    aa_packet::SCHEME
                ))
            }
            _ => unwrap_private_options(layer, &enc, keys)
                .map_err(|e| format!("{e} (keys directory {})", self.keys_dir.display()))?,
        };
        let params = layer_cipher_params(&enc.pubopts, &private)
            .map_err(|e| format!("encrypted layer {layer}: {e}"))?;
        let sealed = sealed_toc_digest(&private)
            .map_err(|e| format!("encrypted layer {layer}: bad sealed TOC digest: {e}"))?;
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
            hmac: HmacCheck {
                key: Zeroizing::new(*params.key),
                expected: params.hmac,
            },
            cipher: StreamCipher {
                key: Zeroizing::new(*params.key),
                nonce: Zeroizing::new(*params.nonce),
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
    use veil_keyprovider::ocicrypt::EncryptedLayer;

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

    #[tokio::test(flavor = "multi_thread")]
    async fn the_streaming_reader_decrypts_and_authenticates_the_whole_blob() {
        use std::io::Read;
        let key = [3u8; 32];
        let nonce = [0xffu8; 16]; // the counter wraps inside the blob
        let plain: Vec<u8> = (0..9_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut blob = plain.clone();
        apply_keystream_at(&key, &nonce, 0, &mut blob);
        let cipher = StreamCipher {
            key: Zeroizing::new(key),
            nonce: Zeroizing::new(nonce),
            expected: hmac_sha256(&key, &blob),
        };
        let read_all = |blob: Vec<u8>, stop_at: usize| {
            let mut reader = cipher.reader(
                Arc::new(MemoryBlob(blob)),
                tokio::runtime::Handle::current(),
            );
            tokio::task::spawn_blocking(move || {
                let mut out = vec![0u8; stop_at];
                reader.read_exact(&mut out).unwrap();
                (out, reader.finish())
            })
        };
        let (out, verdict) = read_all(blob.clone(), plain.len()).await.unwrap();
        assert_eq!(out, plain);
        verdict.unwrap();
        // Stopping early still checks everything: finish reads the rest.
        let (out, verdict) = read_all(blob.clone(), 1000).await.unwrap();
        assert_eq!(out, plain[..1000]);
        verdict.unwrap();
        blob[8_765_432] ^= 0x10;
        let (_, verdict) = read_all(blob, 1000).await.unwrap();
        assert!(verdict.unwrap_err().contains("does not match"));
    }

    #[test]
    fn attestation_agent_layers_use_the_configured_kek_sources() {
        use veil_keyprovider::aa_packet::AnnotationPacket;
        use veil_keyprovider::ocicrypt::{
            PrivateLayerBlockCipherOptions, PublicLayerBlockCipherOptions, Recipient,
        };
        use veil_keyprovider::secret::SecretBytes;

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
            digest: crate::registry::Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
            size: 4,
            annotations: layer.to_annotations(),
            urls: Vec::new(),
        };
        let blob: Arc<dyn BlobSource> = Arc::new(MemoryBlob(vec![0; 4]));
        let dir = tempfile::tempdir().unwrap();
        let mut config = DecryptionConfig {
            keys_dir: dir.path().join("keys"),
            kek_dir: dir.path().join("keks"),
            kek_sources: vec![KekSourceKind::File],
            ..DecryptionConfig::default()
        };

        // Without KEK sources the recipient cannot be used, and the error says so.
        let plain = Decryption::load(&config.keys_dir, false);
        let err = plain.open("L", &desc, blob.clone()).err().unwrap();
        assert!(err.contains("provider.attestation-agent"), "{err}");

        let decryption = Decryption::from_config(&config);
        let err = decryption.open("L", &desc, blob.clone()).err().unwrap();
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

        // A kbs source without a URL is a configuration error, reported per layer.
        config.kek_sources = vec![KekSourceKind::Kbs];
        let broken = Decryption::from_config(&config);
        let err = broken.open("L", &desc, blob).err().unwrap();
        assert!(err.contains("needs [decryption] kbs_url"), "{err}");
    }
}
