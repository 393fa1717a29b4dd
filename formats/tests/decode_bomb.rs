//! Decompression bombs through the chunk codec: whatever a chunk's member or frame would
//! inflate to and whatever its record claims, one decode costs at most
//! `veil_formats::limits::MAX_CHUNK_SIZE` of output and allocation, and claims beyond the
//! limit are refused before anything is allocated or inflated.
//!
//! A counting global allocator measures the peak Rust heap of each decode; the cases run
//! one after another in a single test so that no other test's allocations are counted.
//! libzstd allocates its window with C's malloc, which the counter does not see: that
//! allocation is bounded by the window limit (`MAX_ZSTD_WINDOW_LOG`), tested last.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use veil_formats::codec::{decode_chunk, sha256_digest, CodecError, MAX_ZSTD_WINDOW_LOG};
use veil_formats::limits::{Limits, MAX_CHUNK_SIZE};
use veil_formats::toc::{Chunk, Compression};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let live = LIVE.fetch_add(grow, Ordering::SeqCst) + grow;
                PEAK.fetch_max(live, Ordering::SeqCst);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Decodes `chunk` from `member`, returning the result, the peak heap above what was
/// live before, and the time taken.
fn measured(chunk: &Chunk, member: &[u8]) -> (Result<Vec<u8>, CodecError>, usize, Duration) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let start = Instant::now();
    let out = decode_chunk(chunk, member, &Limits::default());
    let took = start.elapsed();
    (out, PEAK.load(Ordering::SeqCst) - before, took)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn chunk(member: &[u8], size: u64, inner_offset: u64, digest: String, c: Compression) -> Chunk {
    Chunk {
        file_offset: 0,
        size,
        blob_offset: 0,
        blob_end: member.len() as u64,
        inner_offset,
        digest,
        compression: c,
    }
}

const MIB: usize = 1 << 20;

#[test]
fn bombs_cost_at_most_the_chunk_limit() {
    let limit = MAX_CHUNK_SIZE as usize;
    let zeros_mib = vec![0u8; MIB];
    // Four times the limit of zeros, as concatenated 1 MiB members and frames: each
    // bomb is a few tens of KiB.
    let gzip_bomb = gzip(&zeros_mib).repeat(4 * limit / MIB);
    let zstd_bomb = zstd::stream::encode_all(&zeros_mib[..], 19)
        .unwrap()
        .repeat(4 * limit / MIB);
    assert!(gzip_bomb.len() < 100 << 10 && zstd_bomb.len() < 100 << 10);
    let digest_of = |n: usize| sha256_digest(&vec![0u8; n]);
    let (small, at_limit) = (digest_of(4096), digest_of(limit));

    for (bomb, c) in [
        (&gzip_bomb, Compression::Gzip),
        (&zstd_bomb, Compression::Zstd),
    ] {
        // A claim past the limit: refused before anything is inflated or allocated.
        let big = chunk(bomb, 4 * MAX_CHUNK_SIZE, 0, digest_of(1), c);
        let (out, peak, took) = measured(&big, bomb);
        eprintln!(
            "{c:?} claiming 4x the limit: {:?}, peak {peak} B, {took:.2?}",
            out.as_ref().err()
        );
        assert!(matches!(out, Err(CodecError::TooLarge { .. })));
        assert!(
            peak < 64 << 10,
            "{c:?}: {peak} bytes allocated for a refused chunk"
        );

        // Deep inside the member: refused the same way.
        let deep = chunk(bomb, 1, 2 * MAX_CHUNK_SIZE, digest_of(1), c);
        let (out, peak, _) = measured(&deep, bomb);
        assert!(matches!(out, Err(CodecError::InnerOffsetTooLarge { .. })));
        assert!(peak < 64 << 10);

        // A small chunk at the start of the bomb: inflation stops at its end.
        let head = chunk(bomb, 4096, 0, small.clone(), c);
        let (out, peak, took) = measured(&head, bomb);
        assert_eq!(out.unwrap().len(), 4096);
        eprintln!("{c:?} 4 KiB from the head of a bomb: peak {peak} B, {took:.2?}");
        assert!(peak < 2 * MIB, "{c:?}: {peak} bytes for a 4 KiB chunk");

        // A chunk of exactly the limit, wrong digest: inflates the limit, no more.
        let full = chunk(bomb, MAX_CHUNK_SIZE, 0, small.clone(), c);
        let (out, peak, took) = measured(&full, bomb);
        eprintln!("{c:?} the limit with a wrong digest: peak {peak} B, {took:.2?}");
        assert!(matches!(out, Err(CodecError::DigestMismatch { .. })));
        assert!(peak < limit + 2 * MIB, "{c:?}: {peak} bytes");

        // The same with the right digest: the chunk, exactly.
        let full = chunk(bomb, MAX_CHUNK_SIZE, 0, at_limit.clone(), c);
        let (out, peak, _) = measured(&full, bomb);
        assert_eq!(out.unwrap().len(), limit);
        assert!(peak < limit + 2 * MIB, "{c:?}: {peak} bytes");
    }

    // A zstd frame whose header asks for a 128 MiB window (zstd's default maximum)
    // to decode one raw byte: refused instead of allocating the window.
    let window_log = 27u8;
    assert!(u32::from(window_log) > MAX_ZSTD_WINDOW_LOG);
    let frame: Vec<u8> = [
        &0xFD2F_B528u32.to_le_bytes()[..],
        // Frame header descriptor: no content size, not single-segment, no checksum.
        &[0x00],
        // Window descriptor: exponent (log - 10), mantissa 0.
        &[(window_log - 10) << 3],
        // One last raw block of one byte: "x".
        &[0x09, 0x00, 0x00, b'x'],
    ]
    .concat();
    let one = chunk(&frame, 1, 0, sha256_digest(b"x"), Compression::Zstd);
    let (out, peak, _) = measured(&one, &frame);
    eprintln!(
        "zstd frame asking for a 2^{window_log} window: {:?}, peak {peak} B",
        out.as_ref().err()
    );
    assert!(matches!(out, Err(CodecError::Decompress { .. })));
    assert!(peak < 2 * MIB, "{peak} bytes");
    // The same frame with a window the limit allows decodes.
    let mut ok = frame.clone();
    ok[5] = ((MAX_ZSTD_WINDOW_LOG - 10) as u8) << 3;
    let one = chunk(&ok, 1, 0, sha256_digest(b"x"), Compression::Zstd);
    assert_eq!(decode_chunk(&one, &ok, &Limits::default()).unwrap(), b"x");
}
