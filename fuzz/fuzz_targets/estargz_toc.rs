//! eStargz TOC JSON: the input is `stargz.index.json`, put in a well-formed blob (its tar,
//! its gzip member, the footer) and read by `veil_formats::estargz::read_toc`, which
//! parses, checks and normalizes it (chunks, offsets, hard links, limits).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use veil_formats::estargz::{footer_bytes, read_toc, TOC_TAR_NAME};

fuzz_target!(|data: &[u8]| {
    // Some file content before the TOC, so that offsets can point somewhere.
    let mut blob = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = gz.write_all(&[0u8; 1024]);
        gz.finish().unwrap_or_default()
    };
    let toc_offset = blob.len() as u64;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    if tar.append_data(&mut header, TOC_TAR_NAME, data).is_err() {
        return;
    }
    let Ok(tar) = tar.into_inner() else { return };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(&tar);
    blob.extend(gz.finish().unwrap_or_default());
    blob.extend(footer_bytes(toc_offset));
    let source = veil_blob::MemoryBlob(blob);
    let _ = futures::executor::block_on(read_toc(&source, None));
});
