//! Micro-benchmarks of the steps of Veil's read path (`cargo bench -p veil-bench`):
//! AES-256-CTR decryption at an offset (ocicrypt layers), decoding one chunk (gzip member
//! for eStargz, zstd frame for zstd:chunked: decompress + SHA-256 check, Veil's
//! `decode_chunk`), and SHA-256 alone. Throughput is per uncompressed byte (what a
//! container reads).

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::{Digest, Sha256};
use veil_formats::codec::{decode_chunk, sha256_digest};
use veil_formats::limits::Limits;
use veil_formats::toc::{Chunk, Compression};

/// Veil's default chunk size (`veil convert --chunk-size 4M`).
/// The default chunk size of Veil's layer writers.
const CHUNK: usize = veil_formats::estargz::DEFAULT_CHUNK_SIZE as usize;

/// `len` bytes that compress like a mix of program text and binary data (about 3:1 with
/// gzip).
fn sample(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut n = 0u64;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if n.is_multiple_of(4) {
            out.extend_from_slice(&state.to_le_bytes());
            out.extend_from_slice(&(state >> 3).to_le_bytes());
        } else {
            out.extend_from_slice(
                format!(
                    "def f_{}(x):\n    return x * {} + {}\n",
                    n,
                    state % 97,
                    n % 13
                )
                .as_bytes(),
            );
        }
        n += 1;
    }
    out.truncate(len);
    out
}

fn chunk_for(data: &[u8], compressed: &[u8], compression: Compression) -> Chunk {
    Chunk {
        file_offset: 0,
        size: data.len() as u64,
        blob_offset: 0,
        blob_end: compressed.len() as u64,
        inner_offset: 0,
        digest: sha256_digest(data),
        compression,
    }
}

fn ctr_decrypt(c: &mut Criterion) {
    let key = [7u8; 32];
    let nonce = [9u8; 16];
    let mut g = c.benchmark_group("aes256-ctr decrypt");
    for size in [64 << 10, CHUNK] {
        let mut buf = sample(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                veil_keyprovider::cipher::apply_keystream_at(
                    &key,
                    &nonce,
                    123 * 4096,
                    black_box(&mut buf),
                )
            })
        });
    }
    g.finish();
}

fn chunk_decode(c: &mut Criterion) {
    let data = sample(CHUNK);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&data).unwrap();
    let gzip = gz.finish().unwrap();
    let zstd = zstd::encode_all(&data[..], 3).unwrap();
    let mut g = c.benchmark_group("chunk decode (4 MiB, decompress + sha256 check)");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for (name, blob, compression) in [
        ("gzip (eStargz)", &gzip, Compression::Gzip),
        ("zstd (zstd:chunked)", &zstd, Compression::Zstd),
    ] {
        let chunk = chunk_for(&data, blob, compression);
        g.bench_function(name, |b| {
            b.iter(|| decode_chunk(black_box(&chunk), black_box(blob), &Limits::default()).unwrap())
        });
    }
    g.finish();
    eprintln!(
        "chunk decode: 4 MiB sample compresses to {} (gzip -6) and {} (zstd -3) bytes",
        gzip.len(),
        zstd.len()
    );
}

fn sha256(c: &mut Criterion) {
    let data = sample(CHUNK);
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("4 MiB", |b| b.iter(|| Sha256::digest(black_box(&data))));
    g.finish();
}

criterion_group!(micro, ctr_decrypt, chunk_decode, sha256);
criterion_main!(micro);
