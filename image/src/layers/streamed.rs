//! The streamed path of [`LazyLayers`]: a layer that cannot be read lazily is fetched
//! whole once, authenticated over every byte, indexed on the way, and only then served.
//!
//! Two kinds of layer take it, through one function ([`LazyLayers::resolve_streamed`])
//! and two kinds of [`VerifiedPass`]:
//!
//! - **encrypted** layers without a usable TOC (or without a sealed TOC digest under
//!   `require_sealed_toc`): the pass decrypts while it feeds the ocicrypt HMAC, which is
//!   checked at the end ([`VerifyingReader`]);
//! - **plain** (unencrypted) tar / tar+gzip / tar+zstd layers, when
//!   [`LazyOptions::stream_plain`](super::LazyOptions::stream_plain) is on (the guest,
//!   which has no containerd to unpack them): the pass hashes the blob as it reads it, and
//!   the hash must equal the descriptor's digest ([`DigestPass`]) — the manifest, which
//!   the image reference or its digest pins, vouches for every byte.
//!
//! Either way nothing is served before the verdict: the layer is handed out for mounting
//! only after the pass succeeded, and later reads are guarded by the chunk digests the
//! verified pass recorded (each chunk is decompressed again from the nearest restart
//! point, in memory, and served only if it matches).

use std::io::Read;
use std::sync::Arc;

use sha2::{Digest as _, Sha256, Sha512};
use veil_blob::BlobSource;
use veil_formats::estargz;
use veil_formats::stream::reader::BlobReader;
use veil_formats::stream::{index_stream, IndexOptions, StreamCompression, StreamedSource};
use veil_fusefs::access_log::AccessLog;
use veil_fusefs::disk_cache::CachedBlob;
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::tree::LayerTree;
use veil_keyprovider::stream_cipher::VerifyingReader;
use veil_registry::{BlobDescriptor, Digest};

use super::{LayerEntry, LazyLayers, ReadyLayer, STREAMED_MAX_REQUEST};
use crate::error::ImageError;
use crate::resolver::{RemoteLayer, Resolved};
use crate::verify::{DiffIdState, DIFF_ID_OFF};

/// One front-to-back pass over a whole layer blob that yields the (decrypted, still
/// compressed) layer bytes and, at the end, says whether all of it was authentic.
pub(super) trait VerifiedPass: Read + Send {
    /// Blob bytes read so far.
    fn bytes_read(&self) -> u64;
    /// Reads what is left of the blob and checks it whole; `Err` says why it is not
    /// authentic (or could not be read).
    fn finish(self: Box<Self>) -> Result<(), String>;
}

impl VerifiedPass for VerifyingReader {
    fn bytes_read(&self) -> u64 {
        VerifyingReader::bytes_read(self)
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        VerifyingReader::finish(*self).map_err(|e| e.to_string())
    }
}

/// The running hash of a [`DigestPass`].
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// An unencrypted blob read front to back while its digest is computed; authentic when
/// the digest is the descriptor's.
pub(super) struct DigestPass {
    reader: BlobReader,
    hasher: Hasher,
    expected: Digest,
    read: u64,
}

impl DigestPass {
    /// A pass over `blob`, which must hash to `expected`.
    pub(super) fn new(
        blob: Arc<dyn BlobSource>,
        expected: Digest,
        handle: tokio::runtime::Handle,
    ) -> Self {
        let hasher = match expected.algorithm() {
            veil_registry::digest::DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            veil_registry::digest::DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        };
        Self {
            reader: BlobReader::new(blob, handle, 0),
            hasher,
            expected,
            read: 0,
        }
    }
}

impl Read for DigestPass {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(&buf[..n]),
            Hasher::Sha512(h) => h.update(&buf[..n]),
        }
        self.read += n as u64;
        Ok(n)
    }
}

impl VerifiedPass for DigestPass {
    fn bytes_read(&self) -> u64 {
        self.read
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        std::io::copy(&mut *self, &mut std::io::sink())
            .map_err(|e| format!("reading the blob at {}: {e}", self.read))?;
        let hex = match self.hasher {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        if hex == self.expected.hex() {
            Ok(())
        } else {
            Err(format!(
                "its {} bytes hash to {}:{hex}, the manifest says {}",
                self.read,
                self.expected.algorithm().name(),
                self.expected
            ))
        }
    }
}

/// What the streamed path needs to know of the layer besides its bytes.
pub(super) struct StreamedLayer<'a> {
    /// The layer requested.
    pub layer: &'a RemoteLayer,
    /// Its descriptor as if unencrypted (media type without `+encrypted`).
    pub plain: &'a BlobDescriptor,
    /// Its blob size.
    pub blob_size: u64,
    /// Whether it is encrypted (names the check in messages; file names are redacted).
    pub encrypted: bool,
    /// The layer bytes to serve from, decrypted when encrypted (still compressed).
    pub source: Arc<dyn BlobSource>,
    /// The blob in the disk cache, when there is one (dropped when the pass fails).
    pub cached: Option<Arc<CachedBlob>>,
    /// Why the layer is not served lazily.
    pub why_not_lazy: &'a str,
}

impl LazyLayers {
    /// Serves a layer that cannot be read lazily: the streamed path (see the module
    /// documentation). `pass` reads the whole blob once and gives the verdict.
    ///
    /// **Nothing is served before that verdict**: the layer is mounted only after it, so
    /// a lookup waits (Prepare, or the guest's pull, does not return) until the stream has
    /// been read and verified whole, and an ENOENT is only ever given by a complete,
    /// verified index. A mismatch (or a stream that does not decompress or is not a tar)
    /// fails, naming the layer; the disk copy is dropped.
    pub(super) async fn resolve_streamed(
        &self,
        what: StreamedLayer<'_>,
        pass: Box<dyn VerifiedPass>,
    ) -> Result<Resolved, ImageError> {
        let name = what.layer.layer_digest.clone();
        let kind = if what.encrypted {
            "encrypted"
        } else {
            "unencrypted"
        };
        let check = if what.encrypted {
            "ocicrypt HMAC"
        } else {
            "blob digest"
        };
        let blob_size = what.blob_size;
        let mt = what.plain.media_type.clone();
        let Some(compression) = StreamCompression::from_media_type(&mt) else {
            return Ok(Resolved::Fail(format!(
                "{kind} layer {name} cannot be served lazily ({}) and its media type {mt:?} \
                 is not a tar layer Veil can stream",
                what.why_not_lazy
            )));
        };
        let options = IndexOptions {
            drop_estargz_bookkeeping: what
                .plain
                .annotations
                .contains_key(estargz::TOC_DIGEST_ANNOTATION),
            limits: self.options.limits,
            ..IndexOptions::default()
        };
        tracing::info!(
            layer = %name,
            compression = compression.name(),
            blob_size,
            encrypted = what.encrypted,
            reason = what.why_not_lazy,
            "streaming the whole layer: fetch, verify the {check}, index"
        );
        let started = std::time::Instant::now();
        let mut pass = pass;
        let ran = tokio::task::spawn_blocking(move || {
            let indexed = index_stream(compression, &mut pass, &options);
            let read = pass.bytes_read();
            // The verdict comes first: a stream that fails to decompress because it was
            // tampered with is reported as tampered.
            let verdict = pass.finish();
            (indexed, verdict, read)
        })
        .await;
        let (indexed, verdict, read) = match ran {
            Ok(p) => p,
            Err(e) => {
                return Ok(Resolved::Fail(format!(
                    "{kind} layer {name}: the streaming task failed: {e}"
                )))
            }
        };
        if let Err(why) = verdict {
            if let Some(cached) = &what.cached {
                cached.forget(0..cached.size());
            }
            tracing::error!(layer = %name, reason = %why, "streamed layer failed authentication; nothing of it is served");
            return Ok(Resolved::Fail(format!(
                "{kind} layer {name} failed authentication ({check}) after streaming all \
                 {blob_size} bytes: {why} (the blob was altered or corrupted); nothing of it \
                 is served"
            )));
        }
        let fail = |e: &dyn std::fmt::Display| {
            Resolved::Fail(format!(
                "{kind} layer {name} is authentic but cannot be served: {e}"
            ))
        };
        let indexed = match indexed {
            Ok(i) => i,
            Err(e) => return Ok(fail(&e)),
        };
        let tree = match LayerTree::build(&indexed.toc, &self.options.limits) {
            Ok(t) => Arc::new(t),
            Err(e) => return Ok(fail(&e)),
        };
        tracing::info!(
            layer = %name,
            compression = compression.name(),
            blob_size,
            blob_read = read,
            uncompressed = indexed.index.size,
            entries = indexed.toc.entries.len(),
            restart_points = indexed.index.restart_points(),
            index_memory = indexed.index.memory(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "streamed layer verified ({check}) and indexed; serving it"
        );
        let source: Arc<dyn BlobSource> = Arc::new(StreamedSource::new(what.source, indexed.index));
        let access = Arc::new(AccessLog::for_tree(&tree));
        let reader = Arc::new(ChunkReader::new(
            name.clone(),
            tree,
            source,
            self.cache.clone(),
            ReaderOptions {
                max_request: STREAMED_MAX_REQUEST,
                // Encrypted: file names are plaintext; logs name inodes.
                redact_paths: what.encrypted,
                // Restart-point windows: one decompression from a restart point serves
                // the chunks around the miss too (nothing below keeps plaintext).
                window: self.options.window.options(true),
            },
        ));
        let entry = LayerEntry {
            reader: reader.clone(),
            image: what.layer.image_ref.clone(),
            blob_size,
            cached: what.cached,
            mode: "streamed",
            format: compression.name(),
            streamed_bytes: read,
            // Fetched whole before it is served: counted as prefetched.
            prefetch_bytes: Arc::new(std::sync::atomic::AtomicU64::new(read)),
            // Authenticated whole by the HMAC or the blob digest instead.
            diff_id: DiffIdState::new(DIFF_ID_OFF),
            access: access.clone(),
        };
        let status = self.status_file_for(&name, &entry, what.encrypted);
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, entry);
        Ok(Resolved::Lazy(Box::new(ReadyLayer {
            reader,
            access,
            runtime: self.runtime.clone(),
            options: self.mount_options.clone(),
            background: None,
            prefetching: None,
            status,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_blob::MemoryBlob;

    fn pass_over(blob: Vec<u8>, expected: Digest) -> DigestPass {
        DigestPass::new(
            Arc::new(MemoryBlob(blob)),
            expected,
            tokio::runtime::Handle::current(),
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_digest_pass_accepts_the_blob_and_refuses_a_flipped_byte() {
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::sha256_of(&blob);
        let (good, bad) = (blob.clone(), {
            let mut b = blob;
            b[1_234_567] ^= 1;
            b
        });
        let d = digest.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let mut pass = Box::new(pass_over(good, d));
            // Reading part of it, then finishing, checks all of it.
            let mut first = [0u8; 1000];
            pass.read_exact(&mut first).unwrap();
            pass.finish()
        })
        .await
        .unwrap();
        verdict.unwrap();
        let verdict =
            tokio::task::spawn_blocking(move || Box::new(pass_over(bad, digest)).finish())
                .await
                .unwrap();
        let err = verdict.unwrap_err();
        assert!(err.contains("the manifest says sha256:"), "{err}");
    }
}
