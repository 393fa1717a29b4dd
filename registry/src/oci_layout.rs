//! OCI image layouts on disk (`oci:DIR[:TAG]`, as skopeo and umoci name them): reading
//! an image and writing one.
//!
//! A layout is a directory holding `oci-layout` (`{"imageLayoutVersion":"1.0.0"}`),
//! `index.json` (an image index whose entries name images by the
//! `org.opencontainers.image.ref.name` annotation) and `blobs/<alg>/<hex>`. Blobs are
//! written to a temporary name and renamed into place, so a blob file is complete or
//! absent; `index.json` is rewritten the same way, last, so a tag never names an image
//! with missing blobs.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::manifest::{
    manifest_kind, parse_index, select_platform, Manifest, ManifestKind, Platform, OCI_INDEX,
};

/// The annotation naming an image in `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The contents of the `oci-layout` file.
const OCI_LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// How deep indexes may nest.
const MAX_DEPTH: usize = 3;
/// Largest manifest or index read.
const MAX_MANIFEST: u64 = 4 << 20;

/// Something wrong with an OCI layout.
#[derive(Debug, thiserror::Error)]
#[error("OCI layout {}: {reason}", path.display())]
pub struct LayoutError {
    /// The layout directory (or the file concerned).
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

/// An image found in a layout: its manifest (parsed, with its exact bytes).
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The image manifest.
    pub manifest: Manifest,
    /// The digest of the index (nested in the layout's `index.json`) it was picked from.
    pub index_digest: Option<Digest>,
}

impl OciLayout {
    /// Opens an existing layout (it must have `index.json`).
    pub fn open(root: &Path) -> Result<Self, LayoutError> {
        let layout = Self {
            root: root.to_path_buf(),
        };
        if !root.join("index.json").is_file() {
            return Err(layout.error(root, "no index.json: not an OCI image layout"));
        }
        Ok(layout)
    }

    /// Opens the layout at `root`, creating the directory, `oci-layout` and an empty
    /// `index.json` as needed.
    pub fn create(root: &Path) -> Result<Self, LayoutError> {
        let layout = Self {
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(root.join("blobs").join("sha256"))
            .map_err(|e| layout.error(root, format!("creating the directory: {e}")))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            layout.write_atomically(&marker, OCI_LAYOUT_FILE.as_bytes())?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            let empty = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [],
            });
            layout.write_atomically(&index, &serde_json::to_vec(&empty).unwrap_or_default())?;
        }
        Ok(layout)
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn error(&self, path: &Path, reason: impl Into<String>) -> LayoutError {
        LayoutError {
            path: if path == self.root {
                self.root.clone()
            } else {
                path.to_path_buf()
            },
            reason: reason.into(),
        }
    }

    /// Where blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Whether blob `digest` is stored with `size` bytes.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Reads a (small) blob whole and checks its digest.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest);
        let meta = std::fs::metadata(&path)
            .map_err(|e| self.error(&path, format!("blob {digest}: {e}")))?;
        if meta.len() > limit {
            return Err(self.error(
                &path,
                format!(
                    "blob {digest} is {} bytes, more than the {limit} read whole",
                    meta.len()
                ),
            ));
        }
        let bytes =
            std::fs::read(&path).map_err(|e| self.error(&path, format!("blob {digest}: {e}")))?;
        digest.verify(&bytes).map_err(|actual| {
            self.error(
                &path,
                format!("blob {digest} has the wrong contents (their digest is {actual})"),
            )
        })?;
        Ok(bytes)
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, LayoutError> {
        let digest = Digest::sha256_of(bytes);
        if !self.has_blob(&digest, bytes.len() as u64) {
            self.write_atomically(&self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Stores the file `src` (whose digest the caller computed) as blob `digest`: a hard
    /// link when `src` is on the same filesystem, else a copy; checked for size.
    pub fn put_blob_file(&self, src: &Path, digest: &Digest, size: u64) -> Result<(), LayoutError> {
        if self.has_blob(digest, size) {
            return Ok(());
        }
        let dest = self.blob_path(digest);
        let tmp = temp_name(&dest);
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(src, &tmp).is_err() {
            std::fs::copy(src, &tmp).map_err(|e| {
                self.error(
                    &dest,
                    format!("copying {} into the layout: {e}", src.display()),
                )
            })?;
        }
        let len = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        if len != size {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.error(&dest, format!("stored {len} bytes, expected {size}")));
        }
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.error(&dest, format!("renaming into place: {e}"))
        })
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| self.error(parent, format!("creating the directory: {e}")))?;
        }
        let tmp = temp_name(path);
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.error(path, format!("writing: {e}"))
        })
    }

    fn index(&self) -> Result<Value, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = std::fs::read(&path).map_err(|e| self.error(&path, e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| self.error(&path, format!("not JSON: {e}")))
    }

    /// The tags `index.json` names.
    pub fn tags(&self) -> Result<Vec<String>, LayoutError> {
        let index = self.index()?;
        Ok(index["manifests"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|e| e["annotations"][REF_NAME_ANNOTATION].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The image named `tag` (or the only image, when `tag` is `None`), following nested
    /// indexes to the manifest for `platform`.
    pub fn resolve(
        &self,
        tag: Option<&str>,
        platform: &Platform,
    ) -> Result<LayoutImage, LayoutError> {
        let index_path = self.root.join("index.json");
        let index_bytes =
            std::fs::read(&index_path).map_err(|e| self.error(&index_path, e.to_string()))?;
        let entries =
            parse_index(&index_bytes).map_err(|e| self.error(&index_path, e.to_string()))?;
        let entry = match tag {
            Some(tag) => entries
                .iter()
                .rev()
                .find(|e| {
                    e.descriptor
                        .annotations
                        .get(REF_NAME_ANNOTATION)
                        .map(String::as_str)
                        == Some(tag)
                })
                .ok_or_else(|| {
                    self.error(
                        &index_path,
                        format!(
                            "no image tagged {tag:?} (tags: {})",
                            self.tags().unwrap_or_default().join(", ")
                        ),
                    )
                })?,
            None if entries.len() == 1 => &entries[0],
            None => {
                return Err(self.error(
                    &index_path,
                    format!(
                        "{} images and no tag given (oci:DIR:TAG); tags: {}",
                        entries.len(),
                        self.tags().unwrap_or_default().join(", ")
                    ),
                ))
            }
        };
        let mut descriptor = entry.descriptor.clone();
        let mut index_digest = None;
        for _ in 0..MAX_DEPTH {
            let bytes = self.read_blob(&descriptor.digest, MAX_MANIFEST)?;
            let path = self.blob_path(&descriptor.digest);
            let kind = manifest_kind(Some(&descriptor.media_type), &bytes)
                .map_err(|e| self.error(&path, e.to_string()))?;
            match kind {
                ManifestKind::Manifest => {
                    let manifest = Manifest::parse(bytes, descriptor.digest.clone())
                        .map_err(|e| self.error(&path, e.to_string()))?;
                    return Ok(LayoutImage {
                        manifest,
                        index_digest,
                    });
                }
                ManifestKind::Index => {
                    let nested =
                        parse_index(&bytes).map_err(|e| self.error(&path, e.to_string()))?;
                    let picked = select_platform(&nested, platform)
                        .map_err(|e| self.error(&path, e.to_string()))?;
                    index_digest.get_or_insert(descriptor.digest.clone());
                    descriptor = picked.descriptor.clone();
                }
            }
        }
        Err(self.error(
            &index_path,
            format!("indexes nested more than {MAX_DEPTH} deep"),
        ))
    }

    /// Names the manifest `digest` (`size` bytes of `media_type`, already stored) `tag` in
    /// `index.json`, replacing what the tag named before. Without a tag the entry is
    /// added unnamed (once).
    pub fn set_tag(
        &self,
        tag: Option<&str>,
        media_type: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), LayoutError> {
        let path = self.root.join("index.json");
        let mut index = self.index()?;
        let Some(obj) = index.as_object_mut() else {
            return Err(self.error(&path, "not a JSON object"));
        };
        obj.entry("schemaVersion").or_insert(Value::from(2));
        let manifests = obj
            .entry("manifests")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(list) = manifests.as_array_mut() else {
            return Err(self.error(&path, "\"manifests\" is not an array"));
        };
        let digest_text = digest.to_string();
        list.retain(|e| match tag {
            Some(tag) => e["annotations"][REF_NAME_ANNOTATION].as_str() != Some(tag),
            None => {
                !(e["digest"].as_str() == Some(digest_text.as_str())
                    && e["annotations"][REF_NAME_ANNOTATION].is_null())
            }
        });
        let mut entry = serde_json::json!({
            "mediaType": media_type,
            "digest": digest_text,
            "size": size,
        });
        if let Some(tag) = tag {
            entry["annotations"] = serde_json::json!({ REF_NAME_ANNOTATION: tag });
        }
        list.push(entry);
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        self.write_atomically(&path, &bytes)
    }
}

/// A temporary name beside `path`, unique to this process and thread.
fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let id = format!("{:?}", std::thread::current().id());
    let tag: String = id.chars().filter(char::is_ascii_digit).collect();
    path.with_file_name(format!(".{name}.tmp-{}-{tag}", std::process::id()))
}

/// `sha256:` and size of a file, read in 1 MiB pieces.
pub fn digest_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let digest = Digest::from_sha256_hash(hasher.finalize().into());
    Ok((digest, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::OCI_MANIFEST;

    #[test]
    fn create_store_tag_and_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layout");
        let layout = OciLayout::create(&root).unwrap();
        assert!(root.join("oci-layout").is_file());
        let config = layout.put_blob_bytes(b"{}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
            "layers": [],
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = layout.put_blob_bytes(&bytes).unwrap();
        layout
            .set_tag(Some("v1"), OCI_MANIFEST, &digest, bytes.len() as u64)
            .unwrap();
        layout
            .set_tag(Some("v1"), OCI_MANIFEST, &digest, bytes.len() as u64)
            .unwrap();
        layout
            .set_tag(Some("v2"), OCI_MANIFEST, &digest, bytes.len() as u64)
            .unwrap();
        assert_eq!(layout.tags().unwrap(), ["v1", "v2"]);
        let image = OciLayout::open(&root)
            .unwrap()
            .resolve(Some("v1"), &Platform::host())
            .unwrap();
        assert_eq!(image.manifest.digest, digest);
        let err = layout.resolve(Some("nope"), &Platform::host()).unwrap_err();
        assert!(err.to_string().contains("v1, v2"), "{err}");
        let err = layout.resolve(None, &Platform::host()).unwrap_err();
        assert!(err.to_string().contains("no tag"), "{err}");
        // A corrupted blob is refused.
        std::fs::write(layout.blob_path(&digest), b"{\"x\":1}").unwrap();
        assert!(layout.resolve(Some("v1"), &Platform::host()).is_err());
        assert!(OciLayout::open(&tmp.path().join("none")).is_err());
        let (d, n) = digest_file(&layout.blob_path(&config)).unwrap();
        assert_eq!((d, n), (config, 2));
    }
}
