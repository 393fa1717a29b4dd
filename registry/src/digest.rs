//! Content digests (`algorithm:hex`, as OCI writes them): parsing, computing and checking.
//!
//! Registries name every manifest and blob by the digest of its bytes. The client checks
//! what it fetched whole against the digest it asked for; partial reads cannot be checked
//! here (the layer's TOC does that further up).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The hash functions OCI registers for digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// SHA-256, 64 hex digits (what every registry uses).
    Sha256,
    /// SHA-512, 128 hex digits.
    Sha512,
}

impl DigestAlgorithm {
    /// The name written before the colon.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

/// A validated digest such as `sha256:e3b0c442...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

/// A string that is not a digest Veil can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Digest {
    /// Parses `algorithm:hex`; only `sha256` and `sha512` with lowercase hex of the right
    /// length are accepted.
    pub fn parse(input: &str) -> Result<Self, DigestError> {
        let fail = |reason: String| DigestError {
            input: input.to_string(),
            reason,
        };
        let (algorithm, hex) = input
            .split_once(':')
            .ok_or_else(|| fail("expected algorithm:hex".into()))?;
        let algorithm = match algorithm {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            other => return Err(fail(format!("unsupported algorithm {other:?}"))),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(fail(format!(
                "{} needs {} hex digits, got {}",
                algorithm.name(),
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(fail("the hex part must be lowercase hexadecimal".into()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The SHA-256 digest whose hash (from a hasher fed piece by piece) is `hash`.
    pub fn from_sha256_hash(hash: [u8; 32]) -> Self {
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(hash),
        }
    }

    /// The digest of `bytes` computed with `algorithm`.
    pub fn compute(algorithm: DigestAlgorithm, bytes: &[u8]) -> Self {
        let hex = match algorithm {
            DigestAlgorithm::Sha256 => hex::encode(Sha256::digest(bytes)),
            DigestAlgorithm::Sha512 => hex::encode(Sha512::digest(bytes)),
        };
        Digest { algorithm, hex }
    }

    /// The hash function.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The hex part, after the colon.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Checks `bytes` against this digest; on mismatch returns the digest they do have
    /// (computed with the same algorithm).
    pub fn verify(&self, bytes: &[u8]) -> Result<(), Digest> {
        let actual = Digest::compute(self.algorithm, bytes);
        if actual == *self {
            Ok(())
        } else {
            Err(actual)
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn verifies() {
        let d = Digest::parse(EMPTY).unwrap();
        assert!(d.verify(b"").is_ok());
        let other = d.verify(b"x").unwrap_err();
        assert_eq!(other, Digest::sha256_of(b"x"));
        let s512 = Digest::compute(DigestAlgorithm::Sha512, b"abc");
        assert!(Digest::parse(&s512.to_string())
            .unwrap()
            .verify(b"abc")
            .is_ok());
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "md5:abcd",
            "sha256:ABC",
            &EMPTY.to_uppercase(),
            &format!("{EMPTY}0"),
            "sha256:zz3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
