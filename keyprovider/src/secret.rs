//! Byte strings as ocicrypt writes them in JSON, and secret bytes that wipe themselves.
//!
//! ocicrypt is written in Go, whose `encoding/json` writes every `[]byte` as a JSON string
//! in standard base64 with padding (`null` for a nil slice). [`SecretBytes`] holds key
//! material: it is zeroized when dropped and its `Debug` output shows only its length.
//! The `b64*` modules are serde adapters for plain (non-secret) byte fields and maps.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Standard base64; padding is written, and accepted whether present or not when read.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes bytes as standard padded base64 (Go's `base64.StdEncoding`).
pub fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64 (padding optional).
pub fn b64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    LENIENT.decode(text.trim())
}

/// Bytes that are key material: zeroized on drop, never shown by `Debug`, compared in
/// constant time (for equal lengths).
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && openssl::memcmp::eq(&self.0, &other.0)
    }
}

impl Eq for SecretBytes {}

impl SecretBytes {
    /// Takes ownership of `bytes` (they are wiped when this value is dropped).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes themselves. Do not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(b64_encode(&self.0));
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(BytesVisitor)
            .map(|bytes| Self::new(bytes.unwrap_or_default()))
    }
}

/// Reads a base64 string (or `null`, as Go writes a nil slice) into bytes.
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a standard base64 string or null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        // The message names the problem, never the (possibly secret) text.
        b64_decode(v)
            .map(Some)
            .map_err(|e| E::custom(format!("invalid base64 ({e})")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Serde adapter for a `Vec<u8>` field written as base64 (`null` reads as empty).
pub mod b64 {
    use super::*;

    /// Writes `bytes` as a standard padded base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&b64_encode(bytes))
    }

    /// Reads a base64 string or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer
            .deserialize_any(BytesVisitor)
            .map(Option::unwrap_or_default)
    }
}

/// Serde adapter for a map whose values are base64 byte strings (`null` map reads as empty).
pub mod b64_map {
    use std::collections::BTreeMap;

    use super::*;

    /// Writes each value as a standard padded base64 string (keys sorted, as Go writes maps).
    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for (key, value) in map {
            out.serialize_entry(key, &b64_encode(value))?;
        }
        out.end()
    }

    /// Reads a map of base64 strings, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Value(#[serde(with = "super::b64")] Vec<u8>);
        let map: Option<BTreeMap<String, Value>> = Option::deserialize(deserializer)?;
        Ok(map
            .unwrap_or_default()
            .into_iter()
            .map(|(k, Value(v))| (k, v))
            .collect())
    }
}

/// Serde adapter for a map of secret values (`null` map reads as empty).
pub mod secret_map {
    use std::collections::BTreeMap;

    use super::*;

    /// Writes the map (each value as base64).
    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, SecretBytes>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        map.serialize(serializer)
    }

    /// Reads a map of base64 strings, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, SecretBytes>, D::Error> {
        let map: Option<BTreeMap<String, SecretBytes>> = Option::deserialize(deserializer)?;
        Ok(map.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_bytes() {
        let s = SecretBytes::new(vec![0xAB; 32]);
        let shown = format!("{s:?}");
        assert_eq!(shown, "<redacted 32 bytes>");
    }

    #[test]
    fn base64_padding_optional_on_read() {
        assert_eq!(b64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(b64_decode("YWI").unwrap(), b"ab");
        assert!(b64_decode("YW*").is_err());
        assert_eq!(b64_encode(b"ab"), "YWI=");
    }

    #[test]
    fn secret_round_trips_and_null_is_empty() {
        let s: SecretBytes = serde_json::from_str("\"AAEC\"").unwrap();
        assert_eq!(s.expose(), &[0, 1, 2]);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"AAEC\"");
        let n: SecretBytes = serde_json::from_str("null").unwrap();
        assert!(n.is_empty());
    }
}
