//! zstd:chunked blob located by its footer (current or legacy): the input is the whole
//! blob, read by `veil_formats::zstdchunked::read_toc` without annotations.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_formats::zstdchunked::{read_toc, ManifestInfo};

fuzz_target!(|data: &[u8]| {
    let source = veil_blob::MemoryBlob(data.to_vec());
    let _ = futures::executor::block_on(read_toc(&source, &ManifestInfo::default()));
});
