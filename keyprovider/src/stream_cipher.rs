//! The ocicrypt layer cipher over a whole blob, front to back: [`StreamCipher::reader`]
//! decrypts while it feeds the HMAC (the streamed path: a layer fetched whole, verified,
//! then indexed), and [`HmacCheck`] checks the HMAC of a ciphertext already at hand (a
//! lazily served layer once its background fetch is complete).
//!
//! ocicrypt's HMAC covers the whole ciphertext, so nothing read through a
//! [`VerifyingReader`] is authentic until [`VerifyingReader::finish`] says so. Plaintext
//! buffers are zeroized when replaced or dropped; keys live in zeroizing buffers.

use std::sync::Arc;

use veil_blob::BlobSource;
use zeroize::Zeroizing;

use crate::cipher::{apply_keystream_at, HmacError, HmacVerifier, HMAC_LEN, KEY_LEN, NONCE_LEN};

/// Why a whole-blob pass did not authenticate the blob.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The ciphertext could not be read.
    #[error("reading the ciphertext at {offset}: {source}")]
    Read {
        /// Where the read failed.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HMAC does not match (or the layer's expected HMAC is malformed).
    #[error(transparent)]
    Hmac(#[from] HmacError),
}

/// The layer cipher for one front-to-back pass over the whole ciphertext:
/// [`StreamCipher::reader`] decrypts while it feeds the ocicrypt HMAC.
pub struct StreamCipher {
    key: Zeroizing<[u8; KEY_LEN]>,
    nonce: Zeroizing<[u8; NONCE_LEN]>,
    expected: [u8; HMAC_LEN],
}

impl StreamCipher {
    /// The cipher of a layer encrypted with `key` and `nonce` whose public options carry
    /// the HMAC `expected`.
    pub fn new(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], expected: [u8; HMAC_LEN]) -> Self {
        Self {
            key: Zeroizing::new(*key),
            nonce: Zeroizing::new(*nonce),
            expected,
        }
    }

    /// A reader of the plaintext (still compressed) blob, decrypting `ciphertext` from
    /// its start a piece at a time through `handle`'s runtime (call its `read` from a
    /// blocking thread). Nothing it returns is authenticated until
    /// [`VerifyingReader::finish`] says so.
    pub fn reader(
        &self,
        ciphertext: Arc<dyn BlobSource>,
        handle: tokio::runtime::Handle,
    ) -> VerifyingReader {
        VerifyingReader {
            key: self.key.clone(),
            nonce: self.nonce.clone(),
            expected: self.expected,
            size: ciphertext.size(),
            ciphertext,
            handle,
            offset: 0,
            buf: Zeroizing::new(Vec::new()),
            buf_pos: 0,
            mac: None,
        }
    }
}

/// Ciphertext bytes read at a time by a [`VerifyingReader`].
const STREAM_PIECE: u64 = 4 << 20;

/// Decrypts an ocicrypt blob front to back and computes its HMAC on the way (see
/// [`StreamCipher::reader`]). Its buffer of plaintext is zeroized when replaced or
/// dropped.
pub struct VerifyingReader {
    key: Zeroizing<[u8; KEY_LEN]>,
    nonce: Zeroizing<[u8; NONCE_LEN]>,
    expected: [u8; HMAC_LEN],
    ciphertext: Arc<dyn BlobSource>,
    handle: tokio::runtime::Handle,
    size: u64,
    offset: u64,
    buf: Zeroizing<Vec<u8>>,
    buf_pos: usize,
    mac: Option<HmacVerifier>,
}

impl VerifyingReader {
    /// Ciphertext bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Reads the next piece of ciphertext into the buffer, feeding the HMAC, and
    /// decrypts it; `false` at the end of the blob.
    fn next_piece(&mut self) -> std::io::Result<bool> {
        if self.offset >= self.size {
            return Ok(false);
        }
        if self.mac.is_none() {
            self.mac = Some(
                HmacVerifier::new(&self.key, &self.expected)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            );
        }
        let end = (self.offset + STREAM_PIECE).min(self.size);
        let mut bytes = self
            .handle
            .block_on(self.ciphertext.read_range(self.offset..end))?;
        if bytes.len() as u64 != end - self.offset {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the registry returned {} bytes for ciphertext range {}..{end}",
                    bytes.len(),
                    self.offset
                ),
            ));
        }
        if let Some(mac) = &mut self.mac {
            mac.update(&bytes);
        }
        apply_keystream_at(&self.key, &self.nonce, self.offset, &mut bytes);
        self.offset = end;
        self.buf = Zeroizing::new(bytes);
        self.buf_pos = 0;
        Ok(true)
    }

    /// Reads whatever of the blob has not been read yet, then checks the HMAC over the
    /// whole ciphertext. `Err` says why the blob is not authentic (or could not be read).
    pub fn finish(mut self) -> Result<(), StreamError> {
        loop {
            match self.next_piece() {
                Ok(true) => {}
                Ok(false) => break,
                Err(source) => {
                    return Err(StreamError::Read {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
        let mac = match self.mac.take() {
            Some(mac) => mac,
            None => HmacVerifier::new(&self.key, &self.expected)?,
        };
        Ok(mac.finish()?)
    }
}

impl std::io::Read for VerifyingReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.buf_pos == self.buf.len() && !self.next_piece()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
}

/// The ocicrypt HMAC-SHA256 over a layer's whole ciphertext: the only integrity check
/// ocicrypt itself has, usable once the whole blob is at hand.
pub struct HmacCheck {
    key: Zeroizing<[u8; KEY_LEN]>,
    expected: [u8; HMAC_LEN],
}

/// Ciphertext bytes read at a time by [`HmacCheck::verify`].
const HMAC_CHECK_PIECE: u64 = 8 << 20;

impl HmacCheck {
    /// The check of a layer encrypted with `key` whose public options carry `expected`.
    pub fn new(key: &[u8; KEY_LEN], expected: [u8; HMAC_LEN]) -> Self {
        Self {
            key: Zeroizing::new(*key),
            expected,
        }
    }

    /// Reads `ciphertext` from start to end and checks its HMAC.
    pub async fn verify(&self, ciphertext: &dyn BlobSource) -> Result<(), StreamError> {
        let mut verifier = HmacVerifier::new(&self.key, &self.expected)?;
        let size = ciphertext.size();
        let mut offset = 0;
        while offset < size {
            let end = (offset + HMAC_CHECK_PIECE).min(size);
            let bytes = ciphertext
                .read_range(offset..end)
                .await
                .map_err(|source| StreamError::Read { offset, source })?;
            verifier.update(&bytes);
            offset = end;
        }
        Ok(verifier.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::hmac_sha256;
    use veil_blob::MemoryBlob;

    #[tokio::test]
    async fn whole_layer_hmac_accepts_the_original_and_refuses_a_flipped_byte() {
        let key = [7u8; 32];
        let mut blob: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        let check = HmacCheck::new(&key, hmac_sha256(&key, &blob));
        check.verify(&MemoryBlob(blob.clone())).await.unwrap();
        blob[12_345_678] ^= 1;
        let err = check
            .verify(&MemoryBlob(blob))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_streaming_reader_decrypts_and_authenticates_the_whole_blob() {
        use std::io::Read;
        let key = [3u8; 32];
        let nonce = [0xffu8; 16]; // the counter wraps inside the blob
        let plain: Vec<u8> = (0..9_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut blob = plain.clone();
        apply_keystream_at(&key, &nonce, 0, &mut blob);
        let cipher = StreamCipher::new(&key, &nonce, hmac_sha256(&key, &blob));
        let read_all = |blob: Vec<u8>, stop_at: usize| {
            let mut reader = cipher.reader(
                Arc::new(MemoryBlob(blob)),
                tokio::runtime::Handle::current(),
            );
            tokio::task::spawn_blocking(move || {
                let mut out = vec![0u8; stop_at];
                reader.read_exact(&mut out).unwrap();
                (out, reader.finish())
            })
        };
        let (out, verdict) = read_all(blob.clone(), plain.len()).await.unwrap();
        assert_eq!(out, plain);
        verdict.unwrap();
        // Stopping early still checks everything: finish reads the rest.
        let (out, verdict) = read_all(blob.clone(), 1000).await.unwrap();
        assert_eq!(out, plain[..1000]);
        verdict.unwrap();
        blob[8_765_432] ^= 0x10;
        let (_, verdict) = read_all(blob, 1000).await.unwrap();
        assert!(verdict.unwrap_err().to_string().contains("does not match"));
    }
}
