//! The ocicrypt layer cipher: AES-256-CTR at any byte offset, and the HMAC-SHA256 check.
//!
//! ocicrypt encrypts a layer blob with AES-256-CTR whose 16-byte nonce is the whole initial
//! counter block, incremented as one 128-bit big-endian integer (Go `cipher.NewCTR`, Rust
//! `Ctr128BE`). The keystream is seekable: the byte at offset `o` is keystream block
//! `nonce + o / 16` (mod 2^128), byte `o % 16`. So any range of the ciphertext decrypts on
//! its own, and the ciphertext is exactly as long as the plaintext. The MAC is HMAC-SHA256
//! keyed with the same 32-byte key, over the whole ciphertext and nothing else, so it can
//! only be checked once every byte has been seen ([`HmacVerifier`]).
//!
//! Keys are held in zeroizing buffers; the AES key schedule is zeroized on drop (the `aes`
//! crate's `zeroize` feature). Nothing here prints key bytes.

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use futures::StreamExt;
use veil_blob::{BlobSource, RangeStream};

/// AES-256 key length.
pub const KEY_LEN: usize = 32;
/// Nonce (initial counter block) length.
pub const NONCE_LEN: usize = 16;
/// HMAC-SHA256 tag length.
pub const HMAC_LEN: usize = 32;

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// XORs the keystream for blob offset `offset` into `buf`: encrypts or decrypts `buf` in
/// place as the bytes at `offset..offset + buf.len()` of the blob.
pub fn apply_keystream_at(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    offset: u64,
    buf: &mut [u8],
) {
    let mut cipher = Aes256Ctr::new(key.into(), nonce.into());
    // The counter is 128 bits: seeking computes nonce + offset / 16 modulo 2^128, and no
    // u64 offset can exhaust the keystream, so neither call can fail.
    cipher.seek(offset);
    cipher.apply_keystream(buf);
}

/// A [`BlobSource`] that decrypts an ocicrypt-encrypted blob read from `inner`: any range,
/// one inner read per range. It does not authenticate (see [`HmacVerifier`]).
pub struct CtrDecryptingSource {
    inner: Arc<dyn BlobSource>,
    key: Zeroizing<[u8; KEY_LEN]>,
    nonce: Zeroizing<[u8; NONCE_LEN]>,
}

impl CtrDecryptingSource {
    /// Decrypts `inner` with `key` and `nonce` (copied into zeroizing storage).
    pub fn new(inner: Arc<dyn BlobSource>, key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN]) -> Self {
        Self {
            inner,
            key: Zeroizing::new(*key),
            nonce: Zeroizing::new(*nonce),
        }
    }

    /// The ciphertext source.
    pub fn inner(&self) -> &Arc<dyn BlobSource> {
        &self.inner
    }
}

impl fmt::Debug for CtrDecryptingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CtrDecryptingSource")
            .field("size", &self.inner.size())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl BlobSource for CtrDecryptingSource {
    /// Offsets are the same in ciphertext and plaintext: the inner source drops its copy.
    fn discard(&self, range: Range<u64>) {
        self.inner.discard(range);
    }

    /// Offsets are the same in ciphertext and plaintext: whatever the inner source holds.
    fn held_locally(&self, range: Range<u64>) -> bool {
        self.inner.held_locally(range)
    }

    /// Ciphertext into the inner source's local copy: nothing is decrypted.
    fn fetch_ahead(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<u64>> {
        self.inner.fetch_ahead(range)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    /// The inner source's pieces, each decrypted at its offset as it arrives.
    fn stream_range(&self, range: Range<u64>) -> RangeStream<'_> {
        let mut at = range.start;
        Box::pin(self.inner.stream_range(range).map(move |piece| {
            let mut piece = Vec::from(piece?);
            apply_keystream_at(&self.key, &self.nonce, at, &mut piece);
            at += piece.len() as u64;
            Ok(piece.into())
        }))
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            let start = range.start;
            let expected = range.end.saturating_sub(range.start);
            let mut bytes = self.inner.read_range(range).await?;
            if bytes.len() as u64 != expected {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "ciphertext source returned {} bytes for a {expected}-byte range",
                        bytes.len()
                    ),
                ));
            }
            apply_keystream_at(&self.key, &self.nonce, start, &mut bytes);
            Ok(bytes)
        })
    }
}

/// The ocicrypt HMAC did not match: the ciphertext (or the public options) was altered.
#[derive(Debug, thiserror::Error)]
pub enum HmacError {
    /// The expected HMAC from the public options is not 32 bytes.
    #[error("the layer's HMAC is {0} bytes, expected {HMAC_LEN}")]
    BadLength(usize),
    /// The computed HMAC differs from the expected one.
    #[error("HMAC-SHA256 of the layer ciphertext does not match the layer's public options")]
    Mismatch,
}

/// HMAC-SHA256 over a whole ciphertext, fed in order, then compared in constant time.
pub struct HmacVerifier {
    mac: Hmac<Sha256>,
    expected: [u8; HMAC_LEN],
    fed: u64,
}

impl HmacVerifier {
    /// A verifier for the ciphertext of a layer encrypted with `key`, whose public options
    /// carry `expected`.
    pub fn new(key: &[u8; KEY_LEN], expected: &[u8]) -> Result<Self, HmacError> {
        let expected: [u8; HMAC_LEN] = expected
            .try_into()
            .map_err(|_| HmacError::BadLength(expected.len()))?;
        Ok(Self {
            mac: new_mac(key),
            expected,
            fed: 0,
        })
    }

    /// Feeds the next ciphertext bytes (in blob order, no gaps).
    pub fn update(&mut self, ciphertext: &[u8]) {
        self.mac.update(ciphertext);
        self.fed += ciphertext.len() as u64;
    }

    /// How many bytes have been fed.
    pub fn bytes_fed(&self) -> u64 {
        self.fed
    }

    /// Compares the HMAC of everything fed with the expected one, in constant time.
    pub fn finish(self) -> Result<(), HmacError> {
        self.mac
            .verify_slice(&self.expected)
            .map_err(|_| HmacError::Mismatch)
    }
}

impl fmt::Debug for HmacVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacVerifier")
            .field("bytes_fed", &self.fed)
            .finish()
    }
}

/// HMAC-SHA256 of `ciphertext` keyed with `key` (for writing the public options).
pub fn hmac_sha256(key: &[u8; KEY_LEN], ciphertext: &[u8]) -> [u8; HMAC_LEN] {
    let mut mac = new_mac(key);
    mac.update(ciphertext);
    mac.finalize().into_bytes().into()
}

fn new_mac(key: &[u8; KEY_LEN]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_blob::MemoryBlob;

    const KEY: [u8; 32] = [7; 32];

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn encrypt(nonce: &[u8; 16], plain: &[u8]) -> Vec<u8> {
        let mut out = plain.to_vec();
        apply_keystream_at(&KEY, nonce, 0, &mut out);
        out
    }

    /// Ciphertext in memory, streamed in 7-byte pieces.
    struct Pieces(MemoryBlob);

    impl BlobSource for Pieces {
        fn size(&self) -> u64 {
            self.0.size()
        }

        fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
            self.0.read_range(range)
        }

        fn stream_range(&self, range: Range<u64>) -> RangeStream<'_> {
            let bytes = self.0 .0[range.start as usize..range.end as usize].to_vec();
            let pieces: Vec<io::Result<_>> =
                bytes.chunks(7).map(|c| Ok(c.to_vec().into())).collect();
            Box::pin(futures::stream::iter(pieces))
        }
    }

    #[tokio::test]
    async fn a_streamed_range_decrypts_piece_by_piece_like_the_whole() {
        let nonce = [9u8; 16];
        let plain = plaintext(5_000);
        let inner = Arc::new(Pieces(MemoryBlob(encrypt(&nonce, &plain))));
        let source = CtrDecryptingSource::new(inner, &KEY, &nonce);
        for (start, end) in [(0, 5_000), (3, 4_001), (16, 17)] {
            let got = veil_blob::stream::collect(source.stream_range(start..end), start..end)
                .await
                .unwrap();
            assert_eq!(got, &plain[start as usize..end as usize], "{start}..{end}");
        }
    }

    #[tokio::test]
    async fn any_range_decrypts_like_the_whole() {
        let nonce = [3u8; 16];
        let plain = plaintext(10_000);
        let source =
            CtrDecryptingSource::new(Arc::new(MemoryBlob(encrypt(&nonce, &plain))), &KEY, &nonce);
        assert_eq!(source.size(), 10_000);
        for (start, end) in [
            (0, 10_000),
            (0, 1),
            (15, 17),
            (16, 32),
            (4097, 9999),
            (9999, 10_000),
            (5, 5),
        ] {
            let got = source.read_range(start..end).await.unwrap();
            assert_eq!(got, &plain[start as usize..end as usize], "{start}..{end}");
        }
        assert!(source.read_range(9_000..10_001).await.is_err());
        assert!(!format!("{source:?}").contains("7, 7"));
    }

    #[test]
    fn counter_wraps_as_one_128_bit_integer() {
        // Counter block all ones: the next block is all zeros (Go's cipher.NewCTR does the same).
        let nonce = [0xFF; 16];
        let mut seq = vec![0u8; 64];
        apply_keystream_at(&KEY, &nonce, 0, &mut seq);
        let mut zero_block = vec![0u8; 16];
        apply_keystream_at(&KEY, &[0u8; 16], 0, &mut zero_block);
        assert_eq!(&seq[16..32], &zero_block[..]);
        // Seeking across the wrap gives the same bytes as running through it.
        let mut sought = vec![0u8; 40];
        apply_keystream_at(&KEY, &nonce, 13, &mut sought);
        assert_eq!(&sought[..], &seq[13..53]);
        // A carry across the low 64 bits.
        let mut nonce = [0u8; 16];
        nonce[8..].copy_from_slice(&[0xFF; 8]);
        let mut seq = vec![0u8; 32];
        apply_keystream_at(&KEY, &nonce, 0, &mut seq);
        let mut next = [0u8; 16];
        next[7] = 1;
        let mut block = vec![0u8; 16];
        apply_keystream_at(&KEY, &next, 0, &mut block);
        assert_eq!(&seq[16..], &block[..]);
    }

    #[test]
    fn known_answer_nist_sp800_38a_f5_5() {
        // NIST SP 800-38A F.5.5 CTR-AES256.Encrypt, blocks 1 and 2, second block alone.
        let key: [u8; 32] =
            hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .unwrap()
                .try_into()
                .unwrap();
        let nonce: [u8; 16] = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .unwrap()
            .try_into()
            .unwrap();
        let mut block2 = hex::decode("ae2d8a571e03ac9c9eb76fac45af8e51").unwrap();
        apply_keystream_at(&key, &nonce, 16, &mut block2);
        assert_eq!(hex::encode(block2), "f443e3ca4d62b59aca84e990cacaf5c5");
    }

    #[test]
    fn hmac_verifies_in_pieces_and_detects_flips() {
        let cipher = encrypt(&[1; 16], &plaintext(5000));
        let tag = hmac_sha256(&KEY, &cipher);
        let mut v = HmacVerifier::new(&KEY, &tag).unwrap();
        for piece in cipher.chunks(777) {
            v.update(piece);
        }
        assert_eq!(v.bytes_fed(), 5000);
        v.finish().unwrap();

        let mut flipped = cipher.clone();
        flipped[4321] ^= 1;
        let mut v = HmacVerifier::new(&KEY, &tag).unwrap();
        v.update(&flipped);
        assert!(matches!(v.finish(), Err(HmacError::Mismatch)));
        let mut v = HmacVerifier::new(&KEY, &tag).unwrap();
        v.update(&cipher[..4999]);
        assert!(v.finish().is_err());
        assert!(matches!(
            HmacVerifier::new(&KEY, &tag[..31]),
            Err(HmacError::BadLength(31))
        ));
    }
}
