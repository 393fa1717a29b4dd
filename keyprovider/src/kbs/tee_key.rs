//! The TEE key pair of one KBS session: generated fresh for every attestation, its public
//! half sent as `tee-pubkey` (and bound into the evidence), its private half decrypting
//! the KBS's resource answers (PROTOCOLS.md §4.4, §4.6).
//!
//! Kinds: EC P-256 with `ECDH-ES+A256KW` (the reference client's default) or RSA-2048 with
//! `RSA-OAEP-256`. The answer is a flattened JWE JSON with `A256GCM` content encryption;
//! the JOSE work is josekit's (OpenSSL underneath), the AAD being the `protected` string
//! exactly as received. The private key lives in OpenSSL (cleared when freed); its DER
//! export for josekit is wiped after use. Compressed (`zip`) answers are refused.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwe::{JweDecrypter, ECDH_ES_A256KW, RSA_OAEP_256};
use kbs_types::TeePubKey;
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use serde_json::Value;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// `alg` of the EC key.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// `alg` of the RSA key.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// Content encryption the KBS uses.
pub const ENC_A256GCM: &str = "A256GCM";
/// RSA modulus size.
pub const RSA_BITS: u32 = 2048;
/// Answers larger than this are refused (KEKs are 32 bytes; other resources are small).
const MAX_RESPONSE: usize = 1 << 20;

/// The kind of TEE key to generate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TeeKeyType {
    /// EC P-256, `ECDH-ES+A256KW` (default).
    #[default]
    EcP256,
    /// RSA-2048, `RSA-OAEP-256`.
    Rsa,
}

impl std::str::FromStr for TeeKeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec" | "ec-p256" | "EC" | "P-256" => Ok(Self::EcP256),
            "rsa" | "RSA" | "rsa-oaep-256" => Ok(Self::Rsa),
            other => Err(format!("unknown TEE key type {other:?} (ec-p256, rsa)")),
        }
    }
}

/// A TEE key that could not be made, or an answer it could not decrypt. No key bytes.
#[derive(Debug, Error)]
pub enum TeeKeyError {
    /// OpenSSL could not generate or export the key.
    #[error("TEE key: {0}")]
    Key(String),
    /// The answer is not a flattened JWE JSON for this key.
    #[error("malformed KBS resource answer: {0}")]
    Malformed(String),
    /// The JWE did not decrypt (wrong key, tampered, or not for this session).
    #[error("the KBS resource answer does not decrypt with this session's TEE key ({0})")]
    Decrypt(String),
}

/// One session's key pair. `Debug` shows the kind only.
pub struct TeeKey {
    kind: TeeKeyType,
    pkey: PKey<Private>,
    public: TeePubKey,
}

impl fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeeKey").field("kind", &self.kind).finish()
    }
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ossl(e: openssl::error::ErrorStack) -> TeeKeyError {
    TeeKeyError::Key(e.to_string())
}

impl TeeKey {
    /// A fresh key pair of `kind` (OpenSSL's CSPRNG).
    pub fn generate(kind: TeeKeyType) -> Result<Self, TeeKeyError> {
        match kind {
            TeeKeyType::EcP256 => {
                let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(ossl)?;
                let ec = EcKey::generate(&group).map_err(ossl)?;
                let mut ctx = BigNumContext::new().map_err(ossl)?;
                let mut x = openssl::bn::BigNum::new().map_err(ossl)?;
                let mut y = openssl::bn::BigNum::new().map_err(ossl)?;
                ec.public_key()
                    .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                    .map_err(ossl)?;
                let public = TeePubKey::EC {
                    crv: "P-256".into(),
                    alg: ALG_ECDH_ES_A256KW.into(),
                    x: b64url(&x.to_vec_padded(32).map_err(ossl)?),
                    y: b64url(&y.to_vec_padded(32).map_err(ossl)?),
                };
                let pkey = PKey::from_ec_key(ec).map_err(ossl)?;
                Ok(Self { kind, pkey, public })
            }
            TeeKeyType::Rsa => {
                let rsa = Rsa::generate(RSA_BITS).map_err(ossl)?;
                let public = TeePubKey::RSA {
                    alg: ALG_RSA_OAEP_256.into(),
                    k_mod: b64url(&rsa.n().to_vec()),
                    k_exp: b64url(&rsa.e().to_vec()),
                };
                let pkey = PKey::from_rsa(rsa).map_err(ossl)?;
                Ok(Self { kind, pkey, public })
            }
        }
    }

    /// The kind of key.
    pub fn kind(&self) -> TeeKeyType {
        self.kind
    }

    /// The `tee-pubkey` JWK sent to the KBS.
    pub fn public(&self) -> &TeePubKey {
        &self.public
    }

    /// The `alg` this key decrypts.
    pub fn alg(&self) -> &'static str {
        match self.kind {
            TeeKeyType::EcP256 => ALG_ECDH_ES_A256KW,
            TeeKeyType::Rsa => ALG_RSA_OAEP_256,
        }
    }

    /// Decrypts a KBS resource answer (flattened JWE JSON) to the resource bytes.
    pub fn decrypt_response(&self, body: &[u8]) -> Result<SecretBytes, TeeKeyError> {
        if body.len() > MAX_RESPONSE {
            return Err(TeeKeyError::Malformed(format!(
                "{} bytes, more than the {MAX_RESPONSE} accepted",
                body.len()
            )));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| TeeKeyError::Malformed("not UTF-8 JSON".into()))?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| TeeKeyError::Malformed(format!("not JSON ({e})")))?;
        let Value::Object(map) = &value else {
            return Err(TeeKeyError::Malformed("not a JSON object".into()));
        };
        for field in ["protected", "encrypted_key", "iv", "ciphertext", "tag"] {
            if !matches!(map.get(field), Some(Value::String(_))) {
                return Err(TeeKeyError::Malformed(format!(
                    "no {field:?} string (a flattened JWE is expected)"
                )));
            }
        }
        if map.contains_key("recipients") || map.contains_key("header") {
            return Err(TeeKeyError::Malformed(
                "unexpected \"recipients\"/\"header\" (the KBS sends a flattened JWE with a protected header only)".into(),
            ));
        }
        let protected = map["protected"].as_str().unwrap_or_default();
        let header: Value = URL_SAFE_NO_PAD
            .decode(protected)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                TeeKeyError::Malformed("protected header is not base64url JSON".into())
            })?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let enc = header.get("enc").and_then(Value::as_str).unwrap_or("");
        if alg != self.alg() {
            return Err(TeeKeyError::Malformed(format!(
                "alg {alg:?} does not match this session's key ({})",
                self.alg()
            )));
        }
        if enc != ENC_A256GCM {
            return Err(TeeKeyError::Malformed(format!(
                "enc {enc:?} (the KBS uses {ENC_A256GCM})"
            )));
        }
        if header.get("zip").is_some() {
            return Err(TeeKeyError::Malformed(
                "compressed (\"zip\") JWE refused".into(),
            ));
        }
        let der = Zeroizing::new(self.pkey.private_key_to_pkcs8().map_err(ossl)?);
        let decrypter: Box<dyn JweDecrypter> = match self.kind {
            TeeKeyType::EcP256 => Box::new(
                ECDH_ES_A256KW
                    .decrypter_from_der(&*der)
                    .map_err(|e| TeeKeyError::Key(first_line(&e)))?,
            ),
            TeeKeyType::Rsa => Box::new(
                RSA_OAEP_256
                    .decrypter_from_der(&*der)
                    .map_err(|e| TeeKeyError::Key(first_line(&e)))?,
            ),
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            josekit::jwe::deserialize_json(text, decrypter.as_ref())
        }));
        match result {
            Ok(Ok((payload, _))) => Ok(SecretBytes::new(payload)),
            Ok(Err(e)) => Err(TeeKeyError::Decrypt(first_line(&e))),
            Err(_) => Err(TeeKeyError::Decrypt("malformed JWE".into())),
        }
    }
}

fn first_line(e: &impl fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use josekit::jwe::{JweEncrypter, JweHeaderSet};

    use super::*;

    /// Encrypts like a KBS would, with josekit and the public JWK only.
    fn kbs_encrypt(key: &TeeKey, payload: &[u8]) -> String {
        let jwk_json = serde_json::to_value(key.public()).unwrap();
        let jwk = josekit::jwk::Jwk::from_map(jwk_json.as_object().unwrap().clone()).unwrap();
        let mut header = JweHeaderSet::new();
        header.set_content_encryption(ENC_A256GCM, true);
        let encrypter: Box<dyn JweEncrypter> = match key.kind() {
            TeeKeyType::EcP256 => Box::new(ECDH_ES_A256KW.encrypter_from_jwk(&jwk).unwrap()),
            TeeKeyType::Rsa => Box::new(RSA_OAEP_256.encrypter_from_jwk(&jwk).unwrap()),
        };
        josekit::jwe::serialize_flattened_json(payload, Some(&header), None, None, &*encrypter)
            .unwrap()
    }

    #[test]
    fn both_kinds_round_trip() {
        for kind in [TeeKeyType::EcP256, TeeKeyType::Rsa] {
            let key = TeeKey::generate(kind).unwrap();
            let jwk = serde_json::to_value(key.public()).unwrap();
            match kind {
                TeeKeyType::EcP256 => {
                    assert_eq!(jwk["kty"], "EC");
                    assert_eq!(jwk["crv"], "P-256");
                    assert_eq!(jwk["alg"], "ECDH-ES+A256KW");
                    assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
                }
                TeeKeyType::Rsa => {
                    assert_eq!(jwk["kty"], "RSA");
                    assert_eq!(jwk["alg"], "RSA-OAEP-256");
                    assert_eq!(jwk["e"], "AQAB");
                }
            }
            let jwe = kbs_encrypt(&key, b"0123456789abcdef0123456789abcdef");
            let plain = key.decrypt_response(jwe.as_bytes()).unwrap();
            assert_eq!(plain.expose(), b"0123456789abcdef0123456789abcdef");

            // Another session's key cannot read it.
            let other = TeeKey::generate(kind).unwrap();
            let err = other.decrypt_response(jwe.as_bytes()).unwrap_err();
            assert!(matches!(err, TeeKeyError::Decrypt(_)), "{err}");
            assert!(!format!("{key:?}").contains("BEGIN"));
        }
    }

    #[test]
    fn malformed_answers() {
        let key = TeeKey::generate(TeeKeyType::EcP256).unwrap();
        let rsa = TeeKey::generate(TeeKeyType::Rsa).unwrap();
        let for_rsa = kbs_encrypt(&rsa, b"x");
        let err = key
            .decrypt_response(for_rsa.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match this session's key"), "{err}");
        for (bad, needle) in [
            (&b"[]"[..], "not a JSON object"),
            (b"{}", "no \"protected\""),
            (b"<html>", "not JSON"),
        ] {
            let err = key.decrypt_response(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
