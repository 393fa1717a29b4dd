//! Where images come from and go to: a registry (`host[:port]/repo[:tag|@digest]`,
//! optionally prefixed `docker://`) or a local OCI layout (`oci:DIR[:TAG]`, as skopeo
//! names it).

use std::fmt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use veil_registry::oci_layout::{LayoutImage, OciLayout};

use crate::error::{ensure, Result};
use veil_registry::push::BlobBody;
use veil_registry::{BlobDescriptor, Digest, Manifest, Reference, RegistryClient};

/// How many bytes one ranged read of a source layer fetches.
const FETCH_PIECE: u64 = 8 << 20;
/// Largest config blob read.
const MAX_CONFIG: u64 = 16 << 20;

/// An image location as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLocation {
    /// A registry reference.
    Registry(Reference),
    /// An OCI layout directory and the tag (`org.opencontainers.image.ref.name`).
    Layout {
        /// The directory.
        dir: PathBuf,
        /// The tag, when given.
        tag: Option<String>,
    },
}

impl ImageLocation {
    /// Parses `oci:DIR[:TAG]`, `docker://REF` or a plain registry reference.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = match rest.split_once(':') {
                Some((dir, tag)) => (dir, Some(tag.to_string())),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(format!("{text:?}: oci: needs a directory (oci:DIR[:TAG])"));
            }
            if tag.as_deref() == Some("") {
                return Err(format!("{text:?}: empty tag after the directory"));
            }
            return Ok(Self::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        let reference = text.strip_prefix("docker://").unwrap_or(text);
        if let Some((transport, _)) = reference.split_once(':') {
            if [
                "oci-archive",
                "docker-archive",
                "dir",
                "docker-daemon",
                "containers-storage",
            ]
            .contains(&transport)
            {
                return Err(format!(
                    "{text:?}: the {transport}: transport is not supported (registry references \
                     and oci:DIR[:TAG] are)"
                ));
            }
        }
        Reference::parse(reference)
            .map(Self::Registry)
            .map_err(|e| e.to_string())
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageLocation::Registry(r) => write!(f, "{r}"),
            ImageLocation::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageLocation::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
        }
    }
}

/// An opened source image.
pub enum Source {
    /// In a registry.
    Registry {
        /// The client.
        client: RegistryClient,
        /// The reference as given.
        reference: Reference,
        /// Its manifest.
        manifest: Manifest,
    },
    /// In an OCI layout.
    Layout {
        /// The layout.
        layout: OciLayout,
        /// The image.
        image: LayoutImage,
    },
}

impl Source {
    /// Opens `location`, resolving it to the manifest for the client's platform.
    pub async fn open(location: &ImageLocation, client: &RegistryClient) -> Result<Self> {
        Ok(match location {
            ImageLocation::Registry(reference) => {
                let resolved = client.resolve(reference).await?;
                Source::Registry {
                    client: client.clone(),
                    reference: reference.clone(),
                    manifest: resolved.manifest,
                }
            }
            ImageLocation::Layout { dir, tag } => {
                let layout = OciLayout::open(dir)?;
                let image = layout.resolve(tag.as_deref(), &client.options().platform)?;
                Source::Layout { layout, image }
            }
        })
    }

    /// The image manifest.
    pub fn manifest(&self) -> &Manifest {
        match self {
            Source::Registry { manifest, .. } => manifest,
            Source::Layout { image, .. } => &image.manifest,
        }
    }

    /// The config blob, checked against its digest.
    pub async fn config(&self) -> Result<Vec<u8>> {
        let desc = &self.manifest().config;
        Ok(match self {
            Source::Registry {
                client, reference, ..
            } => client.fetch_blob(reference, &desc.digest).await?,
            Source::Layout { layout, .. } => layout.read_blob(&desc.digest, MAX_CONFIG)?,
        })
    }

    /// The layer blob `desc` as a file: the layout's own blob file, or a download into
    /// `dest` (reporting the bytes fetched so far). The caller checks the digest.
    pub async fn layer_file(
        &self,
        desc: &BlobDescriptor,
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(PathBuf, bool)> {
        match self {
            Source::Layout { layout, .. } => {
                let path = layout.blob_path(&desc.digest);
                ensure!(
                    path.is_file(),
                    "layer {} is not in {} (a foreign layer?)",
                    desc.digest,
                    layout.root().display()
                );
                progress(desc.size);
                Ok((path, false))
            }
            Source::Registry {
                client, reference, ..
            } => {
                let blob = client.blob(reference, desc);
                let mut file = tokio::fs::File::create(dest).await?;
                let mut offset = 0;
                while offset < desc.size {
                    let end = (offset + FETCH_PIECE).min(desc.size);
                    let bytes = blob.read(offset..end).await?;
                    ensure!(
                        bytes.len() as u64 == end - offset,
                        "layer {}: the registry sent {} bytes for {offset}..{end}",
                        desc.digest,
                        bytes.len()
                    );
                    file.write_all(&bytes).await?;
                    offset = end;
                    progress(offset);
                }
                file.flush().await?;
                Ok((dest.to_path_buf(), true))
            }
        }
    }
}

/// An opened destination.
pub enum Destination {
    /// A registry repository and tag.
    Registry {
        /// The client.
        client: RegistryClient,
        /// Where to push.
        reference: Reference,
    },
    /// An OCI layout and tag.
    Layout {
        /// The layout (created when missing).
        layout: OciLayout,
        /// The tag.
        tag: Option<String>,
    },
}

impl Destination {
    /// Opens `location` for writing (creating an OCI layout directory when missing).
    pub fn open(location: &ImageLocation, client: &RegistryClient) -> Result<Self> {
        Ok(match location {
            ImageLocation::Registry(reference) => {
                ensure!(
                    reference.digest().is_none(),
                    "the destination {reference} names a digest: give a tag"
                );
                Destination::Registry {
                    client: client.clone(),
                    reference: reference.clone(),
                }
            }
            ImageLocation::Layout { dir, tag } => Destination::Layout {
                layout: OciLayout::create(dir)?,
                tag: tag.clone(),
            },
        })
    }

    /// Whether the destination already has blob `digest` of `size` bytes.
    pub async fn has_blob(&self, digest: &Digest, size: u64) -> Result<bool> {
        Ok(match self {
            Destination::Registry { client, reference } => {
                client.blob_exists(reference, digest).await?
            }
            Destination::Layout { layout, .. } => layout.has_blob(digest, size),
        })
    }

    /// Stores a blob.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        body: BlobBody<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        match self {
            Destination::Registry { client, reference } => {
                client.push_blob(reference, digest, body, progress).await?
            }
            Destination::Layout { layout, .. } => match body {
                BlobBody::Bytes(bytes) => {
                    layout.put_blob_bytes(bytes)?;
                }
                BlobBody::File { path, size } => {
                    layout.put_blob_file(path, digest, size)?;
                    progress(size);
                }
            },
        }
        Ok(())
    }

    /// Stores the manifest and points the tag at it: the last step of a conversion.
    pub async fn put_manifest(&self, media_type: &str, bytes: &[u8]) -> Result<Digest> {
        Ok(match self {
            Destination::Registry { client, reference } => {
                client.push_manifest(reference, media_type, bytes).await?
            }
            Destination::Layout { layout, tag } => {
                let digest = layout.put_blob_bytes(bytes)?;
                layout.set_tag(tag.as_deref(), media_type, &digest, bytes.len() as u64)?;
                digest
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            ImageLocation::parse("oci:/tmp/x:v1").unwrap(),
            ImageLocation::Layout {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageLocation::parse("oci:rel").unwrap(),
            ImageLocation::Layout {
                dir: "rel".into(),
                tag: None
            }
        );
        assert!(ImageLocation::parse("oci:").is_err());
        assert!(ImageLocation::parse("oci:/x:").is_err());
        let r = ImageLocation::parse("docker://127.0.0.1:5000/app:v1").unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5000/app:v1");
        assert!(matches!(
            ImageLocation::parse("127.0.0.1:5000/app:v1").unwrap(),
            ImageLocation::Registry(_)
        ));
        let err = ImageLocation::parse("oci-archive:/x.tar").unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        assert_eq!(
            ImageLocation::parse("oci:/a/b:t").unwrap().to_string(),
            "oci:/a/b:t"
        );
    }
}
