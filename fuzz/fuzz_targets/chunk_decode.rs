//! One chunk decoded against its digest (`veil_formats::codec::decode_chunk`): the input
//! gives the compression, `inner_offset`, `size` and the compressed bytes. The digest is
//! that of what a reference decoder (flate2 / zstd, read in full up to the same limit)
//! finds at that place, so both the refusal paths and the success path are reached, and
//! a success must return exactly those bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::io::Read;
use veil_formats::codec::{decode_chunk, MAX_CHUNK_SIZE};
use veil_formats::limits::Limits;
use veil_formats::toc::{Chunk, Compression};

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let compression = match data[0] % 3 {
        0 => Compression::Gzip,
        1 => Compression::Zstd,
        _ => Compression::None,
    };
    let inner_offset = u64::from(u16::from_le_bytes([data[1], data[2]]));
    let size = u64::from(u32::from_le_bytes([data[3], data[4], data[5], data[6]]) % (1 << 20));
    let compressed = &data[7..];
    // The reference: everything up to inner_offset + size, bounded.
    let want = (inner_offset + size).min(MAX_CHUNK_SIZE);
    let mut plain = Vec::new();
    let reference = match compression {
        Compression::Gzip => flate2::read::MultiGzDecoder::new(compressed)
            .take(want)
            .read_to_end(&mut plain)
            .is_ok(),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(compressed) {
            Ok(d) => d.take(want).read_to_end(&mut plain).is_ok(),
            Err(_) => false,
        },
        Compression::None => {
            plain = compressed.to_vec();
            true
        }
    };
    let expected = plain.get(inner_offset as usize..(inner_offset + size) as usize);
    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(expected.unwrap_or(b"not there")))
    );
    let chunk = Chunk {
        file_offset: 0,
        size,
        blob_offset: 4096,
        blob_end: 4096 + compressed.len() as u64,
        inner_offset,
        digest,
        compression,
    };
    if let Ok(out) = decode_chunk(&chunk, compressed, &Limits::default()) {
        assert!(reference, "decoded a chunk the reference decoder refuses");
        assert_eq!(
            Some(out.as_slice()),
            expected,
            "decoded bytes differ from the reference"
        );
    }
});
