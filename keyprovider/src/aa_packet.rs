//! CoCo attestation-agent annotation packets: the payload of the
//! `org.opencontainers.image.enc.keys.provider.attestation-agent` recipient (PROTOCOLS.md §3.1).
//!
//! coco_keyprovider wraps a layer's private options JSON with a 32-byte key-encryption key
//! (KEK) held by a KBS and names that KEK by `kid` (a KBS resource URI such as
//! `kbs:///default/image_key/nginx`). The packet is JSON:
//!
//! - v1 (coco_keyprovider, cc_kbc): `{"kid","wrapped_data","iv","wrap_type"}`;
//! - v2 (Confidential Data Hub): `{"version":"0.1.0","kid","wrapped_data","provider":"kbs",
//!   "iv","wrap_type","provider_settings":{},"annotations":{}}`; `version` defaults to
//!   `0.1.0` and `provider` to `kbs`, so every v1 packet is also a valid v2 packet.
//!
//! `wrapped_data` and `iv` are standard padded base64. `wrap_type` `A256GCM`: AES-256-GCM,
//! 12-byte IV, no AAD, the 16-byte tag appended to the ciphertext (RustCrypto's
//! `Aead::encrypt` layout). `A256CTR`: AES-256-CTR with a 16-byte initial counter block and
//! no integrity (read for compatibility; never written). Only the `kbs` provider is
//! supported: other providers name a cloud KMS plugin of CDH.
//!
//! [`AnnotationPacket::wrap`] writes exactly what coco_keyprovider writes (same keys in the
//! same order, same encodings), for tests and `veil convert`. Errors never contain the KEK
//! or the unwrapped bytes; GCM failures say only that authentication failed.

use std::fmt;

use openssl::symm::{decrypt, decrypt_aead, encrypt_aead, Cipher};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::secret::{b64_decode, b64_encode, SecretBytes};

/// The annotation scheme of attestation-agent recipients (after `...enc.keys.`).
pub const SCHEME: &str = "provider.attestation-agent";
/// `wrap_type` of AES-256-GCM (the only one coco_keyprovider really writes).
pub const WRAP_A256GCM: &str = "A256GCM";
/// `wrap_type` of AES-256-CTR (no integrity; read only).
pub const WRAP_A256CTR: &str = "A256CTR";
/// The only v2 packet version defined.
pub const V2_VERSION: &str = "0.1.0";
/// The only v2 provider Veil supports: the KEK is a KBS resource.
pub const PROVIDER_KBS: &str = "kbs";
/// KEK length (AES-256).
pub const KEK_LEN: usize = 32;
/// AES-GCM IV length.
pub const GCM_IV_LEN: usize = 12;
/// AES-GCM tag length (appended to the ciphertext).
pub const GCM_TAG_LEN: usize = 16;
/// AES-CTR IV (initial counter block) length.
pub const CTR_IV_LEN: usize = 16;
/// Packets larger than this are refused (a wrapped private options JSON is < 2 KiB).
const MAX_PACKET: usize = 64 * 1024;

/// A packet that cannot be read, wrapped or unwrapped. Never holds key or plaintext bytes.
#[derive(Debug, Error)]
pub enum AaPacketError {
    /// Not a packet (JSON shape, base64, size).
    #[error("malformed attestation-agent annotation packet: {0}")]
    Malformed(String),
    /// A v2 packet of a version other than 0.1.0.
    #[error("annotation packet version {0:?} is not supported (only {V2_VERSION})")]
    UnsupportedVersion(String),
    /// A v2 packet whose KEK is held by a KMS rather than a KBS.
    #[error("annotation packet provider {0:?} is not supported (only {PROVIDER_KBS:?}; other providers are CDH KMS plugins)")]
    UnsupportedProvider(String),
    /// A wrap type other than A256GCM / A256CTR.
    #[error("annotation packet wrap_type {0:?} is not supported (A256GCM, A256CTR)")]
    UnsupportedWrapType(String),
    /// The KEK is not 32 bytes (its length only is shown).
    #[error("the KEK for {kid} is {len} bytes, expected {KEK_LEN}")]
    KekLength {
        /// The packet's kid.
        kid: String,
        /// The length of the KEK given.
        len: usize,
    },
    /// The IV is not the length the wrap type needs.
    #[error("annotation packet iv is {actual} bytes, {wrap_type} needs {expected}")]
    IvLength {
        /// The wrap type.
        wrap_type: String,
        /// The IV's length.
        actual: usize,
        /// The length needed.
        expected: usize,
    },
    /// GCM authentication failed: wrong KEK, or a tampered packet.
    #[error("unwrapping with the KEK for {kid} failed: AES-256-GCM authentication failed (wrong KEK or tampered packet)")]
    Authentication {
        /// The packet's kid.
        kid: String,
    },
    /// OpenSSL failed for another reason.
    #[error("AES operation failed: {0}")]
    Crypto(String),
}

/// Which packet format was read (and is written back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketVersion {
    /// coco_keyprovider's `{"kid","wrapped_data","iv","wrap_type"}`.
    V1,
    /// CDH's versioned packet with `provider`, `provider_settings` and `annotations`.
    V2,
}

/// One attestation-agent annotation packet. `Debug` shows the kid and wrap type only.
#[derive(Clone, PartialEq, Eq)]
pub struct AnnotationPacket {
    /// Format read (or to write).
    pub format: PacketVersion,
    /// The KEK's id: a KBS resource URI (`kbs:///repo/type/tag`).
    pub kid: String,
    /// Ciphertext (with the GCM tag appended for A256GCM).
    pub wrapped_data: Vec<u8>,
    /// IV: 12 bytes (A256GCM) or 16 bytes (A256CTR).
    pub iv: Vec<u8>,
    /// `A256GCM` or `A256CTR`.
    pub wrap_type: String,
    /// v2 `provider_settings` (kept as read).
    pub provider_settings: Map<String, Value>,
    /// v2 `annotations` (kept as read).
    pub annotations: Map<String, Value>,
}

impl fmt::Debug for AnnotationPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnnotationPacket")
            .field("format", &self.format)
            .field("kid", &self.kid)
            .field("wrap_type", &self.wrap_type)
            .field("wrapped_len", &self.wrapped_data.len())
            .finish()
    }
}

/// The JSON of a v1 packet, in coco_keyprovider's field order.
#[derive(Serialize)]
struct V1Json<'a> {
    kid: &'a str,
    wrapped_data: String,
    iv: String,
    wrap_type: &'a str,
}

/// The JSON of a v2 packet, in CDH's field order.
#[derive(Serialize)]
struct V2Json<'a> {
    version: &'a str,
    kid: &'a str,
    wrapped_data: String,
    provider: &'a str,
    iv: String,
    wrap_type: &'a str,
    provider_settings: &'a Map<String, Value>,
    annotations: &'a Map<String, Value>,
}

/// What is read: the union of v1 and v2 (as CDH reads every packet as v2).
#[derive(Deserialize)]
struct AnyJson {
    version: Option<String>,
    kid: String,
    wrapped_data: String,
    provider: Option<String>,
    iv: Option<String>,
    wrap_type: Option<String>,
    #[serde(default)]
    provider_settings: Option<Map<String, Value>>,
    #[serde(default)]
    annotations: Option<Map<String, Value>>,
}

impl AnnotationPacket {
    /// Parses a packet (the base64-decoded annotation entry), v1 or v2.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AaPacketError> {
        if bytes.len() > MAX_PACKET {
            return Err(AaPacketError::Malformed(format!(
                "{} bytes, more than the {MAX_PACKET} accepted",
                bytes.len()
            )));
        }
        let any: AnyJson = serde_json::from_slice(bytes)
            .map_err(|e| AaPacketError::Malformed(format!("not a packet JSON ({e})")))?;
        let v2 = any.version.is_some()
            || any.provider.is_some()
            || any.provider_settings.is_some()
            || any.annotations.is_some();
        if let Some(version) = &any.version {
            if version != V2_VERSION {
                return Err(AaPacketError::UnsupportedVersion(version.clone()));
            }
        }
        if let Some(provider) = &any.provider {
            if provider != PROVIDER_KBS {
                return Err(AaPacketError::UnsupportedProvider(provider.clone()));
            }
        }
        let iv = any
            .iv
            .ok_or_else(|| AaPacketError::Malformed("no \"iv\"".into()))?;
        let wrap_type = any
            .wrap_type
            .ok_or_else(|| AaPacketError::Malformed("no \"wrap_type\"".into()))?;
        let decode = |field: &str, text: &str| {
            b64_decode(text)
                .map_err(|e| AaPacketError::Malformed(format!("{field} is not base64 ({e})")))
        };
        let packet = Self {
            format: if v2 {
                PacketVersion::V2
            } else {
                PacketVersion::V1
            },
            kid: any.kid,
            wrapped_data: decode("wrapped_data", &any.wrapped_data)?,
            iv: decode("iv", &iv)?,
            wrap_type,
            provider_settings: any.provider_settings.unwrap_or_default(),
            annotations: any.annotations.unwrap_or_default(),
        };
        packet.check_shape()?;
        Ok(packet)
    }

    /// The packet JSON, in the format it was read in (v1: coco_keyprovider's bytes).
    pub fn to_json(&self) -> Vec<u8> {
        let wrapped_data = b64_encode(&self.wrapped_data);
        let iv = b64_encode(&self.iv);
        match self.format {
            PacketVersion::V1 => serde_json::to_vec(&V1Json {
                kid: &self.kid,
                wrapped_data,
                iv,
                wrap_type: &self.wrap_type,
            }),
            PacketVersion::V2 => serde_json::to_vec(&V2Json {
                version: V2_VERSION,
                kid: &self.kid,
                wrapped_data,
                provider: PROVIDER_KBS,
                iv,
                wrap_type: &self.wrap_type,
                provider_settings: &self.provider_settings,
                annotations: &self.annotations,
            }),
        }
        .expect("a packet always serializes")
    }

    /// Wraps `plaintext` (a private options JSON) with `kek` under `kid` as
    /// coco_keyprovider does: AES-256-GCM, a fresh random 12-byte IV, no AAD, tag appended;
    /// a v1 packet.
    pub fn wrap(kid: &str, kek: &SecretBytes, plaintext: &[u8]) -> Result<Self, AaPacketError> {
        let mut iv = [0u8; GCM_IV_LEN];
        openssl::rand::rand_bytes(&mut iv).map_err(|e| AaPacketError::Crypto(e.to_string()))?;
        Self::wrap_with_iv(kid, kek, &iv, plaintext)
    }

    /// [`AnnotationPacket::wrap`] with a given IV (for test vectors; never reuse an IV
    /// with the same KEK).
    pub fn wrap_with_iv(
        kid: &str,
        kek: &SecretBytes,
        iv: &[u8; GCM_IV_LEN],
        plaintext: &[u8],
    ) -> Result<Self, AaPacketError> {
        let key = kek_bytes(kid, kek)?;
        let mut tag = [0u8; GCM_TAG_LEN];
        let mut wrapped = encrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(iv),
            &[],
            plaintext,
            &mut tag,
        )
        .map_err(|e| AaPacketError::Crypto(e.to_string()))?;
        wrapped.extend_from_slice(&tag);
        Ok(Self {
            format: PacketVersion::V1,
            kid: kid.to_string(),
            wrapped_data: wrapped,
            iv: iv.to_vec(),
            wrap_type: WRAP_A256GCM.to_string(),
            provider_settings: Map::new(),
            annotations: Map::new(),
        })
    }

    /// Unwraps the packet with `kek`; the plaintext comes back in a buffer wiped on drop.
    pub fn unwrap(&self, kek: &SecretBytes) -> Result<Zeroizing<Vec<u8>>, AaPacketError> {
        self.check_shape()?;
        let key = kek_bytes(&self.kid, kek)?;
        match self.wrap_type.as_str() {
            WRAP_A256GCM => {
                let split = self.wrapped_data.len() - GCM_TAG_LEN;
                let (ciphertext, tag) = self.wrapped_data.split_at(split);
                decrypt_aead(
                    Cipher::aes_256_gcm(),
                    key,
                    Some(&self.iv),
                    &[],
                    ciphertext,
                    tag,
                )
                .map(Zeroizing::new)
                .map_err(|_| AaPacketError::Authentication {
                    kid: self.kid.clone(),
                })
            }
            _ => decrypt(
                Cipher::aes_256_ctr(),
                key,
                Some(&self.iv),
                &self.wrapped_data,
            )
            .map(Zeroizing::new)
            .map_err(|e| AaPacketError::Crypto(e.to_string())),
        }
    }

    /// Wrap type known, IV of the right length, room for a GCM tag.
    fn check_shape(&self) -> Result<(), AaPacketError> {
        let expected = match self.wrap_type.as_str() {
            WRAP_A256GCM => GCM_IV_LEN,
            WRAP_A256CTR => CTR_IV_LEN,
            other => return Err(AaPacketError::UnsupportedWrapType(other.to_string())),
        };
        if self.iv.len() != expected {
            return Err(AaPacketError::IvLength {
                wrap_type: self.wrap_type.clone(),
                actual: self.iv.len(),
                expected,
            });
        }
        if self.wrap_type == WRAP_A256GCM && self.wrapped_data.len() < GCM_TAG_LEN {
            return Err(AaPacketError::Malformed(format!(
                "wrapped_data is {} bytes, shorter than the {GCM_TAG_LEN}-byte GCM tag",
                self.wrapped_data.len()
            )));
        }
        Ok(())
    }
}

fn kek_bytes<'a>(kid: &str, kek: &'a SecretBytes) -> Result<&'a [u8], AaPacketError> {
    if kek.len() != KEK_LEN {
        return Err(AaPacketError::KekLength {
            kid: kid.to_string(),
            len: kek.len(),
        });
    }
    Ok(kek.expose())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocicrypt::PrivateLayerBlockCipherOptions;

    /// The public sample KEK of coco_keyprovider `sample=true` and sample_kbc (PROTOCOLS §3.4).
    const SAMPLE_KEK: [u8; 32] = [
        217, 155, 119, 5, 176, 186, 122, 22, 130, 149, 179, 163, 54, 114, 112, 176, 221, 155, 55,
        27, 245, 20, 202, 139, 155, 167, 240, 163, 55, 17, 218, 234,
    ];

    /// guest-components `ocicrypt-rs/data/sample_kbc_annotation.json`, verbatim (tabs and all).
    const SAMPLE_PACKET: &str = "{\n\t\"kid\": \"kbs:///default/key/1\",\n\t\"wrapped_data\": \"KxAFgXwa0y72Xdygub9lF00RVMtSRbYzvakIEASgi3Gvt1wGLkhKPXf0S033Jdi6vAN6zBM7d0xZSDo2JCeew0FeKwTYgdJfdcPhuEpZOpjhwIsidyeiunzp0J/crvI1tSPZJw4DPHZN2eQtg71rDzIbuDM5ATheiDM9/YJv+k+n6Nv6/pRb8qynNzbWFz7Q8wEo1ZZlL6UftOBJ6j9GuEOTM2k/B+5sMA2VhGHSzDsKA1mn0qzcn2HJg4GcmxwDpJwzm5n7B4iIJ3A0umrQAjQ=\",\n\t\"iv\": \"3PQMqtjbR4hxCr83\",\n\t\"wrap_type\": \"A256GCM\"\n}\n";

    /// What it decrypts to (PROTOCOLS §1.3).
    const SAMPLE_PRIVATE: &str = r#"{"symkey":"1jL2jJV0Oyz2nmPkLtqulW6cKcpIUN5FpILcVnP5Uqs=","digest":"sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7","cipheroptions":{"nonce":"r10F9oaCu+nWFXfod3l83g=="}}"#;

    fn sample_kek() -> SecretBytes {
        SecretBytes::new(SAMPLE_KEK.to_vec())
    }

    #[test]
    fn public_test_vector_unwraps() {
        let packet = AnnotationPacket::from_json(SAMPLE_PACKET.as_bytes()).unwrap();
        assert_eq!(packet.format, PacketVersion::V1);
        assert_eq!(packet.kid, "kbs:///default/key/1");
        assert_eq!(packet.iv.len(), 12);
        let plain = packet.unwrap(&sample_kek()).unwrap();
        assert_eq!(std::str::from_utf8(&plain).unwrap(), SAMPLE_PRIVATE);
        let options = PrivateLayerBlockCipherOptions::from_json(&plain).unwrap();
        assert_eq!(options.symkey.len(), 32);

        // Wrapping the same plaintext with the same IV gives the vector's bytes back.
        let iv: [u8; 12] = packet.iv.clone().try_into().unwrap();
        let again = AnnotationPacket::wrap_with_iv(
            "kbs:///default/key/1",
            &sample_kek(),
            &iv,
            SAMPLE_PRIVATE.as_bytes(),
        )
        .unwrap();
        assert_eq!(again, packet);
        // The JSON coco_keyprovider writes: same keys, same order, compact.
        let expected: String = SAMPLE_PACKET
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>();
        assert_eq!(String::from_utf8(again.to_json()).unwrap(), expected);
    }

    #[test]
    fn wrong_key_or_tampering_fails_authentication() {
        let packet = AnnotationPacket::from_json(SAMPLE_PACKET.as_bytes()).unwrap();
        let mut kek = SAMPLE_KEK;
        kek[0] ^= 1;
        let err = packet.unwrap(&SecretBytes::new(kek.to_vec())).unwrap_err();
        assert!(matches!(err, AaPacketError::Authentication { .. }), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("kbs:///default/key/1"), "{shown}");
        assert!(!shown.contains(&b64_encode(&SAMPLE_KEK)), "{shown}");
        assert!(!shown.contains("217, 155"), "{shown}");

        let mut tampered = packet.clone();
        let last = tampered.wrapped_data.len() - 1;
        tampered.wrapped_data[last] ^= 0x80;
        assert!(matches!(
            tampered.unwrap(&sample_kek()),
            Err(AaPacketError::Authentication { .. })
        ));
        let err = packet
            .unwrap(&SecretBytes::new(vec![1; 16]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("16 bytes, expected 32"), "{err}");
    }

    #[test]
    fn v2_packets_and_ctr() {
        let kek = SecretBytes::new(vec![7; 32]);
        let packet = AnnotationPacket::wrap("kbs:///default/image_key/x", &kek, b"opts").unwrap();
        let mut v2 = packet.clone();
        v2.format = PacketVersion::V2;
        let json = String::from_utf8(v2.to_json()).unwrap();
        assert!(
            json.starts_with(
                "{\"version\":\"0.1.0\",\"kid\":\"kbs:///default/image_key/x\",\"wrapped_data\":"
            ),
            "{json}"
        );
        assert!(json.contains("\"provider\":\"kbs\""), "{json}");
        let back = AnnotationPacket::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, v2);
        assert_eq!(&back.unwrap(&kek).unwrap()[..], b"opts");

        // A v2 packet with only the v2 defaults left out reads as v2 all the same.
        let minimal = format!(
            "{{\"kid\":\"k\",\"wrapped_data\":\"{}\",\"iv\":\"{}\",\"wrap_type\":\"A256GCM\",\"annotations\":{{}}}}",
            b64_encode(&packet.wrapped_data),
            b64_encode(&packet.iv)
        );
        assert_eq!(
            AnnotationPacket::from_json(minimal.as_bytes())
                .unwrap()
                .format,
            PacketVersion::V2
        );

        let kms = json.replace("\"provider\":\"kbs\"", "\"provider\":\"aliyun\"");
        assert!(matches!(
            AnnotationPacket::from_json(kms.as_bytes()),
            Err(AaPacketError::UnsupportedProvider(p)) if p == "aliyun"
        ));
        let later = json.replace("0.1.0", "0.2.0");
        assert!(matches!(
            AnnotationPacket::from_json(later.as_bytes()),
            Err(AaPacketError::UnsupportedVersion(_))
        ));

        // A256CTR (read only): a 16-byte counter block, no integrity.
        let iv = [9u8; 16];
        let wrapped =
            openssl::symm::encrypt(Cipher::aes_256_ctr(), kek.expose(), Some(&iv), b"ctr opts")
                .unwrap();
        let ctr = format!(
            "{{\"kid\":\"k\",\"wrapped_data\":\"{}\",\"iv\":\"{}\",\"wrap_type\":\"A256CTR\"}}",
            b64_encode(&wrapped),
            b64_encode(&iv)
        );
        let ctr = AnnotationPacket::from_json(ctr.as_bytes()).unwrap();
        assert_eq!(&ctr.unwrap(&kek).unwrap()[..], b"ctr opts");
    }

    #[test]
    fn malformed_packets_are_errors() {
        for (bad, needle) in [
            (&b"nope"[..], "not a packet JSON"),
            (b"{\"kid\":\"k\",\"wrapped_data\":\"AA==\",\"iv\":\"AA==\"}", "wrap_type"),
            (
                b"{\"kid\":\"k\",\"wrapped_data\":\"AA==\",\"iv\":\"AA==\",\"wrap_type\":\"A128KW\"}",
                "A128KW",
            ),
            (
                b"{\"kid\":\"k\",\"wrapped_data\":\"AA==\",\"iv\":\"AA==\",\"wrap_type\":\"A256GCM\"}",
                "iv is 1 bytes",
            ),
            (
                b"{\"kid\":\"k\",\"wrapped_data\":\"AA==\",\"iv\":\"AAAAAAAAAAAAAAAA\",\"wrap_type\":\"A256GCM\"}",
                "shorter than the 16-byte GCM tag",
            ),
            (
                b"{\"kid\":\"k\",\"wrapped_data\":\"*\",\"iv\":\"AAAAAAAAAAAAAAAA\",\"wrap_type\":\"A256GCM\"}",
                "wrapped_data is not base64",
            ),
        ] {
            let err = AnnotationPacket::from_json(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        let packet = AnnotationPacket::from_json(SAMPLE_PACKET.as_bytes()).unwrap();
        let shown = format!("{packet:?}");
        assert!(shown.contains("kbs:///default/key/1") && !shown.contains("KxAF"));
    }
}
