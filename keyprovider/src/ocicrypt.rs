//! The ocicrypt layer model: media types, the descriptor annotations and the layer block
//! cipher options (PROTOCOLS.md §1, and §0 for Veil's sealed TOC digest).
//!
//! An ocicrypt layer's descriptor carries:
//! - `org.opencontainers.image.enc.keys.<scheme>`: comma-separated base64 entries, each the
//!   [`PrivateLayerBlockCipherOptions`] JSON wrapped for one recipient (JWE, PKCS7, PGP,
//!   `provider.<name>`, ...);
//! - `org.opencontainers.image.enc.pubopts`: base64 of the [`PublicLayerBlockCipherOptions`]
//!   JSON (the cipher name and the HMAC over the whole ciphertext).
//!
//! JSON is read order-independently, `null` fields read as empty (as Go writes nil), and
//! unknown `cipheroptions` entries are kept. Private options hold key material in
//! [`SecretBytes`]; their `Debug` output shows no byte of it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::secret::{b64_decode, b64_encode, SecretBytes};

/// Suffix ocicrypt appends to a layer media type when it encrypts the layer.
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";
/// Prefix of the annotations that carry wrapped keys, one per scheme.
pub const ANNOTATION_KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// Annotation that carries the public options.
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// Prefix of every ocicrypt annotation (all are dropped when a layer is decrypted).
pub const ANNOTATION_PREFIX: &str = "org.opencontainers.image.enc.";
/// The only cipher ocicrypt defines.
pub const CIPHER_AES_256_CTR_HMAC_SHA256: &str = "AES_256_CTR_HMAC_SHA256";
/// `cipheroptions` key of the 16-byte CTR nonce (initial counter block).
pub const OPT_NONCE: &str = "nonce";
/// Veil's `cipheroptions` key of the sealed TOC digest (PROTOCOLS.md §0).
pub const OPT_VEIL_TOC_DIGEST: &str = "veil.toc-digest";

/// Length of the AES-256 key (`symkey`).
pub const KEY_LEN: usize = 32;
/// Length of the CTR nonce.
pub const NONCE_LEN: usize = 16;
/// Length of the HMAC-SHA256 tag.
pub const HMAC_LEN: usize = 32;

/// Something wrong with a layer's ocicrypt annotations or options. Never contains key bytes.
#[derive(Debug, Error)]
pub enum OptionsError {
    /// An annotation value is not valid base64.
    #[error("annotation {annotation}: entry {index} is not valid base64: {reason}")]
    Base64 {
        /// The annotation's name.
        annotation: String,
        /// Zero-based index of the comma-separated entry.
        index: usize,
        /// The decoder's message.
        reason: String,
    },
    /// The public options annotation is missing.
    #[error("the layer has no {ANNOTATION_PUBOPTS} annotation")]
    MissingPubOpts,
    /// No `org.opencontainers.image.enc.keys.*` entry at all.
    #[error("the layer has no {ANNOTATION_KEYS_PREFIX}* annotation (no recipient to unwrap)")]
    NoRecipients,
    /// Options JSON that does not parse.
    #[error("invalid {what} JSON: {reason}")]
    Json {
        /// Which options ("public options", "private options").
        what: &'static str,
        /// serde_json's message (positions and kinds, no values).
        reason: String,
    },
    /// A cipher other than AES_256_CTR_HMAC_SHA256.
    #[error("unsupported layer cipher {0:?} (only {CIPHER_AES_256_CTR_HMAC_SHA256})")]
    UnsupportedCipher(String),
    /// A field of the wrong length (lengths only are reported).
    #[error("{field} is {actual} bytes, expected {expected}")]
    BadLength {
        /// The field.
        field: &'static str,
        /// Its length.
        actual: usize,
        /// The length the cipher needs.
        expected: usize,
    },
    /// The public and private options both set a nonce, and they differ.
    #[error("the public and private options carry different nonces")]
    ConflictingNonce,
    /// The sealed TOC digest is not `sha256:<64 lowercase hex>`.
    #[error("{OPT_VEIL_TOC_DIGEST} is not of the form sha256:<64 hex digits>")]
    BadSealedDigest,
}

/// True when `media_type` is an ocicrypt-encrypted one (ends in `+encrypted`).
pub fn is_encrypted_media_type(media_type: &str) -> bool {
    media_type.ends_with(ENCRYPTED_SUFFIX)
}

/// The media type of the layer once decrypted: `media_type` without `+encrypted`.
/// A media type that is not encrypted is returned unchanged.
pub fn plain_media_type(media_type: &str) -> &str {
    media_type
        .strip_suffix(ENCRYPTED_SUFFIX)
        .unwrap_or(media_type)
}

/// The media type an encrypted copy of a layer of `media_type` gets. Docker layer types are
/// mapped to the OCI ones first, as imgcrypt and containers/image do.
pub fn encrypted_media_type(media_type: &str) -> String {
    let oci = match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.foreign.diff.tar" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar"
        }
        other => other,
    };
    if is_encrypted_media_type(oci) {
        oci.to_string()
    } else {
        format!("{oci}{ENCRYPTED_SUFFIX}")
    }
}

/// `PublicLayerBlockCipherOptions`: readable by anyone, carried in `enc.pubopts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicLayerBlockCipherOptions {
    /// The cipher (`AES_256_CTR_HMAC_SHA256`).
    #[serde(default)]
    pub cipher: String,
    /// HMAC-SHA256 of the whole ciphertext, keyed with the symmetric key.
    #[serde(default, with = "crate::secret::b64")]
    pub hmac: Vec<u8>,
    /// Further options (normally empty); unknown entries are kept.
    #[serde(default, rename = "cipheroptions", with = "crate::secret::b64_map")]
    pub cipher_options: BTreeMap<String, Vec<u8>>,
}

impl PublicLayerBlockCipherOptions {
    /// Public options for an AES-256-CTR layer whose ciphertext HMAC is `hmac`.
    pub fn new(hmac: [u8; HMAC_LEN]) -> Self {
        Self {
            cipher: CIPHER_AES_256_CTR_HMAC_SHA256.to_string(),
            hmac: hmac.to_vec(),
            cipher_options: BTreeMap::new(),
        }
    }

    /// Parses the options JSON (fields in any order).
    pub fn from_json(json: &[u8]) -> Result<Self, OptionsError> {
        serde_json::from_slice(json).map_err(|e| OptionsError::Json {
            what: "public options",
            reason: e.to_string(),
        })
    }

    /// The JSON ocicrypt writes: `{"cipher":..,"hmac":..,"cipheroptions":{..}}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("public options always serialize")
    }
}

/// `PrivateLayerBlockCipherOptions`: the secret every recipient entry wraps.
///
/// Holds the symmetric key and the nonce; zeroized on drop; `Debug` prints lengths and
/// option names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateLayerBlockCipherOptions {
    /// The 32-byte AES-256 key, also the HMAC key.
    #[serde(default)]
    pub symkey: SecretBytes,
    /// Digest of the plaintext blob as the encrypting tool knew it (advisory, PROTOCOLS §1.4).
    #[serde(default)]
    pub digest: String,
    /// Cipher options: `nonce`, Veil's `veil.toc-digest`, and any unknown entries (kept).
    #[serde(default, rename = "cipheroptions", with = "crate::secret::secret_map")]
    pub cipher_options: BTreeMap<String, SecretBytes>,
}

impl fmt::Debug for PrivateLayerBlockCipherOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateLayerBlockCipherOptions")
            .field("symkey", &self.symkey)
            .field("digest", &"<redacted>")
            .field("cipheroptions", &self.cipher_options)
            .finish()
    }
}

impl PrivateLayerBlockCipherOptions {
    /// Fresh options for encrypting a layer: a random key and nonce from OpenSSL's CSPRNG.
    /// `digest` is the plaintext blob's digest (`sha256:<hex>`).
    pub fn generate(digest: &str) -> Result<Self, openssl::error::ErrorStack> {
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        openssl::rand::rand_bytes(&mut key)?;
        let mut nonce = vec![0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce)?;
        let mut cipher_options = BTreeMap::new();
        cipher_options.insert(OPT_NONCE.to_string(), SecretBytes::new(nonce));
        Ok(Self {
            symkey: SecretBytes::new(std::mem::take(&mut *key)),
            digest: digest.to_string(),
            cipher_options,
        })
    }

    /// Parses the options JSON (fields in any order). The error names no value.
    pub fn from_json(json: &[u8]) -> Result<Self, OptionsError> {
        serde_json::from_slice(json).map_err(|e| OptionsError::Json {
            what: "private options",
            reason: e.to_string(),
        })
    }

    /// The JSON to wrap (`{"symkey":..,"digest":..,"cipheroptions":{..}}`), in a buffer
    /// that is wiped when dropped.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        serde_json::to_writer(&mut *out, self).expect("private options always serialize");
        out
    }
}

/// Everything needed to decrypt and verify one layer, checked for length.
pub struct LayerCipherParams {
    /// AES-256 key (and HMAC key).
    pub key: Zeroizing<[u8; KEY_LEN]>,
    /// Initial counter block.
    pub nonce: Zeroizing<[u8; NONCE_LEN]>,
    /// Expected HMAC-SHA256 of the whole ciphertext.
    pub hmac: [u8; HMAC_LEN],
}

impl fmt::Debug for LayerCipherParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerCipherParams")
            .field("key", &"<redacted>")
            .field("nonce", &"<redacted>")
            .field("hmac", &b64_encode(&self.hmac))
            .finish()
    }
}

/// Checks the options and extracts key, nonce and HMAC.
///
/// The nonce is taken from the private options (authenticated by the key wrapping); one
/// only in the public options is accepted as ocicrypt's `GetOpt` does, and a public nonce
/// that differs from the private one is refused.
pub fn layer_cipher_params(
    public: &PublicLayerBlockCipherOptions,
    private: &PrivateLayerBlockCipherOptions,
) -> Result<LayerCipherParams, OptionsError> {
    if public.cipher != CIPHER_AES_256_CTR_HMAC_SHA256 {
        return Err(OptionsError::UnsupportedCipher(public.cipher.clone()));
    }
    let key = fixed::<KEY_LEN>("symkey", private.symkey.expose())?;
    let nonce = match (
        private.cipher_options.get(OPT_NONCE),
        public.cipher_options.get(OPT_NONCE),
    ) {
        (Some(p), Some(q)) if p.expose() != q.as_slice() => {
            return Err(OptionsError::ConflictingNonce)
        }
        (Some(p), _) => fixed::<NONCE_LEN>("nonce", p.expose())?,
        (None, Some(q)) => fixed::<NONCE_LEN>("nonce", q)?,
        (None, None) => fixed::<NONCE_LEN>("nonce", &[])?,
    };
    let hmac = fixed::<HMAC_LEN>("hmac", &public.hmac)?;
    Ok(LayerCipherParams {
        key,
        nonce,
        hmac: *hmac,
    })
}

fn fixed<const N: usize>(
    field: &'static str,
    bytes: &[u8],
) -> Result<Zeroizing<[u8; N]>, OptionsError> {
    let array: [u8; N] = bytes.try_into().map_err(|_| OptionsError::BadLength {
        field,
        actual: bytes.len(),
        expected: N,
    })?;
    Ok(Zeroizing::new(array))
}

/// Veil's sealed TOC digest (`veil.toc-digest`), if the private options carry one.
///
/// `Ok(None)`: no sealed digest (use the manifest's TOC annotation). A present but
/// malformed value is an error: it came from a key holder and is not silently ignored.
pub fn sealed_toc_digest(
    private: &PrivateLayerBlockCipherOptions,
) -> Result<Option<String>, OptionsError> {
    let Some(value) = private.cipher_options.get(OPT_VEIL_TOC_DIGEST) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(value.expose()).map_err(|_| OptionsError::BadSealedDigest)?;
    check_sha256_digest(text)?;
    Ok(Some(text.to_string()))
}

/// Stores `digest` (`sha256:<hex>`) as the sealed TOC digest in `private`.
pub fn set_sealed_toc_digest(
    private: &mut PrivateLayerBlockCipherOptions,
    digest: &str,
) -> Result<(), OptionsError> {
    check_sha256_digest(digest)?;
    private.cipher_options.insert(
        OPT_VEIL_TOC_DIGEST.to_string(),
        SecretBytes::new(digest.as_bytes().to_vec()),
    );
    Ok(())
}

fn check_sha256_digest(text: &str) -> Result<(), OptionsError> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or(OptionsError::BadSealedDigest)?;
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(OptionsError::BadSealedDigest)
    }
}

/// One wrapped copy of the private options, from one `enc.keys.<scheme>` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The scheme: the annotation name after `org.opencontainers.image.enc.keys.`
    /// (`jwe`, `pkcs7`, `pgp`, `pkcs11`, `provider.<name>`).
    pub scheme: String,
    /// The wrapped bytes (base64-decoded annotation entry).
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient")
            .field("scheme", &self.scheme)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

/// The ocicrypt annotations of one encrypted layer descriptor, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedLayer {
    /// The public options (`enc.pubopts`).
    pub pubopts: PublicLayerBlockCipherOptions,
    /// Every wrapped entry, sorted by scheme, in annotation order within a scheme.
    pub recipients: Vec<Recipient>,
}

impl EncryptedLayer {
    /// Parses a descriptor's annotations (any map of string pairs, e.g. `&HashMap`).
    /// Annotations that are not ocicrypt's are ignored; empty entries are skipped.
    pub fn from_annotations<I, K, V>(annotations: I) -> Result<Self, OptionsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut pubopts = None;
        let mut by_scheme: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (name, value) in annotations {
            let (name, value) = (name.as_ref(), value.as_ref());
            if name == ANNOTATION_PUBOPTS {
                let json = b64_decode(value).map_err(|e| OptionsError::Base64 {
                    annotation: name.to_string(),
                    index: 0,
                    reason: e.to_string(),
                })?;
                pubopts = Some(PublicLayerBlockCipherOptions::from_json(&json)?);
            } else if let Some(scheme) = name.strip_prefix(ANNOTATION_KEYS_PREFIX) {
                let entries = by_scheme.entry(scheme.to_string()).or_default();
                for (index, entry) in value.split(',').enumerate() {
                    if entry.trim().is_empty() {
                        continue;
                    }
                    let bytes = b64_decode(entry).map_err(|e| OptionsError::Base64 {
                        annotation: name.to_string(),
                        index,
                        reason: e.to_string(),
                    })?;
                    entries.push(bytes);
                }
            }
        }
        let pubopts = pubopts.ok_or(OptionsError::MissingPubOpts)?;
        let recipients: Vec<Recipient> = by_scheme
            .into_iter()
            .flat_map(|(scheme, entries)| {
                entries.into_iter().map(move |wrapped| Recipient {
                    scheme: scheme.clone(),
                    wrapped,
                })
            })
            .collect();
        if recipients.is_empty() {
            return Err(OptionsError::NoRecipients);
        }
        Ok(Self {
            pubopts,
            recipients,
        })
    }

    /// The ocicrypt annotations for this layer: one `enc.keys.<scheme>` per scheme
    /// (comma-joined base64 entries) and `enc.pubopts`.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for recipient in &self.recipients {
            let entry = out
                .entry(format!("{ANNOTATION_KEYS_PREFIX}{}", recipient.scheme))
                .or_default();
            if !entry.is_empty() {
                entry.push(',');
            }
            entry.push_str(&b64_encode(&recipient.wrapped));
        }
        out.insert(
            ANNOTATION_PUBOPTS.to_string(),
            b64_encode(&self.pubopts.to_json()),
        );
        out
    }

    /// The distinct recipient schemes, sorted.
    pub fn schemes(&self) -> Vec<String> {
        let mut schemes: Vec<String> = self.recipients.iter().map(|r| r.scheme.clone()).collect();
        schemes.dedup();
        schemes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The decrypted private options of guest-components' sample annotation (PROTOCOLS §1.3).
    const SAMPLE_PRIVATE: &str = r#"{"symkey":"1jL2jJV0Oyz2nmPkLtqulW6cKcpIUN5FpILcVnP5Uqs=","digest":"sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7","cipheroptions":{"nonce":"r10F9oaCu+nWFXfod3l83g=="}}"#;
    const SAMPLE_PUBLIC: &str = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"P3O+CYaDcR6BmxJouiEWIX3NW7Yv6NTpJyvhe6PflP8=","cipheroptions":{}}"#;

    #[test]
    fn media_types() {
        assert!(is_encrypted_media_type(
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        ));
        assert!(!is_encrypted_media_type(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert_eq!(
            plain_media_type("application/vnd.oci.image.layer.v1.tar+zstd+encrypted"),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(plain_media_type("x/y"), "x/y");
        assert_eq!(
            encrypted_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        );
        assert_eq!(
            encrypted_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd+encrypted"
        );
    }

    #[test]
    fn parses_sample_options_in_any_order() {
        let private = PrivateLayerBlockCipherOptions::from_json(SAMPLE_PRIVATE.as_bytes()).unwrap();
        assert_eq!(private.symkey.len(), 32);
        assert_eq!(
            private.digest,
            "sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7"
        );
        // ocicrypt-rs order: symkey, cipheroptions, digest.
        let reordered = r#"{"cipheroptions":{"nonce":"r10F9oaCu+nWFXfod3l83g=="},"digest":"sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7","symkey":"1jL2jJV0Oyz2nmPkLtqulW6cKcpIUN5FpILcVnP5Uqs="}"#;
        let again = PrivateLayerBlockCipherOptions::from_json(reordered.as_bytes()).unwrap();
        assert_eq!(private, again);
        // Written back exactly as Go writes it.
        assert_eq!(&private.to_json()[..], SAMPLE_PRIVATE.as_bytes());

        let public = PublicLayerBlockCipherOptions::from_json(SAMPLE_PUBLIC.as_bytes()).unwrap();
        assert_eq!(public.to_json(), SAMPLE_PUBLIC.as_bytes());
        let params = layer_cipher_params(&public, &private).unwrap();
        assert_eq!(&params.key[..], private.symkey.expose());
        assert_eq!(params.nonce.len(), 16);
    }

    #[test]
    fn unknown_options_are_kept_and_null_is_empty() {
        let json = r#"{"symkey":"AAAA","digest":"","cipheroptions":{"nonce":"AAAA","x.other":"AQID"},"extra":1}"#;
        let private = PrivateLayerBlockCipherOptions::from_json(json.as_bytes()).unwrap();
        assert_eq!(private.cipher_options["x.other"].expose(), &[1u8, 2, 3][..]);
        let back = PrivateLayerBlockCipherOptions::from_json(&private.to_json()).unwrap();
        assert_eq!(back, private);
        let nulls = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":null,"cipheroptions":null}"#;
        let public = PublicLayerBlockCipherOptions::from_json(nulls.as_bytes()).unwrap();
        assert!(public.hmac.is_empty() && public.cipher_options.is_empty());
        assert!(matches!(
            layer_cipher_params(&public, &private),
            Err(OptionsError::BadLength {
                field: "symkey",
                ..
            })
        ));
    }

    #[test]
    fn debug_of_private_options_shows_no_key_bytes() {
        let private = PrivateLayerBlockCipherOptions::from_json(SAMPLE_PRIVATE.as_bytes()).unwrap();
        let shown = format!("{private:?} {:?}", {
            let public =
                PublicLayerBlockCipherOptions::from_json(SAMPLE_PUBLIC.as_bytes()).unwrap();
            layer_cipher_params(&public, &private).unwrap()
        });
        let key = private.symkey.expose();
        let nonce = private.cipher_options[OPT_NONCE].expose();
        for secret in [key, nonce] {
            assert!(!shown.contains(&b64_encode(secret)), "{shown}");
            assert!(!shown.contains(&hex_lower(secret)), "{shown}");
            assert!(!shown.contains(&format!("{secret:?}")), "{shown}");
            // Nor any single byte run of the key printed as decimal numbers.
            assert!(!shown.contains(&format!("{}, {}", secret[0], secret[1])));
        }
        assert!(
            !shown.contains("18be1897"),
            "the digest is redacted too: {shown}"
        );
        assert!(shown.contains("redacted"));
    }

    fn hex_lower(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn nonce_rules() {
        let mut private =
            PrivateLayerBlockCipherOptions::from_json(SAMPLE_PRIVATE.as_bytes()).unwrap();
        let mut public =
            PublicLayerBlockCipherOptions::from_json(SAMPLE_PUBLIC.as_bytes()).unwrap();
        public
            .cipher_options
            .insert(OPT_NONCE.into(), vec![7u8; NONCE_LEN]);
        assert!(matches!(
            layer_cipher_params(&public, &private),
            Err(OptionsError::ConflictingNonce)
        ));
        let nonce = private.cipher_options.remove(OPT_NONCE).unwrap();
        let params = layer_cipher_params(&public, &private).unwrap();
        assert_eq!(&params.nonce[..], &[7u8; NONCE_LEN]);
        public
            .cipher_options
            .insert(OPT_NONCE.into(), nonce.expose().to_vec());
        private.cipher_options.insert(OPT_NONCE.into(), nonce);
        layer_cipher_params(&public, &private).unwrap();
        public.cipher = "AES_128_CBC".into();
        assert!(matches!(
            layer_cipher_params(&public, &private),
            Err(OptionsError::UnsupportedCipher(_))
        ));
    }

    #[test]
    fn sealed_digest() {
        let mut private =
            PrivateLayerBlockCipherOptions::from_json(SAMPLE_PRIVATE.as_bytes()).unwrap();
        assert_eq!(sealed_toc_digest(&private).unwrap(), None);
        let digest = format!("sha256:{}", "ab".repeat(32));
        set_sealed_toc_digest(&mut private, &digest).unwrap();
        let json = String::from_utf8(private.to_json().to_vec()).unwrap();
        // Stored as base64 of the ASCII string, like every other value in the map.
        assert!(json.contains(&format!(
            "\"{OPT_VEIL_TOC_DIGEST}\":\"{}\"",
            b64_encode(digest.as_bytes())
        )));
        let back = PrivateLayerBlockCipherOptions::from_json(json.as_bytes()).unwrap();
        assert_eq!(sealed_toc_digest(&back).unwrap(), Some(digest));
        assert!(set_sealed_toc_digest(&mut private, "sha256:ABCD").is_err());
        private.cipher_options.insert(
            OPT_VEIL_TOC_DIGEST.into(),
            SecretBytes::new(b"md5:00".to_vec()),
        );
        assert!(matches!(
            sealed_toc_digest(&private),
            Err(OptionsError::BadSealedDigest)
        ));
    }

    #[test]
    fn annotations_round_trip() {
        let mut annotations = HashMap::new();
        annotations.insert(
            ANNOTATION_PUBOPTS.to_string(),
            b64_encode(SAMPLE_PUBLIC.as_bytes()),
        );
        annotations.insert(
            format!("{ANNOTATION_KEYS_PREFIX}jwe"),
            format!("{},{}", b64_encode(b"first"), b64_encode(b"second")),
        );
        annotations.insert(
            format!("{ANNOTATION_KEYS_PREFIX}provider.attestation-agent"),
            b64_encode(b"aa"),
        );
        annotations.insert(
            "containerd.io/snapshot/stargz/toc.digest".into(),
            "x".into(),
        );
        let layer = EncryptedLayer::from_annotations(&annotations).unwrap();
        assert_eq!(layer.schemes(), ["jwe", "provider.attestation-agent"]);
        assert_eq!(layer.recipients[0].wrapped, b"first");
        assert_eq!(layer.recipients[1].wrapped, b"second");
        assert_eq!(layer.pubopts.cipher, CIPHER_AES_256_CTR_HMAC_SHA256);
        let written = layer.to_annotations();
        assert_eq!(EncryptedLayer::from_annotations(&written).unwrap(), layer);
        assert!(!format!("{layer:?}").contains("first"));

        annotations.remove(ANNOTATION_PUBOPTS);
        assert!(matches!(
            EncryptedLayer::from_annotations(&annotations),
            Err(OptionsError::MissingPubOpts)
        ));
        let only_pub = [(ANNOTATION_PUBOPTS, b64_encode(SAMPLE_PUBLIC.as_bytes()))];
        assert!(matches!(
            EncryptedLayer::from_annotations(only_pub),
            Err(OptionsError::NoRecipients)
        ));
        let bad = [
            (
                ANNOTATION_PUBOPTS.to_string(),
                b64_encode(SAMPLE_PUBLIC.as_bytes()),
            ),
            (format!("{ANNOTATION_KEYS_PREFIX}jwe"), "!!".to_string()),
        ];
        let err = EncryptedLayer::from_annotations(bad).unwrap_err();
        assert!(err.to_string().contains("enc.keys.jwe"), "{err}");
    }
}
