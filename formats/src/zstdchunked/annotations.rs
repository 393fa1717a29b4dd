//! The zstd:chunked layer-descriptor annotations: where the TOC is and its checksum.

use std::fmt;

use super::{
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION, LEGACY_MANIFEST_POSITION_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION, MANIFEST_POSITION_ANNOTATION,
};
use crate::codec::parse_sha256;
use crate::estargz::FormatError;

/// Where the compressed TOC lies: `offset:compressedLen:uncompressedLen:type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestPosition {
    /// Blob offset of the compressed TOC (after its skippable frame header).
    pub offset: u64,
    /// Compressed length.
    pub compressed_len: u64,
    /// Uncompressed length.
    pub uncompressed_len: u64,
    /// Manifest type; 1 (CRFS JSON) is the only one defined.
    pub manifest_type: u64,
}

impl ManifestPosition {
    /// Parse an annotation value; `key` names the annotation in errors.
    pub fn parse(key: &'static str, value: &str) -> Result<Self, FormatError> {
        let bad = |reason| FormatError::BadAnnotation {
            name: key,
            value: value.to_owned(),
            reason,
        };
        let parts: Vec<&str> = value.split(':').collect();
        if parts.len() != 4 {
            return Err(bad("expected offset:compressedLen:uncompressedLen:type"));
        }
        let mut nums = [0u64; 4];
        for (n, p) in nums.iter_mut().zip(&parts) {
            *n = p
                .parse()
                .map_err(|_| bad("a field is not a decimal number"))?;
        }
        Ok(Self {
            offset: nums[0],
            compressed_len: nums[1],
            uncompressed_len: nums[2],
            manifest_type: nums[3],
        })
    }
}

impl fmt::Display for ManifestPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.offset, self.compressed_len, self.uncompressed_len, self.manifest_type
        )
    }
}

/// What the caller knows about a layer's TOC before reading the blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    /// Where the TOC is (from the annotations); `None`: read the footer.
    pub position: Option<ManifestPosition>,
    /// `sha256:` of the COMPRESSED TOC (manifest-checksum, or Veil's sealed digest).
    pub checksum: Option<String>,
    /// `sha256:` of the UNCOMPRESSED TOC JSON (stargz-snapshotter's TOC digest for its
    /// zstd:chunked variant), checked too when given.
    pub toc_digest: Option<String>,
}

impl ManifestInfo {
    /// Take position and checksum from a descriptor's annotations, current keys first,
    /// then the legacy (`io.containers.`) ones. Absent keys leave fields `None`.
    pub fn from_annotations<I, K, V>(annotations: I) -> Result<Self, FormatError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut found: [Option<String>; 4] = Default::default();
        let keys = [
            MANIFEST_POSITION_ANNOTATION,
            MANIFEST_CHECKSUM_ANNOTATION,
            LEGACY_MANIFEST_POSITION_ANNOTATION,
            LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
        ];
        for (k, v) in annotations {
            if let Some(i) = keys.iter().position(|key| *key == k.as_ref()) {
                found[i] = Some(v.as_ref().to_owned());
            }
        }
        let [pos, sum, legacy_pos, legacy_sum] = found;
        let position = match (pos, legacy_pos) {
            (Some(p), _) => Some(ManifestPosition::parse(MANIFEST_POSITION_ANNOTATION, &p)?),
            (None, Some(p)) => Some(ManifestPosition::parse(
                LEGACY_MANIFEST_POSITION_ANNOTATION,
                &p,
            )?),
            (None, None) => None,
        };
        let (checksum_key, checksum) = match (sum, legacy_sum) {
            (Some(s), _) => (MANIFEST_CHECKSUM_ANNOTATION, Some(s)),
            (None, s) => (LEGACY_MANIFEST_CHECKSUM_ANNOTATION, s),
        };
        if let Some(c) = &checksum {
            if parse_sha256(c).is_none() {
                return Err(FormatError::BadAnnotation {
                    name: checksum_key,
                    value: c.clone(),
                    reason: "not of the form sha256:<64 hex digits>",
                });
            }
        }
        Ok(Self {
            position,
            checksum,
            toc_digest: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn parses_current_and_legacy_keys() {
        let d = format!("sha256:{}", "1".repeat(64));
        let current = BTreeMap::from([
            (MANIFEST_POSITION_ANNOTATION, "100:20:30:1"),
            (MANIFEST_CHECKSUM_ANNOTATION, d.as_str()),
            (LEGACY_MANIFEST_POSITION_ANNOTATION, "1:1:1:1"),
        ]);
        let info = ManifestInfo::from_annotations(&current).unwrap();
        let pos = info.position.unwrap();
        assert_eq!(
            (
                pos.offset,
                pos.compressed_len,
                pos.uncompressed_len,
                pos.manifest_type
            ),
            (100, 20, 30, 1)
        );
        assert_eq!(pos.to_string(), "100:20:30:1");
        assert_eq!(info.checksum.as_deref(), Some(d.as_str()));

        let legacy = BTreeMap::from([(LEGACY_MANIFEST_POSITION_ANNOTATION, "5:6:7:1")]);
        let info = ManifestInfo::from_annotations(&legacy).unwrap();
        assert_eq!(info.position.unwrap().offset, 5);
        assert_eq!(info.checksum, None);

        assert_eq!(
            ManifestInfo::from_annotations(BTreeMap::<String, String>::new()).unwrap(),
            ManifestInfo::default()
        );
        for bad in ["1:2:3", "a:b:c:d", "1:2:3:4:5", ""] {
            let m = BTreeMap::from([(MANIFEST_POSITION_ANNOTATION, bad)]);
            assert!(ManifestInfo::from_annotations(&m).is_err(), "{bad}");
        }
        let m = BTreeMap::from([(MANIFEST_CHECKSUM_ANNOTATION, "sha256:zz")]);
        let err = ManifestInfo::from_annotations(&m).unwrap_err().to_string();
        assert!(err.contains(MANIFEST_CHECKSUM_ANNOTATION), "{err}");
    }
}
