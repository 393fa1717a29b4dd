//! JWE recipients (`org.opencontainers.image.enc.keys.jwe`): unwrap with a private key, and
//! wrap to public keys.
//!
//! ocicrypt's JWE key wrapper (go-jose) writes the JSON serialization: the *flattened*
//! form when there is one recipient (everything in the protected header, e.g.
//! `{"alg":"RSA-OAEP","enc":"A256GCM"}`), the *general* form with a `recipients` array
//! otherwise. Key management is `RSA-OAEP` (SHA-1) for RSA keys and `ECDH-ES+A256KW` for
//! EC keys, or the `alg` of a supplied JWK; content encryption `A256GCM`.
//!
//! Both forms are read. Every recipient in the object is tried with the key (each on its
//! own, so a recipient for another key of the same algorithm does not stop the search).
//! Accepted key management: `RSA-OAEP`, `RSA-OAEP-256` (and -384/-512) with RSA keys;
//! `ECDH-ES`, `ECDH-ES+A128KW`/`A192KW`/`A256KW` with EC keys. `RSA1_5` is refused (its
//! padding check is the classic decryption oracle), as is compression (`zip`): anyone with
//! the public key could otherwise send a decompression bomb.
//!
//! The JOSE work is done by `josekit`, whose primitives are OpenSSL's: RSA decryption is
//! OpenSSL's blinded, constant-time implementation (not the `rsa` crate, RUSTSEC-2023-0071).
//! Failures are reported without detail from the cryptography (no oracle, no key bytes).
//!
//! Authenticity: a JWE to a *public* key can be made by anyone who has that key, so the
//! unwrapped options are secret (only key holders read them) but authentic only against
//! parties who do not know the public key. The manifest digest remains the anchor.

use std::panic::{catch_unwind, AssertUnwindSafe};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwe::{
    JweDecrypter, JweEncrypter, JweHeader, JweHeaderSet, ECDH_ES, ECDH_ES_A128KW, ECDH_ES_A192KW,
    ECDH_ES_A256KW, RSA_OAEP, RSA_OAEP_256, RSA_OAEP_384, RSA_OAEP_512,
};
use serde_json::{Map, Value};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::keys::{KeyKind, PrivateKey, PublicKey};

/// The annotation scheme name of JWE recipients.
pub const SCHEME: &str = "jwe";
/// Content encryption used when wrapping (as ocicrypt).
pub const CONTENT_ENCRYPTION: &str = "A256GCM";
/// JWE objects larger than this are refused (a wrapped private options JSON is < 2 KiB).
const MAX_JWE: usize = 256 * 1024;

/// A JWE that could not be unwrapped or made. Never contains key or payload bytes.
#[derive(Debug, Error)]
pub enum JweError {
    /// Not a JWE JSON serialization.
    #[error("malformed JWE: {0}")]
    Malformed(String),
    /// No recipient of the JWE could be decrypted with the key; one reason per recipient.
    #[error("no JWE recipient could be decrypted with this key ({})", .0.join("; "))]
    NoRecipient(Vec<String>),
    /// The key could not be used (OpenSSL could not export it).
    #[error("unusable key: {0}")]
    Key(String),
    /// Wrapping failed.
    #[error("JWE encryption failed: {0}")]
    Encrypt(String),
}

/// Decrypts a JWE JSON serialization (general or flattened) with `key`; the payload comes
/// back in a buffer that is wiped on drop.
pub fn decrypt(jwe: &[u8], key: &PrivateKey) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let parsed = Parsed::new(jwe)?;
    let der = key.pkcs8_der().map_err(|e| JweError::Key(e.to_string()))?;
    let mut reasons = Vec::new();
    for (index, recipient) in parsed.recipients.iter().enumerate() {
        match parsed.try_recipient(recipient, key.kind(), &der) {
            Ok(payload) => return Ok(payload),
            Err(reason) => reasons.push(format!("recipient {index}: {reason}")),
        }
    }
    Err(JweError::NoRecipient(reasons))
}

/// Encrypts `payload` to every key in `recipients` (at least one) as ocicrypt does:
/// `RSA-OAEP` for RSA keys, `ECDH-ES+A256KW` for EC keys, `A256GCM` content encryption.
/// The result is the JWE general JSON serialization (`recipients` array).
pub fn encrypt(payload: &[u8], recipients: &[PublicKey]) -> Result<Vec<u8>, JweError> {
    if recipients.is_empty() {
        return Err(JweError::Encrypt("no recipient key".into()));
    }
    let mut encrypters: Vec<Box<dyn JweEncrypter>> = Vec::with_capacity(recipients.len());
    for key in recipients {
        let der = key
            .spki_der()
            .map_err(|e| JweError::Key(format!("{}: {e}", key.source().display())))?;
        let encrypter: Box<dyn JweEncrypter> = match key.kind() {
            KeyKind::Rsa { .. } => Box::new(RSA_OAEP.encrypter_from_der(&der).map_err(|e| {
                JweError::Key(format!("{}: {}", key.source().display(), first_line(&e)))
            })?),
            KeyKind::Ec { .. } => {
                Box::new(ECDH_ES_A256KW.encrypter_from_der(&der).map_err(|e| {
                    JweError::Key(format!("{}: {}", key.source().display(), first_line(&e)))
                })?)
            }
        };
        encrypters.push(encrypter);
    }
    let mut header = JweHeaderSet::new();
    header.set_content_encryption(CONTENT_ENCRYPTION, true);
    let list: Vec<(Option<&JweHeader>, &dyn JweEncrypter)> =
        encrypters.iter().map(|e| (None, e.as_ref())).collect();
    josekit::jwe::serialize_general_json(payload, Some(&header), &list, None)
        .map(String::into_bytes)
        .map_err(|e| JweError::Encrypt(first_line(&e)))
}

/// One recipient: its own header and encrypted key.
struct Recipient {
    header: Option<Map<String, Value>>,
    encrypted_key: Option<Value>,
}

/// A JWE JSON object split into the parts shared by all recipients and the recipients.
struct Parsed {
    /// `protected` (as sent), `unprotected`, `iv`, `ciphertext`, `tag`, `aad`.
    shared: Map<String, Value>,
    /// The protected header, decoded (to read `alg` and `zip` before decrypting).
    protected: Map<String, Value>,
    recipients: Vec<Recipient>,
}

impl Parsed {
    fn new(jwe: &[u8]) -> Result<Self, JweError> {
        if jwe.len() > MAX_JWE {
            return Err(JweError::Malformed(format!(
                "{} bytes, more than the {MAX_JWE} accepted",
                jwe.len()
            )));
        }
        let value: Value = serde_json::from_slice(jwe).map_err(|e| {
            JweError::Malformed(format!(
                "not JSON ({e}); compact JWE is not used by ocicrypt"
            ))
        })?;
        let Value::Object(mut map) = value else {
            return Err(JweError::Malformed("not a JSON object".into()));
        };
        let recipients = match map.remove("recipients") {
            Some(Value::Array(list)) if !list.is_empty() => list
                .into_iter()
                .map(|r| match r {
                    Value::Object(mut r) => Ok(Recipient {
                        header: header_object(r.remove("header"))?,
                        encrypted_key: r.remove("encrypted_key"),
                    }),
                    _ => Err(JweError::Malformed("a recipient is not an object".into())),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(JweError::Malformed(
                    "\"recipients\" is not a non-empty array".into(),
                ))
            }
            None => vec![Recipient {
                header: header_object(map.remove("header"))?,
                encrypted_key: map.remove("encrypted_key"),
            }],
        };
        let protected = match map.get("protected") {
            Some(Value::String(text)) => {
                let bytes = URL_SAFE_NO_PAD
                    .decode(text)
                    .map_err(|e| JweError::Malformed(format!("protected header: {e}")))?;
                match serde_json::from_slice(&bytes) {
                    Ok(Value::Object(map)) => map,
                    _ => {
                        return Err(JweError::Malformed(
                            "protected header is not a JSON object".into(),
                        ))
                    }
                }
            }
            Some(_) => {
                return Err(JweError::Malformed(
                    "protected header is not a string".into(),
                ))
            }
            None => Map::new(),
        };
        for field in ["ciphertext", "iv", "tag"] {
            if !matches!(map.get(field), Some(Value::String(_))) {
                return Err(JweError::Malformed(format!("missing {field:?}")));
            }
        }
        let shared = ["protected", "unprotected", "iv", "ciphertext", "tag", "aad"]
            .into_iter()
            .filter_map(|k| map.remove(k).map(|v| (k.to_string(), v)))
            .collect();
        Ok(Self {
            shared,
            protected,
            recipients,
        })
    }

    /// A header parameter as the recipient sees it (recipient, unprotected, protected).
    fn param<'a>(&'a self, recipient: &'a Recipient, name: &str) -> Option<&'a Value> {
        recipient
            .header
            .as_ref()
            .and_then(|h| h.get(name))
            .or_else(|| match self.shared.get("unprotected") {
                Some(Value::Object(u)) => u.get(name),
                _ => None,
            })
            .or_else(|| self.protected.get(name))
    }

    fn try_recipient(
        &self,
        recipient: &Recipient,
        kind: &KeyKind,
        pkcs8: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let alg = match self.param(recipient, "alg") {
            Some(Value::String(alg)) => alg.as_str(),
            _ => return Err("no \"alg\"".into()),
        };
        if self.param(recipient, "zip").is_some() {
            return Err("compressed (\"zip\") JWE refused".into());
        }
        let encrypted_key_len = match &recipient.encrypted_key {
            Some(Value::String(text)) => URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| "encrypted_key is not base64url".to_string())?
                .len(),
            Some(_) => return Err("encrypted_key is not a string".into()),
            None => 0,
        };
        let decrypter: Box<dyn JweDecrypter> = match (kind, alg) {
            (
                KeyKind::Rsa { bits },
                "RSA-OAEP" | "RSA-OAEP-256" | "RSA-OAEP-384" | "RSA-OAEP-512",
            ) => {
                if encrypted_key_len != (*bits as usize).div_ceil(8) {
                    return Err(format!("{alg}: encrypted_key length does not fit this key"));
                }
                let algorithm = match alg {
                    "RSA-OAEP" => RSA_OAEP,
                    "RSA-OAEP-256" => RSA_OAEP_256,
                    "RSA-OAEP-384" => RSA_OAEP_384,
                    _ => RSA_OAEP_512,
                };
                Box::new(
                    algorithm
                        .decrypter_from_der(pkcs8)
                        .map_err(|_| "unusable RSA key")?,
                )
            }
            (
                KeyKind::Ec { .. },
                "ECDH-ES" | "ECDH-ES+A128KW" | "ECDH-ES+A192KW" | "ECDH-ES+A256KW",
            ) => {
                let algorithm = match alg {
                    "ECDH-ES" => ECDH_ES,
                    "ECDH-ES+A128KW" => ECDH_ES_A128KW,
                    "ECDH-ES+A192KW" => ECDH_ES_A192KW,
                    _ => ECDH_ES_A256KW,
                };
                // AES key wrap output: a 64-bit block more than a key of >= 128 bits.
                if alg != "ECDH-ES" && (encrypted_key_len < 24 || encrypted_key_len % 8 != 0) {
                    return Err(format!("{alg}: encrypted_key has an impossible length"));
                }
                Box::new(
                    algorithm
                        .decrypter_from_der(pkcs8)
                        .map_err(|_| "unusable EC key")?,
                )
            }
            (_, "RSA1_5") => return Err("RSA1_5 is refused (decryption oracle)".into()),
            (KeyKind::Rsa { .. }, alg) if alg.starts_with("ECDH-ES") => {
                return Err(format!("{alg} needs an EC key"))
            }
            (KeyKind::Ec { .. }, alg) if alg.starts_with("RSA-OAEP") => {
                return Err(format!("{alg} needs an RSA key"))
            }
            (_, alg) => return Err(format!("unsupported alg {alg:?}")),
        };
        // The recipient alone, as a flattened JWE, so josekit tries exactly this one.
        let mut flat = self.shared.clone();
        if let Some(header) = &recipient.header {
            flat.insert("header".into(), Value::Object(header.clone()));
        }
        if let Some(key) = &recipient.encrypted_key {
            flat.insert("encrypted_key".into(), key.clone());
        }
        let flat = Value::Object(flat).to_string();
        // josekit must not panic on hostile input; if it ever does, fail this recipient.
        let result = catch_unwind(AssertUnwindSafe(|| {
            josekit::jwe::deserialize_json(&flat, decrypter.as_ref())
        }));
        match result {
            Ok(Ok((payload, _header))) => Ok(Zeroizing::new(payload)),
            Ok(Err(_)) => Err(format!("{alg}: not decryptable with this key")),
            Err(_) => Err(format!("{alg}: malformed recipient")),
        }
    }
}

fn header_object(value: Option<Value>) -> Result<Option<Map<String, Value>>, JweError> {
    match value {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(JweError::Malformed(
            "a recipient header is not an object".into(),
        )),
    }
}

fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;

    use super::*;

    fn rsa_key(name: &str) -> PrivateKey {
        let pkey = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        PrivateKey::from_bytes(&pkey.private_key_to_pem_pkcs8().unwrap(), name)
            .unwrap()
            .remove(0)
    }

    fn ec_key(name: &str, nid: Nid) -> PrivateKey {
        let group = EcGroup::from_curve_name(nid).unwrap();
        let pkey = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        PrivateKey::from_bytes(&pkey.private_key_to_pem_pkcs8().unwrap(), name)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn round_trip_many_recipients() {
        let r1 = rsa_key("r1");
        let r2 = rsa_key("r2");
        let e1 = ec_key("e1", Nid::X9_62_PRIME256V1);
        let e2 = ec_key("e2", Nid::SECP384R1);
        let publics: Vec<PublicKey> = [&r1, &r2, &e1, &e2]
            .iter()
            .map(|k| k.public_key().unwrap())
            .collect();
        let jwe = encrypt(b"{\"symkey\":\"x\"}", &publics).unwrap();
        let json: Value = serde_json::from_slice(&jwe).unwrap();
        assert_eq!(json["recipients"].as_array().unwrap().len(), 4);
        assert_eq!(json["recipients"][0]["header"]["alg"], "RSA-OAEP");
        assert_eq!(json["recipients"][2]["header"]["alg"], "ECDH-ES+A256KW");
        // Each key finds its own recipient, even behind another of the same algorithm.
        for key in [&r1, &r2, &e1, &e2] {
            assert_eq!(&decrypt(&jwe, key).unwrap()[..], b"{\"symkey\":\"x\"}");
        }
        let stranger = rsa_key("stranger");
        let err = decrypt(&jwe, &stranger).unwrap_err().to_string();
        assert!(
            err.contains("recipient 0: RSA-OAEP: not decryptable"),
            "{err}"
        );
        assert!(
            err.contains("recipient 2: ECDH-ES+A256KW needs an EC key"),
            "{err}"
        );
    }

    #[test]
    fn reads_the_flattened_form_go_jose_writes() {
        // go-jose, one recipient: all parameters in the protected header, no "recipients".
        let key = ec_key("e", Nid::X9_62_PRIME256V1);
        let jwe = encrypt(b"payload", &[key.public_key().unwrap()]).unwrap();
        let general: Map<String, Value> = serde_json::from_slice(&jwe).unwrap();
        let mut flat = general.clone();
        let recipient = flat.remove("recipients").unwrap()[0].clone();
        flat.insert("header".into(), recipient["header"].clone());
        flat.insert("encrypted_key".into(), recipient["encrypted_key"].clone());
        let flat = serde_json::to_vec(&flat).unwrap();
        assert_eq!(&decrypt(&flat, &key).unwrap()[..], b"payload");
    }

    #[test]
    fn rsa_oaep_256_with_a_jwk_key() {
        // The alg ocicrypt uses when handed an RSA JWK that says RSA-OAEP-256.
        let jwk = josekit::jwk::Jwk::generate_rsa_key(2048).unwrap();
        let key = PrivateKey::from_bytes(jwk.to_string().as_bytes(), "key.jwk")
            .unwrap()
            .remove(0);
        let encrypter = RSA_OAEP_256
            .encrypter_from_jwk(&jwk.to_public_key().unwrap())
            .unwrap();
        let mut header = JweHeaderSet::new();
        header.set_content_encryption("A256GCM", true);
        let jwe =
            josekit::jwe::serialize_flattened_json(b"opts", Some(&header), None, None, &encrypter)
                .unwrap();
        assert_eq!(&decrypt(jwe.as_bytes(), &key).unwrap()[..], b"opts");
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let key = ec_key("e", Nid::X9_62_PRIME256V1);
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"recipients\":[],\"iv\":\"\",\"ciphertext\":\"\",\"tag\":\"\"}",
            b"{\"protected\":\"eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00ifQ\",\"encrypted_key\":\"AAAA\",\"iv\":\"AAAA\",\"ciphertext\":\"AAAA\",\"tag\":\"AAAA\"}",
            b"{\"protected\":\"eyJhbGciOiJFQ0RILUVTIiwiZW5jIjoiQTI1NkdDTSJ9\",\"iv\":\"AAAA\",\"ciphertext\":\"AAAA\",\"tag\":\"AAAA\"}",
            b"{\"protected\":\"%%%\",\"iv\":\"AAAA\",\"ciphertext\":\"AAAA\",\"tag\":\"AAAA\"}",
        ] {
            assert!(decrypt(bad, &key).is_err());
        }
        let rsa = rsa_key("r");
        let rsa15 = b"{\"protected\":\"eyJhbGciOiJSU0ExXzUiLCJlbmMiOiJBMjU2R0NNIn0\",\"encrypted_key\":\"AAAA\",\"iv\":\"AAAA\",\"ciphertext\":\"AAAA\",\"tag\":\"AAAA\"}";
        let err = decrypt(rsa15, &rsa).unwrap_err().to_string();
        assert!(err.contains("RSA1_5 is refused"), "{err}");
    }
}
