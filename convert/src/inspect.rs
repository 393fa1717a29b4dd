//! `veil inspect`: what an image's layers are, and whether Veil can serve them lazily.
//!
//! For each layer: media type, format (eStargz, zstd:chunked, or a plain tar / tar.gz /
//! tar.zst), compressed and uncompressed sizes, the chunk and file counts from its TOC
//! (read through ranged reads and authenticated like a mount would), its encryption
//! (recipient schemes, JWE key-management algorithms and key ids, attestation-agent KBS
//! kids), and the verdict of [`veil_formats::classify::classify`]: lazily mountable, and if not, why.
//! An encrypted layer's TOC is read only with a key from `--keys-dir`; without one the
//! verdict says what a key holder would get.

use std::fmt::Write as _;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;
use serde::Serialize;
use veil_blob::BlobSource;
use veil_formats::toc::{EntryKind, LayerToc};
use veil_formats::{estargz, zstdchunked};
use veil_keyprovider::aa_packet::AnnotationPacket;
use veil_keyprovider::ocicrypt::{is_encrypted_media_type, plain_media_type, EncryptedLayer};

use veil_blob::display::human_bytes as human;
use veil_formats::classify::{classify, classify_sealed, read_layer_toc, LazyFormat};
use veil_formats::limits::Limits;
use veil_keyprovider::layer::Decryption;
use veil_registry::{BlobDescriptor, ClientOptions, RegistryClient};

use crate::error::Result;
use crate::store::{ImageLocation, Source};

/// What to inspect.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// The image.
    pub location: ImageLocation,
    /// Registry client settings.
    pub registry: ClientOptions,
    /// Private keys for encrypted layers (their TOC is read only with a key).
    pub keys_dir: Option<PathBuf>,
    /// Read each lazily readable layer's TOC (chunk counts); off: annotations only.
    pub read_toc: bool,
}

/// An inspected image.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The image as named.
    pub image: String,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Manifest media type.
    pub manifest_media_type: String,
    /// Config digest.
    pub config_digest: String,
    /// The layers, base first.
    pub layers: Vec<LayerInfo>,
}

/// One layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// Position, from 0.
    pub index: usize,
    /// Blob digest.
    pub digest: String,
    /// Media type.
    pub media_type: String,
    /// Format: `eStargz`, `zstd:chunked`, `zstd:chunked (legacy)`, `tar+gzip`, ...
    pub format: String,
    /// Blob size.
    pub size: u64,
    /// Uncompressed size, when an annotation or the TOC tells.
    pub uncompressed_size: Option<u64>,
    /// The TOC digest annotation (eStargz `toc.digest`, zstd:chunked manifest checksum).
    pub toc_digest: Option<String>,
    /// Chunks in the TOC, when it was read.
    pub chunks: Option<u64>,
    /// Regular files in the TOC, when it was read.
    pub files: Option<u64>,
    /// Why the TOC was not read, or the error reading it.
    pub toc_note: Option<String>,
    /// Encryption, for encrypted layers.
    pub encryption: Option<EncryptionInfo>,
    /// Whether Veil mounts it lazily.
    pub lazy: bool,
    /// How (when lazy) or why not.
    pub lazy_reason: String,
}

/// An encrypted layer's encryption.
#[derive(Debug, Clone, Serialize)]
pub struct EncryptionInfo {
    /// The cipher of the public options.
    pub cipher: String,
    /// The recipients, by scheme.
    pub recipients: Vec<RecipientInfo>,
    /// Whether the private options seal the TOC digest (known only with a key).
    pub sealed_toc_digest: Option<bool>,
    /// What happened when unwrapping with `--keys-dir`, if tried.
    pub key: Option<String>,
}

/// The recipients of one scheme.
#[derive(Debug, Clone, Serialize)]
pub struct RecipientInfo {
    /// `jwe`, `provider.attestation-agent`, `pkcs7`, ...
    pub scheme: String,
    /// Wrapped entries of this scheme.
    pub entries: usize,
    /// Key-management algorithms (JWE `alg`, packet `wrap_type`).
    pub algorithms: Vec<String>,
    /// Key ids (JWE `kid`, packet `kid` = KBS resource URI).
    pub kids: Vec<String>,
}

/// A blob in a file (an OCI layout's), read with `pread`.
struct FileBlob {
    file: std::fs::File,
    size: u64,
}

impl BlobSource for FileBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let mut buf = vec![0u8; range.end.saturating_sub(range.start) as usize];
        let result = self.file.read_exact_at(&mut buf, range.start).map(|_| buf);
        Box::pin(async move { result })
    }
}

/// The format a descriptor announces.
pub fn format_of(desc: &BlobDescriptor) -> String {
    let media = plain_media_type(&desc.media_type);
    let a = &desc.annotations;
    if media.ends_with("tar+gzip") || media.ends_with("tar.gzip") {
        if a.contains_key(estargz::TOC_DIGEST_ANNOTATION) {
            "eStargz".into()
        } else {
            "tar+gzip".into()
        }
    } else if media.ends_with("tar+zstd") {
        if a.contains_key(zstdchunked::MANIFEST_CHECKSUM_ANNOTATION) {
            "zstd:chunked".into()
        } else if a.contains_key(zstdchunked::LEGACY_MANIFEST_CHECKSUM_ANNOTATION) {
            "zstd:chunked (legacy)".into()
        } else {
            "tar+zstd".into()
        }
    } else if media.ends_with(".tar") || media.ends_with(".diff.tar") {
        "tar".into()
    } else {
        format!("other ({media})")
    }
}

fn toc_digest_of(desc: &BlobDescriptor) -> Option<String> {
    [
        estargz::TOC_DIGEST_ANNOTATION,
        zstdchunked::MANIFEST_CHECKSUM_ANNOTATION,
        zstdchunked::LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    ]
    .iter()
    .find_map(|k| desc.annotations.get(*k).cloned())
}

fn uncompressed_of(desc: &BlobDescriptor) -> Option<u64> {
    if let Some(v) = desc.annotations.get(estargz::UNCOMPRESSED_SIZE_ANNOTATION) {
        return v.parse().ok();
    }
    None
}

/// The recipients of an encrypted layer, by scheme.
fn recipients_of(layer: &EncryptedLayer) -> Vec<RecipientInfo> {
    let mut out: Vec<RecipientInfo> = Vec::new();
    for r in &layer.recipients {
        let (algorithms, kids) = match r.scheme.as_str() {
            "jwe" => jwe_headers(&r.wrapped),
            veil_keyprovider::aa_packet::SCHEME => match AnnotationPacket::from_json(&r.wrapped) {
                Ok(p) => (vec![p.wrap_type.clone()], vec![p.kid.clone()]),
                Err(e) => (vec![format!("unreadable packet: {e}")], Vec::new()),
            },
            _ => (Vec::new(), Vec::new()),
        };
        match out.iter_mut().find(|i| i.scheme == r.scheme) {
            Some(info) => {
                info.entries += 1;
                for a in algorithms {
                    if !info.algorithms.contains(&a) {
                        info.algorithms.push(a);
                    }
                }
                info.kids.extend(kids);
            }
            None => out.push(RecipientInfo {
                scheme: r.scheme.clone(),
                entries: 1,
                algorithms,
                kids,
            }),
        }
    }
    out
}

/// The `alg`s and `kid`s of a JWE JSON serialization (general or flattened).
fn jwe_headers(jwe: &[u8]) -> (Vec<String>, Vec<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(jwe) else {
        return (vec!["unreadable JWE".into()], Vec::new());
    };
    let protected: serde_json::Value = v["protected"]
        .as_str()
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut headers = vec![&protected, &v["unprotected"], &v["header"]];
    if let Some(list) = v["recipients"].as_array() {
        headers.extend(list.iter().map(|r| &r["header"]));
    }
    let (mut algs, mut kids) = (Vec::new(), Vec::new());
    for h in headers {
        if let Some(alg) = h["alg"].as_str() {
            algs.push(alg.to_string());
        }
        if let Some(kid) = h["kid"].as_str() {
            kids.push(kid.to_string());
        }
    }
    let mut seen = Vec::new();
    algs.retain(|a| {
        let new = !seen.contains(a);
        seen.push(a.clone());
        new
    });
    (algs, kids)
}

/// Inspects the image `opts` names.
pub async fn inspect(opts: &InspectOptions) -> Result<Inspection> {
    let client = RegistryClient::new(opts.registry.clone())?;
    let source = Source::open(&opts.location, &client).await?;
    let manifest = source.manifest().clone();
    let decryption = opts
        .keys_dir
        .as_deref()
        .map(|dir| Decryption::load(dir, false));
    let mut layers = Vec::new();
    for (index, desc) in manifest.layers.iter().enumerate() {
        let blob: Arc<dyn BlobSource> = match &source {
            Source::Registry {
                client, reference, ..
            } => Arc::new(client.blob(reference, desc)),
            Source::Layout { layout, .. } => {
                let path = layout.blob_path(&desc.digest);
                match std::fs::File::open(&path) {
                    Ok(file) => Arc::new(FileBlob {
                        file,
                        size: desc.size,
                    }),
                    Err(e) => {
                        layers.push(missing_layer(index, desc, &path, &e));
                        continue;
                    }
                }
            }
        };
        layers.push(inspect_layer(index, desc, blob, decryption.as_ref(), opts).await);
    }
    Ok(Inspection {
        image: opts.location.to_string(),
        manifest_digest: manifest.digest.to_string(),
        manifest_media_type: manifest.media_type.clone(),
        config_digest: manifest.config.digest.to_string(),
        layers,
    })
}

fn missing_layer(index: usize, desc: &BlobDescriptor, path: &Path, e: &io::Error) -> LayerInfo {
    LayerInfo {
        index,
        digest: desc.digest.to_string(),
        media_type: desc.media_type.clone(),
        format: format_of(desc),
        size: desc.size,
        uncompressed_size: uncompressed_of(desc),
        toc_digest: toc_digest_of(desc),
        chunks: None,
        files: None,
        toc_note: Some(format!("blob {}: {e}", path.display())),
        encryption: None,
        lazy: false,
        lazy_reason: "the blob is not in the layout".into(),
    }
}

async fn inspect_layer(
    index: usize,
    desc: &BlobDescriptor,
    blob: Arc<dyn BlobSource>,
    decryption: Option<&Decryption>,
    opts: &InspectOptions,
) -> LayerInfo {
    let mut info = LayerInfo {
        index,
        digest: desc.digest.to_string(),
        media_type: desc.media_type.clone(),
        format: format_of(desc),
        size: desc.size,
        uncompressed_size: uncompressed_of(desc),
        toc_digest: toc_digest_of(desc),
        chunks: None,
        files: None,
        toc_note: None,
        encryption: None,
        lazy: false,
        lazy_reason: String::new(),
    };
    // (source of plaintext blob bytes, how the TOC is found) when the TOC can be read.
    let mut readable: Option<(Arc<dyn BlobSource>, LazyFormat)> = None;
    if is_encrypted_media_type(&desc.media_type) {
        let mut plain = desc.clone();
        plain.media_type = plain_media_type(&desc.media_type).to_string();
        let mut enc = match EncryptedLayer::from_annotations(&desc.annotations) {
            Ok(layer) => EncryptionInfo {
                cipher: layer.pubopts.cipher.clone(),
                recipients: recipients_of(&layer),
                sealed_toc_digest: None,
                key: None,
            },
            Err(e) => {
                info.lazy_reason = format!("bad encryption annotations: {e}");
                info.toc_note = Some("not read: bad encryption annotations".into());
                return info;
            }
        };
        let opened = decryption.map(|d| d.open(&info.digest, desc, blob.clone()));
        match opened {
            Some(Ok(opened)) => {
                enc.sealed_toc_digest = Some(opened.sealed_toc_digest.is_some());
                enc.key = Some("unwrapped with a key from the keys directory".into());
                match classify_sealed(
                    &opened.plain.media_type,
                    &opened.plain.annotations,
                    opened.sealed_toc_digest.as_deref(),
                ) {
                    Ok(format) => {
                        info.lazy = true;
                        info.lazy_reason = format!(
                            "yes: {}, encrypted; TOC authenticated by {}",
                            info.format,
                            if opened.sealed_toc_digest.is_some() {
                                "the digest sealed in the layer key"
                            } else {
                                "the manifest annotation only (no sealed digest): lazy only \
                                 with require_sealed_toc = false, streamed by default"
                            }
                        );
                        readable = Some((opened.source.clone(), format));
                    }
                    Err(why) => {
                        info.lazy_reason = format!(
                            "no: {why} (streamed instead: fetched whole, verified by its \
                             HMAC, then served)"
                        )
                    }
                }
            }
            Some(Err(why)) => {
                enc.key = Some(why.to_string());
                lazy_without_key(&mut info, &plain);
                info.toc_note = Some("not read: no key for this layer".into());
            }
            None => {
                lazy_without_key(&mut info, &plain);
                info.toc_note = Some("not read: encrypted (give --keys-dir to read it)".into());
            }
        }
        info.encryption = Some(enc);
    } else {
        match classify(&desc.media_type, &desc.annotations) {
            Ok(format) => {
                info.lazy = true;
                info.lazy_reason = format!(
                    "yes: {}, TOC authenticated by the manifest annotation",
                    info.format
                );
                readable = Some((blob, format));
            }
            Err(why) => {
                info.lazy_reason = format!("no: {why}; containerd pulls and unpacks it whole")
            }
        }
    }
    if let Some((source, format)) = readable {
        if opts.read_toc {
            match read_layer_toc(
                source.as_ref(),
                &format,
                &Limits::default(),
                veil_formats::estargz::DEFAULT_TOC_TAIL_BYTES,
            )
            .await
            {
                Ok(toc) => {
                    let (chunks, files) = count(&toc);
                    info.chunks = Some(chunks);
                    info.files = Some(files);
                }
                Err(e) => {
                    info.lazy = false;
                    info.lazy_reason = format!("no: its TOC cannot be read: {e:#}");
                    info.toc_note = Some(format!("{e:#}"));
                }
            }
        } else {
            info.toc_note = Some("not read (--no-toc)".into());
        }
    }
    info
}

/// The verdict for an encrypted layer whose key is not at hand.
fn lazy_without_key(info: &mut LayerInfo, plain: &BlobDescriptor) {
    match classify(&plain.media_type, &plain.annotations) {
        Ok(_) => {
            info.lazy = true;
            info.lazy_reason = format!(
                "yes, with a key for one of its recipients: {}, encrypted",
                info.format
            );
        }
        Err(why) => {
            info.lazy_reason = format!(
                "no: {why} (encrypted layers without a TOC need streamed decryption, not \
                 implemented)"
            )
        }
    }
}

/// (chunks, regular files) of a TOC.
fn count(toc: &LayerToc) -> (u64, u64) {
    let chunks = toc.entries.iter().map(|e| e.chunks.len() as u64).sum();
    let files = toc
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Reg)
        .count() as u64;
    (chunks, files)
}

impl Inspection {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "image     {}", self.image);
        let _ = writeln!(
            out,
            "manifest  {} ({})",
            self.manifest_digest, self.manifest_media_type
        );
        let _ = writeln!(out, "config    {}", self.config_digest);
        let lazy = self.layers.iter().filter(|l| l.lazy).count();
        let _ = writeln!(
            out,
            "layers    {} ({lazy} lazily mountable by Veil)",
            self.layers.len()
        );
        for l in &self.layers {
            let _ = writeln!(
                out,
                "\nlayer {}/{}  {}",
                l.index + 1,
                self.layers.len(),
                l.digest
            );
            let _ = writeln!(out, "  media type   {}", l.media_type);
            let _ = writeln!(out, "  format       {}", l.format);
            let _ = writeln!(
                out,
                "  size         {} compressed{}",
                human(l.size),
                l.uncompressed_size
                    .map(|u| format!(", {} uncompressed", human(u)))
                    .unwrap_or_default()
            );
            if let Some(d) = &l.toc_digest {
                let _ = writeln!(out, "  toc digest   {d}");
            }
            match (l.chunks, l.files, &l.toc_note) {
                (Some(c), Some(f), _) => {
                    let _ = writeln!(
                        out,
                        "  chunks       {c} chunks in {f} files (TOC read and verified)"
                    );
                }
                (_, _, Some(note)) => {
                    let _ = writeln!(out, "  chunks       unknown: {note}");
                }
                _ => {}
            }
            match &l.encryption {
                None => {
                    let _ = writeln!(out, "  encryption   none");
                }
                Some(e) => {
                    let recipients: Vec<String> = e
                        .recipients
                        .iter()
                        .map(|r| {
                            let mut parts = Vec::new();
                            if !r.algorithms.is_empty() {
                                parts.push(r.algorithms.join(", "));
                            }
                            if !r.kids.is_empty() {
                                parts.push(format!("kid {}", r.kids.join(", ")));
                            }
                            let kind = match r.scheme.as_str() {
                                "jwe" => "jwe".to_string(),
                                veil_keyprovider::aa_packet::SCHEME => {
                                    format!("{} (KBS)", r.scheme)
                                }
                                other => other.to_string(),
                            };
                            if parts.is_empty() {
                                kind
                            } else {
                                format!("{kind} [{}]", parts.join("; "))
                            }
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        "  encryption   ocicrypt {}; recipients: {}",
                        e.cipher,
                        recipients.join(", ")
                    );
                    match (e.sealed_toc_digest, &e.key) {
                        (Some(sealed), _) => {
                            let _ = writeln!(
                                out,
                                "  layer key    unwrapped; sealed TOC digest: {}",
                                if sealed { "yes" } else { "no" }
                            );
                        }
                        (None, Some(why)) => {
                            let _ = writeln!(out, "  layer key    not unwrapped: {why}");
                        }
                        (None, None) => {}
                    }
                }
            }
            let _ = writeln!(out, "  lazy         {}", l.lazy_reason);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn desc(media: &str, annotations: &[(&str, &str)]) -> BlobDescriptor {
        BlobDescriptor {
            media_type: media.into(),
            digest: veil_registry::Digest::sha256_of(b"x"),
            size: 1,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            urls: Vec::new(),
        }
    }

    #[test]
    fn formats() {
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert_eq!(format_of(&desc(gz, &[])), "tar+gzip");
        assert_eq!(
            format_of(&desc(
                &format!("{gz}+encrypted"),
                &[(estargz::TOC_DIGEST_ANNOTATION, "sha256:x")]
            )),
            "eStargz"
        );
        let zs = "application/vnd.oci.image.layer.v1.tar+zstd";
        assert_eq!(
            format_of(&desc(
                zs,
                &[(zstdchunked::MANIFEST_CHECKSUM_ANNOTATION, "x")]
            )),
            "zstd:chunked"
        );
        assert_eq!(format_of(&desc(zs, &[])), "tar+zstd");
        assert_eq!(
            format_of(&desc("application/vnd.oci.image.layer.v1.tar", &[])),
            "tar"
        );
        assert_eq!(
            format_of(&desc(
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                &[]
            )),
            "tar+gzip"
        );
    }

    #[test]
    fn jwe_header_algorithms() {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let flat = serde_json::json!({
            "protected": b64(&serde_json::json!({"alg":"RSA-OAEP","enc":"A256GCM"})),
            "encrypted_key": "x", "iv": "x", "ciphertext": "x", "tag": "x"
        });
        assert_eq!(jwe_headers(flat.to_string().as_bytes()).0, ["RSA-OAEP"]);
        let general = serde_json::json!({
            "protected": b64(&serde_json::json!({"enc":"A256GCM"})),
            "recipients": [
                {"header": {"alg": "RSA-OAEP"}},
                {"header": {"alg": "ECDH-ES+A256KW", "kid": "k2"}},
                {"header": {"alg": "RSA-OAEP"}}
            ]
        });
        let (algs, kids) = jwe_headers(general.to_string().as_bytes());
        assert_eq!(algs, ["RSA-OAEP", "ECDH-ES+A256KW"]);
        assert_eq!(kids, ["k2"]);
    }
}
