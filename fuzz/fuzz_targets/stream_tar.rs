//! The streamed index (`veil_formats::stream::index_stream`) of a layer blob: the first
//! byte picks plain tar, gzip or zstd; the rest is the blob. Tar headers (ustar, GNU long
//! names, PAX), the decompressors and the restart-point indexers all see hostile bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_formats::stream::{index_stream, IndexOptions, StreamCompression};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, blob)) = data.split_first() else {
        return;
    };
    let compression = match selector % 3 {
        0 => StreamCompression::None,
        1 => StreamCompression::Gzip,
        _ => StreamCompression::Zstd,
    };
    let options = IndexOptions {
        spacing: 4096,
        chunk_size: 1024,
        drop_estargz_bookkeeping: selector & 0x80 != 0,
        limits: veil_formats::limits::Limits::default(),
    };
    let _ = index_stream(compression, blob, &options);
});
