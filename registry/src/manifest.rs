//! Image manifests and indexes (OCI and Docker schema 2): media types, parsing (with the
//! `oci-spec` types) into the descriptors Veil needs, and picking the manifest for a
//! platform out of an index.

use std::collections::BTreeMap;
use std::fmt;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::digest::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The `Accept` header for manifest requests: every manifest and index type Veil reads.
pub fn manifest_accept_header() -> String {
    [
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
    ]
    .join(", ")
}

/// A manifest or index that Veil cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not a media type Veil reads (e.g. Docker schema 1).
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// Not valid JSON of the manifest/index shape.
    #[error("malformed {kind}: {reason}")]
    Malformed {
        /// `image manifest` or `image index`.
        kind: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A descriptor's digest is not one Veil can check.
    #[error("descriptor has an unusable digest: {0}")]
    BadDescriptorDigest(String),
    /// No entry of the index is for the wanted platform.
    #[error("no manifest for platform {wanted} (the index has: {available})")]
    NoMatchingPlatform {
        /// The platform asked for.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// Indexes nested deeper than Veil follows.
    #[error("image indexes nested more than {0} deep")]
    TooDeep(usize),
    /// A platform string that is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    BadPlatform(String),
}

/// Whether a manifest response is a single-image manifest or an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (config + layers).
    Manifest,
    /// An image index / manifest list.
    Index,
}

/// Decides the kind from the `Content-Type`, or from the JSON when the registry sent a
/// generic type; errors for types Veil does not read.
pub fn manifest_kind(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ManifestKind, ManifestError> {
    let media = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => return Ok(ManifestKind::Manifest),
        OCI_INDEX | DOCKER_MANIFEST_LIST => return Ok(ManifestKind::Index),
        m if DOCKER_SCHEMA1.contains(&m) => {
            return Err(ManifestError::UnsupportedMediaType(m.to_string()))
        }
        _ => {}
    }
    #[derive(serde::Deserialize)]
    struct Sniff {
        #[serde(default, rename = "mediaType")]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
    }
    let sniff: Sniff = serde_json::from_slice(body).map_err(|e| ManifestError::Malformed {
        kind: "manifest",
        reason: format!("{e} (Content-Type {media:?})"),
    })?;
    match sniff.media_type.as_deref() {
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => Ok(ManifestKind::Manifest),
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => Ok(ManifestKind::Index),
        Some(other) if !other.is_empty() => {
            Err(ManifestError::UnsupportedMediaType(other.to_string()))
        }
        _ if sniff.manifests.is_some() => Ok(ManifestKind::Index),
        _ if sniff.layers.is_some() => Ok(ManifestKind::Manifest),
        _ => Err(ManifestError::UnsupportedMediaType(media)),
    }
}

/// A content descriptor: what Veil needs to fetch and trust one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDescriptor {
    /// The blob's media type (e.g. `application/vnd.oci.image.layer.v1.tar+gzip+encrypted`).
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The descriptor's annotations (TOC digest, encryption keys, ...).
    pub annotations: BTreeMap<String, String>,
    /// Alternative URLs the descriptor lists (not used for fetching).
    pub urls: Vec<String>,
}

impl BlobDescriptor {
    fn from_oci(descriptor: &Descriptor) -> Result<Self, ManifestError> {
        let digest = Digest::parse(descriptor.digest().as_ref())
            .map_err(|e| ManifestError::BadDescriptorDigest(e.to_string()))?;
        Ok(BlobDescriptor {
            media_type: descriptor.media_type().to_string(),
            digest,
            size: descriptor.size(),
            annotations: descriptor
                .annotations()
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            urls: descriptor.urls().clone().unwrap_or_default(),
        })
    }
}

/// A fetched image manifest: its exact bytes, digest and descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The digest of [`Self::bytes`].
    pub digest: Digest,
    /// The manifest's media type (OCI or Docker).
    pub media_type: String,
    /// The manifest exactly as the registry sent it.
    pub bytes: Vec<u8>,
    /// The image config's descriptor.
    pub config: BlobDescriptor,
    /// The layers' descriptors, base layer first.
    pub layers: Vec<BlobDescriptor>,
    /// The manifest's own annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses manifest `bytes` whose digest is `digest`.
    pub fn parse(bytes: Vec<u8>, digest: Digest) -> Result<Self, ManifestError> {
        let parsed: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| ManifestError::Malformed {
                kind: "image manifest",
                reason: e.to_string(),
            })?;
        let media_type = parsed
            .media_type()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let config = BlobDescriptor::from_oci(parsed.config())?;
        let layers = parsed
            .layers()
            .iter()
            .map(BlobDescriptor::from_oci)
            .collect::<Result<Vec<_>, _>>()?;
        let annotations = parsed
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Manifest {
            digest,
            media_type,
            bytes,
            config,
            layers,
            annotations,
        })
    }

    /// The descriptor of the layer with `digest`, if the manifest lists it.
    pub fn layer(&self, digest: &Digest) -> Option<&BlobDescriptor> {
        self.layers.iter().find(|l| &l.digest == digest)
    }
}

/// A platform: `os/architecture[/variant]` with Go's names (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), when it matters.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Parses `os/arch` or `os/arch/variant`.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok =
            |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(variant.to_ascii_lowercase()),
            }),
            _ => Err(ManifestError::BadPlatform(text.to_string())),
        }
    }

    /// Whether an index entry for `other` runs here. Without a wanted variant any variant
    /// matches; `arm64` treats no variant as `v8`.
    fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        let Some(want) = &self.variant else {
            return true;
        };
        let have = other.variant.as_deref();
        have == Some(want.as_str())
            || (self.architecture == "arm64" && want == "v8" && have.is_none())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One entry of an image index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The manifest (or nested index) it points to.
    pub descriptor: BlobDescriptor,
    /// Its platform, when the index says.
    pub platform: Option<Platform>,
}

/// Parses an image index / manifest list into its entries.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<IndexEntry>, ManifestError> {
    let index: ImageIndex =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
            kind: "image index",
            reason: e.to_string(),
        })?;
    index
        .manifests()
        .iter()
        .map(|d| {
            Ok(IndexEntry {
                descriptor: BlobDescriptor::from_oci(d)?,
                platform: d.platform().as_ref().map(|p| Platform {
                    os: p.os().to_string(),
                    architecture: p.architecture().to_string(),
                    variant: p.variant().clone().filter(|v| !v.is_empty()),
                }),
            })
        })
        .collect()
}

/// The entry to use for `wanted`: the first that matches, preferring an exact variant
/// match. Entries without a platform (attestations, artifacts) are never picked.
pub fn select_platform<'a>(
    entries: &'a [IndexEntry],
    wanted: &Platform,
) -> Result<&'a IndexEntry, ManifestError> {
    let matching = |e: &&IndexEntry| e.platform.as_ref().is_some_and(|p| wanted.matches(p));
    let exact = entries.iter().filter(matching).find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.variant == wanted.variant)
    });
    exact
        .or_else(|| entries.iter().find(matching))
        .ok_or_else(|| ManifestError::NoMatchingPlatform {
            wanted: wanted.to_string(),
            available: {
                let list: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
                    .collect();
                if list.is_empty() {
                    "no platforms".to_string()
                } else {
                    list.join(", ")
                }
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn index_json() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":11,"platform":{{"os":"linux","architecture":"arm64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D3}","size":12,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":13,"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}
            ]}}"#
        )
    }

    #[test]
    fn parses_manifest_descriptors() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
              "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":7}},
              "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted","digest":"{D2}","size":99,
                "annotations":{{"containerd.io/snapshot/stargz/toc.digest":"{D3}"}}}}],
              "annotations":{{"a":"b"}}}}"#
        );
        let digest = Digest::sha256_of(json.as_bytes());
        let m = Manifest::parse(json.into_bytes(), digest).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.config.size, 7);
        assert_eq!(
            m.config.media_type,
            "application/vnd.docker.container.image.v1+json"
        );
        assert_eq!(m.layers.len(), 1);
        assert_eq!(
            m.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        );
        assert_eq!(
            m.layers[0].annotations["containerd.io/snapshot/stargz/toc.digest"],
            D3
        );
        assert_eq!(m.annotations["a"], "b");
        assert!(m.layer(&Digest::parse(D2).unwrap()).is_some());
    }

    #[test]
    fn picks_platforms() {
        let entries = parse_index(index_json().as_bytes()).unwrap();
        assert_eq!(entries.len(), 4);
        let pick = |p: &str| {
            select_platform(&entries, &Platform::parse(p).unwrap()).map(|e| e.descriptor.size)
        };
        assert_eq!(pick("linux/amd64").unwrap(), 12);
        assert_eq!(pick("linux/arm64").unwrap(), 11);
        assert_eq!(pick("linux/arm64/v8").unwrap(), 11);
        assert_eq!(pick("linux/arm/v7").unwrap(), 10);
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm/v7, linux/arm64, linux/amd64"),
            "{err}"
        );
        assert!(pick("linux/arm/v6").is_err());
    }

    #[test]
    fn kinds_and_bad_input() {
        let idx = index_json();
        assert_eq!(
            manifest_kind(Some(OCI_INDEX), b"").unwrap(),
            ManifestKind::Index
        );
        assert_eq!(
            manifest_kind(
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
                b""
            )
            .unwrap(),
            ManifestKind::Manifest
        );
        assert_eq!(
            manifest_kind(Some("application/json"), idx.as_bytes()).unwrap(),
            ManifestKind::Index
        );
        assert_eq!(
            manifest_kind(None, br#"{"layers":[]}"#).unwrap(),
            ManifestKind::Manifest
        );
        assert!(manifest_kind(Some(DOCKER_SCHEMA1[1]), b"{}").is_err());
        assert!(manifest_kind(None, b"not json").is_err());
        assert!(manifest_kind(None, b"{}").is_err());
        assert!(
            Manifest::parse(b"{\"schemaVersion\":2}".to_vec(), Digest::sha256_of(b"")).is_err()
        );
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"md5:abcd","size":1},"layers":[]}"#;
        assert!(Manifest::parse(bad_digest.as_bytes().to_vec(), Digest::sha256_of(b"")).is_err());
        assert!(parse_index(b"[]").is_err());
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Platform::host().os, std::env::consts::OS);
    }
}
