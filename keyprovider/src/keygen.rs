//! New key material for encrypting images: a 32-byte KEK for CoCo attestation-agent
//! recipients (`veil convert --kbs-kid … --kek-file`) and RSA or EC key pairs for JWE
//! recipients (`--recipient jwe:PUB.pem`, the private half in the guest's keys directory).
//!
//! Keys come from OpenSSL's CSPRNG. Private keys are PKCS#8 PEM (what skopeo, ocicrypt and
//! [`crate::keys`] read), public keys SubjectPublicKeyInfo PEM. The private bytes are
//! returned in zeroizing buffers; writing them to files is the caller's job.

use std::fmt;

use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// The length of a KEK: AES-256.
pub const KEK_LEN: usize = 32;

/// A kind of key pair for JWE recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairKind {
    /// RSA with this many bits (RSA-OAEP recipients); at least 2048.
    Rsa(u32),
    /// EC on NIST P-256 (ECDH-ES+A256KW recipients).
    P256,
    /// EC on NIST P-384.
    P384,
    /// EC on NIST P-521.
    P521,
}

impl fmt::Display for PairKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairKind::Rsa(bits) => write!(f, "RSA {bits}"),
            PairKind::P256 => f.write_str("EC P-256"),
            PairKind::P384 => f.write_str("EC P-384"),
            PairKind::P521 => f.write_str("EC P-521"),
        }
    }
}

/// Why key material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// An RSA size that is too small or not a multiple of 8.
    #[error("RSA key size {0} bits: use at least 2048, a multiple of 8 (3072 is the default)")]
    RsaBits(u32),
    /// OpenSSL failed.
    #[error("generating a {kind} key: {source}")]
    OpenSsl {
        /// The key being made.
        kind: String,
        /// OpenSSL's error stack.
        source: openssl::error::ErrorStack,
    },
}

/// A fresh key pair in PEM.
pub struct KeyPair {
    /// The private key, PKCS#8 PEM.
    pub private_pem: Zeroizing<Vec<u8>>,
    /// The public key, SubjectPublicKeyInfo PEM.
    pub public_pem: Vec<u8>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("private_pem", &"<redacted>")
            .field("public_pem", &String::from_utf8_lossy(&self.public_pem))
            .finish()
    }
}

/// 32 random bytes for a KEK.
pub fn generate_kek() -> Result<SecretBytes, KeygenError> {
    let mut kek = Zeroizing::new(vec![0u8; KEK_LEN]);
    openssl::rand::rand_priv_bytes(&mut kek).map_err(|source| KeygenError::OpenSsl {
        kind: "KEK".into(),
        source,
    })?;
    Ok(SecretBytes::new(std::mem::take(&mut *kek)))
}

/// A fresh key pair of `kind`.
pub fn generate_pair(kind: PairKind) -> Result<KeyPair, KeygenError> {
    let err = |source| KeygenError::OpenSsl {
        kind: kind.to_string(),
        source,
    };
    let key: PKey<Private> = match kind {
        PairKind::Rsa(bits) => {
            if bits < 2048 || bits % 8 != 0 {
                return Err(KeygenError::RsaBits(bits));
            }
            PKey::from_rsa(Rsa::generate(bits).map_err(err)?).map_err(err)?
        }
        PairKind::P256 | PairKind::P384 | PairKind::P521 => {
            let nid = match kind {
                PairKind::P256 => Nid::X9_62_PRIME256V1,
                PairKind::P384 => Nid::SECP384R1,
                _ => Nid::SECP521R1,
            };
            let group = EcGroup::from_curve_name(nid).map_err(err)?;
            PKey::from_ec_key(EcKey::generate(&group).map_err(err)?).map_err(err)?
        }
    };
    Ok(KeyPair {
        private_pem: Zeroizing::new(key.private_key_to_pem_pkcs8().map_err(err)?),
        public_pem: key.public_key_to_pem().map_err(err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyKind, PrivateKey, PublicKey};

    #[test]
    fn keks_are_32_fresh_bytes() {
        let (a, b) = (generate_kek().unwrap(), generate_kek().unwrap());
        assert_eq!(a.len(), KEK_LEN);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn pairs_load_as_veil_keys_and_wrap_and_unwrap() {
        for kind in [PairKind::Rsa(2048), PairKind::P256, PairKind::P384] {
            let pair = generate_pair(kind).unwrap();
            assert!(pair.private_pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
            assert!(pair.public_pem.starts_with(b"-----BEGIN PUBLIC KEY-----"));
            let private = PrivateKey::from_bytes(&pair.private_pem, "gen.pem").unwrap();
            assert_eq!(private.len(), 1, "{kind}");
            let public = PublicKey::from_bytes(&pair.public_pem, "gen.pub.pem").unwrap();
            let expected = match kind {
                PairKind::Rsa(bits) => KeyKind::Rsa { bits },
                PairKind::P256 => KeyKind::Ec { curve: "P-256" },
                PairKind::P384 => KeyKind::Ec { curve: "P-384" },
                PairKind::P521 => KeyKind::Ec { curve: "P-521" },
            };
            assert_eq!(public.kind(), &expected);
            assert_eq!(private[0].kind(), &expected);
            let wrapped = crate::jwe::encrypt(b"layer options", &[public]).unwrap();
            let opened = crate::jwe::decrypt(&wrapped, &private[0]).unwrap();
            assert_eq!(&opened[..], b"layer options", "{kind}");
        }
    }

    #[test]
    fn small_rsa_is_refused_with_the_reason() {
        let err = generate_pair(PairKind::Rsa(1024)).unwrap_err();
        assert!(err.to_string().contains("at least 2048"), "{err}");
        assert!(format!("{:?}", generate_pair(PairKind::P256).unwrap()).contains("<redacted>"));
    }
}
