//! Unwrapping a layer's private options: every recipient entry against every key.
//!
//! JWE recipients are unwrapped with the keys of a [`KeyRing`]
//! ([`unwrap_private_options`]); with a [`KekChain`] as well
//! ([`unwrap_private_options_with_keks`]), CoCo attestation-agent recipients
//! (`provider.attestation-agent`) are unwrapped with the KEK their `kid` names, fetched from
//! the chain's sources (KBS, CDH, files). Entries of other schemes (`pkcs7`, `pgp`,
//! `pkcs11`, other `provider.*`) are counted and named in the error, so a layer that
//! nobody here can open fails with a message that says which recipients it has, which key
//! files, kids and KEK sources were tried and what each answered. Errors never hold key
//! material.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::aa_packet::{self, AnnotationPacket};
use crate::jwe;
use crate::kek::KekChain;
use crate::keys::KeyRing;
use crate::ocicrypt::{
    layer_cipher_params, EncryptedLayer, OptionsError, PrivateLayerBlockCipherOptions,
};

/// How many per-attempt reasons the error message shows (all are kept in the value).
const SHOWN_ATTEMPTS: usize = 6;

/// Why a layer's key could not be unwrapped.
#[derive(Debug, Error)]
pub enum UnwrapError {
    /// No recipient entry could be unwrapped with any key.
    #[error("{0}")]
    NoKey(Box<NoKeyError>),
    /// A recipient unwrapped, but what it held is not usable private options.
    #[error("layer {layer}: the {scheme} recipient unwrapped with {key_file} holds unusable private options: {source}")]
    BadOptions {
        /// The layer (as named by the caller, e.g. its digest).
        layer: String,
        /// The scheme of the entry.
        scheme: String,
        /// The key file that unwrapped it.
        key_file: PathBuf,
        /// What is wrong.
        source: Box<OptionsError>,
    },
    /// An attestation-agent recipient unwrapped, but what it held is not usable private
    /// options.
    #[error(
        "layer {layer}: the {} recipient with kid {kid} holds unusable private options: {source}",
        aa_packet::SCHEME
    )]
    BadAaOptions {
        /// The layer (as named by the caller).
        layer: String,
        /// The packet's kid.
        kid: String,
        /// What is wrong.
        source: Box<OptionsError>,
    },
}

/// The details of [`UnwrapError::NoKey`].
#[derive(Debug)]
pub struct NoKeyError {
    /// The layer, as named by the caller.
    pub layer: String,
    /// The recipient schemes found, with the number of entries of each.
    pub schemes: Vec<(String, usize)>,
    /// The key files tried (every file of the ring, in order).
    pub key_files: Vec<PathBuf>,
    /// Files of the keys directory that were skipped as public material.
    pub ignored_files: Vec<PathBuf>,
    /// The KEK sources of the chain, in order (empty when no chain was given).
    pub kek_sources: Vec<String>,
    /// The kids of the attestation-agent entries tried (empty when no chain was given).
    pub kids: Vec<String>,
    /// Whether attestation-agent entries were tried (a KEK chain was given).
    pub kek_chain: bool,
    /// One line per failed (entry, key) attempt, without secrets.
    pub attempts: Vec<String>,
}

impl fmt::Display for NoKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schemes: Vec<String> = self
            .schemes
            .iter()
            .map(|(s, n)| format!("{s} ×{n}"))
            .collect();
        write!(
            f,
            "layer {}: cannot unwrap the layer key: recipients found: {}; ",
            self.layer,
            schemes.join(", ")
        )?;
        if self.key_files.is_empty() {
            write!(f, "no private key to try")?;
        } else {
            let files: Vec<String> = self
                .key_files
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            write!(f, "key files tried: {}", files.join(", "))?;
        }
        if !self.ignored_files.is_empty() {
            let files: Vec<String> = self
                .ignored_files
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            write!(f, " (skipped, public only: {})", files.join(", "))?;
        }
        if self.kek_chain {
            if self.kek_sources.is_empty() {
                write!(f, "; no KEK source configured")?;
            } else {
                write!(f, "; KEK sources: {}", self.kek_sources.join(", "))?;
            }
            if !self.kids.is_empty() {
                write!(f, "; kids tried: {}", self.kids.join(", "))?;
            }
        }
        let unsupported: Vec<&str> = self
            .schemes
            .iter()
            .map(|(s, _)| s.as_str())
            .filter(|s| *s != jwe::SCHEME && (!self.kek_chain || *s != aa_packet::SCHEME))
            .collect();
        if !unsupported.is_empty() {
            if self.kek_chain {
                write!(
                    f,
                    "; schemes Veil cannot unwrap: {}",
                    unsupported.join(", ")
                )?;
            } else {
                write!(
                    f,
                    "; schemes Veil cannot unwrap with local keys: {}",
                    unsupported.join(", ")
                )?;
            }
        }
        if !self.attempts.is_empty() {
            let shown: Vec<&str> = self
                .attempts
                .iter()
                .take(SHOWN_ATTEMPTS)
                .map(String::as_str)
                .collect();
            write!(f, "; attempts: {}", shown.join("; "))?;
            if self.attempts.len() > SHOWN_ATTEMPTS {
                write!(f, "; … {} more", self.attempts.len() - SHOWN_ATTEMPTS)?;
            }
        }
        Ok(())
    }
}

/// Unwraps the private options of `layer` (named `layer_name` in errors) with the keys of
/// `keys`: every JWE entry is tried with every key, in order; the first that decrypts
/// wins. The options returned have been checked to give a usable key, nonce and HMAC
/// ([`layer_cipher_params`]). Attestation-agent entries are not tried (see
/// [`unwrap_private_options_with_keks`]).
pub fn unwrap_private_options(
    layer_name: &str,
    layer: &EncryptedLayer,
    keys: &KeyRing,
) -> Result<PrivateLayerBlockCipherOptions, UnwrapError> {
    let mut attempts = Vec::new();
    if let Some(options) = try_jwe(layer_name, layer, keys, &mut attempts)? {
        return Ok(options);
    }
    Err(no_key(layer_name, layer, keys, None, Vec::new(), attempts))
}

/// Like [`unwrap_private_options`], and then every `provider.attestation-agent` entry with
/// the KEK its `kid` names, from `keks` (asked in order, cached for the process's life).
/// Local JWE keys are tried first, so a layer that has both kinds of recipients needs no
/// attestation when a local key opens it.
pub async fn unwrap_private_options_with_keks(
    layer_name: &str,
    layer: &EncryptedLayer,
    keys: &KeyRing,
    keks: &KekChain,
) -> Result<PrivateLayerBlockCipherOptions, UnwrapError> {
    let mut attempts = Vec::new();
    if let Some(options) = try_jwe(layer_name, layer, keys, &mut attempts)? {
        return Ok(options);
    }
    let mut kids = Vec::new();
    for (index, recipient) in layer.recipients.iter().enumerate() {
        if recipient.scheme != aa_packet::SCHEME {
            continue;
        }
        let packet = match AnnotationPacket::from_json(&recipient.wrapped) {
            Ok(p) => p,
            Err(e) => {
                attempts.push(format!("{} entry {index}: {e}", aa_packet::SCHEME));
                continue;
            }
        };
        if !kids.contains(&packet.kid) {
            kids.push(packet.kid.clone());
        }
        let kek = match keks.get(&packet.kid).await {
            Ok(kek) => kek,
            Err(e) => {
                attempts.push(format!("{} entry {index}: {e}", aa_packet::SCHEME));
                continue;
            }
        };
        match packet.unwrap(&kek) {
            Ok(json) => {
                let bad = |source: OptionsError| UnwrapError::BadAaOptions {
                    layer: layer_name.to_string(),
                    kid: packet.kid.clone(),
                    source: Box::new(source),
                };
                let options = PrivateLayerBlockCipherOptions::from_json(&json).map_err(bad)?;
                layer_cipher_params(&layer.pubopts, &options).map_err(bad)?;
                return Ok(options);
            }
            Err(e) => attempts.push(format!("{} entry {index}: {e}", aa_packet::SCHEME)),
        }
    }
    Err(no_key(layer_name, layer, keys, Some(keks), kids, attempts))
}

/// Every JWE entry with every key; `Ok(None)` when none opened.
fn try_jwe(
    layer_name: &str,
    layer: &EncryptedLayer,
    keys: &KeyRing,
    attempts: &mut Vec<String>,
) -> Result<Option<PrivateLayerBlockCipherOptions>, UnwrapError> {
    for (index, recipient) in layer.recipients.iter().enumerate() {
        if recipient.scheme != jwe::SCHEME {
            continue;
        }
        for key in keys.keys() {
            match jwe::decrypt(&recipient.wrapped, key) {
                Ok(json) => {
                    let bad = |source: OptionsError| UnwrapError::BadOptions {
                        layer: layer_name.to_string(),
                        scheme: recipient.scheme.clone(),
                        key_file: key.source().to_path_buf(),
                        source: Box::new(source),
                    };
                    let options = PrivateLayerBlockCipherOptions::from_json(&json).map_err(bad)?;
                    layer_cipher_params(&layer.pubopts, &options).map_err(bad)?;
                    return Ok(Some(options));
                }
                Err(e) => attempts.push(format!(
                    "jwe entry {index} with {} ({}): {e}",
                    key.source().display(),
                    key.kind()
                )),
            }
        }
    }
    Ok(None)
}

fn no_key(
    layer_name: &str,
    layer: &EncryptedLayer,
    keys: &KeyRing,
    keks: Option<&KekChain>,
    kids: Vec<String>,
    attempts: Vec<String>,
) -> UnwrapError {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for recipient in &layer.recipients {
        *counts.entry(recipient.scheme.as_str()).or_default() += 1;
    }
    let schemes = counts
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    UnwrapError::NoKey(Box::new(NoKeyError {
        layer: layer_name.to_string(),
        schemes,
        key_files: keys.files(),
        ignored_files: keys.ignored().iter().map(|(p, _)| p.clone()).collect(),
        kek_sources: keks.map(KekChain::source_names).unwrap_or_default(),
        kids,
        kek_chain: keks.is_some(),
        attempts,
    }))
}

#[cfg(test)]
mod tests {
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;

    use super::*;
    use crate::keys::PrivateKey;
    use crate::ocicrypt::{PublicLayerBlockCipherOptions, Recipient};

    fn key(name: &str) -> PrivateKey {
        let pkey = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        PrivateKey::from_bytes(&pkey.private_key_to_pem_pkcs8().unwrap(), name)
            .unwrap()
            .remove(0)
    }

    fn recipient(scheme: &str, wrapped: Vec<u8>) -> Recipient {
        Recipient {
            scheme: scheme.into(),
            wrapped,
        }
    }

    #[test]
    fn tries_every_entry_with_every_key() {
        let (a, b, c) = (key("a.pem"), key("b.pem"), key("c.pem"));
        let private = PrivateLayerBlockCipherOptions::generate("sha256:00").unwrap();
        let to_c = jwe::encrypt(&private.to_json(), &[c.public_key().unwrap()]).unwrap();
        let to_a = jwe::encrypt(&private.to_json(), &[a.public_key().unwrap()]).unwrap();
        let layer = EncryptedLayer {
            pubopts: PublicLayerBlockCipherOptions::new([1; 32]),
            recipients: vec![
                recipient("jwe", to_c),
                recipient("jwe", to_a),
                recipient("pkcs7", b"cms".to_vec()),
                recipient("provider.attestation-agent", b"{}".to_vec()),
            ],
        };
        // Key a opens the second entry, after failing the first.
        let ring = KeyRing::from_keys(vec![b, a]);
        let got = unwrap_private_options("sha256:layer", &layer, &ring).unwrap();
        assert_eq!(got, private);

        let ring = KeyRing::from_keys(vec![key("d.pem")]);
        let err = unwrap_private_options("sha256:layer", &layer, &ring).unwrap_err();
        let text = err.to_string();
        for needle in [
            "layer sha256:layer",
            "jwe ×2, pkcs7 ×1, provider.attestation-agent ×1",
            "key files tried: d.pem",
            "cannot unwrap with local keys: pkcs7, provider.attestation-agent",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
        let UnwrapError::NoKey(details) = err else {
            panic!("wrong error")
        };
        assert_eq!(details.attempts.len(), 2);
    }

    #[test]
    fn unusable_payload_is_named() {
        let a = key("a.pem");
        let wrapped = jwe::encrypt(b"{\"symkey\":\"AAAA\"}", &[a.public_key().unwrap()]).unwrap();
        let layer = EncryptedLayer {
            pubopts: PublicLayerBlockCipherOptions::new([1; 32]),
            recipients: vec![recipient("jwe", wrapped)],
        };
        let err = unwrap_private_options("L", &layer, &KeyRing::from_keys(vec![a])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("layer L")
                && text.contains("a.pem")
                && text.contains("symkey is 3 bytes"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn attestation_agent_entries_use_the_kek_chain() {
        use std::sync::Arc;

        use crate::kek::{FileKekSource, KekSource};
        use crate::secret::SecretBytes;

        let private = PrivateLayerBlockCipherOptions::generate("sha256:00").unwrap();
        let kek = SecretBytes::new(vec![3u8; 32]);
        let kid = "kbs:///default/image_key/test";
        let packet = AnnotationPacket::wrap(kid, &kek, &private.to_json()).unwrap();
        let stale = AnnotationPacket::wrap("kbs:///default/image_key/old", &kek, b"{}").unwrap();
        let layer = EncryptedLayer {
            pubopts: PublicLayerBlockCipherOptions::new([1; 32]),
            recipients: vec![
                recipient("pkcs7", b"cms".to_vec()),
                recipient(aa_packet::SCHEME, b"not json".to_vec()),
                recipient(aa_packet::SCHEME, stale.to_json()),
                recipient(aa_packet::SCHEME, packet.to_json()),
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("default/image_key")).unwrap();
        let ring = KeyRing::from_keys(vec![key("a.pem")]);

        // Without the KEK file: the error names schemes, kids, sources and answers.
        let sources: Vec<Arc<dyn KekSource>> = vec![Arc::new(FileKekSource::new(dir.path()))];
        let chain = KekChain::new(sources.clone());
        let err = unwrap_private_options_with_keks("L", &layer, &ring, &chain)
            .await
            .unwrap_err()
            .to_string();
        for needle in [
            "layer L",
            "pkcs7 ×1, provider.attestation-agent ×3",
            "key files tried: a.pem",
            &format!("KEK sources: file:{}", dir.path().display()),
            "kids tried: kbs:///default/image_key/old, kbs:///default/image_key/test",
            "schemes Veil cannot unwrap: pkcs7;",
            "entry 1: malformed attestation-agent annotation packet",
            "entry 3: no KEK for kid kbs:///default/image_key/test",
            "default/image_key/test does not exist",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
        // The sync (JWE-only) variant still says it cannot use these entries.
        let err = unwrap_private_options("L", &layer, &ring)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot unwrap with local keys: pkcs7, provider.attestation-agent"),
            "{err}"
        );

        std::fs::write(dir.path().join("default/image_key/test"), kek.expose()).unwrap();
        std::fs::write(dir.path().join("default/image_key/old"), [9u8; 32]).unwrap();
        let chain = KekChain::new(sources);
        let got = unwrap_private_options_with_keks("L", &layer, &ring, &chain)
            .await
            .unwrap();
        assert_eq!(got, private);

        // An entry that unwraps to something unusable is an error naming the kid.
        let junk = AnnotationPacket::wrap(kid, &kek, b"{\"symkey\":\"AAAA\"}").unwrap();
        let layer = EncryptedLayer {
            pubopts: PublicLayerBlockCipherOptions::new([1; 32]),
            recipients: vec![recipient(aa_packet::SCHEME, junk.to_json())],
        };
        let err = unwrap_private_options_with_keks("L", &layer, &ring, &chain)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kid kbs:///default/image_key/test holds unusable private options"),
            "{err}"
        );
    }
}
